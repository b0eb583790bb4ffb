"""Exception-table guards: whether a failing lookup sits inside a ``try``
that expects it (``except NameError``, ``except AttributeError``).

Consulted only for names and attributes that fail to resolve, so it may use
:mod:`dis` freely. :func:`exception_entries` reads CPython's compact
exception table (3.11+) directly.
"""

from __future__ import annotations

import dis
from collections.abc import Collection
from types import CodeType

__all__ = ["exception_entries", "guarded_by"]


def _varints(table: bytes) -> list[int]:
    """The exception table's numbers: 6 bits per byte, most significant
    first, bit 0x40 set while more bytes follow. (Bit 0x80 only marks where
    an entry starts; every entry is exactly four numbers.)"""
    out: list[int] = []
    value = 0
    for byte in table:
        value = (value << 6) | (byte & 0x3F)
        if not byte & 0x40:
            out.append(value)
            value = 0
    return out


def exception_entries(code: CodeType) -> list[tuple[int, int, int]]:
    """(start, end, handler) byte offsets from ``co_exceptiontable``."""
    numbers = _varints(code.co_exceptiontable)
    return [
        (numbers[i] * 2, (numbers[i] + numbers[i + 1]) * 2, numbers[i + 2] * 2)
        for i in range(0, len(numbers) - 3, 4)
    ]


def _catches(
    instructions: dict[int, dis.Instruction],
    ordered: list[int],
    handler: int,
    exceptions: Collection[str],
) -> bool:
    """Whether the ``except`` clauses starting at ``handler`` name one of
    ``exceptions``. A bare ``except:`` or ``except Exception:`` does not
    count: it would hide a typo rather than expect a missing name."""
    first = instructions.get(handler)
    if first is None or first.opname != "PUSH_EXC_INFO":
        return False
    index = ordered.index(handler) + 1
    loaded: list[str] = []
    while index < len(ordered):
        instr = instructions[ordered[index]]
        index += 1
        if instr.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "LOAD_DEREF"):
            loaded.append(str(instr.argval))
        elif instr.opname == "BUILD_TUPLE":
            continue
        elif instr.opname == "CHECK_EXC_MATCH":
            if any(name in exceptions for name in loaded):
                return True
            loaded = []
            # On no match the next instruction jumps to the following clause.
            if index >= len(ordered):
                return False
            jump = instructions[ordered[index]]
            if not jump.opname.startswith("POP_JUMP") or jump.argval not in instructions:
                return False
            index = ordered.index(jump.argval)
        else:
            return False
    return False


def guarded_by(code: CodeType, offset: int, exceptions: Collection[str]) -> bool:
    """Whether the instruction at ``offset`` runs inside a ``try`` whose
    ``except`` clause names one of ``exceptions`` (``AttributeError`` for an
    attribute read, ``NameError`` for a name), looking through enclosing
    ``with``/``finally`` blocks and non-matching clauses to outer ``try``
    statements of the same code object."""
    entries = exception_entries(code)
    if not entries:
        return False
    instructions = {i.offset: i for i in dis.get_instructions(code)}
    ordered = sorted(instructions)
    seen: set[int] = set()
    position = offset
    while position not in seen:
        seen.add(position)
        handler = next((t for s, e, t in entries if s <= position < e), None)
        if handler is None:
            return False
        if _catches(instructions, ordered, handler, exceptions):
            return True
        # Not caught here: the exception leaves this handler (finally, with
        # cleanup, no matching clause) through code that the next enclosing
        # table entry covers.
        position = handler
    return False
