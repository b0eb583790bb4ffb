"""The control socket under load: 8 clients calling flat out, swaps meanwhile.

Run: ``.venv/bin/python benchmarks/control_plane.py [--clients N] [--seconds S] [--swaps N]``

Starts a real ``livepatch engine`` process; ``--clients`` connections send
``call`` frames (the bundled ``classify``) back to back while one more
swaps back and forth, timing each swap request to its reply (goal: p99 <=
2 ms). Then the same load goes to a bare asyncio JSON-lines server that
answers every frame with a canned reply (goal: the engine answers at least
half as many calls per second). The measurement is
:func:`livepatch.bench.control_plane.measure_control_plane`, the one
``livepatch bench`` runs in its ``control_plane`` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from livepatch.bench import FULL
from livepatch.bench.control_plane import measure_control_plane


def main() -> None:
    """Parse the arguments, measure, print a summary and write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=FULL.control_clients)
    parser.add_argument("--seconds", type=float, default=FULL.control_duration_s)
    parser.add_argument("--swaps", type=int, default=FULL.control_swaps)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    settings = dataclasses.replace(
        FULL,
        control_clients=args.clients,
        control_duration_s=args.seconds,
        control_swaps=args.swaps,
    )
    result = measure_control_plane(settings)
    for key in ("engine", "reference"):
        row = result[key]
        s = row["swap_ms"]
        print(
            f"{key:<10} {row['calls_per_s']:>8,} calls/s; swap p50 {s['p50']:.2f} ms, "
            f"p99 {s['p99']:.2f} ms ({row['swaps']} swaps)"
        )
    print(f"throughput ratio engine / reference: {result['throughput_ratio']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
