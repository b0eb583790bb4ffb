"""Symbol tables: ``nm`` for a loaded rule module, and the diff of two of them.

One row per name, with a letter in ``nm``'s spirit (see the design's "Symbol
tables" section):

=====  ==============================================================
``T``  function defined in this version
``C``  class defined in this version
``D``  other data bound at top level
``I``  imported name, with its origin (``re``, ``dataclasses.dataclass``)
``U``  read by code that runs later but not defined at top level: what it
       resolved to (``builtins.len``) or ``?``
``W``  bound only by a ``global`` statement inside a function, or a module
       attribute that exists only at run time (``sys.last_traceback``);
       ``detail`` says why
=====  ==============================================================

The rows are plain data (JSON in and out) so the same table feeds the
terminal renderer, Jupyter's HTML and the control protocol.
"""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from types import CodeType, FunctionType, ModuleType
from typing import Any, Final

from livepatch.bytecode import ModuleFacts, module_facts, short_hash
from livepatch.jsonable import JsonFields
from livepatch.weakattrs import weak_attribute

__all__ = [
    "LETTERS",
    "MODULE_DUNDERS",
    "DiffRow",
    "SymbolDiff",
    "SymbolRow",
    "SymbolTable",
    "build_symbol_table",
    "builtin_namespace",
    "diff_tables",
    "format_annotation",
    "format_signature",
]

#: The letters this module produces (the native ELF backend adds more).
LETTERS: Final = ("T", "C", "D", "I", "U", "W")

#: Names every module has (set by the import system or the interpreter);
#: they say nothing about the rules, so they get no row. User dunders such as
#: ``__all__`` or ``__getattr__`` are kept.
MODULE_DUNDERS: Final = frozenset(
    {
        "__name__",
        "__doc__",
        "__builtins__",
        "__file__",
        "__loader__",
        "__spec__",
        "__package__",
        "__cached__",
        "__annotations__",
        "__warningregistry__",  # appears when a warning is raised from the module
    }
)

MARKERS: Final = ("=", "~", "+", "-")

_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class SymbolRow(JsonFields):
    """One name of a module version.

    ``line`` is the definition line (for ``U`` the first line reading it, for
    ``W`` the first line binding it); ``signature`` is set for ``T`` and
    ``C``; ``detail`` is the origin for ``I``, the resolution for ``U`` and
    the type name for ``D``. ``code_hash`` ignores line numbers, so moving a
    definition does not make it "changed".
    """

    name: str
    letter: str
    line: int | None
    signature: str | None
    detail: str
    code_hash: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SymbolRow:
        """Rebuild a row from :meth:`to_json` output."""
        line = data.get("line")
        signature = data.get("signature")
        return cls(
            name=str(data["name"]),
            letter=str(data["letter"]),
            line=int(line) if line is not None else None,
            signature=str(signature) if signature is not None else None,
            detail=str(data.get("detail", "")),
            code_hash=str(data.get("code_hash", "")),
        )


@dataclass(frozen=True, slots=True)
class SymbolTable(JsonFields):
    """All rows of one version, sorted by name."""

    version: str
    rows: tuple[SymbolRow, ...]
    _index: dict[str, SymbolRow] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        rows = tuple(self.rows)
        if any(a.name > b.name for a, b in pairwise(rows)):
            rows = tuple(sorted(rows, key=lambda r: r.name))
        # frozen: the builder is allowed to normalise its own fields
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_index", {row.name: row for row in rows})

    def __getitem__(self, name: str) -> SymbolRow:
        return self._index[name]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SymbolRow]:
        return iter(self.rows)

    def get(self, name: str, default: SymbolRow | None = None) -> SymbolRow | None:
        """The row for ``name``, or ``default``."""
        return self._index.get(name, default)

    def by_letter(self, letter: str) -> list[SymbolRow]:
        """The rows with ``letter``, in name order."""
        return [row for row in self.rows if row.letter == letter]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SymbolTable:
        """Rebuild a table from :meth:`to_json` output."""
        return cls(
            version=str(data["version"]),
            rows=tuple(SymbolRow.from_json(r) for r in data.get("rows", ())),
        )


@dataclass(frozen=True, slots=True)
class DiffRow(JsonFields):
    """One name in the side-by-side view of two versions.

    ``marker``: ``=`` same, ``~`` changed, ``+`` only in ``b``, ``-`` only in
    ``a``. ``resolves_differently`` flags an undefined (or imported) name that
    the two versions bind to different things, e.g. ``U sum`` resolving to
    ``builtins.sum`` in one and ``?`` in the other.
    """

    name: str
    marker: str
    left: SymbolRow | None
    right: SymbolRow | None
    resolves_differently: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DiffRow:
        """Rebuild a diff row from :meth:`to_json` output."""
        left = data.get("left")
        right = data.get("right")
        return cls(
            name=str(data["name"]),
            marker=str(data["marker"]),
            left=SymbolRow.from_json(left) if left is not None else None,
            right=SymbolRow.from_json(right) if right is not None else None,
            resolves_differently=bool(data.get("resolves_differently", False)),
        )


@dataclass(frozen=True, slots=True)
class SymbolDiff:
    """Two versions' tables side by side, one row per name in either."""

    a: str
    b: str
    rows: tuple[DiffRow, ...]

    def counts(self) -> dict[str, int]:
        """How many rows carry each marker (all four keys always present)."""
        out = dict.fromkeys(MARKERS, 0)
        for row in self.rows:
            out[row.marker] = out.get(row.marker, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, with ``counts`` included for convenience."""
        return {
            "a": self.a,
            "b": self.b,
            "rows": [row.to_json() for row in self.rows],
            "counts": self.counts(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SymbolDiff:
        """Rebuild a diff from :meth:`to_json` output (``counts`` is recomputed)."""
        return cls(
            a=str(data["a"]),
            b=str(data["b"]),
            rows=tuple(DiffRow.from_json(r) for r in data.get("rows", ())),
        )


# --- signatures ------------------------------------------------------------

# ``pkg.mod.Name`` -> ``Name``; ``typing.Optional`` -> ``Optional``.
_QUALIFIED = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")
# Default values whose repr carries an address would make every version's
# signature differ from every other's.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class _Shown:
    """Stands in for an annotation so :class:`inspect.Signature` prints our text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def format_annotation(annotation: object) -> str:
    """An annotation as a reader writes it: ``Message``, ``list[Message]``,
    ``Verdict | None`` (module prefixes dropped; strings shown unquoted)."""
    if isinstance(annotation, str):
        return annotation
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__qualname__
    return _QUALIFIED.sub("", _ADDRESS.sub("", str(annotation)))


def format_signature(signature: inspect.Signature) -> str:
    """``signature`` as ``(msg: Message, *, strict: bool = False) -> Verdict``."""
    empty = inspect.Parameter.empty
    params = [
        p
        if p.annotation is empty
        else p.replace(annotation=_Shown(format_annotation(p.annotation)))
        for p in signature.parameters.values()
    ]
    ret = signature.return_annotation
    shown = signature.replace(
        parameters=params,
        return_annotation=empty if ret is empty else _Shown(format_annotation(ret)),
    )
    return _ADDRESS.sub("", str(shown))


_CO_VARARGS: Final = 0x4
_CO_VARKEYWORDS: Final = 0x8


def _plain_signature(func: FunctionType) -> str:
    """:func:`format_signature` of a plain function, read straight from its
    code object, defaults and annotations: the same text as going through
    :func:`inspect.signature`, at a fraction of the cost (a table of a
    thousand-function module formats a thousand signatures)."""
    code = func.__code__
    names = code.co_varnames
    positional = code.co_argcount
    posonly = code.co_posonlyargcount
    kwonly = code.co_kwonlyargcount
    defaults = func.__defaults__ or ()
    kwdefaults = func.__kwdefaults__ or {}
    annotations = func.__annotations__
    first_default = positional - len(defaults)
    parts: list[str] = []

    def param(name: str, prefix: str = "", default: object = _MISSING) -> str:
        text = prefix + name
        annotated = name in annotations
        if annotated:
            text += ": " + format_annotation(annotations[name])
        if default is not _MISSING:
            text += (" = " if annotated else "=") + repr(default)
        return text

    for index in range(positional):
        default = defaults[index - first_default] if index >= first_default else _MISSING
        parts.append(param(names[index], default=default))
        if posonly and index == posonly - 1:
            parts.append("/")
    next_name = positional + kwonly
    if code.co_flags & _CO_VARARGS:
        parts.append(param(names[next_name], "*"))
        next_name += 1
    elif kwonly:
        parts.append("*")
    for name in names[positional : positional + kwonly]:
        parts.append(param(name, default=kwdefaults.get(name, _MISSING)))
    if code.co_flags & _CO_VARKEYWORDS:
        parts.append(param(names[next_name], "**"))
    text = "(" + ", ".join(parts) + ")"
    if "return" in annotations:
        text += " -> " + format_annotation(annotations["return"])
    return _ADDRESS.sub("", text)


def _signature_text(obj: object) -> str | None:
    """The signature shown in a T or C row, or None when there is none."""
    if type(obj) is FunctionType and not obj.__dict__:
        # No __wrapped__ or __signature__ to honour: the fast path.
        return _plain_signature(obj)
    try:
        return format_signature(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        # builtins without text signatures, exotic metaclasses
        return None


# --- building a table ------------------------------------------------------


def _defined_function(value: object, namespace: dict[str, Any]) -> FunctionType | None:
    """The function behind ``value`` if this module defined it.

    Decorators may wrap it (``functools.wraps`` leaves ``__wrapped__``), so
    follow that chain, a bounded number of steps, to the innermost function
    of this module: its code is what the row's line and hash describe, not
    the decorator's wrapper.
    """
    found: FunctionType | None = None
    current = value
    for _ in range(16):
        if isinstance(current, FunctionType) and current.__globals__ is namespace:
            found = current
        try:
            current = current.__dict__["__wrapped__"]  # no __getattr__ games
        except (AttributeError, KeyError, TypeError):
            break
    return found


def _defined_class(value: object, module_name: object) -> type | None:
    if isinstance(value, type) and value.__dict__.get("__module__") == module_name:
        return value
    return None


class _Builder:
    """Turns one module namespace plus its :class:`ModuleFacts` into rows."""

    def __init__(self, module: ModuleType, facts: ModuleFacts, source: str) -> None:
        self.ns: dict[str, Any] = module.__dict__
        self.facts = facts
        self.source = source
        self.module_name = self.ns.get("__name__", module.__name__)
        self._lines: list[str] | None = None
        self.star_origin = self._star_origins()

    def _star_origins(self) -> dict[str, tuple[str, int | None]]:
        """Names a ``from m import *`` left in the namespace: name -> (origin, line)."""
        out: dict[str, tuple[str, int | None]] = {}
        for origin, line in self.facts.star_imports:
            name = origin
            if origin.startswith("."):
                try:
                    name = importlib.util.resolve_name(origin, self.ns.get("__package__"))
                except (ImportError, ValueError):
                    continue
            source = sys.modules.get(name)
            if source is None:
                continue
            for attr, value in self.ns.items():
                if source.__dict__.get(attr, _MISSING) is value and attr not in MODULE_DUNDERS:
                    out[attr] = (f"{origin}.{attr}", line)
        return out

    def first_store(self, name: str) -> int | None:
        lines = self.facts.top_stores.get(name)
        return min(lines) if lines else None

    def data_hash(self, name: str, value: object) -> str:
        """Hash of the source text of every top-level statement binding ``name``."""
        offsets = self.facts.top_store_offsets.get(name)
        if not offsets:
            return short_hash("D:" + type(value).__qualname__)
        if self._lines is None:
            self._lines = self.source.splitlines()
        texts: list[str] = []
        for offset in offsets:
            span = self.facts.statement_lines(offset)
            if span is not None:
                texts.append("\n".join(self._lines[span[0] - 1 : span[1]]))
        return short_hash("\n\0".join(texts))

    def class_hash(self, cls: type) -> tuple[str, int | None]:
        """Hash of the class body's code (methods included) and its bases."""
        method_codes = {
            id(v.__code__) for v in cls.__dict__.values() if isinstance(v, FunctionType)
        }
        candidates = self.facts.class_bodies.get(cls.__qualname__, [])
        body = next(
            (
                c
                for c in candidates
                if any(id(k) in method_codes for k in c.co_consts if hasattr(k, "co_code"))
            ),
            candidates[0] if candidates else None,
        )
        bases = ",".join(
            b.__qualname__
            if b.__module__ == self.module_name
            else f"{b.__module__}.{b.__qualname__}"
            for b in cls.__bases__
        )
        if body is not None:
            return short_hash(self.facts.hash_of(body) + "|" + bases), body.co_firstlineno
        # Made without a class statement (``type(...)``): hash what it holds.
        parts = sorted(
            f"{key}={self.facts.hash_of(value.__code__)}"
            if isinstance(value, FunctionType)
            else f"{key}={type(value).__name__}"
            for key, value in cls.__dict__.items()
        )
        return short_hash(bases + "|" + ";".join(parts)), None

    def row(self, name: str, value: object) -> SymbolRow:
        origin = self.facts.import_origins.get(name)
        star_line: int | None = None
        if origin is None and name in self.star_origin:
            origin, star_line = self.star_origin[name]
        if isinstance(value, ModuleType):
            detail = origin or value.__name__
            line = self.first_store(name) or star_line
            return SymbolRow(name, "I", line, None, detail, short_hash(detail))
        func = _defined_function(value, self.ns)
        if func is not None:
            return SymbolRow(
                name,
                "T",
                func.__code__.co_firstlineno,
                _signature_text(value),
                "",
                self.facts.hash_of(func.__code__),
            )
        cls = _defined_class(value, self.module_name)
        if cls is not None:
            digest, line = self.class_hash(cls)
            return SymbolRow(
                name, "C", line or self.first_store(name), _signature_text(cls), "", digest
            )
        if origin is not None:
            line = self.first_store(name) or star_line
            return SymbolRow(name, "I", line, None, origin, short_hash(origin))
        if name in self.facts.weak and name not in self.facts.top_stores:
            where, offset = self.facts.weak[name]
            detail = _weak_detail(where.qualname)
            return SymbolRow(name, "W", where.line_at(offset), None, detail, short_hash(""))
        return SymbolRow(
            name,
            "D",
            self.first_store(name),
            None,
            type(value).__name__,
            self.data_hash(name, value),
        )


def builtin_namespace(namespace: Mapping[str, Any]) -> Mapping[str, Any]:
    """The builtins a module's functions see (its ``__builtins__``)."""
    found = namespace.get("__builtins__", builtins)
    if isinstance(found, ModuleType):
        return found.__dict__
    if isinstance(found, Mapping):
        return found
    return builtins.__dict__


def build_symbol_table(
    version: str, module: ModuleType, code: CodeType, source: str
) -> SymbolTable:
    """The symbol table of a loaded version.

    ``module`` is the module after its body ran, ``code`` the compiled
    top-level code object it ran, ``source`` the text it was compiled from
    (used to hash data statements).
    """
    facts = module_facts(code)
    builder = _Builder(module, facts, source)
    ns = builder.ns
    rows: list[SymbolRow] = [
        builder.row(name, value) for name, value in list(ns.items()) if name not in MODULE_DUNDERS
    ]
    weak_hash = short_hash("")
    for name, (where, offset) in facts.weak.items():
        if name not in ns:
            detail = _weak_detail(where.qualname)
            rows.append(SymbolRow(name, "W", where.line_at(offset), None, detail, weak_hash))
    available = builtin_namespace(ns)
    dead = facts.dead_code(ns)
    rows.extend(_weak_attributes(facts, ns, dead))
    for name, readers in facts.readers.items():
        if name in ns or name in facts.weak:
            continue
        if dead:
            readers = [r for r in readers if id(r.code) not in dead]
            if not readers:
                continue
        detail = f"builtins.{name}" if name in available else "?"
        line = ModuleFacts.first_read_line(readers, name)
        rows.append(SymbolRow(name, "U", line, None, detail, short_hash(detail)))
    rows.sort(key=lambda r: r.name)
    return SymbolTable(version, tuple(rows))


def _weak_detail(qualname: str) -> str:
    return f"bound by {qualname}() through `global`"


def _weak_attributes(facts: ModuleFacts, ns: Mapping[str, Any], dead: set[int]) -> list[SymbolRow]:
    """``W`` rows for module attributes that live code reads and that exist
    only at run time (``sys.last_traceback``, ``curses.ACS_VLINE``, a name
    another module binds through ``global``), with the reason as detail."""
    rows: dict[str, SymbolRow] = {}
    for code in facts.later:
        if not code.chains or id(code.code) in dead:
            continue
        for chain in code.chains:
            value = ns.get(chain.base)
            dotted = chain.base
            for attr, offset in chain.attrs:
                if not isinstance(value, ModuleType):
                    break
                dotted = f"{dotted}.{attr}"
                owner, value = value, getattr(value, attr, _MISSING)
                if value is not _MISSING:
                    continue
                reason = weak_attribute(owner, attr)
                if reason is not None and dotted not in rows:
                    detail = f"{owner.__name__}.{attr}: {reason}"
                    rows[dotted] = SymbolRow(
                        dotted, "W", code.line_at(offset), None, detail, short_hash(detail)
                    )
                break
    return list(rows.values())


# --- diff ------------------------------------------------------------------


def _same(left: SymbolRow, right: SymbolRow) -> bool:
    # Line numbers are deliberately ignored: moving code is not changing it.
    return (
        left.letter == right.letter
        and left.detail == right.detail
        and left.signature == right.signature
        and left.code_hash == right.code_hash
    )


def diff_tables(a: SymbolTable, b: SymbolTable) -> SymbolDiff:
    """Compare two versions' tables name by name."""
    names = sorted({row.name for row in a} | {row.name for row in b})
    rows: list[DiffRow] = []
    for name in names:
        left = a.get(name)
        right = b.get(name)
        if left is None:
            rows.append(DiffRow(name, "+", None, right))
        elif right is None:
            rows.append(DiffRow(name, "-", left, None))
        else:
            differently = (
                left.letter == right.letter
                and left.letter in ("U", "I")
                and left.detail != right.detail
            )
            marker = "=" if _same(left, right) else "~"
            rows.append(DiffRow(name, marker, left, right, differently))
    return SymbolDiff(a.version, b.version, tuple(rows))
