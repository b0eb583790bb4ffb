"""Reading a code object's bytecode fast: global loads and binds, attribute
chains, imports.

The resolve-check has a budget (see the design's Performance section), so
the walk does not build a :class:`dis.Instruction` per opcode. In
``co_code`` inline cache entries are zeroed (opcode 0 is ``CACHE``) and
every opcode sits at an even offset, so the opcode bytes alone
(``co_code[::2]``) can be searched with a compiled byte pattern for the few
opcodes of interest, in C. Line numbers are looked up only where they are
reported. ``tests/test_resolve.py`` cross-checks this reader against
:mod:`dis` on the stdlib corpus.
"""

from __future__ import annotations

import dis
import re
import sys
from dataclasses import dataclass
from types import CodeType
from typing import Final

__all__ = ["SETUP_ANNOTATIONS", "AttrChain", "RawScan", "line_at", "read_sites", "scan"]

_MISSING: Final = object()

# Opcode numbers, looked up once; -1 for opcodes this Python lacks.
_OP: Final = dis.opmap
_EXTENDED_ARG: Final = dis.EXTENDED_ARG
_LOAD_CONST: Final = _OP["LOAD_CONST"]
_LOAD_GLOBAL: Final = _OP["LOAD_GLOBAL"]
_LOAD_NAME: Final = _OP["LOAD_NAME"]
_STORE_NAME: Final = _OP["STORE_NAME"]
_DELETE_NAME: Final = _OP["DELETE_NAME"]
_STORE_GLOBAL: Final = _OP["STORE_GLOBAL"]
_DELETE_GLOBAL: Final = _OP["DELETE_GLOBAL"]
_LOAD_ATTR: Final = _OP["LOAD_ATTR"]
_LOAD_METHOD: Final = _OP.get("LOAD_METHOD", -1)  # folded into LOAD_ATTR in 3.12
_STORE_ATTR: Final = _OP["STORE_ATTR"]
_DELETE_ATTR: Final = _OP["DELETE_ATTR"]
_IMPORT_NAME: Final = _OP["IMPORT_NAME"]
_IMPORT_FROM: Final = _OP["IMPORT_FROM"]
_IMPORT_STAR: Final = _OP.get("IMPORT_STAR", -1)  # an intrinsic call from 3.12 on
_CALL_INTRINSIC_1: Final = _OP.get("CALL_INTRINSIC_1", -1)
_INTRINSIC_IMPORT_STAR: Final = 2
_GLOBAL_LOADS: Final = frozenset({_LOAD_GLOBAL, _LOAD_NAME})
_NAME_BINDS: Final = frozenset({_STORE_NAME, _DELETE_NAME})
_GLOBAL_BINDS: Final = frozenset({_STORE_GLOBAL, _DELETE_GLOBAL})
_ATTR_LOADS: Final = frozenset({_LOAD_ATTR, _LOAD_METHOD} - {-1})
_ATTR_STORES: Final = frozenset({_STORE_ATTR, _DELETE_ATTR})


def _cache_table() -> list[int]:
    """Inline cache units after each opcode (``dis`` keeps this as a list
    indexed by opcode in 3.11/3.12 and as a dict by name later)."""
    found = getattr(dis, "_inline_cache_entries", None)
    table = [0] * 256
    if isinstance(found, list | tuple):
        for op, count in enumerate(found[:256]):
            table[op] = count
    elif isinstance(found, dict):
        for key, count in found.items():
            op = _OP.get(key, -1) if isinstance(key, str) else key
            if isinstance(op, int) and 0 <= op < 256:
                table[op] = count
    return table


_CACHES: Final = _cache_table()

# LOAD_GLOBAL keeps a "push NULL" flag in the low bit of its argument (3.11+);
# LOAD_ATTR does the same with a "method" flag from 3.12 on.
_ATTR_SHIFT: Final = 1 if sys.version_info >= (3, 12) else 0


def _byte_class(*opcodes: int) -> re.Pattern[bytes]:
    return re.compile(b"[" + b"".join(re.escape(bytes([op])) for op in opcodes if op >= 0) + b"]")


# Code that runs later only needs its global lookups and bindings; the module
# body also needs its imports.
_CODE_OPS: Final = _byte_class(
    _LOAD_GLOBAL,
    _LOAD_NAME,
    _STORE_NAME,
    _DELETE_NAME,
    _STORE_GLOBAL,
    _DELETE_GLOBAL,
    _IMPORT_NAME,
)
# read_sites() wants the global loads only.
_READ_OPS: Final = _byte_class(_LOAD_GLOBAL, _LOAD_NAME)
#: The SETUP_ANNOTATIONS opcode as a byte, to find in ``co_code[::2]``.
SETUP_ANNOTATIONS: Final = bytes([_OP["SETUP_ANNOTATIONS"]])
_MODULE_OPS: Final = _byte_class(
    _LOAD_GLOBAL,
    _LOAD_NAME,
    _STORE_NAME,
    _DELETE_NAME,
    _STORE_GLOBAL,
    _DELETE_GLOBAL,
    _IMPORT_NAME,
    _IMPORT_FROM,
    _IMPORT_STAR,
    _CALL_INTRINSIC_1,
)


@dataclass(frozen=True, slots=True)
class AttrChain:
    """``base.a.b`` read in code: a global name followed by attribute loads.

    ``attrs`` holds (attribute, bytecode offset) per read, so a problem can
    point at the exact failing instruction.
    """

    base: str
    attrs: tuple[tuple[str, int], ...]


def line_at(code: CodeType, offset: int) -> int | None:
    """The source line of the instruction at byte ``offset`` of ``code``
    (what ``dis`` reports as ``positions.lineno``)."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


class _Lines:
    """Line lookups for offsets visited in increasing order (one pass over
    ``co_lines()``), used for the module body's many top-level stores."""

    __slots__ = ("_end", "_it", "_line")

    def __init__(self, code: CodeType) -> None:
        self._it = iter(code.co_lines())
        self._end = -1
        self._line: int | None = None

    def at(self, offset: int) -> int | None:
        while offset >= self._end:
            try:
                _start, self._end, self._line = next(self._it)
            except StopIteration:
                return self._line
        return self._line


def _arg(ops: bytes, args: bytes, i: int) -> int:
    """The full argument of the instruction at unit ``i``, EXTENDED_ARG
    prefixes included."""
    arg = args[i]
    shift = 8
    i -= 1
    while i >= 0 and ops[i] == _EXTENDED_ARG:
        arg |= args[i] << shift
        shift += 8
        i -= 1
    return arg


def _next_instruction(ops: bytes, i: int) -> int:
    """Unit index of the instruction after the one at ``i`` (skipping its
    cache entries and the next one's EXTENDED_ARG prefixes)."""
    i += 1 + _CACHES[ops[i]]
    end = len(ops)
    while i < end and (ops[i] == _EXTENDED_ARG or ops[i] == 0):
        i += 1
    return i


def _previous_instruction(ops: bytes, i: int) -> int:
    """Unit index of the instruction before the one at ``i``, or of a cache
    entry (opcode 0) when that instruction has caches; -1 at the start."""
    i -= 1
    while i >= 0 and ops[i] == _EXTENDED_ARG:
        i -= 1
    return i


_NO_LINES: Final[dict[str, list[int]]] = {}
_NO_ORIGINS: Final[dict[str, str]] = {}
_NO_OFFSETS: Final[dict[str, int]] = {}  # shared, never written: CodeFacts are read-only
_NO_NAMES: Final[frozenset[str]] = frozenset()
_NO_STARS: Final[list[tuple[str, int | None]]] = []
_NO_DELETES: Final[set[str]] = set()  # shared, never written: only module scans add


class RawScan:
    """The result of reading one code object's bytecode once."""

    __slots__ = (
        "attr_stores",
        "chains",
        "deletes",
        "global_binds",
        "global_reads",
        "import_origins",
        "imports",
        "name_binds",
        "name_reads",
        "probed",
        "star_imports",
        "store_lines",
        "store_offsets",
    )

    def __init__(self, module: bool) -> None:
        # One of these per code object: containers most code never fills are
        # created on first use (allocation is most of the cost of a scan).
        self.global_reads: dict[str, int] = {}
        self.name_reads: dict[str, int] | None = None
        self.global_binds: dict[str, int] | None = None
        self.name_binds: dict[str, int] | None = None
        self.chains: list[AttrChain] | None = None
        self.probed: set[str] | None = None
        self.attr_stores: set[str] | None = None
        self.imports = False  # an ``import`` statement in code that runs later
        # module body only
        self.deletes: set[str] = set() if module else _NO_DELETES
        self.store_lines: dict[str, list[int]] = {} if module else _NO_LINES
        self.store_offsets: dict[str, list[int]] = {} if module else _NO_LINES
        self.import_origins: dict[str, str] = {} if module else _NO_ORIGINS
        self.star_imports: list[tuple[str, int | None]] = [] if module else _NO_STARS


def _relative(module: str, level: object) -> str:
    return ("." * level if isinstance(level, int) else "") + module


def _const_before(code: CodeType, ops: bytes, args: bytes, i: int) -> tuple[object, int]:
    """The constant loaded by the instruction before unit ``i`` if it is a
    LOAD_CONST (``_MISSING`` otherwise), and that instruction's index."""
    p = _previous_instruction(ops, i)
    if p >= 0 and ops[p] == _LOAD_CONST:
        return code.co_consts[_arg(ops, args, p)], p
    return _MISSING, p


def _follow(
    out: RawScan, names: tuple[str, ...], ops: bytes, args: bytes, base: str, j: int
) -> None:
    """What the instructions from unit ``j`` do with the global ``base`` just
    loaded: attribute reads (a chain), an attribute store, or (for
    ``hasattr``) the global passed to it."""
    size = len(ops)
    op = ops[j]
    if op == _LOAD_GLOBAL:
        if base == "hasattr":
            if out.probed is None:
                out.probed = set()
            out.probed.add(names[_arg(ops, args, j) >> 1])
        return
    attrs: list[tuple[str, int]] = []
    while op in _ATTR_LOADS:
        a = _arg(ops, args, j)
        attrs.append((names[a >> _ATTR_SHIFT if op == _LOAD_ATTR else a], j * 2))
        j = _next_instruction(ops, j)
        if j >= size:
            break
        op = ops[j]
    if attrs:
        if out.chains is None:
            out.chains = []
        out.chains.append(AttrChain(base, tuple(attrs)))
    if j < size and op in _ATTR_STORES:
        # ``sys.ps1 = ">>> "``: this code gives the module that attribute at
        # run time, so reading it elsewhere is not a missing attribute.
        if out.attr_stores is None:
            out.attr_stores = set()
        out.attr_stores.add(".".join([base, *(a for a, _off in attrs), names[_arg(ops, args, j)]]))


# After a global load, only these next opcodes need a closer look.
_FOLLOW: Final = frozenset(
    op for op in (_LOAD_ATTR, _LOAD_METHOD, _STORE_ATTR, _DELETE_ATTR, _LOAD_GLOBAL) if op >= 0
)


def _module_store(
    out: RawScan,
    name: str,
    i: int,
    ops: bytes,
    lines: _Lines,
    pending: tuple[str, object, object] | None,
    pending_origin: str | None,
) -> None:
    """Record a store of the module body: where it is, and the import it binds.

    An import binds with a store right after IMPORT_NAME or IMPORT_FROM;
    ``from m import a, b`` repeats the pair per name.
    """
    line = lines.at(i * 2)
    if line is not None:
        out.store_lines.setdefault(name, []).append(line)
    out.store_offsets.setdefault(name, []).append(i * 2)
    p = _previous_instruction(ops, i)
    if pending is not None and p >= 0 and ops[p] in (_IMPORT_NAME, _IMPORT_FROM):
        out.import_origins[name] = _import_origin(
            pending, pending_origin if ops[p] == _IMPORT_FROM else None, name
        )


def scan(code: CodeType, *, module: bool) -> RawScan:
    """Read ``code``'s global lookups, bindings, attribute chains and (for
    the ``module`` body) imports."""
    out = RawScan(module)
    names = code.co_names
    if not names:
        return out  # every opcode of interest takes its argument from co_names
    raw = code.co_code
    ops = raw[::2]
    args = raw[1::2]
    size = len(ops)
    caches = _CACHES
    follow = _FOLLOW
    global_reads = out.global_reads
    lines = _Lines(code) if module else None
    pending: tuple[str, object, object] | None = None  # (module, level, fromlist)
    pending_origin: str | None = None

    for match in (_MODULE_OPS if module else _CODE_OPS).finditer(ops):
        i = match.start()
        op = ops[i]
        arg = _arg(ops, args, i) if i and ops[i - 1] == _EXTENDED_ARG else args[i]

        if op in _GLOBAL_LOADS:
            if op == _LOAD_GLOBAL:
                name = names[arg >> 1]
                if name not in global_reads:
                    global_reads[name] = i * 2
            else:
                name = names[arg]
                if out.name_reads is None:
                    out.name_reads = {}
                out.name_reads.setdefault(name, i * 2)
            j = i + 1 + caches[op]
            while j < size and (ops[j] == 0 or ops[j] == _EXTENDED_ARG):
                j += 1
            if j < size and ops[j] in follow:
                _follow(out, names, ops, args, name, j)
        elif op in _NAME_BINDS:
            name = names[arg]
            if out.name_binds is None:
                out.name_binds = {}
            out.name_binds.setdefault(name, i * 2)
            if module and op == _DELETE_NAME:
                out.deletes.add(name)
            if module and op == _STORE_NAME and lines is not None:
                _module_store(out, name, i, ops, lines, pending, pending_origin)
        elif op in _GLOBAL_BINDS:
            name = names[arg]
            if out.global_binds is None:
                out.global_binds = {}
            out.global_binds.setdefault(name, i * 2)
            if module and op == _STORE_GLOBAL and lines is not None:
                # The module body stores with STORE_GLOBAL a name that some
                # function declares ``global``; imports bind it that way too.
                _module_store(out, name, i, ops, lines, pending, pending_origin)
            elif module and op == _DELETE_GLOBAL:
                out.deletes.add(name)
        elif op == _IMPORT_NAME and not module:
            out.imports = True
        elif op == _IMPORT_NAME:
            fromlist, p = _const_before(code, ops, args, i)
            level, _q = _const_before(code, ops, args, p) if p >= 0 else (_MISSING, -1)
            pending = (
                names[arg],
                0 if level is _MISSING else level,
                None if fromlist is _MISSING else fromlist,
            )
            pending_origin = None
        elif op == _IMPORT_FROM and pending is not None:
            imported, level, fromlist = pending
            if fromlist is None:
                # ``import a.b as c`` fetches the submodule with IMPORT_FROM
                pending_origin = _relative(imported, level)
            else:
                dotted = f"{imported}.{names[arg]}" if imported else names[arg]
                pending_origin = _relative(dotted, level)
        elif pending is not None and (
            op == _IMPORT_STAR or (op == _CALL_INTRINSIC_1 and arg == _INTRINSIC_IMPORT_STAR)
        ):
            line = lines.at(i * 2) if lines is not None else None
            out.star_imports.append((_relative(pending[0], pending[1]), line))
            pending = None
    return out


def _import_origin(pending: tuple[str, object, object], origin: str | None, bound: str) -> str:
    """Where the object an import statement bound came from."""
    if origin is not None:
        return origin
    module, level, _fromlist = pending
    # ``import a.b.c`` binds the top package ``a``; ``import a as x`` binds ``a``.
    top = module.split(".", 1)[0]
    return _relative(top if bound == top else module, level)


def read_sites(code: CodeType, name: str) -> list[tuple[int, int | None]]:
    """(offset, line) of every instruction in ``code`` that loads global
    ``name`` (LOAD_GLOBAL, or LOAD_NAME in a class body)."""
    if name not in code.co_names:
        return []
    index = code.co_names.index(name)
    raw = code.co_code
    ops = raw[::2]
    args = raw[1::2]
    out: list[tuple[int, int | None]] = []
    for match in _READ_OPS.finditer(ops):
        i = match.start()
        op = ops[i]
        arg = _arg(ops, args, i)
        if (op == _LOAD_GLOBAL and arg >> 1 == index) or (op == _LOAD_NAME and arg == index):
            out.append((i * 2, line_at(code, i * 2)))
    return out
