"""A one-shot CLI verb's start-up next to a bare ``python -c pass``.

The design's goal: a one-shot verb costs at most 2.5x the start-up of
Python itself. Runs an engine (the bundled demo, no traffic) in a private
runtime directory, then alternates ``python -c pass`` with ``python -m
livepatch status`` (and ``swap``, a lifecycle verb) and reports the medians
and their ratio::

    .venv/bin/python benchmarks/cli_startup.py [--runs 30]

The package's bytecode is compiled first, as ``pip install`` does: with
``PYTHONDONTWRITEBYTECODE`` set (or a read-only checkout) every run would
otherwise compile livepatch's sources again and measure the compiler.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from livepatch.launcher import EngineProcess


def _time(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    import livepatch

    compileall.compile_dir(Path(livepatch.__file__).parent, quiet=2)
    with tempfile.TemporaryDirectory(prefix="lp-bench-", dir="/tmp") as tmp:
        env = {**os.environ, "LIVEPATCH_RUNTIME_DIR": str(Path(tmp) / "run"), "NO_COLOR": "1"}
        os.environ["LIVEPATCH_RUNTIME_DIR"] = env["LIVEPATCH_RUNTIME_DIR"]
        with EngineProcess("bench-cli"):
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "livepatch status": [sys.executable, "-m", "livepatch", "status"],
                "livepatch swap spam@1": [sys.executable, "-m", "livepatch", "swap", "spam@1"],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.runs):  # interleaved: load on the machine hits all alike
                for name, cmd in commands.items():
                    times[name].append(_time(cmd, env))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<24} {'median ms':>10} {'vs python':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24} {median * 1000:>10.1f} {median / base:>9.2f}x")


if __name__ == "__main__":
    main()
