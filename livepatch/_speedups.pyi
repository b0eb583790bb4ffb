"""Types of the optional C accelerator (livepatch/_speedups.c)."""

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, final

@final
class Dispatcher:
    """``Engine.call`` in C; see the C source for what it reads."""

    pinning: int
    def __new__(
        cls,
        fast: dict[str, tuple[Any, ...]],
        pins: ContextVar[Any],
        fallback: Callable[..., Any],
    ) -> Dispatcher: ...
    def __call__(self, slot: str, symbol: str, /, *args: Any, **kwargs: Any) -> Any: ...
    @property
    def fast(self) -> dict[str, tuple[Any, ...]] | None: ...
    @property
    def pins(self) -> ContextVar[Any] | None: ...
    @property
    def fallback(self) -> Callable[..., Any] | None: ...
    @property
    def __wrapped__(self) -> Callable[..., Any] | None: ...

@final
class Counter:
    """A call counter advanced in place by the dispatcher."""

    def __new__(cls) -> Counter: ...
    def __iter__(self) -> Counter: ...
    def __next__(self) -> int: ...
    @property
    def value(self) -> int: ...
