"""The engine: slots of versioned rule modules, and the calls that run on them.

This is the runtime linker of livepatch. A *slot* is a named place with an
interface (a ``typing.Protocol`` owned by the host). A *version* is one loaded
source of a slot. The lifecycle (load, check, swap, purge, unload) follows
GHC's runtime linker, as DESIGN.md describes; the allowed moves live in
:mod:`livepatch.states`.

Concurrency model, in one paragraph: the hot path takes no lock. Publishing a
version is a dict store (``self._active[slot] = version``, and its record in
``self._fast`` for the C dispatcher), each atomic in CPython; a call reads
one of them once and then runs wholly on that version, because the function
it calls finds every global through its own module's namespace. ``pin()``
extends that to a whole request, including nested ``engine.call`` of the
same slot, through a context variable. Every state change of a slot happens
under that slot's lock, so swaps of one slot are serialized and
compare-and-swap is exact.

The engine core imports neither IPython nor prompt-toolkit.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import hashlib
import linecache
import os
import threading
import time
import types
import typing
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import (
    BadState,
    CheckFailed,
    Conflict,
    LoadFailed,
    TooLarge,
    UnknownSlot,
    UnknownVersion,
)
from .files import read_regular_file, text_or_object
from .handoff import hand_over
from .introspect import Introspection
from .model import (
    Change,
    EngineStatus,
    Event,
    SlotInfo,
    SwapResult,
    UnloadResult,
    VersionInfo,
    is_slot_name,
    parse_version_id,
)
from .native import MAX_OBJECT, NativeBackend, NativeInterface
from .pinning import Pin, PinnedRules, note_counted_error
from .pyload import MAX_SOURCE, MODULE_PREFIX, PythonBackend
from .quarantine import Quarantine
from .reclaim import all_dead, thawed
from .reclaim import holders as holders_of
from .resolve import ResolveReport
from .states import Op, VersionState, transition
from .versions import Slot, Version, native_rules

if typing.TYPE_CHECKING:
    from ._speedups import Dispatcher, EngineMethod, Rules
    from .backend import Backend

# The optional C accelerator of Engine.call and Engine.pin
# (livepatch/_speedups.c), built at install time when a compiler is there;
# without it the Python path serves.
_Dispatcher: type[Dispatcher] | None
_EngineMethod: type[EngineMethod] | None
try:
    from ._speedups import Dispatcher as _Dispatcher
    from ._speedups import EngineMethod as _EngineMethod
except ImportError:
    _Dispatcher = _EngineMethod = None

__all__ = [
    "MAX_SOURCE",
    "MODULE_PREFIX",
    "Engine",
    "EngineStatus",
    "Event",
    "PinnedRules",
    "SlotInfo",
    "SwapResult",
    "UnloadResult",
    "VersionInfo",
    "parse_version_id",
]

_NO_ARG: Any = object()

#: The write-ahead hook of the lifecycle methods (see :class:`~livepatch.model.Change`).
Commit = Callable[[Change], None]


class Engine(Introspection):
    """Hosts slots of versioned rule modules and serves calls on them.

    >>> engine = Engine(name="rules")
    >>> engine.add_slot("spam", SpamRules)                # doctest: +SKIP
    >>> v = engine.load("spam", source, filename="spam_v2.py")  # doctest: +SKIP
    >>> engine.check(v).ok and engine.swap(v)            # doctest: +SKIP
    >>> engine.call("spam", "classify", msg)             # doctest: +SKIP
    """

    # _dispatcher is a slot so that the C Engine.call can read it at a fixed
    # offset (see the end of this module); everything else is in __dict__.
    __slots__ = ("__dict__", "__weakref__", "_dispatcher")

    #: Run new sources in a throwaway process first (``None``: load in-process
    #: only). ``livepatch engine`` turns this on by default.
    quarantine: Quarantine | None = None

    #: Where native slots keep compiled objects, so a restarted engine does
    #: not compile again (``livepatch engine --state-dir`` sets it); ``None``:
    #: a private temporary directory.
    build_dir: Path | None = None

    def __init__(self, name: str = "livepatch", *, accelerate: bool = True) -> None:
        """``accelerate=False`` keeps ``call`` on the pure-Python path (see
        :attr:`accelerated`); with ``True`` the C dispatcher serves it when
        ``livepatch._speedups`` was built.
        """
        self.name = name
        self._slots: dict[str, Slot] = {}
        # slot name -> active version: the one structure the hot path reads.
        self._active: dict[str, Version] = {}
        # The same publication for the C dispatcher and pin: slot -> the
        # C Rules of the active version. Updated wherever _active is.
        self._fast: dict[str, Rules] = {}
        self._lock = threading.RLock()
        # This context's open pins: a dict slot -> PinnedRules on the Python
        # path (see pinning.py), the context's PinStack with the accelerator.
        # Both answer .get(slot).
        self._pins: contextvars.ContextVar[Any] = contextvars.ContextVar(
            f"livepatch-pins-{name}-{id(self)}", default=None
        )
        self._subscribers: list[Callable[[Event], None]] = []
        # The C Engine.call and Engine.pin, bound over the methods as instance
        # attributes. The methods stay the reference semantics, and call the
        # dispatcher's fallback for unusual calls and errors. A subclass that
        # overrides call or pin keeps its own (both, since they share pins).
        self._dispatcher: Dispatcher | None = None
        if (
            accelerate
            and _Dispatcher is not None
            and type(self).call is Engine.call
            and type(self).pin is Engine.pin
        ):
            # Engine.call and Engine.pin are then _EngineMethod descriptors
            # (see the end of this module) that hand calls to it.
            self._dispatcher = _Dispatcher(
                self._fast, self._pins, types.MethodType(_python_call, self), self._no_active
            )

    # -- slots --------------------------------------------------------------

    def add_slot(self, name: str, interface: type | NativeInterface | None = None) -> None:
        """Add a slot whose versions must conform to ``interface``.

        A ``typing.Protocol`` makes a slot of Python rule modules;
        ``interface=None`` accepts any module and checks names only. A
        :class:`~livepatch.native.NativeInterface` (C signatures) makes a
        native slot, whose versions are ELF shared objects (see
        :mod:`livepatch.native`).
        """
        if not is_slot_name(name):
            raise ValueError(
                f"slot name {name!r} must be an ASCII identifier of at most 64 characters, "
                "e.g. spam"
            )
        backend: Backend = (
            NativeBackend(interface)
            if isinstance(interface, NativeInterface)
            else PythonBackend(interface)
        )
        with self._lock:
            if name in self._slots:
                raise BadState(f"slot {name!r} already exists", slot=name)
            self._slots[name] = Slot(name, backend)

    @property
    def slots(self) -> tuple[str, ...]:
        """The slot names, in the order they were added."""
        return tuple(self._slots)

    def interface(self, slot: str) -> type | NativeInterface | None:
        """The Protocol (or, for a native slot, the C signatures) a slot's
        versions must conform to."""
        return self._slot(slot).backend.interface

    def kind(self, slot: str) -> str:
        """``python`` or ``native``."""
        return self._slot(slot).backend.kind

    # -- subscribers --------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every state change; returns an unsubscribe.

        Callbacks run on the thread that made the change, under the slot's
        lock (so they see changes in order): they must be quick and must not
        call back into the engine's lifecycle methods.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, version: Version, previous: VersionState | None, op: str) -> None:
        event = Event(
            version=version.id,
            slot=version.slot,
            state=version.state.value,
            previous=previous.value if previous else None,
            op=op,
            time=time.time(),
        )
        for callback in list(self._subscribers):
            # A broken subscriber must not break a swap.
            with contextlib.suppress(Exception):
                callback(event)

    def _move(self, version: Version, op: Op) -> None:
        previous = version.state
        version.state = transition(version.id, previous, op)
        if version.state is not previous or op in (Op.CHECK_OK, Op.CHECK_FAIL):
            # a re-check is news even when the state stays (the report changed)
            self._emit(version, previous, op.value)

    # -- load ---------------------------------------------------------------

    def load(
        self, slot: str, source: str, filename: str | None = None, *, commit: Commit | None = None
    ) -> str:
        """Compile ``source`` and run its body as a new version of ``slot``.

        Returns the version id (``"spam@2"``). The same source loaded again
        returns the existing version. On a syntax error or an exception in
        the body nothing is left behind and :class:`LoadFailed` names
        ``file:line:col``. With a :attr:`quarantine` policy the body first
        runs in a throwaway process, so a body that hangs, exits or crashes
        never reaches this one.

        For a native slot ``source`` is C, compiled into a shared object
        (nothing runs until the check has resolved it).

        ``commit`` (every lifecycle method takes one) is called with the
        :class:`~livepatch.model.Change` once the outcome is decided and
        before it is visible; if it raises, nothing changed.
        """
        return self._load(slot, source, filename, None, commit=commit)

    def load_path(
        self,
        slot: str,
        path: str | os.PathLike[str],
        filename: str | None = None,
        *,
        commit: Commit | None = None,
    ) -> str:
        """Load a file on this machine: a source, or (native slots) a ready
        ELF shared object. ``filename`` defaults to the file's name.
        """
        given = os.fspath(path)
        name = filename or os.path.basename(given) or given
        # Regular files only, the cap enforced while reading, with a deadline.
        content = text_or_object(read_regular_file(given, MAX_OBJECT, name=name), name)
        origin = os.path.dirname(os.path.abspath(given))
        return self._load(slot, content, name, None, origin=origin, commit=commit)

    def load_object(
        self, slot: str, data: bytes, filename: str | None = None, *, commit: Commit | None = None
    ) -> str:
        """Load a ready ELF shared object from its bytes (native slots).

        The object is mapped from memory (``memfd_create``, then ``dlopen``
        of ``/proc/self/fd/N``): it need not be a file this machine can see.
        The check's rules are those of :meth:`load_path`, except that an
        object with no file has no origin (``$ORIGIN`` in its ``RUNPATH``
        means nothing; see docs/state.md).
        """
        if len(data) > MAX_OBJECT:
            raise TooLarge(
                f"{filename or 'the object'} is {len(data)} bytes, over the {MAX_OBJECT}-byte "
                "limit for a shared object",
                slot=slot,
            )
        return self._load(slot, data, filename, None, in_memory=True, commit=commit)

    def restore(
        self,
        version: str,
        content: str | bytes,
        filename: str | None = None,
        *,
        origin: str | None = None,
    ) -> str:
        """Load a source (or, native, an object's bytes, mapped from memory)
        under a given id (``spam@3``), e.g. after a restart; ``origin`` is the
        directory it was first loaded from, if any.

        The number must not be in use. Returns the id; a later :meth:`load`
        continues numbering after the highest number seen.
        """
        slot, number = parse_version_id(version)
        in_memory = isinstance(content, bytes)
        return self._load(slot, content, filename, number, origin=origin, in_memory=in_memory)

    def reserve_numbers(self, slot: str, highest: int) -> None:
        """Make the slot's next version number at least ``highest + 1``."""
        s = self._slot(slot)
        with s.load_lock, s.lock:
            s.next_number = max(s.next_number, highest + 1)

    def _load(
        self,
        slot: str,
        source: str | bytes,
        filename: str | None,
        number: int | None,
        *,
        origin: str | None = None,
        in_memory: bool = False,
        commit: Commit | None = None,
    ) -> str:
        """Load text (``str``) or, for a native slot, a ready object (``bytes``)."""
        s = self._slot(slot)
        filename = filename or f"<{slot}>"
        if isinstance(source, str) and len(source) > MAX_SOURCE:
            raise LoadFailed(
                f"{filename} is {len(source):,} characters, over the {MAX_SOURCE:,} a rule "
                "source may hold: split it into smaller modules",
                slot=slot,
                filename=filename,
            )
        data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
        sha = hashlib.sha256(data).hexdigest()
        with s.load_lock:
            # A C source is the same version only when built from the same
            # headers too (a header edited since makes a new one).
            build_id = s.backend.identity(
                source,
                filename,
                origin=Path(origin) if origin else None,
                build_dir=self.build_dir,
            )
            existing = s.find_loaded(sha, build_id)
            if existing is not None:
                return existing.id
            if number is None:
                number = s.next_number
            elif number in s.versions:
                raise BadState(f"{slot}@{number} already exists", version=f"{slot}@{number}")
            vid = f"{slot}@{number}"
            version = s.backend.load(
                vid,
                source,
                filename,
                sha256=sha,
                origin=Path(origin) if origin else None,
                build_dir=self.build_dir,
                quarantine=self.quarantine,
                in_memory=in_memory,
            )
            version.build_id = build_id
            if commit is not None:
                change = Change(
                    "load",
                    vid,
                    sha,
                    source=version.source,
                    filename=filename,
                    data=source if isinstance(source, bytes) else None,
                    origin=origin,
                )
                try:
                    commit(change)
                except BaseException:
                    s.backend.discard(version)  # not journaled, so never a version
                    raise
            with s.lock:
                s.next_number = max(s.next_number, number + 1)
                s.versions[number] = version
                self._emit(version, None, "load")
        return vid

    # -- check --------------------------------------------------------------

    def check(self, version: str, *, commit: Commit | None = None) -> ResolveReport:
        """Resolve-check a version against its slot's interface.

        A version with problems becomes FAILED and stays loaded so it can be
        inspected; the report lists every problem.
        """
        v = self._version(version)
        s = self._slots[v.slot]
        with s.lock:
            if v.namespace is None:
                raise BadState(f"{v.id} is unloaded: its code is gone", version=v.id)
            # Refuse (a purged version) before anything runs or is mapped.
            transition(v.id, v.state, Op.CHECK_OK)
            report, functions = s.backend.check(v, self.quarantine)
            op = Op.CHECK_OK if report.ok else Op.CHECK_FAIL
            transition(v.id, v.state, op)  # refuse before the commit, not after
            if commit is not None:
                commit(Change("check", v.id, v.sha256, ok=report.ok, problems=len(report.errors)))
            self._publish(v, functions)
            v.report = report
            self._move(v, op)
        return report

    @staticmethod
    def _publish(v: Version, functions: dict[str, Any]) -> None:
        """Put what the check made (a native version's function pointers)
        into the version's namespace, where calls find it once swapped in."""
        namespace = v.namespace
        assert namespace is not None
        for name, fn in functions.items():
            if namespace.get(name) is not fn:
                namespace[name] = fn
                v.weak.append(weakref.ref(fn))

    def report(self, version: str) -> ResolveReport | None:
        """The last check report of a version (``None`` if never checked)."""
        return self._version(version).report

    # -- swap ---------------------------------------------------------------

    def _known(self, slot: str, version: str) -> bool:
        """Whether ``version`` names a version of ``slot`` (any state)."""
        name, _, number = version.partition("@")
        s = self._slots.get(slot)
        return name == slot and number.isdigit() and s is not None and int(number) in s.versions

    def swap(
        self, version: str, expect: str | None = None, *, commit: Commit | None = None
    ) -> SwapResult:
        """Make ``version`` the active one of its slot, atomically.

        With ``expect``, the swap happens only if ``expect`` is the version
        active now (compare-and-swap); otherwise :class:`Conflict`.
        """
        v = self._version(version)
        s = self._slots[v.slot]
        with s.lock:
            current = s.active
            if expect is not None:
                current_id = current.id if current else None
                if expect != current_id and not self._known(v.slot, expect):
                    # A typo is not "another client swapped first"; and the
                    # journal records what the client is told.
                    known = ", ".join(x.id for x in s.versions.values())
                    raise UnknownVersion(
                        f"--expect {expect}: no version {expect}; {v.slot} has {known or 'none'}",
                        version=expect,
                    )
                if expect != current_id:
                    raise Conflict(
                        f"{v.slot} is running {current_id or 'nothing'}, not {expect}: "
                        "another client swapped first; check status and retry",
                        expected=expect,
                        actual=current_id,
                    )
            if current is v:
                return SwapResult(v.slot, v.id, v.id, changed=False)
            if v.state is VersionState.FAILED:
                count = len(v.report.errors) if v.report else 0
                raise CheckFailed(
                    f"{v.id} failed its check ({count} problem{'s' * (count != 1)}): "
                    "fix them and load a new version",
                    version=v.id,
                )
            transition(v.id, v.state, Op.SWAP_IN)  # raises BadState before anything changes
            handed_over = False
            if current is not None and current.namespace is not None and v.obj is None:
                # Erlang's code_change: the new version takes what it wants
                # of the old one's state before anyone can call it. If the
                # hook raises, CallFailed and nothing has changed.
                handed_over = hand_over(v.id, v.namespace or {}, current.namespace)
            # The outcome is decided (the hand-over took): journal it, then publish.
            if commit is not None:
                commit(Change("swap", v.id, v.sha256, previous=current.id if current else None))
            self._move(v, Op.SWAP_IN)
            if current is not None:
                self._move(current, Op.SWAP_OUT)
                s.history.append(current)
            s.active = v
            # The publication: one dict store, atomic for readers (and its
            # twin for the C dispatcher).
            self._active[v.slot] = v
            if self._dispatcher is not None:
                self._fast[v.slot] = native_rules(v)
            if v in s.history:
                s.history.remove(v)
        return SwapResult(
            v.slot, v.id, current.id if current else None, changed=True, handed_over=handed_over
        )

    def rollback(self, slot: str, *, commit: Commit | None = None) -> SwapResult:
        """Swap back to the most recently retired version of ``slot``."""
        s = self._slot(slot)
        with s.lock:
            for candidate in reversed(s.history):
                if candidate.state is VersionState.RETIRED:
                    return self.swap(candidate.id, commit=commit)
        raise BadState(
            f"{slot} has no retired version to roll back to: load and swap one instead",
            slot=slot,
        )

    def active(self, slot: str) -> str | None:
        """The id of the slot's active version, or ``None``."""
        v = self._slot(slot).active
        return v.id if v else None

    # -- purge and unload -----------------------------------------------------

    def purge(self, version: str, *, commit: Commit | None = None) -> None:
        """Forget a version's symbols so nothing new can find it.

        Calls already running on it finish normally. The active version
        cannot be purged.
        """
        v = self._version(version)
        s = self._slots[v.slot]
        with s.lock:
            transition(v.id, v.state, Op.PURGE)
            if commit is not None:
                commit(Change("purge", v.id, v.sha256))
            self._move(v, Op.PURGE)
            self._forget(v)

    def _forget(self, v: Version) -> None:
        self._slots[v.slot].backend.forget(v)
        if v in self._slots[v.slot].history:
            self._slots[v.slot].history.remove(v)

    def unload(
        self, version: str, wait_s: float = 0.0, *, commit: Commit | None = None
    ) -> UnloadResult:
        """Drop the engine's last references to a version (purging it first).

        Waits up to ``wait_s`` seconds for calls in flight to finish, then
        reports whether the module and everything it defined were freed,
        and if not, what still holds them.
        """
        v = self._version(version)
        s = self._slots[v.slot]
        with s.lock:
            if v.state is not VersionState.UNLOADED:
                # Refused (the active version) before the commit, not after.
                purged: VersionState = v.state
                if purged is VersionState.ACTIVE:
                    raise BadState(
                        f"{v.id} is active: swap another version in (or roll back) "
                        "before unloading it",
                        state=purged.value,
                    )
                if purged is not VersionState.PURGED:
                    purged = transition(v.id, v.state, Op.PURGE)
                transition(v.id, purged, Op.UNLOAD)
                if commit is not None:
                    commit(Change("unload", v.id, v.sha256))
            if v.state not in (VersionState.PURGED, VersionState.UNLOADED):
                self._move(v, Op.PURGE)
                self._forget(v)
            self._move(v, Op.UNLOAD)
            linecache.cache.pop(v.code_filename, None)
            v.module = None
            v.namespace = None
            v.rules = None
            v.code = None
            v.source = None
        deadline = time.monotonic() + wait_s
        while v.in_flight() and time.monotonic() < deadline:
            time.sleep(0.001)  # a poll with a deadline: callers are not ours to signal
        freed = all_dead(v.weak)
        holders = {}
        if not freed:
            with thawed():  # a version loaded before the engine froze is frozen too
                gc.collect()
                freed = all_dead(v.weak)
                holders = {} if freed else holders_of(v.weak, v.weak_namespace())
        # Native: with the pointers gone the object is dlclose'd; whether it
        # left memory is then for /proc/self/maps to say.
        freed, reasons = s.backend.release(v, pointers_freed=freed)
        holders.update(reasons)
        v.freed = freed
        return UnloadResult(v.id, freed, v.in_flight(), holders)

    # -- calls ----------------------------------------------------------------

    @property
    def accelerated(self) -> bool:
        """True when :meth:`call` is served by the C dispatcher
        (``livepatch._speedups``), False on the pure-Python path."""
        return self._dispatcher is not None

    def call(self, slot: str, symbol: str, arg: Any = _NO_ARG, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``symbol`` of the slot's active version: the hot path.

        Inside ``pin(slot)`` the pinned version is used, so one request never
        mixes two versions.
        """
        pins = self._pins.get()
        rules = pins.get(slot) if pins is not None else None
        if rules is not None:
            # The pinned rules keep their namespace even once the version is
            # unloaded: a request that started on it finishes on it.
            version, namespace = rules._v, rules._ns
        else:
            try:
                version = self._active[slot]
            except KeyError:
                raise self._no_active(slot) from None
            namespace = version.namespace
        fn = namespace.get(symbol) if namespace is not None else None
        if not callable(fn):
            raise self._not_callable(version, symbol)
        try:
            if version.sampler is not None:
                # A shadow run samples this version's calls (livepatch/shadow.py).
                return version.sampler.call(
                    version, fn, symbol, args if arg is _NO_ARG else (arg, *args), kwargs
                )
            next(version.calls)
            try:
                # One positional argument is the common case: call it without
                # building an argument tuple and dict.
                if arg is _NO_ARG:
                    return fn(*args, **kwargs)
                if args or kwargs:
                    return fn(arg, *args, **kwargs)
                return fn(arg)
            except BaseException:
                next(version.errors)
                raise
        except BaseException as exc:
            if rules is not None:
                # Counted here: the pin block it leaves must not count it again.
                note_counted_error(pins, slot, exc)
            raise

    def call_version(self, version: str, symbol: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``symbol`` of a given (not purged) version, active or not."""
        v = self._version(version)
        if v.state in (VersionState.PURGED, VersionState.UNLOADED):
            raise BadState(f"{v.id} is {v.state.value}: its symbols are gone", version=v.id)
        namespace = v.namespace
        fn = namespace.get(symbol) if namespace is not None else None
        if not callable(fn):
            raise self._not_callable(v, symbol)
        next(v.calls)
        try:
            return fn(*args, **kwargs)
        except BaseException:
            next(v.errors)
            raise

    def function(self, version: str, symbol: str) -> Callable[..., Any]:
        """The callable ``symbol`` of a version, for introspection (not counted)."""
        v = self._version(version)
        namespace = v.namespace
        fn = namespace.get(symbol) if namespace is not None else None
        if not callable(fn):
            raise self._not_callable(v, symbol)
        return typing.cast("Callable[..., Any]", fn)

    def pin(self, slot: str) -> contextlib.AbstractContextManager[PinnedRules]:
        """``with engine.pin(slot) as rules:`` runs a whole request on one version.

        ``rules.NAME(...)`` calls the pinned version's functions, and any
        ``engine.call(slot, ...)`` made inside the block (at any depth, in
        this thread or asyncio task, across ``await``) uses the same version.
        A pin of a slot already pinned in this context keeps the outer
        version. ``rules.NAME`` is the version's own function, counted as a
        call when looked up; an error counts when it leaves the block (see
        :mod:`livepatch.pinning`). With the accelerator,
        ``livepatch._speedups`` serves it.
        """
        return Pin(self, slot)

    def _no_active(self, slot: str) -> Exception:
        if slot not in self._slots:
            return UnknownSlot(f"no slot named {slot!r}; slots: {self._slot_list()}", slot=slot)
        return BadState(f"{slot} has no active version: load, check and swap one", slot=slot)

    @staticmethod
    def _not_callable(version: Version, symbol: str) -> Exception:
        if version.obj is not None and version.state in (VersionState.LOADED, VersionState.FAILED):
            return BadState(
                f"{version.id} is {version.state.value}: a native object is mapped, and its "
                f"functions callable, only once its check passes (`check {version.id}`)",
                version=version.id,
                symbol=symbol,
            )
        if version.state in (VersionState.PURGED, VersionState.UNLOADED):
            return BadState(
                f"{version.id} is {version.state.value}: its code is gone; call the active "
                f"version (`call {version.slot}.{symbol}`)",
                version=version.id,
                symbol=symbol,
                state=version.state.value,
            )
        return UnknownVersion(
            f"{version.id} has no callable {symbol!r}: see `symbols {version.id}`",
            version=version.id,
            symbol=symbol,
        )

    def close(self) -> None:
        """Retire the engine: unload every version of every slot.

        Active versions are unpublished first, so calls after ``close`` fail
        with a clear error; calls in flight finish on the code they have.
        """
        for s in list(self._slots.values()):
            with s.lock:
                self._active.pop(s.name, None)
                self._fast.pop(s.name, None)
                if s.active is not None:
                    s.active.state = VersionState.RETIRED
                    s.active = None
                versions = [v.id for v in s.versions.values()]
            for vid in versions:
                if self._version(vid).state is not VersionState.UNLOADED:
                    self.unload(vid)

    # -- control socket -----------------------------------------------------------

    def serve(
        self,
        listen: str | None = None,
        *,
        token: str | None = None,
        allow_remote: bool = False,
        journal: Any = None,
    ) -> Any:
        """Serve the control protocol in a background thread; returns the Server.

        ``listen`` is ``"unix"`` (the default: a private Unix socket) or
        ``"tcp://HOST:PORT"``. Stop it with ``server.stop()``.
        """
        from .server import Server, parse_listen  # the core stays free of asyncio

        server = Server(
            self,
            listen=parse_listen(listen),
            token=token,
            allow_remote=allow_remote,
            journal=journal,
        )
        server.start()
        return server


# The Python Engine.call: the reference, and the dispatcher's fallback.
_python_call = Engine.call
if _EngineMethod is not None:
    # With the accelerator, Engine.call and Engine.pin are method descriptors
    # that hand each call to the engine's dispatcher (its `_dispatcher` slot),
    # or to these functions when it has none: CPython then looks
    # `engine.call` up on the class, specialised, instead of in the instance's
    # dict, which it cannot specialise when the class has the name too.
    _member = Engine.__dict__["_dispatcher"]
    Engine.call = _EngineMethod(Engine.call, "call", _member)  # type: ignore[method-assign]
    Engine.pin = _EngineMethod(Engine.pin, "pin", _member)  # type: ignore[method-assign]
