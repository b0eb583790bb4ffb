"""The control bell (livepatch/controlbell.py) and the short slice of the
threads that answer control requests (livepatch/threadsched.py).

The bell's states are driven with real sockets and a real call pool; the
short slice is read back from the kernel, in this process and in a real
``livepatch engine`` whose control client's thread asked for it.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_engine
from test_server_threads import MSG, call, poll, raw_hello

from livepatch.callpool import CallPool
from livepatch.client import Client
from livepatch.controlbell import ControlBell
from livepatch.examples.spam import rule_source
from livepatch.threadsched import SHORT_SLICE_NS, request_short_slice, thread_slice_ns


@pytest.fixture
def pool() -> Iterator[CallPool]:
    calls = CallPool(workers=2)
    yield calls
    calls.close()


def paused(calls: CallPool) -> bool:
    # What a call about to start looks at (CallPool._execute).
    return not calls._open.is_set()


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_a_frame_on_an_armed_socket_pauses_the_calls_and_its_thread_takes_the_pause(
    pool: CallPool,
) -> None:
    bell = ControlBell(pool)
    ours, theirs = pair()
    bell.watch(ours.fileno())
    bell.check()
    assert not paused(pool)  # registered disarmed: its thread is serving
    bell.arm(ours.fileno())
    bell.check()
    assert not paused(pool)  # armed, nothing to read yet
    theirs.sendall(b'{"id": 1}\n')
    bell.check()
    assert paused(pool)
    bell.check()  # one event per arming: rung once, paused once
    assert pool._pauses == 1
    assert bell.take(ours.fileno()) is True  # the thread owes the resume
    pool.resume()
    assert not paused(pool)
    ours.close()
    theirs.close()


def test_a_thread_that_got_there_first_keeps_the_bell_from_pausing(pool: CallPool) -> None:
    bell = ControlBell(pool)
    ours, theirs = pair()
    bell.watch(ours.fileno())
    bell.arm(ours.fileno())
    theirs.sendall(b"x")
    # The control thread won the lock first: it reads and pauses itself.
    assert bell.take(ours.fileno()) is False
    bell.check()
    assert not paused(pool)
    ours.close()
    theirs.close()


def test_a_rung_socket_forgotten_before_its_thread_came_resumes_the_calls(
    pool: CallPool,
) -> None:
    bell = ControlBell(pool)
    ours, theirs = pair()
    bell.watch(ours.fileno())
    bell.arm(ours.fileno())
    theirs.sendall(b"x")
    bell.check()
    assert paused(pool)
    # The client hung up (or became a caller) before its thread took over:
    # no pause may outlive it, or every later control request would make
    # the calls wait out the pause's whole limit.
    bell.forget(ours.fileno())
    assert not paused(pool) and pool._pauses == 0
    assert bell.watched == 0
    theirs.sendall(b"y")
    bell.check()
    assert not paused(pool)
    ours.close()
    theirs.close()


def test_each_arming_rings_at_most_once_per_frame_waiting(pool: CallPool) -> None:
    bell = ControlBell(pool)
    sockets = [pair() for _ in range(3)]
    for ours, _ in sockets:
        bell.watch(ours.fileno())
        bell.arm(ours.fileno())
    for _, theirs in sockets[:2]:
        theirs.sendall(b"x")
    bell.check()
    assert pool._pauses == 2
    assert [bell.take(ours.fileno()) for ours, _ in sockets] == [True, True, False]
    pool.resume()
    pool.resume()
    assert not paused(pool)
    for ours, theirs in sockets:
        ours.close()
        theirs.close()


def _kernel_has_custom_slices() -> bool:
    if platform.system() != "Linux":
        return False
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    return (major, minor) >= (6, 12)


def test_a_thread_asks_for_a_short_slice_and_only_it_gets_one() -> None:
    before = thread_slice_ns()
    seen: list[tuple[bool, int | None]] = []
    started: list[int | None] = []

    def ask() -> None:
        seen.append((request_short_slice(), thread_slice_ns()))
        # What it starts (a data loop, a pool's workers) is not latency-bound.
        child = threading.Thread(target=lambda: started.append(thread_slice_ns()))
        child.start()
        child.join()

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    granted, slice_ns = seen[0]
    if _kernel_has_custom_slices():
        assert granted and slice_ns == SHORT_SLICE_NS
    else:
        assert not granted
    assert thread_slice_ns() == before  # the asking thread's own, no one else's
    assert started == [before]


def test_the_short_slice_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEPATCH_NO_SHORT_SLICE", "1")
    seen: list[tuple[bool, int | None]] = []

    def ask() -> None:
        before = thread_slice_ns()
        seen.append((request_short_slice(), thread_slice_ns() == before))

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    assert seen == [(False, True)]


def _short_slice_threads(pid: int) -> int:
    count = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/sched").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in text.splitlines():
            if line.startswith("se.slice") and int(line.split(":")[1]) == SHORT_SLICE_NS:
                count += 1
    return count


def test_an_engine_answers_control_clients_on_short_slice_threads_and_swaps_under_load(
    runtime_dir: Path,
) -> None:
    proc = start_engine("--no-quarantine")
    try:
        pid = proc.proc.pid
        assert _short_slice_threads(pid) == 0
        # Where the kernel has no custom slices, nothing changes (and the
        # bell alone shortens the wait).
        short = 1 if _kernel_has_custom_slices() else 0
        with Client.connect() as admin:
            # The control client's reader thread asked for a short slice.
            poll(lambda: _short_slice_threads(pid) == short)
            v1 = next(s["active"] for s in admin.status()["slots"] if s["name"] == "spam")
            v2 = admin.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
            assert admin.check(v2).ok
            # Four callers flat out on the data loop; the bell rings for
            # every swap, and every call and swap is answered.
            stop = threading.Event()
            failures: list[object] = []
            answered = [0]

            def caller() -> None:
                sock, reader = raw_hello()
                rid = 1
                while not stop.is_set():
                    sock.sendall(call(rid, "classify", MSG))
                    reply = json.loads(reader.readline())
                    if "result" not in reply:
                        failures.append(reply)
                    answered[0] += 1
                    rid += 1
                sock.close()

            callers = [threading.Thread(target=caller) for _ in range(4)]
            for thread in callers:
                thread.start()
            poll(lambda: answered[0] > 200)
            versions = [v2, v1]
            for i in range(60):
                assert admin.swap(versions[i % 2])["active"] == versions[i % 2]
            stop.set()
            for thread in callers:
                thread.join(30)
            assert failures == []
        # The callers' reader threads ended once the data loop adopted them
        # (the loop's own threads, started from one of them, got the default
        # slice), and the control client's ended with its connection.
        poll(lambda: _short_slice_threads(pid) == 0)
        assert proc.proc.poll() is None
    finally:
        proc.stop()
