"""The full-collection pause in an engine process, with and without the freeze.

Run: ``.venv/bin/python benchmarks/gc_pause.py [--rounds 20]``

A full (generation 2) collection stops every thread of the process: calls,
the data loop and control requests alike. ``livepatch engine`` freezes what
start-up made once it serves (:func:`livepatch.reclaim.freeze`), so later
full collections walk only what was made since. This builds the engine as
``livepatch engine`` does (the bundled demo: its Python and native slots,
its server on a private socket), then times ``gc.collect()`` with start-up
frozen and thawed, in turns, so drift in machine speed hits both alike.
Prints the median and the worst of each, in milliseconds, and the number of
objects the collector tracks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lp-gc-") as tmp:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = tmp
        from livepatch.callpool import CallPool
        from livepatch.cli import build_parser
        from livepatch.enginemain import build_engine
        from livepatch.reclaim import freeze
        from livepatch.server import Server

        engine = build_engine(build_parser().parse_args(["engine", "--name", "gc-pause"]))
        server = Server(engine, calls=CallPool(8, 64, 5.0))
        server.start()
        try:
            frozen_objects = freeze()
            times: dict[str, list[float]] = {"frozen": [], "thawed": []}
            tracked = 0
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                gc.collect()
                times["frozen"].append(time.perf_counter() - t0)
                gc.unfreeze()
                tracked = len(gc.get_objects())
                t0 = time.perf_counter()
                gc.collect()
                times["thawed"].append(time.perf_counter() - t0)
                gc.freeze()
        finally:
            server.stop()
    result = {
        "tracked_objects": tracked,
        "frozen_at_start": frozen_objects,
        **{
            f"{k}_ms": {
                "median": round(statistics.median(v) * 1000, 3),
                "max": round(max(v) * 1000, 3),
            }
            for k, v in times.items()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
