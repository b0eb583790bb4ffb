"""livepatch: hot-swap versioned rule modules inside a running Python process.

The engine core (:class:`Engine`) imports neither IPython nor prompt-toolkit.
``%load_ext livepatch`` loads the ``%hotswap`` magics from ``ipython_ext``,
imported only when IPython asks for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .engine import (
    Engine,
    EngineStatus,
    Event,
    PinnedRules,
    SlotInfo,
    SwapResult,
    UnloadResult,
    VersionInfo,
)
from .errors import (
    BadState,
    Busy,
    CheckFailed,
    Conflict,
    LivepatchError,
    LoadFailed,
    TooLarge,
    Unauthenticated,
    UnknownSlot,
    UnknownVersion,
)
from .native import NativeInterface
from .states import VersionState

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext livepatch``: register the ``%hotswap`` magics.

    ``ipython_ext`` (and with it IPython) is imported only here, so importing
    livepatch never pulls in IPython.
    """
    importlib.import_module("ipython_ext").load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext livepatch``: remove ``%hotswap`` and stop engines it started."""
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
