"""Swap over the control socket, request to reply, and ``call`` round trips.

Run: ``.venv/bin/python benchmarks/socket_swap.py [--swaps N] [--calls N] [--traffic RATE]``

Starts a real ``livepatch engine`` process (the bundled demo, optionally with
live traffic), then from one client: N swaps back and forth between two
resolved versions, timing each request to its reply (goal: p99 <= 2 ms), and
N ``call`` round trips on the bundled ``classify`` (calls per second).

The measurement is :func:`livepatch.bench.measure_socket_swap`, the same one
``livepatch bench`` runs in its ``swap_under_load`` section.
"""

from __future__ import annotations

import argparse
import json

from livepatch.bench import measure_socket_swap


def main() -> None:
    """Parse the arguments, measure, print a summary and write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--swaps", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--traffic", type=float, default=200.0, help="engine's own calls/s")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    result = measure_socket_swap(args.swaps, args.calls, args.traffic)
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
