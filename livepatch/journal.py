"""The journal: who changed what, in order, as records that can be verified.

Every lifecycle change is recorded with its time, the peer (uid, pid, client
name), the version and the sha256 of its source, and the result. Without a
file the journal lives in memory (the last ``keep`` entries). With one
(``livepatch engine --state-dir``) it is the engine's write-ahead log: each
record is written whole and fsync'd *before* the change it describes is
made visible, and a failed write raises :class:`~livepatch.errors.StorageError`
after cutting the file back to its last complete record, so nothing is half
written and nothing changed.

File format (``journal.jsonl``, format 2; docs/state.md has the full story):
one record per line, each a JSON object (ASCII, so no byte of a client's text
can reach a terminal raw) that starts with its checksum::

    {"crc":"1c291ca3","seq":1,"time":...,"op":"journal","format":2,...}

``crc`` is the CRC-32 (zlib) of the record's own text without it, i.e. of
``"{" + line[18:]``; ``seq`` counts from 1 with no gaps. Record 1 is the
header (``op: "journal"``, ``format: 2``). :func:`scan` reads a file and
says exactly what is wrong with it, if anything: bytes after the last
newline are a *torn* record (a crash in the middle of a write, never
acknowledged); anything else (a bad checksum, a gap in ``seq``, garbage) is
*damage*, which start-up refuses to guess about.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import select
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StorageError
from .jsonable import JsonFields

__all__ = [
    "FORMAT",
    "Damage",
    "Journal",
    "JournalEntry",
    "Peer",
    "Scan",
    "encode_record",
    "read_journal",
    "scan",
    "storage_error",
    "write_all",
]

#: The journal format this code writes and reads.
FORMAT = 2
_PREFIX = b'{"crc":"'
_BODY_AT = len(_PREFIX) + 8 + 2  # after '{"crc":"xxxxxxxx",'


@dataclass(frozen=True, slots=True)
class Peer(JsonFields):
    """Who sent a request: the kernel-checked uid/pid and the client's name."""

    uid: int | None = None
    pid: int | None = None
    client: str = ""
    transport: str = "local"


@dataclass(frozen=True, slots=True)
class JournalEntry(JsonFields):
    """One record of the journal."""

    time: float
    op: str
    version: str | None
    sha256: str | None
    peer: dict[str, Any]
    ok: bool
    result: str
    #: Position in the journal, from 1, no gaps (0: never written to a file).
    seq: int = 0
    #: Op-specific fields (``filename`` of a load, ``previous`` of a swap,
    #: the header's ``format``): kept in the file, not in :meth:`to_json`.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The protocol's view of the record (``extra`` left out)."""
        data = JsonFields.to_json(self)
        data.pop("extra", None)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        """Parse one record's object; ``KeyError``/``TypeError``/``ValueError``
        if malformed."""
        known = {"crc", "seq", "time", "op", "version", "sha256", "peer", "ok", "result"}
        version, sha, result = data.get("version"), data.get("sha256"), data.get("result", "")
        if not all(isinstance(v, str | None) for v in (version, sha)) or not isinstance(
            result, str
        ):
            raise TypeError("version, sha256 and result must be strings")
        peer = data.get("peer") or {}
        if not isinstance(peer, dict) or not isinstance(data["op"], str):
            raise TypeError("peer must be an object and op a string")
        seq = data.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError("seq must be an integer")
        return cls(
            time=float(data["time"]),
            op=data["op"],
            version=version,
            sha256=sha,
            peer=dict(peer),
            ok=bool(data["ok"]),
            result=result,
            seq=seq,
            extra={k: v for k, v in data.items() if k not in known},
        )


def encode_record(entry: JournalEntry) -> bytes:
    """One record's line (with its checksum and newline)."""
    body = {
        "seq": entry.seq,
        "time": entry.time,
        "op": entry.op,
        "version": entry.version,
        "sha256": entry.sha256,
        "peer": entry.peer,
        "ok": entry.ok,
        "result": entry.result,
        **entry.extra,
    }
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    data = text.encode("ascii")
    crc = zlib.crc32(data)
    return _PREFIX + b"%08x" % crc + b'",' + data[1:] + b"\n"


@dataclass(frozen=True, slots=True)
class Damage:
    """Where a journal stops being trustworthy, and why."""

    #: The record that should be there (its ``seq``) and the line it is on.
    record: int
    line: int
    #: Byte offset of that line: everything before it is good.
    offset: int
    reason: str


@dataclass(slots=True)
class Scan:
    """What :func:`scan` found in a journal file."""

    entries: list[JournalEntry] = field(default_factory=list)
    #: Bytes of complete, verified records from the start of the file.
    good_size: int = 0
    #: Bytes after the last newline: a torn record (0: none).
    torn_bytes: int = 0
    damage: Damage | None = None
    #: The file is the old, unverifiable format (no ``crc``/``seq``).
    old_format: bool = False

    @property
    def empty(self) -> bool:
        """No record at all (a missing or zero-length file)."""
        return not self.entries and self.damage is None and not self.old_format


def _verify(line: bytes) -> dict[str, Any]:
    if not line.startswith(_PREFIX) or line[_BODY_AT - 2 : _BODY_AT] != b'",':
        raise ValueError("it does not start with a checksum")
    try:
        crc = int(line[len(_PREFIX) : _BODY_AT - 2], 16)
    except ValueError:
        raise ValueError("its checksum is not hexadecimal") from None
    body = b"{" + line[_BODY_AT:]
    if zlib.crc32(body) != crc:
        raise ValueError("its checksum does not match")
    try:
        data = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("it is not ASCII JSON") from None
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    return data


def _looks_old(line: bytes) -> bool:
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and "op" in data and "crc" not in data


def scan(data: bytes) -> Scan:
    """Verify a journal's bytes record by record (see the module docstring)."""
    result = Scan()
    *lines, tail = data.split(b"\n")
    offset = 0
    for number, line in enumerate(lines, start=1):
        expected = len(result.entries) + 1
        if number == 1 and _looks_old(line):
            result.old_format = True
            return result
        try:
            record = _verify(line)
            entry = JournalEntry.from_json(record)
        except (KeyError, TypeError, ValueError) as exc:
            result.damage = Damage(expected, number, offset, f"record {expected} is damaged: {exc}")
            return result
        if entry.seq != expected:
            reason = (
                f"record {expected} is missing (line {number} holds record {entry.seq})"
                if entry.seq > expected
                else f"record {entry.seq} appears again on line {number}"
            )
            result.damage = Damage(expected, number, offset, reason)
            return result
        if expected == 1 and (entry.op != "journal" or record.get("format") != FORMAT):
            result.damage = Damage(1, 1, 0, "record 1 is not a format-2 journal header")
            return result
        result.entries.append(entry)
        offset += len(line) + 1
        result.good_size = offset
    result.torn_bytes = len(tail)
    return result


def read_journal(path: Path) -> list[JournalEntry]:
    """Every verified record of a journal file, up to any damage or torn tail."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return scan(data).entries


def write_all(fd: int, data: bytes) -> None:
    """Write every byte: a short write is continued until all of it is written.

    ``os.write`` may write less than asked (a nearly full disk, a signal, a
    non-blocking descriptor); an error after a short write raises ``OSError``
    and the caller must undo the part that was written.
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def storage_error(what: str, exc: OSError, where: Path) -> StorageError:
    """A one-line :class:`StorageError`: what failed, why, and what to do."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = f"free space in {where} and retry"
    elif code == errno.EROFS:
        advice = f"{where} is on a read-only file system: make it writable and retry"
    elif code == errno.EIO:
        advice = f"the disk under {where} reported an I/O error: check it, then retry"
    elif code in (errno.EACCES, errno.EPERM):
        advice = f"check the permissions of {where}"
    else:
        advice = f"check {where} and retry"
    reason = exc.strerror or str(exc)
    return StorageError(
        f"{what}: {reason}; nothing was changed: {advice}",
        errno=errno.errorcode.get(code or 0, str(code)),
    )


class Journal:
    """The journal, in memory and optionally in a file (a write-ahead log)."""

    def __init__(
        self,
        path: Path | None = None,
        keep: int = 10_000,
        *,
        fd: int | None = None,
        found: Scan | None = None,
    ) -> None:
        """In memory without ``path``. With it, ``fd`` is the file opened for
        appending and ``found`` its :func:`scan` (a torn tail is cut off)."""
        self.path = path
        self._lock = threading.Lock()
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=keep)
        self._fd = fd
        self._seq = 0
        self._size = 0
        self._pending: list[JournalEntry] = []
        #: Called (under the journal's lock) once deferred records are written.
        self.on_deferred_written: Callable[[], None] | None = None
        self._broken: str | None = None
        if found is not None:
            self._entries.extend(found.entries)
            self._seq = found.entries[-1].seq if found.entries else 0
            self._size = found.good_size

    @property
    def file_backed(self) -> bool:
        """Whether records go to a file."""
        return self._fd is not None

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest record written (0: none)."""
        return self._seq

    @property
    def pending(self) -> bool:
        """Whether a deferred record (see :meth:`record_or_defer`) awaits writing."""
        return bool(self._pending)

    def _entry(
        self,
        op: str,
        version: str | None,
        peer: Peer | None,
        ok: bool,
        result: str,
        sha256: str | None,
        extra: dict[str, Any] | None,
    ) -> JournalEntry:
        return JournalEntry(
            time=time.time(),
            op=op,
            version=version,
            sha256=sha256,
            peer=(peer or Peer()).to_json(),
            ok=ok,
            result=result,
            extra=dict(extra or {}),
        )

    def record(
        self,
        op: str,
        version: str | None,
        *,
        peer: Peer | None = None,
        ok: bool = True,
        result: str = "",
        sha256: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JournalEntry:
        """Append a record, durably when file-backed (written whole, fsync'd).

        Raises :class:`~livepatch.errors.StorageError` if it cannot be
        written; the file is then exactly as before.
        """
        entry = self._entry(op, version, peer, ok, result, sha256, extra)
        with self._lock:
            return self._append(entry)

    def record_or_defer(
        self,
        op: str,
        version: str | None,
        *,
        peer: Peer | None = None,
        ok: bool = True,
        result: str = "",
        extra: dict[str, Any] | None = None,
    ) -> StorageError | None:
        """Like :meth:`record`, but a record that cannot be written now is
        kept and written first by the next :meth:`record` (start-up on a full
        disk). Returns the error, or ``None`` once written."""
        entry = self._entry(op, version, peer, ok, result, None, extra)
        with self._lock:
            try:
                self._append(entry)
            except StorageError as exc:
                self._pending.append(entry)
                return exc
        return None

    def _append(self, entry: JournalEntry) -> JournalEntry:
        batch = [*self._pending, entry]
        numbered = [
            JournalEntry(
                e.time, e.op, e.version, e.sha256, e.peer, e.ok, e.result, self._seq + i, e.extra
            )
            for i, e in enumerate(batch, start=1)
        ]
        if self._fd is not None:
            self._write(b"".join(encode_record(e) for e in numbered))
        if self._pending and self.on_deferred_written is not None:
            self.on_deferred_written()
        self._pending.clear()
        self._seq += len(numbered)
        self._entries.extend(numbered)
        return numbered[-1]

    def _write(self, data: bytes) -> None:
        assert self._fd is not None and self.path is not None
        where = self.path.parent
        if self._broken is not None:
            raise StorageError(self._broken)
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            # Cut off whatever part was written, so the file ends with the
            # last complete record and the next append starts clean.
            try:
                os.ftruncate(self._fd, self._size)
                os.fsync(self._fd)
            except OSError as again:
                self._broken = (
                    f"the journal in {where} could not be cut back after a failed write "
                    f"({again.strerror}): no change can be recorded; fix the disk and "
                    "restart the engine"
                )
            raise storage_error(f"cannot write the journal in {where}", exc, where) from None
        self._size += len(data)

    def entries(self, limit: int | None = None) -> list[JournalEntry]:
        """The newest ``limit`` entries (all when ``None``), oldest first."""
        with self._lock:
            items = list(self._entries)
        return items[-limit:] if limit else items

    def close(self) -> None:
        """Close the file, if any."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
