"""Reclaim: is an unloaded version's code gone, and if not, what holds it?

GHC's unloadObj frees an object once nothing refers to it; here the garbage
collector decides, and these functions prove it (weak references), count
the calls still running on a version (from the threads' stacks, so the hot
path keeps no counter), and name the kinds of objects that keep it alive.

An engine process freezes what it holds once it serves (:func:`freeze`):
a full collection then walks only what was made since, instead of stopping
every call and control request for the whole heap (about 9 ms for the demo
engine's 29,000 tracked objects; ``benchmarks/gc_pause.py``). Frozen
objects are invisible to the collector, so whatever must see a version's
cycles or its referrers does it :func:`thawed`.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import types
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = ["all_dead", "freeze", "holders", "thawed", "threads_running", "weak_namespace"]

#: Whether :func:`freeze` froze this process (a host's own freeze is its own).
_frozen = False


def freeze() -> int:
    """Collect once, then move every object still tracked out of the
    collector's sight (``gc.freeze``); returns how many. For the engine
    process, once it serves: start-up's objects live as long as it does."""
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = True
    return gc.get_freeze_count()


@contextlib.contextmanager
def thawed() -> Iterator[None]:
    """The block sees every object again (a full collection frees a frozen
    version's cycles, ``gc.get_referrers`` finds its holders); what survives
    is frozen again after it. A no-op unless :func:`freeze` ran."""
    if not _frozen:
        yield
        return
    gc.unfreeze()
    try:
        yield
    finally:
        gc.freeze()


def weak_namespace(refs: list[weakref.ref[Any]]) -> dict[str, Any] | None:
    """A version's namespace, found through whatever weakly-held object survives.

    After unload the module object may be gone while a running function
    still keeps its globals alive, so functions are asked too.
    """
    for ref in refs:
        obj = ref()
        if isinstance(obj, types.ModuleType):
            return obj.__dict__
        if isinstance(obj, types.FunctionType):
            return obj.__globals__
    return None


def threads_running(namespace: dict[str, Any] | None) -> set[int]:
    """Ids of the threads whose stack has a frame running code of ``namespace``."""
    if namespace is None:
        return set()
    running = set()
    for thread_id, frame in sys._current_frames().items():
        walker: types.FrameType | None = frame
        while walker is not None:
            if walker.f_globals is namespace:
                running.add(thread_id)
                break
            walker = walker.f_back
    return running


def all_dead(refs: list[weakref.ref[Any]]) -> bool:
    """True when every weakly-referenced object has been freed."""
    return all(ref() is None for ref in refs)


def holders(refs: list[weakref.ref[Any]], namespace: dict[str, Any] | None) -> dict[str, int]:
    """Kinds of objects that still refer to the version's module or code.

    Threads running the version's code are named by their innermost frame of
    it (``frame block()``); other referrers are counted by type, leaving out
    the version's own objects referring to each other.
    """
    counts: dict[str, int] = {}
    if namespace is not None:
        for frame in sys._current_frames().values():
            walker: types.FrameType | None = frame
            while walker is not None:
                if walker.f_globals is namespace:
                    kind = f"frame {walker.f_code.co_name}()"
                    counts[kind] = counts.get(kind, 0) + 1
                    break
                walker = walker.f_back
    alive: list[Any] = []
    for ref in refs:
        obj = ref()
        if obj is not None:
            alive.append(obj)
    own = {id(obj) for obj in alive} | {id(alive), id(namespace)}
    for obj in alive:
        for referrer in gc.get_referrers(obj):
            if id(referrer) in own or isinstance(referrer, types.FrameType):
                continue
            if isinstance(referrer, types.FunctionType):
                kind = f"function {referrer.__qualname__}"
            else:
                kind = type(referrer).__name__
            counts[kind] = counts.get(kind, 0) + 1
    obj = None
    alive.clear()
    # Sorted: the collector's referrer order varies from run to run, a report should not.
    return dict(sorted(counts.items()))
