"""The fleet's data: desired versions, votes, push records, member states.

A fleet names a version by the sha256 of its source: each engine numbers its
own versions (``spam@3`` on one engine may be ``spam@7`` on another), so ids
appear only next to the member they belong to. Everything here is plain and
JSON-able, shared by the local and the ZooKeeper registry.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from ..errors import LivepatchError
from ..runtime import state_home

__all__ = [
    "LAYOUT",
    "Desired",
    "FleetConflict",
    "FleetError",
    "MemberState",
    "PushRecord",
    "Rule",
    "Vote",
    "check_layout",
    "count",
    "new_push_id",
    "parse_node",
    "parse_value",
    "sha_of",
    "short",
    "state_home",
    "validate_fleet_name",
]

#: What a push carries: a rule's source text (Python, or C for a native slot
#: that compiles it), or a ready ELF shared object's bytes (native slots).
Rule: TypeAlias = str | bytes

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: The registry's layout: the nodes and files a fleet keeps, and what their
#: fields mean. Raised on a change an older livepatch would misread (a field
#: added with a default is no such change: every reader ignores what it does
#: not know). A store or registry of a newer layout is refused, in one line,
#: before anything is read or written, as PostgreSQL refuses a data directory
#: of another catalog version.
LAYOUT = 1


class FleetError(LivepatchError, RuntimeError):
    """A fleet operation could not be done; the message says why and what to do."""

    kind = "fleet"


class FleetConflict(FleetError):
    """Another push changed the fleet's desired version first."""

    kind = "conflict"


def check_layout(found: Any, where: str) -> None:
    """Refuse a registry whose recorded layout this livepatch cannot read.

    ``found`` is the ``layout`` field as stored; ``where`` names the store
    or node for the message.
    """
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise FleetError(
            f"{where} records layout {found!r}, which no livepatch writes: "
            "was it written by another tool? restore it"
        )
    if found > LAYOUT:
        raise FleetError(
            f"{where} has layout {found}, newer than this livepatch reads ({LAYOUT}): "
            "upgrade livepatch on this host to use this fleet"
        )


def parse_node(parse: Callable[[dict[str, Any]], T], data: bytes | str, where: str, what: str) -> T:
    """``parse(json)`` of a node's or file's ``data``; a :class:`FleetError`
    naming ``where`` if it is not the ``what`` livepatch wrote there."""
    try:
        value = json.loads(data)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise _not_what(where, what, str(exc)) from None
    return parse_value(parse, value, where, what)


def parse_value(parse: Callable[[dict[str, Any]], T], value: Any, where: str, what: str) -> T:
    """:func:`parse_node` of a value already decoded from JSON."""
    try:
        if not isinstance(value, dict):
            raise TypeError(f"a JSON {type(value).__name__}, not an object")
        return parse(value)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _not_what(where, what, reason) from None


def _not_what(where: str, what: str, reason: str) -> FleetError:
    return FleetError(
        f"{where} holds no {what} ({reason}): was it written by another tool? restore or delete it"
    )


def count(n: int, word: str) -> str:
    """``1 member``, ``3 members``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def validate_fleet_name(name: str) -> str:
    """A fleet name is safe as a file and node name: letters, digits, ``_.-``."""
    if not _NAME.match(name):
        raise FleetError(
            f"fleet name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def sha_of(source: Rule) -> str:
    """The fleet's identity of a version: the sha256 of its source text (UTF-8)
    or of its object's bytes, as the engine computes it."""
    data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    return hashlib.sha256(data).hexdigest()


def short(sha: str | None) -> str:
    """The first 12 hex digits of a sha, as shown to people (``-`` for none)."""
    return sha[:12] if sha else "-"


def new_push_id() -> str:
    """A push id that sorts by time and never collides."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Desired:
    """The version a slot of the fleet should run, and the one before it."""

    slot: str
    sha256: str
    filename: str
    previous: str | None
    push: str
    time: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            "slot": self.slot,
            "sha256": self.sha256,
            "filename": self.filename,
            "previous": self.previous,
            "push": self.push,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Desired:
        """Parse :meth:`to_json`'s output."""
        return cls(
            slot=str(data["slot"]),
            sha256=str(data["sha256"]),
            filename=str(data.get("filename") or ""),
            previous=data.get("previous"),
            push=str(data.get("push") or ""),
            time=float(data.get("time") or 0.0),
        )


@dataclass(slots=True)
class Vote:
    """One member's answer to *prepare*: its version of the sha, and why not."""

    member: str
    ok: bool
    version: str | None = None
    new: bool = False
    reason: str = ""
    #: The check report's problems (JSON), when the check ran.
    problems: list[dict[str, Any]] = field(default_factory=list)
    #: False for the vote a pusher records for a member that gave none (stuck,
    #: too slow, or not asked before the push ended): it did not refuse.
    answered: bool = True

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            "member": self.member,
            "ok": self.ok,
            "version": self.version,
            "new": self.new,
            "reason": self.reason,
            "problems": self.problems,
            "answered": self.answered,
        }

    @classmethod
    def missing(cls, member: str, reason: str) -> Vote:
        """The vote of a member that gave none before the push ended."""
        return cls(member, False, reason=reason, answered=False)

    def says(self) -> str:
        """What a vote that is not ok says, for a push's member-by-member lines."""
        return f"refused: {self.reason}" if self.answered else self.reason

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vote:
        """Parse :meth:`to_json`'s output."""
        return cls(
            member=str(data["member"]),
            ok=bool(data["ok"]),
            version=data.get("version"),
            new=bool(data.get("new")),
            reason=str(data.get("reason") or ""),
            problems=list(data.get("problems") or []),
            answered=bool(data.get("answered", True)),
        )


@dataclass(slots=True)
class PushRecord:
    """What one push did: its votes, its outcome and every member's ack."""

    id: str
    slot: str
    sha256: str
    filename: str
    started: float
    #: ``preparing``, ``committed`` or ``aborted``.
    outcome: str = "preparing"
    reason: str = ""
    finished: float | None = None
    previous: str | None = None
    votes: dict[str, Vote] = field(default_factory=dict)
    #: member -> the version id it swapped to (committed pushes).
    acks: dict[str, str] = field(default_factory=dict)
    #: members that were down (or left) during the push: they converge later.
    down: list[str] = field(default_factory=list)
    rollback: bool = False
    #: The pushing process (local registry): a member that finds it gone while
    #: the push is still ``preparing`` knows nobody will commit it.
    pusher: int = 0
    #: Wall-clock time by which the push must have committed; past it (plus
    #: some slack) a push still ``preparing`` is abandoned.
    deadline: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            "id": self.id,
            "slot": self.slot,
            "sha256": self.sha256,
            "filename": self.filename,
            "started": self.started,
            "outcome": self.outcome,
            "reason": self.reason,
            "finished": self.finished,
            "previous": self.previous,
            "votes": {k: v.to_json() for k, v in self.votes.items()},
            "acks": dict(self.acks),
            "down": list(self.down),
            "rollback": self.rollback,
            "pusher": self.pusher,
            "deadline": self.deadline,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PushRecord:
        """Parse :meth:`to_json`'s output."""
        return cls(
            id=str(data["id"]),
            slot=str(data["slot"]),
            sha256=str(data["sha256"]),
            filename=str(data.get("filename") or ""),
            started=float(data.get("started") or 0.0),
            outcome=str(data.get("outcome") or "preparing"),
            reason=str(data.get("reason") or ""),
            finished=data.get("finished"),
            previous=data.get("previous"),
            votes={k: Vote.from_json(v) for k, v in (data.get("votes") or {}).items()},
            acks=dict(data.get("acks") or {}),
            down=list(data.get("down") or []),
            rollback=bool(data.get("rollback")),
            pusher=int(data.get("pusher") or 0),
            deadline=data.get("deadline"),
        )

    @property
    def ok(self) -> bool:
        """Whether the push committed."""
        return self.outcome == "committed"


@dataclass(slots=True)
class MemberState:
    """What a member says about itself: converging, ready or diverged."""

    name: str
    pid: int
    #: ``converging`` (catching up with the desired versions), ``ready`` or ``diverged``.
    state: str
    #: slot -> {"version": id, "sha256": sha} of the active version.
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: slot -> why it cannot run the desired version (diverged slots only).
    diverged: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    time: float = 0.0
    host: str = ""
    #: calls per second since the member's previous report.
    rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "active": self.active,
            "diverged": self.diverged,
            "calls": self.calls,
            "time": self.time,
            "host": self.host,
            "rate": self.rate,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemberState:
        """Parse :meth:`to_json`'s output."""
        return cls(
            name=str(data["name"]),
            pid=int(data.get("pid") or 0),
            state=str(data.get("state") or "converging"),
            active=dict(data.get("active") or {}),
            diverged=dict(data.get("diverged") or {}),
            calls=int(data.get("calls") or 0),
            time=float(data.get("time") or 0.0),
            host=str(data.get("host") or ""),
            rate=float(data.get("rate") or 0.0),
        )
