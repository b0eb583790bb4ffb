"""``shadow``: what a shadow run at 10 % sampling adds to the active path.

Goal (issue 18): shadowing at 10 % sampling adds at most 2 % to the p50 of
``engine.call`` on the bundled ``classify``.

Timed: one caller thread calls ``engine.call("spam", "classify", msg)``
flat out, each call timed with ``perf_counter_ns``, in rounds that
alternate a block without a shadow run and a block with one (a candidate as
costly as the active version, its own background thread running); the
figure is the p50 of each condition pooled over the rounds, so drift in the
machine's speed hits both alike.

Counted (callgrind, as :mod:`.hot_path_callgrind` does: instructions per
call less the loop's own, ``PYTHONHASHSEED=0``): ``engine.call`` without a
sampler, with a sampler between samples (the one compare and the
countdown), and with the caller's whole share of 10 % sampling (the timing
of the sampled calls, the hand-over and the queueing; the candidate's work
is on another thread, not counted here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..examples.spam import rule_source
from ..journal import Journal, Peer
from ..shadow import Shadows
from .common import ProgressFn, _no_progress, percentile
from .hot_path import hot_engine

__all__ = ["measure_shadow", "shadow_goals", "shadow_lines"]

#: The sampling the goal is about.
SAMPLE = 0.1
#: The goal: at most this much added to the active path's p50, in percent.
GOAL_PCT = 2.0


def _candidate(engine: Any) -> str:
    # As costly as the active version (the same rules), a different source.
    version = str(engine.load("spam", rule_source("spam_v2.py") + "\n# candidate\n", "cand.py"))
    if not engine.check(version).ok:  # pragma: no cover - the bundled rules pass
        raise RuntimeError(f"{version} failed its check")
    return version


def _timed_block(engine: Any, msg: Any, calls: int) -> list[int]:
    call = engine.call
    clock = time.perf_counter_ns
    out = [0] * calls
    for i in range(calls):
        started = clock()
        call("spam", "classify", msg)
        out[i] = clock() - started
    return out


def measure_shadow(
    calls: int, rounds: int, grind_calls: int, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """p50 of ``engine.call`` without and with a 10 % shadow run, and the
    instructions per call (``grind_calls`` 0: callgrind skipped)."""
    engine, _functions, msg = hot_engine()
    candidate = _candidate(engine)
    shadows = Shadows(engine, Journal())
    peer = Peer(client="bench")
    without: list[int] = []
    with_shadow: list[int] = []
    figures: dict[str, Any] = {}
    try:
        _timed_block(engine, msg, calls // 4)  # warm up
        for r in range(rounds):
            without += _timed_block(engine, msg, calls)
            shadows.start(candidate, peer=peer, sample=SAMPLE)
            with_shadow += _timed_block(engine, msg, calls)
            report = shadows.stop("spam", peer=peer)
            for key in ("sampled", "compared", "dropped"):
                figures[key] = figures.get(key, 0) + report[key]
            progress((r + 1) / rounds * (0.6 if grind_calls else 1.0))
    finally:
        engine.close()
    p50_without, p50_with = percentile(without, 50), percentile(with_shadow, 50)
    result: dict[str, Any] = {
        "sample": SAMPLE,
        "calls_per_block": calls,
        "rounds": rounds,
        "accelerated": engine.accelerated,
        "p50_ns": {"without": p50_without, "with": p50_with},
        "p99_ns": {"without": percentile(without, 99), "with": percentile(with_shadow, 99)},
        "mean_ns": {
            "without": round(sum(without) / len(without), 1),
            "with": round(sum(with_shadow) / len(with_shadow), 1),
        },
        "p50_overhead_pct": round((p50_with / p50_without - 1) * 100, 2),
        **figures,
    }
    result["callgrind"] = _measure_grind(grind_calls, progress)
    return result


# -- callgrind ----------------------------------------------------------------------------

#: What each callgrind child has on the active version while it loops.
GRIND_CASES = ("loop", "call", "sampler_idle", "sampled")


def _grind_child(case: str, calls: int) -> None:
    """Set the rules up as the timed figure does, then call ``calls`` times."""
    engine, _functions, msg = hot_engine()
    candidate = _candidate(engine)
    if case == "sampler_idle":
        # A sampler whose first sample is further away than the loop is long:
        # what every call between two samples pays.
        import collections

        from .._speedups import Rules, Sampler

        rules = engine._version("spam@1").rules
        assert isinstance(rules, Rules)
        rules._sampler = Sampler(collections.deque(), 1, 1e-12, 1)
    elif case == "sampled":
        # A real run, its threads comparing: only this thread is counted.
        Shadows(engine, Journal()).start(candidate, peer=Peer(), sample=SAMPLE, queue=calls)
    call = engine.call
    if case == "loop":
        for _ in range(calls):
            pass
    else:
        for _ in range(calls):
            call("spam", "classify", msg)


def _instructions(valgrind: str, case: str, calls: int) -> int:
    """Instructions of the main thread only (callgrind's --separate-threads)."""
    with tempfile.TemporaryDirectory(prefix="lpbench-sh-") as tmp:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                "-c",
                "import sys; from livepatch.bench.shadow import _grind_child; "
                "_grind_child(sys.argv[1], int(sys.argv[2])); import os; os._exit(0)",
                case,
                str(calls),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        main = next(iter(sorted(Path(tmp).glob("out-01"))), None)
        text = main.read_text(encoding="utf-8", errors="replace") if main else ""
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return int(found.group(1))


def _measure_grind(calls: int, progress: ProgressFn) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if calls <= 0:
        return {"available": False, "reason": "skipped (run `livepatch bench --section shadow`)"}
    if valgrind is None:
        return {"available": False, "reason": "valgrind not installed (apt-get install valgrind)"}
    try:
        from .. import _speedups  # noqa: F401 - the counted path is the C one
    except ImportError:
        return {"available": False, "reason": "livepatch._speedups is not built"}
    counts: dict[str, int] = {}
    for i, case in enumerate(GRIND_CASES):
        counts[case] = _instructions(valgrind, case, calls)
        progress(0.6 + 0.4 * (i + 1) / len(GRIND_CASES))
    per = {k: (v - counts["loop"]) / calls for k, v in counts.items() if k != "loop"}
    return {
        "available": True,
        "calls": calls,
        **{f"{k}_instructions": round(v) for k, v in per.items()},
        "sampler_idle_extra_pct": round((per["sampler_idle"] / per["call"] - 1) * 100, 2),
        "sampled_extra_pct": round((per["sampled"] / per["call"] - 1) * 100, 2),
    }


# -- goals and the table ----------------------------------------------------------------------


def shadow_goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The shadow section's goal, in the shape of :mod:`.goals`."""
    from .goals import _goal

    section = results.get("shadow")
    if not section:
        return {}
    return {
        "shadow_p50_overhead_pct": _goal(
            f"a shadow run at {SAMPLE:.0%} sampling: added to the p50 of engine.call on the "
            "bundled classify",
            section["p50_overhead_pct"],
            GOAL_PCT,
            "%",
        )
    }


def shadow_lines(results: dict[str, Any]) -> list[str]:
    """The section's rows of the ``livepatch bench`` table."""
    s = results.get("shadow")
    if not s:
        return []
    p50, p99, mean = s["p50_ns"], s["p99_ns"], s["mean_ns"]
    goal = shadow_goals(results)["shadow_p50_overhead_pct"]
    out = [
        "",
        f"Shadow run at {s['sample']:.0%} sampling (classify, ns per engine.call, "
        f"{s['rounds']} rounds of {s['calls_per_block']:,} calls each way)",
        f"  {'':<16}{'p50':>9}{'p99':>9}{'mean':>9}",
        f"  {'no shadow':<16}{p50['without']:>9,.0f}{p99['without']:>9,.0f}"
        f"{mean['without']:>9,.0f}",
        f"  {'shadow running':<16}{p50['with']:>9,.0f}{p99['with']:>9,.0f}{mean['with']:>9,.0f}",
        f"  p50 {s['p50_overhead_pct']:+.2f}% (goal <= {GOAL_PCT:g}%: "
        f"{'met' if goal['met'] else 'MISS'}); {s.get('sampled', 0):,} sampled, "
        f"{s.get('compared', 0):,} compared, {s.get('dropped', 0):,} dropped",
    ]
    grind = s.get("callgrind") or {}
    if grind.get("available"):
        out.append(
            f"  instructions per call (callgrind): {grind['call_instructions']:,} without, "
            f"{grind['sampler_idle_instructions']:,} between samples "
            f"({grind['sampler_idle_extra_pct']:+.2f}%), "
            f"{grind['sampled_instructions']:,} with 10% sampled "
            f"({grind['sampled_extra_pct']:+.2f}%)"
        )
    else:
        out.append(f"  instructions (callgrind): {grind.get('reason', '-')}")
    return out
