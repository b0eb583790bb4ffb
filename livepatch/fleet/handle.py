"""A member's hands on its engine: prepare, swap, release and converge.

The member agent drives its own engine through a client connection to the
engine's control socket (:class:`ClientHandle`), so the engine core knows
nothing of fleets and every swap a fleet makes is journaled like any
client's, with the peer ``livepatch-fleet``. The benchmark's simulated
members use :class:`MemoryHandle` instead: the same member protocol, with an
in-memory stand-in for the engine.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import Conflict, LivepatchError
from .model import MemberState, Rule, Vote, sha_of

__all__ = [
    "ClientHandle",
    "Convergence",
    "EngineHandle",
    "MemoryHandle",
    "converge",
    "prepare",
    "release",
    "release_since",
]

#: Version states from which a version can be made active again.
_USABLE = frozenset({"loaded", "resolved", "retired", "active"})


class EngineHandle(Protocol):
    """What a member needs from its engine."""

    name: str

    def status(self) -> dict[str, Any]:
        """The engine's ``status`` result."""
        ...

    def load(self, slot: str, source: Rule, filename: str) -> dict[str, Any]:
        """``load``'s result (``version``, ``new``, ``sha256``): ``source``
        is text, or a ready shared object's bytes (native slots)."""
        ...

    def check(self, version: str) -> dict[str, Any]:
        """``check``'s result (``ok``, ``problems``)."""
        ...

    def swap(self, version: str, expect: str | None = None) -> dict[str, Any]:
        """``swap``'s result (compare-and-swap when ``expect`` is given)."""
        ...

    def unload(self, version: str) -> dict[str, Any]:
        """``unload``'s result."""
        ...

    def source(self, version: str) -> str:
        """The source a version was loaded from."""
        ...


class ClientHandle:
    """An engine reached over its control socket (thread-safe)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.name: str = client.info.name

    def status(self) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        result: dict[str, Any] = self.client.status()
        return result

    def load(self, slot: str, source: Rule, filename: str) -> dict[str, Any]:
        """See :class:`EngineHandle`. An object goes as its bytes (``object``):
        the engine maps it from memory, so no member needs to see a file."""
        params: dict[str, Any] = {"slot": slot, "filename": filename}
        if isinstance(source, bytes):
            params["object"] = base64.b64encode(source).decode("ascii")
        else:
            params["source"] = source
        result: dict[str, Any] = self.client.request("load", params)
        return result

    def check(self, version: str) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        result: dict[str, Any] = self.client.request("check", {"version": version})
        return result

    def swap(self, version: str, expect: str | None = None) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        params: dict[str, Any] = {"version": version}
        if expect is not None:
            params["expect"] = expect
        result: dict[str, Any] = self.client.request("swap", params)
        return result

    def unload(self, version: str) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        result: dict[str, Any] = self.client.request("unload", {"version": version})
        return result

    def source(self, version: str) -> str:
        """See :class:`EngineHandle`."""
        return str(self.client.source(version))


class MemoryHandle:
    """An in-memory engine stand-in for simulated members (benchmarks).

    It compiles each source (so a syntax error votes no, as on a real
    engine), numbers versions per slot and keeps one active version per slot.
    """

    def __init__(self, name: str, slots: tuple[str, ...] = ("spam",)) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._versions: dict[str, dict[str, Any]] = {}
        self._active: dict[str, str | None] = dict.fromkeys(slots)
        self._count: dict[str, int] = dict.fromkeys(slots, 0)
        self._sources: dict[str, Rule] = {}
        self._shas: dict[Rule, str] = {}

    def status(self) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        with self._lock:
            slots = []
            for slot, active in self._active.items():
                versions = [
                    {"id": vid, **v} for vid, v in self._versions.items() if v["slot"] == slot
                ]
                slots.append({"name": slot, "active": active, "versions": versions})
            return {"name": self.name, "pid": os.getpid(), "slots": slots}

    def load(self, slot: str, source: Rule, filename: str) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        sha = self._shas.get(source) or sha_of(source)
        with self._lock:
            self._shas[source] = sha  # a simulated fleet loads the same few sources
            for vid, v in self._versions.items():
                if v["slot"] == slot and v["sha256"] == sha:
                    return {"version": vid, "new": False, "sha256": sha}
        try:
            if isinstance(source, bytes):
                if not source.startswith(b"\x7fELF"):
                    raise LivepatchError(f"{filename}: not an ELF shared object")
            else:
                compile(source, filename, "exec")
        except SyntaxError as exc:
            raise LivepatchError(f"{filename}:{exc.lineno}: {exc.msg}") from None
        with self._lock:
            self._count[slot] += 1
            vid = f"{slot}@{self._count[slot]}"
            self._versions[vid] = {"slot": slot, "sha256": sha, "state": "resolved", "calls": 0}
            self._sources[vid] = source
        return {"version": vid, "new": True, "sha256": sha}

    def check(self, version: str) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        return {"ok": True, "problems": []}

    def swap(self, version: str, expect: str | None = None) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        with self._lock:
            slot = self._versions[version]["slot"]
            previous = self._active[slot]
            if expect is not None and previous != expect:
                raise Conflict(f"{slot}: {previous} is active, not {expect}")
            if previous is not None:
                self._versions[previous]["state"] = "retired"
            self._versions[version]["state"] = "active"
            self._active[slot] = version
        return {"slot": slot, "active": version, "previous": previous, "changed": True}

    def unload(self, version: str) -> dict[str, Any]:
        """See :class:`EngineHandle`."""
        with self._lock:
            self._versions.pop(version, None)
        return {"version": version, "freed": True}

    def source(self, version: str) -> str:
        """See :class:`EngineHandle`."""
        with self._lock:
            source = self._sources[version]
        if isinstance(source, bytes):
            raise LivepatchError(f"{version} was loaded from a ready shared object: no source")
        return source


def _slot_status(status: dict[str, Any], slot: str) -> dict[str, Any] | None:
    for s in status["slots"]:
        if s["name"] == slot:
            result: dict[str, Any] = s
            return result
    return None


def _version_with_sha(slot_status: dict[str, Any], sha: str) -> dict[str, Any] | None:
    for v in slot_status["versions"]:
        if v["sha256"] == sha and v["state"] in _USABLE:
            result: dict[str, Any] = v
            return result
    return None


def _problems_text(problems: list[dict[str, Any]]) -> str:
    if not problems:
        return "check failed"
    first = problems[0]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    where = f"line {first['line']}: " if first.get("line") else ""
    return f"check failed: {where}{first.get('message', first.get('kind', '?'))}{more}"


def prepare(handle: EngineHandle, slot: str, source: Rule, filename: str) -> Vote:
    """Load and check ``source`` in ``slot``: the member's vote (never raises
    for what the rule or the engine refused; a lost engine raises)."""
    from ..client import ConnectionLost

    try:
        loaded = handle.load(slot, source, filename)
    except ConnectionLost:
        raise
    except LivepatchError as exc:
        return Vote(handle.name, ok=False, reason=f"load failed: {exc.message}")
    version = str(loaded["version"])
    try:
        report = handle.check(version)
    except ConnectionLost:
        raise
    except LivepatchError as exc:
        return Vote(handle.name, False, version, bool(loaded["new"]), f"check: {exc.message}")
    problems = [p for p in report.get("problems", []) if p.get("severity", "error") == "error"]
    if not report.get("ok", False):
        return Vote(
            handle.name, False, version, bool(loaded["new"]), _problems_text(problems), problems
        )
    return Vote(handle.name, True, version, bool(loaded["new"]))


def release(handle: EngineHandle, vote: Vote) -> None:
    """Undo a prepare after an abort: unload the version if the prepare made
    it and it is not active (a version that was there before stays)."""
    from ..client import ConnectionLost

    if vote.version is None or not vote.new:
        return
    try:
        status = handle.status()
        slot = vote.version.rpartition("@")[0]
        s = _slot_status(status, slot)
        if s is not None and s["active"] == vote.version:
            return
        handle.unload(vote.version)
    except (ConnectionLost, LivepatchError):
        pass  # gone, or already unloaded by someone: nothing left to undo


def release_since(handle: EngineHandle, pushes: list[tuple[str, str, float]]) -> list[str]:
    """Unload what abandoned pushes prepared here. Each push is ``(slot,
    sha, started)``: versions of ``slot`` with source ``sha`` loaded at or
    after ``started`` that are not active go. A version loaded before the
    push started stays: the push did not make it. Returns the ids unloaded."""
    from ..client import ConnectionLost

    if not pushes:
        return []
    status = handle.status()
    gone = []
    for slot, sha, since in pushes:
        s = _slot_status(status, slot)
        if s is None:
            continue
        for v in s["versions"]:
            if v["sha256"] != sha or v["id"] == s["active"] or v["state"] == "unloaded":
                continue
            if float(v.get("loaded_at") or 0.0) < since or v["id"] in gone:
                continue
            try:
                handle.unload(str(v["id"]))
            except ConnectionLost:
                raise
            except LivepatchError:
                continue  # swapped in meanwhile, or already gone: nothing to undo
            gone.append(str(v["id"]))
    return gone


@dataclass(slots=True)
class Convergence:
    """The outcome of one reconcile pass over every slot."""

    state: MemberState
    #: slot -> version id swapped in by this pass.
    swapped: dict[str, str]


def converge(
    handle: EngineHandle,
    read_desired: Callable[[], dict[str, tuple[str, str]]],
    source_of: Callable[[str], tuple[Rule, str]],
    pid: int = 0,
) -> Convergence:
    """Make every slot run its desired sha; report ready or diverged.

    ``read_desired()`` maps slot -> (sha256, filename); ``source_of(sha)``
    returns ``(source, filename)``. A slot the engine does not have is
    diverged, as is one whose source fails to load or check here.

    The engine's status is read *before* the desired versions, and every
    swap names the version it replaces: a pusher swaps only after its
    commit is durable, so if it swapped after our status read, our swap
    fails (and we read again), and if before, we read its commit. A stale
    desired version can never undo a newer push.
    """
    for _attempt in range(20):
        try:
            return _converge_once(handle, read_desired, source_of, pid)
        except Conflict:
            continue  # someone swapped meanwhile: re-read everything
    return _converge_once(handle, read_desired, source_of, pid)


def _converge_once(
    handle: EngineHandle,
    read_desired: Callable[[], dict[str, tuple[str, str]]],
    source_of: Callable[[str], tuple[Rule, str]],
    pid: int,
) -> Convergence:
    from ..client import ConnectionLost

    status = handle.status()
    desired = read_desired()
    swapped: dict[str, str] = {}
    diverged: dict[str, str] = {}
    for slot, (sha, _filename) in sorted(desired.items()):
        s = _slot_status(status, slot)
        if s is None:
            diverged[slot] = f"this engine has no slot {slot!r}"
            continue
        current = _version_with_sha(s, sha)
        if current is not None and current["id"] == s["active"]:
            continue
        try:
            if current is None:
                source, filename = source_of(sha)
                vote = prepare(handle, slot, source, filename)
                if not vote.ok or vote.version is None:
                    diverged[slot] = vote.reason
                    continue
                version = vote.version
            else:
                version = str(current["id"])
                if current["state"] == "loaded":
                    report = handle.check(version)
                    if not report.get("ok"):
                        diverged[slot] = _problems_text(report.get("problems", []))
                        continue
            handle.swap(version, expect=s["active"])
            swapped[slot] = version
        except LookupError as exc:
            diverged[slot] = str(exc)
        except Conflict:
            raise
        except ConnectionLost:
            raise
        except LivepatchError as exc:
            diverged[slot] = exc.message
    if swapped:
        status = _after_swaps(status, swapped, desired)
    return Convergence(member_state(handle.name, status, diverged, pid), swapped)


def _after_swaps(
    status: dict[str, Any], swapped: dict[str, str], desired: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """``status`` as it is after ``swapped`` (slot -> version now active).

    Each swap named the version it replaced and succeeded, so the engine
    runs exactly these: no need to ask it again (one control request less
    per swap on every member)."""
    slots = []
    for s in status["slots"]:
        version = swapped.get(s["name"])
        if version is not None:
            versions = list(s["versions"])
            if not any(v["id"] == version for v in versions):
                # Loaded by this very pass: it has served no call yet.
                sha = desired[s["name"]][0]
                versions.append({"id": version, "sha256": sha, "state": "active", "calls": 0})
            s = {**s, "active": version, "versions": versions}
        slots.append(s)
    return {**status, "slots": slots}


def member_state(
    name: str, status: dict[str, Any], diverged: dict[str, str], pid: int = 0
) -> MemberState:
    """A member's self-description from its engine's status."""
    import socket
    import time

    active: dict[str, dict[str, Any]] = {}
    calls = 0
    for s in status["slots"]:
        for v in s["versions"]:
            calls += int(v.get("calls", 0))
            if v["id"] == s["active"]:
                active[s["name"]] = {"version": v["id"], "sha256": v["sha256"]}
    return MemberState(
        name=name,
        pid=pid or int(status.get("pid") or 0),
        state="diverged" if diverged else "ready",
        active=active,
        diverged=diverged,
        calls=calls,
        time=time.time(),
        host=socket.gethostname(),
    )
