"""A front end that is stopped (SIGTERM: ``timeout``, ``kill``, a service
manager) or killed (``kill -9``) leaves nothing running: not the engines it
started, not the ZooKeeper server or the simulated members of a benchmark.

Before, Python's default SIGTERM ended ``livepatch demo --fleet 3`` at once
and its three engines served on, under PID 1, until someone found them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require
from fleet_helpers import wait_for

from livepatch.fleet.zkserver import zookeeper_missing
from livepatch.runtime import list_engines, pid_alive


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every process whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == pid:
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def answers(path: str) -> bool:
    """Whether the benchmark's reference server at ``path`` answers a frame."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "call"}\n')
            return sock.recv(4096).startswith(b'{"jsonrpc"')
    except OSError:
        return False


def front_end(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "livepatch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def gone(pids: list[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_the_fleet_demo_takes_its_engines_along(
    fleet_env: Path, runtime_dir: Path, how: signal.Signals
) -> None:
    demo = front_end("demo", "--fleet", "3")
    try:
        engines = wait_for(
            lambda: (found := list_engines(runtime_dir, clean=False)) and len(found) == 3 and found,
            90,
            "the demo's three members",
        )
        pids = [info.pid for info in engines]
        os.kill(demo.pid, how)
        code = demo.wait(60)
        if how == signal.SIGTERM:
            assert code == 128 + signal.SIGTERM  # it stopped, it did not die
            assert gone(pids)  # its clean-up stopped them before it exited
            # Nor their logs: demo-PID-i names are never used again. (A member
            # SIGKILLed past its stop's 10 s on a loaded machine leaves its
            # connection file for the next list to clean, below.)
            assert sorted(p.name for p in runtime_dir.glob("*.log*")) == []
        wait_for(lambda: gone(pids), 30, "the members to stop")
        wait_for(lambda: list_engines(runtime_dir) == [], 30, "their connection files to go")
    finally:
        demo.kill()
        demo.wait()


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["local", "zookeeper"])
def test_a_killed_benchmark_leaves_no_engines_no_zookeeper_and_no_members(
    fleet_env: Path, runtime_dir: Path, phase: str
) -> None:
    require(zookeeper_missing())
    bench = front_end("bench", "--quick", "--section", "fleet")
    try:
        # The local engines first (in the benchmark's private runtime dir),
        # tied to it like the demo's.
        def local_phase() -> dict[int, str] | None:
            kids = children(bench.pid)
            engines = {p: c for p, c in kids.items() if "livepatch engine --name" in c}
            return engines if len(engines) == 3 else None

        doomed = wait_for(local_phase, 90, "the benchmark's local members")
        local = list(doomed)
        if phase == "zookeeper":
            # Then its ZooKeeper server and the processes of simulated members.
            def zookeeper_phase() -> dict[int, str] | None:
                kids = children(bench.pid)
                java = [c for c in kids.values() if "ZooKeeperServerMain" in c]
                sims = [c for c in kids.values() if "livepatch.fleet.zksim" in c]
                return kids if java and sims else None

            doomed = wait_for(zookeeper_phase, 120, "the benchmark's ZooKeeper phase")
            assert gone(local)  # stopped when their section ended
        bench.kill()  # -9: nothing of it runs on its way out
        bench.wait(30)
        wait_for(lambda: gone(list(doomed)), 60, f"{sorted(doomed.values())} to go")
    finally:
        bench.kill()
        bench.wait()


@pytest.mark.slow
def test_a_killed_control_plane_benchmark_leaves_no_reference_server(
    fleet_env: Path, runtime_dir: Path
) -> None:
    bench = front_end("bench", "--quick", "--section", "control_plane")
    try:

        def both_running() -> dict[int, str] | None:
            kids = children(bench.pid)
            engine = [c for c in kids.values() if "livepatch engine --name" in c]
            reference = [c for c in kids.values() if "serve_reference" in c]
            # Serving (killed before it said "ready", it would die of the
            # closed pipe anyway): it answers a frame.
            return kids if engine and reference and answers(reference[0].split()[-1]) else None

        doomed = wait_for(both_running, 120, "the engine and the reference server")
        bench.kill()
        bench.wait(30)
        wait_for(lambda: gone(list(doomed)), 60, f"{sorted(doomed.values())} to go")
    finally:
        bench.kill()
        bench.wait()


def test_the_demo_leaves_nothing_in_the_runtime_directory(runtime_dir: Path) -> None:
    # Its engine is demo-PID, a name no one uses again: before, every run left
    # demo-PID.lock and demo-PID.log behind (under ~/.livepatch/runtime, for
    # good, where no XDG_RUNTIME_DIR is cleared at logout).
    done = subprocess.run(
        [sys.executable, "-m", "livepatch", "demo", "--rate", "0"],
        input="quit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout
    assert sorted(p.name for p in runtime_dir.iterdir()) == []


def test_an_engine_that_died_by_itself_keeps_its_log(runtime_dir: Path) -> None:
    # The front end pointed at that log to say why; only an engine it stopped
    # itself, healthy, leaves nothing.
    from livepatch.launcher import EngineProcess

    engine = EngineProcess("short-lived", ["--no-quarantine"], ephemeral=True)
    engine.start()
    assert engine.proc is not None
    engine.proc.kill()
    engine.proc.wait()
    engine.stop()
    assert '{"ready"' in (runtime_dir / "short-lived.log").read_text()
    engine = EngineProcess("short-lived", ["--no-quarantine"], ephemeral=True)
    engine.start()
    engine.stop()
    assert sorted(p.name for p in runtime_dir.iterdir()) == []


def test_a_released_name_leaves_no_lock_file_and_is_never_held_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livepatch import runtime
    from livepatch.runtime import RuntimeDirError, claim_name

    first = claim_name("e", tmp_path)
    with pytest.raises(RuntimeDirError, match="already running"):
        claim_name("e", tmp_path)
    first.release()
    assert not (tmp_path / "e.lock").exists()
    # The race release's unlink opens: a claim opens the old file, its holder
    # releases (unlinks, unlocks) before the claim locks it. The claim must
    # not keep the unlinked file, or a third claim would take the name too.
    held = claim_name("e", tmp_path)
    opened = runtime._open_lock
    calls = []

    def open_then_release(path: Path) -> int:
        fd = opened(path)
        if not calls:
            held.release()
        calls.append(path)
        return fd

    monkeypatch.setattr(runtime, "_open_lock", open_then_release)
    second = claim_name("e", tmp_path)
    assert len(calls) == 2  # the orphan was seen, and the claim tried again
    with pytest.raises(RuntimeDirError, match="already running"):
        claim_name("e", tmp_path)
    second.release()
    assert list(tmp_path.iterdir()) == []
