"""A synchronous client for a running engine, used by the CLI, shell and magics.

>>> client = Client.connect()              # the only engine running  # doctest: +SKIP
>>> v = client.load("spam", open("spam_v2.py").read(), "spam_v2.py")  # doctest: +SKIP
>>> client.check(v).ok and client.swap(v)                          # doctest: +SKIP

Engines are found through their connection files (:mod:`livepatch.runtime`).
Results come back typed (``ResolveReport``, ``SymbolTable``, ...), errors as
the :class:`~livepatch.errors.LivepatchError` subclass of their ``kind``. The
client is thread-safe: one request at a time on the wire, under a lock, so a
shell's completer and toolbar threads can share it. Event notifications that
arrive between replies are queued for :meth:`Client.events`.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported where used: a one-shot verb should not pay for the analysis
    # modules (resolve, bytecode, symbols) when it only swaps.
    from .resolve import ResolveReport
    from .symbols import SymbolDiff, SymbolTable

from .errors import LivepatchError, LoadFailed
from .filekind import NATIVE_SUFFIXES, file_kind
from .files import read_regular_file, text_or_object
from .protocol import (
    MAX_FRAME,
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    ErrorResponse,
    Notification,
    RemoteProtocolError,
    Response,
    error_from_response,
)
from .runtime import ConnectionInfo, find_engine

__all__ = [
    "NATIVE_SUFFIXES",
    "Client",
    "ConnectionLost",
    "default_slot",
    "file_load_params",
    "json_arguments",
    "split_call_target",
]


def default_slot(slots: list[dict[str, Any]], filename: str | None = None) -> str:
    """The slot to load ``filename`` into when none is named.

    ``slots`` is ``status()["slots"]``. The only slot, or else the only slot
    of the file's kind: a name ending in ``.c`` or ``.so`` (``.so.1`` ...)
    goes to the native slot, anything else to the Python slot, so the demo
    engine's ``spam`` and ``spam_native`` need no ``--slot``. Raises
    ``ValueError`` with a message for the user when that is still ambiguous.
    """
    names = [str(s["name"]) for s in slots]
    if len(names) == 1:
        return names[0]
    if not names:
        raise ValueError("the engine has no slots to load into")
    if filename is not None:
        kind = file_kind(filename)
        # Engines from before native slots send no "kind": Python slots.
        same = [str(s["name"]) for s in slots if s.get("kind", "python") == kind]
        if len(same) == 1:
            return same[0]
    raise ValueError(f"the engine has several slots ({', '.join(names)}): add --slot SLOT")


class ConnectionLost(LivepatchError, ConnectionError):
    """The engine went away (or never answered); :meth:`Client.reconnect` retries."""

    kind = "connection-lost"


class Client:
    """A connection to one engine."""

    def __init__(
        self, info: ConnectionInfo, *, client_name: str = "livepatch", timeout: float = 60.0
    ) -> None:
        self.info = info
        self.client_name = client_name
        self.timeout = timeout
        self.hello: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._conn = ClientConnection()
        self._lock = threading.RLock()
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self._subscribed = False
        self._open()

    @classmethod
    def connect(
        cls,
        name: str | None = None,
        *,
        directory: Path | None = None,
        client_name: str = "livepatch",
        timeout: float = 60.0,
    ) -> Client:
        """Connect to the engine ``name`` (or the only one running)."""
        return cls(find_engine(name, directory), client_name=client_name, timeout=timeout)

    # -- connection -------------------------------------------------------------

    def _open(self) -> None:
        if self.info.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = self.info.address
        else:
            host, _, port = self.info.address.rpartition(":")
            sock = socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
            )
            target = (host.strip("[]"), int(port))
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise ConnectionLost(
                f"cannot reach engine {self.info.name!r} at {self.info.address}: "
                f"{exc.strerror or exc}"
            ) from None
        self._sock = sock
        self._conn = ClientConnection()
        params: dict[str, Any] = {"client": self.client_name, "token": self.info.token}
        self.hello = self.request("hello", params)
        if self._subscribed:
            self.request("subscribe", {})

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the socket is open (it may still turn out dead on use)."""
        return self._sock is not None

    def dropped(self) -> bool:
        """Whether the engine has closed this connection, seen without sending
        anything or waiting: an idle connection to an engine that stopped (or
        was restarted) meanwhile. True also when not connected. A request sent
        on a dropped connection could not tell whether the engine ran it;
        checked before sending, reconnecting is safe (urllib3 and redis-py
        check their pooled connections the same way). Takes no lock, so a
        prompt can ask while another thread waits for a reply."""
        sock = self._sock
        if sock is None:
            return True
        try:
            # Readable with nothing to read is the peer's close; pending bytes
            # (a reply on its way, events after subscribe) are a live one. The
            # socket has a timeout, so recv would wait for data: poll first.
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True  # reset by the peer, or closed meanwhile

    def reconnect(self, wait_s: float = 0.0) -> None:
        """Open a new connection, re-reading the connection file; retries for ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            self.close()
            try:
                self.info = find_engine(self.info.name, _directory_of(self.info))
                self._open()
                return
            except LivepatchError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)  # the engine is restarting: poll with a deadline

    # -- requests ---------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request and wait for its reply; returns the raw result."""
        with self._lock:
            return self.receive(self.send(method, params))

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a request without waiting; :meth:`receive` its reply (by id).

        For callers that start the same request on many engines at once (a
        fleet commit); make no other request on this client in between.
        """
        with self._lock:
            sock = self._sock
            if sock is None:
                raise ConnectionLost(f"not connected to engine {self.info.name!r}: reconnect")
            rid, frame = self._conn.send_request(method, params or {})
            try:
                sock.sendall(frame)
            except OSError as exc:
                raise self._lost(exc) from None
            return int(rid)

    def receive(self, rid: int) -> Any:
        """Wait for the reply to request ``rid``; returns the raw result."""
        with self._lock:
            sock = self._sock
            if sock is None:
                raise ConnectionLost(f"not connected to engine {self.info.name!r}: reconnect")
            try:
                while True:
                    event = self._next(sock)
                    if isinstance(event, Notification):
                        if event.method == "event":
                            self._events.append(event.params)
                        continue
                    if event.id != rid:
                        raise RemoteProtocolError(f"reply to {event.id!r}, expected {rid}")
                    break
            except (OSError, RemoteProtocolError) as exc:
                raise self._lost(exc) from None
            if isinstance(event, ErrorResponse):
                raise error_from_response(event)
            return event.result

    def _lost(self, exc: Exception) -> ConnectionLost:
        self.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return ConnectionLost(
            f"lost the connection to engine {self.info.name!r} ({reason}): "
            "it may have stopped; reconnect when it is back"
        )

    def _next(self, sock: socket.socket) -> Response | ErrorResponse | Notification:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                data = sock.recv(1 << 16)
                self._conn.receive_data(data)
                continue
            if isinstance(event, ConnectionClosed):
                raise OSError("the engine closed the connection")
            assert isinstance(event, Response | ErrorResponse | Notification)
            return event

    # -- methods ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Slots, versions, states and call counts."""
        result: dict[str, Any] = self.request("status")
        return result

    def default_slot(self, filename: str | None = None) -> str:
        """See :func:`default_slot`; asks the engine for its slots."""
        return default_slot(self.status()["slots"], filename)

    def load(self, slot: str, source: str, filename: str | None = None) -> str:
        """Load a source as a new version of ``slot``; returns its id."""
        params = {"slot": slot, "source": source}
        if filename:
            params["filename"] = filename
        return str(self.request("load", params)["version"])

    def load_file(self, path: str | os.PathLike[str], slot: str) -> str:
        """Load a file as a new version of ``slot``: its text, or, for a ready
        ELF shared object (native slots), its bytes (see :func:`file_load_params`)."""
        params = {"slot": slot, **file_load_params(Path(path))}
        return str(self.request("load", params)["version"])

    def load_object(self, slot: str, data: bytes, filename: str | None = None) -> str:
        """Load a ready shared object's bytes as a new version of a native
        ``slot`` (the engine maps it from memory); returns its id."""
        params = {"slot": slot, "object": base64.b64encode(data).decode("ascii")}
        if filename:
            params["filename"] = filename
        return str(self.request("load", params)["version"])

    def load_path(
        self, slot: str, path: str | os.PathLike[str], filename: str | None = None
    ) -> str:
        """Load a file *on the engine's machine* by path (a source, or a ready
        shared object for a native slot); returns the version id."""
        params = {"slot": slot, "path": os.fspath(path)}
        if filename:
            params["filename"] = filename
        return str(self.request("load", params)["version"])

    def check(self, version: str) -> ResolveReport:
        """Resolve-check a version; the report lists any problems."""
        from .resolve import ResolveReport

        return ResolveReport.from_json(self.request("check", {"version": version}))

    def swap(self, version: str, expect: str | None = None) -> dict[str, Any]:
        """Make a version active (compare-and-swap with ``expect``)."""
        params: dict[str, Any] = {"version": version}
        if expect is not None:
            params["expect"] = expect
        # An --expect that names no version (a typo) is the engine's
        # UnknownVersion, not a Conflict ("another client swapped first").
        result: dict[str, Any] = self.request("swap", params)
        return result

    def rollback(self, slot: str) -> dict[str, Any]:
        """Swap back to the most recently retired version."""
        result: dict[str, Any] = self.request("rollback", {"slot": slot})
        return result

    def purge(self, version: str) -> dict[str, Any]:
        """Forget a version's symbols."""
        result: dict[str, Any] = self.request("purge", {"version": version})
        return result

    def unload(self, version: str, wait_s: float | None = None) -> dict[str, Any]:
        """Drop the engine's references; says whether the code was freed."""
        params: dict[str, Any] = {"version": version}
        if wait_s is not None:
            params["wait_s"] = wait_s
        result: dict[str, Any] = self.request("unload", params)
        return result

    def symbols(self, version: str) -> SymbolTable:
        """A version's symbol table."""
        from .symbols import SymbolTable

        return SymbolTable.from_json(self.request("symbols", {"version": version}))

    def source(self, version: str) -> str:
        """The source a version was loaded from."""
        return str(self.request("source", {"version": version})["source"])

    def diff(self, a: str, b: str) -> SymbolDiff:
        """Two versions' symbol tables side by side."""
        from .symbols import SymbolDiff

        return SymbolDiff.from_json(self.request("diff", {"a": a, "b": b}))

    def call(
        self,
        target: str,
        symbol: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Call a rule: ``target`` is a slot (``spam``) or a version (``spam@2``).

        Returns ``{"version": ..., "result": ...}`` (JSON values). ``timeout_s``
        is the call's deadline in the engine (its default if not given).
        """
        params: dict[str, Any] = {"symbol": symbol, "args": args or [], "kwargs": kwargs or {}}
        params["version" if "@" in target else "slot"] = target
        if timeout_s is not None:
            params["timeout_s"] = timeout_s
        sock = self._sock
        if timeout_s is None or sock is None or timeout_s + 5 <= self.timeout:
            result: dict[str, Any] = self.request("call", params)
            return result
        # The engine answers `timeout` at the deadline: wait a little past it.
        sock.settimeout(timeout_s + 5)
        try:
            result = self.request("call", params)
        finally:
            if self._sock is sock:  # a lost connection closed it: its error stands
                sock.settimeout(self.timeout)
        return result

    def journal(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first."""
        params = {"limit": limit} if limit else {}
        entries: list[dict[str, Any]] = self.request("journal", params)["entries"]
        return entries

    def subscribe(self) -> None:
        """Ask for ``event`` notifications of every state change."""
        self.request("subscribe", {})
        self._subscribed = True

    def events(self, timeout: float = 0.0) -> Iterator[dict[str, Any]]:
        """Events received so far, then any arriving within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            while self._events:
                yield self._events.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not self._wait_for_event(remaining):
                return

    def _wait_for_event(self, timeout: float) -> bool:
        with self._lock:
            sock = self._sock
            if sock is None:
                return False
            sock.settimeout(timeout)
            try:
                event = self._next(sock)
            except TimeoutError:
                return False
            except OSError as exc:
                self.close()
                raise ConnectionLost(
                    f"lost the connection to engine {self.info.name!r}: {exc}"
                ) from None
            finally:
                if self._sock is not None:
                    self._sock.settimeout(self.timeout)
            if isinstance(event, Notification) and event.method == "event":
                self._events.append(event.params)
            return True


def _directory_of(info: ConnectionInfo) -> Path | None:
    return info.path.parent if info.path is not None else None


def split_call_target(text: str) -> tuple[str, str]:
    """``"spam.classify"`` -> ``("spam", "classify")``; ``spam@2.classify`` too.

    ``ValueError`` with a one-line hint when it is not SLOT.SYMBOL or
    SLOT@N.SYMBOL. Shared by the CLI, the shell and the magics so that all
    three accept exactly the same calls.
    """
    target, dot, symbol = text.rpartition(".")
    if not dot or not target or not symbol:
        raise ValueError(f"{text!r} is not SLOT.SYMBOL or SLOT@N.SYMBOL (e.g. spam.classify)")
    return target, symbol


def json_arguments(texts: list[str]) -> list[Any]:
    """Parse each command-line argument of a call as JSON.

    ``ValueError`` naming the first argument that is not JSON, and how to
    quote it.
    """
    values = []
    for i, text in enumerate(texts, 1):

        def no_constant(name: str, i: int = i) -> Any:
            raise ValueError(
                f"argument {i} holds {name}, which JSON (and so the engine) cannot carry: "
                "use a number or null"
            )

        try:
            values.append(json.loads(text, parse_constant=no_constant))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"argument {i} is not JSON ({exc.msg} at column {exc.colno}): quote it, "
                """e.g. '"text"' or '{"sender": "a@b.c", "text": "hi"}'"""
            ) from None
        except RecursionError:
            raise ValueError(
                f"argument {i} nests too deeply to decode: flatten it (the engine takes "
                "a few hundred levels at most)"
            ) from None
    return values


#: Largest object a front end sends as bytes: base64 (4 bytes for 3) and the
#: rest of the request must fit in one frame.
MAX_SENT_OBJECT = (MAX_FRAME - 64 * 1024) // 4 * 3


def file_load_params(path: Path) -> dict[str, Any]:
    """The ``load`` params (without ``slot``) for a file on this machine.

    Text goes as the ``source``; a ready ELF shared object goes as its bytes
    (``object``, base64), always: the engine maps it from memory, so the same
    command works whether or not the engine can see this file (another host,
    a container, a file deleted right after). ``ValueError`` with a one-line
    reason when the file cannot be read, is neither, or is an object too large
    for one frame. Shared by the CLI, the shell and the magics so that all
    three load files the same way.
    """
    # The engine's own bounded reader: regular files only (a FIFO never
    # blocks the client), at most one frame's worth.
    try:
        content = text_or_object(read_regular_file(str(path), MAX_FRAME, name=path.name), path.name)
    except LoadFailed as exc:
        raise ValueError(exc.message) from None
    if isinstance(content, str):
        return {"filename": path.name, "source": content}
    if len(content) > MAX_SENT_OBJECT:
        raise ValueError(
            f"{path.name} is {len(content) / 2**20:.1f} MiB: an object sent to the engine may be "
            f"at most {MAX_SENT_OBJECT / 2**20:.1f} MiB (one {MAX_FRAME // 2**20} MiB frame, "
            "base64); strip it (`strip --strip-debug`) or load it by path from the engine's "
            "machine (Client.load_path)"
        )
    return {"filename": path.name, "object": base64.b64encode(content).decode("ascii")}
