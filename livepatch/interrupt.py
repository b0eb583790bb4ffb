"""Stopping Python code that overran its deadline, from another thread.

CPython can raise an exception in another thread
(``PyThreadState_SetAsyncExc``): the target sees it at its next bytecode, so
a rule looping in Python stops; a thread blocked in C (``time.sleep``, a lock,
a socket, a regex that backtracks without end) does not see it until C
returns. What cannot be stopped is reported, never waited for.

:class:`Interrupted` derives from ``BaseException`` so that a rule's
``except Exception`` cannot swallow it.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "Interrupted",
    "ThreadDeadline",
    "absorb_interrupt",
    "interrupt_thread",
    "run_with_deadline",
]

T = TypeVar("T")

_PROTO_RAISE = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)
_set_async_exc = _PROTO_RAISE(("PyThreadState_SetAsyncExc", ctypes.pythonapi))


class Interrupted(BaseException):
    """Raised inside a thread whose work overran its deadline."""


def interrupt_thread(ident: int) -> bool:
    """Ask thread ``ident`` to raise :class:`Interrupted` at its next bytecode."""
    return bool(_set_async_exc(ident, Interrupted))


def absorb_interrupt() -> None:
    """Take delivery of an :class:`Interrupted` that may still be pending for
    the calling thread, and drop it.

    Withdrawing it instead (``PyThreadState_SetAsyncExc(id, NULL)``) leaves
    CPython 3.11's eval breaker signalled for good, and the next traced frame
    of that thread then spins at its first instruction forever. A pending
    exception arrives at the next eval-breaker check, which a loop's backward
    jump makes.
    """
    with contextlib.suppress(Interrupted):
        for _ in range(64):
            pass


class ThreadDeadline:
    """One deadline on one thread: fires at most once, never after ``finish``
    (so an interrupt never lands in what the thread does next)."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.lock = threading.Lock()
        self.done = False
        self.fired = False

    def fire(self) -> None:
        with self.lock:
            if not self.done and not self.fired:
                self.fired = interrupt_thread(self.ident)

    def finish(self) -> bool:
        """No firing from now on; True if it fired (the caller absorbs it)."""
        with self.lock:
            self.done = True
            return self.fired


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()``, interrupted with :class:`Interrupted` after ``seconds``.

    For rare, slow operations over objects someone else wrote (introspection
    of a loaded module: a ``__signature__`` or ``__repr__`` that never
    returns). It costs a timer thread per call, so it is not for the hot path.
    """
    watch = ThreadDeadline(threading.get_ident())
    timer = threading.Timer(seconds, watch.fire)
    timer.daemon = True
    timer.start()
    try:
        return fn()
    finally:
        timer.cancel()
        if watch.finish():
            absorb_interrupt()
