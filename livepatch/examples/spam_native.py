"""The host side of the native spam demo: a C signature and its rule files.

The native slot is the teaching half of livepatch: the same lifecycle as the
``spam`` slot, on real ELF shared objects (see :mod:`livepatch.native`).
Its interface is one C function, ``int classify(const char *text)``,
returning 1 for spam and 0 otherwise. The rule sources live next to the
Python ones in ``livepatch/examples/rules/`` and are compiled by the engine.
"""

from __future__ import annotations

import ctypes

from ..native import NativeInterface, find_compiler

__all__ = [
    "NATIVE_BROKEN_RULES",
    "NATIVE_GOOD_RULES",
    "NATIVE_SLOT",
    "SpamNativeRules",
    "compiler_available",
]

#: The slot name the bundled demo engine gives the native rules.
NATIVE_SLOT = "spam_native"

#: ``int classify(const char *text)``: 1 for spam, 0 if not.
SpamNativeRules = NativeInterface(
    {"classify": (ctypes.c_int, [("text", ctypes.c_char_p)])}, name="SpamNativeRules"
)

#: C versions that pass the check, in the order they are meant to be loaded.
NATIVE_GOOD_RULES = ("spam_native_v1.c", "spam_native_v2.c")

#: C versions that fail, each for one teaching reason.
NATIVE_BROKEN_RULES = {
    "spam_native_undefined.c": "calls link_score(), which no library defines",
}


def compiler_available() -> bool:
    """Whether a C compiler is there to build the native rules."""
    return find_compiler() is not None
