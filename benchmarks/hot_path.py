"""Hot-path overhead: ``engine.call`` and ``pin`` against a direct call.

Run: ``.venv/bin/python benchmarks/hot_path.py [--number N] [--repeat R]``

Design goal (DESIGN.md, Performance): ``engine.call`` on a trivial rule costs
at most 100 ns more than calling the function directly, and at most 2 % more
on the bundled ``classify``. Each figure is the best of R repeats of N calls
(the minimum is the least disturbed by the rest of the machine), all measured
in one run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from typing import Any

from livepatch import Engine
from livepatch.examples.spam import Message, SpamRules, rule_source

TRIVIAL = "def trivial(x):\n    return x\n"


def best_ns(stmt: str, namespace: dict[str, Any], number: int, repeat: int) -> float:
    """Best time of one call, in nanoseconds."""
    timer = timeit.Timer(stmt, globals=namespace)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def measure(number: int, repeat: int) -> dict[str, Any]:
    engine = Engine("bench")
    engine.add_slot("trivial", None)
    engine.add_slot("spam", SpamRules)
    for slot, source in (("trivial", TRIVIAL), ("spam", rule_source("spam_v2.py"))):
        version = engine.load(slot, source)
        assert engine.check(version).ok
        engine.swap(version)
    trivial = sys.modules["livepatch.loaded.trivial_1"].trivial
    classify = sys.modules["livepatch.loaded.spam_1"].classify
    msg = Message(
        "promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/win",)
    )
    ns = {"engine": engine, "trivial": trivial, "classify": classify, "msg": msg}
    rows = {}
    for name, direct, via_call, via_pin, n in (
        (
            "trivial",
            "trivial(msg)",
            "engine.call('trivial', 'trivial', msg)",
            "rules.trivial(msg)",
            number,
        ),
        (
            "classify",
            "classify(msg)",
            "engine.call('spam', 'classify', msg)",
            "rules.classify(msg)",
            max(1, number // 20),
        ),
    ):
        slot = "trivial" if name == "trivial" else "spam"
        with engine.pin(slot) as rules:
            ns["rules"] = rules
            # Interleave the three so drift in machine speed hits them alike.
            d, c, p = [], [], []
            for _ in range(repeat):
                d.append(best_ns(direct, ns, n, 1))
                c.append(best_ns(via_call, ns, n, 1))
                p.append(best_ns(via_pin, ns, n, 1))
        direct_ns, call_ns, pin_ns = min(d), min(c), min(p)
        rows[name] = {
            "direct_ns": round(direct_ns, 1),
            "call_ns": round(call_ns, 1),
            "pin_ns": round(pin_ns, 1),
            "call_extra_ns": round(call_ns - direct_ns, 1),
            "call_overhead_pct": round((call_ns / direct_ns - 1) * 100, 2),
            "pin_extra_ns": round(pin_ns - direct_ns, 1),
        }
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "number": number,
        "repeat": repeat,
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=15, help="timings per figure")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    result = measure(args.number, args.repeat)
    print(f"Python {result['python']} on {result['machine']}")
    print(f"{'rule':<10}{'direct':>10}{'engine.call':>13}{'extra':>10}{'overhead':>10}{'pin':>10}")
    for name, row in result["results"].items():
        print(
            f"{name:<10}{row['direct_ns']:>8.1f}ns{row['call_ns']:>11.1f}ns"
            f"{row['call_extra_ns']:>8.1f}ns{row['call_overhead_pct']:>9.2f}%"
            f"{row['pin_ns']:>8.1f}ns"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
