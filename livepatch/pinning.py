"""Pinning: one request runs wholly on one version.

``with engine.pin(slot) as rules:`` reads the active version once and
keeps it for the block, for ``rules.f(...)`` and for every nested
``engine.call`` of the slot (through a context variable, so threads and
asyncio tasks each see their own pin).

``rules.f`` is the version's own function, not a wrapper: a pinned call
then costs what a direct call costs (the version is held by the open pin,
not by each call). Its counting moves accordingly, the same on this path
and in ``livepatch._speedups``:

- a call is counted when ``rules.NAME`` is looked up, so ``rules.f(x)``
  counts one call, exactly;
- an error is counted when an exception raised in the version's code leaves
  the slot's outermost pin block (the request), once however many nested
  blocks it crosses, and not again when ``engine.call`` inside the block
  already counted it;
- a function kept from ``rules.f`` and called again is not counted again,
  and once the block has ended it runs unpinned: ``engine.call`` inside it
  sees the active version. While it runs, unload still counts it in flight
  (from the threads' stacks, as any running code of a version).
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Callable
from typing import Any

from .errors import BadState

if typing.TYPE_CHECKING:
    from .engine import Engine
    from .versions import Version

__all__ = ["Pin", "PinnedRules"]


class PinnedRules:
    """The rules of one pinned version: ``rules.classify(msg)``."""

    def __init__(self, version: Version, namespace: dict[str, Any]) -> None:
        self._v = version
        self._ns = namespace

    @property
    def version(self) -> str:
        """The id of the pinned version."""
        return self._v.id

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Never cached on the instance: every lookup is a call to count.
        fn = self._ns.get(name)
        if name.startswith("__") or not callable(fn):
            raise AttributeError(f"{self._v.id} has no callable {name!r}")
        next(self._v.calls)
        return typing.cast("Callable[..., Any]", fn)

    def __repr__(self) -> str:
        return f"<PinnedRules {self._v.id}>"


#: Keys of a pins dict that are not slots (slots are str): the pins dict
#: this one replaced, and the (version, thread) this block counted.
_PARENT: Any = object()
_OPENED: Any = object()
#: ``(_RAISED, slot)``: a one-item list shared by the nested blocks of the
#: slot, holding the exception ``engine.call`` inside them counted.
_RAISED: Any = object()


def raised_in(exc: BaseException, namespace: dict[str, Any] | None) -> bool:
    """Whether ``exc``'s traceback passes through code of ``namespace``."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals is namespace:
            return True
        tb = tb.tb_next
    return False


def note_counted_error(pins: Any, slot: str, exc: BaseException) -> None:
    """``engine.call`` inside a pin of ``slot`` counted ``exc``: the block's
    ``__exit__`` must not count it again."""
    holder = pins.get((_RAISED, slot)) if isinstance(pins, dict) else None
    if holder is not None:
        holder[0] = exc


class Pin:
    """The context manager behind :meth:`Engine.pin` (the pure-Python path;
    ``livepatch._speedups`` does the same in C).

    The engine's context variable holds this context's open pins: a dict
    slot -> :class:`PinnedRules`, plus the dict it replaced and what the
    block counted, so blocks stack. A block replaces the dict on enter
    (never mutates it) and puts the one it replaced back on exit, so
    threads and asyncio tasks each see their own. The Pin itself keeps no
    state: one object serves any number of blocks, nested or in parallel.

    Lock-free: a request that takes a lock on entry and exit convoys behind
    the GIL once several threads pin at once. ``version.pins`` is keyed by
    thread id and each thread only touches its own key, so single dict
    operations (atomic under the GIL) are enough.
    """

    __slots__ = ("_engine", "_slot")

    def __init__(self, engine: Engine, slot: str) -> None:
        self._engine = engine
        self._slot = slot

    def __enter__(self) -> PinnedRules:
        engine = self._engine
        slot = self._slot
        pins: dict[Any, Any] | None = engine._pins.get()
        rules = pins.get(slot) if pins is not None else None
        if rules is None:
            try:
                version = engine._active[slot]
            except KeyError:
                raise engine._no_active(slot) from None
            found = version.rules
            if not isinstance(found, PinnedRules):  # unloaded between the read and here
                raise BadState(f"{version.id} was unloaded", version=version.id)
            rules = found
        else:
            version = rules._v  # nested pin: keep the outer version
        thread = threading.get_ident()
        version.pins[thread] = version.pins.get(thread, 0) + 1
        opened = {**pins} if pins is not None else {}
        opened.update({slot: rules, _PARENT: pins, _OPENED: (version, thread)})
        if pins is None or slot not in pins:  # the request's block
            opened[(_RAISED, slot)] = [None]
        engine._pins.set(opened)
        return typing.cast(PinnedRules, rules)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        pins: dict[Any, Any] | None = self._engine._pins.get()
        if pins is None or _OPENED not in pins:
            return
        version, thread = pins[_OPENED]
        parent = pins[_PARENT]
        if exc is not None and (parent is None or self._slot not in parent):
            # The request's block ends with an exception: the version's
            # error, unless engine.call counted it (see the module docstring).
            holder = pins.get((_RAISED, self._slot))
            rules: PinnedRules = pins[self._slot]
            if (holder is None or holder[0] is not exc) and raised_in(exc, rules._ns):
                next(version.errors)
        self._engine._pins.set(parent)
        left = version.pins.get(thread, 0) - 1
        if left > 0:
            version.pins[thread] = left
        else:
            version.pins.pop(thread, None)
