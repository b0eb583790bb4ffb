"""livepatch: hot-swap versioned rule modules inside a running Python process.

The engine core (:class:`Engine`) imports neither IPython nor prompt-toolkit.
"""

from __future__ import annotations

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
from .states import VersionState

__version__ = "0.1.0"

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
]

