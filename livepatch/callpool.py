"""The bounded pool that runs rule calls made over the control socket.

Rule code is trusted but can still hang (a regex that backtracks without end,
a network call with no timeout). So calls never run where control requests
run: they go to this pool, which has a fixed number of worker threads, a
capped queue (``busy`` beyond it) and a deadline per call. When a deadline
passes the caller is answered ``timeout`` at once, and the worker is
interrupted (:mod:`livepatch.interrupt`); a call Python cannot stop (blocked
in C) keeps its worker and its place in the pool, and is listed as *stuck*
by :meth:`CallPool.snapshot` until it returns. It also stays "in flight" for
``unload``: its thread's stack still runs the version's code.

Deadlines are enforced by one watchdog thread that scans the calls in the
pool a few dozen times a second, so submitting a call costs no timer and no
wake-up of its own.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .errors import Busy, Timeout
from .interrupt import Interrupted, absorb_interrupt, interrupt_thread

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_WORKERS",
    "MAX_TIMEOUT_S",
    "CallPool",
    "note_version",
]

DEFAULT_WORKERS = 8
DEFAULT_QUEUE = 64
DEFAULT_TIMEOUT_S = 5.0
#: The longest deadline a request may ask for.
MAX_TIMEOUT_S = 3600.0
#: How often the watchdog looks for calls past their deadline.
_SCAN_S = 0.02
#: The longest a worker waits at a pause (see CallPool.pause) before it starts
#: its next call anyway.
_PAUSE_MAX_S = 0.05

_current = threading.local()


def note_version(version: str) -> None:
    """Record which version the call running on this thread pinned (shown
    for a stuck call). Does nothing outside the pool."""
    call = getattr(_current, "call", None)
    if call is not None:
        call.version = version


@dataclass(eq=False)
class _Call:
    fn: Callable[[], Any]
    target: str
    symbol: str
    timeout_s: float
    submitted: float
    deadline: float
    future: Future[Any] = field(default_factory=Future)
    version: str | None = None
    thread: int | None = None
    started: float | None = None
    expired: bool = False
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """First answer wins: the worker's result or the watchdog's timeout."""
        if self.future.done():
            return
        with contextlib.suppress(Exception):  # InvalidStateError: lost the race
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)


class CallPool:
    """Worker threads, a capped queue and a deadline per call."""

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        name: str = "livepatch-call",
    ) -> None:
        if workers < 1 or queue_size < 0 or timeout_s <= 0:
            raise ValueError("a call pool needs >= 1 worker, a queue >= 0 and a timeout > 0")
        self.workers = workers
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._calls: set[_Call] = set()  # queued or running, stuck ones included
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Set while no one asked for a pause: workers start calls.
        self._open = threading.Event()
        self._open.set()
        self._pauses = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._threads.append(
            threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[[], Any], *, target: str, symbol: str, timeout_s: float | None = None
    ) -> Future[Any]:
        """Queue ``fn()``; its future ends with the result, the exception it
        raised, or :class:`Timeout`. Raises :class:`Busy` when the pool is full."""
        limit = min(timeout_s if timeout_s is not None else self.timeout_s, MAX_TIMEOUT_S)
        now = time.monotonic()
        call = _Call(fn, target, symbol, limit, now, now + limit)
        with self._lock:
            if len(self._calls) >= self.workers + self.queue_size:
                stuck = sum(1 for c in self._calls if c.expired)
                raise Busy(
                    f"the call pool is full ({self.workers} workers, {self.queue_size} queued"
                    f"{f', {stuck} stuck' if stuck else ''}): retry later, or see 'status'",
                    workers=self.workers,
                    queue=self.queue_size,
                    stuck=stuck,
                )
            self._calls.add(call)
        self._queue.put(call)
        return call.future

    def snapshot(self) -> dict[str, Any]:
        """Pool size, calls queued and running, and the stuck calls (past
        their deadline and still running: version, symbol, age)."""
        now = time.monotonic()
        with self._lock:
            calls = list(self._calls)
        running = [c for c in calls if c.started is not None]
        stuck: list[dict[str, Any]] = [
            {
                "version": c.version or c.target,
                "symbol": c.symbol,
                "age_s": round(now - (c.started or c.submitted), 3),
                "timeout_s": c.timeout_s,
            }
            for c in running
            if c.expired
        ]
        stuck.sort(key=lambda row: -float(row["age_s"]))
        return {
            "workers": self.workers,
            "queue": self.queue_size,
            "timeout_s": self.timeout_s,
            "running": len(running),
            "queued": len(calls) - len(running),
            "stuck": stuck,
        }

    def pause(self) -> None:
        """Start no new call until :meth:`resume` (or for at most
        ``_PAUSE_MAX_S`` per call): a control request that is waited for gets
        the interpreter lock without eight workers starting calls around it.
        Calls already running go on; pauses nest."""
        with self._lock:
            self._pauses += 1
            self._open.clear()

    def resume(self) -> None:
        """End a :meth:`pause`."""
        with self._lock:
            self._pauses -= 1
            if self._pauses <= 0:
                self._pauses = 0
                self._open.set()

    def close(self) -> None:
        """Stop taking work; idle workers exit (stuck ones are daemon threads)."""
        self._stop.set()
        for _ in range(self.workers):
            self._queue.put(None)

    # -- threads ---------------------------------------------------------------

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            call = self._queue.get()
            if call is None:
                return
            if not self._open.is_set():
                self._open.wait(_PAUSE_MAX_S)
            # An interrupt delivered after the call's own code had returned
            # (the race the lock in _run narrows but cannot close) undoes nothing.
            with contextlib.suppress(Interrupted):
                self._run(call, ident)

    def _run(self, call: _Call, ident: int) -> None:
        with call.lock:
            never_started = call.expired  # timed out while queued
            if not never_started:
                call.thread = ident
                call.started = time.monotonic()
        if never_started:
            self._forget(call)
            return
        _current.call = call
        try:
            value = call.fn()
        except Interrupted:
            call.settle(error=self._timeout(call))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            call.settle(error=exc)
        else:
            call.settle(value)
        finally:
            _current.call = None
            with call.lock:
                call.finished = True
                expired = call.expired
            if expired:
                absorb_interrupt()  # one not yet raised must not hit the next call
            self._forget(call)

    def _forget(self, call: _Call) -> None:
        with self._lock:
            self._calls.discard(call)

    def _timeout(self, call: _Call) -> Timeout:
        where = call.version or call.target
        return Timeout(
            f"{where} {call.symbol}() did not return within {call.timeout_s:g} s; "
            "it was interrupted (if it is blocked in C it shows as stuck in 'status')",
            version=where,
            symbol=call.symbol,
            timeout_s=call.timeout_s,
        )

    def _watch(self) -> None:
        while not self._stop.wait(_SCAN_S):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._calls if not c.expired and c.deadline <= now]
            for call in late:
                with call.lock:
                    if call.finished:
                        continue
                    call.expired = True
                    if call.thread is not None:
                        interrupt_thread(call.thread)
                    else:
                        self._forget(call)
                call.settle(error=self._timeout(call))
