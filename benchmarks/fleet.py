"""Fleet push: local engines with traffic, and ZooKeeper with simulated members.

Run: ``.venv/bin/python benchmarks/fleet.py [--engines 8] [--pushes 40]
[--sizes 10,100,1000] [--json FILE]``

Local: 8 real engines with traffic on the local registry; push p50/p99,
commit skew (first to last member's swap, from their journals; goal p99
<= 20 ms) and the call p99 over each member's socket during pushes next to
without. ZooKeeper: a private server started here, simulated members in
two processes (each a real member agent with its own session, on one gevent
loop per process: livepatch/fleet/zksim.py); push time for each size
(goal: 1,000 members <= 5 s and <= 10x the time of 10). The measurements
are :mod:`livepatch.fleet.bench`'s.
"""

from __future__ import annotations

import argparse
import json

from livepatch.fleet.bench import measure_local, measure_zookeeper


def main() -> None:
    """Parse the arguments, measure, print a summary and write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--pushes", type=int, default=40)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-zookeeper", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results: dict[str, object] = {}
    if not args.skip_local:
        local = measure_local(args.engines, args.pushes)
        results["local"] = local
        p, s = local["push_ms"], local["commit_skew_ms"]
        print(
            f"local, {local['engines']} engines with traffic, {local['pushes']} pushes "
            f"({local['aborted']} aborted): push p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms; "
            f"commit skew p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms (goal <= 20 ms)"
        )
        print(
            f"call p99 over the socket: {local['call_p99_ms_during']:.2f} ms during pushes, "
            f"{local['call_p99_ms_without']:.2f} ms without ({local['call_p99_ratio']}x); "
            f"{local['failed_calls']} failed calls"
        )
    if not args.skip_zookeeper:
        sizes = tuple(int(x) for x in args.sizes.split(","))
        zk = measure_zookeeper(sizes)
        results["zookeeper"] = zk
        if "skipped" in zk:
            print(f"zookeeper: skipped ({zk['skipped']})")
        for size in sizes:
            row = zk.get(str(size))
            if isinstance(row, dict):
                print(
                    f"zookeeper, {size} simulated members: push median {row['push_s_median']:.3f} s"
                    f", max {row['push_s_max']:.3f} s, every push acked by >= {row['acks_min']}"
                )
        if "ratio_largest_to_smallest" in zk:
            print(f"largest / smallest fleet: {zk['ratio_largest_to_smallest']}x (goal <= 10x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
