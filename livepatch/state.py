"""Durable engine state: a content-addressed source store and the journal.

Layout of a state directory (mode 0700)::

    state/
      journal.jsonl          append-only, fsync'd, one JSON object per line
      sources/<sha256>.py    every source ever loaded, written before the
                             journal line that names it
      sources/<sha256>.json  {"filename": ...} the name it was first loaded as

Restarted on the same directory, an engine reads the journal, finds for each
slot the version that was active after the last acknowledged swap or
rollback, loads that source again under the same version id, re-checks it
and swaps it in. A torn last journal line (a crash mid-write) is ignored:
the reply for that operation was never sent, so no client was told it
happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .engine import Engine, parse_version_id
from .errors import LivepatchError
from .journal import Journal, JournalEntry, Peer, read_journal

__all__ = ["RestoredSlot", "SourceStore", "StateDir", "active_versions"]

#: Operations after which the entry's version is the slot's active one.
_ACTIVATING = frozenset({"swap", "rollback", "restore"})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SourceStore:
    """Sources by sha256; writes are atomic and durable before they return."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the source with this hash lives."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / f"{sha256}.py"

    def put(self, source: str, filename: str) -> str:
        """Store a source (idempotent); returns its sha256."""
        data = source.encode("utf-8", "surrogatepass")
        sha = hashlib.sha256(data).hexdigest()
        final = self.path(sha)
        if final.exists():
            return sha
        for path, payload in (
            (final.with_suffix(".json"), json.dumps({"filename": filename}).encode()),
            (final, data),
        ):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        _fsync_dir(self.root)
        return sha

    def get(self, sha256: str) -> tuple[str, str]:
        """``(source, filename)``; ``KeyError`` if not stored or corrupt."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(sha256) from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise KeyError(f"{sha256}: stored source does not match its hash")
        filename = f"{sha256[:12]}.py"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            filename = str(json.loads(path.with_suffix(".json").read_text())["filename"])
        return data.decode("utf-8", "surrogatepass"), filename


@dataclass(frozen=True, slots=True)
class RestoredSlot:
    """What restoring one slot did."""

    slot: str
    version: str
    ok: bool
    message: str


def active_versions(entries: list[JournalEntry]) -> dict[str, tuple[str, str]]:
    """Slot -> (version id, sha256) active after the journal's last activation."""
    return {slot: chain[-1] for slot, chain in swap_chains(entries).items()}


def swap_chains(entries: list[JournalEntry]) -> dict[str, list[tuple[str, str]]]:
    """Slot -> the versions to swap in, in order, to rebuild its history.

    The last one is the active version; the ones before it are the retired
    versions that rollback can return to, oldest first. Versions purged or
    unloaded later are left out.
    """
    chains: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        if not entry.ok or not entry.version:
            continue
        try:
            slot, _ = parse_version_id(entry.version)
        except LivepatchError:
            continue
        chain = chains.setdefault(slot, [])
        if entry.op in _ACTIVATING and entry.sha256:
            chain[:] = [c for c in chain if c[0] != entry.version]
            chain.append((entry.version, entry.sha256))
        elif entry.op in ("purge", "unload"):
            chain[:] = [c for c in chain if c[0] != entry.version]
    return {slot: chain for slot, chain in chains.items() if chain}


def highest_numbers(entries: list[JournalEntry]) -> dict[str, int]:
    """Slot -> the highest version number the journal mentions."""
    highest: dict[str, int] = {}
    for entry in entries:
        if not entry.version:
            continue
        try:
            slot, number = parse_version_id(entry.version)
        except LivepatchError:
            continue
        highest[slot] = max(highest.get(slot, 0), number)
    return highest


class StateDir:
    """A state directory: the store, the journal, and restoring from them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        old = os.umask(0o077)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
        self.store = SourceStore(path / "sources")
        # Read once: the journal keeps the newest entries in memory, restore
        # needs them all.
        self._history = read_journal(path / "journal.jsonl")
        self.journal = Journal(path / "journal.jsonl", history=self._history)

    def restore(self, engine: Engine) -> list[RestoredSlot]:
        """Bring back every slot's active and retired versions, re-checked, same ids.

        Slots the journal does not know, or whose source is missing, are left
        as they are (and reported). Version numbering continues after the
        highest number the journal has seen, so ids are never reused. Meant
        to run once, at startup: it uses the journal as read then.
        """
        entries, self._history = self._history, []
        for slot, number in highest_numbers(entries).items():
            if slot in engine.slots:
                engine.reserve_numbers(slot, number)
        results = []
        for slot, chain in swap_chains(entries).items():
            if slot not in engine.slots:
                results.append(RestoredSlot(slot, chain[-1][0], False, "slot no longer exists"))
                continue
            # Retired versions first (oldest first), so rollback works as
            # before the restart; the active one last.
            for version, sha in chain:
                results.append(self._restore_one(engine, version, sha))
        return results

    def record_startup(self, engine: Engine, version: str) -> None:
        """Journal a version the engine loaded and swapped in at startup."""
        info = engine.info(version)
        # A ready shared object has no source to keep (see _restore_one).
        with contextlib.suppress(LivepatchError):
            self.store.put(engine.source(version), info.filename)
        for op in ("load", "swap"):
            self.journal.record(
                op, version, peer=_SELF, ok=True, result="at startup", sha256=info.sha256
            )

    def _restore_one(self, engine: Engine, version: str, sha: str) -> RestoredSlot:
        slot, _ = parse_version_id(version)
        try:
            try:
                source, filename = self.store.get(sha)
            except KeyError as exc:
                reason = str(exc.args[0]) if exc.args else sha
                if reason == sha:  # missing, not damaged
                    reason = (
                        f"its source ({sha[:12]}) is not in the store; a version loaded from "
                        "a ready shared object is not kept: load it again"
                    )
                raise LivepatchError(reason) from None
            restored = engine.restore(version, source, filename)
            report = engine.check(restored)
            if not report.ok:
                raise LivepatchError(f"re-check failed: {report.errors[0].message}")
            engine.swap(restored)
        except (KeyError, LivepatchError) as exc:
            message = str(exc)
            self.journal.record("restore", version, peer=_SELF, ok=False, result=message)
            return RestoredSlot(slot, version, False, message)
        self.journal.record(
            "restore", version, peer=_SELF, ok=True, result="re-checked", sha256=sha
        )
        return RestoredSlot(slot, version, True, "re-checked")

    def close(self) -> None:
        """Close the journal."""
        self.journal.close()


_SELF = Peer(uid=os.getuid(), pid=os.getpid(), client="livepatch-engine", transport="local")
