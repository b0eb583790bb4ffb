"""A control plane that always answers: hung calls, odd paths, rule results
the protocol cannot carry, and introspection that never ends — each against
a real ``livepatch engine`` process on its real socket."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, start_engine

from livepatch.client import Client
from livepatch.errors import BadResult, Busy, LivepatchError, LoadFailed, Timeout
from livepatch.examples.spam import rule_source
from livepatch.render import render_status

HANGING = (
    rule_source("spam_v2.py")
    + """

import threading

_never = threading.Event()


def hang() -> None:
    _never.wait()  # blocked in C: no exception can reach it


def spin() -> int:
    n = 0
    while True:  # pure Python: interrupted at its deadline
        n += 1


def quick(x: int) -> int:
    return x + 1


def huge() -> int:
    digits = 5000
    return 10**digits


def deep() -> list:
    value: list = []
    for _ in range(100_000):
        value = [value]
    return value


class _Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def opaque() -> object:
    return _Opaque()
"""
)


def poll(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``what()`` once it is truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        time.sleep(0.05)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1000


def test_hung_calls_from_many_connections_never_block_swap_status_rollback(
    runtime_dir: Path,
) -> None:
    proc = start_engine("--call-workers", "8", "--call-queue", "2")
    try:
        with Client.connect() as admin:
            hanging = admin.load("spam", HANGING, "hanging.py")
            assert admin.check(hanging).ok
            admin.swap(hanging)
            other = admin.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
            assert admin.check(other).ok

            def hang_once(_: int) -> Timeout:
                with Client.connect() as client, pytest.raises(Timeout) as info:
                    client.call("spam", "hang", timeout_s=0.5)
                return info.value

            # Six connections, each with a call Python cannot stop.
            with ThreadPoolExecutor(6) as threads:
                errors = list(threads.map(hang_once, range(6)))
            for error in errors:
                assert error.kind == "timeout" and "hang() did not return" in error.message
                assert error.data["version"] == hanging
            # A call in a Python loop is interrupted at its deadline: its
            # worker comes back, the six stuck ones do not.
            with pytest.raises(Timeout):
                admin.call("spam", "spin", timeout_s=0.5)
            calls = poll(lambda: (c := admin.status()["calls"])["running"] == 6 and c)
            assert [(s["version"], s["symbol"]) for s in calls["stuck"]] == [(hanging, "hang")] * 6
            assert all(s["age_s"] > 0 for s in calls["stuck"])
            # The two free workers still serve.
            assert admin.call("spam", "quick", [41])["result"] == 42

            # Control requests answer while the calls hang: swap, rollback, status.
            swapped, swap_ms = timed(lambda: admin.swap(other))
            assert swapped["active"] == other
            rolled, rollback_ms = timed(lambda: admin.rollback("spam"))
            assert rolled["active"] == hanging
            status, status_ms = timed(admin.status)
            assert len(status["calls"]["stuck"]) == 6
            shown = render_status(status)
            assert "stuck calls: 6" in shown and f"{hanging} hang()" in shown
            print(
                f"6 stuck calls: swap {swap_ms:.1f} ms, rollback {rollback_ms:.1f} ms, "
                f"status {status_ms:.1f} ms"
            )

            # Fill the pool: two more stuck, two queued, then busy at once.
            with ThreadPoolExecutor(2) as threads:
                list(threads.map(hang_once, range(2)))
            queued: list[Any] = []

            def queue_one() -> None:
                with Client.connect() as client:
                    try:
                        client.call("spam", "quick", [1], timeout_s=3)
                    except Timeout as exc:
                        queued.append(exc)

            waiters = [threading.Thread(target=queue_one) for _ in range(2)]
            for waiter in waiters:
                waiter.start()
            poll(lambda: admin.status()["calls"]["queued"] == 2)
            with pytest.raises(Busy, match="call pool is full"):
                admin.call("spam", "quick", [1])
            for waiter in waiters:
                waiter.join(30)
            assert len(queued) == 2  # never started: timed out in the queue
            assert len(admin.status()["calls"]["stuck"]) == 8

            # Stuck calls are in flight: unloading their version says so.
            admin.swap(other)
            result = admin.unload(hanging)
            assert result["freed"] is False and result["in_flight"] >= 8
            assert admin.status()["slots"][0]["active"] == other
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_results_the_protocol_cannot_carry_are_bad_result(runtime_dir: Path) -> None:
    proc = start_engine("--no-quarantine")
    try:
        with Client.connect() as client:
            version = client.load("spam", HANGING, "hanging.py")
            assert client.check(version).ok
            for symbol, problem in (
                ("huge", "more digits than can be printed"),
                ("deep", "nested too deeply"),
                ("opaque", "RuntimeError: no repr for you"),
            ):
                with pytest.raises(BadResult) as info:
                    client.call(version, symbol)
                assert info.value.kind == "bad-result", symbol
                assert problem in info.value.message and "\n" not in info.value.message
                assert info.value.message.startswith(f"{version} {symbol}() returned")
            assert client.call(version, "quick", [1])["result"] == 2
    finally:
        proc.stop()


# -- bounded input ---------------------------------------------------------------


def test_load_path_takes_regular_files_only(runtime_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "rules.fifo"
    os.mkfifo(fifo)
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "rules.sock"))
    sparse = tmp_path / "huge.py"
    with open(sparse, "wb") as f:
        f.truncate(257 * 1024 * 1024)  # one past the cap, and no disk used
    cases = {
        str(fifo): "is a FIFO, not a regular file",
        "/dev/zero": "is a character device, not a regular file",
        "/proc/self/status": "is in /proc or /sys",
        str(tmp_path): "is a directory, not a regular file",
        str(tmp_path / "rules.sock"): "is a socket, not a regular file",
        str(sparse): "over the 268435456-byte limit",
        str(tmp_path / "missing.py"): "No such file",
    }
    proc = start_engine()
    try:
        with Client.connect() as client:
            for path, reason in cases.items():
                with pytest.raises(LoadFailed) as info:
                    client.load_path("spam", path)
                assert reason in info.value.message, (path, info.value.message)
            good = tmp_path / "good.py"
            good.write_text(rule_source("spam_v2.py"))
            assert client.load_path("spam", str(good)) == "spam@2"
            assert client.status()["slots"][0]["active"] == "spam@1"
    finally:
        listening.close()
        proc.stop()


METACLASS_SIGNATURE = """
from livepatch.examples.spam import Message, Verdict


class _Endless(type):
    @property
    def __signature__(cls):
        while True:
            pass


class Rules(metaclass=_Endless):
    pass


def classify(msg: Message) -> Verdict:
    return Verdict(spam=False, score=0.0, reasons=())
"""


def test_introspection_that_never_ends_is_bounded(runtime_dir: Path) -> None:
    # In-process only: symbols is interrupted at its deadline, the engine answers.
    proc = start_engine("--no-quarantine", env={"LIVEPATCH_INTROSPECTION_TIMEOUT": "1"})
    try:
        with Client.connect() as client:
            version = client.load("spam", METACLASS_SIGNATURE, "endless.py")
            for _ in range(2):
                with pytest.raises(Timeout, match="did not finish within 1 s"):
                    client.symbols(version)
            assert client.status()["slots"][0]["active"] == "spam@1"
            assert client.call("spam", "classify", [{"sender": "a", "text": "b"}])
    finally:
        proc.stop()
    # With the quarantine, the same body fails its load.
    proc = start_engine("--load-timeout", "2")
    try:
        with Client.connect() as client, pytest.raises(LoadFailed, match="within 2 s"):
            client.load("spam", METACLASS_SIGNATURE, "endless.py")
    finally:
        proc.stop()


# -- before hello ------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _dropped(sock: socket.socket, timeout: float = 30.0) -> bool:
    """True once the engine hangs up on ``sock`` (after any error line it sent)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


def test_pre_hello_clients_are_small_quick_and_few(runtime_dir: Path) -> None:
    env = {"LIVEPATCH_HELLO_TIMEOUT": "2", "LIVEPATCH_MAX_UNAUTHENTICATED": "8"}
    proc = start_engine("--listen", "tcp://127.0.0.1:0", name="tcp", env=env)
    try:
        address = proc.ready["address"]
        host, _, port = address.rpartition(":")
        endpoint = (host, int(port))
        pid = proc.ready["pid"]
        before = _rss_kb(pid)

        # Twenty clients each start a 15 MiB frame before hello: each is
        # refused once past the small pre-hello limit, and dropped.
        def oversized(_: int) -> bytes:
            with socket.create_connection(endpoint, timeout=30) as sock:
                chunk = b"x" * (1 << 20)
                with contextlib.suppress(OSError):  # the engine hangs up mid-send
                    for _ in range(15):
                        sock.sendall(chunk)
                reply = b""
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(65536):
                        reply += chunk
                return reply

        with ThreadPoolExecutor(4) as threads:
            replies = list(threads.map(oversized, range(20)))
        for reply in replies:
            # The refusal may be lost to a reset while we were still sending.
            assert not reply or b"before hello" in reply
        assert any(b"too-large" in reply for reply in replies)
        assert _rss_kb(pid) - before < 64 * 1024  # nothing like 20 x 15 MiB was kept

        # A client trickling a hello one byte at a time is dropped at the
        # deadline of the whole frame, though every read brings something.
        with socket.create_connection(endpoint, timeout=30) as sock:
            hello = b'{"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"token": "'
            sent = 0
            with contextlib.suppress(OSError):
                for byte in hello * 100:
                    sock.sendall(bytes([byte]))
                    sent += 1
                    time.sleep(0.05)
            assert sent < len(hello) * 100  # cut off while still trickling
            assert _dropped(sock)

        # Idle connections that never say hello: only eight are kept...
        idle = [socket.create_connection(endpoint, timeout=30) for _ in range(8)]
        try:
            poll(lambda: _waiting_refused(endpoint))
        finally:
            for sock in idle:
                sock.close()
        # ...and an authenticated client gets in once they are gone.
        poll(lambda: _can_connect("tcp"))
        with Client.connect("tcp") as client:
            # Past hello, frames may be big again (16 MiB): a 1 MiB source loads.
            padded = rule_source("spam_v2.py") + "#" * (1 << 20) + "\n"
            assert client.load("spam", padded, "padded.py") == "spam@2"
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def _waiting_refused(endpoint: tuple[str, int]) -> bool:
    with socket.create_connection(endpoint, timeout=30) as sock:
        reply = sock.recv(65536)
    return b'"busy"' in reply and b"waiting for their hello" in reply


def _can_connect(name: str) -> bool:
    try:
        with Client.connect(name) as client:
            return bool(client.status())
    except (LivepatchError, OSError):
        return False


def test_engine_call_pool_options_are_validated(runtime_dir: Path) -> None:
    for option, value in (
        ("--call-timeout", "0"),
        ("--call-workers", "-1"),
        ("--call-queue", "x"),
        ("--switch-interval", "0"),
    ):
        result = run_cli("engine", option, value)
        assert result.returncode == 2, (option, result.stderr)
        assert option in result.stderr and "Traceback" not in result.stderr
