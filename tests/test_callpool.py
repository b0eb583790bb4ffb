"""The call pool on its own: deadlines, interruption, stuck calls, busy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from livepatch.callpool import CallPool, note_version
from livepatch.errors import Busy, Timeout
from livepatch.interrupt import Interrupted, run_with_deadline


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_results_errors_timeouts_stuck_and_busy() -> None:
    pool = CallPool(workers=2, queue_size=1, timeout_s=5)
    release = threading.Event()
    try:
        assert pool.submit(lambda: 41 + 1, target="s", symbol="f").result(10) == 42
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0, target="s", symbol="f").result(10)

        def spin() -> None:
            note_version("s@2")
            while True:
                pass

        future = pool.submit(spin, target="s", symbol="spin", timeout_s=0.2)
        with pytest.raises(Timeout, match=r"s@2 spin\(\) did not return within 0.2 s"):
            future.result(10)
        wait_until(lambda: pool.snapshot()["running"] == 0)  # interrupted: worker back

        def block() -> None:
            note_version("s@3")
            release.wait()  # in C: the interrupt waits until it returns

        stuck = [pool.submit(block, target="s", symbol="block", timeout_s=0.2) for _ in range(2)]
        for f in stuck:
            with pytest.raises(Timeout):
                f.result(10)
        snap = pool.snapshot()
        assert [(c["version"], c["symbol"]) for c in snap["stuck"]] == [("s@3", "block")] * 2
        queued = pool.submit(lambda: "late", target="s", symbol="q", timeout_s=0.2)
        with pytest.raises(Busy, match="2 stuck"):
            pool.submit(lambda: None, target="s", symbol="f")
        with pytest.raises(Timeout):
            queued.result(10)  # never started: both workers are stuck
    finally:
        release.set()
        pool.close()
    wait_until(lambda: pool.snapshot()["stuck"] == [])  # returned: no longer stuck


def test_run_with_deadline_interrupts_python_and_leaves_nothing_pending() -> None:
    def forever() -> None:
        while True:
            pass

    with pytest.raises(Interrupted):
        run_with_deadline(forever, 0.1)
    assert run_with_deadline(lambda: sum(range(10)), 5) == 45
    assert sum(range(1000)) == 499500  # the cancelled deadline left nothing pending


def test_an_absorbed_interrupt_leaves_the_thread_healthy_even_when_traced() -> None:
    # Withdrawing a pending interrupt with SetAsyncExc(NULL) left CPython 3.11's
    # eval breaker set, and the thread's next traced call spun forever (found
    # when pytest ran a tracing test after this file). In a child, so a
    # regression fails by deadline instead of hanging the suite.
    script = (
        "import sys\n"
        "from livepatch.interrupt import run_with_deadline\n"
        "def forever():\n"
        "    while True:\n"
        "        pass\n"
        "try:\n"
        "    run_with_deadline(forever, 0.05)\n"
        "except BaseException as exc:\n"
        "    print(type(exc).__name__)\n"
        "def work(n):\n"
        "    return [i for i in range(n)]\n"
        "sys.settrace(lambda frame, event, arg: None)\n"
        "print(work(3))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["Interrupted", "[0, 1, 2]"]


def test_run_on_the_asking_thread_shares_places_pause_and_deadlines() -> None:
    pool = CallPool(workers=1, queue_size=1, timeout_s=5)
    answers: list[tuple[str, Any, BaseException | None, int]] = []
    stuck: list[int] = []
    release = threading.Event()

    def answer(tag: str) -> Callable[[Any, BaseException | None], None]:
        def record(value: Any, error: BaseException | None) -> None:
            answers.append((tag, value, error, threading.get_ident()))

        return record

    def run(tag: str, fn: Callable[[], Any], timeout_s: float | None = None) -> bool:
        return pool.run(
            fn,
            target="s",
            symbol=tag,
            answer=answer(tag),
            on_stuck=lambda: stuck.append(len(answers)),
            timeout_s=timeout_s,
        )

    try:
        # Runs right here, answered from here, exactly once.
        me = threading.get_ident()
        assert run("here", threading.get_ident) is True
        assert answers == [("here", me, None, me)]
        assert run("raises", lambda: 1 / 0) is True
        assert isinstance(answers[-1][2], ZeroDivisionError)

        # A pause holds a call back until it ends.
        pool.pause()
        held = threading.Thread(target=run, args=("held", lambda: "ran"))
        held.start()
        # Waiting (a pause holds calls for at most 20 ms), or run already.
        wait_until(lambda: pool.snapshot()["queued"] == 1 or len(answers) == 3)
        pool.resume()
        held.join(10)
        assert answers[-1][:3] == ("held", "ran", None)

        # Stuck in C past its deadline: the watchdog answers `timeout` and
        # then (never before) calls on_stuck; the place stays taken, so the
        # next call waits in the queue, times out there, and its thread goes on.
        outcome: list[bool] = []
        blocked = threading.Thread(
            target=lambda: outcome.append(run("block", release.wait, timeout_s=0.2))
        )
        blocked.start()
        wait_until(lambda: stuck != [])
        tag, _, error, ident = answers[stuck[0] - 1]
        assert tag == "block" and isinstance(error, Timeout) and ident != blocked.ident
        assert [(c["symbol"]) for c in pool.snapshot()["stuck"]] == ["block"]
        assert run("queued", lambda: "late", timeout_s=0.2) is True
        assert answers[-1][0] == "queued" and isinstance(answers[-1][2], Timeout)
        # Full: one running (stuck), one waiting for its place: busy.
        waiter = threading.Thread(target=run, args=("waiting", lambda: None, 5))
        waiter.start()
        wait_until(lambda: pool.snapshot()["queued"] == 1)
        with pytest.raises(Busy):
            run("refused", lambda: None)
        assert "refused" not in [a[0] for a in answers]
        # When the stuck call comes back, its thread learns it was replaced,
        # and its place goes to the waiting call.
        release.set()
        blocked.join(10)
        assert outcome == [False]
        waiter.join(10)
        assert answers[-1][:3] == ("waiting", None, None)
        assert [a[0] for a in answers].count("block") == 1
        wait_until(lambda: pool.snapshot()["running"] == 0)
    finally:
        release.set()
        pool.close()


def test_a_call_answered_is_no_longer_counted_running() -> None:
    """The moment a call's answer goes out (here: inside the answer itself,
    before the worker's bookkeeping), a snapshot no longer counts it; one the
    watchdog answered while it still runs is counted, as stuck."""
    pool = CallPool(workers=2, queue_size=1, timeout_s=5)
    seen: list[dict[str, Any]] = []
    release = threading.Event()
    try:
        pool.run(
            lambda: 1,
            target="s",
            symbol="f",
            answer=lambda value, error: seen.append(pool.snapshot()),
            on_stuck=lambda: None,
        )
        assert seen[0]["running"] == 0 and seen[0]["queued"] == 0

        def blocked() -> None:
            release.wait(30)  # in C: the interrupt waits until it returns

        stuck = threading.Thread(
            target=pool.run,
            args=(blocked,),
            kwargs={
                "target": "s",
                "symbol": "blocked",
                "answer": lambda value, error: seen.append(pool.snapshot()),
                "on_stuck": lambda: None,
                "timeout_s": 0.2,
            },
        )
        stuck.start()
        wait_until(lambda: len(seen) == 2)  # the watchdog's answer
        assert seen[1]["running"] == 1 and [r["symbol"] for r in seen[1]["stuck"]] == ["blocked"]
        assert pool.snapshot()["running"] == 1
    finally:
        release.set()
        pool.close()
    stuck.join(10)
