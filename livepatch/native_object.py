"""Where a native version's object lives: its private copy (a file, or an
anonymous memory file) and the ``dlopen`` handle once its check mapped it.

Every version is ``dlopen``\\ ed from its own private copy: the dynamic
linker returns the already-loaded object for a path (or inode) it has seen,
so loading a rebuilt ``rules.so`` again would silently give back the old
code. The copy is a file in a per-process private directory for objects
the engine compiled or read from a path, and a ``memfd_create`` file for an
object that arrived as bytes (``load {"object": ...}``): nothing of it
touches a file system, and ``dlopen`` maps it through ``/proc/self/fd/N``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .native_elf import ElfInfo
from .native_link import dl

__all__ = ["NativeObject", "memory_file", "private_dir", "version_file"]

_run_dir: Path | None = None
_run_dir_lock = threading.Lock()
# Names given to memory files in this process: /proc/self/maps shows a
# memory file by its name, so each version's must be its own.
_memory_names: set[str] = set()


def private_dir() -> Path:
    """A per-process private directory (0700), removed at exit."""
    global _run_dir
    with _run_dir_lock:
        if _run_dir is None:
            _run_dir = Path(tempfile.mkdtemp(prefix="livepatch-native-"))
            atexit.register(shutil.rmtree, _run_dir, True)
        return _run_dir


def version_file(version: str) -> Path:
    """A fresh file name for a version's private copy: ``spam_native@2.so``
    (``-2``, ``-3``... when several engines in this process share slot names)."""
    directory = private_dir()
    with _run_dir_lock:
        path, k = directory / f"{version}.so", 1
        while path.exists():
            k += 1
            path = directory / f"{version}-{k}.so"
        path.touch(mode=0o600)
        return path


def memory_file(version: str, data: bytes) -> int:
    """A memory file (``memfd_create``, close-on-exec) holding ``data``; its fd.

    Named ``spam_native@2.so`` (``-2``... as :func:`version_file`), which is
    what ``/proc/self/maps`` shows once it is mapped:
    ``/memfd:spam_native@2.so (deleted)``. ``OSError`` if the kernel refuses
    (no memory), with nothing left open.
    """
    with _run_dir_lock:
        name, k = f"{version}.so", 1
        while name in _memory_names:
            k += 1
            name = f"{version}-{k}.so"
        _memory_names.add(name)
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(eq=False)
class NativeObject:
    """One version's object: the file it is mapped from and what is known of it.

    ``path`` is the version's private copy (the name ``/proc/self/maps``
    shows), or ``/proc/self/fd/N`` for a memory file (``fd``, kept open
    until the object left memory); ``filename`` the name it was loaded as;
    ``origin`` the directory the object or source came from (``None`` for
    bytes); ``handle`` the ``dlopen`` handle once the check mapped it.
    """

    path: Path
    info: ElfInfo
    filename: str
    origin: Path | None
    source: str | None
    fd: int | None = None
    handle: int | None = None
    functions: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    live_pointers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: The name ``/proc/self/maps`` shows for the copy: its path, or
    #: ``/memfd:spam_native@2.so (deleted)`` for a memory file. Unique in the
    #: process, and still right once the memory file's fd is closed.
    shown: str = ""

    def __post_init__(self) -> None:
        if not self.shown:
            self.shown = (
                os.readlink(f"/proc/self/fd/{self.fd}") if self.fd is not None else str(self.path)
            )

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

    def remove(self) -> None:
        """Delete the private copy (unlink the file, or close the memory
        file): only once the object is not mapped, or was never."""
        with self.lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            self.path.unlink(missing_ok=True)
