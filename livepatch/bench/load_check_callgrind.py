"""``load_check`` in instructions: the growth figure that holds still.

Timed, load + check of 10,000 functions against 1,000 moves by a whole
unit from run to run on a busy machine (caches, the other processes). The
instructions it executes do not. Each figure is a child Python under
``valgrind --tool=callgrind`` that generates the module, then does one step
(nothing, CPython's ``compile`` alone, or the engine's load + check); the
step's cost is the child's count less the one that did nothing. The
children's command lines have the same length, and ``PYTHONHASHSEED=0``
keeps dict layouts the same (see :mod:`.hot_path_callgrind`).

Beside the engine's growth, what bounds it from below: CPython's own
``compile`` of the same source (with the collector paused, as the engine
compiles), the source's bytes, and the parser's token array. CPython's
parser keeps every token of a source in one array that it grows by
doubling and fills with zeroed token records, so it pays for the next power
of two above the token count: the 10,000-function module's 295,010 tokens
take 524,288 records, 1.78 per token, the 1,000-function one's 29,510 take
32,768, 1.11 per token.

``_child`` is that child.
"""

from __future__ import annotations

import gc
import io
import os
import shutil
import sys
import tokenize
from collections.abc import Sequence
from typing import Any

from .common import ProgressFn, _no_progress, callgrind_instructions
from .load_check import generated_module

__all__ = ["MODES", "measure_load_instructions", "parser_token_slots"]

#: The steps measured: nothing (the child's own start-up and the module's
#: generation, taken off the others), CPython's compile alone, the engine.
MODES = ("none", "compile", "load_check")


def _child(functions: int, mode: str) -> None:
    """Generate the module of ``functions`` functions, then run ``mode``."""
    from ..engine import Engine

    source = generated_module(functions, "run 0")
    engine = Engine("bench-load-grind")
    engine.add_slot("gen", None)
    if mode == "compile":
        gc.disable()  # as the engine compiles (pyload.cyclic_gc_paused)
        compile(source, f"gen_{functions}.py", "exec", dont_inherit=True)
        gc.enable()
    elif mode == "load_check":
        version = engine.load("gen", source, f"gen_{functions}.py")
        if not engine.check(version).ok:  # pragma: no cover - generated modules pass
            raise RuntimeError("the generated module failed its check")
    # Straight out: tearing down 10,000 functions is not part of any step.
    sys.stdout.flush()
    os._exit(0)


def _instructions(valgrind: str, functions: str, mode: str) -> int:
    code = (
        "import sys; from livepatch.bench.load_check_callgrind import _child; "
        "_child(int(sys.argv[1]), sys.argv[2].strip())"
    )
    args = [functions, mode.ljust(max(map(len, MODES)))]
    return callgrind_instructions(valgrind, code, args, timeout=1800)


def parser_token_slots(source: str) -> tuple[int, int]:
    """The tokens CPython's parser keeps for ``source``, and the token records
    its array holds by the end (it doubles from one: the next power of two)."""
    skipped = (tokenize.NL, tokenize.COMMENT)
    tokens = sum(
        1 for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skipped
    )
    slots = 1
    while slots < tokens:
        slots *= 2
    return tokens, slots


def measure_load_instructions(
    sizes: Sequence[int] = (1_000, 10_000), progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """Instructions of load + check and of CPython's compile alone, per size,
    and their growth from the first size to the last."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {"available": False, "reason": "valgrind not installed (apt-get install valgrind)"}
    width = len(str(max(sizes)))
    rows = []
    step = 0
    for n in sizes:
        counts = {}
        for mode in MODES:
            counts[mode] = _instructions(valgrind, str(n).zfill(width), mode)
            step += 1
            progress(step / (len(sizes) * len(MODES)))
        source = generated_module(n, "run 0")
        tokens, slots = parser_token_slots(source)
        load_check = counts["load_check"] - counts["none"]
        compiled = counts["compile"] - counts["none"]
        rows.append(
            {
                "functions": n,
                "load_check": load_check,
                "compile": compiled,
                "ours": load_check - compiled,
                "source_bytes": len(source.encode()),
                "tokens": tokens,
                "parser_token_slots": slots,
            }
        )
    first, last = rows[0], rows[-1]

    def growth(key: str) -> float:
        return round(last[key] / first[key], 3)

    return {
        "available": True,
        "hash_seed": 0,
        "sizes": rows,
        "growth": growth("load_check"),
        "compile_growth": growth("compile"),
        "ours_growth": growth("ours"),
        "source_growth": growth("source_bytes"),
        "token_growth": growth("tokens"),
        "token_slot_growth": growth("parser_token_slots"),
    }
