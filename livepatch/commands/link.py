"""The shell's connection to its engine, shared by every thread of the shell.

The command runner, the completer (in its own thread) and the status monitor
(in another) all talk to the engine through one :class:`~livepatch.client.Client`,
which already serializes requests. What this adds is the reconnect policy:
when the engine goes away the shell says so, keeps running, and reconnects
as soon as an engine of the same name is back, without retrying whatever was
in flight (a lifecycle operation may or may not have happened).
"""

from __future__ import annotations

import threading

from ..client import Client, ConnectionLost
from ..errors import LivepatchError

__all__ = ["EngineGone", "EngineLink"]


class EngineGone(ConnectionLost):
    """The engine is still not reachable; the message says which one."""


class EngineLink:
    """One engine connection plus the knowledge of whether it was lost."""

    def __init__(self, client: Client) -> None:
        self.client = client
        # One reconnect at a time: the monitor thread and the runner may both
        # notice the loss, and Client.reconnect is not meant to race itself.
        self._lock = threading.Lock()
        self._lost = False
        self._unannounced = False
        #: The process the link is bound to (a restart under the same name is told).
        self._pid = client.info.pid

    @property
    def name(self) -> str:
        """The engine's name (stable across reconnects)."""
        return self.client.info.name

    @property
    def lost(self) -> bool:
        """Whether the connection is known to be gone."""
        return self._lost or self.client.dropped()

    def mark_lost(self) -> None:
        """Record that a request found the engine gone."""
        self._lost = True

    def try_reconnect(self) -> bool:
        """Reconnect if the connection is gone; True when connected afterwards.

        Never raises: used by background threads that only want to know.
        """
        try:
            self._reconnect()
        except LivepatchError:
            return False
        return True

    def ensure(self) -> str:
        """Make sure the engine is reachable before a command.

        Returns a note when the connection came back since the last call (so
        the caller can say so: reconnected, or the engine was restarted),
        else ``""``; raises :class:`EngineGone` while it is still gone.
        """
        try:
            self._reconnect()
        except LivepatchError as exc:
            raise EngineGone(
                f"not connected: engine {self.name!r} is still gone ({exc.message}); "
                "the shell reconnects when it is back"
            ) from None
        announce, self._unannounced = self._unannounced, False
        if not announce:
            return ""
        pid = self.client.info.pid
        if self._pid and pid != self._pid:
            # Same name, another process: not the engine the session knew.
            note = (
                f"reconnected to engine {self.name!r}: it was restarted (pid {self._pid}, "
                f"now {pid}); versions it did not restore are gone (see `status`)"
            )
        else:
            note = f"reconnected to engine {self.name!r}"
        self._pid = pid
        return note

    def _reconnect(self) -> None:
        with self._lock:
            if not self.lost:
                return
            # Whoever notices first reconnects; the runner announces it later.
            self._unannounced = True
            self._lost = True
            self.client.reconnect()
            self._lost = False
