"""Module attributes that exist only at run time (weak, ``W``), and why.

A function may read an attribute off an imported module that the module
does not have *yet*: the interpreter sets ``sys.last_traceback`` after an
uncaught exception, ``curses.initscr()`` fills in ``curses.ACS_*``, and a
module may bind a name from one of its functions with ``global`` (it exists
once that function ran). None of that is a missing attribute; like a name
bound only through ``global`` in the rule module itself, it is weak: it
resolves at run time or not at all. :func:`weak_attribute` says whether an
attribute is one of those and gives the reason, one line.
"""

from __future__ import annotations

import sys
import threading
import weakref
from types import CodeType, ModuleType
from typing import Final

from livepatch.bytecode import ModuleFacts

__all__ = ["conditional_definition", "runtime_reason", "weak_attribute"]

_AFTER_UNCAUGHT: Final = "set by the interpreter after an uncaught exception"

# Attributes the interpreter itself, or a C-level call, sets on a module
# later: (module, attribute) -> reason. Prefixes end with ``*``.
_RUNTIME: Final[dict[str, dict[str, str]]] = {
    "sys": {
        "last_type": _AFTER_UNCAUGHT,
        "last_value": _AFTER_UNCAUGHT,
        "last_traceback": _AFTER_UNCAUGHT,
        "last_exc": _AFTER_UNCAUGHT,
        "ps1": "set by the interpreter in interactive mode",
        "ps2": "set by the interpreter in interactive mode",
        "tracebacklimit": "read by the interpreter only once someone sets it",
    },
    "curses": {
        "ACS_*": "set by curses.initscr()",
        "LINES": "set by curses.initscr()",
        "COLS": "set by curses.initscr()",
        "COLORS": "set by curses.start_color()",
        "COLOR_PAIRS": "set by curses.start_color()",
    },
}

_lock = threading.Lock()
# module -> the facts of its code (None: no Python code); weak so that an
# unloaded module is not kept alive by this cache.
_facts_of: weakref.WeakKeyDictionary[ModuleType, ModuleFacts | None] = weakref.WeakKeyDictionary()


def _module_code(module: ModuleType) -> CodeType | None:
    """The compiled top-level code of a Python module, from its loader
    (the bytecode cache when there is one); None for C modules."""
    loader = getattr(module, "__loader__", None)
    get_code = getattr(loader, "get_code", None)
    name = getattr(module, "__name__", None)
    if get_code is None or not isinstance(name, str):
        return None
    try:
        code = get_code(name)
    except Exception:  # noqa: BLE001 - no code to read: nothing is weak
        return None
    return code if isinstance(code, CodeType) else None


def _facts(module: ModuleType) -> ModuleFacts | None:
    """The :class:`ModuleFacts` of another module's code, read once per module."""
    with _lock:
        if module in _facts_of:
            return _facts_of[module]
    code = _module_code(module)
    # Not through module_facts(): its small cache belongs to the version
    # being checked and built, and must not be evicted by other modules.
    facts = ModuleFacts(code) if code is not None else None
    with _lock:
        _facts_of[module] = facts
    return facts


def runtime_reason(module_name: str, attr: str) -> str | None:
    """Why the interpreter (or a C call) sets ``module_name.attr`` later, if it does."""
    table = _RUNTIME.get(module_name)
    if table is None:
        return None
    reason = table.get(attr)
    if reason is not None:
        return reason
    for key, why in table.items():
        if key.endswith("*") and attr.startswith(key[:-1]):
            return why
    return None


def weak_attribute(module: ModuleType, attr: str) -> str | None:
    """Why ``module.attr``, missing now, exists at run time: a one-line
    reason, or None when it is simply missing."""
    name = getattr(module, "__name__", "")
    reason = runtime_reason(name if isinstance(name, str) else "", attr)
    if reason is not None:
        return reason
    if module is sys:
        return None
    facts = _facts(module)
    if facts is not None and attr in facts.weak:
        where, _offset = facts.weak[attr]
        return f"bound by {name}.{where.qualname}() through `global`"
    return None


def conditional_definition(module: ModuleType, attr: str) -> bool:
    """Whether ``module``'s own body binds ``attr`` in a statement that did
    not run (a branch for another platform, an optional import that failed)."""
    facts = _facts(module)
    return facts is not None and attr in facts.top_stores and attr not in facts.top_deletes
