"""What kind of code a file holds, and which slots take it (no engine imports).

Shared by the CLI, the shell and the magics, which pick a slot by the file's
kind (``.c``/``.so``: native, anything else: Python) and refuse a file of the
wrong kind for the slot named, saying which kind the slot takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "ELF_MAGIC",
    "NATIVE_SUFFIXES",
    "check_slot_kind",
    "file_kind",
    "is_elf",
    "named_for_another_kind",
]

#: File name endings that mean native code (a C source or a shared object).
NATIVE_SUFFIXES: Final = (".c", ".so")

#: The first four bytes of every ELF file (as :mod:`livepatch.native` checks).
ELF_MAGIC: Final = b"\x7fELF"


def is_elf(data: bytes) -> bool:
    """True when ``data`` starts with the ELF magic number."""
    return data[:4] == ELF_MAGIC


def file_kind(filename: str) -> str:
    """``"native"`` for ``.c``, ``.so`` and ``.so.N`` names, else ``"python"``."""
    base = filename.lower()
    return "native" if base.endswith(NATIVE_SUFFIXES) or ".so." in base else "python"


_TAKES: Final = {"native": "C sources (.c) or shared objects (.so)", "python": "Python sources"}


def named_for_another_kind(slot: str, takes: str, filename: str) -> str | None:
    """Why a slot that takes ``takes`` code refuses a file named ``filename``
    (``None`` when the name fits): what the engine says whichever front end
    sent it (a fleet push included), instead of a compiler's error about the
    first line. Only names that say their kind count: a ``.py`` for a native
    slot, a ``.c``/``.so`` for a Python one (cells and other names pass)."""
    kind = file_kind(filename)
    if takes == "native" and filename.lower().endswith(".py"):
        kind = "python"
    elif takes == "python" and kind == "native":
        pass
    else:
        return None
    what = "native code" if kind == "native" else "Python"
    return (
        f"{filename} is {what}, but slot {slot!r} is a {takes} slot and takes "
        f"{_TAKES[takes]}: use a {kind} slot"
    )


def check_slot_kind(slots: Sequence[Mapping[str, Any]], slot: str, filename: str) -> None:
    """``ValueError`` when slot ``slot`` takes another kind of file than ``filename``.

    ``slots`` is ``status()["slots"]``; an unknown slot is left to the engine
    (its error lists the slots).
    """
    found = next((s for s in slots if s.get("name") == slot), None)
    if found is None:
        return
    takes = str(found.get("kind", "python"))
    kind = file_kind(filename)
    if kind == takes:
        return
    others = [str(s["name"]) for s in slots if s.get("kind", "python") == kind]
    hint = f": use --slot {others[0]}" if len(others) == 1 else ""
    raise ValueError(
        f"slot {slot!r} is a {takes} slot and takes {_TAKES.get(takes, takes)}; "
        f"{filename} is {'native code' if kind == 'native' else 'Python'}{hint}"
    )
