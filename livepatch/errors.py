"""Exceptions raised by livepatch, each with a stable ``kind``.

The ``kind`` strings are part of the control protocol (``error.data.kind``):
the server maps an exception to a JSON-RPC error with that kind and the client
maps it back to the same class, so code catching ``UnknownVersion`` works the
same in-process and over the socket.

Every class also subclasses the standard exception it resembles
(``LookupError``, ``RuntimeError``, ``ValueError`` ...) so callers who do not
know livepatch can still catch something sensible.

A new kind of error is one edit: a subclass that sets ``kind`` and its
JSON-RPC ``wire_code`` registers itself (a kind without a code is raised
locally only, like the client's ``connection-lost``), and the protocol's code table
(``livepatch.protocol.ERROR_CODES``) is built from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final

__all__ = [
    "WIRE_CODES",
    "WIRE_KINDS",
    "BadResult",
    "BadState",
    "Busy",
    "CallFailed",
    "CheckFailed",
    "Conflict",
    "LivepatchError",
    "LoadFailed",
    "StorageError",
    "Timeout",
    "TooLarge",
    "Unauthenticated",
    "UnknownSlot",
    "UnknownVersion",
    "error_for_kind",
]


_BY_KIND: dict[str, type[LivepatchError]] = {}
_CODE_OF: dict[str, int] = {}
_KIND_OF: dict[int, str] = {}
#: Every kind that travels on the wire -> its JSON-RPC code (a live view: a
#: class defined later is in it), and the other way round.
WIRE_CODES: Final[Mapping[str, int]] = MappingProxyType(_CODE_OF)
WIRE_KINDS: Final[Mapping[int, str]] = MappingProxyType(_KIND_OF)


class LivepatchError(Exception):
    """Base class: a one-line ``message`` plus a stable ``kind`` and details.

    ``str(error)`` is the message alone, written to be shown to a user as is:
    it says what went wrong and, where there is one, what to do about it.
    """

    kind: ClassVar[str] = "error"
    #: The JSON-RPC ``error.code`` for this kind (the -32000..-32099 range).
    wire_code: ClassVar[int]
    #: The JSON-RPC error code, set on errors that came back over the wire.
    code: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class that names a kind and a code of its own is that kind's
        # class on the wire. A subclass sharing its parent's kind (UnknownSlot)
        # is not, nor is a kind only ever raised locally (connection-lost).
        if "kind" in cls.__dict__ and "wire_code" in cls.__dict__:
            if cls.kind in _CODE_OF or cls.wire_code in _KIND_OF:
                raise TypeError(
                    f"{cls.__name__}: kind {cls.kind!r} or code {cls.wire_code} is already "
                    "taken; give the new kind a name and code of its own"
                )
            _BY_KIND[cls.kind] = cls
            _CODE_OF[cls.kind] = cls.wire_code
            _KIND_OF[cls.wire_code] = cls.kind

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = data

    def to_data(self) -> dict[str, Any]:
        """The JSON-able ``error.data`` object for the control protocol."""
        return {"kind": self.kind, **self.data}


class LoadFailed(LivepatchError, ValueError):
    """The source did not compile or its top-level code raised.

    ``data`` carries ``filename``, ``line``, ``col`` when they are known.
    """

    kind = "load-failed"
    wire_code = -32002


class CheckFailed(LivepatchError, ValueError):
    """A version that failed its resolve-check was asked to do something only
    a resolved version may do (for example, be swapped in)."""

    kind = "check-failed"
    wire_code = -32003


class BadState(LivepatchError, RuntimeError):
    """The operation is not allowed in the version's current state."""

    kind = "bad-state"
    wire_code = -32004


class UnknownVersion(LivepatchError, LookupError):
    """No such version (or it has been unloaded and forgotten)."""

    kind = "unknown-version"
    wire_code = -32005


class UnknownSlot(UnknownVersion):
    """No such slot. Shares the ``unknown-version`` kind on the wire."""


class Conflict(LivepatchError, RuntimeError):
    """A compare-and-swap lost: another client swapped first."""

    kind = "conflict"
    wire_code = -32006


class Busy(LivepatchError, RuntimeError):
    """The engine cannot take the request now (for example, a slot's swap lock
    was not obtained in time)."""

    kind = "busy"
    wire_code = -32007


class CallFailed(LivepatchError, RuntimeError):
    """A rule raised while serving a ``call`` made over the protocol.

    ``data`` carries ``version``, ``exception`` (the type name) and, when the
    error was raised in rule code, ``filename`` and ``line``.
    """

    kind = "call-failed"
    wire_code = -32009

    @classmethod
    def from_exception(cls, version: str, symbol: str, exc: BaseException) -> CallFailed:
        """``spam@2 classify() raised KeyError: 'x' at spam_v2.py:14``: the rule's
        own file and line (its innermost frame in the version's code)."""
        where: dict[str, Any] = {}
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename.endswith(f"[{version}]"):
                where = {"filename": code.co_filename.rsplit(" [", 1)[0], "line": tb.tb_lineno}
            tb = tb.tb_next
        try:
            text = str(exc).strip().splitlines()
        except Exception:  # noqa: BLE001 - a rule's __str__ that raises, as traceback shows it
            text = ["<exception str() failed>"]
        message = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
        at = f" at {where['filename']}:{where['line']}" if where else ""
        return cls(
            f"{version} {symbol}() raised {message}{at}",
            version=version,
            exception=type(exc).__name__,
            **where,
        )


class Timeout(LivepatchError, TimeoutError):
    """A rule call (or an introspection of loaded code) overran its deadline.

    ``data`` carries ``version``, ``symbol`` and ``timeout_s`` for a call.
    """

    kind = "timeout"
    wire_code = -32011


class BadResult(LivepatchError, ValueError):
    """A rule returned a value the protocol cannot carry (not JSON, an int
    too long to print, nesting too deep). The rule's fault, not livepatch's."""

    kind = "bad-result"
    wire_code = -32012


class TooLarge(LivepatchError, ValueError):
    """A request, frame or source is over the size limit."""

    kind = "too-large"
    wire_code = -32008


class StorageError(LivepatchError, OSError):
    """The state directory could not be written (full disk, I/O error, a
    read-only file system): the change was not made, nothing else changed, and
    the engine keeps serving. The message says what to do.
    """

    kind = "storage"
    wire_code = -32010


class Unauthenticated(LivepatchError, PermissionError):
    """No good ``hello`` yet, or a wrong token."""

    kind = "unauthenticated"
    wire_code = -32001


def error_for_kind(kind: str) -> type[LivepatchError]:
    """The exception class for a protocol ``data.kind`` (``LivepatchError`` if
    the kind is not one of ours)."""
    return _BY_KIND.get(kind, LivepatchError)
