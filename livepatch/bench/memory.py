"""``memory``: load/check/swap/purge/unload cycles and resident memory."""

from __future__ import annotations

import gc
import time
from typing import Any

from ..engine import Engine
from ..examples.spam import SpamRules, rule_source, sample_messages
from .common import (
    ProgressFn,
    _no_progress,
    _rss_bytes,
)

# Memory


def measure_memory(cycles: int, warmup: int, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Resident memory over load/check/swap/purge/unload cycles of the spam rules.

    Each cycle loads a new version (the bundled ``spam_v2`` with a unique
    comment), checks it, swaps it in, calls it once, then purges and unloads
    the version it replaced and counts whether it was freed. RSS is read
    after ``warmup`` cycles (caches filled) and after the last one.
    """
    engine = Engine("bench-memory")
    engine.add_slot("spam", SpamRules)
    base = rule_source("spam_v2.py")
    msg = sample_messages()[1]
    freed = 0
    unloaded = 0
    previous: str | None = None

    def cycle(i: int) -> bool | None:
        nonlocal previous
        version = engine.load("spam", f"{base}\n# cycle {i}\n", f"spam_cycle_{i}.py")
        if not engine.check(version).ok:  # pragma: no cover - bundled rules pass
            raise RuntimeError(f"{version} failed its check")
        engine.swap(version)
        engine.call("spam", "classify", msg)
        result = None
        if previous is not None:
            engine.purge(previous)
            result = engine.unload(previous).freed
        previous = version
        return result

    try:
        for i in range(warmup):
            cycle(-1 - i)
        gc.collect()
        rss_start = _rss_bytes()
        started = time.perf_counter()
        for i in range(cycles):
            result = cycle(i)
            if result is not None:
                unloaded += 1
                freed += result
            if i % 10 == 0:
                progress(i / max(1, cycles))
        elapsed = time.perf_counter() - started
        gc.collect()
        rss_end = _rss_bytes()
    finally:
        engine.close()
    mb = 1024 * 1024
    return {
        "cycles": cycles,
        "warmup_cycles": warmup,
        "unloaded": unloaded,
        "freed": freed,
        "not_freed": unloaded - freed,
        "rss_start_mb": round(rss_start / mb, 2),
        "rss_end_mb": round(rss_end / mb, 2),
        "rss_growth_mb": round((rss_end - rss_start) / mb, 2),
        "ms_per_cycle": round(elapsed / max(1, cycles) * 1e3, 3),
    }
