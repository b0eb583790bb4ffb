"""The control bell: rule calls step aside the moment a control request arrives.

A control client (a CLI verb, a shell, a deploy script) is read by a thread
of its own, so its requests never queue behind rule calls
(:meth:`livepatch.server.Server._read_here`). But when its frame arrives,
that thread still needs the interpreter lock, and under load the lock is
held by the data loop running calls back to back
(:mod:`livepatch.dataloop`). CPython hands the lock over only when a
waiter has waited a whole switch interval, and then to whichever waiter
wakes first: measured with eight clients calling flat out, that wait was
most of a swap's time, 3 ms at p99 for a swap that itself takes 0.5 ms.

So the data loop listens for the control clients too. Each control socket
is also registered here, armed for one event at a time (``EPOLLONESHOT``).
Between calls the data loop asks :meth:`ControlBell.check` (one
``epoll_wait`` with no timeout, only while a control client is connected);
a socket with a frame waiting *rings*: the loop pauses the call pool on
that client's behalf (:meth:`livepatch.callpool.CallPool.pause`, at most
20 ms) and so stops at its next call, and the lock goes to the control
thread at once. That thread takes the pause over (:meth:`take`) and ends it
when it has answered, as it would have ended its own.

States of one control socket, each change under the bell's lock:

- ``ARMED``: waiting for a frame; the data loop may ring it.
- ``RUNG``: the data loop paused the calls for it; the control thread owes
  the matching resume (:meth:`take` hands it over, :meth:`forget` returns it).
- ``SERVING``: its thread is reading or answering; the bell is disarmed.
"""

from __future__ import annotations

import contextlib
import select
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .callpool import CallPool

__all__ = ["ControlBell"]

_ARMED, _RUNG, _SERVING = "armed", "rung", "serving"
_EVENTS = select.EPOLLIN | select.EPOLLONESHOT


class ControlBell:
    """Control sockets the data loop watches between calls (see the module)."""

    def __init__(self, calls: CallPool) -> None:
        self._calls = calls
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._state: dict[int, str] = {}
        #: Control sockets registered: the data loop looks only when there are any.
        self.watched = 0

    def watch(self, fd: int) -> None:
        """Register a control client's socket, disarmed (its thread is serving)."""
        with self._lock:
            if fd in self._state:
                return
            try:
                self._epoll.register(fd, 0)
            except (OSError, ValueError):
                return  # closed meanwhile: nothing to watch
            self._state[fd] = _SERVING
            self.watched = len(self._state)

    def arm(self, fd: int) -> None:
        """The control thread is about to wait for ``fd``'s next frame."""
        with self._lock:
            if self._state.get(fd) != _SERVING:
                return
            self._state[fd] = _ARMED
            with contextlib.suppress(OSError, ValueError):
                self._epoll.modify(fd, _EVENTS)

    def take(self, fd: int) -> bool:
        """The control thread has the lock and reads ``fd``: ``True`` when the
        data loop paused the calls for it (the thread owes the resume)."""
        with self._lock:
            state = self._state.get(fd)
            if state is None:
                return False
            self._state[fd] = _SERVING
            return state == _RUNG

    def forget(self, fd: int) -> None:
        """``fd`` is no control client any more (it called a rule, or ended);
        a pause taken for it and not handed over ends here."""
        with self._lock:
            state = self._state.pop(fd, None)
            self.watched = len(self._state)
            if state is None:
                return
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        if state == _RUNG:
            self._calls.resume()

    def check(self) -> None:
        """From the data loop, between calls: pause the calls for every
        armed control socket that has a frame waiting."""
        try:
            events = self._epoll.poll(0)
        except (OSError, ValueError):  # closed: the server is stopping
            return
        for fd, _mask in events:
            with self._lock:
                if self._state.get(fd) != _ARMED:
                    continue  # its thread got there first, or it is gone
                self._state[fd] = _RUNG
                self._calls.pause()

    def close(self) -> None:
        """Stop watching (the server is stopping)."""
        with self._lock:
            self._state.clear()
            self.watched = 0
        self._epoll.close()
