"""``hot_path``: ``engine.call`` and ``pin`` against a direct call, timed."""

from __future__ import annotations

import timeit
from typing import Any

from ..engine import Engine
from ..examples.spam import Message, SpamRules, rule_source
from .common import (
    ProgressFn,
    _no_progress,
)

# Hot path

TRIVIAL = "def trivial(x):\n    return x\n"


def _best_ns(stmt: str, namespace: dict[str, Any], number: int) -> float:
    """Time of one run of ``stmt`` in nanoseconds, from one timing of ``number`` runs."""
    timer = timeit.Timer(stmt, globals=namespace)
    return timer.timeit(number=number) / number * 1e9


def hot_engine() -> tuple[Engine, dict[str, Any], Message]:
    """The engine the hot-path figures use: a trivial rule and the bundled
    ``classify``, active; their functions, and the message they are called on."""
    engine = Engine("bench-hot")
    engine.add_slot("trivial", None)
    engine.add_slot("spam", SpamRules)
    functions = {}
    for slot, name, source in (
        ("trivial", "trivial", TRIVIAL),
        ("spam", "classify", rule_source("spam_v2.py")),
    ):
        version = engine.load(slot, source, f"{slot}.py")
        if not engine.check(version).ok:  # pragma: no cover - bundled rules pass
            raise RuntimeError(f"{version} failed its check")
        engine.swap(version)
        functions[name] = engine.function(version, name)
    msg = Message("promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/win",))
    return engine, functions, msg


def measure_hot_path(
    number: int, repeat: int, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """``engine.call`` and ``pin`` against a direct call, ns per call.

    Four statements per rule, interleaved in every repeat so that drift in
    the machine's speed hits them alike; each figure is the best of
    ``repeat`` timings (the least disturbed by the rest of the machine):
    the direct call, ``engine.call``, a call on the rules of an open ``pin``
    block, and a whole ``with engine.pin(...)`` block around one call.
    """
    engine, functions, msg = hot_engine()
    ns: dict[str, Any] = {"engine": engine, "msg": msg, **functions}
    rows: dict[str, Any] = {}
    plan = (("trivial", "trivial", number), ("classify", "spam", max(1, number // 20)))
    steps = len(plan) * repeat
    step = 0
    try:
        for name, slot, n in plan:
            statements = {
                "direct": f"{name}(msg)",
                "call": f"engine.call({slot!r}, {name!r}, msg)",
                "pin_call": f"rules.{name}(msg)",
                "pin_block": f"with engine.pin({slot!r}) as r:\n    r.{name}(msg)",
            }
            timings: dict[str, list[float]] = {key: [] for key in statements}
            for _ in range(repeat):
                for key, stmt in statements.items():
                    if key == "pin_call":
                        # Only this statement runs inside an open pin: while
                        # any pin is open, engine.call takes its pinned path.
                        with engine.pin(slot) as rules:
                            ns["rules"] = rules
                            timings[key].append(_best_ns(stmt, ns, n))
                        del ns["rules"]
                    else:
                        timings[key].append(_best_ns(stmt, ns, n))
                step += 1
                progress(step / steps)
            best = {key: min(values) for key, values in timings.items()}
            direct = best["direct"]
            rows[name] = {
                "calls_per_timing": n,
                "direct_ns": round(direct, 1),
                "call_ns": round(best["call"], 1),
                "pin_call_ns": round(best["pin_call"], 1),
                "pin_block_ns": round(best["pin_block"], 1),
                "call_extra_ns": round(best["call"] - direct, 1),
                "call_ratio": round(best["call"] / direct, 3),
                "call_overhead_pct": round((best["call"] / direct - 1) * 100, 2),
                "pin_call_extra_ns": round(best["pin_call"] - direct, 1),
                "pin_block_extra_ns": round(best["pin_block"] - direct, 1),
                "pin_block_overhead_pct": round((best["pin_block"] / direct - 1) * 100, 2),
            }
    finally:
        engine.close()
    return {
        "accelerated": engine.accelerated,
        "number": number,
        "repeat": repeat,
        "rules": rows,
    }
