"""The engine's records of slots and versions (internal to the engine).

A :class:`Version` holds the engine's strong references to one loaded
version's code, dropped on unload, and its lock-free call counters, which
outlive them. A :class:`Slot` holds a slot's versions, its active one, its
retirement history and the locks that serialize its lifecycle.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
import types
import typing
import weakref
from collections.abc import Iterator
from typing import Any

from .model import SlotInfo, VersionInfo
from .pinning import PinnedRules
from .reclaim import all_dead, thawed, threads_running, weak_namespace
from .resolve import Problem, ResolveReport
from .states import VersionState
from .symbols import SymbolTable

if typing.TYPE_CHECKING:
    from ._speedups import Counter, Rules
    from .backend import Backend
    from .native_object import NativeObject

# The C counter and pinned rules (livepatch/_speedups.c) when built, else
# itertools.count and the Python PinnedRules.
_Counter: type[Counter] | None
_Rules: type[Rules] | None
try:
    from ._speedups import Counter as _Counter
    from ._speedups import Rules as _Rules
except ImportError:
    _Counter = _Rules = None

_last_collect = 0.0


def _collect_at_most_every_second() -> None:
    """A full collection for status, rate-limited: a version that really
    leaks must not make every toolbar refresh pay for one."""
    global _last_collect
    now = time.monotonic()
    if now - _last_collect >= 1.0:
        _last_collect = now
        with thawed():
            gc.collect()


__all__ = ["Slot", "Version", "counter_value", "defined_in", "native_rules", "new_counter"]


def new_counter() -> Iterator[int]:
    """A lock-free call counter: the C one when built, else itertools.count.

    Both advance with one C call under the GIL (next(), or in place by the
    dispatcher for the C one), so neither needs a lock.
    """
    return _Counter() if _Counter is not None else itertools.count()


def counter_value(counter: Iterator[int]) -> int:
    """Read a counter without advancing it."""
    value = getattr(counter, "value", None)
    if isinstance(value, int):
        return value
    # An itertools.count: its repr is the only public way to read it.
    return int(repr(counter)[6:-1])


class Version:
    """One loaded version. The engine's strong references to the code live
    here and are dropped on unload; the counters outlive them.

    A Python version has a module and its code. A native one has neither,
    but a :class:`~livepatch.native.NativeObject` (``obj``) and a namespace
    that its check fills with function pointers. Calls of either kind find
    their functions in ``namespace``.
    """

    def __init__(
        self,
        slot: str,
        number: int,
        source: str | None,
        sha256: str,
        filename: str,
        code_filename: str,
        module: types.ModuleType | None,
        code: types.CodeType | None,
        obj: NativeObject | None = None,
    ) -> None:
        self.slot = slot
        self.number = number
        self.id = f"{slot}@{number}"
        self.source: str | None = source
        self.sha256 = sha256
        self.filename = filename
        self.code_filename = code_filename
        self.module: types.ModuleType | None = module
        namespace: dict[str, Any] = module.__dict__ if module is not None else {}
        self.namespace: dict[str, Any] | None = namespace
        self.code: types.CodeType | None = code
        self.obj = obj
        #: What a C source was built from besides its text (the compiler,
        #: flags and headers: :func:`~livepatch.native_build.build_identity`);
        #: ``None`` when the content alone is the version's identity.
        self.build_id: str | None = None
        self.module_name = module.__name__ if module is not None else ""
        self.state = VersionState.LOADED
        self.loaded_at = time.time()
        self.report: ResolveReport | None = None
        self.table: SymbolTable | None = None
        # Warnings about threads the module body started at import.
        self.import_threads: tuple[Problem, ...] = ()
        self.freed: bool | None = None
        # Weak references to the module and to everything it defined: the
        # proof, on unload, that the old code really left memory.
        # (A native version's check adds its function pointers.)
        self.weak: list[weakref.ref[Any]] = []
        if module is not None:
            self.weak.append(weakref.ref(module))
            for value in list(module.__dict__.values()):
                if defined_in(value, module):
                    self.weak.append(weakref.ref(value))
        # Lock-free counters for the hot path (see counter_value).
        self.calls = new_counter()
        self.errors = new_counter()
        # Open Python pin blocks by thread id; each thread changes only its
        # own key. (C pins are counted by their Rules: see native_rules.)
        self.pins: dict[int, int] = {}
        # What ``pin`` hands out: one per version, so its wrappers are built
        # once. Dropped on unload (it holds the namespace); open pins keep
        # theirs alive, and their request finishes on it.
        self.rules: PinnedRules | Rules | None = PinnedRules(self, namespace)
        # The C Rules, weakly: its open pins still count after unload.
        self.native: weakref.ref[Rules] | None = None
        # A shadow run's sampler of this version's calls on the Python path
        # (livepatch/shadow.py; the C path keeps its own on the Rules).
        self.sampler: Any = None

    def in_flight(self) -> int:
        """Open pin blocks, plus threads running this version's code outside one.

        Counting running calls from the threads' stacks instead of with a
        counter around every call keeps the hot path free of bookkeeping.
        """
        # Copies first: other threads may add or remove their own keys.
        pins = dict(self.pins)
        native = self.native() if self.native is not None else None
        if native is not None:
            for thread, count in native.open_pins().items():
                pins[thread] = pins.get(thread, 0) + count
        namespace = self.namespace
        if namespace is None and not pins:
            return len(threads_running(self.weak_namespace()))
        running = threads_running(namespace if namespace is not None else self.weak_namespace())
        return sum(pins.values()) + len(running - pins.keys())

    def weak_namespace(self) -> dict[str, Any] | None:
        """The namespace, found through whatever weakly-held object survives."""
        return weak_namespace(self.weak)

    def info(self) -> VersionInfo:
        return VersionInfo(
            id=self.id,
            slot=self.slot,
            number=self.number,
            state=self.state.value,
            sha256=self.sha256,
            filename=self.filename,
            loaded_at=self.loaded_at,
            calls=counter_value(self.calls),
            errors=counter_value(self.errors),
            in_flight=self.in_flight(),
            freed=self.still_freed(),
        )

    def still_freed(self) -> bool | None:
        """Whether the unloaded code is gone, as true now, not at unload time.

        A Python version that was not freed at unload (calls were still
        running, or a cycle awaited the collector) may be freed since; its
        weak references say so, after one collection. A native object's
        answer comes from ``/proc/self/maps`` at unload and is re-examined
        by a second ``unload``.
        """
        if self.freed is False and self.obj is None:
            if not all_dead(self.weak):
                _collect_at_most_every_second()
            if all_dead(self.weak):
                self.freed = True
        return self.freed


def native_rules(version: Version) -> Rules:
    """The version's C Rules (what the C dispatcher and pin read), made on
    first use in place of its Python PinnedRules. Only with the accelerator."""
    rules = version.rules
    if _Rules is not None and isinstance(rules, _Rules):
        return rules
    if _Rules is None or version.namespace is None:
        raise RuntimeError(f"{version.id}: no C rules without livepatch._speedups and a namespace")
    made = _Rules(version, version.id, version.namespace, version.calls, version.errors)
    version.rules = made
    version.native = weakref.ref(made)
    return made


def defined_in(value: object, module: types.ModuleType) -> bool:
    """True for functions and classes whose home is ``module``."""
    if isinstance(value, types.FunctionType):
        return value.__globals__ is module.__dict__
    if isinstance(value, type):
        return value.__module__ == module.__name__
    return False


class Slot:
    """A slot and its versions.

    ``backend`` is the seam between the lifecycle, which the engine owns for
    every kind of slot (states, locks, publication, events, statistics), and
    what each step does to the code (see :mod:`livepatch.backend`): a
    :class:`~livepatch.pyload.PythonBackend` does modules, bytecode checks
    and the garbage collector; a :class:`~livepatch.native.NativeBackend`
    does load, check, symbols, purge and unload to shared objects: compile,
    resolve + dlopen, .dynsym, forget the pointers, dlclose + /proc/self/maps.
    """

    def __init__(self, name: str, backend: Backend) -> None:
        self.name = name
        self.backend = backend
        self.members: dict[str, Any] = dict(backend.members())
        self.versions: dict[int, Version] = {}
        self.next_number = 1
        self.active: Version | None = None
        # Most recently retired last: rollback pops from here.
        self.history: list[Version] = []
        # Swaps, purges and unloads of one slot are serialized by this lock;
        # loads take their own so that a slow module body never delays a swap.
        self.lock = threading.RLock()
        self.load_lock = threading.Lock()

    def find_loaded(self, sha256: str, build_id: str | None = None) -> Version | None:
        """The version loaded from this content (and, for a C source, built
        from the same headers: ``build_id``) that still has its symbols."""
        for version in self.versions.values():
            if (
                version.sha256 == sha256
                and version.build_id == build_id
                and version.state
                not in (
                    VersionState.PURGED,
                    VersionState.UNLOADED,
                )
            ):
                return version
        return None

    def info(self) -> SlotInfo:
        """A snapshot of the slot and its versions, with call statistics."""
        with self.lock:
            versions = tuple(v.info() for v in self.versions.values())
            active = self.active.id if self.active else None
        return SlotInfo(
            name=self.name,
            interface=self.backend.describe(),
            members=tuple(self.members),
            active=active,
            versions=versions,
            kind=self.backend.kind,
        )
