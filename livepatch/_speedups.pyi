"""Types of the optional C accelerator (livepatch/_speedups.c)."""

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, final

@final
class Dispatcher:
    """``Engine.call`` and ``Engine.pin`` in C; see the C source for what it reads."""

    def __new__(
        cls,
        fast: dict[str, Rules],
        pins: ContextVar[Any],
        fallback: Callable[..., Any],
        no_active: Callable[[str], Exception],
    ) -> Dispatcher: ...
    def __call__(self, slot: str, symbol: str, /, *args: Any, **kwargs: Any) -> Any: ...
    def pin(self, slot: str, /) -> AbstractContextManager[Rules]: ...
    @property
    def fast(self) -> dict[str, Rules] | None: ...
    @property
    def pins(self) -> ContextVar[Any] | None: ...
    @property
    def fallback(self) -> Callable[..., Any] | None: ...
    @property
    def __wrapped__(self) -> Callable[..., Any] | None: ...

@final
class Rules:
    """The rules of one pinned version: ``rules.NAME`` is the version's own
    function, the call counted when it is looked up (see livepatch/pinning.py)."""

    def __new__(
        cls,
        version: Any,
        id: str,
        namespace: dict[str, Any],
        calls: Iterator[int],
        errors: Iterator[int],
    ) -> Rules: ...
    @property
    def version(self) -> str: ...
    @property
    def _v(self) -> Any: ...
    @property
    def _ns(self) -> dict[str, Any] | None: ...
    def open_pins(self) -> dict[int, int]: ...
    #: A shadow run's sampler of the calls the dispatcher makes on these rules.
    _sampler: Sampler | None
    def __getattr__(self, name: str) -> Callable[..., Any]: ...

@final
class PinStack:
    """The open pins of one context: the engine's context variable's value."""

    def get(self, slot: str, /) -> Rules | None: ...
    def __len__(self) -> int: ...

@final
class PinHook:
    """``__enter__`` or ``__exit__`` of what ``engine.pin(slot)`` returns."""

    def __call__(self, *args: object) -> Any: ...

@final
class Counter:
    """A call counter advanced in place by the dispatcher."""

    def __new__(cls) -> Counter: ...
    def __iter__(self) -> Counter: ...
    def __next__(self) -> int: ...
    @property
    def value(self) -> int: ...

@final
class Sampler:
    """A shadow run's sampler: about ``sample`` of the dispatched calls are
    timed and appended to ``queue`` as ``(symbol, args, kwargs, result, error,
    elapsed_ns)``, or counted as dropped while it holds ``capacity`` items."""

    def __new__(cls, queue: deque[Any], capacity: int, sample: float, seed: int) -> Sampler: ...
    countdown: int
    @property
    def sampled(self) -> int: ...
    @property
    def dropped(self) -> int: ...

class EngineMethod:
    """``Engine.call`` or ``Engine.pin`` on the class: the instance's
    dispatcher (in the ``__slots__`` member ``member``) serves it, else ``func``."""

    __wrapped__: Callable[..., Any]
    def __new__(cls, func: Callable[..., Any], kind: str, member: Any) -> EngineMethod: ...
    def __get__(self, obj: object, objtype: type | None = None) -> Any: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
