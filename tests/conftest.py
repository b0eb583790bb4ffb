"""Shared fixtures: real engine processes on real sockets, in a private runtime dir."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from livepatch.launcher import EngineProcess

if TYPE_CHECKING:
    from livepatch.fleet.zkserver import ZooKeeperServer

__all__ = [
    "EngineProcess",
    "engine_pids",
    "needs",
    "require",
    "run_cli",
    "start_engine",
    "wait_gone",
    "zk_registry_url",
]


def require(missing: str | None) -> None:
    """Skip a test whose part (a compiler, tmux, ZooKeeper...) is ``missing``,
    outside CI only: CI (``CI`` set) installs every part the tests need, so
    there a missing part is a failure, never a skip."""
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; .ci/run installs it, so in CI this fails", pytrace=False)
        pytest.skip(missing)


def needs(missing: str | None) -> pytest.MarkDecorator:
    """:func:`require` as a mark: ``@needs(None if found else "why it is missing")``."""
    return pytest.mark.needs(missing)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        require(mark.args[0])


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private runtime dir (Unix socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="lp-", dir="/tmp") as tmp:
        path = Path(tmp) / "run"
        monkeypatch.setenv("LIVEPATCH_RUNTIME_DIR", str(path))
        yield path
        wait_gone(engine_pids(path))


def engine_pids(directory: Path) -> list[int]:
    """The pids of the engines whose connection files are in ``directory``."""
    from livepatch.runtime import list_engines

    return [info.pid for info in list_engines(directory, clean=False)] if directory.is_dir() else []


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until every process in ``pids`` has ended (deadline ``timeout``).

    Engines tied to a parent that a test has just killed (a kernel shut down
    with ``now=True``) end on their own, removing their files as they go:
    removing their directory meanwhile fails with "Directory not empty".
    """
    from livepatch.runtime import pid_alive

    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def fleet_env(runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime dir and state home (a local fleet's store lives there)."""
    with tempfile.TemporaryDirectory(prefix="lp-state-") as tmp:
        monkeypatch.setenv("XDG_STATE_HOME", tmp)
        yield Path(tmp)


@pytest.fixture
def engines(fleet_env: Path) -> Iterator[list[EngineProcess]]:
    """Engines a fleet test starts (appended to the list), stopped at its end."""
    started: list[EngineProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def zk_server() -> Iterator[ZooKeeperServer]:
    """A private ZooKeeper server on a free loopback port, shared by a module's tests."""
    from livepatch.fleet.zkserver import ZooKeeperServer, zookeeper_missing

    require(zookeeper_missing())
    with tempfile.TemporaryDirectory(prefix="lp-zk-") as tmp, ZooKeeperServer(Path(tmp)) as server:
        yield server


def zk_registry_url(server: ZooKeeperServer, session_s: float) -> str:
    """A fresh registry path on ``server`` (each test its own fleet nodes)."""
    return f"zookeeper://{server.hosts}/t{uuid.uuid4().hex[:8]}?timeout={session_s:g}"


def start_engine(
    *args: str, name: str = "rules", env: dict[str, str] | None = None, timeout: float = 30
) -> EngineProcess:
    """Start ``livepatch engine --name NAME ARGS`` and wait for its ready line.

    The launcher the front ends use: output in ``NAME.log`` (``log_text()``),
    its own session, SIGTERM then SIGKILL on ``stop()``.
    """
    proc = EngineProcess(name, args, env=env)
    proc.start(timeout)
    return proc


@pytest.fixture
def engine_proc(runtime_dir: Path) -> Iterator[EngineProcess]:
    """The bundled demo engine (spam@1 active), no traffic."""
    proc = start_engine()
    yield proc
    proc.stop()


def run_cli(
    *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``livepatch`` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "livepatch", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )
