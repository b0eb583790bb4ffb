"""``load_check``: load + check of generated modules of growing size."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any

from ..engine import Engine
from .common import (
    ProgressFn,
    _no_progress,
)

# Load + check


#: Digits of every generated name and constant: functions are the same
#: size in a module of 100 functions as in one of 10,000 (up to 900,000).
_WIDTH = 6
_OFFSET = 10 ** (_WIDTH - 1)


def generated_module(functions: int, tag: str = "") -> str:
    """A module of ``functions`` small functions that call one another.

    Every function reads a module constant and a function of ``math``, and
    nine in ten call the one before, so the check has names to resolve.
    ``tag`` goes in the docstring to make two sources of one size differ.
    Names and constants have the same number of digits at every size
    (``f000042``, ``100042``), so that 10 times the functions is 10 times
    the source: with ``f42`` and ``42`` the 10,000-function module was
    10.38 times the bytes of the 1,000-function one, and growth measured
    longer functions as well as more of them.
    """
    lines = [
        f'"""Generated benchmark module: {functions} functions{f" ({tag})" if tag else ""}."""',
        "",
        "import math",
        "",
        "SCALE = 3",
        "",
    ]
    for i in range(functions):
        call = f"f{i - 1:0{_WIDTH}d}(x) + " if i % 10 else ""
        lines += [
            "",
            f"def f{i:0{_WIDTH}d}(x: int) -> int:",
            f"    return {call}math.floor(x * SCALE) + {_OFFSET + i}",
            "",
        ]
    return "\n".join(lines)


def measure_load_check(
    sizes: Sequence[int],
    repeat: int,
    progress: ProgressFn = _no_progress,
    *,
    instructions: bool = False,
) -> dict[str, Any]:
    """``load`` and ``check`` time of generated modules, median of ``repeat``.

    Next to them, ``python_compile_exec_ms``: CPython's own ``compile`` and
    ``exec`` of the same source into a plain dict, the floor any loader pays.
    ``instructions``: also the growth from 1,000 to 10,000 functions in
    instructions, under callgrind (:mod:`.load_check_callgrind`), which a
    busy machine does not move.
    """
    rows = []
    steps = len(sizes) * repeat
    step = 0
    for n in sizes:
        load_ms: list[float] = []
        check_ms: list[float] = []
        total_ms: list[float] = []
        floor_ms: list[float] = []
        for r in range(repeat):
            source = generated_module(n, f"run {r}")
            engine = Engine("bench-load")
            engine.add_slot("gen", None)
            try:
                gc.collect()
                t0 = time.perf_counter()
                version = engine.load("gen", source, f"gen_{n}.py")
                t1 = time.perf_counter()
                report = engine.check(version)
                t2 = time.perf_counter()
                if not report.ok:  # pragma: no cover - generated modules pass
                    raise RuntimeError(f"the generated module of {n} functions failed its check")
            finally:
                engine.close()
            gc.collect()
            t3 = time.perf_counter()
            namespace: dict[str, Any] = {"__name__": "livepatch_bench_floor"}
            exec(compile(source, f"gen_{n}.py", "exec"), namespace)
            t4 = time.perf_counter()
            namespace.clear()
            load_ms.append((t1 - t0) * 1e3)
            check_ms.append((t2 - t1) * 1e3)
            total_ms.append((t2 - t0) * 1e3)
            floor_ms.append((t4 - t3) * 1e3)
            step += 1
            progress(step / steps)
        rows.append(
            {
                "functions": n,
                "load_ms": round(statistics.median(load_ms), 2),
                "check_ms": round(statistics.median(check_ms), 2),
                "total_ms": round(statistics.median(total_ms), 2),
                "best_total_ms": round(min(total_ms), 2),
                "python_compile_exec_ms": round(statistics.median(floor_ms), 2),
                "source_bytes": len(generated_module(n, "run 0").encode()),
            }
        )

    def growth(key: str) -> float | None:
        by_size = {row["functions"]: row[key] for row in rows}
        if 1_000 in by_size and 10_000 in by_size and by_size[1_000]:
            return round(by_size[10_000] / by_size[1_000], 2)
        return None

    # The goal's ratio, and beside it what bounds it from below: the source
    # of 10,000 functions is more than 10x the bytes of the one of 1,000
    # (longer names and numbers), and CPython's compile of it alone grows
    # faster than 10x (see load_check_callgrind for why, in instructions).
    result: dict[str, Any] = {
        "repeat": repeat,
        "sizes": rows,
        "growth_10000_vs_1000": growth("total_ms"),
        "python_compile_exec_growth": growth("python_compile_exec_ms"),
        "source_growth": growth("source_bytes"),
    }
    if instructions:
        from .load_check_callgrind import measure_load_instructions

        result["instructions"] = measure_load_instructions((1_000, 10_000))
    return result
