"""The dynamic linker, through ctypes: the lookup scope of an object before
it is mapped, symbol versions included, and ``/proc/PID/maps``."""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .native_elf import ElfInfo, version_definitions

__all__ = [
    "RTLD_LAZY",
    "RTLD_LOCAL",
    "RTLD_NOW",
    "MissingVersion",
    "Scope",
    "dl",
    "dlsym",
    "dlvsym",
    "loaded_path",
    "mappings",
]

# ctypes' own dlopen/dlsym/dlclose (typeshed does not know dlopen(NULL)).
dl: Any = _ctypes
# glibc's values (os.RTLD_* mirror them on Linux).
RTLD_LAZY: Final = getattr(os, "RTLD_LAZY", 1)
RTLD_NOW: Final = getattr(os, "RTLD_NOW", 2)
RTLD_LOCAL: Final = getattr(os, "RTLD_LOCAL", 0)
RTLD_NOLOAD: Final = getattr(os, "RTLD_NOLOAD", 4)

# ---------------------------------------------------------------------------
# The dynamic linker, through ctypes
# ---------------------------------------------------------------------------


class _DlInfo(ctypes.Structure):
    _fields_ = (
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    )


def _dladdr_function() -> Any:
    # dladdr lives in libc since glibc 2.34, in libdl before.
    for name in (None, "libdl.so.2"):
        with contextlib.suppress(OSError, AttributeError):
            fn = ctypes.CDLL(name).dladdr
            fn.argtypes = (ctypes.c_void_p, ctypes.POINTER(_DlInfo))
            fn.restype = ctypes.c_int
            return fn
    return None


_dladdr = _dladdr_function() if sys.platform.startswith("linux") else None
_HOST_EXE: Final = os.path.realpath(sys.executable)


def _provider(address: int) -> str:
    """Which file of the process defines ``address``: ``libc.so.6``, or
    ``host (python3.11)`` for the program itself."""
    if _dladdr is None:
        return "found"
    info = _DlInfo()
    if not _dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return "host"
    fname = os.fsdecode(info.dli_fname)
    if not fname or os.path.realpath(fname) == _HOST_EXE:
        return f"host ({Path(_HOST_EXE).name})"
    return Path(fname).name


def dlsym(handle: int, name: str) -> int | None:
    """The address of ``name`` in ``handle``'s scope, or ``None``."""
    try:
        return int(dl.dlsym(handle, name))
    except OSError:
        return None


class _LinkMap(ctypes.Structure):
    # The public head of glibc's struct link_map (<link.h>).
    _fields_ = (("l_addr", ctypes.c_size_t), ("l_name", ctypes.c_char_p))


_RTLD_DI_LINKMAP: Final = 2


def _libdl_function(name: str, restype: Any, *argtypes: Any) -> Any:
    # dlvsym and dlinfo live in libc since glibc 2.34, in libdl before.
    for library in (None, "libdl.so.2"):
        with contextlib.suppress(OSError, AttributeError):
            fn = getattr(ctypes.CDLL(library), name)
            fn.argtypes = argtypes
            fn.restype = restype
            return fn
    return None


_linux = sys.platform.startswith("linux")
_dlvsym = (
    _libdl_function("dlvsym", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p)
    if _linux
    else None
)
_dlinfo = (
    _libdl_function("dlinfo", ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
    if _linux
    else None
)


def dlvsym(handle: int, name: str, version: str) -> int | None:
    """The address of ``name`` at symbol version ``version`` (what the
    dynamic linker binds a versioned reference to), or ``None``."""
    if _dlvsym is None:
        return dlsym(handle, name)
    address = _dlvsym(handle, name.encode(), version.encode())
    return int(address) if address else None


def loaded_path(handle: int) -> str | None:
    """The file an open handle maps (its ``link_map``'s ``l_name``)."""
    if _dlinfo is None:
        return None
    pointer = ctypes.c_void_p()
    if _dlinfo(handle, _RTLD_DI_LINKMAP, ctypes.byref(pointer)) != 0 or not pointer.value:
        return None
    name = ctypes.cast(pointer, ctypes.POINTER(_LinkMap)).contents.l_name
    return os.fsdecode(name) if name else None


def _definitions(path: str) -> frozenset[str] | None:
    """:func:`version_definitions` of a library file, cached by file identity."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (path, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    with _definitions_lock:
        if key in _definitions_cache:
            cached: frozenset[str] | None = _definitions_cache[key]
            return cached
    try:
        found = version_definitions(path)
    except Exception:  # noqa: BLE001 - an unreadable library: nothing to compare
        return None
    with _definitions_lock:
        _definitions_cache[key] = found
    return found


_definitions_cache: dict[tuple[str, int, int, int], frozenset[str] | None] = {}
_definitions_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class MissingVersion:
    """A version the object needs that its library does not define."""

    library: str
    version: str
    path: str
    defined: tuple[str, ...]  # the versions the library does define, base excluded

    def describe(self) -> str:
        """``libver.so (/path) defines only VER_1``."""
        if not self.defined:
            return f"{self.library} ({self.path}) defines no symbol versions"
        return f"{self.library} ({self.path}) defines only {', '.join(self.defined)}"


class Scope:
    """The lookup scope of an ``RTLD_LOCAL`` object, before it is mapped.

    The dynamic linker binds an object's undefined symbols to the global
    scope (the program and its libraries) first, then to the object's own
    dependencies. Each ``DT_NEEDED`` library is opened ``RTLD_LAZY |
    RTLD_LOCAL`` (honouring the object's ``RUNPATH``, with ``$ORIGIN`` the
    directory the object came from) and stays open while the scope is: the
    object's own ``dlopen`` then finds it loaded, by soname.
    """

    def __init__(self, info: ElfInfo, origin: Path | None) -> None:
        self.info = info
        self.origin = origin
        self.handles: list[int] = []
        self.by_library: dict[str, int] = {}
        self.missing: list[tuple[str, str]] = []
        self._host = 0

    def __enter__(self) -> Scope:
        self._host = int(dl.dlopen(None, RTLD_LAZY))
        for library in self.info.needed:
            try:
                handle = int(dl.dlopen(self._locate(library), RTLD_LAZY | RTLD_LOCAL))
            except OSError as exc:
                self.missing.append((library, str(exc)))
                continue
            self.handles.append(handle)
            self.by_library[library] = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in reversed(self.handles):
            with contextlib.suppress(OSError):
                dl.dlclose(handle)
        self.handles.clear()
        if self._host:
            with contextlib.suppress(OSError):
                dl.dlclose(self._host)
            self._host = 0

    def unopened(self) -> list[str]:
        """Where the ``DT_NEEDED`` libraries this process has not loaded yet
        are (what entering the scope would run constructors of); asks the
        dynamic linker with ``RTLD_NOLOAD``, which maps nothing."""
        fresh = []
        for library in self.info.needed:
            where = self._locate(library)
            try:
                handle = dl.dlopen(where, RTLD_LAZY | RTLD_NOLOAD)
            except OSError:
                fresh.append(where)
                continue
            with contextlib.suppress(OSError):
                dl.dlclose(handle)
        return fresh

    def _locate(self, library: str) -> str:
        if "/" in library:
            return library
        for entry in self.info.runpath:
            if self.origin is not None:
                entry = entry.replace("$ORIGIN", str(self.origin)).replace(
                    "${ORIGIN}", str(self.origin)
                )
            candidate = Path(entry) / library
            if "$" not in entry and candidate.is_file():
                return str(candidate)
        return library

    def lookup(self, name: str, version: str | None = None) -> str | None:
        """Where ``name`` resolves (a file name), or ``None``. With a
        ``version`` only a definition of that version counts, as for the
        dynamic linker binding a versioned reference (``dlvsym``)."""
        for handle in (self._host, *self.handles):
            address = dlsym(handle, name) if version is None else dlvsym(handle, name, version)
            if address is not None:
                return _provider(address)
        return None

    def missing_versions(self) -> dict[tuple[str, str], MissingVersion]:
        """The needed versions (``.gnu.version_r``) that the library providing
        them does not define (``.gnu.version_d``), keyed by (library,
        version). glibc refuses to map such an object ("version `VER_3' not
        found"); this finds it from the files, before anything is mapped."""
        out: dict[tuple[str, str], MissingVersion] = {}
        for library, version in self.info.needed_versions:
            handle = self.by_library.get(library)
            if handle is None:
                continue  # not opened: reported as a missing library
            path = loaded_path(handle)
            if path is None:
                continue
            defined = _definitions(path)
            if defined is not None and version in defined:
                continue
            # A library without any version definitions passes glibc's version
            # check, but binding a versioned reference to it then fails an
            # assertion in ld.so (check_match) that ends the process: refuse.
            shown = tuple(sorted(v for v in (defined or ()) if v != library))
            out[(library, version)] = MissingVersion(library, version, path, shown)
        return out


def mappings(path: str | os.PathLike[str], pid: int | str = "self") -> list[str]:
    """The lines of ``/proc/PID/maps`` that map the file ``path``."""
    target = os.path.realpath(path)
    found = []
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as maps:
            for line in maps:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5] in (target, f"{target} (deleted)"):
                    found.append(line.rstrip("\n"))
    except OSError:
        return []
    return found
