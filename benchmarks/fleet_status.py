"""``livepatch status --fleet F`` on the local registry, end to end.

Starts ``--engines`` members of one local fleet with traffic, in a private
runtime directory and state home, then runs the one-shot command
``--runs`` times and prints its median and minimum wall time, next to
``livepatch status`` of one engine (the same start-up, one socket). With
``--before DIR`` (a tree holding an older ``livepatch`` package, e.g.
``git archive REV livepatch | tar -x -C DIR``), each run of the command
alternates with one from that tree against the same members::

    .venv/bin/python benchmarks/fleet_status.py [--engines 3] [--runs 20] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from livepatch.launcher import EngineProcess

FLEET = "bench"


def _time(argv: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    # Not from the repository: `python -m` would find its package before --before's.
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _line(label: str, times: list[float]) -> str:
    return (
        f"{label:<28} median {statistics.median(times) * 1000:6.0f} ms, "
        f"min {min(times) * 1000:5.0f} ms over {len(times)}"
    )


def main() -> None:
    """Run the measurement and print one line per command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0, help="calls/s on each member")
    parser.add_argument("--before", metavar="DIR", help="also time the package in DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lp-bench-") as tmp:
        env = dict(
            os.environ,
            LIVEPATCH_RUNTIME_DIR=str(Path(tmp) / "run"),
            XDG_STATE_HOME=str(Path(tmp) / "state"),
        )
        os.environ.update(env)  # the members inherit both
        names = [f"m{i}" for i in range(args.engines)]
        members = [
            EngineProcess(name, ("--fleet", FLEET, "--traffic", str(args.rate))) for name in names
        ]
        try:
            for member in members:
                member.start(120)
            time.sleep(3)  # every member's agent has reported at least once
            fleet = [sys.executable, "-m", "livepatch", "status", "--fleet", FLEET]
            one = [sys.executable, "-m", "livepatch", "status", "--existing", names[0]]
            runs: dict[str, list[float]] = {"status --fleet": [], "status (one engine)": []}
            before = dict(env, PYTHONPATH=args.before) if args.before else None
            if before is not None:
                runs["status --fleet, --before"] = []
            for _ in range(args.runs):
                runs["status --fleet"].append(_time(fleet, env, tmp))
                runs["status (one engine)"].append(_time(one, env, tmp))
                if before is not None:
                    runs["status --fleet, --before"].append(_time(fleet, before, tmp))
        finally:
            for member in members:
                member.stop()
    print(
        f"{args.engines} local members, {args.rate:g} calls/s each; load {os.getloadavg()[0]:.1f}"
    )
    for label, times in runs.items():
        print(_line(label, times))


if __name__ == "__main__":
    main()
