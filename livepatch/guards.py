"""Which code can run on this interpreter: guards evaluated at check time.

Rule modules, like the stdlib, carry code for other platforms and optional
features behind guards: ``if sys.platform == "win32":``, ``if _os.name ==
"nt" and delete:``, ``if _HAS_FCOPYFILE:``, ``if sys.version_info >= (3,
12):``. Once the module body ran, some of those guards can only go one way:
they read the interpreter's platform facts, a module-level constant that
nothing rebinds (no function declares it ``global``), or ``hasattr`` of an
imported module. :class:`Reachability` evaluates such conditions straight
from the bytecode (the few instructions before each conditional jump),
drops the edge that cannot be taken, and says whether an instruction can
still be reached from the code's entry. ``and``/``or`` need nothing special:
they are chains of conditional jumps, each decided or not on its own.

Anything it cannot decide keeps both edges, so an undecided guard never
hides a read. It is consulted only for reads that would otherwise be
reported, so a clean module pays nothing.
"""

from __future__ import annotations

import dis
import operator
from collections.abc import Callable, Mapping
from types import CodeType, ModuleType, SimpleNamespace
from typing import Any, Final

from livepatch.excguard import exception_entries
from livepatch.weakattrs import runtime_reason

__all__ = ["Reachability", "decided_value"]

# Facts of the interpreter a guard may test: fixed for the life of the process.
_FIXED_ATTRIBUTES: Final = {
    "sys": frozenset(
        {
            "platform",
            "version_info",
            "hexversion",
            "byteorder",
            "maxsize",
            "implementation",
            "float_info",
            "int_info",
            "hash_info",
            "thread_info",
        }
    ),
    "os": frozenset({"name", "sep", "altsep", "extsep", "pathsep", "linesep", "curdir", "devnull"}),
    "posixpath": frozenset({"sep", "altsep", "extsep", "pathsep", "curdir"}),
    "ntpath": frozenset({"sep", "altsep", "extsep", "pathsep", "curdir"}),
}

_SCALARS: Final = (str, bytes, int, float, type(None))

# String methods a guard calls on a fixed string (``sys.platform.startswith``).
_STR_METHODS: Final = frozenset(
    {"startswith", "endswith", "lower", "upper", "isdigit", "split", "partition"}
)

_COMPARE: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
}

_UNCONDITIONAL: Final = frozenset(
    {"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP", "JUMP_NO_INTERRUPT"}
)
_TERMINAL: Final = frozenset({"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE"})
_JUMPS: Final = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)


class _Unknown(Exception):
    """The value cannot be decided at check time."""


def _safe(value: object) -> bool:
    """A value whose comparisons run no user code and never change."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, tuple):
        return all(_safe(v) for v in value)
    return False


def decided_value(
    namespace: Mapping[str, Any], weak: Mapping[str, object], name: str
) -> tuple[bool, object]:
    """(True, value) when the module global ``name`` is fixed once the body
    ran: a module, or a constant (number, string, bool, None, a tuple of
    them) that no function rebinds through ``global``."""
    if name not in namespace:
        return False, None
    value = namespace[name]
    if isinstance(value, ModuleType):
        return True, value
    if name in weak or not _safe(value):
        return False, None
    return True, value


class _Method:
    """A bound method of a fixed string, to be called with fixed arguments."""

    __slots__ = ("name", "owner")

    def __init__(self, owner: str, name: str) -> None:
        self.owner = owner
        self.name = name


class _Hasattr:
    """The builtin ``hasattr`` seen in a guard."""


_HASATTR: Final = _Hasattr()


class Reachability:
    """Reachable instructions of code objects of one module, given its
    namespace after the body ran. Results are cached per code object."""

    def __init__(
        self,
        namespace: Mapping[str, Any],
        builtins: Mapping[str, Any],
        weak: Mapping[str, object],
        attr_stores: set[str],
    ) -> None:
        self._ns = namespace
        self._builtins = builtins
        self._weak = weak
        self._attr_stores = attr_stores
        self._cache: dict[int, tuple[CodeType, frozenset[int]]] = {}

    # -- values -------------------------------------------------------------

    def _global(self, name: str) -> object:
        known, value = decided_value(self._ns, self._weak, name)
        if known:
            return value
        if name not in self._ns and self._builtins.get(name) is hasattr:
            return _HASATTR
        raise _Unknown

    def _attribute(self, base: object, name: str) -> object:
        if isinstance(base, ModuleType):
            module_name = base.__name__
            value = base.__dict__.get(name, _MISSING)
            if value is _MISSING:
                raise _Unknown
            if isinstance(value, ModuleType):
                return value
            if name in _FIXED_ATTRIBUTES.get(module_name, ()):
                return value
            raise _Unknown
        if isinstance(base, str) and name in _STR_METHODS:
            return _Method(base, name)
        if isinstance(base, tuple | SimpleNamespace) and not name.startswith("_"):
            # sys.version_info.major, sys.implementation.name
            value = getattr(base, name, _MISSING)
            if _safe(value):
                return value
        raise _Unknown

    def _hasattr(self, owner: object, name: object) -> bool:
        if not isinstance(owner, ModuleType) or not isinstance(name, str):
            raise _Unknown
        if runtime_reason(owner.__name__, name) is not None:
            raise _Unknown  # sys.last_traceback: there later, maybe
        if any(stored.endswith("." + name) for stored in self._attr_stores):
            raise _Unknown  # some code of this module sets it
        if name in owner.__dict__:
            return True
        if "__getattr__" in owner.__dict__:
            raise _Unknown  # a lazy module may still produce it
        return False

    def _call(self, func: object, args: list[object]) -> object:
        if func is _HASATTR and len(args) == 2:
            return self._hasattr(args[0], args[1])
        if isinstance(func, _Method) and all(_safe(a) for a in args):
            result = getattr(func.owner, func.name)(*args)
            return tuple(result) if isinstance(result, list) else result
        raise _Unknown

    def _value(self, ins: list[dis.Instruction], j: int, targets: set[int]) -> tuple[object, int]:
        """The value the instruction at index ``j`` pushes, and the index of
        the first instruction computing it. Straight-line code only: an
        instruction some jump lands on (other than the first) may see a
        different stack, so it makes the value unknown."""
        if j < 0:
            raise _Unknown
        instr = ins[j]
        name = instr.opname
        if name == "LOAD_CONST":
            return instr.argval, j
        if name in ("LOAD_GLOBAL", "LOAD_NAME"):
            return self._global(str(instr.argval)), j
        if name in ("LOAD_ATTR", "LOAD_METHOD"):
            base, start = self._operand(ins, j - 1, targets)
            return self._attribute(base, str(instr.argval)), start
        if name == "TO_BOOL":
            return self._operand(ins, j - 1, targets)
        if name == "UNARY_NOT":
            value, start = self._operand(ins, j - 1, targets)
            return not value, start
        if name in ("COMPARE_OP", "IS_OP", "CONTAINS_OP", "BINARY_SUBSCR"):
            right, mid = self._operand(ins, j - 1, targets)
            left, start = self._operand(ins, mid - 1, targets)
            return self._binary(instr, left, right), start
        if name == "BUILD_SLICE":
            parts: list[object] = []
            start = j
            for _ in range(int(instr.arg or 0)):
                value, start = self._operand(ins, start - 1, targets)
                parts.append(value)
            if not all(p is None or isinstance(p, int) for p in parts):
                raise _Unknown
            return slice(*reversed(parts)), start
        if name == "BINARY_SLICE":
            stop, s1 = self._operand(ins, j - 1, targets)
            begin, s2 = self._operand(ins, s1 - 1, targets)
            container, start = self._operand(ins, s2 - 1, targets)
            return self._binary_subscript(container, slice(begin, stop)), start
        if name == "CALL":
            return self._call_at(ins, j, targets)
        raise _Unknown

    def _operand(self, ins: list[dis.Instruction], j: int, targets: set[int]) -> tuple[object, int]:
        if j < 0 or (j + 1 < len(ins) and ins[j + 1].offset in targets):
            raise _Unknown
        return self._value(ins, j, targets)

    def _call_at(self, ins: list[dis.Instruction], j: int, targets: set[int]) -> tuple[object, int]:
        argc = int(ins[j].arg or 0)
        k = j - 1
        if k >= 0 and ins[k].opname == "PRECALL":
            k -= 1
        if k >= 0 and ins[k].opname == "KW_NAMES":
            raise _Unknown
        args: list[object] = []
        start = k + 1
        for _ in range(argc):
            value, start = self._operand(ins, start - 1, targets)
            args.append(value)
        args.reverse()
        func, start = self._operand(ins, start - 1, targets)
        return self._call(func, args), start

    @staticmethod
    def _binary_subscript(container: object, key: object) -> object:
        if not isinstance(container, str | bytes | tuple):
            raise _Unknown
        if not (isinstance(key, int | slice)):
            raise _Unknown
        try:
            return container[key]
        except (IndexError, KeyError, TypeError) as exc:
            raise _Unknown from exc

    def _binary(self, instr: dis.Instruction, left: object, right: object) -> object:
        name = instr.opname
        if name == "IS_OP":
            if not (_safe(left) or isinstance(left, ModuleType)):
                raise _Unknown
            return (left is right) != bool(instr.arg)
        if name == "BINARY_SUBSCR":
            return self._binary_subscript(left, right)
        if not _safe(left) or not _safe(right):
            raise _Unknown
        if name == "CONTAINS_OP":
            if not isinstance(right, str | bytes | tuple):
                raise _Unknown
            try:
                return (left in right) != bool(instr.arg)
            except TypeError as exc:
                raise _Unknown from exc
        compare = _COMPARE.get(str(instr.argval)) or _COMPARE.get(str(instr.argrepr))
        if compare is None:
            raise _Unknown
        try:
            return compare(left, right)
        except TypeError as exc:
            raise _Unknown from exc

    def _decided(self, ins: list[dis.Instruction], j: int, targets: set[int]) -> bool | None:
        """Whether the conditional jump at index ``j`` is taken: True, False,
        or None when that cannot be decided now."""
        instr = ins[j]
        try:
            value, _start = self._operand(ins, j - 1, targets)
        except _Unknown:
            return None
        if instr.offset in targets:
            return None  # the value may come from another path
        if not (_safe(value) or isinstance(value, ModuleType)):
            return None
        name = instr.opname
        if name.endswith("IF_NOT_NONE"):
            return value is not None
        if name.endswith("IF_NONE"):
            return value is None
        if name.endswith("IF_TRUE") or name == "JUMP_IF_TRUE_OR_POP":
            return bool(value)
        if name.endswith("IF_FALSE") or name == "JUMP_IF_FALSE_OR_POP":
            return not value
        return None

    # -- reachability --------------------------------------------------------

    def offsets(self, code: CodeType) -> frozenset[int]:
        """Byte offsets of the instructions of ``code`` that can still run."""
        cached = self._cache.get(id(code))
        if cached is not None and cached[0] is code:
            return cached[1]
        # EXTENDED_ARG is a prefix, not an instruction of its own: a jump
        # to it lands on the instruction it extends.
        every = list(dis.get_instructions(code))
        ins = [i for i in every if i.opcode != dis.EXTENDED_ARG]
        index: dict[int, int] = {}
        k = 0
        for instr in every:
            index[instr.offset] = k
            if instr.opcode != dis.EXTENDED_ARG:
                k += 1
        targets = {
            ins[index[i.argval]].offset
            for i in ins
            if i.opcode in _JUMPS and index.get(i.argval, len(ins)) < len(ins)
        }
        handlers = exception_entries(code)
        seen: set[int] = set()
        stack = [0] if ins else []
        while stack:
            k = stack.pop()
            if k in seen or k >= len(ins):
                continue
            seen.add(k)
            instr = ins[k]
            offset = instr.offset
            for start, end, target in handlers:
                if start <= offset < end and target in index:
                    stack.append(index[target])
            name = instr.opname
            if name in _TERMINAL:
                continue
            if instr.opcode in _JUMPS and isinstance(instr.argval, int):
                target_index = index.get(int(instr.argval))
                if name in _UNCONDITIONAL:
                    if target_index is not None:
                        stack.append(target_index)
                    continue
                taken = self._decided(ins, k, targets) if "IF" in name else None
                if taken is not False and target_index is not None:
                    stack.append(target_index)
                if taken is not True:
                    stack.append(k + 1)
                continue
            stack.append(k + 1)
        reachable = frozenset(ins[k].offset for k in seen)
        self._cache[id(code)] = (code, reachable)
        return reachable

    def reaches(self, code: CodeType, offset: int) -> bool:
        """Whether the instruction at ``offset`` of ``code`` can run."""
        return offset in self.offsets(code)


_MISSING: Final = object()
