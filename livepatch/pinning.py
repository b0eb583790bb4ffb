"""Pinning: one request runs wholly on one version.

``with engine.pin(slot) as rules:`` reads the active version once and
keeps it for the block, for ``rules.f(...)`` and for every nested
``engine.call`` of the slot (through a context variable, so threads and
asyncio tasks each see their own pin).
"""

from __future__ import annotations

import contextvars
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


class Pin:
    """The context manager behind :meth:`Engine.pin`.

    Lock-free: a request that takes a lock on entry and exit convoys behind
    the GIL once several threads pin at once. ``version.pins`` is keyed by
    thread id and each thread only touches its own key, so single dict
    operations (atomic under the GIL) are enough.
    """

    __slots__ = ("_engine", "_slot", "_thread", "_token", "_version")

    def __init__(self, engine: Engine, slot: str) -> None:
        self._engine = engine
        self._slot = slot
        self._version: Version | None = None
        self._token: contextvars.Token[dict[str, Version] | None] | None = None
        self._thread = 0

    def __enter__(self) -> PinnedRules:
        engine = self._engine
        slot = self._slot
        pins = engine._pins.get()
        if pins is not None and slot in pins:
            version = pins[slot]  # nested pin: keep the outer version
        else:
            try:
                version = engine._active[slot]
            except KeyError:
                raise engine._no_active(slot) from None
            if not engine._pinning:
                # From the first pin on, calls consult the context variable.
                # Raised before the variable is set, and never lowered, so no
                # call can miss a pin (a lowered flag would need a lock).
                engine._pinning = 1
                if engine._dispatcher is not None:
                    engine._dispatcher.pinning = 1
            self._token = engine._pins.set(
                {slot: version} if pins is None else {**pins, slot: version}
            )
        rules = version.rules
        if rules is None:  # unloaded between the read and here
            self._reset()
            raise BadState(f"{version.id} was unloaded", version=version.id)
        thread = self._thread = threading.get_ident()
        version.pins[thread] = version.pins.get(thread, 0) + 1
        self._version = version
        return rules

    def _reset(self) -> None:
        if self._token is not None:
            self._engine._pins.reset(self._token)
            self._token = None

    def __exit__(self, *exc_info: object) -> None:
        self._reset()
        version = self._version
        if version is not None:
            left = version.pins.get(self._thread, 0) - 1
            if left > 0:
                version.pins[self._thread] = left
            else:
                version.pins.pop(self._thread, None)
            self._version = None
