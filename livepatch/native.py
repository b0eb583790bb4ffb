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

* Every version is ``dlopen``\\ ed from its own private copy of the file
  (:mod:`livepatch.native_object`; a memory file for an object sent as
  bytes). The dynamic linker returns the already-loaded object for a path
  (or inode) it has seen, so loading a rebuilt ``rules.so`` again would
  silently give back the old code.
* ``RTLD_LOCAL``: two versions of a slot both define ``classify``; in the
  global scope the second one's internal calls would bind to the first's.
* Calls keep the GIL (``ctypes.PYFUNCTYPE``). A thread inside native code
  therefore holds a reference to the function pointer *and* the GIL, so
  ``dlclose`` (run only once every pointer is gone) can never unmap code a
  thread is executing. The price: native rules do not run in parallel with
  Python threads, which for short rule functions is also the faster choice.

Linux only (ELF, glibc's ``dlopen``, ``/proc/self/maps``). A crash inside a
rule's C code takes the process down; an engine with a quarantine policy
maps every object in a throwaway process first, and before that opens there
the object's ``DT_NEEDED`` libraries this process has not loaded yet, so a
crashing constructor (the object's or a library's) fails the check instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .errors import BadState, LoadFailed
from .filekind import named_for_another_kind
from .ids import parse_version_id
from .native_build import BASE_FLAGS, build_identity, cached_build, compile_c, find_compiler
from .native_elf import ElfInfo, ElfSymbol, NotSharedObject, is_elf, read_elf
from .native_interface import NativeFunction, NativeInterface, make_pointer
from .native_link import RTLD_LOCAL, RTLD_NOW, MissingVersion, Scope, dl, dlsym, mappings
from .native_object import NativeObject, memory_file, private_dir, version_file
from .report import Problem, ResolveReport
from .symbols import SymbolRow, SymbolTable
from .versions import Version

if TYPE_CHECKING:
    from .quarantine import Quarantine

__all__ = [
    "BASE_FLAGS",
    "MAX_OBJECT",
    "NATIVE_LETTERS",
    "ElfInfo",
    "ElfSymbol",
    "NativeBackend",
    "NativeFunction",
    "NativeInterface",
    "NativeObject",
    "NotSharedObject",
    "compile_c",
    "elf_symbol_table",
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
        #: The object :meth:`identity` built last, for the load that follows
        #: it (the engine asks for a source's identity, then loads it): one
        #: cache lookup, and the version is the object its identity names.
        self._identified: tuple[tuple[str, str, Path | None, Path | None], Path] | None = None

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
        content: str | bytes,
        filename: str,
        *,
        sha256: str | None = None,
        origin: Path | None = None,
        build_dir: Path | None = None,
        quarantine: Quarantine | None = None,
        in_memory: bool = False,
    ) -> Version:
        """A new version ``slot@N`` from C source (``str``, compiled) or a ready
        object (``bytes``), in its private copy, its ELF tables read.

        ``in_memory``: the copy is a memory file (``memfd_create``), for an
        object that arrived as bytes. Nothing is mapped, so nothing of the
        object has run (the quarantine maps it at check). :class:`LoadFailed`
        for a compiler error or an object the dynamic linker would refuse.
        """
        slot, number = parse_version_id(version)
        wrong = named_for_another_kind(slot, "native", filename)
        if wrong is not None:
            raise LoadFailed(wrong, filename=filename)
        obj = self._object(version, content, filename, origin, build_dir, in_memory)
        if sha256 is None:
            data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
            sha256 = hashlib.sha256(data).hexdigest()
        source = content if isinstance(content, str) else None
        return Version(
            slot, number, source, sha256, filename, f"{filename} [{version}]", None, None, obj
        )

    def identity(
        self,
        content: str | bytes,
        filename: str,
        *,
        origin: Path | None = None,
        build_dir: Path | None = None,
    ) -> str | None:
        """For C source, what a build of it reads now besides the text (the
        compiler, flags and headers; built here if not cached, so a compile
        error is the load's :class:`LoadFailed`): the same source against
        edited headers is a new version. ``None`` for a ready object, whose
        bytes are all of it."""
        if not isinstance(content, str):
            return None
        built = self._build(content, filename, origin, build_dir)
        self._identified = ((content, filename, origin, build_dir), built)
        return build_identity(built)

    def discard(self, version: Version) -> None:
        """Leave nothing of a version that was never published (its commit
        failed): nothing is mapped yet, so the private copy just goes."""
        if version.obj is not None:
            version.obj.remove()

    def _object(
        self,
        version: str,
        data: str | bytes,
        filename: str,
        origin: Path | None,
        build_dir: Path | None,
        in_memory: bool,
    ) -> NativeObject:
        source = data if isinstance(data, str) else None
        private: Path | None = None
        fd: int | None = None
        try:
            if isinstance(data, str):
                identified, self._identified = self._identified, None
                if identified is not None and identified[0] == (data, filename, origin, build_dir):
                    built = identified[1]
                else:
                    built = self._build(data, filename, origin, build_dir)
                private = version_file(version)
                shutil.copyfile(built, private)
                info = read_elf(private, shown=filename)
            elif in_memory:
                # Read the tables from the bytes first: a refused object never
                # becomes a memory file.
                info = read_elf(data, shown=filename)
                fd = memory_file(version, data)
                private = Path(f"/proc/self/fd/{fd}")
            else:
                private = version_file(version)
                private.write_bytes(data)
                info = read_elf(private, shown=filename)
        except (NotSharedObject, OSError) as exc:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            elif private is not None:
                private.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LoadFailed(
                reason if reason.startswith(filename) else f"{filename}: {reason}",
                filename=filename,
            ) from None
        return NativeObject(private, info, filename, origin, source, fd=fd)

    def _build(
        self, source: str, filename: str, origin: Path | None, build_dir: Path | None
    ) -> Path:
        """The compiled object for ``source``, from the cache when built before
        (:func:`~livepatch.native_build.cached_build`: keyed by content, not by
        ``origin``, which is only where ``#include "x.h"`` looks), so an engine
        restarted on its state directory does not compile again.
        """
        compiler = self.compiler or find_compiler()
        if compiler is None:
            raise LoadFailed(
                f"{filename}: no C compiler found (install gcc or set CC); nothing was loaded",
                filename=filename,
                reason="no-compiler",
            )
        cache = (build_dir if build_dir is not None else private_dir()) / "cache"
        return cached_build(
            source, filename, cache, compiler=compiler, flags=self.flags, include_dir=origin
        )

    # -- check -------------------------------------------------------------------

    def check(
        self, version: Version, quarantine: Quarantine | None = None
    ) -> tuple[ResolveReport, dict[str, Any]]:
        """Resolve the object; map it and make its entry points when it resolves.

        Returns the report and the entry points (name -> ctypes function
        pointer; empty unless the report is ok), which the engine publishes
        into the version's namespace once the check is committed.
        """
        obj = version.obj
        if obj is None or version.namespace is None:
            raise BadState(f"{version.id} is unloaded: its code is gone", version=version.id)
        return self.resolve(version.id, obj, quarantine)

    def resolve(
        self, version: str, obj: NativeObject, quarantine: Quarantine | None = None
    ) -> tuple[ResolveReport, dict[str, Any]]:
        """:meth:`check` of an object outside any engine (``version`` names it)."""
        problems: list[Problem] = []
        lines = _source_lines(obj.source)
        if obj.closed:
            # A version the engine let go of is never mapped again.
            problem = Problem("load-error", obj.path.name, None, "the object was closed")
            return ResolveReport(version, (problem,)), {}
        scope = Scope(obj.info, obj.origin)
        if quarantine is not None and obj.handle is None:
            # Opening the scope runs the constructors of every library not
            # loaded yet, in this process: they run in a child first.
            fresh = scope.unopened()
            if fresh:
                try:
                    quarantine.run_libraries(fresh, obj.filename)
                except LoadFailed as exc:
                    problem = Problem("crash", obj.filename, None, exc.message)
                    return ResolveReport(version, (problem,)), {}
        with scope:
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
                if obj.fd is not None and _dumpable():
                    # A warm spare child (started before this memory file
                    # existed) opens it through our /proc entry: its own
                    # process of the same user may, while we are dumpable.
                    quarantine.run_native(f"/proc/{os.getpid()}/fd/{obj.fd}", shown)
                else:
                    quarantine.run_native(str(obj.path), shown, fd=obj.fd)
            except LoadFailed as exc:
                return [Problem("crash", shown, None, exc.message)]
        try:
            handle = int(dl.dlopen(str(obj.path), RTLD_NOW | RTLD_LOCAL))
        except OSError as exc:
            # dlerror names the copy: the name it was loaded as says more.
            error = _short_dlerror(str(exc).replace(str(obj.path), shown))
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
            functions[name] = make_pointer(spec, address, self.interface.name)
        with obj.lock:
            obj.handle = handle
            obj.functions = functions
            obj.live_pointers = len(functions)
        for fn in functions.values():
            finalizer = weakref.finalize(fn, obj._pointer_freed)
            finalizer.atexit = False  # never dlclose during interpreter shutdown
        return []

    # -- symbols -----------------------------------------------------------------

    def table(self, version: Version) -> SymbolTable:
        """The version's symbol table: see :meth:`object_table`."""
        if version.obj is None:
            raise BadState(f"{version.id} has no object", version=version.id)
        return self.object_table(version.id, version.obj)

    def object_table(self, version: str, obj: NativeObject) -> SymbolTable:
        """The object's ``.dynsym`` as a symbol table: :func:`elf_symbol_table`,
        entry points with the interface's C declarations."""
        return elf_symbol_table(version, obj, self.members())

    # -- purge and unload ---------------------------------------------------------

    def forget(self, version: Version) -> None:
        """Purge: drop the backend's own index of the entry points."""
        obj = version.obj
        if obj is not None:
            with obj.lock:
                obj.functions = {}

    def release(self, version: Version, *, pointers_freed: bool) -> tuple[bool, dict[str, int]]:
        """After unload: whether the object left memory, and if not, why.

        ``pointers_freed`` says whether every function pointer is gone (the
        engine's weak references prove it). Only then is the object closed.
        Returns ``(freed, reasons)``: each reason names the evidence, with
        the number of mappings ``/proc/self/maps`` still shows.
        """
        obj = version.obj
        if obj is None:
            return pointers_freed, {}
        if pointers_freed:
            obj.close()
        maps = mappings(obj.shown)
        if not maps:
            with obj.lock:
                closed = obj.closed or obj.handle is None
            if closed:
                obj.remove()
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


def elf_symbol_table(version: str, obj: NativeObject, members: Mapping[str, str]) -> SymbolTable:
    """An object's ``.dynsym`` as a symbol table, undefined symbols resolved
    in this process (as the dynamic linker would bind them here).

    ``detail`` is ``size N`` for defined symbols (``weak, size N`` for
    weak ones), and where an undefined one resolves (``libc.so.6``), or
    ``?``. Entry points carry their C declaration as the signature.
    """
    lines = _source_lines(obj.source)
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


def _dumpable() -> bool:
    """Whether this process is dumpable (``prctl(PR_GET_DUMPABLE)``): only
    then may another process of its user open its ``/proc/PID/fd`` entries."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(3, 0, 0, 0, 0) == 1)  # PR_GET_DUMPABLE
    except (OSError, AttributeError):
        return False


def _short_dlerror(error: str) -> str:
    # dlerror names the full path of our private copy; the file name is enough.
    return re.sub(r"/\S*/(livepatch-native-[^/\s]+)/", "", error)
