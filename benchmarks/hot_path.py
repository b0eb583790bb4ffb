"""Hot-path overhead: ``engine.call`` and ``pin`` against a direct call.

Run: ``.venv/bin/python benchmarks/hot_path.py [--number N] [--repeat R]``

Goals (issue 14): ``engine.call`` on a trivial rule costs at most 60 ns more
than calling the function directly, and at most 1 % more on the bundled
``classify``; a whole ``with engine.pin(slot) as rules: rules.f(x)`` block at
most 150 ns more than ``f(x)`` (2 % on ``classify``). For counts that do not
move with the machine's load, see ``livepatch bench --section callgrind``.

Both implementations of ``engine.call`` are measured side by side: the C
dispatcher (``livepatch._speedups``, what ``Engine()`` uses when it was built)
and the pure-Python reference (``Engine(accelerate=False)``). The columns:

- ``direct``: the rule function called directly;
- ``call``: ``engine.call(slot, symbol, msg)`` outside any pin (the usual case);
- ``in pin``: the same call inside ``with engine.pin(slot)``, which runs on the
  pinned version;
- ``pin``: ``rules.symbol(msg)`` on the object ``pin`` returns;
- ``pin block``: a whole ``with engine.pin(slot) as r: r.symbol(msg)``.

Each figure is the best of R timings of N calls (the minimum is the least
disturbed by the rest of the machine); the timings of one row are interleaved,
so drift in machine speed hits them alike, and everything runs in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from typing import Any

from livepatch import Engine
from livepatch.examples.spam import Message, SpamRules, rule_source

TRIVIAL = "def trivial(x):\n    return x\n"


def best_ns(stmt: str, namespace: dict[str, Any], number: int) -> float:
    """Time of one call in one timing of ``number`` calls, in nanoseconds."""
    return timeit.Timer(stmt, globals=namespace).timeit(number) / number * 1e9


def make_engine(accelerate: bool) -> Engine:
    engine = Engine(f"bench-{'c' if accelerate else 'py'}", accelerate=accelerate)
    engine.add_slot("trivial", None)
    engine.add_slot("spam", SpamRules)
    for slot, source in (("trivial", TRIVIAL), ("spam", rule_source("spam_v2.py"))):
        version = engine.load(slot, source)
        assert engine.check(version).ok
        engine.swap(version)
    return engine


def measure(number: int, repeat: int) -> dict[str, Any]:
    engines = {"c": make_engine(True), "python": make_engine(False)}
    implementations = [name for name, engine in engines.items() if engine.accelerated]
    implementations.append("python")
    msg = Message("promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/win",))
    ns: dict[str, Any] = {"msg": msg, **{f"engine_{k}": e for k, e in engines.items()}}
    ns["trivial"] = engines["python"].function("trivial@1", "trivial")
    ns["classify"] = engines["python"].function("spam@1", "classify")
    rows = {}
    for rule, slot, n in (("trivial", "trivial", number), ("classify", "spam", number // 20)):
        n = max(1, n)
        stmts = {"direct": f"{rule}(msg)"}
        for impl in implementations:
            stmts[f"call_{impl}"] = f"engine_{impl}.call({slot!r}, {rule!r}, msg)"
            stmts[f"in_pin_{impl}"] = f"engine_{impl}.call({slot!r}, {rule!r}, msg)"
            stmts[f"block_{impl}"] = f"with engine_{impl}.pin({slot!r}) as r:\n    r.{rule}(msg)"
        stmts["pin"] = f"rules.{rule}(msg)"
        times: dict[str, list[float]] = {key: [] for key in stmts}
        for _ in range(repeat):
            for key, stmt in stmts.items():
                if key.startswith("in_pin_") or key == "pin":
                    engine = engines[key.removeprefix("in_pin_") if key != "pin" else "python"]
                    with engine.pin(slot) as rules:
                        ns["rules"] = rules
                        times[key].append(best_ns(stmt, ns, n))
                else:
                    times[key].append(best_ns(stmt, ns, n))
        best = {key: min(values) for key, values in times.items()}
        direct = best["direct"]
        row: dict[str, Any] = {"direct_ns": round(direct, 1)}
        for impl in implementations:
            for what in ("call", "in_pin", "block"):
                t = best[f"{what}_{impl}"]
                row[impl + "_" + what] = {
                    "ns": round(t, 1),
                    "extra_ns": round(t - direct, 1),
                    "overhead_pct": round((t / direct - 1) * 100, 2),
                }
        row["pin"] = {
            "ns": round(best["pin"], 1),
            "extra_ns": round(best["pin"] - direct, 1),
            "overhead_pct": round((best["pin"] / direct - 1) * 100, 2),
        }
        rows[rule] = row
    for engine in engines.values():
        engine.close()
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "number": number,
        "repeat": repeat,
        "accelerator": "livepatch._speedups" if "c" in implementations else None,
        "implementations": implementations,
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
    if result["accelerator"]:
        print("engine.call: C dispatcher (livepatch._speedups) vs pure Python (accelerate=False)")
    else:
        print("engine.call: pure Python only (livepatch._speedups is not built)")
    labels = {"c": "C", "python": "Python"}
    print(f"{'rule':<10}{'path':<30}{'ns':>9}{'extra':>11}{'overhead':>10}")
    for rule, row in result["results"].items():
        print(f"{rule:<10}{'direct':<30}{row['direct_ns']:>9.1f}")
        names = {"call": "engine.call", "in_pin": "engine.call in pin", "block": "pin block"}
        entries = [
            (f"{names[what]} ({labels[impl]})", row[f"{impl}_{what}"])
            for what in ("call", "in_pin", "block")
            for impl in result["implementations"]
        ]
        entries.append(("rules.NAME (pin)", row["pin"]))
        for label, cell in entries:
            print(
                f"{'':<10}{label:<30}{cell['ns']:>9.1f}"
                f"{cell['extra_ns']:>+9.1f}ns{cell['overhead_pct']:>+9.2f}%"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
