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

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Interrupted", "clear_interrupt", "interrupt_thread", "run_with_deadline"]

T = TypeVar("T")

# Two prototypes of one C function: raise (an exception type) and clear (NULL).
_PROTO_RAISE = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)
_PROTO_CLEAR = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_set_async_exc = _PROTO_RAISE(("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_async_exc = _PROTO_CLEAR(("PyThreadState_SetAsyncExc", ctypes.pythonapi))


class Interrupted(BaseException):
    """Raised inside a thread whose work overran its deadline."""


def interrupt_thread(ident: int) -> bool:
    """Ask thread ``ident`` to raise :class:`Interrupted` at its next bytecode."""
    return bool(_set_async_exc(ident, Interrupted))


def clear_interrupt(ident: int) -> None:
    """Withdraw a pending :class:`Interrupted` that was not raised yet."""
    _clear_async_exc(ident, None)


class _Watch:
    """One deadline on one thread: fires at most once, never after ``finish``."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.lock = threading.Lock()
        self.done = False
        self.fired = False

    def fire(self) -> None:
        with self.lock:
            if not self.done:
                self.fired = interrupt_thread(self.ident)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            if self.fired:
                clear_interrupt(self.ident)


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()``, interrupted with :class:`Interrupted` after ``seconds``.

    For rare, slow operations over objects someone else wrote (introspection
    of a loaded module: a ``__signature__`` or ``__repr__`` that never
    returns). It costs a timer thread per call, so it is not for the hot path.
    """
    watch = _Watch(threading.get_ident())
    timer = threading.Timer(seconds, watch.fire)
    timer.daemon = True
    timer.start()
    try:
        return fn()
    finally:
        timer.cancel()
        watch.finish()
