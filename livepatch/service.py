"""What each control-protocol method does to the engine, with no I/O.

The server decodes a request with :mod:`livepatch.protocol`, hands the
method name and params to :meth:`Service.handle`, and writes back what it
returns (a JSON-able value) or the :class:`~livepatch.errors.LivepatchError`
it raises. Lifecycle operations are recorded in the journal with the peer
that asked for them, success or failure alike.
"""

from __future__ import annotations

import contextlib
import traceback
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__
from .convert import ConversionError, arguments_from_json, to_json
from .engine import Engine
from .errors import CallFailed, LivepatchError
from .journal import Journal, Peer
from .protocol import METHODS, PROTOCOL_VERSION, InvalidParams

if TYPE_CHECKING:
    from .state import SourceStore

__all__ = ["LIFECYCLE_METHODS", "Service"]

#: Methods that change state: journaled, and announced to subscribers.
LIFECYCLE_METHODS = frozenset({"load", "check", "swap", "rollback", "purge", "unload"})


class Service:
    """The engine behind the control protocol: one method per protocol method."""

    def __init__(
        self, engine: Engine, journal: Journal | None = None, store: SourceStore | None = None
    ) -> None:
        self.engine = engine
        self.journal = journal if journal is not None else Journal()
        self.store = store
        self._handlers: dict[str, Callable[[dict[str, Any], Peer], Any]] = {
            "hello": self._hello,
            "status": self._status,
            "load": self._load,
            "check": self._check,
            "swap": self._swap,
            "rollback": self._rollback,
            "purge": self._purge,
            "unload": self._unload,
            "symbols": self._symbols,
            "source": self._source,
            "diff": self._diff,
            "call": self._call,
            "journal": self._journal,
        }

    @property
    def methods(self) -> list[str]:
        """Every protocol method (``subscribe`` is the server's own)."""
        return sorted(METHODS)

    def handle(self, method: str, params: dict[str, Any], peer: Peer) -> Any:
        """Run one validated request; returns a JSON-able result.

        Raises :class:`LivepatchError` subclasses for every failure a client
        can cause. Lifecycle methods are journaled either way.
        """
        handler = self._handlers[method]
        if method not in LIFECYCLE_METHODS:
            return handler(params, peer)
        target = params.get("version") or params.get("slot")
        try:
            result = handler(params, peer)
        except LivepatchError as exc:
            self.journal.record(method, target, peer=peer, ok=False, result=exc.message)
            raise
        version = result.get("version") or result.get("active") or target
        sha = self._sha(version)
        ok = result.get("ok") is not False  # a check with problems is journaled as failed
        self.journal.record(
            method, version, peer=peer, ok=ok, result=_summary(method, result), sha256=sha
        )
        return result

    def _sha(self, version: str | None) -> str | None:
        if not version or "@" not in version:
            return None
        try:
            return self.engine.info(version).sha256
        except LivepatchError:
            return None

    # -- methods ---------------------------------------------------------------

    def _hello(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "protocol": PROTOCOL_VERSION,
            "server": f"livepatch {__version__}",
            "slots": list(self.engine.slots),
            "methods": self.methods,
        }

    def _status(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self.engine.status().to_json()

    def _load(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        slot = params["slot"]
        before = set(self.engine.versions(slot))
        source: str | None = params.get("source")
        if source is not None:
            version = self.engine.load(slot, source, params.get("filename"))
        else:
            version = self.engine.load_path(slot, params["path"], params.get("filename"))
            with contextlib.suppress(LivepatchError):  # a ready .so has no source
                source = self.engine.source(version)
        info = self.engine.info(version)
        if self.store is not None and source is not None:
            # Durable before the journal line that names it (and the reply).
            # A ready shared object is not kept: a restart cannot restore it.
            self.store.put(source, info.filename)
        return {
            "version": version,
            "new": version not in before,
            "state": info.state,
            "sha256": info.sha256,
        }

    def _check(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        report = self.engine.check(params["version"])
        return {**report.to_json(), "state": self.engine.info(params["version"]).state}

    def _swap(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self.engine.swap(params["version"], expect=params.get("expect")).to_json()

    def _rollback(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self.engine.rollback(params["slot"]).to_json()

    def _purge(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.engine.purge(params["version"])
        return {"version": params["version"], "state": self.engine.info(params["version"]).state}

    def _unload(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        result = self.engine.unload(params["version"], wait_s=float(params.get("wait_s", 0.0)))
        return result.to_json()

    def _symbols(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self.engine.symbols(params["version"]).to_json()

    def _source(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        version = params["version"]
        return {
            "version": version,
            "filename": self.engine.info(version).filename,
            "source": self.engine.source(version),
        }

    def _diff(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return self.engine.diff(params["a"], params["b"]).to_json()

    def _journal(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        entries = self.journal.entries(params.get("limit"))
        return {"entries": [e.to_json() for e in entries]}

    def _call(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        symbol = params["symbol"]
        args = list(params.get("args") or [])
        kwargs = dict(params.get("kwargs") or {})
        if "version" in params:
            version = params["version"]
            fn = self.engine.function(version, symbol)
            return self._invoke(version, symbol, fn, args, kwargs, self.engine.call_version)
        slot = params["slot"]
        # Pin the slot so the version we convert arguments for is the one that
        # runs, and the reply can say which version that was.
        with self.engine.pin(slot) as rules:
            fn = self.engine.function(rules.version, symbol)
            return self._invoke(
                rules.version,
                symbol,
                fn,
                args,
                kwargs,
                lambda _v, _s, *a, **k: getattr(rules, symbol)(*a, **k),
            )

    def _invoke(
        self,
        version: str,
        symbol: str,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        runner: Callable[..., Any],
    ) -> dict[str, Any]:
        hints = self._hints(version, symbol, fn)
        try:
            py_args, py_kwargs = arguments_from_json(fn, args, kwargs, hints)
        except ConversionError as exc:
            raise InvalidParams(f"{version} {symbol}: {exc}", param="args") from None
        try:
            result = runner(version, symbol, *py_args, **py_kwargs)
        except LivepatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - the rule failed: the caller is told
            raise _call_failed(version, symbol, exc) from None
        return {"version": version, "result": to_json(result)}

    def _hints(self, version: str, symbol: str, fn: Callable[..., Any]) -> dict[str, Any]:
        # The interface's annotations are the contract (host types); the
        # function's own are used for symbols outside the interface.
        slot = version.rpartition("@")[0]
        interface = self.engine.interface(slot)
        member = getattr(interface, symbol, None) if interface else None
        for source in (member, fn):
            if source is None:
                continue
            try:
                return typing.get_type_hints(source)
            except Exception:  # noqa: BLE001 - unresolvable annotations: try the next
                continue
        return {}


def _call_failed(version: str, symbol: str, exc: Exception) -> CallFailed:
    where: dict[str, Any] = {}
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if frame.filename.endswith(f"[{version}]"):
            where = {"filename": frame.filename.rsplit(" [", 1)[0], "line": frame.lineno}
            break
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    at = f" at {where['filename']}:{where['line']}" if where else ""
    return CallFailed(
        f"{version} {symbol}() raised {message}{at}",
        version=version,
        exception=type(exc).__name__,
        **where,
    )


def _summary(method: str, result: dict[str, Any]) -> str:
    if method == "load":
        return f"loaded {result['version']}" + ("" if result.get("new") else " (existing)")
    if method == "check":
        count = len(result.get("problems", []))
        return "ok" if result.get("ok") else f"{count} problem{'s' * (count != 1)}"
    if method in ("swap", "rollback"):
        return f"{result.get('previous') or 'nothing'} -> {result['active']}"
    if method == "unload":
        return (
            "freed" if result.get("freed") else f"not freed ({result.get('in_flight')} in flight)"
        )
    return str(result.get("state", "ok"))
