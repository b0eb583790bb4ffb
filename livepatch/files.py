"""Reading a file named by a client, with bounds on what it can cost.

``load {"path"}`` names a file on the engine's machine. Only a regular file
is read: a FIFO would block the reader for ever, ``/dev/zero`` never ends,
and ``/proc`` or ``/sys`` files say they are empty and are generated as they
are read. The size cap is enforced while reading (not trusted from ``stat``)
and the read has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import Final

from .errors import LoadFailed
from .filekind import is_elf

__all__ = ["READ_TIMEOUT_S", "read_regular_file", "text_or_object"]

#: A whole file must be read within this many seconds.
READ_TIMEOUT_S: Final = 10.0
_CHUNK: Final = 1 << 20
#: Pseudo file systems whose "regular" files are generated on read.
_PSEUDO_ROOTS: Final = ("/proc", "/sys")


def _pseudo_devices() -> set[int]:
    devices = set()
    for root in _PSEUDO_ROOTS:
        try:
            devices.add(os.stat(root).st_dev)
        except OSError:
            continue
    return devices


def read_regular_file(
    path: str, limit: int, *, name: str, timeout_s: float = READ_TIMEOUT_S
) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises :class:`LoadFailed` with a one-line reason for anything else: not
    there, not a regular file, in ``/proc`` or ``/sys``, over ``limit``
    bytes, or not read within ``timeout_s``.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a socket cannot be opened at all
            _refuse_irregular(path, os.stat(path).st_mode, name)
        raise LoadFailed(f"cannot read {path}: {exc.strerror or exc}", filename=name) from None
    try:
        st = os.fstat(fd)
        _refuse_irregular(path, st.st_mode, name)
        if st.st_dev in _pseudo_devices():
            raise LoadFailed(
                f"{path} is in /proc or /sys (generated as it is read): "
                "copy what you mean to load into a regular file",
                filename=name,
            )
        if st.st_size > limit:
            raise LoadFailed(
                f"{name} is {st.st_size} bytes, over the {limit}-byte limit", filename=name
            )
        os.set_blocking(fd, True)
        deadline = time.monotonic() + timeout_s
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, _CHUNK):
            total += len(chunk)
            if total > limit:  # the file grew, or stat did not tell the truth
                raise LoadFailed(f"{name} is over the {limit}-byte limit", filename=name)
            if time.monotonic() > deadline:
                raise LoadFailed(
                    f"{path} was not read within {timeout_s:g} s: copy it to a local disk",
                    filename=name,
                )
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise LoadFailed(f"cannot read {path}: {exc.strerror or exc}", filename=name) from None
    finally:
        os.close(fd)


def _refuse_irregular(path: str, mode: int, name: str) -> None:
    if not stat.S_ISREG(mode):
        raise LoadFailed(
            f"{path} is {_kind(mode)}, not a regular file: load a source file or a shared object",
            filename=name,
        )


def _kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def text_or_object(data: bytes, name: str) -> str | bytes:
    """A file's content as the engine loads it: an ELF object stays bytes,
    anything else must be UTF-8 text (:class:`LoadFailed` if it is neither)."""
    if is_elf(data):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadFailed(
            f"{name} is neither UTF-8 text (bad byte at offset {exc.start}) "
            "nor an ELF shared object",
            filename=name,
        ) from None
