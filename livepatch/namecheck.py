"""The names half of the resolve-check: global names and module attributes.

Every global name that code running after load reads must be bound at
module level, in builtins, or weakly (through ``global``); every attribute
it reads straight off an imported module (a global, or a local bound by an
``import`` inside the function) must exist. What the check does *not*
report, so that real code passes:

* reads that cannot run on this interpreter: guards are evaluated at check
  time (:mod:`livepatch.guards`), and a module-private function whose every
  call site is unreachable is itself unreachable (``shutil``'s macOS-only
  ``_fastcopy_fcopyfile``);
* reads inside ``try: ... except NameError``/``AttributeError``, or of a
  module the same code probes with ``hasattr``;
* attributes that exist only at run time (:mod:`livepatch.weakattrs`).

A name that the module body binds only in a branch that did not run here
(an optional import that failed, a block for another platform behind a
guard that cannot be decided) is a *warning*, ``conditional``: "defined
only if ...". It works wherever that branch runs.
"""

from __future__ import annotations

import dis
import importlib.util
import linecache
import sys
from collections.abc import Iterator, Mapping
from types import CodeType, FunctionType, GeneratorType, ModuleType
from typing import Any, Final

from livepatch.bytecode import CodeFacts, CodeRole, ModuleFacts, guarded_by, read_sites
from livepatch.excguard import exception_entries
from livepatch.guards import Reachability
from livepatch.report import Problem
from livepatch.weakattrs import conditional_definition, weak_attribute

__all__ = ["check_names", "first_line", "where"]

_COMPREHENSION_WORDS: Final = {
    "<listcomp>": "a list comprehension",
    "<setcomp>": "a set comprehension",
    "<dictcomp>": "a dict comprehension",
    "<genexpr>": "a generator expression",
}

_IMPORT_ERRORS: Final = ("ImportError", "ModuleNotFoundError")


def where(facts: CodeFacts) -> str:
    """Where a lookup happens, as a reader would say it."""
    qualname = facts.qualname
    if facts.role is CodeRole.CLASS:
        return f"the body of class {qualname}"
    if facts.role is CodeRole.COMPREHENSION:
        parent, _sep, _leaf = qualname.rpartition(".<locals>.")
        word = _COMPREHENSION_WORDS.get(facts.code.co_name, "a comprehension")
        if parent:
            return f"{word} in {parent}()"
        return f"{word} at module level" if "." not in qualname else word
    return f"{qualname}()"


def first_line(facts: ModuleFacts, name: str) -> int | None:
    """The first line where the module body binds ``name``."""
    lines = facts.top_stores.get(name)
    return min(lines) if lines else None


class _Scope:
    """One check: which code can run, found lazily (only for reads that do
    not resolve, so a clean module never pays for it)."""

    def __init__(
        self, facts: ModuleFacts, ns: Mapping[str, Any], available: Mapping[str, Any]
    ) -> None:
        self.facts = facts
        self.ns = ns
        self.available = available
        self._reach: Reachability | None = None
        self._parents: dict[int, CodeFacts] | None = None
        self._runs: dict[int, bool] = {}
        self._busy: set[int] = set()
        self._cycles = 0
        self._live: set[int] | None = None
        self.live_codes: tuple[CodeFacts, ...] = ()

    @property
    def reach(self) -> Reachability:
        if self._reach is None:
            self._reach = Reachability(
                self.ns, self.available, self.facts.weak, self.facts.attr_stores
            )
        return self._reach

    def parent(self, code: CodeFacts) -> CodeFacts | None:
        if self._parents is None:
            parents: dict[int, CodeFacts] = {}
            stack = [self.facts.top]
            while stack:
                current = stack.pop()
                for child in current.children:
                    parents[id(child.code)] = current
                    stack.append(child)
            self._parents = parents
        return self._parents.get(id(code.code))

    def runs(self, code: CodeFacts, offset: int) -> bool:
        """Whether the instruction at ``offset`` of ``code`` can run here."""
        return self.reach.reaches(code.code, offset) and self.code_runs(code)

    def code_runs(self, code: CodeFacts) -> bool:
        key = id(code.code)
        known = self._runs.get(key)
        if known is not None:
            return known
        if key in self._busy:
            self._cycles += 1  # a cycle of calls proves nothing by itself
            return False
        self._busy.add(key)
        cycles = self._cycles
        try:
            result = self._decide_runs(code)
        finally:
            self._busy.discard(key)
        # True holds whatever the cycle turns out to be; False only if no
        # cycle was assumed unreachable on the way.
        if result or cycles == self._cycles:
            self._runs[key] = result
        return result

    def _decide_runs(self, code: CodeFacts) -> bool:
        parent = self.parent(code)
        if parent is None or not parent.runs_later:
            # Bound by load-time code (or a generator that survived it):
            # reachable by name, unless it is a private helper nothing can reach.
            result = parent is None or not self._private_and_unreachable(code, parent)
        else:
            result = self.code_runs(parent) and any(
                self.reach.reaches(parent.code, offset)
                for offset in _const_loads(parent.code, code.code)
            )
        return result

    def _private_and_unreachable(self, code: CodeFacts, parent: CodeFacts) -> bool:
        """A module-private function (``_helper``, not in ``__all__``) that no
        load-time code took a reference to, that this module does call, and
        whose every call site is code that cannot run here."""
        name = code.code.co_name
        if parent.role is not CodeRole.MODULE or not name.startswith("_") or name.endswith("__"):
            return False
        value = self.ns.get(name)
        if not isinstance(value, FunctionType) or value.__code__ is not code.code:
            return False
        exported = self.ns.get("__all__", ())
        if isinstance(exported, list | tuple) and name in exported:
            return False
        stack = [self.facts.top]
        while stack:
            current = stack.pop()
            if current.runs_later:
                continue
            if name in current.reads:
                return False  # registered, aliased, passed somewhere at load
            stack.extend(current.children)
        live = self.live_ids()
        callers = [
            r
            for r in self.facts.readers.get(name, ())
            if id(r.code) in live and r.code is not code.code  # recursion is no caller
        ]
        if not callers:
            return False  # called only from elsewhere (``_strptime._strptime_time``)
        for reader in callers:
            for offset, _line in read_sites(reader.code, name):
                if self.runs(reader, offset):
                    return False
        return True

    def live_ids(self) -> set[int]:
        if self._live is None:
            self._live = {id(c.code) for c in self.live_codes}
        return self._live

    def conditional(self, name: str) -> str | None:
        """ "defined only if ..." when the module body binds ``name`` in a
        statement that did not run (and never deletes it)."""
        offsets = self.facts.top_store_offsets.get(name)
        if not offsets or name in self.facts.top_deletes or name in self.ns:
            return None
        code = self.facts.code
        offset = min(offsets)
        line = first_line(self.facts, name)
        text = _source_line(code, line, self.ns)
        guard_offset, guard = _guard(code, offset)
        in_try = max(
            (start for start, end, _t in exception_entries(code) if start <= offset < end),
            default=-1,
        )
        if name in self.facts.import_origins and (guard is None or in_try > guard_offset):
            what = f"`{text}`" if text else "the import"
            return f"defined only if {what} succeeds (line {line}); it failed here"
        if guard is not None:
            condition = _condition(_source_line(code, guard, self.ns))
            shown = f"`{condition}`" if condition else "the guard"
            return f"defined only if {shown} holds (line {guard}); it did not here"
        if in_try >= 0:
            shown = f" (`{text}`)" if text else ""
            return f"defined only if line {line} runs{shown}, in a `try` that failed before it here"
        return f"defined only if line {line} runs; it did not here"


def _const_loads(parent: CodeType, child: CodeType) -> list[int]:
    """Offsets where ``parent`` loads the code object ``child`` (to make a
    function, lambda, class body or comprehension from it)."""
    return [
        i.offset
        for i in dis.get_instructions(parent)
        if i.opname == "LOAD_CONST" and i.argval is child
    ]


def _source_line(code: CodeType, line: int | None, ns: Mapping[str, Any]) -> str | None:
    if line is None:
        return None
    text = linecache.getline(code.co_filename, line, dict(ns)).strip()
    return text[:80] or None


def _guard(code: CodeType, offset: int) -> tuple[int, int | None]:
    """(offset, line) of the innermost ``if`` around the module-body
    instruction at ``offset``: the last conditional jump before it that
    jumps past it; (-1, None) when there is none."""
    best: tuple[int, int | None] = (-1, None)
    for instr in dis.get_instructions(code):
        if instr.offset >= offset:
            break
        conditional = "JUMP" in instr.opname and "IF" in instr.opname
        target = instr.argval
        if conditional and isinstance(target, int) and target > offset and instr.positions:
            best = (instr.offset, instr.positions.lineno)
    return best


def _condition(text: str | None) -> str | None:
    """``sys.platform == "win32"`` from ``elif sys.platform == "win32":``."""
    if not text:
        return None
    for keyword in ("if ", "elif ", "while "):
        if text.startswith(keyword):
            text = text[len(keyword) :]
            break
    return text.removesuffix(":").strip() or None


def _read_sites(code: CodeFacts, name: str) -> list[tuple[int, int | None]]:
    """Every read of global ``name`` in ``code`` that is not inside ``try:
    ... except NameError`` (code expecting the name may be missing)."""
    sites = read_sites(code.code, name)
    if not code.code.co_exceptiontable:
        return sites
    return [(o, line) for o, line in sites if not guarded_by(code.code, o, ("NameError",))]


def _surviving_generators(facts: ModuleFacts, ns: Mapping[str, Any]) -> Iterator[CodeFacts]:
    """Module-level generator expressions still waiting in the namespace
    (``PENDING = (f(x) for x in data)``): their bodies run later."""
    codes = {
        id(v.gi_code)
        for v in ns.values()
        if isinstance(v, GeneratorType) and v.gi_frame is not None
    }
    if not codes:
        return
    stack = [facts.top]
    while stack:
        current = stack.pop()
        for child in current.children:
            if child.runs_later:
                continue
            if child.role is CodeRole.COMPREHENSION and id(child.code) in codes:
                yield from _walk_load_time(child)
            elif child.role is not CodeRole.COMPREHENSION:
                stack.append(child)


def _walk_load_time(code: CodeFacts) -> Iterator[CodeFacts]:
    yield code
    for child in code.children:
        if not child.runs_later:
            yield from _walk_load_time(child)


def _missing_attribute(
    module: ModuleType,
    shown: str,
    attr: str,
    place: str,
    line: int | None,
    out: list[Problem],
) -> None:
    dotted = f"{shown}.{attr}"
    also = "" if module.__name__ == shown else f" ({module.__name__})"
    if conditional_definition(module, attr):
        out.append(
            Problem(
                "conditional",
                dotted,
                line,
                f"module {shown!r}{also} defines {attr!r} only in a branch that did not run "
                f"here, read in {place}",
                "warning",
            )
        )
        return
    hint = ""
    if hasattr(module, "__path__") and _submodule_exists(f"{module.__name__}.{attr}"):
        hint = f" (a submodule nothing imported yet: `import {module.__name__}.{attr}`)"
    out.append(
        Problem(
            "missing-attribute",
            dotted,
            line,
            f"module {shown!r}{also} has no attribute {attr!r}{hint}, read in {place}",
        )
    )


def _submodule_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _check_chain(
    scope: _Scope,
    code: CodeFacts,
    base: str,
    value: object,
    attrs: tuple[tuple[str, int], ...],
    probed: bool,
    reported: set[str],
    out: list[Problem],
) -> None:
    dotted = base
    for attr, offset in attrs:
        if not isinstance(value, ModuleType):
            return
        owner = value
        shown = dotted
        dotted = f"{dotted}.{attr}"
        try:
            value = getattr(owner, attr)
        except AttributeError:
            if (
                dotted in reported
                or dotted in scope.facts.attr_stores
                or probed
                or (
                    bool(code.code.co_exceptiontable)
                    and guarded_by(code.code, offset, ("AttributeError",))
                )
                or weak_attribute(owner, attr) is not None
                or not scope.runs(code, offset)
            ):
                return
            reported.add(dotted)
            _missing_attribute(owner, shown, attr, where(code), code.line_at(offset), out)
            return
        except Exception:  # noqa: BLE001 - a module __getattr__ that raises oddly
            return


def _check_code(scope: _Scope, code: CodeFacts, out: list[Problem]) -> None:
    ns, available, weak = scope.ns, scope.available, scope.facts.weak
    for name in code.reads:
        if name in ns or name in available or name in weak:
            continue
        sites = [(o, line) for o, line in _read_sites(code, name) if scope.runs(code, o)]
        if not sites:
            continue
        line = sites[0][1]
        conditional = scope.conditional(name)
        if conditional is not None:
            out.append(
                Problem(
                    "conditional",
                    name,
                    line,
                    f"name {name!r} used in {where(code)} is {conditional}",
                    "warning",
                )
            )
            continue
        out.append(
            Problem(
                "unresolved",
                name,
                line,
                f"name {name!r} used in {where(code)} is not defined at module level "
                "or in builtins",
            )
        )
    reported: set[str] = set()
    for chain in code.chains:
        value = ns.get(chain.base)
        if isinstance(value, ModuleType):
            _check_chain(
                scope,
                code,
                chain.base,
                value,
                chain.attrs,
                chain.base in code.probed,
                reported,
                out,
            )
    if code.imports:
        _check_local_imports(scope, code, reported, out)


def _check_local_imports(
    scope: _Scope, code: CodeFacts, reported: set[str], out: list[Problem]
) -> None:
    """Attributes read off modules imported inside a function (``import re``
    in the body, then ``re.compil``), and names a local ``from m import x``
    asks of a module that has no such attribute. Only modules already
    imported are looked at: the check never imports anything."""
    ins = list(dis.get_instructions(code.code))
    stores: dict[str, int] = {}
    for instr in ins:
        if instr.opname in ("STORE_FAST", "DELETE_FAST", "STORE_DEREF", "DELETE_DEREF"):
            stores[str(instr.argval)] = stores.get(str(instr.argval), 0) + 1
    params = set(code.code.co_varnames[: _argcount(code.code)])
    package = scope.ns.get("__package__")
    bound: dict[str, ModuleType] = {}
    for k, instr in enumerate(ins):
        if instr.opname != "IMPORT_NAME" or k < 2:
            continue
        level, fromlist = ins[k - 2].argval, ins[k - 1].argval
        module = _imported(str(instr.argval), level, package)
        if module is None:
            continue
        j = k + 1
        if fromlist is None:
            if j < len(ins) and ins[j].opname == "STORE_FAST":
                # ``import a.b`` binds the top package ``a``
                top = _imported(str(instr.argval).split(".", 1)[0], level, package)
                if top is not None:
                    bound[str(ins[j].argval)] = top
            continue
        while j + 1 < len(ins) and ins[j].opname == "IMPORT_FROM":
            attr, store = str(ins[j].argval), ins[j + 1]
            j += 2
            try:
                value = getattr(module, attr)
            except AttributeError:
                if (
                    _submodule_exists(f"{module.__name__}.{attr}")
                    or weak_attribute(module, attr) is not None
                    or guarded_by(code.code, ins[j - 2].offset, _IMPORT_ERRORS)
                    or not scope.runs(code, ins[j - 2].offset)
                ):
                    continue
                key = f"{module.__name__}.{attr}"
                if key not in reported:
                    reported.add(key)
                    shown = module.__name__
                    line = code.line_at(ins[j - 2].offset)
                    _missing_attribute(module, shown, attr, where(code), line, out)
                continue
            except Exception:  # noqa: BLE001 - a module __getattr__ that raises oddly
                continue
            if store.opname == "STORE_FAST" and isinstance(value, ModuleType):
                bound[str(store.argval)] = value
    if not bound:
        return
    probed = _probed_locals(ins)
    for k, instr in enumerate(ins):
        if instr.opname != "LOAD_FAST" or instr.argval not in bound:
            continue
        local = str(instr.argval)
        if stores.get(local) != 1 or local in params:
            continue  # rebound somewhere: not always the module
        attrs: list[tuple[str, int]] = []
        j = k + 1
        while j < len(ins) and ins[j].opname in ("LOAD_ATTR", "LOAD_METHOD"):
            attrs.append((str(ins[j].argval), ins[j].offset))
            j += 1
        if attrs:
            _check_chain(
                scope, code, local, bound[local], tuple(attrs), local in probed, reported, out
            )


def _argcount(code: CodeType) -> int:
    count = code.co_argcount + code.co_kwonlyargcount
    return count + bool(code.co_flags & 0x4) + bool(code.co_flags & 0x8)


def _probed_locals(ins: list[dis.Instruction]) -> set[str]:
    """Locals passed straight to ``hasattr`` (``hasattr(re, "NOFLAG")``)."""
    return {
        str(ins[k + 1].argval)
        for k in range(len(ins) - 1)
        if ins[k].opname == "LOAD_GLOBAL"
        and ins[k].argval == "hasattr"
        and ins[k + 1].opname == "LOAD_FAST"
    }


def _imported(name: str, level: object, package: object) -> ModuleType | None:
    """The module an ``import`` inside a function would bind, if it is
    already imported (nothing is imported to find out)."""
    if isinstance(level, int) and level > 0:
        if not isinstance(package, str) or not package:
            return None
        try:
            name = importlib.util.resolve_name("." * level + name, package)
        except (ImportError, ValueError):
            return None
    found = sys.modules.get(name)
    return found if isinstance(found, ModuleType) else None


def check_names(
    facts: ModuleFacts, ns: Mapping[str, Any], available: Mapping[str, Any], out: list[Problem]
) -> None:
    """Append the names half's problems for a loaded module to ``out``."""
    scope = _Scope(facts, ns, available)
    live = facts.live_later(ns)
    survivors = tuple(_surviving_generators(facts, ns))
    scope.live_codes = live + survivors if survivors else live
    for code in scope.live_codes:
        _check_code(scope, code, out)
