"""The audit journal: who did what to which version, and how it went.

Every lifecycle operation that reaches the engine through the control
protocol is recorded with its time, the peer (uid, pid, client name), the
version and the sha256 of its source, and the result. Without a file the
journal lives in memory (the last ``keep`` entries); with one, each entry is
also appended as one JSON line and fsync'd before the reply goes out, and a
torn last line (a crash mid-write) is ignored on reading.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonable import JsonFields

__all__ = ["Journal", "JournalEntry", "Peer", "read_journal"]


@dataclass(frozen=True, slots=True)
class Peer(JsonFields):
    """Who sent a request: the kernel-checked uid/pid and the client's name."""

    uid: int | None = None
    pid: int | None = None
    client: str = ""
    transport: str = "local"


@dataclass(frozen=True, slots=True)
class JournalEntry(JsonFields):
    """One line of the journal."""

    time: float
    op: str
    version: str | None
    sha256: str | None
    peer: dict[str, Any]
    ok: bool
    result: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        """Parse one line's object; ``KeyError``/``TypeError`` if malformed."""
        return cls(
            time=float(data["time"]),
            op=str(data["op"]),
            version=data.get("version"),
            sha256=data.get("sha256"),
            peer=dict(data.get("peer") or {}),
            ok=bool(data["ok"]),
            result=str(data.get("result", "")),
        )


def read_journal(path: Path) -> list[JournalEntry]:
    """Every complete entry of a journal file; a torn or garbled line is skipped."""
    entries = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            entries.append(JournalEntry.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a crash, or garbage: never fatal
    return entries


class Journal:
    """An append-only audit log, in memory and optionally in a file."""

    def __init__(
        self,
        path: Path | None = None,
        keep: int = 10_000,
        history: list[JournalEntry] | None = None,
    ) -> None:
        """``history``: the file's entries when the caller has read them already."""
        self.path = path
        self._lock = threading.Lock()
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=keep)
        self._fd: int | None = None
        if path is not None:
            self._entries.extend(read_journal(path) if history is None else history)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._terminate_torn_line(path)

    def _terminate_torn_line(self, path: Path) -> None:
        # If the last write was torn, start the next entry on a fresh line so
        # the torn bytes stay one unreadable line instead of spoiling ours.
        assert self._fd is not None
        size = path.stat().st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def record(
        self,
        op: str,
        version: str | None,
        *,
        peer: Peer | None = None,
        ok: bool = True,
        result: str = "",
        sha256: str | None = None,
    ) -> JournalEntry:
        """Append an entry (and fsync it when file-backed)."""
        entry = JournalEntry(
            time=time.time(),
            op=op,
            version=version,
            sha256=sha256,
            peer=(peer or Peer()).to_json(),
            ok=ok,
            result=result,
        )
        line = json.dumps(entry.to_json(), separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            self._entries.append(entry)
            if self._fd is not None:
                os.write(self._fd, line.encode("utf-8"))
                os.fsync(self._fd)
        return entry

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
