"""Facts about a compiled module, read straight from its code objects.

The symbol table (:mod:`livepatch.symbols`) and the resolve-check
(:mod:`livepatch.resolve`) both need the same facts about a loaded module:
which global names each code object reads and writes, which attributes it
reads off a global, what the module body imported and from where, and a
line-independent hash of every function. :func:`module_facts` gathers them
in one pass over each code object and caches the result per top-level code
object, so building a table and checking the same version reads the bytecode
once.

The bytecode itself is read by :mod:`livepatch.opscan`, fast.

*When* code runs matters to the check. The module body, the bodies of
classes defined at top level and comprehensions sitting directly in those
bodies all ran while the module loaded, successfully, so their lookups are
settled (and a module may ``del`` a helper after using it there).
Functions, lambdas and methods run later, as does everything nested inside
them; those are the lookups the check must vouch for.
"""

from __future__ import annotations

import sys
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import BuiltinFunctionType, CodeType, FunctionType, MethodType, ModuleType
from typing import Final

from livepatch.codehash import code_hash, hash_code_memo, short_hash
from livepatch.excguard import exception_entries, guarded_by
from livepatch.opscan import SETUP_ANNOTATIONS, AttrChain, RawScan, line_at, read_sites
from livepatch.opscan import scan as scan_code

# Kept importable from here, where callers found them before the split.
_exception_entries = exception_entries

__all__ = [
    "AttrChain",
    "CodeFacts",
    "CodeRole",
    "ModuleFacts",
    "code_hash",
    "guarded_by",
    "iter_code_objects",
    "line_at",
    "module_facts",
    "read_sites",
    "short_hash",
]


_NO_OFFSETS: Final[dict[str, int]] = {}  # shared, never written: CodeFacts are read-only
_NO_NAMES: Final[frozenset[str]] = frozenset()
_CO_OPTIMIZED: Final = 0x1
_COMPREHENSIONS: Final = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})


class CodeRole(StrEnum):
    """What kind of source construct a code object was compiled from."""

    MODULE = "module"
    CLASS = "class"  # a class body: runs once, in its own namespace
    FUNCTION = "function"  # def, lambda, method
    COMPREHENSION = "comprehension"  # list/set/dict comprehension, generator expression


@dataclass(slots=True)
class CodeFacts:
    """What one code object does with global names.

    ``reads`` maps each global name the code looks up to the bytecode offset
    of its first lookup (see :func:`line_at`). For a class body, names the
    body binds itself are left out: they resolve in the class namespace, not
    the module's. ``binds`` maps names the code binds in the *module*
    namespace through ``global`` (``STORE_GLOBAL``/``DELETE_GLOBAL``) to the
    first such offset. ``probed`` holds the globals this code passes straight
    to ``hasattr``: it expects some of their attributes to be missing.
    Built by :class:`ModuleFacts`; treat as read-only (not frozen only
    because frozen dataclasses are several times slower to construct, and
    there is one per code object).
    """

    code: CodeType
    qualname: str
    role: CodeRole
    runs_later: bool
    reads: dict[str, int]
    binds: dict[str, int]
    chains: tuple[AttrChain, ...]
    probed: frozenset[str]
    children: tuple[CodeFacts, ...]
    imports: bool = False  # has an ``import`` statement (binding a local name)

    def line_at(self, offset: int) -> int | None:
        """The source line of the instruction at ``offset`` in this code."""
        return line_at(self.code, offset)


def _role(code: CodeType) -> CodeRole:
    if not code.co_flags & _CO_OPTIMIZED:
        return CodeRole.CLASS
    if code.co_name in _COMPREHENSIONS:
        return CodeRole.COMPREHENSION
    return CodeRole.FUNCTION


def iter_code_objects(code: CodeType) -> list[CodeType]:
    """``code`` and every code object nested in it, parents before children."""
    out = [code]
    i = 0
    while i < len(out):
        out.extend(c for c in out[i].co_consts if isinstance(c, CodeType))
        i += 1
    return out


# --- liveness ----------------------------------------------------------------

_MISSING: Final = object()


def _mangle(name: str, class_name: str | None) -> str:
    """The key a class body stores ``def __name`` under (private name mangling)."""
    if class_name is None or not name.startswith("__") or name.endswith("__"):
        return name
    stripped = class_name.lstrip("_")
    return f"_{stripped}{name}" if stripped else name


def _mark(facts: CodeFacts, dead: set[int]) -> None:
    stack = [facts]
    while stack:
        current = stack.pop()
        dead.add(id(current.code))
        stack.extend(current.children)


def _own_methods(body: CodeFacts) -> set[int]:
    return {id(c.code) for c in body.children if c.role is CodeRole.FUNCTION}


def _foreign_function(value: object, namespace: Mapping[str, object]) -> bool:
    """Whether ``value`` is a function of another module or of C: a ``def``
    whose name is bound to it was replaced (``excepthook = _thread._excepthook``)."""
    if isinstance(value, FunctionType):
        return value.__globals__ is not namespace
    return isinstance(value, BuiltinFunctionType)


def _code_ids(value: object, namespace: Mapping[str, object]) -> set[int]:
    """ids of this module's function code objects behind a namespace value:
    through decorators that keep ``__wrapped__``, static/class methods,
    properties, partials and cached properties."""
    out: set[int] = set()
    stack = [value]
    for _ in range(32):
        if not stack:
            break
        current = stack.pop()
        if isinstance(current, FunctionType):
            if current.__globals__ is namespace:
                out.add(id(current.__code__))
        elif isinstance(current, staticmethod | classmethod | MethodType):
            stack.append(current.__func__)
            continue
        elif isinstance(current, property):
            stack.extend(f for f in (current.fget, current.fset, current.fdel) if f is not None)
            continue
        try:
            attrs = vars(current)
        except TypeError:
            continue
        for key in ("__wrapped__", "func"):
            inner = attrs.get(key)
            if inner is not None and inner is not current:
                stack.append(inner)
    return out


# --- the module ----------------------------------------------------------------


class ModuleFacts:
    """Everything the symbol table and the check need from a module's code.

    Built by :func:`module_facts`; treat as read-only.
    """

    __slots__ = (
        "_hash_memo",
        "_line_ranges",
        "_lock",
        "_range_starts",
        "attr_stores",
        "class_bodies",
        "code",
        "import_origins",
        "later",
        "readers",
        "star_imports",
        "top",
        "top_deletes",
        "top_store_offsets",
        "top_stores",
        "weak",
    )

    def __init__(self, code: CodeType) -> None:
        self.code = code
        self._hash_memo: dict[int, str] = {}
        self._line_ranges: list[tuple[int, int, int | None]] | None = None
        self._range_starts: list[int] = []
        self._lock = threading.Lock()
        top_scan = scan_code(code, module=True)
        #: the module body's imports: bound name -> origin (``re``, ``os.path``)
        self.import_origins: dict[str, str] = top_scan.import_origins
        #: ``from m import *`` in the module body: (module, line)
        self.star_imports: tuple[tuple[str, int | None], ...] = tuple(top_scan.star_imports)
        #: lines where load-time code binds each module-level name
        self.top_stores: dict[str, list[int]] = top_scan.store_lines
        #: names the module body deletes (``del helper``)
        self.top_deletes: frozenset[str] = frozenset(top_scan.deletes)
        #: module-body offsets of the instructions binding each name
        self.top_store_offsets: dict[str, list[int]] = top_scan.store_offsets
        #: class bodies sitting directly in the module body, by qualname
        self.class_bodies: dict[str, list[CodeType]] = {}
        #: names later-running code binds through ``global``: first (code, offset)
        self.weak: dict[str, tuple[CodeFacts, int]] = {}
        #: global name -> later-running code reading it, in walk order
        self.readers: dict[str, list[CodeFacts]] = {}
        #: ``base.attr`` paths some code assigns or deletes (``sys.ps1 = ...``)
        self.attr_stores: set[str] = set()
        later: list[CodeFacts] = []
        self.top = self._build(code, top_scan, CodeRole.MODULE, False, later)
        #: every code object that runs after load, parents before children
        self.later: tuple[CodeFacts, ...] = tuple(later)

    def _build(
        self,
        code: CodeType,
        scan: RawScan,
        role: CodeRole,
        runs_later: bool,
        later: list[CodeFacts],
    ) -> CodeFacts:
        global_binds = scan.global_binds or _NO_OFFSETS
        if role is CodeRole.FUNCTION or role is CodeRole.COMPREHENSION:
            reads = scan.global_reads
            chains = tuple(scan.chains) if scan.chains else ()
        elif role is CodeRole.CLASS:
            # A class body resolves its own names first: only names it never
            # binds can reach the module namespace.
            local = scan.name_binds or _NO_OFFSETS
            reads = {k: v for k, v in (scan.name_reads or {}).items() if k not in local}
            if "__annotations__" in reads and SETUP_ANNOTATIONS in code.co_code[::2]:
                # An annotated class body binds its own ``__annotations__``.
                del reads["__annotations__"]
            reads.update(scan.global_reads)
            chains = tuple(c for c in scan.chains or () if c.base not in local)
        else:
            reads = dict(scan.name_reads or {})
            reads.update(scan.global_reads)
            chains = tuple(scan.chains or ())
        facts = CodeFacts(
            code=code,
            qualname="<module>" if role is CodeRole.MODULE else code.co_qualname,
            role=role,
            runs_later=runs_later,
            reads=reads,
            binds=global_binds,
            chains=chains,
            probed=frozenset(scan.probed) if scan.probed else _NO_NAMES,
            children=(),
            imports=scan.imports,
        )
        if scan.attr_stores:
            self.attr_stores |= scan.attr_stores
        if runs_later:
            later.append(facts)
            readers = self.readers
            for name in reads:
                found = readers.get(name)
                if found is None:
                    readers[name] = [facts]
                else:
                    found.append(facts)
            for name, offset in global_binds.items():
                self.weak.setdefault(name, (facts, offset))
        elif role is not CodeRole.MODULE and global_binds:
            # A ``global x`` assignment that ran at load binds like a top-level store.
            for name, offset in global_binds.items():
                line = line_at(code, offset)
                if line is not None:
                    self.top_stores.setdefault(name, []).append(line)

        children: list[CodeFacts] = []
        for const in code.co_consts:
            if not isinstance(const, CodeType):
                continue
            child_role = _role(const)
            if role is CodeRole.MODULE and child_role is CodeRole.CLASS:
                self.class_bodies.setdefault(const.co_qualname, []).append(const)
            child_later = runs_later or child_role is CodeRole.FUNCTION
            children.append(
                self._build(const, scan_code(const, module=False), child_role, child_later, later)
            )
        if children:
            facts.children = tuple(children)
        return facts

    # -- liveness ---------------------------------------------------------

    def dead_code(self, namespace: Mapping[str, object]) -> set[int]:
        """ids of the code objects that can no longer run, given the module's
        namespace after its body ran.

        A top-level ``def``/``class`` (or a method of a top-level class) is
        dead when the body never bound it or deleted it again (a branch for
        another platform; ``del def_op`` after using it at load, as
        ``opcode.py`` does), when its name is bound to another definition of
        the same name (``if nt: def abspath ... else: def abspath``), or when
        an import replaced it afterwards (a C accelerator, as in ``heapq``
        and ``datetime``). Nothing can call it by name, so it is not checked.
        Code reachable only through a reference taken before such a rebinding
        (a registry filled by a decorator, then ``del``) is missed; that
        pattern is rare in rule modules.
        """
        dead: set[int] = set()
        self._prune(self.top, namespace, namespace, None, namespace.get("__name__"), dead)
        return dead

    def live_later(self, namespace: Mapping[str, object]) -> tuple[CodeFacts, ...]:
        """The later-running code objects that are not :meth:`dead_code`."""
        dead = self.dead_code(namespace)
        if not dead:
            return self.later
        return tuple(c for c in self.later if id(c.code) not in dead)

    def _prune(
        self,
        container: CodeFacts,
        namespace: Mapping[str, object],
        scope: Mapping[str, object],
        class_name: str | None,
        module_name: object,
        dead: set[int],
    ) -> None:
        """Mark dead definitions directly inside ``container`` (the module
        body, or a class body whose class object's ``__dict__`` is ``scope``)."""
        top_level = class_name is None
        rivals: dict[str, list[CodeFacts]] | None = None  # class statements by name
        for child in container.children:
            name = child.code.co_name
            if child.role is CodeRole.FUNCTION:
                if not name.isidentifier():
                    continue  # a lambda: bound to no name of its own
                value = scope.get(_mangle(name, class_name), _MISSING)
                if value is _MISSING:
                    _mark(child, dead)
                    continue
                codes = _code_ids(value, namespace)
                if codes:
                    if id(child.code) not in codes:
                        _mark(child, dead)
                elif _foreign_function(value, namespace) or (
                    top_level and self._imported(name, value)
                ):
                    _mark(child, dead)
            elif child.role is CodeRole.CLASS:
                value = scope.get(_mangle(name, class_name), _MISSING)
                if value is _MISSING:
                    _mark(child, dead)
                    continue
                if isinstance(value, type) and value.__dict__.get("__module__") == module_name:
                    methods: set[int] = set()
                    for member in value.__dict__.values():
                        methods |= _code_ids(member, namespace)
                    if not _own_methods(child) & methods:
                        if rivals is None:
                            rivals = {}
                            for sibling in container.children:
                                if sibling.role is CodeRole.CLASS:
                                    rivals.setdefault(sibling.code.co_name, []).append(sibling)
                        if any(
                            _own_methods(rival) & methods
                            for rival in rivals.get(name, ())
                            if rival is not child
                        ):
                            _mark(child, dead)  # another ``class`` statement made it
                            continue
                    self._prune(child, namespace, value.__dict__, value.__name__, module_name, dead)
                elif top_level and self._imported(name, value):
                    _mark(child, dead)

    def _imported(self, name: str, value: object) -> bool:
        """Whether ``name`` is bound to something an import brought in."""
        if isinstance(value, ModuleType) or name in self.import_origins:
            return True
        for origin, _line in self.star_imports:
            source = sys.modules.get(origin)
            if source is not None and source.__dict__.get(name, _MISSING) is value:
                return True
        return False

    # -- lines and hashes -------------------------------------------------

    @staticmethod
    def first_read_line(readers: list[CodeFacts], name: str) -> int | None:
        """The smallest line on which any of ``readers`` reads ``name``.

        A read's line is never before its code's first line, so codes are
        visited by first line and the search stops early (typically after
        one or two of possibly thousands of readers).
        """
        best: int | None = None
        for facts in sorted(readers, key=lambda f: f.code.co_firstlineno):
            if best is not None and facts.code.co_firstlineno > best:
                break
            line = facts.line_at(facts.reads[name])
            if line is not None and (best is None or line < best):
                best = line
        return best

    def hash_of(self, code: CodeType) -> str:
        """:func:`code_hash` of ``code``, memoised for this module's code objects."""
        with self._lock:
            return hash_code_memo(code, self._hash_memo)

    def statement_lines(self, offset: int) -> tuple[int, int] | None:
        """(first, last) line of the module-body statement whose binding
        instruction sits at ``offset``.

        An assignment's target comes first in the source, so its store
        instruction's line is where the statement starts, and the
        instructions just before the store, computing the value, sit on that
        line or below. Walking back from the store while that holds finds
        the statement's lines from the bytecode alone: re-parsing the source
        costs about as much as the whole compile. (A closing bracket alone
        on the last line has no instruction and is left out.)
        """
        with self._lock:
            if self._line_ranges is None:
                self._line_ranges = list(self.code.co_lines())
                self._range_starts = [start for start, _end, _line in self._line_ranges]
        ranges = self._line_ranges
        index = bisect_right(self._range_starts, offset) - 1
        if index < 0:
            return None
        first = ranges[index][2]
        if not first:
            return None
        last = first
        index -= 1
        while index >= 0:
            line = ranges[index][2]
            index -= 1
            if not line:
                continue  # artificial instruction
            if line < first:
                break
            if line > last:
                last = line
        return first, last


# A small identity-keyed LRU: the engine builds the table and runs the check
# for the same version back to back. Bounded and keyed by id() (confirmed
# with ``is``) rather than weak, because the facts hold the code object
# themselves. Code objects never reference their module, so this cannot keep
# an unloaded version's module alive.
_CACHE_SIZE: Final = 2
_cache: OrderedDict[int, ModuleFacts] = OrderedDict()
_cache_lock = threading.Lock()


def module_facts(code: CodeType) -> ModuleFacts:
    """The :class:`ModuleFacts` of a module's top-level ``code`` (cached)."""
    key = id(code)
    with _cache_lock:
        facts = _cache.get(key)
        if facts is not None and facts.code is code:
            _cache.move_to_end(key)
            return facts
    facts = ModuleFacts(code)
    with _cache_lock:
        _cache[key] = facts
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return facts
