"""JSON-RPC error codes, the error kinds they stand for, and the protocol's own exceptions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from livepatch.errors import (
    WIRE_CODES,
    WIRE_KINDS,
    BadResult,
    BadState,
    Busy,
    CallFailed,
    CheckFailed,
    Conflict,
    LivepatchError,
    LoadFailed,
    StorageError,
    Timeout,
    TooLarge,
    Unauthenticated,
    UnknownVersion,
    error_for_kind,
)

if TYPE_CHECKING:
    from .events import ErrorResponse

PROTOCOL_VERSION: Final = 1
JSONRPC_VERSION: Final = "2.0"
#: Largest frame, in bytes of UTF-8 without the terminating newline.
MAX_FRAME: Final = 16 * 1024 * 1024
#: Largest frame before a good ``hello``: a hello is a few hundred bytes, and
#: nothing bigger is parsed for a peer that has not shown the token.
PRE_AUTH_MAX_FRAME: Final = 8 * 1024
#: A connection must have sent a good ``hello`` this long after it opened.
HELLO_TIMEOUT_S: Final = 10.0
#: After ``hello``, each frame must arrive whole this long after its first byte.
FRAME_TIMEOUT_S: Final = 10.0

# JSON-RPC 2.0's own codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# The engine's codes (the -32000..-32099 "server error" range), each defined
# once, by its exception class in livepatch.errors.
UNAUTHENTICATED: Final = Unauthenticated.wire_code
LOAD_FAILED: Final = LoadFailed.wire_code
CHECK_FAILED: Final = CheckFailed.wire_code
BAD_STATE: Final = BadState.wire_code
UNKNOWN_VERSION: Final = UnknownVersion.wire_code
CONFLICT: Final = Conflict.wire_code
BUSY: Final = Busy.wire_code
TOO_LARGE: Final = TooLarge.wire_code
#: ``errors.CallFailed``: a rule raised while serving ``call``.
CALL_FAILED: Final = CallFailed.wire_code
#: ``errors.StorageError``: the state directory could not be written; nothing changed.
STORAGE: Final = StorageError.wire_code
#: ``errors.Timeout``: a rule call overran its deadline.
TIMEOUT: Final = Timeout.wire_code
#: ``errors.BadResult``: a rule returned a value the protocol cannot carry.
BAD_RESULT: Final = BadResult.wire_code


# ---------------------------------------------------------------------------
# Exceptions


class ProtocolError(Exception):
    """Base class of the two "somebody broke the protocol" errors below."""


class LocalProtocolError(ProtocolError, RuntimeError):
    """Your fault: the code driving this connection used it wrongly.

    For example: answering a request id that is not waiting for an answer,
    answering one twice, sending an event notification before the peer is
    authenticated, or feeding data to a connection that is already closed.
    """


class RemoteProtocolError(ProtocolError, ConnectionError):
    """The peer's fault: it sent something that is not valid protocol
    (bad JSON, a frame over the limit, an answer to a request never made).

    Raised by :meth:`ClientConnection.next_event`; after it the connection is
    unusable and should be closed. The server side never raises it: a client's
    garbage becomes a :class:`Rejected` event with the reply to send.
    """


class ParseError(LivepatchError, ValueError):
    """The frame was not UTF-8 JSON (code -32700)."""

    kind = "parse-error"
    wire_code = PARSE_ERROR


class InvalidRequest(LivepatchError, ValueError):
    """The JSON was not a valid JSON-RPC 2.0 request object (code -32600)."""

    kind = "invalid-request"
    wire_code = INVALID_REQUEST


class UnknownMethod(LivepatchError, ValueError):
    """No such method (code -32601). Raised locally by
    :meth:`ClientConnection.send_request` for a method not in :data:`METHODS`."""

    kind = "unknown-method"
    wire_code = METHOD_NOT_FOUND


class InvalidParams(LivepatchError, ValueError):
    """The params do not fit the method (code -32602): an unknown or missing
    param, or a value out of range. ``data`` names ``method`` and ``param``.

    Raised locally, before sending, by :func:`validate_params` and
    :meth:`ClientConnection.send_request`; a server handler may raise it too
    (e.g. ``call`` args that do not fit the rule's signature).
    """

    kind = "bad-params"
    wire_code = INVALID_PARAMS


class InvalidParamType(InvalidParams, TypeError):
    """A param has the wrong JSON type, or a value is not JSON at all.
    Same kind and code as :class:`InvalidParams`, but also a ``TypeError``."""


class InternalError(LivepatchError, RuntimeError):
    """The engine failed in a way it did not expect (code -32603)."""

    kind = "internal"
    wire_code = INTERNAL_ERROR


#: ``error.data.kind`` -> ``error.code``. The kinds are the stable part: clients
#: should switch on the kind, not on the number. Built from the exception
#: classes: JSON-RPC's own (above) and every kind :mod:`livepatch.errors` defines.
ERROR_CODES: Final[Mapping[str, int]] = WIRE_CODES
KINDS_BY_CODE: Final[Mapping[int, str]] = WIRE_KINDS


def error_class_for_kind(kind: str) -> type[LivepatchError]:
    """The exception class for an ``error.data.kind`` (``LivepatchError`` if
    the kind is not known): JSON-RPC's kinds defined here and the engine's."""
    return error_for_kind(kind)


def code_for_kind(kind: str) -> int:
    """The JSON-RPC ``error.code`` for a kind; -32603 (internal) if unknown."""
    return ERROR_CODES.get(kind, INTERNAL_ERROR)


def error_from_response(response: ErrorResponse) -> LivepatchError:
    """The :class:`~livepatch.errors.LivepatchError` an error reply stands
    for: the class for its ``data.kind`` (see :func:`error_class_for_kind`),
    with the message, the rest of ``data`` and the JSON-RPC ``code`` (as the
    attribute ``code``). An unknown kind gives a plain ``LivepatchError``
    whose ``to_data()`` still carries the original kind.
    """
    kind = response.kind
    cls = error_class_for_kind(kind)
    error = cls(response.message)
    # Set data after construction: a remote "message" key must not collide
    # with the constructor's own argument.
    error.data = {k: v for k, v in response.data.items() if k != "kind" or kind != cls.kind}
    error.code = response.code
    return error
