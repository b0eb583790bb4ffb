"""Shared fixtures: real engine processes on real sockets, in a private runtime dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private runtime dir (Unix socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="lp-", dir="/tmp") as tmp:
        path = Path(tmp) / "run"
        monkeypatch.setenv("LIVEPATCH_RUNTIME_DIR", str(path))
        yield path


@dataclass
class EngineProcess:
    """A running ``livepatch engine`` child process."""

    proc: subprocess.Popen[str]
    ready: dict[str, Any]
    name: str

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_engine(
    *args: str, name: str = "rules", env: dict[str, str] | None = None, timeout: float = 30
) -> EngineProcess:
    """Start ``livepatch engine --name NAME ARGS`` and wait for its ready line."""
    cmd = [sys.executable, "-m", "livepatch", "engine", "--name", name, *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until ready or exit; the engine prints one line
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait(timeout)
        raise RuntimeError(f"engine exited with {proc.returncode}: {err}")
    return EngineProcess(proc, json.loads(line), name)


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
