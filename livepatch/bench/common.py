"""What every section shares: settings, statistics, the machine, progress, callers."""

from __future__ import annotations

import array
import contextlib
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .. import __version__
from ..engine import Engine

#: Version of the JSON shape; bumped only when a key changes meaning or goes away.
SCHEMA = 1

#: The sections, in the order they run (the peers last: they import IPython and jurigged).
SECTIONS = (
    "hot_path",
    "callgrind",
    "shadow",
    "swap_under_load",
    "control_plane",
    "load_check",
    "memory",
    "fleet",
    "peers",
    "savelive",
)

#: Helpers between ``first`` and ``second`` in the module the peers reload.
PEER_HELPERS = 60

#: A progress callback: the fraction (0..1) of the current section done.
ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class Settings:
    """The counts of one run (``QUICK`` for CI, ``FULL`` for the README)."""

    #: Calls per timing of the trivial rule (``classify`` gets a 20th).
    hot_number: int
    #: Timings per hot-path figure; the best one is kept.
    hot_repeat: int
    #: Caller threads in ``swap_under_load`` and ``peers``.
    callers: int
    #: In-process swaps back and forth under load.
    swaps: int
    #: Pause between two in-process swaps, so callers run in between.
    pause_s: float
    #: Swaps over the control socket, and ``call`` round trips after them.
    socket_swaps: int
    socket_calls: int
    #: The engine process's own synthetic calls per second meanwhile.
    socket_traffic: float
    #: Calls per callgrind run of the trivial rule (0: the section is skipped).
    callgrind_calls: int
    #: Control plane under load: callers, their duration, swaps meanwhile.
    control_clients: int
    control_duration_s: float
    control_swaps: int
    #: Function counts of the generated modules, and timings per size.
    load_sizes: tuple[int, ...]
    load_repeat: int
    #: load/check/swap/purge/unload cycles measured (after a warm-up).
    memory_cycles: int
    memory_warmup: int
    #: New versions of the peer module per tool: first ``peer_idle`` without
    #: callers (the idle reload time), then ``peer_reloads`` under the callers,
    #: one every ``peer_interval_s`` (or back to back when a reload takes
    #: longer), stopping early once ``peer_budget_s`` seconds have passed.
    peer_idle: int
    peer_reloads: int
    peer_interval_s: float
    peer_budget_s: float
    #: Fleet: local engines with traffic, pushes to them, the quiet window
    #: before (the calls' baseline); ZooKeeper fleet sizes, pushes per size.
    fleet_engines: int
    fleet_pushes: int
    fleet_quiet_s: float
    fleet_zk_sizes: tuple[int, ...]
    fleet_zk_pushes: int
    #: Good saves timed per tool in ``savelive`` (then two broken ones).
    savelive_saves: int
    #: Shadow section: timed calls per block (each way) and rounds of blocks.
    shadow_calls: int = 20_000
    shadow_rounds: int = 5
    #: Control plane: rounds in which the engine and the reference take turns.
    control_rounds: int = 3


QUICK = Settings(
    hot_number=20_000,
    hot_repeat=5,
    callers=8,
    swaps=100,
    pause_s=0.0005,
    socket_swaps=100,
    socket_calls=200,
    socket_traffic=200.0,
    callgrind_calls=0,
    control_clients=8,
    control_duration_s=1.5,
    control_swaps=50,
    load_sizes=(100, 1_000, 10_000),
    load_repeat=1,
    memory_cycles=100,
    memory_warmup=10,
    peer_idle=3,
    peer_reloads=20,
    peer_interval_s=0.05,
    peer_budget_s=2.0,
    fleet_engines=3,
    fleet_pushes=6,
    fleet_quiet_s=1.0,
    fleet_zk_sizes=(10, 100),
    fleet_zk_pushes=2,
    savelive_saves=6,
)

FULL = Settings(
    hot_number=200_000,
    hot_repeat=15,
    callers=8,
    swaps=1_000,
    pause_s=0.0005,
    socket_swaps=1_000,
    socket_calls=2_000,
    socket_traffic=200.0,
    callgrind_calls=20_000,
    control_clients=8,
    control_duration_s=6.0,
    control_swaps=500,
    load_sizes=(100, 1_000, 10_000),
    load_repeat=5,
    memory_cycles=1_000,
    memory_warmup=20,
    peer_idle=10,
    peer_reloads=200,
    peer_interval_s=0.05,
    peer_budget_s=20.0,
    fleet_engines=8,
    fleet_pushes=40,
    fleet_quiet_s=5.0,
    fleet_zk_sizes=(10, 100, 1_000),
    fleet_zk_pushes=5,
    shadow_calls=50_000,
    shadow_rounds=10,
    savelive_saves=40,
)


# ---------------------------------------------------------------------------
# Small helpers


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by nearest rank (0.0 if empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[index])


def _distribution(values: Sequence[float], scale: float, digits: int = 3) -> dict[str, Any]:
    """p50/p99/max/mean of ``values`` multiplied by ``scale``, and their count."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50) * scale, digits),
        "p99": round(percentile(ordered, 99) * scale, digits),
        "max": round(ordered[-1] * scale, digits),
        "mean": round(statistics.fmean(ordered) * scale, digits),
    }


def _rss_bytes() -> int:
    """Resident memory of this process now (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # Unix only, and only needed without /proc

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (the JSON's ``machine`` block)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average": _load_average(),
        "switch_interval_s": sys.getswitchinterval(),
        "livepatch": __version__,
        "accelerated": Engine("bench-probe").accelerated,
    }


class Progress:
    """A one-line progress bar on a stream (stderr), redrawn at most 10 times a second.

    Disabled (a no-op) unless ``enabled`` is true, which by default means the
    stream is a terminal.
    """

    WIDTH = 30

    def __init__(
        self, sections: Sequence[str], stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self._stream, "isatty", lambda: False)())
        self.enabled = enabled
        self._sections = list(sections)
        self._index = 0
        self._fraction = 0.0
        self._last = 0.0
        self._started = time.monotonic()

    def section(self, name: str) -> ProgressFn:
        """Start section ``name``; returns the callback that reports its fraction done."""
        self._index = self._sections.index(name) if name in self._sections else self._index
        self._fraction = 0.0
        self._draw(force=True)

        def update(fraction: float) -> None:
            self._fraction = min(1.0, max(0.0, fraction))
            self._draw()

        return update

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        total = len(self._sections) or 1
        done = (self._index + self._fraction) / total
        filled = int(done * self.WIDTH)
        name = self._sections[self._index] if self._sections else ""
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {done * 100:3.0f}% {now - self._started:5.1f}s  {name:<16}")
        self._stream.flush()

    def close(self) -> None:
        """Erase the bar."""
        if self.enabled:
            self._stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self._stream.flush()


def _no_progress(fraction: float) -> None:
    """The progress callback that reports nothing."""


def callgrind_instructions(valgrind: str, code: str, args: Sequence[str], timeout: float) -> int:
    """Instructions that ``python -c code args...`` executes under callgrind
    (``PYTHONHASHSEED=0``, so that runs of the same inputs count the same)."""
    with tempfile.TemporaryDirectory(prefix="lpbench-cg-") as tmp:
        proc = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                "-c",
                code,
                *args,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            timeout=timeout,
        )
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return int(found.group(1).replace(",", ""))


# ---------------------------------------------------------------------------
# The module that callers hammer while it is swapped or reloaded


def peer_module(marker: int, helpers: int = PEER_HELPERS) -> str:
    """Source of the rules module that the swap and peer sections switch between.

    ``first()`` sits at the top and ``second()`` at the bottom; both return
    ``marker`` (the version) as the first item of a tuple, so a request that
    calls both can tell whether it ran on one version. Between them are
    ``helpers`` helpers of the kinds a real rules module has (plain and
    cached functions, a compiled pattern, a small class), which ``first``
    and ``second`` use. Only the markers change between versions.
    """
    lines = [
        f'"""Benchmark rules, version {marker}: first() and second() return the marker."""',
        "",
        "import functools",
        "import re",
        "",
        f"MARKER = {marker}",
        "",
        "",
        "def first(x: int) -> tuple[int, int]:",
        f"    return {marker}, helper_0(x) + 1",
        "",
    ]
    for i in range(helpers):
        kind = i % 4
        lines.append("")
        if kind == 0:
            lines += [f"def helper_{i}(x: int) -> int:", f"    return x * {i % 7 + 1} + {i}"]
        elif kind == 1:
            lines += [
                "@functools.lru_cache(maxsize=256)",
                f"def helper_{i}(x: int) -> int:",
                f"    return helper_{i - 1}(x) % {i + 3}",
            ]
        elif kind == 2:
            lines += [
                f"PATTERN_{i} = re.compile(r'^item-{i}-(\\d+)$')",
                "",
                "",
                f"def helper_{i}(x: int) -> int:",
                f"    match = PATTERN_{i}.match(f'item-{i}-{{x}}')",
                "    return int(match.group(1)) if match else 0",
            ]
        else:
            lines += [
                f"class Rule{i}:",
                f"    weight = {i}",
                "",
                "    def score(self, x: int) -> int:",
                "        return x + self.weight",
                "",
                "",
                f"def helper_{i}(x: int) -> int:",
                f"    return Rule{i}().score(x)",
            ]
        lines.append("")
    last = max(0, helpers - 1)
    lines += [
        "",
        "def second(x: int) -> tuple[int, int]:",
        f"    return {marker}, helper_{last}(x) * 2",
        "",
    ]
    return "\n".join(lines)


#: Latencies kept per caller thread; past it every other one is dropped
#: and only every 2nd, 4th, ... request is recorded from then on.
LATENCY_SAMPLES = 50_000


@dataclass
class _CallerStats:
    """What one caller thread saw."""

    requests: int = 0
    failed: int = 0
    mixed: int = 0
    latencies_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    seen: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class _Callers:
    """``threads`` threads each running ``request(i)`` back to back until stopped.

    A request returns the markers of the two functions it called: a request
    whose markers differ saw a mix of two versions; one that raised failed.
    Every request is timed; a uniform sample of at most
    :data:`LATENCY_SAMPLES` latencies per thread is kept.
    """

    def __init__(self, request: Callable[[int], tuple[int, int]], threads: int) -> None:
        self._request = request
        self._stop = threading.Event()
        self._stats = [_CallerStats() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._loop, args=(s,), name=f"bench-caller-{k}", daemon=True)
            for k, s in enumerate(self._stats)
        ]
        self._started = 0.0
        self.duration_s = 0.0

    def __enter__(self) -> _Callers:
        self._started = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.duration_s = time.perf_counter() - self._started

    def _loop(self, stats: _CallerStats) -> None:
        request = self._request
        stopped = self._stop.is_set
        now = time.perf_counter_ns
        latencies = stats.latencies_ns
        seen = stats.seen
        errors = stats.errors
        stride = 1
        i = 0
        while not stopped():
            i += 1
            start = now()
            try:
                a, b = request(i)
            except Exception as exc:  # noqa: BLE001 - any failure is what is counted
                stats.failed += 1
                kind = type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                continue
            elapsed = now() - start
            stats.requests += 1
            if a != b:
                stats.mixed += 1
            seen[a] = seen.get(a, 0) + 1
            if i % stride == 0:
                latencies.append(elapsed)
                if len(latencies) >= LATENCY_SAMPLES:
                    del latencies[1::2]
                    stride *= 2

    def latencies_ns(self) -> list[int]:
        """Every thread's kept latency samples, in nanoseconds (after the run)."""
        return [n for s in self._stats for n in s.latencies_ns]

    def counts(self) -> tuple[int, int]:
        """Mixed and failed requests so far (read while the callers run)."""
        return sum(s.mixed for s in self._stats), sum(s.failed for s in self._stats)

    def result(self) -> dict[str, Any]:
        """The threads' counts merged, and the request latency distribution in µs."""
        latencies: list[int] = []
        seen: dict[int, int] = {}
        errors: dict[str, int] = {}
        for s in self._stats:
            latencies.extend(s.latencies_ns)
            for key, count in s.seen.items():
                seen[key] = seen.get(key, 0) + count
            for kind, count in s.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        requests = sum(s.requests for s in self._stats)
        return {
            "requests": requests,
            "requests_per_s": round(requests / self.duration_s) if self.duration_s else None,
            "failed": sum(s.failed for s in self._stats),
            "mixed": sum(s.mixed for s in self._stats),
            "errors": errors,
            "seen": seen,
            "latency_us": _distribution(latencies, 1e-3),
        }


def _request_through_pin(engine: Engine, slot: str) -> Callable[[int], tuple[int, int]]:
    """A request that calls ``first`` and ``second`` of one pinned version."""

    def request(i: int) -> tuple[int, int]:
        with engine.pin(slot) as rules:
            a = rules.first(i)[0]
            b = rules.second(i)[0]
        return a, b

    return request


@contextlib.contextmanager
def _private_runtime_dir() -> Iterator[str]:
    """A throwaway ``LIVEPATCH_RUNTIME_DIR`` (short: Unix socket paths are limited)."""
    previous = os.environ.get("LIVEPATCH_RUNTIME_DIR")
    with tempfile.TemporaryDirectory(prefix="lpbench-", dir="/tmp") as tmp:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = os.path.join(tmp, "run")
        try:
            yield tmp
        finally:
            if previous is None:
                os.environ.pop("LIVEPATCH_RUNTIME_DIR", None)
            else:
                os.environ["LIVEPATCH_RUNTIME_DIR"] = previous
