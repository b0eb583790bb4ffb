"""livepatch: hot-swap versioned rule modules inside a running Python process.

The engine core (:class:`Engine`) imports neither IPython nor prompt-toolkit.
``%load_ext livepatch`` loads the ``%hotswap`` magics from ``ipython_ext``,
imported only when IPython asks for them.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any

if typing.TYPE_CHECKING:
    from .engine import Engine
    from .errors import (
        BadState,
        Busy,
        CheckFailed,
        Conflict,
        LivepatchError,
        LoadFailed,
        StorageError,
        TooLarge,
        Unauthenticated,
        UnknownSlot,
        UnknownVersion,
    )
    from .model import (
        EngineStatus,
        Event,
        SlotInfo,
        SwapResult,
        UnloadResult,
        VersionInfo,
    )
    from .native import NativeInterface
    from .pinning import PinnedRules
    from .states import VersionState

# Public name -> the module that defines it. Imported on first use (PEP 562),
# so ``import livepatch`` (and every CLI verb, which only needs the client)
# does not pay for the engine core, the resolver or the native backend.
_LAZY = {
    "Engine": "engine",
    "EngineStatus": "model",
    "Event": "model",
    "SlotInfo": "model",
    "SwapResult": "model",
    "UnloadResult": "model",
    "VersionInfo": "model",
    "PinnedRules": "pinning",
    "NativeInterface": "native",
    "VersionState": "states",
    **dict.fromkeys(
        [
            "BadState",
            "Busy",
            "CheckFailed",
            "Conflict",
            "LivepatchError",
            "LoadFailed",
            "StorageError",
            "TooLarge",
            "Unauthenticated",
            "UnknownSlot",
            "UnknownVersion",
        ],
        "errors",
    ),
}

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (see ``_LAZY``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livepatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


#: How many times this module ran (``importlib.reload`` runs it again in the
#: same namespace), and at which run the magics were last loaded.
_executions: int = globals().get("_executions", 0) + 1
_loaded_at: int = globals().get("_loaded_at", 0)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext livepatch``: register the ``%hotswap`` magics.

    ``ipython_ext`` (and with it IPython) is imported only here, so importing
    livepatch never pulls in IPython.
    """
    global _loaded_at
    # Run again by importlib.reload (``%reload_ext livepatch``): reload the magics too.
    fresh = 0 < _loaded_at < _executions
    _loaded_at = _executions
    importlib.import_module("ipython_ext").load_ipython_extension(ipython, fresh_code=fresh)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext livepatch``: remove ``%hotswap`` (engines it started run on
    until the kernel exits; ``%load_ext`` takes them back)."""
    importlib.import_module("ipython_ext").unload_ipython_extension(ipython)


__all__ = [
    "BadState",
    "Busy",
    "CheckFailed",
    "Conflict",
    "Engine",
    "EngineStatus",
    "Event",
    "LivepatchError",
    "LoadFailed",
    "NativeInterface",
    "PinnedRules",
    "SlotInfo",
    "StorageError",
    "SwapResult",
    "TooLarge",
    "Unauthenticated",
    "UnknownSlot",
    "UnknownVersion",
    "UnloadResult",
    "VersionInfo",
    "VersionState",
    "__version__",
    "load_ipython_extension",
    "unload_ipython_extension",
]
