"""Native shared objects: the engine's lifecycle on real ELF objects.

The teaching backend of DESIGN.md ("Native shared objects"). A native slot's
interface is a C signature the host declares with ctypes types::

    engine.add_slot("spam_native", NativeInterface({"classify": (c_int, [("text", c_char_p)])}))

and every version of the slot is a shared object. The lifecycle is the
engine's, step for step; only what each step does to the object is native:

``load``
    Compile the C source with the system compiler (``cc -shared -fPIC -O2``)
    or take a ready ``.so``; read its ELF header, ``.dynamic`` and ``.dynsym``
    (pyelftools). Nothing is mapped into the process yet, so nothing of the
    object has run: not even its constructors.
``check``
    Resolve every undefined symbol the way the dynamic linker would for an
    ``RTLD_LOCAL`` object: the host process's global scope first, then the
    object's ``DT_NEEDED`` libraries (each ``dlopen``\\ ed ``RTLD_LAZY |
    RTLD_LOCAL``, then ``dlsym`` per symbol). The interface's entry points
    must be exported functions. Only when all of that holds is the object
    ``dlopen``\\ ed (``RTLD_NOW | RTLD_LOCAL``) and its entry points found with
    ``dlsym`` and wrapped in ctypes function pointers.
``swap`` / ``purge``
    The engine publishes the pointers (one dict store) / forgets them.
``unload``
    The engine drops its pointers. When no reference to any of them is left,
    the object is ``dlclose``\\ d, and ``/proc/self/maps`` says whether it
    really left memory, and if not, why (``DF_1_NODELETE``, ``STB_GNU_UNIQUE``
    symbols, another handle).

Three choices worth knowing, each for safety:

* Every version is ``dlopen``\\ ed from its own private copy of the file. The
  dynamic linker returns the already-loaded object for a path (or inode) it
  has seen, so loading a rebuilt ``rules.so`` again would silently give back
  the old code.
* ``RTLD_LOCAL``: two versions of a slot both define ``classify``; in the
  global scope the second one's internal calls would bind to the first's.
* Calls keep the GIL (``ctypes.PYFUNCTYPE``). A thread inside native code
  therefore holds a reference to the function pointer *and* the GIL, so
  ``dlclose`` (run only once every pointer is gone) can never unmap code a
  thread is executing. The price: native rules do not run in parallel with
  Python threads, which for short rule functions is also the faster choice.

Linux only (ELF, glibc's ``dlopen``, ``/proc/self/maps``). A crash inside a
rule's C code takes the process down; an engine with a quarantine policy
maps every object in a throwaway process first, so a crashing constructor
fails the check instead.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import inspect
import re
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .errors import LoadFailed
from .native_build import BASE_FLAGS, compile_c, find_compiler
from .native_elf import ElfInfo, ElfSymbol, NotSharedObject, is_elf, read_elf
from .native_link import RTLD_LOCAL, RTLD_NOW, MissingVersion, Scope, dl, dlsym, mappings
from .report import Problem, ResolveReport
from .symbols import SymbolRow, SymbolTable

if TYPE_CHECKING:
    from .quarantine import Quarantine

__all__ = [
    "BASE_FLAGS",
    "NATIVE_LETTERS",
    "ElfInfo",
    "ElfSymbol",
    "NativeBackend",
    "NativeFunction",
    "NativeInterface",
    "NativeObject",
    "NotSharedObject",
    "compile_c",
    "find_compiler",
    "is_elf",
    "mappings",
    "read_elf",
]


#: Letters of a native symbol table (``nm -D``'s, folded as README/docs say):
#: T code, D data, B zero-initialised data, R read-only data, U undefined,
#: W weak (defined or not).
NATIVE_LETTERS: Final = ("T", "D", "B", "R", "U", "W")

#: Largest ready object accepted, in bytes.
MAX_OBJECT: Final = 256 * 1024 * 1024


# ---------------------------------------------------------------------------
# The interface: C signatures declared with ctypes types
# ---------------------------------------------------------------------------

# C spelling of the ctypes types a host may declare. Aliases collapse on a
# given platform (c_longlong is c_long on LP64), so the plainer name is last.
_C_NAMES: dict[Any, str] = {}
for _ctype, _name in (
    (ctypes.c_bool, "bool"),
    (ctypes.c_char, "char"),
    (ctypes.c_wchar, "wchar_t"),
    (ctypes.c_byte, "signed char"),
    (ctypes.c_ubyte, "unsigned char"),
    (ctypes.c_short, "short"),
    (ctypes.c_ushort, "unsigned short"),
    (ctypes.c_longlong, "long long"),
    (ctypes.c_ulonglong, "unsigned long long"),
    (ctypes.c_long, "long"),
    (ctypes.c_ulong, "unsigned long"),
    (ctypes.c_int, "int"),
    (ctypes.c_uint, "unsigned int"),
    (ctypes.c_float, "float"),
    (ctypes.c_double, "double"),
    (ctypes.c_longdouble, "long double"),
    (ctypes.c_char_p, "const char *"),
    (ctypes.c_wchar_p, "const wchar_t *"),
    (ctypes.c_void_p, "void *"),
):
    _C_NAMES[_ctype] = _name

_INTEGERS: Final = frozenset(
    {
        ctypes.c_byte,
        ctypes.c_ubyte,
        ctypes.c_short,
        ctypes.c_ushort,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_long,
        ctypes.c_ulong,
        ctypes.c_longlong,
        ctypes.c_ulonglong,
    }
)
_FLOATS: Final = frozenset({ctypes.c_float, ctypes.c_double, ctypes.c_longdouble})


class _Text(ctypes.c_char_p):
    """``const char *`` that also takes ``str``, encoded as UTF-8.

    Arguments arriving over the control protocol are JSON strings; with a
    plain ``c_char_p`` every caller would have to encode them first. ctypes
    keeps the encoded bytes alive for the duration of the call.
    """

    @classmethod
    def from_param(cls, value: Any) -> Any:
        """Convert one argument (ctypes' hook for ``argtypes`` entries)."""
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        return ctypes.c_char_p.from_param(value)


def _c_name(ctype: Any) -> str:
    if ctype is None:
        return "void"
    name = _C_NAMES.get(ctype)
    if name is not None:
        return name
    if isinstance(ctype, type) and issubclass(ctype, ctypes._Pointer):
        return _c_name(ctype._type_) + " *"
    return getattr(ctype, "__name__", repr(ctype))


def _python_type(ctype: Any) -> Any:
    """The Python type a caller passes (or gets back) for a ctypes type."""
    if ctype is None:
        return None
    if ctype is ctypes.c_bool:
        return bool
    if ctype in _INTEGERS:
        return int
    if ctype in _FLOATS:
        return float
    if ctype in (ctypes.c_char_p, ctypes.c_wchar_p, ctypes.c_char, ctypes.c_wchar):
        return str
    return Any


def _check_ctype(ctype: Any, where: str, *, allow_none: bool) -> None:
    if ctype is None and allow_none:
        return
    if isinstance(ctype, type) and issubclass(
        ctype, (ctypes._SimpleCData, ctypes._Pointer, ctypes.Structure, ctypes.Union)
    ):
        return
    raise TypeError(f"{where} must be a ctypes type (e.g. ctypes.c_int), not {ctype!r}")


@dataclass(frozen=True, slots=True)
class NativeFunction:
    """One entry point of a native interface: ``int classify(const char *text)``."""

    name: str
    restype: Any
    argtypes: tuple[Any, ...]
    params: tuple[str, ...]

    def declaration(self) -> str:
        """The C declaration, e.g. ``int classify(const char *text)``."""
        args = []
        for ctype, param in zip(self.argtypes, self.params, strict=True):
            c = _c_name(ctype)
            args.append(f"{c}{param}" if c.endswith("*") else f"{c} {param}")
        return f"{_c_name(self.restype)} {self.name}({', '.join(args) or 'void'})"

    def signature(self) -> inspect.Signature:
        """The Python view of the call: ``(text: str, /) -> int``."""
        empty = inspect.Parameter.empty
        params = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_ONLY,
                annotation=_python_type(ctype) if _python_type(ctype) is not Any else empty,
            )
            for ctype, name in zip(self.argtypes, self.params, strict=True)
        ]
        ret = _python_type(self.restype)
        if self.restype is ctypes.c_char_p:
            ret = bytes  # ctypes hands back the bytes, not text
        return inspect.Signature(params, return_annotation=empty if ret is Any else ret)

    def prototype(self) -> Any:
        """The ctypes function type: GIL kept during the call (see the module doc)."""
        converters = [_Text if t is ctypes.c_char_p else t for t in self.argtypes]
        return ctypes.PYFUNCTYPE(self.restype, *converters)


class NativeInterface:
    """The C signatures a native slot's objects must export.

    ``functions`` maps each entry point's name to ``(restype, argtypes)``:
    ``restype`` a ctypes type or ``None`` (``void``), ``argtypes`` a list of
    ctypes types or ``(name, ctype)`` pairs (the names show in signatures
    and symbol tables; unnamed ones become ``arg1``, ``arg2``...). A
    ``c_char_p`` parameter also accepts ``str`` (encoded as UTF-8).

    The object file carries no types, so the check can verify that each
    entry point exists and is a function, not that its C signature matches:
    the declaration is the host's promise, as a header file is.
    """

    def __init__(
        self,
        functions: Mapping[str, tuple[Any, Sequence[Any]]],
        *,
        name: str = "NativeInterface",
    ) -> None:
        if not functions:
            raise ValueError("a NativeInterface needs at least one function")
        self.name = name
        built: dict[str, NativeFunction] = {}
        for fname, spec in functions.items():
            if not (isinstance(fname, str) and fname.isidentifier()):
                raise ValueError(f"function name {fname!r} is not a C identifier")
            try:
                restype, argspec = spec
            except (TypeError, ValueError):
                raise TypeError(
                    f"{fname}: use (restype, [argtypes]), e.g. (ctypes.c_int, [ctypes.c_char_p])"
                ) from None
            _check_ctype(restype, f"{fname}: the return type", allow_none=True)
            argtypes: list[Any] = []
            params: list[str] = []
            for index, arg in enumerate(argspec, 1):
                pname, ctype = arg if isinstance(arg, tuple) else (f"arg{index}", arg)
                if not (isinstance(pname, str) and pname.isidentifier()):
                    raise ValueError(f"{fname}: parameter name {pname!r} is not an identifier")
                _check_ctype(ctype, f"{fname}: parameter {pname}", allow_none=False)
                argtypes.append(ctype)
                params.append(pname)
            built[fname] = NativeFunction(fname, restype, tuple(argtypes), tuple(params))
        self.functions: Mapping[str, NativeFunction] = built

    def describe(self) -> str:
        """Every declaration, ``; ``-separated (what ``status`` shows)."""
        return "; ".join(f.declaration() for f in self.functions.values())

    def __repr__(self) -> str:
        return f"NativeInterface({self.describe()})"


# ---------------------------------------------------------------------------
# Build directories
# ---------------------------------------------------------------------------

_run_dir: Path | None = None
_run_dir_lock = threading.Lock()


def _private_dir() -> Path:
    """A per-process private directory (0700), removed at exit."""
    global _run_dir
    with _run_dir_lock:
        if _run_dir is None:
            _run_dir = Path(tempfile.mkdtemp(prefix="livepatch-native-"))
            atexit.register(shutil.rmtree, _run_dir, True)
        return _run_dir


def _version_file(version: str) -> Path:
    """A fresh file name for a version's private copy: ``spam_native@2.so``
    (``-2``, ``-3``... when several engines in this process share slot names)."""
    directory = _private_dir()
    with _run_dir_lock:
        path, k = directory / f"{version}.so", 1
        while path.exists():
            k += 1
            path = directory / f"{version}-{k}.so"
        path.touch(mode=0o600)
        return path


# ---------------------------------------------------------------------------
# One loaded object, and the backend
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class NativeObject:
    """One version's object: the file it is mapped from and what is known of it.

    ``path`` is the version's private copy (the name ``/proc/self/maps``
    shows); ``filename`` the name it was loaded as; ``origin`` the directory
    the object or source came from;
    ``handle`` the ``dlopen`` handle once the check mapped it.
    """

    path: Path
    info: ElfInfo
    filename: str
    origin: Path | None
    source: str | None
    handle: int | None = None
    functions: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    live_pointers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _pointer_freed(self) -> None:
        # weakref.finalize callback of each function pointer: once the last
        # one is gone nothing can call into the object, so close it now, as
        # GHC frees an unloaded object at the GC that finds it unreferenced.
        with self.lock:
            self.live_pointers -= 1
            if self.live_pointers > 0:
                return
        self.close()

    def close(self) -> None:
        """``dlclose`` the object (once). Only when no pointer into it is left."""
        with self.lock:
            handle, self.handle = self.handle, None
            self.closed = True
        if handle is not None:
            with contextlib.suppress(OSError):
                dl.dlclose(handle)


_TOKEN: Final = re.compile(r"[A-Za-z_]\w*|[{}]")
_COMMENT_OR_LITERAL: Final = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S
)


@dataclass(frozen=True, slots=True)
class _SourceLines:
    """Where names first appear in a C source: at file scope (declarations
    and definitions) and inside braces (uses in function bodies)."""

    top: dict[str, int]
    body: dict[str, int]

    def defined(self, name: str) -> int | None:
        """The line that defines (or declares) ``name``, else its first use."""
        return self.top.get(name) or self.body.get(name)

    def used(self, name: str) -> int | None:
        """The line of the first use of ``name``, else its declaration."""
        return self.body.get(name) or self.top.get(name)


def _source_lines(source: str | None) -> _SourceLines:
    """Find names in a C source, outside comments, literals and ``#`` lines.

    Objects built without debug information carry no line numbers: for a
    version compiled from source this points the reader at the right place
    (a definition for defined symbols, the first call for undefined ones).
    A heuristic, not a C parser: macros can fool it.
    """
    top: dict[str, int] = {}
    body: dict[str, int] = {}
    if not source:
        return _SourceLines(top, body)
    blanked = _COMMENT_OR_LITERAL.sub(lambda m: "\n" * m.group(0).count("\n"), source)
    depth = 0
    for number, text in enumerate(blanked.splitlines(), 1):
        if text.lstrip().startswith("#"):
            continue
        for token in _TOKEN.findall(text):
            if token == "{":
                depth += 1
            elif token == "}":
                depth = max(depth - 1, 0)
            else:
                (body if depth else top).setdefault(token, number)
    return _SourceLines(top, body)


class NativeBackend:
    """The native half of a slot: what load, check, symbols and unload do to
    shared objects. The engine owns the lifecycle; see :mod:`livepatch.engine`.
    """

    kind: Final = "native"

    def __init__(
        self,
        interface: NativeInterface,
        *,
        compiler: Sequence[str] | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        if not sys.platform.startswith("linux"):
            raise ValueError("native slots need Linux: ELF objects, dlopen and /proc/self/maps")
        self.interface = interface
        self.compiler = list(compiler) if compiler else None
        self.flags = tuple(flags)

    def describe(self) -> str:
        """The interface as C declarations."""
        return self.interface.describe()

    def members(self) -> dict[str, str]:
        """Entry point name -> C declaration."""
        return {name: f.declaration() for name, f in self.interface.functions.items()}

    # -- load --------------------------------------------------------------------

    def load(
        self,
        version: str,
        data: str | bytes,
        filename: str,
        *,
        origin: Path | None = None,
        build_dir: Path | None = None,
    ) -> NativeObject:
        """Compile C source (``str``) or take a ready object (``bytes``), copy
        it to the version's private file and read its ELF tables.

        Nothing is mapped. :class:`LoadFailed` for a compiler error or a file
        the dynamic linker would refuse.
        """
        source = data if isinstance(data, str) else None
        private: Path | None = None
        try:
            if isinstance(data, str):
                built = self._build(data, filename, origin, build_dir)
                private = _version_file(version)
                shutil.copyfile(built, private)
            else:
                private = _version_file(version)
                private.write_bytes(data)
            info = read_elf(private, shown=filename)
        except (NotSharedObject, OSError) as exc:
            if private is not None:
                private.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LoadFailed(
                reason if reason.startswith(filename) else f"{filename}: {reason}",
                filename=filename,
            ) from None
        return NativeObject(private, info, filename, origin, source)

    def _build(
        self, source: str, filename: str, origin: Path | None, build_dir: Path | None
    ) -> Path:
        """The compiled object for ``source``, from the cache when built before.

        The cache key covers the compiler, the flags and the source, so an
        engine restarted on its state directory does not compile again.
        """
        compiler = self.compiler or find_compiler()
        if compiler is None:
            raise LoadFailed(
                f"{filename}: no C compiler found (install gcc or set CC); nothing was loaded",
                filename=filename,
                reason="no-compiler",
            )
        cache = (build_dir if build_dir is not None else _private_dir()) / "cache"
        key = hashlib.sha256(
            "\0".join([*compiler, *BASE_FLAGS, *self.flags, str(origin or ""), source]).encode(
                "utf-8", "surrogateescape"
            )
        ).hexdigest()
        built = cache / f"{key[:32]}.so"
        if not built.is_file():
            compile_c(
                source, filename, built, compiler=compiler, flags=self.flags, include_dir=origin
            )
        return built

    # -- check -------------------------------------------------------------------

    def check(
        self, version: str, obj: NativeObject, quarantine: Quarantine | None = None
    ) -> tuple[ResolveReport, dict[str, Any]]:
        """Resolve the object; map it and make its entry points when it resolves.

        Returns the report and the entry points (name -> ctypes function
        pointer; empty unless the report is ok).
        """
        problems: list[Problem] = []
        lines = _source_lines(obj.source)
        if obj.closed:
            # A version the engine let go of is never mapped again.
            problem = Problem("load-error", obj.path.name, None, "the object was closed")
            return ResolveReport(version, (problem,)), {}
        with Scope(obj.info, obj.origin) as scope:
            for library, error in scope.missing:
                problems.append(
                    Problem(
                        "missing-library",
                        library,
                        None,
                        f"DT_NEEDED library {library} cannot be opened: {_short_dlerror(error)}",
                    )
                )
            missing_versions = scope.missing_versions()
            reported: set[tuple[str, str]] = set()
            for sym in obj.info.symbols:
                if sym.defined or sym.bind == "WEAK" or sym.bind == "LOCAL":
                    continue
                need = (sym.version_library or "", sym.version or "")
                if need in missing_versions:
                    reported.add(need)
                    problems.append(
                        _missing_version(sym, missing_versions[need], lines.used(sym.name))
                    )
                elif scope.lookup(sym.name, sym.version) is None:
                    problems.append(self._unresolved(sym, obj.info, lines.used(sym.name)))
            for need, missing in missing_versions.items():
                if need not in reported:  # needed, yet no symbol of ours asks for it
                    problems.append(_missing_version(None, missing, None))
            problems.extend(self._entry_problems(obj.info, lines))
            if not any(p.severity == "error" for p in problems) and obj.handle is None:
                problems.extend(self._map(obj, quarantine))
        problems.extend(self._warnings(obj.info))
        problems.sort(key=lambda p: (p.line is not None, p.line or 0))
        report = ResolveReport(version, tuple(problems))
        return report, (dict(obj.functions) if report.ok else {})

    def _unresolved(self, sym: ElfSymbol, info: ElfInfo, line: int | None) -> Problem:
        where = ", ".join(info.needed) or "no DT_NEEDED libraries"
        if sym.version is not None:
            return Problem(
                "unresolved",
                f"{sym.name}@{sym.version}",
                line,
                f"undefined symbol {sym.name!r} needs version {sym.version} "
                f"(of {sym.version_library}), which neither the host process nor the object's "
                f"libraries ({where}) define for it: dlopen would refuse the object",
            )
        if sym.lazy and not info.bind_now:
            # Called through the PLT: RTLD_LAZY would map the object fine.
            what, later = "function", "with RTLD_LAZY its first call would kill the process"
        else:
            what, later = "symbol", "dlopen would refuse the object"
        return Problem(
            "unresolved",
            sym.name,
            line,
            f"undefined {what} {sym.name!r} is defined neither by the host process nor by "
            f"the object's libraries ({where}): {later}",
        )

    def _entry_problems(self, info: ElfInfo, lines: _SourceLines) -> list[Problem]:
        problems = []
        iface = self.interface
        for name, fn in iface.functions.items():
            sym = info.symbol(name)
            if sym is None or not sym.defined:
                problems.append(
                    Problem(
                        "missing-member",
                        name,
                        lines.defined(name),
                        f"{iface.name} requires {fn.declaration()}, which the object does not "
                        "export (static functions and hidden symbols are not in .dynsym)",
                    )
                )
            elif not sym.is_function:
                problems.append(
                    Problem(
                        "not-callable",
                        name,
                        lines.defined(name),
                        f"{iface.name}.{name} must be a function, but the object exports "
                        f"{name} as {sym.type.lower()} data ({sym.letter}, size {sym.size})",
                    )
                )
        return problems

    @staticmethod
    def _warnings(info: ElfInfo) -> list[Problem]:
        out = []
        if info.nodelete:
            out.append(
                Problem(
                    "nodelete",
                    "DF_1_NODELETE",
                    None,
                    "the object is flagged NODELETE (linked with -z nodelete): once mapped, "
                    "dlclose never unmaps it",
                    severity="warning",
                )
            )
        if info.unique:
            out.append(
                Problem(
                    "unique-symbols",
                    info.unique[0],
                    None,
                    f"the object defines STB_GNU_UNIQUE symbols ({', '.join(info.unique)}): "
                    "glibc never unloads such an object once mapped",
                    severity="warning",
                )
            )
        return out

    def _map(self, obj: NativeObject, quarantine: Quarantine | None) -> list[Problem]:
        """dlopen the resolved object (after the quarantine, if any) and make
        its entry points. Returns the problems that stopped it, if any."""
        shown = obj.filename
        if quarantine is not None:
            try:
                quarantine.run_native(str(obj.path), shown)
            except LoadFailed as exc:
                return [Problem("crash", shown, None, exc.message)]
        try:
            handle = int(dl.dlopen(str(obj.path), RTLD_NOW | RTLD_LOCAL))
        except OSError as exc:
            error = _short_dlerror(str(exc))
            missing = re.search(r"undefined symbol: (\S+)", error)
            if missing:
                return [
                    Problem("unresolved", missing.group(1), None, f"dlopen refused it: {error}")
                ]
            return [Problem("load-error", shown, None, f"dlopen refused it: {error}")]
        functions: dict[str, Any] = {}
        for name, spec in self.interface.functions.items():
            address = dlsym(handle, name)
            if address is None:  # checked in .dynsym above; a race with the file is all it can be
                with contextlib.suppress(OSError):
                    dl.dlclose(handle)
                return [Problem("missing-member", name, None, f"dlsym found no {name}")]
            functions[name] = _make_pointer(spec, address, self.interface.name)
        with obj.lock:
            obj.handle = handle
            obj.functions = functions
            obj.live_pointers = len(functions)
        for fn in functions.values():
            finalizer = weakref.finalize(fn, obj._pointer_freed)
            finalizer.atexit = False  # never dlclose during interpreter shutdown
        return []

    # -- symbols -----------------------------------------------------------------

    def table(self, version: str, obj: NativeObject) -> SymbolTable:
        """The object's ``.dynsym`` as a symbol table, undefined symbols resolved.

        ``detail`` is ``size N`` for defined symbols (``weak, size N`` for
        weak ones), and where an undefined one resolves (``libc.so.6``), or
        ``?``. Entry points carry their C declaration as the signature.
        """
        lines = _source_lines(obj.source)
        members = self.members()
        rows: list[SymbolRow] = []
        with Scope(obj.info, obj.origin) as scope:
            for sym in obj.info.symbols:
                if sym.bind == "LOCAL":
                    continue  # not visible to dlsym or to other objects
                if sym.defined:
                    extra = {"UNIQUE": ", unique", "WEAK": ""}.get(sym.bind, "")
                    kind = ", ifunc" if sym.type == "IFUNC" else ""
                    prefix = "weak, " if sym.bind == "WEAK" else ""
                    detail = f"{prefix}size {sym.size}{extra}{kind}"
                else:
                    # The version the dynamic linker would bind: the one the
                    # reference asks for, and only if its library defines it.
                    where = scope.lookup(sym.name, sym.version)
                    version_note = f" ({sym.version})" if sym.version and where else ""
                    if sym.version and not where:
                        version_note = f" ({sym.version} not defined)"
                    if sym.bind == "WEAK":
                        detail = f"weak undefined: {where or 'absent (allowed)'}{version_note}"
                    else:
                        detail = f"{where or '?'}{version_note}"
                rows.append(
                    SymbolRow(
                        name=sym.name,
                        letter=sym.letter,
                        line=lines.defined(sym.name) if sym.defined else lines.used(sym.name),
                        signature=members.get(sym.name) if sym.defined else None,
                        detail=detail,
                        code_hash=sym.digest,
                    )
                )
        return SymbolTable(version, tuple(rows))

    # -- purge and unload ---------------------------------------------------------

    def forget(self, obj: NativeObject) -> None:
        """Purge: drop the backend's own index of the entry points."""
        with obj.lock:
            obj.functions = {}

    def release(self, obj: NativeObject, *, pointers_freed: bool) -> tuple[bool, dict[str, int]]:
        """After unload: whether the object left memory, and if not, why.

        ``pointers_freed`` says whether every function pointer is gone (the
        engine's weak references prove it). Only then is the object closed.
        Returns ``(freed, reasons)``: each reason names the evidence, with
        the number of mappings ``/proc/self/maps`` still shows.
        """
        if pointers_freed:
            obj.close()
        maps = mappings(obj.path)
        if not maps:
            with obj.lock:
                closed = obj.closed or obj.handle is None
            if closed:
                obj.path.unlink(missing_ok=True)
            return True, {}
        if not pointers_freed:
            return False, {"maps: still mapped (function pointers still referenced)": len(maps)}
        return False, {f"maps: still mapped ({self._why_mapped(obj.info)})": len(maps)}

    @staticmethod
    def _why_mapped(info: ElfInfo) -> str:
        if info.nodelete:
            return "DF_1_NODELETE"
        if info.unique:
            return f"STB_GNU_UNIQUE symbols: {', '.join(info.unique)}"
        return "another handle is open (a ctypes.CDLL or dlopen elsewhere) or an object needs it"


def _missing_version(sym: ElfSymbol | None, missing: MissingVersion, line: int | None) -> Problem:
    """A needed symbol version its library does not define: what glibc
    refuses with "version `VER_3' not found", found before mapping."""
    what = f"undefined symbol {sym.name!r} needs" if sym is not None else "the object needs"
    return Problem(
        "missing-version",
        f"{sym.name}@{missing.version}" if sym is not None else missing.version,
        line,
        f"{what} version {missing.version} of {missing.library}, but {missing.describe()}: "
        "dlopen would refuse the object",
    )


def _short_dlerror(error: str) -> str:
    # dlerror names the full path of our private copy; the file name is enough.
    return re.sub(r"/\S*/(livepatch-native-[^/\s]+)/", "", error)


def _make_pointer(spec: NativeFunction, address: int, interface: str) -> Any:
    """A ctypes function pointer for ``spec`` at ``address``, introspectable
    like a Python function (name, signature, annotations)."""
    fn = spec.prototype()(address)
    signature = spec.signature()
    annotations: dict[str, Any] = {
        p.name: p.annotation
        for p in signature.parameters.values()
        if p.annotation is not inspect.Parameter.empty
    }
    if signature.return_annotation is not inspect.Signature.empty:
        annotations["return"] = signature.return_annotation
    # ctypes function objects take attributes; inspect and typing read these.
    for attr, value in (
        ("__name__", spec.name),
        ("__qualname__", spec.name),
        ("__signature__", signature),
        ("__annotations__", annotations),
        ("__doc__", f"{spec.declaration()} (native code; {interface})"),
    ):
        setattr(fn, attr, value)
    return fn
