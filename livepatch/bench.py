"""``livepatch bench``: the performance claims of DESIGN.md, measured in one run.

Every figure is measured side by side on the same machine in the same run,
as a ratio or a distribution (never a timed test):

``hot_path``
    ``engine.call``, a call inside an open ``pin`` block and a whole ``pin``
    block against calling the function directly, on a trivial rule and on the
    bundled spam ``classify``.
``swap_under_load``
    Caller threads run requests through ``pin`` (each request calls two
    functions and records the version marker each returned) while the main
    thread swaps back and forth between two versions: failed and
    mixed-version requests, request latency with and without swaps, swap
    latency in-process; then swaps over the control socket of a real engine
    process, request to reply.
``load_check``
    ``load`` + ``check`` of generated modules of 100, 1,000 and 10,000
    functions, next to CPython's own ``compile`` + ``exec`` of the same source.
``memory``
    load/check/swap/purge/unload cycles: how many unloaded versions were
    freed, and the growth of resident memory.
``peers``
    ``importlib.reload``, IPython's ``%autoreload 2`` and jurigged on the
    same module under the same caller threads, next to livepatch: reload
    time, and how many requests saw a mix of old and new code.

The results print as a table and, with ``--json FILE``, are written as JSON
of a stable shape (``schema`` 1): ``machine``, ``settings``, ``goals`` (each
with its limit, measured value and ``met``), and one block per section.

IPython and jurigged are imported only inside the peer measurement.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .engine import Engine
from .examples.spam import Message, SpamRules, rule_source, sample_messages

__all__ = [
    "FULL",
    "QUICK",
    "SCHEMA",
    "SECTIONS",
    "Progress",
    "Settings",
    "evaluate_goals",
    "generated_module",
    "machine_info",
    "measure_hot_path",
    "measure_load_check",
    "measure_memory",
    "measure_peers",
    "measure_socket_swap",
    "measure_swap_under_load",
    "peer_module",
    "percentile",
    "render_table",
    "run",
    "run_bench",
]

#: Version of the JSON shape; bumped only when a key changes meaning or goes away.
SCHEMA = 1

#: The sections, in the order they run (the peers last: they import IPython).
SECTIONS = ("hot_path", "swap_under_load", "load_check", "memory", "peers")

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


QUICK = Settings(
    hot_number=20_000,
    hot_repeat=5,
    callers=8,
    swaps=100,
    pause_s=0.0005,
    socket_swaps=100,
    socket_calls=200,
    socket_traffic=200.0,
    load_sizes=(100, 1_000, 10_000),
    load_repeat=1,
    memory_cycles=100,
    memory_warmup=10,
    peer_idle=3,
    peer_reloads=20,
    peer_interval_s=0.05,
    peer_budget_s=2.0,
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
    load_sizes=(100, 1_000, 10_000),
    load_repeat=5,
    memory_cycles=1_000,
    memory_warmup=20,
    peer_idle=10,
    peer_reloads=200,
    peer_interval_s=0.05,
    peer_budget_s=20.0,
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


# ---------------------------------------------------------------------------
# Hot path

TRIVIAL = "def trivial(x):\n    return x\n"


def _best_ns(stmt: str, namespace: dict[str, Any], number: int) -> float:
    """Time of one run of ``stmt`` in nanoseconds, from one timing of ``number`` runs."""
    timer = timeit.Timer(stmt, globals=namespace)
    return timer.timeit(number=number) / number * 1e9


def measure_hot_path(
    number: int, repeat: int, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """``engine.call`` and ``pin`` against a direct call, ns per call.

    Four statements per rule, interleaved in every repeat so that drift in
    the machine's speed hits them alike; each figure is the best of
    ``repeat`` timings (the least disturbed by the rest of the machine):
    the direct call, ``engine.call``, a call on the rules of an open ``pin``
    block, and a whole ``with engine.pin(...)`` block around one call.
    """
    engine = Engine("bench-hot")
    engine.add_slot("trivial", None)
    engine.add_slot("spam", SpamRules)
    functions = {}
    for slot, name, source in (
        ("trivial", "trivial", TRIVIAL),
        ("spam", "classify", rule_source("spam_v2.py")),
    ):
        version = engine.load(slot, source, f"{slot}.py")
        if not engine.check(version).ok:  # pragma: no cover - bundled rules pass
            raise RuntimeError(f"{version} failed its check")
        engine.swap(version)
        functions[name] = engine.function(version, name)
    msg = Message("promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/win",))
    ns: dict[str, Any] = {"engine": engine, "msg": msg, **functions}
    rows: dict[str, Any] = {}
    plan = (("trivial", "trivial", number), ("classify", "spam", max(1, number // 20)))
    steps = len(plan) * repeat
    step = 0
    try:
        for name, slot, n in plan:
            statements = {
                "direct": f"{name}(msg)",
                "call": f"engine.call({slot!r}, {name!r}, msg)",
                "pin_call": f"rules.{name}(msg)",
                "pin_block": f"with engine.pin({slot!r}) as r:\n    r.{name}(msg)",
            }
            timings: dict[str, list[float]] = {key: [] for key in statements}
            for _ in range(repeat):
                for key, stmt in statements.items():
                    if key == "pin_call":
                        # Only this statement runs inside an open pin: while
                        # any pin is open, engine.call takes its pinned path.
                        with engine.pin(slot) as rules:
                            ns["rules"] = rules
                            timings[key].append(_best_ns(stmt, ns, n))
                        del ns["rules"]
                    else:
                        timings[key].append(_best_ns(stmt, ns, n))
                step += 1
                progress(step / steps)
            best = {key: min(values) for key, values in timings.items()}
            direct = best["direct"]
            rows[name] = {
                "calls_per_timing": n,
                "direct_ns": round(direct, 1),
                "call_ns": round(best["call"], 1),
                "pin_call_ns": round(best["pin_call"], 1),
                "pin_block_ns": round(best["pin_block"], 1),
                "call_extra_ns": round(best["call"] - direct, 1),
                "call_ratio": round(best["call"] / direct, 3),
                "call_overhead_pct": round((best["call"] / direct - 1) * 100, 2),
                "pin_call_extra_ns": round(best["pin_call"] - direct, 1),
                "pin_block_extra_ns": round(best["pin_block"] - direct, 1),
            }
    finally:
        engine.close()
    return {
        "accelerated": engine.accelerated,
        "number": number,
        "repeat": repeat,
        "rules": rows,
    }


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


# ---------------------------------------------------------------------------
# Swap under load


def measure_swap_under_load(
    settings: Settings, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """Callers through ``pin`` while the main thread swaps back and forth.

    The swap phase runs first; then the same callers run for as long again
    without swaps, which is the baseline of the latency ratio. Then the
    swaps over the control socket (:func:`measure_socket_swap`).
    """
    engine = Engine("bench-swap")
    engine.add_slot("rules", None)
    versions: list[str] = []
    for marker in (1, 2):
        version = engine.load("rules", peer_module(marker), f"rules_v{marker}.py")
        if not engine.check(version).ok:  # pragma: no cover - generated rules pass
            raise RuntimeError(f"{version} failed its check")
        versions.append(version)
    engine.swap(versions[0])
    request = _request_through_pin(engine, "rules")
    swap_s: list[float] = []
    try:
        with _Callers(request, settings.callers) as callers:
            time.sleep(0.005)  # let the callers get going
            started = time.perf_counter()
            for i in range(settings.swaps):
                target = versions[(i + 1) % 2]
                t0 = time.perf_counter()
                engine.swap(target)
                swap_s.append(time.perf_counter() - t0)
                if i % 10 == 0:
                    progress(0.6 * i / settings.swaps)
                time.sleep(settings.pause_s)
            duration = time.perf_counter() - started
        during = callers.result()
        progress(0.6)
        with _Callers(request, settings.callers) as callers:
            time.sleep(0.02 + duration)
        baseline = callers.result()
        progress(0.7)
    finally:
        engine.close()
    socket = measure_socket_swap(
        settings.socket_swaps,
        settings.socket_calls,
        settings.socket_traffic,
        lambda f: progress(0.7 + 0.3 * f),
    )
    p99_with = during["latency_us"]["p99"] or 0.0
    p99_without = baseline["latency_us"]["p99"] or 0.0
    return {
        "callers": settings.callers,
        "swaps": settings.swaps,
        "duration_s": round(duration, 3),
        "requests": during["requests"],
        "failed": during["failed"] + baseline["failed"],
        "mixed": during["mixed"] + baseline["mixed"],
        "errors": {
            kind: during["errors"].get(kind, 0) + baseline["errors"].get(kind, 0)
            for kind in during["errors"].keys() | baseline["errors"].keys()
        },
        "seen": {f"rules@{k}": n for k, n in sorted(during["seen"].items())},
        "latency_us": {"without_swaps": baseline["latency_us"], "with_swaps": during["latency_us"]},
        "p99_ratio": round(p99_with / p99_without, 3) if p99_without else None,
        "swap_ms": _distribution(swap_s, 1e3, 4),
        "socket": socket,
    }


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


def measure_socket_swap(
    swaps: int, calls: int, traffic: float, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """Swaps over the control socket of a real ``livepatch engine`` process.

    The engine serves the bundled demo with ``traffic`` synthetic calls per
    second; one client loads two versions, then swaps back and forth
    ``swaps`` times timing each request to its reply, then makes ``calls``
    ``call`` round trips on ``classify``.
    """
    from .client import Client  # the engine-only sections need no socket code
    from .demo import start_engine

    name = f"bench-{os.getpid()}"
    with (
        _private_runtime_dir(),
        start_engine(name, traffic) as ready,
        Client.connect(name, client_name="livepatch-bench") as client,
    ):
        versions = []
        for filename in ("spam_v1.py", "spam_v2.py"):
            version = client.load("spam", rule_source(filename) + "\n# bench\n", filename)
            if not client.check(version).ok:  # pragma: no cover - bundled rules pass
                raise RuntimeError(f"{version} failed its check")
            versions.append(version)
        client.swap(versions[0])
        latencies = []
        for i in range(swaps):
            target = versions[(i + 1) % 2]
            start = time.perf_counter()
            client.swap(target)
            latencies.append(time.perf_counter() - start)
            if i % 10 == 0:
                progress(0.8 * i / max(1, swaps))
        msg = {"sender": "a@b.c", "text": "WIN a FREE cruise!!!", "links": []}
        start = time.perf_counter()
        for _ in range(calls):
            client.call("spam", "classify", [msg])
        elapsed = time.perf_counter() - start
        progress(1.0)
    return {
        "engine_pid": ready.get("pid"),
        "transport": ready.get("transport"),
        "swaps": swaps,
        "traffic_per_s": traffic,
        "swap_ms": _distribution(latencies, 1e3, 4),
        "calls": calls,
        "call_round_trips_per_s": round(calls / elapsed) if elapsed > 0 else None,
    }


# ---------------------------------------------------------------------------
# Load + check


def generated_module(functions: int, tag: str = "") -> str:
    """A module of ``functions`` small functions that call one another.

    Every function reads a module constant and a function of ``math``, and
    nine in ten call the one before, so the check has names to resolve.
    ``tag`` goes in the docstring to make two sources of one size differ.
    """
    lines = [
        f'"""Generated benchmark module: {functions} functions{f" ({tag})" if tag else ""}."""',
        "",
        "import math",
        "",
        "SCALE = 3",
        "",
    ]
    for i in range(functions):
        call = f"f{i - 1}(x) + " if i % 10 else ""
        lines += [
            "",
            f"def f{i}(x: int) -> int:",
            f"    return {call}math.floor(x * SCALE) + {i}",
            "",
        ]
    return "\n".join(lines)


def measure_load_check(
    sizes: Sequence[int], repeat: int, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """``load`` and ``check`` time of generated modules, median of ``repeat``.

    Next to them, ``python_compile_exec_ms``: CPython's own ``compile`` and
    ``exec`` of the same source into a plain dict, the floor any loader pays.
    """
    rows = []
    steps = len(sizes) * repeat
    step = 0
    for n in sizes:
        load_ms: list[float] = []
        check_ms: list[float] = []
        total_ms: list[float] = []
        floor_ms: list[float] = []
        for r in range(repeat):
            source = generated_module(n, f"run {r}")
            engine = Engine("bench-load")
            engine.add_slot("gen", None)
            try:
                gc.collect()
                t0 = time.perf_counter()
                version = engine.load("gen", source, f"gen_{n}.py")
                t1 = time.perf_counter()
                report = engine.check(version)
                t2 = time.perf_counter()
                if not report.ok:  # pragma: no cover - generated modules pass
                    raise RuntimeError(f"the generated module of {n} functions failed its check")
            finally:
                engine.close()
            gc.collect()
            t3 = time.perf_counter()
            namespace: dict[str, Any] = {"__name__": "livepatch_bench_floor"}
            exec(compile(source, f"gen_{n}.py", "exec"), namespace)
            t4 = time.perf_counter()
            namespace.clear()
            load_ms.append((t1 - t0) * 1e3)
            check_ms.append((t2 - t1) * 1e3)
            total_ms.append((t2 - t0) * 1e3)
            floor_ms.append((t4 - t3) * 1e3)
            step += 1
            progress(step / steps)
        rows.append(
            {
                "functions": n,
                "load_ms": round(statistics.median(load_ms), 2),
                "check_ms": round(statistics.median(check_ms), 2),
                "total_ms": round(statistics.median(total_ms), 2),
                "best_total_ms": round(min(total_ms), 2),
                "python_compile_exec_ms": round(statistics.median(floor_ms), 2),
            }
        )
    by_size = {row["functions"]: row["total_ms"] for row in rows}
    growth = None
    if 1_000 in by_size and 10_000 in by_size and by_size[1_000]:
        growth = round(by_size[10_000] / by_size[1_000], 2)
    return {"repeat": repeat, "sizes": rows, "growth_10000_vs_1000": growth}


# ---------------------------------------------------------------------------
# Memory


def measure_memory(cycles: int, warmup: int, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Resident memory over load/check/swap/purge/unload cycles of the spam rules.

    Each cycle loads a new version (the bundled ``spam_v2`` with a unique
    comment), checks it, swaps it in, calls it once, then purges and unloads
    the version it replaced and counts whether it was freed. RSS is read
    after ``warmup`` cycles (caches filled) and after the last one.
    """
    engine = Engine("bench-memory")
    engine.add_slot("spam", SpamRules)
    base = rule_source("spam_v2.py")
    msg = sample_messages()[1]
    freed = 0
    unloaded = 0
    previous: str | None = None

    def cycle(i: int) -> bool | None:
        nonlocal previous
        version = engine.load("spam", f"{base}\n# cycle {i}\n", f"spam_cycle_{i}.py")
        if not engine.check(version).ok:  # pragma: no cover - bundled rules pass
            raise RuntimeError(f"{version} failed its check")
        engine.swap(version)
        engine.call("spam", "classify", msg)
        result = None
        if previous is not None:
            engine.purge(previous)
            result = engine.unload(previous).freed
        previous = version
        return result

    try:
        for i in range(warmup):
            cycle(-1 - i)
        gc.collect()
        rss_start = _rss_bytes()
        started = time.perf_counter()
        for i in range(cycles):
            result = cycle(i)
            if result is not None:
                unloaded += 1
                freed += result
            if i % 10 == 0:
                progress(i / max(1, cycles))
        elapsed = time.perf_counter() - started
        gc.collect()
        rss_end = _rss_bytes()
    finally:
        engine.close()
    mb = 1024 * 1024
    return {
        "cycles": cycles,
        "warmup_cycles": warmup,
        "unloaded": unloaded,
        "freed": freed,
        "not_freed": unloaded - freed,
        "rss_start_mb": round(rss_start / mb, 2),
        "rss_end_mb": round(rss_end / mb, 2),
        "rss_growth_mb": round((rss_end - rss_start) / mb, 2),
        "ms_per_cycle": round(elapsed / max(1, cycles) * 1e3, 3),
    }


# ---------------------------------------------------------------------------
# Peers


class _ModuleFile:
    """The peer module as a file in a directory on ``sys.path``, rewritten per version.

    Each write moves the file's mtime one second further (starting well in
    the past), so mtime-based staleness checks (``.pyc`` validation,
    autoreload's) always see a new version, however fast the writes come.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.path = directory / f"{name}.py"
        self._mtime_ns = (int(time.time()) - 100_000) * 1_000_000_000

    def write(self, marker: int) -> None:
        self.path.write_text(peer_module(marker), encoding="utf-8")
        self._mtime_ns += 1_000_000_000
        os.utime(self.path, ns=(self._mtime_ns, self._mtime_ns))


@contextlib.contextmanager
def _module_on_path(tool: str) -> Iterator[_ModuleFile]:
    """A fresh module file in a temporary directory on ``sys.path``."""
    name = f"livepatch_bench_{tool}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="lpbench-peer-") as tmp:
        module_file = _ModuleFile(Path(tmp), name)
        module_file.write(1)
        sys.path.insert(0, tmp)
        importlib.invalidate_caches()
        try:
            yield module_file
        finally:
            sys.modules.pop(name, None)
            with contextlib.suppress(ValueError):
                sys.path.remove(tmp)


def _module_request(module: Any) -> Callable[[int], tuple[int, int]]:
    """A request that calls ``first`` and ``second`` through the module object."""

    def request(i: int) -> tuple[int, int]:
        a = module.first(i)[0]
        b = module.second(i)[0]
        return int(a), int(b)

    return request


def _drive(
    request: Callable[[int], tuple[int, int]],
    apply: Callable[[int], dict[str, float]],
    current: Callable[[], int],
    settings: Settings,
    progress: ProgressFn,
) -> dict[str, Any]:
    """Switch the module to versions 2, 3, ... with ``apply(marker)``.

    First ``peer_idle`` times with no callers (the idle reload time), then
    up to ``peer_reloads`` times (or for ``peer_budget_s``) while the callers
    run, one every ``peer_interval_s``, so that every tool runs its callers
    for about as long. ``apply`` returns its timed phases in seconds (at
    least ``reload``); ``current()`` tells which marker the code has after
    it: a reload that did not take is counted in ``not_applied``. A reload
    counts in ``reloads_with_mixed`` (``_failed``) when requests that saw two
    versions (that failed) were counted between it and the next one.
    """
    idle: list[float] = []
    phases: dict[str, list[float]] = {}
    not_applied = 0
    marker = 1
    total = settings.peer_idle + settings.peer_reloads
    for _ in range(settings.peer_idle):
        marker += 1
        idle.append(apply(marker)["reload"])
        not_applied += current() != marker
        progress((marker - 1) / total)
    exposed_mixed = exposed_failed = 0
    with _Callers(request, settings.callers) as callers:
        time.sleep(0.02)
        last_mixed, last_failed = callers.counts()
        next_at = time.perf_counter()
        deadline = next_at + settings.peer_budget_s
        for _ in range(settings.peer_reloads):
            marker += 1
            for phase, seconds in apply(marker).items():
                phases.setdefault(phase, []).append(seconds)
            not_applied += current() != marker
            progress((marker - 1) / total)
            now = time.perf_counter()
            if now <= deadline:
                next_at = max(next_at + settings.peer_interval_s, now)
                time.sleep(next_at - now)
            # What the callers saw since the last reload is this reload's doing.
            mixed, failed = callers.counts()
            exposed_mixed += mixed > last_mixed
            exposed_failed += failed > last_failed
            last_mixed, last_failed = mixed, failed
            if now > deadline:
                break
    seen = callers.result()
    return {
        "available": True,
        "reloads_idle": settings.peer_idle,
        "reloads": len(phases.get("reload", ())),
        "not_applied": not_applied,
        "reload_idle_ms": _distribution(idle, 1e3, 4),
        **{f"{phase}_ms": _distribution(values, 1e3, 4) for phase, values in phases.items()},
        "duration_s": round(callers.duration_s, 3),
        "requests": seen["requests"],
        "requests_per_s": seen["requests_per_s"],
        "failed": seen["failed"],
        "mixed": seen["mixed"],
        "reloads_with_mixed": exposed_mixed,
        "reloads_with_failed": exposed_failed,
        "errors": seen["errors"],
        "latency_us": seen["latency_us"],
    }


def _peer_livepatch(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """livepatch: load + check + swap each new version; requests run inside ``pin``."""
    engine = Engine("bench-peers")
    engine.add_slot("rules", None)
    first = engine.load("rules", peer_module(1), "rules.py")
    engine.check(first)
    engine.swap(first)
    retired: list[str] = []

    def apply(marker: int) -> dict[str, float]:
        t0 = time.perf_counter()
        version = engine.load("rules", peer_module(marker), "rules.py")
        t1 = time.perf_counter()
        ok = engine.check(version).ok
        t2 = time.perf_counter()
        result = engine.swap(version) if ok else None
        t3 = time.perf_counter()
        if result is not None and result.previous is not None:
            engine.purge(result.previous)
            retired.append(result.previous)
        return {"reload": t3 - t0, "load": t1 - t0, "check": t2 - t1, "swap": t3 - t2}

    def current() -> int:
        return int(engine.call("rules", "first", 0)[0])

    try:
        row = _drive(_request_through_pin(engine, "rules"), apply, current, settings, progress)
        freed = sum(engine.unload(v, wait_s=1.0).freed for v in retired)
    finally:
        engine.close()
    return {
        "tool": "livepatch",
        "version": __version__,
        "how": "load + check + swap of each new version; requests run in engine.pin()",
        **row,
        "retired_freed": freed,
        "retired": len(retired),
    }


def _peer_importlib(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """``importlib.reload`` of the module after its file is rewritten."""
    with _module_on_path("importlib") as module_file:
        module = importlib.import_module(module_file.name)

        def apply(marker: int) -> dict[str, float]:
            module_file.write(marker)
            t0 = time.perf_counter()
            importlib.reload(module)
            return {"reload": time.perf_counter() - t0}

        row = _drive(
            _module_request(module), apply, lambda: int(module.first(0)[0]), settings, progress
        )
    return {
        "tool": "importlib.reload",
        "version": platform.python_version(),
        "how": "file rewritten, then importlib.reload(module); requests call module.first/second",
        **row,
    }


@contextlib.contextmanager
def _private_ipython_dir() -> Iterator[None]:
    """A throwaway ``IPYTHONDIR``: the shell must not touch the user's profile."""
    previous = os.environ.get("IPYTHONDIR")
    with tempfile.TemporaryDirectory(prefix="lpbench-ipython-") as tmp:
        os.environ["IPYTHONDIR"] = tmp
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("IPYTHONDIR", None)
            else:
                os.environ["IPYTHONDIR"] = previous


def _peer_autoreload(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """IPython's ``%autoreload 2`` in a real InteractiveShell, run by ``pre_run_cell``."""
    try:
        ipython = importlib.import_module("IPython")
        shell_mod = importlib.import_module("IPython.core.interactiveshell")
        config_mod = importlib.import_module("traitlets.config")
    except ImportError as exc:
        return {"tool": "IPython autoreload", "available": False, "reason": str(exc)}
    with _private_ipython_dir():
        config = config_mod.Config()
        config.HistoryManager.enabled = False
        shell = shell_mod.InteractiveShell.instance(config=config)
        info = shell_mod.ExecutionInfo(
            raw_cell="pass", store_history=False, silent=False, shell_futures=True, cell_id=None
        )
        shell.extension_manager.load_extension("autoreload")
        shell.run_line_magic("autoreload", "2")
        # Count the reloads IPython's deduperreload patched in place (the
        # others were a full superreload), without changing what it does.
        magics = shell.magics_manager.registry.get("AutoreloadMagics")
        deduper = getattr(getattr(magics, "_reloader", None), "deduper_reloader", None)
        in_place = [0]
        if deduper is not None and hasattr(deduper, "maybe_reload_module"):
            original = deduper.maybe_reload_module

            def counted(module: Any) -> bool:
                patched = bool(original(module))
                in_place[0] += patched
                return patched

            deduper.maybe_reload_module = counted
        try:
            with _module_on_path("autoreload") as module_file:
                module = importlib.import_module(module_file.name)
                # The first cell after an import records the module's mtime.
                shell.events.trigger("pre_run_cell", info)

                def apply(marker: int) -> dict[str, float]:
                    module_file.write(marker)
                    t0 = time.perf_counter()
                    # What IPython does before every cell: the extension's
                    # reloader checks every module's mtime and reloads the
                    # changed ones.
                    shell.events.trigger("pre_run_cell", info)
                    return {"reload": time.perf_counter() - t0}

                row = _drive(
                    _module_request(module),
                    apply,
                    lambda: int(module.first(0)[0]),
                    settings,
                    progress,
                )
        finally:
            shell.run_line_magic("autoreload", "0")
            shell_mod.InteractiveShell.clear_instance()
    return {
        "tool": "IPython autoreload",
        "version": ipython.__version__,
        "how": (
            "%autoreload 2 in an InteractiveShell; file rewritten, then the pre_run_cell "
            "event (as before every cell); requests call module.first/second"
        ),
        **row,
        "patched_in_place": in_place[0] if deduper is not None else None,
    }


def _peer_jurigged(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """jurigged's in-place patching (``CodeFile.refresh``), or "not installed"."""
    try:
        jurigged = importlib.import_module("jurigged")
        register = importlib.import_module("jurigged.register")
    except ImportError:
        return {"tool": "jurigged", "available": False, "reason": "not installed"}
    with _module_on_path("jurigged") as module_file:
        module = importlib.import_module(module_file.name)
        registry = register.Registry()
        # What jurigged.watch() does when it first sees a module: cache its source.
        codefile, _ = registry.find(module)

        def apply(marker: int) -> dict[str, float]:
            module_file.write(marker)
            t0 = time.perf_counter()
            # What jurigged's watcher does when the file changes: diff the new
            # source against the cached one and patch the changed code in place.
            codefile.refresh()
            return {"reload": time.perf_counter() - t0}

        row = _drive(
            _module_request(module), apply, lambda: int(module.first(0)[0]), settings, progress
        )
    return {
        "tool": "jurigged",
        "version": getattr(jurigged, "__version__", None),
        "how": (
            "file rewritten, then the module's jurigged CodeFile.refresh() (what its watcher "
            "calls on a change); requests call module.first/second"
        ),
        **row,
    }


#: The peers in the order they run and appear.
_PEERS: tuple[tuple[str, Callable[[Settings, ProgressFn], dict[str, Any]]], ...] = (
    ("livepatch", _peer_livepatch),
    ("importlib_reload", _peer_importlib),
    ("ipython_autoreload", _peer_autoreload),
    ("jurigged", _peer_jurigged),
)


def measure_peers(settings: Settings, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """livepatch and its peers on the same module under the same callers.

    The module is :func:`peer_module`; each tool switches it to
    ``peer_reloads`` new versions in turn while ``callers`` threads run
    requests that call ``first`` and then ``second``.
    """
    tools: dict[str, Any] = {}
    share = 1 / len(_PEERS)
    for index, (key, measure) in enumerate(_PEERS):

        def sub(fraction: float, index: int = index) -> None:
            progress((index + fraction) * share)

        gc.collect()
        tools[key] = measure(settings, sub)
    return {
        "callers": settings.callers,
        "reloads_max": settings.peer_reloads,
        "interval_s": settings.peer_interval_s,
        "budget_s": settings.peer_budget_s,
        "module": {
            "helpers": PEER_HELPERS,
            "lines": peer_module(1).count("\n") + 1,
            "shape": "first() at the top, second() at the bottom, helpers between",
        },
        "tools": tools,
    }


# ---------------------------------------------------------------------------
# Goals


def _goal(
    description: str, value: float | int | None, limit: float, unit: str, compare: str = "<="
) -> dict[str, Any]:
    if value is None:
        met = False
    elif compare == "==":
        met = value == limit
    else:
        met = value <= limit
    return {
        "goal": description,
        "limit": limit,
        "compare": compare,
        "unit": unit,
        "value": value,
        "met": met,
    }


def evaluate_goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The DESIGN.md goals of the sections in ``results``, each with ``met``."""
    goals: dict[str, dict[str, Any]] = {}
    hot = results.get("hot_path")
    if hot:
        rules = hot["rules"]
        goals["hot_path_trivial_extra_ns"] = _goal(
            "engine.call on a trivial rule: extra time over a direct call",
            rules["trivial"]["call_extra_ns"],
            100,
            "ns",
        )
        goals["hot_path_classify_overhead_pct"] = _goal(
            "engine.call on the bundled classify: overhead over a direct call",
            rules["classify"]["call_overhead_pct"],
            2,
            "%",
        )
    swap = results.get("swap_under_load")
    if swap:
        goals["swap_failed_calls"] = _goal(
            "requests that failed while swapping", swap["failed"], 0, "requests", "=="
        )
        goals["swap_mixed_calls"] = _goal(
            "requests that saw two versions while swapping", swap["mixed"], 0, "requests", "=="
        )
        goals["swap_p99_ratio"] = _goal(
            "request latency p99 during swaps / p99 without swaps", swap["p99_ratio"], 1.5, "x"
        )
        goals["socket_swap_p99_ms"] = _goal(
            "swap over the control socket, request to reply, p99",
            swap["socket"]["swap_ms"]["p99"],
            2,
            "ms",
        )
    load = results.get("load_check")
    if load:
        by_size = {row["functions"]: row["total_ms"] for row in load["sizes"]}
        if 1_000 in by_size:
            goals["load_check_1000_ms"] = _goal(
                "load + check of a 1,000-function module", by_size[1_000], 100, "ms"
            )
        if load["growth_10000_vs_1000"] is not None:
            goals["load_check_growth"] = _goal(
                "load + check of 10,000 functions / of 1,000 functions",
                load["growth_10000_vs_1000"],
                12,
                "x",
            )
    memory = results.get("memory")
    if memory:
        goals["memory_not_freed"] = _goal(
            "unloaded versions not freed", memory["not_freed"], 0, "versions", "=="
        )
        goals["memory_rss_growth_mb"] = _goal(
            f"resident memory growth over {memory['cycles']} cycles",
            memory["rss_growth_mb"],
            10,
            "MB",
        )
    peers = results.get("peers")
    if peers:
        own = peers["tools"]["livepatch"]
        goals["peers_livepatch_mixed"] = _goal(
            "livepatch requests that saw two versions next to the peers",
            own["mixed"],
            0,
            "requests",
            "==",
        )
        goals["peers_livepatch_failed"] = _goal(
            "livepatch requests that failed next to the peers",
            own["failed"],
            0,
            "requests",
            "==",
        )
    return goals


#: Goals about correctness, not speed: a miss makes ``livepatch bench`` exit 1.
CORRECTNESS_GOALS = frozenset(
    {
        "swap_failed_calls",
        "swap_mixed_calls",
        "memory_not_freed",
        "peers_livepatch_mixed",
        "peers_livepatch_failed",
    }
)


# ---------------------------------------------------------------------------
# Running and reporting


def run(
    settings: Settings,
    sections: Sequence[str] = SECTIONS,
    progress: Progress | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Measure ``sections`` with ``settings``; returns the JSON-able results."""
    progress = progress or Progress(sections, enabled=False)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": "livepatch bench" + (" --quick" if quick else ""),
        "quick": quick,
        "machine": machine_info(),
        "settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
        },
    }
    measures: dict[str, Callable[[ProgressFn], dict[str, Any]]] = {
        "hot_path": lambda p: measure_hot_path(settings.hot_number, settings.hot_repeat, p),
        "swap_under_load": lambda p: measure_swap_under_load(settings, p),
        "load_check": lambda p: measure_load_check(settings.load_sizes, settings.load_repeat, p),
        "memory": lambda p: measure_memory(settings.memory_cycles, settings.memory_warmup, p),
        "peers": lambda p: measure_peers(settings, p),
    }
    for name in SECTIONS:
        if name in sections:
            section_started = time.perf_counter()
            results[name] = measures[name](progress.section(name))
            results[name]["elapsed_s"] = round(time.perf_counter() - section_started, 2)
    progress.close()
    results["goals"] = evaluate_goals(results)
    results["machine"]["load_average_end"] = _load_average()
    results["elapsed_s"] = round(time.perf_counter() - started, 2)
    return results


def _fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:{spec}}{unit}"
    return str(value)


def render_table(results: dict[str, Any]) -> str:
    """The results as the text table ``livepatch bench`` prints."""
    m = results["machine"]
    out = [
        f"{results['command']}: Python {m['python']} on {m['platform']}, "
        f"{m['cpu_count']} CPUs ({m['cpu_model'] or m['machine']}), "
        f"load average {m['load_average'][0] if m['load_average'] else '-'}; "
        f"engine.call accelerated: {'yes' if m['accelerated'] else 'no'}",
    ]
    hot = results.get("hot_path")
    if hot:
        out += [
            "",
            f"Hot path (ns per call, best of {hot['repeat']})",
            f"  {'rule':<10}{'direct':>10}{'engine.call':>13}{'extra':>9}{'overhead':>10}"
            f"{'pin call':>10}{'pin block':>11}",
        ]
        for name, row in hot["rules"].items():
            out.append(
                f"  {name:<10}{row['direct_ns']:>10.1f}{row['call_ns']:>13.1f}"
                f"{row['call_extra_ns']:>9.1f}{row['call_overhead_pct']:>9.1f}%"
                f"{row['pin_call_ns']:>10.1f}{row['pin_block_ns']:>11.1f}"
            )
    swap = results.get("swap_under_load")
    if swap:
        lat = swap["latency_us"]
        seen = ", ".join(f"{k} {v:,}" for k, v in swap["seen"].items())
        out += [
            "",
            f"Swap under load ({swap['callers']} callers through pin, {swap['swaps']:,} swaps "
            f"in {swap['duration_s']:.1f} s)",
            f"  requests {swap['requests']:,} ({seen}); failed {swap['failed']}, "
            f"mixed versions {swap['mixed']}",
            f"  {'request latency':<24}{'p50':>10}{'p99':>10}{'max':>11}",
        ]
        for label, key in (("without swaps", "without_swaps"), ("with swaps", "with_swaps")):
            d = lat[key]
            out.append(
                f"  {label:<24}{_fmt(d['p50'], '.2f', ' us'):>10}{_fmt(d['p99'], '.2f', ' us'):>10}"
                f"{_fmt(d['max'], '.0f', ' us'):>11}"
            )
        out.append(f"  p99 ratio with/without swaps: {_fmt(swap['p99_ratio'], '.2f')}")
        s, k = swap["swap_ms"], swap["socket"]["swap_ms"]
        out += [
            f"  {'swap latency':<24}{'p50':>10}{'p99':>10}{'max':>11}",
            f"  {'in-process':<24}{_fmt(s['p50'], '.3f', ' ms'):>10}"
            f"{_fmt(s['p99'], '.3f', ' ms'):>10}{_fmt(s['max'], '.3f', ' ms'):>11}",
            f"  {'over the socket':<24}{_fmt(k['p50'], '.3f', ' ms'):>10}"
            f"{_fmt(k['p99'], '.3f', ' ms'):>10}{_fmt(k['max'], '.3f', ' ms'):>11}"
            f"   ({swap['socket']['swaps']:,} swaps, "
            f"{swap['socket']['traffic_per_s']:g} calls/s of traffic)",
        ]
    load = results.get("load_check")
    if load:
        out += [
            "",
            f"Load + check (ms, median of {load['repeat']})",
            f"  {'functions':>10}{'load':>10}{'check':>10}{'total':>10}{'compile+exec':>14}",
        ]
        for row in load["sizes"]:
            out.append(
                f"  {row['functions']:>10,}{row['load_ms']:>10.1f}{row['check_ms']:>10.1f}"
                f"{row['total_ms']:>10.1f}{row['python_compile_exec_ms']:>14.1f}"
            )
        out.append(f"  10,000 / 1,000: {_fmt(load['growth_10000_vs_1000'], '.1f', 'x')}")
    memory = results.get("memory")
    if memory:
        out += [
            "",
            f"Memory ({memory['cycles']:,} load/check/swap/purge/unload cycles, "
            f"{memory['ms_per_cycle']:.1f} ms each)",
            f"  unloaded {memory['unloaded']:,}, freed {memory['freed']:,}; RSS "
            f"{memory['rss_start_mb']:.1f} MB -> {memory['rss_end_mb']:.1f} MB "
            f"({memory['rss_growth_mb']:+.2f} MB)",
        ]
    peers = results.get("peers")
    if peers:
        out += [
            "",
            f"Peers (same {peers['module']['lines']}-line module; reload ms idle, then under "
            f"{peers['callers']} callers running requests of first() + second())",
            f"  {'tool':<20}{'idle p50':>10}{'loaded p50':>12}{'p99':>10}{'requests':>12}"
            f"{'mixed':>9}{'failed':>8}{'reloads that mixed':>20}",
        ]
        for row in peers["tools"].values():
            if not row.get("available"):
                out.append(f"  {row['tool']:<20}  ({row.get('reason', 'not available')})")
                continue
            r, idle = row["reload_ms"], row["reload_idle_ms"]
            out.append(
                f"  {row['tool']:<20}{_fmt(idle['p50'], '.2f'):>10}{_fmt(r['p50'], '.2f'):>12}"
                f"{_fmt(r['p99'], '.2f'):>10}{row['requests']:>12,}{row['mixed']:>9,}"
                f"{row['failed']:>8,}{row['reloads_with_mixed']:>13,} of {row['reloads']:<4,}"
            )
        own = peers["tools"]["livepatch"]
        if own.get("available"):
            sw = own["swap_ms"]
            out.append(
                f"  livepatch reload = load + check + swap; the swap alone: "
                f"p50 {_fmt(sw['p50'], '.3f', ' ms')}, p99 {_fmt(sw['p99'], '.3f', ' ms')}"
            )
    goals = results.get("goals", {})
    if goals:
        met = sum(g["met"] for g in goals.values())
        out += ["", f"Goals ({met}/{len(goals)} met)"]
        for g in goals.values():
            value = _fmt(g["value"], ".2f" if isinstance(g["value"], float) else "")
            out.append(
                f"  [{'ok' if g['met'] else 'MISS'}] {g['goal']}: {value} {g['unit']} "
                f"(goal {g['compare']} {g['limit']:g})"
            )
    out.append(f"\nelapsed {results['elapsed_s']:.1f} s")
    return "\n".join(out)


def run_bench(args: argparse.Namespace) -> int:
    """The ``livepatch bench`` command: measure, print the table, write the JSON.

    Exit status 1 when a correctness goal (failed or mixed-version requests,
    unloaded versions not freed) is missed; timing goals never fail the run.
    """
    quick = bool(getattr(args, "quick", False))
    sections = tuple(getattr(args, "section", None) or SECTIONS)
    settings = QUICK if quick else FULL
    progress = Progress(sections)
    results = run(settings, sections, progress, quick=quick)
    print(render_table(results))
    path = getattr(args, "json", None)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {path}")
    missed = [k for k, g in results["goals"].items() if k in CORRECTNESS_GOALS and not g["met"]]
    return 1 if missed else 0
