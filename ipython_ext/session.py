"""The machinery behind ``%hotswap``: one kernel's connection and the engines it started.

Like the reloader class in IPython's autoreload, this knows nothing about
IPython: the magics hold a :class:`HotswapSession` and only parse, call and
display. It talks to engines through :mod:`livepatch.client` alone; the
engine core is never imported here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from livepatch.client import Client
from livepatch.demo import start_engine
from livepatch.errors import LivepatchError
from livepatch.runtime import EngineNotFound, list_engines, pid_alive, validate_name

__all__ = ["DEFAULT_RATE", "EngineStartFailed", "HotswapSession", "StartedEngine"]

#: Synthetic calls per second through an engine started by ``%hotswap start``.
DEFAULT_RATE = 20.0


class EngineStartFailed(LivepatchError, RuntimeError):
    """``%hotswap start`` could not bring an engine up."""

    kind = "engine-start"


@dataclass
class StartedEngine:
    """An engine process this session started, and how to stop it."""

    name: str
    pid: int
    rate: float
    ready: dict[str, Any]
    stack: contextlib.ExitStack = field(repr=False)

    @property
    def alive(self) -> bool:
        """Whether the engine process is still running."""
        return pid_alive(self.pid)

    def stop(self) -> None:
        """Terminate the engine and wait for it (idempotent)."""
        self.stack.close()


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
        client = Client(info, client_name=self.client_name)
        self.disconnect()
        self._client = client
        return client

    def client(self) -> Client:
        """The connected client; connects to the only running engine if need be."""
        if self._client is None or not self._client.connected:
            self._client = None
            return self.connect()
        return self._client

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
        stack = contextlib.ExitStack()
        try:
            ready = stack.enter_context(start_engine(name, rate))
        except (RuntimeError, OSError, ValueError) as exc:
            stack.close()
            raise EngineStartFailed(f"could not start engine {name!r}: {exc}") from None
        started = StartedEngine(name, int(ready["pid"]), rate, dict(ready), stack)
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
        """Stop the engines started here (or just ``name``); returns their names."""
        if name is not None and name not in self.engines:
            mine = ", ".join(self.engines) or "none"
            raise EngineNotFound(f"no engine named {name!r} was started here (started: {mine})")
        names = [name] if name is not None else list(self.engines)
        for n in names:
            if self.connected_to == n:
                self.disconnect()
            self.engines.pop(n).stop()
        return names

    def close(self) -> None:
        """Stop every engine started here and disconnect: kernel exit, ``%unload_ext``."""
        self.disconnect()
        self.stop()
        if self._atexit:
            atexit.unregister(self.close)
            self._atexit = False
