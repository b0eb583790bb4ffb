"""Swap over the control socket, request to reply, and ``call`` round trips.

Run: ``.venv/bin/python benchmarks/socket_swap.py [--swaps N] [--calls N] [--traffic RATE]``

Starts a real ``livepatch engine`` process (the bundled demo, optionally with
live traffic), then from one client: N swaps back and forth between two
resolved versions, timing each request to its reply (goal: p99 <= 2 ms), and
N ``call`` round trips on the bundled ``classify`` (calls per second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

from livepatch.client import Client
from livepatch.demo import start_engine
from livepatch.examples.spam import rule_source


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def measure(swaps: int, calls: int, traffic: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lpbench-", dir="/tmp") as tmp:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = os.path.join(tmp, "run")
        with start_engine("bench", traffic), Client.connect("bench") as client:
            versions = []
            for name in ("spam_v1.py", "spam_v2.py"):
                v = client.load("spam", rule_source(name) + "\n# bench\n", name)
                assert client.check(v).ok
                versions.append(v)
            client.swap(versions[0])
            latencies = []
            for i in range(swaps):
                target = versions[(i + 1) % 2]
                start = time.perf_counter()
                client.swap(target)
                latencies.append((time.perf_counter() - start) * 1e3)
            msg = {"sender": "a@b.c", "text": "WIN a FREE cruise!!!", "links": []}
            start = time.perf_counter()
            for _ in range(calls):
                client.call("spam", "classify", [msg])
            elapsed = time.perf_counter() - start
    return {
        "swaps": swaps,
        "traffic_per_s": traffic,
        "swap_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies), 3),
        },
        "call_round_trips_per_s": round(calls / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--traffic", type=float, default=200.0, help="engine's own calls/s")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    result = measure(args.swaps, args.calls, args.traffic)
    s = result["swap_ms"]
    print(
        f"swap over the socket ({args.swaps} swaps, {args.traffic:g} calls/s of traffic): "
        f"p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms, max {s['max']:.3f} ms"
    )
    print(f"call round trips: {result['call_round_trips_per_s']} per second (one client)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
