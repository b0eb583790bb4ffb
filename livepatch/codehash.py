"""Line-independent hashes of code objects, for the symbol tables' ``=``/``~``.

A hash covers everything that affects behaviour (bytecode, names, constants,
nested code, the exception table) and nothing that records where the code
sits, so moving a function does not make it "changed".
"""

from __future__ import annotations

import hashlib
from types import CodeType
from typing import Final

__all__ = ["code_hash", "hash_code_memo", "short_hash"]


def short_hash(text: str) -> str:
    """A 12-hex-digit digest of ``text`` (the size of every symbol-table hash)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


_NESTED: Final = (CodeType, tuple, frozenset)


def _const_key(value: object, memo: dict[int, str]) -> object:
    """A deterministic stand-in for a constant: frozensets are sorted (their
    order follows string hashing, randomised per process) and nested code
    objects stand for their own hash. Other constants stand for themselves."""
    if isinstance(value, CodeType):
        return "<code " + hash_code_memo(value, memo) + ">"
    if isinstance(value, tuple):
        return tuple(_const_key(v, memo) if isinstance(v, _NESTED) else v for v in value)
    if isinstance(value, frozenset):
        return "{" + ",".join(sorted(repr(_const_key(v, memo)) for v in value)) + "}"
    return value


def hash_code_memo(code: CodeType, memo: dict[int, str]) -> str:
    cached = memo.get(id(code))
    if cached is not None:
        return cached
    consts = code.co_consts
    for const in consts:
        if isinstance(const, _NESTED):
            consts = _const_key(consts, memo)  # type: ignore[assignment]
            break
    # Everything that affects behaviour and nothing that records where the
    # code sits: co_firstlineno, co_linetable and co_filename are left out so
    # moving a function does not change its hash. Jumps in co_code and the
    # exception table are relative offsets, not lines.
    header = repr(
        (
            code.co_name,
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags,
            code.co_names,
            code.co_varnames,
            code.co_freevars,
            code.co_cellvars,
            consts,
        )
    )
    h = hashlib.blake2b(header.encode("utf-8", "surrogatepass"), digest_size=6)
    h.update(code.co_code)
    h.update(code.co_exceptiontable)
    digest = h.hexdigest()
    memo[id(code)] = digest
    return digest


def code_hash(code: CodeType) -> str:
    """A 12-hex-digit hash of ``code`` and its nested code objects that ignores
    line and column information."""
    return hash_code_memo(code, {})
