"""The local registry's durable store: one directory per fleet.

Layout, under ``$XDG_STATE_HOME/livepatch/fleets/<fleet>/`` (mode 0700)::

    lock                     flock'd for every read-modify-write
    state.json               the layout (see :data:`.model.LAYOUT`), desired version
                             per slot, its generation, push history
    sources/<sha256>.py      every source pushed, content-addressed
    sources/<sha256>.so      every ready shared object pushed (its bytes)
    sources/<sha256>.json    {"filename": ...}
    members/<name>.json      what each member says about itself

Every write is atomic (a temporary file, fsync, rename, fsync of the
directory): a reader sees the old state or the new one, never half of one,
and a crash never loses an acknowledged commit. The generation of a slot is
its compare-and-set token, as a znode's version is in ZooKeeper.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..journal import write_all
from .model import (
    LAYOUT,
    Desired,
    FleetConflict,
    FleetError,
    MemberState,
    PushRecord,
    Rule,
    check_layout,
    parse_node,
    sha_of,
    state_home,
)

__all__ = ["FleetState", "LocalStore", "fleet_root"]

#: Push records kept in state.json (the oldest are dropped first).
HISTORY = 200


def fleet_root() -> Path:
    """Where local fleets keep their stores."""
    return state_home() / "fleets"


@dataclass(slots=True)
class FleetState:
    """The contents of ``state.json``."""

    desired: dict[str, Desired] = field(default_factory=dict)
    generation: dict[str, int] = field(default_factory=dict)
    pushes: list[PushRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            "layout": LAYOUT,
            "desired": {k: v.to_json() for k, v in self.desired.items()},
            "generation": dict(self.generation),
            "pushes": [p.to_json() for p in self.pushes[-HISTORY:]],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetState:
        """Parse :meth:`to_json`'s output (its layout checked by the caller)."""
        return cls(
            desired={k: Desired.from_json(v) for k, v in (data.get("desired") or {}).items()},
            generation={k: int(v) for k, v in (data.get("generation") or {}).items()},
            pushes=[PushRecord.from_json(p) for p in data.get("pushes") or []],
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably; :class:`StorageError` (the
    temporary file removed) when the disk refuses."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            write_all(fd, data)  # a short write (a nearly full disk) is continued
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(
            f"cannot write the fleet store's {path} ({exc.strerror or exc}): "
            "not written; free some space (or fix its permissions) and try again"
        ) from None


def _private_dir(path: Path) -> None:
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FleetError(f"fleet store {path} is not a plain directory: remove it")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise FleetError(
            f"fleet store {path} is not yours alone (uid {st.st_uid}, mode "
            f"{oct(st.st_mode & 0o777)}): fix its owner and mode or set XDG_STATE_HOME"
        )


class LocalStore:
    """One fleet's durable store on this host."""

    def __init__(self, fleet: str, root: Path | None = None) -> None:
        self.fleet = fleet
        self.path = (root or fleet_root()) / fleet
        for sub in (self.path, self.path / "sources", self.path / "members"):
            _private_dir(sub)
        self._state = self.path / "state.json"

    @classmethod
    def existing(cls, fleet: str, root: Path | None = None) -> LocalStore:
        """The store of a fleet that exists on this host (a member joined it,
        or something was pushed to it): what a verb that only reads opens, so
        a mistyped name is an error, not a new empty fleet left behind."""
        base = root or fleet_root()
        if not (base / fleet).is_dir():
            known = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
            here = f"fleets here: {', '.join(known)}" if known else f"no fleet is kept under {base}"
            raise FleetError(
                f"no fleet {fleet!r} on this host ({here}): check the name, or start "
                f"an engine with `livepatch engine --name NAME --fleet {fleet}`"
            )
        return cls(fleet, root)

    # -- sources ----------------------------------------------------------------

    def put_source(self, source: Rule, filename: str) -> str:
        """Store a source, or an object's bytes (idempotent, durable on
        return); returns its sha256."""
        sha = sha_of(source)
        suffix = ".so" if isinstance(source, bytes) else ".py"
        body = self.path / "sources" / f"{sha}{suffix}"
        if not body.exists():
            _write_atomic(
                self.path / "sources" / f"{sha}.json", json.dumps({"filename": filename}).encode()
            )
            data = source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass")
            _write_atomic(body, data)
        return sha

    def get_source(self, sha: str) -> tuple[Rule, str]:
        """``(source, filename)`` of a stored sha (``source`` is ``bytes`` for
        a ready shared object); ``LookupError`` if absent."""
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise LookupError(f"not a sha256: {sha!r}")
        source: Rule
        try:
            source = (self.path / "sources" / f"{sha}.py").read_text(encoding="utf-8")
            suffix = ".py"
        except FileNotFoundError:
            try:
                source = (self.path / "sources" / f"{sha}.so").read_bytes()
                suffix = ".so"
            except FileNotFoundError:
                raise LookupError(f"the fleet store has no source {sha[:12]}") from None
        try:
            meta = json.loads((self.path / "sources" / f"{sha}.json").read_text(encoding="utf-8"))
            filename = str(meta.get("filename") or f"{sha[:12]}{suffix}")
        except (OSError, ValueError):
            filename = f"{sha[:12]}{suffix}"
        if sha_of(source) != sha:
            raise LookupError(
                f"stored source {sha[:12]} is damaged (its sha differs): push it again"
            )
        return source, filename

    def source_shas(self) -> list[str]:
        """The sha256 of every stored source and object."""
        return sorted(
            p.stem for p in (self.path / "sources").iterdir() if p.suffix in (".py", ".so")
        )

    # -- desired state and history ----------------------------------------------

    def read(self) -> FleetState:
        """The current state (an atomic snapshot; no lock needed to read)."""
        try:
            text = self._state.read_bytes()
        except FileNotFoundError:
            return FleetState()
        where = f"fleet store {self._state}"

        def parse(data: dict[str, Any]) -> FleetState:
            # A store written before layouts were recorded is layout 1.
            check_layout(data.get("layout", 1), where)
            return FleetState.from_json(data)

        return parse_node(parse, text, where, "fleet state")

    def signature(self) -> tuple[int, int, int]:
        """Changes whenever state.json is replaced: what members poll."""
        try:
            st = os.stat(self._state)
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[FleetState]:
        """Lock, read, let the caller change the state, write it atomically.

        An exception inside the block writes nothing.
        """
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            yield state
            _write_atomic(self._state, json.dumps(state.to_json(), indent=1).encode("utf-8"))
        finally:
            os.close(fd)  # closing releases the lock

    def commit(self, record: PushRecord, desired: Desired, generation: int) -> int:
        """Flip the slot's desired version if its generation is still
        ``generation``, recording the push in the same write; returns the new
        generation. :class:`FleetConflict` if another push got there first."""
        with self.transaction() as state:
            if any(p.id == record.id and p.outcome == "abandoned" for p in state.pushes):
                raise FleetConflict(
                    f"push {record.id} ran past its deadline and its members gave it up: "
                    "nobody swapped; push again (with a longer --deadline)"
                )
            now = state.generation.get(desired.slot, 0)
            if now != generation:
                current = state.desired.get(desired.slot)
                raise FleetConflict(
                    f"another push changed {desired.slot}'s desired version first "
                    f"(now {current.sha256[:12] if current else 'none'}): "
                    "look at `livepatch status --fleet` and push again"
                )
            state.desired[desired.slot] = desired
            state.generation[desired.slot] = now + 1
            record.outcome = "committed"
            _put_record(state, record)
            return now + 1

    def abandon(self, push_id: str, reason: str) -> bool:
        """Mark a push that is still ``preparing`` ``abandoned`` (nobody will
        commit it: :meth:`commit` refuses it from now on). False if it had
        committed or ended meanwhile."""
        import time

        with self.transaction() as state:
            for record in state.pushes:
                if record.id == push_id and record.outcome == "preparing":
                    record.outcome, record.reason = "abandoned", reason
                    record.finished = time.time()
                    return True
            return False

    def record(self, record: PushRecord) -> None:
        """Add or update a push record."""
        with self.transaction() as state:
            _put_record(state, record)

    # -- members ----------------------------------------------------------------

    def write_member(self, member: MemberState) -> None:
        """What a member says about itself, replaced atomically."""
        data = json.dumps(member.to_json()).encode("utf-8")
        _write_atomic(self.path / "members" / f"{member.name}.json", data)

    def read_members(self) -> dict[str, MemberState]:
        """Every member state file, by name (stale ones included)."""
        found = {}
        for path in sorted((self.path / "members").glob("*.json")):
            try:
                member = MemberState.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError):
                continue
            found[member.name] = member
        return found


def _put_record(state: FleetState, record: PushRecord) -> None:
    for i, old in enumerate(state.pushes):
        if old.id == record.id:
            state.pushes[i] = record
            break
    else:
        state.pushes.append(record)
    del state.pushes[:-HISTORY]
