"""Reading a file named by a client, with bounds on what it can cost.

``load {"path"}`` names a file on the engine's machine. Only a regular file
is read: a FIFO would block the reader for ever, ``/dev/zero`` never ends,
and ``/proc`` or ``/sys`` files say they are empty and are generated as they
are read. The size cap is enforced while reading (not trusted from ``stat``)
and the read has a deadline.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import stat
import time
import tokenize
from typing import Final

from .errors import LoadFailed
from .filekind import file_kind, is_elf

__all__ = ["READ_TIMEOUT_S", "python_source_text", "read_regular_file", "text_or_object"]

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
    """A file's content as the engine loads it: an ELF object stays bytes; a
    Python source is decoded as Python decodes it (:func:`python_source_text`);
    C (``.c``, a ``.so`` that is no ELF) must be UTF-8. :class:`LoadFailed`
    with a one-line reason otherwise."""
    if is_elf(data):
        return data
    if file_kind(name) == "python":
        return python_source_text(data, name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(name, exc.start) from None


def python_source_text(data: bytes, name: str) -> str:
    """The text of the Python source ``data`` as ``python3 FILE`` reads it
    (PEP 263, :func:`tokenize.detect_encoding`): UTF-8 unless a coding cookie
    in its first two lines says otherwise, a UTF-8 byte order mark honoured
    and dropped. :class:`LoadFailed` names the file and what is wrong: an
    unknown or unusable encoding in the cookie, a BOM contradicting the
    cookie, or bytes that are not valid in the encoding.
    """
    bom = data.startswith(codecs.BOM_UTF8)
    body = data[len(codecs.BOM_UTF8) :] if bom else data
    cookie = _cookie(body)
    try:
        encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    except SyntaxError:
        if cookie is not None and not _known(cookie):
            raise LoadFailed(
                f"{name}: unknown encoding {cookie!r} in its coding cookie", filename=name
            ) from None
        if bom and cookie is not None:
            raise LoadFailed(
                f"{name} starts with a UTF-8 byte order mark but its coding cookie declares "
                f"{cookie!r}: drop one of them",
                filename=name,
            ) from None
        # tokenize also refuses a cookie line that is not UTF-8 itself, which
        # python3 reads; without a cookie, the UTF-8 decoding says where it fails.
        encoding = cookie or "utf-8"
    if bom or encoding in ("utf-8", "utf-8-sig"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            offset = exc.start + len(data) - len(body)
            if cookie is None:
                hint = ": save it as UTF-8, or name its encoding in a coding cookie (PEP 263)"
                raise _not_utf8(name, offset, hint) from None
            raise _not_declared(name, cookie, offset) from None
    declared = cookie or encoding
    # Python reads the cookie line itself in the declared encoding: one that
    # does not keep ASCII as ASCII (utf-16, EBCDIC) or is no text encoding
    # (rot13, hex) is refused by python3 too ("encoding problem").
    try:
        ascii_safe = b"# coding=\n".decode(encoding) == "# coding=\n"
    except (LookupError, UnicodeError):
        ascii_safe = False
    if not ascii_safe:
        raise LoadFailed(
            f"{name}: {declared!r} in its coding cookie is not an encoding Python reads "
            "source in (it must be a text encoding that keeps ASCII as ASCII)",
            filename=name,
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _not_declared(name, declared, exc.start) from None


def _known(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True


def _cookie(data: bytes) -> str | None:
    """The encoding a PEP 263 coding cookie names, as written (the rules of
    :func:`tokenize.detect_encoding`: line 1, or line 2 after a blank or
    comment line 1); ``None`` without one."""
    for line in data.split(b"\n", 2)[:2]:
        found = tokenize.cookie_re.match(line.decode("latin-1"))
        if found:
            return found.group(1)
        if not tokenize.blank_re.match(line):
            break
    return None


def _not_utf8(name: str, offset: int, hint: str = "") -> LoadFailed:
    return LoadFailed(
        f"{name} is neither UTF-8 text (bad byte at offset {offset}) "
        f"nor an ELF shared object{hint}",
        filename=name,
    )


def _not_declared(name: str, cookie: str, offset: int) -> LoadFailed:
    return LoadFailed(
        f"{name} is not valid {cookie} text (bad byte at offset {offset}), "
        "the encoding its coding cookie declares",
        filename=name,
    )
