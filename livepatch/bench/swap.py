"""``swap_under_load``: callers through ``pin`` while swaps go back and forth."""

from __future__ import annotations

import os
import time
from typing import Any

from ..engine import Engine
from ..examples.spam import rule_source
from .common import (
    ProgressFn,
    Settings,
    _Callers,
    _distribution,
    _no_progress,
    _private_runtime_dir,
    _request_through_pin,
    peer_module,
)
from .plot import latency_histogram

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
        during_ns = callers.latencies_ns()
        progress(0.6)
        with _Callers(request, settings.callers) as callers:
            time.sleep(0.02 + duration)
        baseline = callers.result()
        histogram = latency_histogram(
            {"without_swaps": callers.latencies_ns(), "with_swaps": during_ns}
        )
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
        # The whole distributions, for `livepatch bench --plot FILE`.
        "latency_histogram": histogram,
        "p99_ratio": round(p99_with / p99_without, 3) if p99_without else None,
        "swap_ms": _distribution(swap_s, 1e3, 4),
        "socket": socket,
    }


def measure_socket_swap(
    swaps: int, calls: int, traffic: float, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """Swaps over the control socket of a real ``livepatch engine`` process.

    The engine serves the bundled demo with ``traffic`` synthetic calls per
    second; one client loads two versions, then swaps back and forth
    ``swaps`` times timing each request to its reply, then makes ``calls``
    ``call`` round trips on ``classify``.
    """
    from ..client import Client  # the engine-only sections need no socket code
    from ..demo import start_engine

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
