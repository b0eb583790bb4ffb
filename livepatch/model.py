"""The engine's data model: version ids and the snapshots it hands out.

Everything here is plain, frozen and JSON-able (``to_json``), so the client
can hand the same types back that the engine uses, without importing the
engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ids import SLOT_NAME, is_slot_name, parse_version_id
from .jsonable import JsonFields

__all__ = [
    "SLOT_NAME",
    "Change",
    "EngineStatus",
    "Event",
    "SlotInfo",
    "SwapResult",
    "UnloadResult",
    "VersionInfo",
    "is_slot_name",
    "parse_version_id",
]


@dataclass(frozen=True, slots=True)
class VersionInfo(JsonFields):
    """A snapshot of one version: identity, state and call statistics."""

    id: str
    slot: str
    number: int
    state: str
    sha256: str
    filename: str
    loaded_at: float
    calls: int
    errors: int
    in_flight: int
    freed: bool | None = None


@dataclass(frozen=True, slots=True)
class SlotInfo(JsonFields):
    """A snapshot of one slot: its interface, active version and versions."""

    name: str
    interface: str
    members: tuple[str, ...]
    active: str | None
    versions: tuple[VersionInfo, ...]
    #: ``python`` (rule modules) or ``native`` (shared objects).
    kind: str = "python"


@dataclass(frozen=True, slots=True)
class EngineStatus(JsonFields):
    """A snapshot of the whole engine."""

    name: str
    pid: int
    slots: tuple[SlotInfo, ...]


@dataclass(frozen=True, slots=True)
class SwapResult(JsonFields):
    """What a swap did: ``changed`` is false for a swap to the active version."""

    slot: str
    active: str
    previous: str | None
    changed: bool
    #: True when the new version's ``__livepatch_handoff__`` took over state.
    handed_over: bool = False


@dataclass(frozen=True, slots=True)
class UnloadResult(JsonFields):
    """Whether an unloaded version's code left memory, and if not, why.

    ``holders`` counts, by kind, the objects that still refer to the
    version's module or code (a leak report); ``in_flight`` is the number of
    calls and pinned requests still running on it.
    """

    version: str
    freed: bool
    in_flight: int
    holders: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event(JsonFields):
    """A state change, sent to subscribers (and, by the server, to clients)."""

    version: str
    slot: str
    state: str
    previous: str | None
    op: str
    time: float


@dataclass(frozen=True, slots=True)
class Change:
    """A lifecycle change the engine has decided but not yet made visible.

    The engine hands it to the ``commit`` callback of :meth:`Engine.load`,
    ``check``, ``swap``, ``rollback``, ``purge`` and ``unload`` under the
    slot's lock, after every check that could refuse the operation and before
    anything is published (no version inserted, no state moved, no event
    sent). If ``commit`` raises, nothing happens and the exception propagates:
    this is where a write-ahead journal makes the change durable.
    """

    op: str  # load, check, swap, purge, unload
    version: str
    sha256: str
    #: swap: the version it replaces (``None``: the slot had none).
    previous: str | None = None
    #: check: whether it passed, and how many errors it found.
    ok: bool = True
    problems: int = 0
    #: load: the source text (``None`` for a ready shared object) and its name.
    source: str | None = None
    filename: str = ""
    #: load: a ready shared object's bytes (stored content-addressed, as a
    #: source is), and the directory it or its source was read from, if any.
    data: bytes | None = None
    origin: str | None = None
