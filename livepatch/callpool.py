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

A call runs either on one of the pool's workers (:meth:`CallPool.submit`) or
on the thread that asks for it (:meth:`CallPool.run`: the server's reader
thread of a connection, so that a call costs no hand-off between threads).
Both count against the same ``workers`` running calls and ``queue_size``
waiting ones; a call that outlives its deadline on the asking thread keeps
its place just as a stuck worker does, and the asker is told to hand its
work to another thread.
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
#: The longest a pause holds calls back (see CallPool.pause): a control
#: request slower than that (a hand-off hook, a slow disk) shares the
#: interpreter lock with calls again rather than holding them all up.
_PAUSE_MAX_S = 0.02

_current = threading.local()


def note_version(version: str) -> None:
    """Record which version the call running on this thread pinned (shown
    for a stuck call). Does nothing outside the pool."""
    call = getattr(_current, "call", None)
    if call is not None:
        call.version = version


#: How a call run with :meth:`CallPool.run` is answered: ``(value, None)`` or
#: ``(None, error)``, exactly once.
Answer = Callable[[Any, "BaseException | None"], None]


@dataclass(eq=False, slots=True)
class _Call:
    fn: Callable[[], Any]
    target: str
    symbol: str
    timeout_s: float
    submitted: float
    deadline: float
    #: Settled for :meth:`CallPool.submit`; ``answer`` is called instead for run().
    future: Future[Any] | None = None
    answer: Answer | None = None
    #: run(): called by the watchdog once it answered a started call's timeout.
    on_stuck: Callable[[], None] | None = None
    version: str | None = None
    thread: int | None = None
    started: float | None = None
    expired: bool = False
    finished: bool = False
    settled: bool = False
    #: The watchdog answered the call after it had started: its thread, when
    #: it comes back, leaves the rest to the one ``on_stuck`` set up.
    stolen: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(
        self, value: Any = None, error: BaseException | None = None, *, watchdog: bool = False
    ) -> None:
        """First answer wins: the worker's result or the watchdog's timeout."""
        with self.lock:
            if self.settled:
                return
            self.settled = True
            self.stolen = watchdog and self.thread is not None
        if self.answer is not None:
            self.answer(value, error)
            return
        assert self.future is not None
        with contextlib.suppress(Exception):  # InvalidStateError: cancelled
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
        # Calls running now (stuck ones included) and threads waiting for one
        # of the ``workers`` places, which ``_free`` wakes.
        self._running = 0
        self._waiting = 0
        self._free = threading.Condition(self._lock)
        self._stop = threading.Event()
        # Set while no one asked for a pause: workers start calls.
        self._open = threading.Event()
        self._open.set()
        self._pauses = 0
        self._paused_until = 0.0
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
        call = self._admit(fn, target, symbol, timeout_s)
        call.future = Future()
        self._queue.put(call)
        return call.future

    def run(
        self,
        fn: Callable[[], Any],
        *,
        target: str,
        symbol: str,
        answer: Answer,
        on_stuck: Callable[[], None],
        timeout_s: float | None = None,
    ) -> bool:
        """Run ``fn()`` on this thread, once one of the pool's places is free,
        under the pool's deadline; ``answer`` gets its result or error (or
        :class:`Timeout`) exactly once, from this thread or, at the
        deadline, from the watchdog.

        Returns ``False`` when the watchdog answered the call after it had
        started (its deadline passed): the watchdog then called ``on_stuck``
        once the answer was out, and this thread, if it ever gets here,
        leaves whatever it was doing to the thread ``on_stuck`` set up. Raises :class:`Busy`
        when the pool is full (``answer`` is not called then).
        """
        call = self._admit(fn, target, symbol, timeout_s)
        call.answer = answer
        call.on_stuck = on_stuck
        return self._execute(call, threading.get_ident())

    def _admit(
        self, fn: Callable[[], Any], target: str, symbol: str, timeout_s: float | None
    ) -> _Call:
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
        return call

    def snapshot(self) -> dict[str, Any]:
        """Pool size, calls queued and running, and the stuck calls (past
        their deadline and still running: version, symbol, age)."""
        now = time.monotonic()
        with self._lock:
            calls = list(self._calls)
        # A call answered with its own result is done for its caller, though
        # its worker has some bookkeeping left: a client that got its reply
        # and asks at once must not see it running. One the watchdog answered
        # (expired) still runs, stuck, until it returns.
        calls = [c for c in calls if not (c.settled and not c.expired)]
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
        """Start no new call until :meth:`resume`, or for at most
        ``_PAUSE_MAX_S`` from now: a control request gets the interpreter
        lock without eight callers starting calls around it. Calls already
        running go on; pauses nest (the latest one's limit counts)."""
        with self._lock:
            self._pauses += 1
            self._paused_until = time.monotonic() + _PAUSE_MAX_S
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
            self._execute(call, ident)

    def _execute(self, call: _Call, ident: int) -> bool:
        """Run a call on this thread once a place is free; ``False`` when the
        watchdog answered it after it started (see :meth:`run`)."""
        if not self._open.is_set():
            left = self._paused_until - time.monotonic()
            if left > 0:
                self._open.wait(left)
        if not self._take_place(call):
            return True  # timed out while queued: answered, never started
        # An interrupt delivered after the call's own code had returned (the
        # race the lock in _run narrows but cannot close) undoes nothing.
        with contextlib.suppress(Interrupted):
            self._run(call, ident)
        while True:
            try:
                with call.lock:
                    call.finished = True  # no interrupt is sent from now on
                    expired = call.expired
                if expired:
                    absorb_interrupt()  # one not yet raised must not hit the next call
                if not call.settled:  # cut short before it was answered
                    call.settle(error=self._timeout(call))
                break
            except Interrupted:
                continue  # the pending one arrived here: it is taken now
        _current.call = None
        with self._lock:
            self._running -= 1
            self._calls.discard(call)
            if self._waiting:
                self._free.notify()
        return not call.stolen

    def _take_place(self, call: _Call) -> bool:
        """Wait for one of the ``workers`` places (the queue); ``False`` once
        the call's deadline passed while waiting (it is answered then)."""
        with self._lock:
            if self._running < self.workers:
                self._running += 1
                return True
            self._waiting += 1
            try:
                while self._running >= self.workers:
                    left = call.deadline - time.monotonic()
                    if left <= 0 or call.expired:
                        break
                    self._free.wait(min(left, _SCAN_S * 5))
                else:
                    self._running += 1
                    return True
            finally:
                self._waiting -= 1
        with call.lock:
            call.expired = True
        self._forget(call)
        call.settle(error=self._timeout(call))
        return False

    def _run(self, call: _Call, ident: int) -> None:
        with call.lock:
            if call.expired:  # timed out between its place and now: answered
                return
            call.thread = ident
            call.started = time.monotonic()
        _current.call = call
        try:
            value = call.fn()
        except Interrupted:
            call.settle(error=self._timeout(call))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            call.settle(error=exc)
        else:
            call.settle(value)

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
                call.settle(error=self._timeout(call), watchdog=True)
                if call.stolen and call.on_stuck is not None:
                    call.on_stuck()  # after the answer: it goes out first
