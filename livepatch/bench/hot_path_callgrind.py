"""``callgrind``: instructions per call on the hot path, counted by valgrind.

Wall-clock nanoseconds move with whatever else the machine runs; the number
of instructions a call executes does not. Each figure runs a child Python
under ``valgrind --tool=callgrind`` that sets up the bundled rules exactly as
``hot_path`` does and then runs one statement in a loop, ``calls`` times and
again ``2 * calls`` times: the difference is what the statement costs (see
:func:`_per_call`); the same with ``pass`` as the statement is the loop's own
cost, taken off.
``PYTHONHASHSEED=0`` keeps dict layouts, and so the counts, the same from
run to run. Statements: the direct call, ``engine.call`` before any pin and
again after pins were used, ``rules.f`` on an open pin, a whole
``with engine.pin(slot) as rules: rules.f(msg)`` block, and for scale
``rules.f`` of an open pin inside ``with`` a C lock.

``_child`` is that child.
"""

from __future__ import annotations

import shutil
import threading
from typing import Any

from .common import ProgressFn, _no_progress, callgrind_instructions

__all__ = ["STATEMENTS", "measure_callgrind"]

#: The statements measured, by key; ``{f}`` is the rule function's name.
STATEMENTS = {
    "loop": "pass",
    "loop_after_pins": "pass",
    "direct": "{f}(msg)",
    "call": "engine.call(SLOT, {f!r}, msg)",
    "call_after_pins": "engine.call(SLOT, {f!r}, msg)",
    "pin_call": "rules.{f}(msg)",
    "pin_block": "with engine.pin(SLOT) as r:\n            r.{f}(msg)",
    # For scale: rules.f of an open pin inside `with` a C lock, whose
    # __enter__ and __exit__ do next to nothing (but are bound per block, as
    # the pin's hooks are not): what a `with` statement costs anyway.
    "lock_block": "with LOCK:\n            rules.{f}(msg)",
}

#: The rules measured: function name, slot, calls per run (classify is slow).
RULES = {"trivial": ("trivial", 1), "classify": ("spam", 4)}


def _child(rule: str, statement: str, calls: int) -> None:
    """Set up the rules as the hot_path section does, then loop ``calls`` times."""
    from .hot_path import hot_engine

    engine, functions, msg = hot_engine()
    slot = RULES[rule][0]
    namespace: dict[str, Any] = {
        "engine": engine,
        "msg": msg,
        "SLOT": slot,
        "LOCK": threading.Lock(),
        **functions,
    }
    if statement.endswith("_after_pins"):
        for _ in range(100):
            with engine.pin(slot):
                engine.call(slot, rule, msg)
    body = STATEMENTS[statement].format(f=rule)
    code = f"def loop(n):\n    for _ in range(n):\n        {body}\n"
    exec(code, namespace)
    if statement in ("pin_call", "lock_block"):
        with engine.pin(slot) as rules:
            namespace["rules"] = rules
            namespace["loop"](calls)
    else:
        namespace["loop"](calls)


def _per_call(valgrind: str, rule: str, statement: str, calls: int) -> float:
    """Instructions per run of ``statement``: the difference between a child
    that runs it ``2 * calls`` times and one that runs it ``calls`` times,
    so that everything else the child does cancels out. The two children's
    command lines have the same length (the count zero-padded): a longer one
    moves the process's memory layout, and with it, by alignment, a few
    hundred thousand instructions of start-up (about 200 per call of
    ``classify`` when the loop of ``pass`` was a separate child)."""
    width = len(str(2 * calls))
    once = _instructions(valgrind, rule, statement, str(calls).zfill(width))
    twice = _instructions(valgrind, rule, statement, str(2 * calls).zfill(width))
    return (twice - once) / calls


def _instructions(valgrind: str, rule: str, statement: str, calls: str) -> int:
    code = (
        "import sys; from livepatch.bench.hot_path_callgrind import _child; "
        "_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    )
    return callgrind_instructions(valgrind, code, [rule, statement, calls], timeout=900)


def measure_callgrind(calls: int, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Instructions per call of each statement on each rule (``calls`` 0: skipped)."""
    valgrind = shutil.which("valgrind")
    if calls <= 0:
        return {"available": False, "reason": "skipped (run `livepatch bench --section callgrind`)"}
    if valgrind is None:
        return {"available": False, "reason": "valgrind not installed (apt-get install valgrind)"}
    rows: dict[str, Any] = {}
    steps = len(RULES) * len(STATEMENTS)
    step = 0
    for rule, (_slot, divisor) in RULES.items():
        n = max(1, calls // divisor)
        counts: dict[str, float] = {}
        for statement in STATEMENTS:
            counts[statement] = _per_call(valgrind, rule, statement, n)
            step += 1
            progress(step / steps)
        # Each statement less the loop that ran it (with the same warm-up).
        per = {
            k: v - counts["loop_after_pins" if k.endswith("_after_pins") else "loop"]
            for k, v in counts.items()
            if not k.startswith("loop")
        }
        direct = per["direct"]
        rows[rule] = {
            "calls_per_run": n,
            **{f"{k}_instructions": round(v) for k, v in per.items()},
            **{
                f"{k}_extra_instructions": round(v - direct)
                for k, v in per.items()
                if k != "direct"
            },
            "call_overhead_pct": round((per["call"] / direct - 1) * 100, 2),
            "pin_block_overhead_pct": round((per["pin_block"] / direct - 1) * 100, 2),
            "lock_block_overhead_pct": round((per["lock_block"] / direct - 1) * 100, 2),
        }
    return {"available": True, "calls": calls, "hash_seed": 0, "rules": rows}
