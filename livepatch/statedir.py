"""The state directory: one engine's durable state, owned, verified and locked.

(Not to be confused with :mod:`livepatch.states`, the lifecycle table, or
:mod:`livepatch.runtime`, the connection files clients find engines by.)

Layout (docs/state.md describes every file and record)::

    state/                 0700, the engine user's, nothing in it writable by others
      lock                 flock'd for the engine's whole life; "NAME PID"
      journal.jsonl        the write-ahead journal (livepatch.journal, format 2)
      sources/<sha>.py     every source committed, stored and read back before
                           the journal record that names it
      sources/<sha>.so     every ready shared object committed (a native slot's
                           load by path or by bytes), stored the same way
      sources/<sha>.json   {"filename": ..., "versions": [...]}: the ids it was
                           loaded as, so numbers are never reused even if the
                           journal is lost
      native/              compiled objects of native slots (a cache)
      journal.set-aside-*.jsonl   what ``--recover`` took out of a damaged journal

Opening a state directory (:class:`StateDir`) takes the lock before reading
or writing anything, checks that everything in it is trustworthy (the
engine user's own, not writable by others, no symlinks), removes stray
temporary files, and verifies the journal record by record. A torn last
record is cut off with one line on stderr; anything else wrong stops
start-up with one line naming the record and the way out (``--recover``).
Restarted on the same directory, an engine restores every slot's active and
retired versions under their ids, re-checked, and adds one ``start`` record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import Commit, Engine
from .errors import LivepatchError, StorageError
from .journal import Journal, JournalEntry, Peer, Scan, scan, storage_error, write_all
from .model import Change, parse_version_id
from .quarantine import Quarantine

__all__ = [
    "RestoredSlot",
    "SourceStore",
    "StateDir",
    "StateDirError",
    "active_versions",
    "commit_change",
    "swap_chains",
]

_LOCK = "lock"
_JOURNAL = "journal.jsonl"
_SOURCES = "sources"
#: Operations after which the record's version is the slot's active one.
_ACTIVATING = frozenset({"swap", "rollback"})

_SELF = Peer(uid=os.getuid(), pid=os.getpid(), client="livepatch-engine", transport="local")


class StateDirError(LivepatchError, PermissionError):
    """The state directory cannot be used as it is; the message says why and
    what to do. The engine does not start."""

    kind = "state-dir"


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- trust ---------------------------------------------------------------------


def _untrusted(st: os.stat_result, shown: Path) -> str | None:
    """Why a file or directory cannot be trusted, or ``None``."""
    if stat.S_ISLNK(st.st_mode):
        return f"{shown} is a symlink: refusing to follow it; replace it with the real file"
    if st.st_uid != os.geteuid():
        return (
            f"{shown} belongs to uid {st.st_uid}, not to this engine's user ({os.geteuid()}): "
            "it could hold code planted by someone else; use a state dir of your own"
        )
    if st.st_mode & 0o022:
        return (
            f"{shown} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): anyone could "
            f"plant code there; `chmod go-w {shown}` if nobody did, else use a fresh state dir"
        )
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return f"{shown} is neither a file nor a directory: remove it"
    return None


def _check_tree(dir_fd: int, root: Path) -> None:
    """Every entry under the state dir, without following any symlink."""
    for top, dirs, files, top_fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in [*dirs, *files]:
            st = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
            reason = _untrusted(st, root / top / name)
            if reason is not None:
                raise StateDirError(f"state dir {root}: {reason}")


def _open_dir(path: Path) -> int:
    """The state dir, created 0700 if needed, opened without following a
    symlink and checked."""
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a symlink in its place: refused just below
    except OSError as exc:
        raise storage_error(f"cannot create state dir {path}", exc, path.parent) from None
    finally:
        os.umask(old)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            what = "a symlink" if os.path.islink(path) else "not a directory"
            raise StateDirError(
                f"state dir {path} is {what}: refusing to use it; give a real directory"
            ) from None
        raise StateDirError(f"cannot open state dir {path}: {exc.strerror}") from None
    reason = _untrusted(os.fstat(fd), path)
    parent = os.lstat(path.absolute().parent)
    if reason is None and parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        reason = (
            f"{path}: its parent {path.absolute().parent} is writable by everyone without the "
            "sticky bit, so anyone could replace the state dir; move it somewhere private"
        )
    if reason is not None:
        os.close(fd)
        raise StateDirError(f"state dir {reason}")
    return fd


# -- the lock ------------------------------------------------------------------


def _take_lock(dir_fd: int, path: Path, engine_name: str) -> int:
    """An exclusive flock on ``lock``, held for the process's life (the
    kernel drops it when the process dies, however it dies)."""
    try:
        fd = os.open(
            _LOCK,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateDirError(
                f"state dir {path}: {path / _LOCK} is a symlink: refusing to follow it; remove it"
            ) from None
        raise storage_error(f"cannot create the lock in state dir {path}", exc, path) from None
    reason = _untrusted(os.fstat(fd), path / _LOCK)
    if reason is not None:
        os.close(fd)
        raise StateDirError(f"state dir {path}: {reason}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("ascii", "replace").split()
        os.close(fd)
        name, pid = [*holder, "?", "?"][:2]
        raise StateDirError(f"state dir {path} is in use by engine {name} (pid {pid})") from None
    return fd


def _sign_lock(fd: int, engine_name: str) -> None:
    """Say who holds the lock, for the message above; once the state dir is
    accepted, so a refused start changes nothing. Best effort: on a full
    disk the lock still holds, a second engine just cannot say by whom."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{engine_name or '?'} {os.getpid()}\n".encode("ascii", "replace"), 0)


# -- the store -----------------------------------------------------------------


class SourceStore:
    """Sources and ready shared objects by sha256, with the version ids each
    was committed as.

    Writes are atomic (a temporary file, fsync'd, renamed, the directory
    fsync'd) and read back before they return; they raise
    :class:`~livepatch.errors.StorageError` with nothing left behind.
    """

    def __init__(self, root: Path, dir_fd: int | None = None) -> None:
        """``dir_fd``: the store directory opened already (no symlink followed)."""
        self.root = root
        if dir_fd is None:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fd = dir_fd
        # Two slots may commit the same source at once: one writer at a time
        # keeps the temporary names apart and no version id is lost from a .json.
        self._lock = threading.Lock()

    @staticmethod
    def _name(sha256: str, suffix: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return f"{sha256}{suffix}"

    def path(self, sha256: str) -> Path:
        """Where the source with this hash lives."""
        return self.root / self._name(sha256, ".py")

    def object_path(self, sha256: str) -> Path:
        """Where the shared object with this hash lives."""
        return self.root / self._name(sha256, ".so")

    def _read(self, name: str) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def _write(self, name: str, payload: bytes) -> None:
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self._fd)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._fd,
        )
        try:
            try:
                write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)  # never a stray temp file
            raise
        os.fsync(self._fd)

    def put(self, content: str | bytes | None, filename: str, version: str, sha256: str) -> None:
        """Store a source (``str``) or a shared object (``bytes``; ``None``:
        ids only) under its sha256, read back intact, and note that
        ``version`` was committed with it."""
        with self._lock:
            self._put(content, filename, version, sha256)

    def _put(self, content: str | bytes | None, filename: str, version: str, sha256: str) -> None:
        try:
            if content is not None:
                what = "source" if isinstance(content, str) else "object"
                data = (
                    content.encode("utf-8", "surrogatepass")
                    if isinstance(content, str)
                    else content
                )
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise ValueError(f"{version}: {what} does not match its sha256")
                name = self._name(sha256, ".py" if isinstance(content, str) else ".so")
                stored = self._read(name)
                if stored is None or hashlib.sha256(stored).hexdigest() != sha256:
                    self._write(name, data)
                    stored = self._read(name)
                    if stored is None or hashlib.sha256(stored).hexdigest() != sha256:
                        raise StorageError(
                            f"the {what} of {version} did not read back intact from "
                            f"{self.root}: nothing was changed; check the disk"
                        )
            meta = self._meta(sha256)
            versions = [v for v in meta.get("versions", []) if isinstance(v, str)]
            if version not in versions or "filename" not in meta:
                versions.append(version)
                meta = {"filename": meta.get("filename", filename), "versions": versions}
                self._write(self._name(sha256, ".json"), json.dumps(meta).encode("ascii"))
        except OSError as exc:
            raise storage_error(f"cannot store the source of {version}", exc, self.root) from None

    def _meta(self, sha256: str) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            raw = self._read(self._name(sha256, ".json"))
            data = json.loads(raw) if raw else {}
            if isinstance(data, dict):
                return data
        return {}

    def get(self, sha256: str) -> tuple[str | bytes, str]:
        """``(source, filename)``, or ``(object bytes, filename)`` for a shared
        object; ``KeyError`` if not stored or corrupt."""
        for suffix in (".py", ".so"):
            data = self._read(self._name(sha256, suffix))
            if data is None:
                continue
            what = "source" if suffix == ".py" else "object"
            if hashlib.sha256(data).hexdigest() != sha256:
                raise KeyError(f"{sha256}: stored {what} does not match its hash")
            filename = str(self._meta(sha256).get("filename") or f"{sha256[:12]}{suffix}")
            return (data.decode("utf-8", "surrogatepass") if suffix == ".py" else data), filename
        raise KeyError(sha256)

    def names(self) -> list[str]:
        """Every file name in the store (temporary files included)."""
        return os.listdir(self._fd)

    def highest_numbers(self) -> dict[str, int]:
        """Slot -> the highest version number any stored source was committed as."""
        highest: dict[str, int] = {}
        for name in self.names():
            if name.startswith(".") or not name.endswith(".json"):
                continue
            for version in self._meta(name[: -len(".json")]).get("versions", []):
                with contextlib.suppress(LivepatchError, TypeError, AttributeError):
                    slot, number = parse_version_id(version)
                    highest[slot] = max(highest.get(slot, 0), number)
        return highest

    def remove_strays(self) -> int:
        """Delete temporary files a crashed write left behind; how many."""
        count = 0
        for name in self.names():
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._fd)
                    count += 1
        return count

    def close(self) -> None:
        """Close the directory."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


# -- replaying the journal -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoredSlot:
    """What restoring one version did."""

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
    unloaded later are left out. Every record is a change that was made:
    the journal holds no intents (see docs/state.md).
    """
    chains: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        if not entry.ok or not entry.version:
            continue
        try:
            slot, _ = parse_version_id(entry.version)
        except LivepatchError:
            continue  # never written by this format; a reader must not crash on it
        chain = chains.setdefault(slot, [])
        if entry.op in _ACTIVATING and entry.sha256:
            chain[:] = [c for c in chain if c[0] != entry.version]
            chain.append((entry.version, entry.sha256))
        elif entry.op in ("purge", "unload"):
            chain[:] = [c for c in chain if c[0] != entry.version]
    return {slot: chain for slot, chain in chains.items() if chain}


def highest_numbers(entries: list[JournalEntry]) -> dict[str, int]:
    """Slot -> the highest version number a committed load was given.

    Only loads count: a request naming ``spam@99`` reserves nothing.
    """
    highest: dict[str, int] = {}
    for entry in entries:
        if entry.op != "load" or not entry.ok or not entry.version:
            continue
        try:
            slot, number = parse_version_id(entry.version)
        except LivepatchError:
            continue
        highest[slot] = max(highest.get(slot, 0), number)
    return highest


def _summary(op: str, change: Change) -> str:
    if op == "load":
        return f"loaded {change.version}"
    if op == "check":
        return "ok" if change.ok else f"{change.problems} problem{'s' * (change.problems != 1)}"
    if op in ("swap", "rollback"):
        return f"{change.previous or 'nothing'} -> {change.version}"
    return "purged" if op == "purge" else "unloaded"


def commit_change(
    journal: Journal, store: SourceStore | None, op: str, peer: Peer, change: Change
) -> None:
    """Make one change durable: the source stored and read back, then the
    journal record written whole and fsync'd. Raises
    :class:`~livepatch.errors.StorageError` (nothing changed) if either fails."""
    extra: dict[str, Any] = {}
    if change.op == "load":
        extra["filename"] = change.filename
        if change.origin:
            # Where it was read from: restore resolves includes and $ORIGIN there.
            extra["origin"] = change.origin
        if change.data is not None:
            extra["object"] = True
        if store is not None:
            content = change.data if change.data is not None else change.source
            store.put(content, change.filename, change.version, change.sha256)
    elif change.op == "swap":
        extra["previous"] = change.previous
    journal.record(
        op,
        change.version,
        peer=peer,
        # A check that found problems is a change (the version is FAILED), but
        # the audit log must not read "ok" for it.
        ok=change.ok if change.op == "check" else True,
        result=_summary(op, change),
        sha256=change.sha256,
        extra=extra,
    )


# -- the directory -----------------------------------------------------------------


class StateDir:
    """A state directory, locked for this process, verified, ready to restore."""

    def __init__(
        self,
        path: Path,
        *,
        engine_name: str = "",
        recover: bool = False,
        warn: Callable[[str], None] = _warn,
    ) -> None:
        """Open (or create) ``path``; :class:`StateDirError` with the reason
        if it cannot be used, before anything in it was changed."""
        self.path = path
        self.warn = warn
        #: Why lifecycle changes cannot be journaled right now (``None``: they can).
        self.read_only: str | None = None
        # Nothing this engine creates from here on is writable by others
        # (the native compile cache included), or the next start refuses it.
        os.umask(os.umask(0o022) | 0o022)
        self._fd = _open_dir(path)
        self._lock_fd = -1
        try:
            self._lock_fd = _take_lock(self._fd, path, engine_name)
            _check_tree(self._fd, path)
            self.store = SourceStore(path / _SOURCES, self._store_fd())
            strays = self.store.remove_strays()
            if strays:
                warn(f"state dir {path}: removed {strays} temporary file(s) left by a crash")
            self.journal, self._history = self._open_journal(recover, engine_name)
            _sign_lock(self._lock_fd, engine_name)
        except BaseException:
            self._close_fds()
            raise

    def _store_fd(self) -> int:
        try:
            os.mkdir(_SOURCES, 0o700, dir_fd=self._fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise storage_error(f"cannot create {self.path / _SOURCES}", exc, self.path) from None
        return os.open(
            _SOURCES, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd
        )

    def _store_has_content(self) -> bool:
        return any(not n.startswith(".") for n in self.store.names())

    def _open_journal(self, recover: bool, engine_name: str) -> tuple[Journal, list[JournalEntry]]:
        where = self.path / _JOURNAL
        try:
            fd = os.open(
                _JOURNAL, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd
            )
        except FileNotFoundError:
            fd = -1
        data = b""
        if fd >= 0:
            chunks = []
            offset = 0
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            data = b"".join(chunks)
        found = scan(data)
        note = ""
        try:
            if found.old_format:
                raise StateDirError(
                    f"state dir {self.path}: {where} is in the old journal format (no sequence "
                    "numbers or checksums, so it cannot be verified); it is not migrated: move "
                    "the state dir aside and start with a new one"
                )
            if found.damage is not None:
                if not recover:
                    d = found.damage
                    kept = f"keep records 1-{d.record - 1} and " if d.record > 1 else ""
                    raise StateDirError(
                        f"state dir {self.path}: {where} line {d.line}: {d.reason}; start with "
                        f"--recover to {kept}set the rest aside in a file"
                    )
                note = self._set_aside(fd, data, found)
            elif found.torn_bytes:
                self.warn(
                    f"state dir {self.path}: ignored a torn last record in {where} "
                    f"({found.torn_bytes} bytes after record {len(found.entries)}: the engine "
                    "stopped while writing it, so it was never acknowledged)"
                )
                os.ftruncate(fd, found.good_size)
                os.fsync(fd)
            if found.empty:
                if self._store_has_content() and not recover:
                    raise StateDirError(
                        f"state dir {self.path} has stored sources but no journal ({where} is "
                        "missing or empty): put the journal back, or start with --recover to "
                        "begin a new one (version numbers continue after the stored ones)"
                    )
                if fd < 0:
                    fd = os.open(
                        _JOURNAL,
                        os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        0o600,
                        dir_fd=self._fd,
                    )
                    os.fsync(self._fd)
        except StateDirError:
            if fd >= 0:
                os.close(fd)
            raise
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            raise storage_error(f"cannot open {where}", exc, self.path) from None
        journal = Journal(where, fd=fd, found=found)
        if found.empty:
            lost = self._store_has_content()
            journal.record(
                "journal",
                None,
                peer=_SELF,
                result="new journal"
                + (" (--recover: the previous one was lost; numbers continue)" if lost else ""),
                extra={"format": 2, "engine": engine_name},
            )
        self._recovered = note
        return journal, found.entries

    def _set_aside(self, fd: int, data: bytes, found: Scan) -> str:
        assert found.damage is not None
        d = found.damage
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"journal.set-aside-{stamp}.jsonl"
        out = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._fd,
        )
        try:
            write_all(out, data[d.offset :])
            os.fsync(out)
        finally:
            os.close(out)
        os.fsync(self._fd)
        os.ftruncate(fd, d.offset)
        os.fsync(fd)
        found.torn_bytes = 0
        note = (
            f"--recover kept records 1-{d.record - 1} and set lines {d.line}- aside in "
            f"{self.path / name} ({d.reason})"
        )
        self.warn(f"state dir {self.path}: {note}")
        return note

    # -- restoring ---------------------------------------------------------------

    def committer(self, op: str, peer: Peer = _SELF) -> Commit:
        """The ``commit`` callback for one engine operation (write-ahead)."""

        def commit(change: Change) -> None:
            commit_change(self.journal, self.store, op, peer, change)

        return commit

    def restore(self, engine: Engine, quarantine: Quarantine | None = None) -> list[RestoredSlot]:
        """Bring back every slot's active and retired versions, re-checked, same ids,
        and journal the start (one record).

        Retired versions are loaded through ``quarantine`` (as any load from
        a client is); the active one in-process, as the startup loads are.
        Slots the journal does not know, or whose source is missing, are left
        as they are (and reported). Numbering continues after the highest
        number any load was committed as, in the journal or in the store.
        Meant to run once, at startup.
        """
        entries, self._history = self._history, []
        numbers = highest_numbers(entries)
        for slot, number in self.store.highest_numbers().items():
            numbers[slot] = max(numbers.get(slot, 0), number)
        for slot, number in numbers.items():
            if slot in engine.slots:
                engine.reserve_numbers(slot, number)
        origins = {
            e.version: str(e.extra["origin"])
            for e in entries
            if e.op == "load" and e.ok and e.version and isinstance(e.extra.get("origin"), str)
        }
        results = []
        for slot, chain in swap_chains(entries).items():
            if slot not in engine.slots:
                results.append(RestoredSlot(slot, chain[-1][0], False, "slot no longer exists"))
                continue
            # Retired versions first (oldest first), so rollback works as
            # before the restart; the active one last.
            for i, (version, sha) in enumerate(chain):
                retired = i < len(chain) - 1
                with _quarantined(engine, quarantine if retired else None):
                    results.append(self._restore_one(engine, version, sha, origins.get(version)))
        self._journal_start(results)
        return results

    def _journal_start(self, results: list[RestoredSlot]) -> None:
        done = [r.version for r in results if r.ok]
        failed = [f"{r.version}: {r.message}" for r in results if not r.ok]
        text = "restored " + (", ".join(done) or "nothing")
        if failed:
            text += "; could not restore " + "; ".join(failed)
        if self._recovered:
            text += "; " + self._recovered
        error = self.journal.record_or_defer(
            "start", None, peer=_SELF, ok=not failed, result=text[:2000]
        )
        if error is not None:
            self.read_only = error.message
            self.warn(
                f"state dir {self.path}: serving read-only: {error.message} "
                "(every change is refused with `storage` until the journal can be written)"
            )
            self.journal.on_deferred_written = self._writable_again

    def _writable_again(self) -> None:
        self.read_only = None
        self.warn(f"state dir {self.path}: writable again; the start is journaled now")

    def _restore_one(
        self, engine: Engine, version: str, sha: str, origin: str | None
    ) -> RestoredSlot:
        slot, _ = parse_version_id(version)
        try:
            try:
                content, filename = self.store.get(sha)
            except KeyError as exc:
                reason = str(exc.args[0]) if exc.args else sha
                if reason == sha:  # missing, not damaged
                    reason = (
                        f"its source or object ({sha[:12]}) is not in the store (a ready "
                        "shared object loaded before objects were kept?): load it again"
                    )
                raise LivepatchError(reason) from None
            restored = engine.restore(version, content, filename, origin=origin)
            report = engine.check(restored)
            if not report.ok:
                raise LivepatchError(f"re-check failed: {report.errors[0].message}")
            engine.swap(restored)
        except (KeyError, OSError, LivepatchError) as exc:
            return RestoredSlot(slot, version, False, getattr(exc, "message", str(exc)))
        return RestoredSlot(slot, version, True, "re-checked")

    def close(self) -> None:
        """Close the journal and the store, and release the lock."""
        self.journal.close()
        self.store.close()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._lock_fd, self._fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._lock_fd = self._fd = -1


@contextlib.contextmanager
def _quarantined(engine: Engine, quarantine: Quarantine | None) -> Iterator[None]:
    # Start-up is single-threaded (nothing is served yet), so the policy can
    # be lent to the engine for one restore.
    saved = engine.quarantine
    engine.quarantine = quarantine if quarantine is not None else saved
    try:
        yield
    finally:
        engine.quarantine = saved
