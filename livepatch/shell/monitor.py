"""Live engine state for the toolbar, the completer and ``watch``.

The prompt must never wait on the socket, so nothing on the UI thread asks
the engine anything: a background thread samples ``status`` every interval,
and readers take the latest :class:`Snapshot`. Calls per second come from the
difference between two samples (the engine only counts calls), measured over
a short window so one slow sample does not make the figure jump.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..client import ConnectionLost
from ..errors import LivepatchError
from .link import EngineLink

__all__ = ["EngineMonitor", "Snapshot", "call_counts", "rates_between"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the shell last knew about the engine.

    ``status`` is the last good ``status`` result (kept while disconnected,
    so completion still offers the names it knew); ``rates`` maps version ids
    to calls per second; ``error`` says why the last sample failed.
    """

    time: float
    status: Mapping[str, Any] | None
    connected: bool
    rates: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def slots(self) -> list[Mapping[str, Any]]:
        """The slots of the last status (empty before the first sample)."""
        return list(self.status["slots"]) if self.status else []

    def slot_names(self) -> list[str]:
        """Every slot's name."""
        return [s["name"] for s in self.slots]

    def versions(self, *, include_unloaded: bool = False) -> list[Mapping[str, Any]]:
        """Every version of every slot (unloaded ones only when asked)."""
        return [
            v
            for s in self.slots
            for v in s["versions"]
            if include_unloaded or v["state"] != "unloaded"
        ]

    def slot_rate(self, slot: str) -> float:
        """Calls per second through ``slot``, all versions together."""
        return sum(rate for vid, rate in self.rates.items() if vid.partition("@")[0] == slot)


def call_counts(status: Mapping[str, Any]) -> dict[str, int]:
    """Version id -> calls so far, from a ``status`` result."""
    return {v["id"]: int(v["calls"]) for s in status["slots"] for v in s["versions"]}


def rates_between(
    before: Mapping[str, int], after: Mapping[str, int], seconds: float
) -> dict[str, float]:
    """Calls per second of each version between two :func:`call_counts`."""
    if seconds <= 0:
        return dict.fromkeys(after, 0.0)
    # A version new since ``before`` started from zero calls.
    return {vid: max(0, n - before.get(vid, 0)) / seconds for vid, n in after.items()}


class EngineMonitor:
    """Samples the engine's status in the background; readers never block."""

    def __init__(
        self,
        link: EngineLink,
        *,
        interval: float = 1.0,
        window: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.interval = interval
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        self._latest = Snapshot(time=-1.0, status=None, connected=not link.lost)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: Called (from the sampling thread) after each new snapshot.
        self.on_change: Callable[[Snapshot], None] | None = None

    def latest(self) -> Snapshot:
        """The most recent snapshot; never touches the socket."""
        return self._latest

    def fresh(self, max_age: float) -> Snapshot:
        """The latest snapshot if younger than ``max_age`` seconds, else a new
        one. Blocks on the socket: call it from worker threads only."""
        latest = self._latest
        if latest.status is not None and self.clock() - latest.time <= max_age:
            return latest
        return self.refresh()

    def refresh(self) -> Snapshot:
        """Ask the engine for its status now (blocks; not on the UI thread)."""
        if self.link.lost and not self.link.try_reconnect():
            return self._set(connected=False, error=f"engine {self.link.name!r} is gone")
        try:
            status = self.link.client.status()
        except ConnectionLost as exc:
            self.link.mark_lost()
            return self._set(connected=False, error=exc.message)
        except LivepatchError as exc:
            return self._set(connected=True, error=exc.message)
        now = self.clock()
        counts = call_counts(status)
        with self._lock:
            self._samples.append((now, counts))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
                self._samples.popleft()
            then, before = self._samples[0]
            rates = rates_between(before, counts, now - then) if now > then else {}
            snapshot = Snapshot(time=now, status=status, connected=True, rates=rates)
            self._latest = snapshot
        self._changed(snapshot)
        return snapshot

    def request_refresh(self) -> None:
        """Ask the background thread for a sample now (returns at once)."""
        self._wake.set()

    def _set(self, *, connected: bool, error: str) -> Snapshot:
        with self._lock:
            if not connected:
                # Counts restart with a new engine: old samples would give
                # nonsense rates across the gap.
                self._samples.clear()
            previous = self._latest
            snapshot = Snapshot(
                time=self.clock(),
                status=previous.status,
                connected=connected,
                rates={} if not connected else previous.rates,
                error=error,
            )
            self._latest = snapshot
        self._changed(snapshot)
        return snapshot

    def _changed(self, snapshot: Snapshot) -> None:
        if self.on_change is not None:
            self.on_change(snapshot)

    # -- background sampling ----------------------------------------------------

    def start(self) -> None:
        """Start sampling every ``interval`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="livepatch-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            # A bug while sampling must not kill the shell; the toolbar just
            # stops moving.
            with contextlib.suppress(Exception):
                self.refresh()
            self._wake.wait(self.interval)
            self._wake.clear()
