"""The dynamic linker, through ctypes: the lookup scope of an object before
it is mapped, symbol versions included, and ``/proc/PID/maps``."""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Any, Final

from .native_elf import ElfInfo

__all__ = ["RTLD_LAZY", "RTLD_LOCAL", "RTLD_NOW", "Scope", "dl", "dlsym", "mappings"]

# ctypes' own dlopen/dlsym/dlclose (typeshed does not know dlopen(NULL)).
dl: Any = _ctypes
# glibc's values (os.RTLD_* mirror them on Linux).
RTLD_LAZY: Final = getattr(os, "RTLD_LAZY", 1)
RTLD_NOW: Final = getattr(os, "RTLD_NOW", 2)
RTLD_LOCAL: Final = getattr(os, "RTLD_LOCAL", 0)

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
    try:
        return int(dl.dlsym(handle, name))
    except OSError:
        return None


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
        self.missing: list[tuple[str, str]] = []
        self._host = 0

    def __enter__(self) -> Scope:
        self._host = int(dl.dlopen(None, RTLD_LAZY))
        for library in self.info.needed:
            try:
                self.handles.append(
                    int(dl.dlopen(self._locate(library), RTLD_LAZY | RTLD_LOCAL))
                )
            except OSError as exc:
                self.missing.append((library, str(exc)))
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

    def lookup(self, name: str) -> str | None:
        """Where ``name`` resolves (a file name), or ``None``."""
        for handle in (self._host, *self.handles):
            address = dlsym(handle, name)
            if address is not None:
                return _provider(address)
        return None


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
