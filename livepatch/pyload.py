"""The Python half of a slot: compile a rule source and run its body in a
private module, leaving nothing behind when either fails; check, tabulate
and forget it (:class:`PythonBackend`, see :mod:`livepatch.backend`).

The engine owns the lifecycle (numbers, states, publication); this module
owns what a load does to the interpreter: ``sys.modules`` under a private
name, ``linecache`` for tracebacks, the collector paused while large modules
are built, and warnings for threads a body starts.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import linecache
import sys
import threading
import traceback
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from .errors import BadState, LoadFailed
from .filekind import named_for_another_kind
from .handoff import check_handoff
from .ids import parse_version_id
from .resolve import Problem, ResolveReport, check_module, interface_members
from .symbols import SymbolTable, build_symbol_table
from .versions import Version

if typing.TYPE_CHECKING:
    from .quarantine import Quarantine

__all__ = [
    "MAX_SOURCE",
    "MODULE_PREFIX",
    "PythonBackend",
    "compile_source",
    "cyclic_gc_paused",
    "execute_module",
    "free_module_name",
    "threads_started_by",
]

#: Prefix of the private ``sys.modules`` names of loaded versions. The host
#: never uses it, so a rule module can never shadow a host module.
MODULE_PREFIX = "livepatch.loaded"

#: Largest source the engine accepts, in characters.
MAX_SOURCE = 8 * 1024 * 1024


def compile_source(source: str, filename: str, code_filename: str) -> types.CodeType:
    """Compile a rule source; :class:`LoadFailed` naming ``file:line:col``."""
    try:
        return compile(source, code_filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = exc.lineno or 0
        col = exc.offset or 0
        raise LoadFailed(
            f"{filename}:{line}:{col}: {type(exc).__name__}: {exc.msg}",
            filename=filename,
            line=line,
            col=col,
        ) from None
    except ValueError as exc:  # e.g. source with NUL bytes
        raise LoadFailed(f"{filename}: {exc}", filename=filename) from None


def execute_module(
    code: types.CodeType, source: str, filename: str, code_filename: str, module_name: str
) -> types.ModuleType:
    """Run a module body in a fresh module registered as ``module_name``.

    On an exception nothing is left behind (no ``sys.modules`` entry, no
    ``linecache`` lines) and :class:`LoadFailed` names ``file:line:col``.
    """
    module = types.ModuleType(module_name)
    module.__file__ = filename
    # Registered while the body runs because dataclasses, typing and
    # pickle look classes' modules up in sys.modules.
    sys.modules[module_name] = module
    lines = source.splitlines(keepends=True)
    linecache.cache[code_filename] = (len(source), None, lines, code_filename)
    try:
        exec(code, module.__dict__)
    except BaseException as exc:
        if sys.modules.get(module_name) is module:
            del sys.modules[module_name]
        linecache.cache.pop(code_filename, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line, col = error_position(exc, code_filename)
        raise LoadFailed(
            f"{filename}:{line}:{col}: {type(exc).__name__} while running the module body: "
            f"{one_line(exc)}",
            filename=filename,
            line=line,
            col=col,
        ) from None
    return module


def threads_started_by(
    module: types.ModuleType, before: set[threading.Thread]
) -> tuple[Problem, ...]:
    """Warnings for threads (and timers) that the module body started.

    Only threads whose code belongs to the module are counted: the target of
    a Thread, the function of a Timer, or a Thread subclass defined there, so
    threads the engine itself starts meanwhile are never blamed on it.
    """
    warnings = []
    for thread in threading.enumerate():
        if thread in before:
            continue
        target = getattr(thread, "_target", None) or getattr(thread, "function", None)
        ours = getattr(target, "__globals__", None) is module.__dict__
        if not ours and type(thread).__module__ != module.__name__:
            continue
        kind = "timer" if isinstance(thread, threading.Timer) else "thread"
        what = getattr(target, "__name__", None) or type(thread).__name__
        line = getattr(getattr(target, "__code__", None), "co_firstlineno", None)
        warnings.append(
            Problem(
                kind="import-side-effect",
                symbol=what,
                line=line,
                message=(
                    f"the module body started a {kind} running {what}() at import: it keeps "
                    "running after purge and unload; start work from the rules instead"
                ),
                severity="warning",
            )
        )
    return tuple(warnings)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a module is compiled, run or
    analysed.

    Compiling and walking a large module allocates many container objects at
    once, and the collections this triggers made load + check grow faster
    than the module (12.7x for 10x the functions, 11.1x paused; see
    ``livepatch bench --section load_check``). Reference counting still frees
    everything meanwhile; only cycles wait until the pause ends. A host that
    disabled the collector itself keeps it disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def free_module_name(base: str) -> str:
    """``base``, or ``base_2``, ``base_3``...: two engines in one process (or a
    host module that happens to use the name) must never share a module."""
    name, k = base, 1
    while name in sys.modules:
        k += 1
        name = f"{base}_{k}"
    return name


def error_position(exc: BaseException, code_filename: str) -> tuple[int, int]:
    """Line and 1-based column of the deepest frame in the loaded source."""
    line, col = 0, 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == code_filename:
            line = frame.lineno or 0
            col = (frame.colno or 0) + 1
    return line, col


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PythonBackend:
    """The Python half of a slot: rule modules checked against a Protocol
    (``interface=None``: names only). The engine owns the lifecycle; see
    :mod:`livepatch.backend`."""

    kind: Final = "python"

    def __init__(self, interface: type | None) -> None:
        self.interface = interface

    def describe(self) -> str:
        """The Protocol's dotted name (empty without one)."""
        i = self.interface
        return f"{i.__module__}.{i.__qualname__}" if i is not None else ""

    def members(self) -> dict[str, Any]:
        """The Protocol's members by name."""
        return interface_members(self.interface) if self.interface is not None else {}

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
        """Compile ``content`` and run its body as module of a new version
        (first in ``quarantine``, when given). A syntax error or an exception
        in the body is :class:`LoadFailed` naming ``file:line:col``, with
        nothing left behind."""
        slot, number = parse_version_id(version)
        if not isinstance(content, str):
            what = "a compiled ELF object" if content[:4] == b"\x7fELF" else "not source text"
            raise LoadFailed(
                f"{filename} is {what}, but slot {slot} takes Python source", filename=filename
            )
        wrong = named_for_another_kind(slot, "python", filename)
        if wrong is not None:
            raise LoadFailed(wrong, filename=filename)
        if sha256 is None:
            sha256 = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
        if quarantine is not None:
            quarantine.run(content, filename, self.interface)
        # A code filename unique to the version keeps tracebacks and
        # linecache right when two versions come from the same file name.
        code_filename = f"{filename} [{version}]"
        module_name = free_module_name(f"{MODULE_PREFIX}.{slot}_{number}")
        with cyclic_gc_paused():
            code = compile_source(content, filename, code_filename)
            before = set(threading.enumerate())
            module = execute_module(code, content, filename, code_filename, module_name)
        threads = threads_started_by(module, before)
        loaded = Version(slot, number, content, sha256, filename, code_filename, module, code)
        loaded.import_threads = threads
        return loaded

    def identity(
        self,
        content: str | bytes,
        filename: str,
        *,
        origin: Path | None = None,
        build_dir: Path | None = None,
    ) -> str | None:
        """Nothing besides the source: a Python version is its text."""
        return None

    def discard(self, version: Version) -> None:
        """Not journaled, so never a version: leave nothing behind."""
        module = version.module
        if module is not None and sys.modules.get(version.module_name) is module:
            del sys.modules[version.module_name]
        linecache.cache.pop(version.code_filename, None)

    def check(
        self, version: Version, quarantine: Quarantine | None
    ) -> tuple[ResolveReport, dict[str, Any]]:
        """Every global name resolves, the Protocol's members conform, and the
        warnings of the load (threads) and of the hand-over hook. Nothing to
        publish: the module's namespace is the version's."""
        module, code = live_code(version)
        with cyclic_gc_paused():
            report = check_module(version.id, module, code, self.interface)
        extra = (*version.import_threads, *check_handoff(module.__dict__))
        if extra:
            report = ResolveReport(report.version, report.problems + extra)
        return report, {}

    def table(self, version: Version) -> SymbolTable:
        """nm for Python (see :mod:`livepatch.symbols`)."""
        module, code = live_code(version)
        with cyclic_gc_paused():
            return build_symbol_table(version.id, module, code, version.source or "")

    def forget(self, version: Version) -> None:
        """Purge: drop the module from ``sys.modules``."""
        module = version.module
        if module is not None and sys.modules.get(version.module_name) is module:
            del sys.modules[version.module_name]

    def release(self, version: Version, *, pointers_freed: bool) -> tuple[bool, dict[str, int]]:
        """The collector decides: freed when the weak references are dead."""
        return pointers_freed, {}


def live_code(version: Version) -> tuple[types.ModuleType, types.CodeType]:
    """A version's module and code; :class:`BadState` once it is unloaded."""
    if version.module is None or version.code is None:
        raise BadState(f"{version.id} is unloaded: its code is gone", version=version.id)
    return version.module, version.code
