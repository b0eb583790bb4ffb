"""A ready ``.so`` loaded and checked over the socket: as bytes (``load
{"object"}``, mapped from a memory file) next to by path (``load {"path"}``).

Starts an engine with the native demo slot in a private runtime directory,
builds ``spam_native_v2.c`` with the system compiler, then loads, checks and
unloads it ``--runs`` times each way (in blocks, alternating) and prints the
medians. With the quarantine on (the default) both routes map the object in
a warm spare child first::

    .venv/bin/python benchmarks/native_bytes.py [--runs 30] [--no-quarantine]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from livepatch.client import Client
from livepatch.examples.spam import rule_path
from livepatch.launcher import EngineProcess
from livepatch.native import find_compiler


def main() -> None:
    """Run the measurement and print one line per route."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-quarantine", action="store_true")
    args = parser.parse_args()
    compiler = find_compiler()
    if compiler is None:
        raise SystemExit("no C compiler (cc, gcc, clang or $CC)")
    with tempfile.TemporaryDirectory(prefix="lp-bench-") as tmp:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = str(Path(tmp) / "run")
        so = Path(tmp) / "v2.so"
        subprocess.run(
            [*compiler, "-shared", "-fPIC", "-O2", rule_path("spam_native_v2.c"), "-o", str(so)],
            check=True,
        )
        data = so.read_bytes()
        slot = "spam_native=livepatch.examples.spam_native:SpamNativeRules"
        extra = ("--no-quarantine",) if args.no_quarantine else ()
        engine = EngineProcess("bench-bytes", ("--slot", slot, *extra))
        engine.start(60)
        times: dict[str, list[float]] = {"bytes": [], "path": []}
        try:
            with Client.connect("bench-bytes") as client:
                block = max(1, args.runs // 2)
                for how in ("bytes", "path", "bytes", "path"):
                    for _ in range(block):
                        start = time.perf_counter()
                        if how == "bytes":
                            version = client.load_object("spam_native", data, "v2.so")
                        else:
                            version = client.load_path("spam_native", so)
                        if not client.check(version).ok:
                            raise SystemExit(f"{version} failed its check")
                        times[how].append(time.perf_counter() - start)
                        client.unload(version)
        finally:
            engine.stop()
        for how, values in times.items():
            print(
                f"{how:5}: load + check p50 {statistics.median(values) * 1e3:.1f} ms "
                f"(n={len(values)}, {len(data)} bytes)"
            )


if __name__ == "__main__":
    main()
