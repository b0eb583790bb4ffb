"""Pinning: one request runs wholly on one version.

``with engine.pin(slot) as rules:`` reads the active version once and
keeps it for the block, for ``rules.f(...)`` and for every nested
``engine.call`` of the slot (through a context variable, so threads and
asyncio tasks each see their own pin).
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
        fn = self._ns.get(name)
        if name.startswith("__") or not callable(fn):
            raise AttributeError(f"{self._v.id} has no callable {name!r}")
        version = self._v
        target: Callable[..., Any] = fn

        def counted(*args: Any, **kwargs: Any) -> Any:
            next(version.calls)
            try:
                return target(*args, **kwargs)
            except BaseException:
                next(version.errors)
                raise

        counted.__name__ = name
        counted.__doc__ = getattr(fn, "__doc__", None)
        # Cache on the instance: the next lookup skips __getattr__.
        self.__dict__[name] = counted
        return counted

    def __repr__(self) -> str:
        return f"<PinnedRules {self._v.id}>"


#: Keys of a pins dict that are not slots (slots are str): the pins dict
#: this one replaced, and the (version, thread) this block counted.
_PARENT: Any = object()
_OPENED: Any = object()


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
        engine._pins.set(opened)
        return typing.cast(PinnedRules, rules)

    def __exit__(self, *exc_info: object) -> None:
        pins: dict[Any, Any] | None = self._engine._pins.get()
        if pins is None or _OPENED not in pins:
            return
        version, thread = pins[_OPENED]
        self._engine._pins.set(pins[_PARENT])
        left = version.pins.get(thread, 0) - 1
        if left > 0:
            version.pins[thread] = left
        else:
            version.pins.pop(thread, None)
