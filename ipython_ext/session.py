"""The machinery behind ``%hotswap``: one kernel's connection and the engines it started.

Like the reloader class in IPython's autoreload, this knows nothing about
IPython: the magics hold a :class:`HotswapSession` and only parse, call and
display. It talks to engines through :mod:`livepatch.client` alone; the
engine core is never imported here.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

from livepatch.client import Client
from livepatch.errors import LivepatchError
from livepatch.launcher import EngineProcess
from livepatch.runtime import (
    ConnectionInfo,
    EngineNotFound,
    list_engines,
    pid_alive,
    validate_name,
)

__all__ = ["DEFAULT_RATE", "EngineStartFailed", "HotswapSession", "StartedEngine"]

#: Synthetic calls per second through an engine started by ``%hotswap start``.
DEFAULT_RATE = 20.0


class EngineStartFailed(LivepatchError, RuntimeError):
    """``%hotswap start`` could not bring an engine up."""

    kind = "engine-start"


#: The names ``start`` gives: ``ipython-<kernel pid>``.
_KERNEL_ENGINE = re.compile(r"ipython-([0-9]+)")


@dataclass
class StartedEngine:
    """An engine process this session started, and how to stop it."""

    name: str
    rate: float
    process: EngineProcess

    @property
    def pid(self) -> int:
        """The engine's pid."""
        return self.process.pid

    @property
    def ready(self) -> dict[str, Any]:
        """Its ready line (name, pid, transport, address)."""
        return self.process.ready

    @property
    def alive(self) -> bool:
        """Whether the engine process is still running."""
        return self.process.alive

    def stop(self) -> None:
        """Terminate the engine (SIGTERM, then SIGKILL) and wait for it (idempotent)."""
        self.process.stop()


class HotswapSession:
    """The client a kernel uses, connected on demand, plus the engines it started.

    Engines started here are stopped by :meth:`close`, which runs at
    interpreter exit (the kernel shutting down) and when the extension is
    unloaded.
    """

    def __init__(self, client_name: str = "ipython") -> None:
        self.client_name = client_name
        self._client: Client | None = None
        self.engines: dict[str, StartedEngine] = {}
        self._atexit = False
        #: The engine the session is bound to (name, pid): after a lost
        #: connection it reconnects to that engine only, never to another.
        self.bound: tuple[str, int] | None = None
        #: Said once with the next result (the bound engine was restarted).
        self.note = ""
        #: ``%hotswap load FILE --watch`` loops (ipython_ext.watching.NotebookWatch)
        #: and ``%hotswap watch`` charts (ipython_ext.chart.TrafficChart).
        self.watches: list[Any] = []

    # -- connection ---------------------------------------------------------------

    @property
    def connected_to(self) -> str | None:
        """The name of the engine the session talks to, if any."""
        return self._client.info.name if self._client is not None else None

    def connect(self, name: str | None = None) -> Client:
        """Connect to the engine ``name``, or to the only one running."""
        engines = list_engines()
        if name is None:
            if not engines:
                raise EngineNotFound(
                    "no running engine found: `%hotswap start` one for this kernel, "
                    "or run `livepatch engine` in a terminal"
                )
            if len(engines) > 1:
                names = ", ".join(e.name for e in engines)
                raise EngineNotFound(
                    f"several engines are running ({names}): pick one with `%hotswap connect NAME`"
                )
            info = engines[0]
        else:
            found = [e for e in engines if e.name == name]
            if not found:
                running = ", ".join(e.name for e in engines) or "none"
                raise EngineNotFound(f"no running engine named {name!r} (running: {running})")
            info = found[0]
        return self._open(info)

    def _open(self, info: ConnectionInfo) -> Client:
        client = Client(info, client_name=self.client_name)
        self.disconnect()
        self._client = client
        self.bound = (info.name, info.pid)
        return client

    def client(self) -> Client:
        """The connected client.

        Before any connection: the only running engine. After one: the same
        engine again (a restart under its name is said in :attr:`note`); if it
        is gone, an error, never another engine that happens to run.
        """
        if self._client is not None and not self._client.dropped():
            return self._client
        # Gone since the last command (stopped, or restarted under its name):
        # nothing was sent on it yet, so finding the engine again is safe.
        self.disconnect()
        if self.bound is None:
            return self.connect()
        name, pid = self.bound
        found = [e for e in list_engines() if e.name == name]
        if not found:
            others = ", ".join(e.name for e in list_engines()) or "none"
            raise EngineNotFound(
                f"engine {name!r} (pid {pid}) is gone; this session stays bound to it: "
                f"`%hotswap connect NAME` picks another (running: {others}), "
                "`%hotswap start` runs one"
            )
        client = self._open(found[0])
        if found[0].pid != pid:
            self.note = (
                f"engine {name!r} was restarted (pid {pid}, now {found[0].pid}); reconnected"
            )
        return client

    def take_note(self) -> str:
        """The pending note (a restarted engine), once."""
        note, self.note = self.note, ""
        return note

    def disconnect(self) -> None:
        """Close the connection (the engine keeps running)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- engines started here ---------------------------------------------------

    def default_name(self) -> str:
        """The name ``start`` gives an engine: one per kernel process."""
        return f"ipython-{os.getpid()}"

    def start(self, name: str | None = None, rate: float = DEFAULT_RATE) -> StartedEngine:
        """Start a demo engine with live traffic, or reuse the one of that name."""
        name = name or self.default_name()
        try:
            validate_name(name)
        except ValueError as exc:
            raise EngineStartFailed(str(exc)) from None
        if rate < 0:
            raise EngineStartFailed(f"--rate {rate:g}: use 0 (no traffic) or more calls per second")
        mine = self.engines.get(name)
        if mine is not None and mine.alive:
            self.connect(name)
            return mine
        if mine is not None:  # it died: reap it before starting anew
            mine.stop()
            del self.engines[name]
        if any(e.name == name for e in list_engines()):
            raise EngineStartFailed(
                f"an engine named {name!r} is already running (not started here): "
                f"`%hotswap connect {name}` to use it"
            )
        # Tied to this kernel: a kernel killed with -9 takes its engine along.
        try:
            process = EngineProcess(
                name,
                ["--traffic", f"{rate:g}"] if rate else [],
                tie_to_parent=True,
                # ipython-PID is this kernel's own name: no log left behind.
                ephemeral=name == self.default_name(),
            )
        except ValueError as exc:  # a bad LIVEPATCH_LOG_MAX_BYTES
            raise EngineStartFailed(f"could not start engine {name!r}: {exc}") from None
        try:
            process.start()
        except (LivepatchError, OSError, ValueError) as exc:
            process.stop()
            message = exc.message if isinstance(exc, LivepatchError) else str(exc)
            raise EngineStartFailed(f"could not start engine {name!r}: {message}") from None
        started = StartedEngine(name, rate, process)
        self.engines[name] = started
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        try:
            self.connect(name)
        except LivepatchError:
            self.stop(name)
            raise
        return started

    def stop(self, name: str | None = None) -> list[str]:
        """Stop the engines started here (or just ``name``); returns their names.

        ``name`` may also be an engine an earlier kernel of this user started
        (``ipython-PID`` whose kernel is gone).
        """
        if name is not None and name not in self.engines:
            self._stop_orphan(name)
            return [name]
        names = [name] if name is not None else list(self.engines)
        for n in names:
            self._unbind(n)
            self.engines.pop(n).stop()
        return names

    def _unbind(self, name: str) -> None:
        # Stopped on purpose: the session is free to find another engine.
        if self.connected_to == name:
            self.disconnect()
        if self.bound is not None and self.bound[0] == name:
            self.bound = None

    def _stop_orphan(self, name: str, timeout: float = 10.0) -> None:
        mine = ", ".join(self.engines) or "none"
        found = [e for e in list_engines() if e.name == name]
        match = _KERNEL_ENGINE.fullmatch(name)
        if not found or match is None or pid_alive(int(match.group(1))):
            raise EngineNotFound(
                f"no engine named {name!r} was started here (started: {mine}); "
                "`%hotswap stop NAME` also stops an `ipython-PID` engine whose kernel is gone"
            )
        info = found[0]
        # Connection files live in this user's private runtime dir (0700), so
        # the engine is this user's; ask it to stop as the launcher would.
        self._unbind(name)
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(info.pid):
            if time.monotonic() > deadline:
                os.kill(info.pid, signal.SIGKILL)
                break
            time.sleep(0.05)  # not our child: no wait() to block on

    def unwatch(self) -> list[str]:
        """Stop every file watch; the names of the files that were watched."""
        stopped = [w.label for w in self.watches]
        for watch in self.watches:
            watch.stop()
        self.watches.clear()
        return stopped

    def close(self) -> None:
        """Stop every watch and every engine started here, and disconnect: kernel exit."""
        self.unwatch()
        self.disconnect()
        self.stop()
        if self._atexit:
            atexit.unregister(self.close)
            self._atexit = False
