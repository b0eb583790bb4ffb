"""What each control-protocol method does to the engine, with no I/O.

The server decodes a request with :mod:`livepatch.protocol`, hands the
method name and params to :meth:`Service.handle`, and writes back what it
returns (a JSON-able value) or the :class:`~livepatch.errors.LivepatchError`
it raises. Lifecycle operations are recorded in the journal with the peer
that asked for them, success or failure alike.

Write-ahead: a lifecycle change reaches the journal through the engine's
``commit`` callback, which runs once the engine has decided the outcome and
before anything is visible; with a state directory it stores the source
and writes the record (fsync'd) there. If that fails the engine makes no
change and the client gets ``storage``. Failures and requests that changed
nothing are recorded afterwards, for the audit only.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__
from .callpool import note_version
from .convert import CallPlan, ConversionError, to_json
from .engine import Commit, Engine, Event
from .errors import BadResult, CallFailed, LivepatchError, StorageError
from .interrupt import Interrupted
from .journal import Journal, Peer
from .model import Change
from .native import MAX_OBJECT
from .protocol import METHODS, PROTOCOL_VERSION, InvalidParams, decode_object
from .shadow import DEFAULT_QUEUE, DEFAULT_SAMPLE, DEFAULT_TIMEOUT_S, Shadows

if TYPE_CHECKING:
    from .statedir import SourceStore

__all__ = ["LIFECYCLE_METHODS", "Service", "bad_result"]

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
        # Lifecycle handlers also take the request's commit callback.
        self._handlers: dict[str, Callable[..., Any]] = {
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
            "shadow": self._shadow,
        }
        #: Shadow runs of candidate versions on live calls (livepatch/shadow.py).
        self.shadows = Shadows(engine, self.journal)
        #: (slot, member) -> (the interface's member, its resolved hints).
        self._interface_hints: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        #: (version, symbol) -> (function, its signature), for calls. Dropped
        #: when the version is purged or unloaded, so it never keeps one alive.
        self._signatures: dict[tuple[str, str], tuple[Callable[..., Any], inspect.Signature]] = {}
        #: (version, symbol) -> how its calls' arguments are converted, and the
        #: function's annotations it was prepared from; dropped with the signatures.
        self._plans: dict[tuple[str, str], tuple[CallPlan, Any]] = {}
        engine.subscribe(self._forget_signatures)

    @property
    def methods(self) -> list[str]:
        """Every protocol method (``subscribe`` is the server's own)."""
        return sorted(METHODS)

    def handle(self, method: str, params: dict[str, Any], peer: Peer) -> Any:
        """Run one validated request; returns a JSON-able result.

        Raises :class:`LivepatchError` subclasses for every failure a client
        can cause (:class:`~livepatch.errors.StorageError` when the change
        could not be made durable, so was not made). Lifecycle methods are
        journaled either way.
        """
        handler = self._handlers[method]
        if method not in LIFECYCLE_METHODS:
            return handler(params, peer)
        from .statedir import commit_change  # the service itself needs no state dir

        target = params.get("version") or params.get("slot")
        committed: list[Change] = []

        def commit(change: Change) -> None:
            commit_change(self.journal, self.store, method, peer, change)
            committed.append(change)

        try:
            result = handler(params, peer, commit)
        except StorageError:
            raise  # nothing changed, and the journal cannot take a record now
        except LivepatchError as exc:
            self._audit(method, target, peer, ok=False, result=exc.message)
            raise
        if not committed:
            version = result.get("version") or result.get("active") or target
            self._audit(
                method,
                version,
                peer,
                ok=True,
                result=_summary(method, result),
                sha256=self._sha(version),
            )
        return result

    def _audit(
        self,
        method: str,
        version: str | None,
        peer: Peer,
        *,
        ok: bool,
        result: str,
        sha256: str | None = None,
    ) -> None:
        # A request that changed nothing is recorded for the audit; if even
        # that cannot be written, its answer is still the truth.
        with contextlib.suppress(StorageError):
            self.journal.record(method, version, peer=peer, ok=ok, result=result, sha256=sha256)

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

    def _load(self, params: dict[str, Any], peer: Peer, commit: Commit) -> dict[str, Any]:
        slot = params["slot"]
        before = set(self.engine.versions(slot))
        source: str | None = params.get("source")
        filename: str | None = params.get("filename")
        if source is not None:
            version = self.engine.load(slot, source, filename, commit=commit)
        elif "object" in params:
            data = decode_object(params["object"], MAX_OBJECT, filename=filename)
            version = self.engine.load_object(slot, data, filename, commit=commit)
        else:
            version = self.engine.load_path(
                slot, params["path"], params.get("filename"), commit=commit
            )
        info = self.engine.info(version)
        return {
            "version": version,
            "new": version not in before,
            "state": info.state,
            "sha256": info.sha256,
        }

    def _check(self, params: dict[str, Any], peer: Peer, commit: Commit) -> dict[str, Any]:
        report = self.engine.check(params["version"], commit=commit)
        return {**report.to_json(), "state": self.engine.info(params["version"]).state}

    def _swap(self, params: dict[str, Any], peer: Peer, commit: Commit) -> dict[str, Any]:
        swapped = self.engine.swap(params["version"], expect=params.get("expect"), commit=commit)
        return swapped.to_json()

    def _rollback(self, params: dict[str, Any], peer: Peer, commit: Commit) -> dict[str, Any]:
        return self.engine.rollback(params["slot"], commit=commit).to_json()

    def _purge(self, params: dict[str, Any], peer: Peer, commit: Commit) -> dict[str, Any]:
        self.engine.purge(params["version"], commit=commit)
        return {"version": params["version"], "state": self.engine.info(params["version"]).state}

    def _unload(self, params: dict[str, Any], peer: Peer, commit: Commit) -> dict[str, Any]:
        wait_s = float(params.get("wait_s", 0.0))
        return self.engine.unload(params["version"], wait_s=wait_s, commit=commit).to_json()

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

    def _shadow(self, params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        # start VERSION (the default), stop SLOT|VERSION, report SLOT|VERSION.
        action = params.get("action", "start")
        if action not in ("start", "stop", "report"):
            raise InvalidParams(
                f"shadow action {action!r}: use start, stop or report", param="action"
            )
        target = params.get("version") or params.get("slot")
        if not target:
            raise InvalidParams(f"shadow {action} needs a version or a slot", param="version")
        if action == "start":
            if "version" not in params:
                raise InvalidParams("shadow start needs a version (SLOT@N)", param="version")
            try:
                return self.shadows.start(
                    params["version"],
                    peer=peer,
                    sample=float(params.get("sample", DEFAULT_SAMPLE)),
                    for_s=params.get("for_s"),
                    queue=int(params.get("queue", DEFAULT_QUEUE)),
                    timeout_s=float(params.get("timeout_s", DEFAULT_TIMEOUT_S)),
                )
            except StorageError:
                raise  # nothing started, and the journal cannot take a record now
            except LivepatchError as exc:
                self._audit("shadow", target, peer, ok=False, result=exc.message)
                raise
        if action == "stop":
            return self.shadows.stop(target, peer=peer)
        return self.shadows.report(target)

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
            note_version(rules.version)  # named if the call gets stuck
            fn = self.engine.function(rules.version, symbol)
            return self._invoke(
                rules.version,
                symbol,
                fn,
                args,
                kwargs,
                # engine.call inside the pin runs the pinned version, through
                # the dispatcher: a socket call is counted and can be
                # sampled by a shadow run like any call of the slot.
                lambda _v, _s, *a, **k: self.engine.call(slot, symbol, *a, **k),
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
        try:
            py_args, py_kwargs = self._plan(version, symbol, fn).arguments(args, kwargs)
        except ConversionError as exc:
            raise InvalidParams(f"{version} {symbol}: {exc}", param="args") from None
        try:
            result = runner(version, symbol, *py_args, **py_kwargs)
        except (LivepatchError, Interrupted):
            raise  # the engine's own errors, and its deadline (a timeout)
        except BaseException as exc:  # noqa: BLE001 - the rule failed: the caller is told
            # SystemExit, KeyboardInterrupt and the like too: a rule raised
            # them on a call thread, so they are its failure, not "internal".
            raise CallFailed.from_exception(version, symbol, exc) from None
        try:
            shown = to_json(result)
        except (RecursionError, ValueError) as exc:
            raise bad_result(f"{version} {symbol}()", exc) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a __repr__ that raises
            raise bad_result(f"{version} {symbol}()", exc) from None
        return {"version": version, "result": shown}

    def _plan(self, version: str, symbol: str, fn: Callable[..., Any]) -> CallPlan:
        """How to convert the arguments of a call of ``fn``: prepared once per
        function (and again if its annotations are replaced), from the
        slot's interface for its members (the host's, which do not change),
        else from the function's own annotations."""
        key = (version, symbol)
        cached = self._plans.get(key)
        annotations = getattr(fn, "__annotations__", None)
        if cached is not None and cached[0].fn is fn and cached[1] is annotations:
            return cached[0]
        hints = self._hints(version, symbol, fn)
        plan = CallPlan(fn, hints, self._signature(version, symbol, fn))
        self._plans[key] = (plan, annotations)
        return plan

    def _signature(
        self, version: str, symbol: str, fn: Callable[..., Any]
    ) -> inspect.Signature | None:
        cached = self._signatures.get((version, symbol))
        if cached is not None and cached[0] is fn:
            return cached[1]
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return None  # arguments_from_json says why
        self._signatures[(version, symbol)] = (fn, signature)
        return signature

    def _forget_signatures(self, event: Event) -> None:
        if event.op in ("purge", "unload"):
            for key in [k for k in self._signatures if k[0] == event.version]:
                self._signatures.pop(key, None)
            for key in [k for k in self._plans if k[0] == event.version]:
                self._plans.pop(key, None)

    def _hints(self, version: str, symbol: str, fn: Callable[..., Any]) -> dict[str, Any]:
        # The interface's annotations are the contract (host types); the
        # function's own are used for symbols outside the interface.
        slot = version.rpartition("@")[0]
        interface = self.engine.interface(slot)
        member = getattr(interface, symbol, None) if interface else None
        cached = self._interface_hints.get((slot, symbol))
        if member is not None and cached is not None and cached[0] is member:
            return cached[1]  # the host's interface does not change: resolved once
        for source in (member, fn):
            if source is None:
                continue
            try:
                hints = typing.get_type_hints(source)
            except Exception:  # noqa: BLE001 - unresolvable annotations: try the next
                continue
            if source is member:
                self._interface_hints[(slot, symbol)] = (member, hints)
            return hints
        return {}


def bad_result(what: str, exc: BaseException) -> BadResult:
    """The ``bad-result`` error for a rule's value that cannot be sent,
    naming the value's problem in one line."""
    text = str(exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    if isinstance(exc, RecursionError) or "nested too deeply" in detail:
        problem = "it is nested too deeply to encode"
    elif "integer string conversion" in detail:
        problem = "it holds an int with more digits than can be printed (4300)"
    elif "Circular reference" in detail:
        problem = "it contains a circular reference"
    else:
        problem = f"{type(exc).__name__}: {detail[:200]}"
    return BadResult(
        f"{what} returned a value the protocol cannot carry: {problem}; "
        "return JSON-able data (dataclasses, dicts, lists, str, numbers)",
        problem=problem,
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
