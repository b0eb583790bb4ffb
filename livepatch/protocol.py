"""The control protocol, sans-IO: JSON-RPC 2.0, one JSON object per line.

This module has no sockets, threads or event loop in it (h11's design). Bytes
go in with ``receive_data``; events come out of ``next_event``; replies and
requests are composed as ``bytes`` for the caller to write. Framing, size
limits, validation and error codes all live here, so the server and the client
are thin loops around a :class:`ServerConnection` or a :class:`ClientConnection`.

Whose fault is it?

* The code driving a connection misused it (answered a request that was never
  received, sent params that do not fit the method's schema, sent a value
  that is not JSON): the call raises at once, before anything is written.
  Bad params raise :class:`InvalidParams` (a ``ValueError``) or
  :class:`InvalidParamType` (a ``TypeError``); an unknown method raises
  :class:`UnknownMethod` (a ``ValueError``); a reply or frame over the size
  limit raises :class:`~livepatch.errors.TooLarge` (a ``ValueError``); a server
  result that is not JSON raises :class:`InternalError`; using a connection in
  the wrong state raises :class:`LocalProtocolError`.
* The peer sent garbage. On the server this is never an exception: the
  client's mistake comes out of ``next_event`` as a :class:`Rejected` event
  that carries the ready-to-send error reply (and, for an oversize frame only,
  ``close=True``). On the client, garbage from the server raises
  :class:`RemoteProtocolError` and the connection is unusable from then on.
* The peer answered with a JSON-RPC error: that is not garbage but an
  answer. It comes out as an :class:`ErrorResponse`; :func:`error_from_response`
  turns it into the matching :class:`~livepatch.errors.LivepatchError`.

A server loop, in outline::

    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(sock.recv(65536))  # b"" at EOF -> ConnectionClosed
        elif isinstance(event, ConnectionClosed):
            break
        elif isinstance(event, Rejected):
            sock.sendall(event.reply)
            if event.close:
                break
        elif isinstance(event, Request):  # Notifications are never answered
            try:
                reply = conn.send_result(event.id, handle(event))  # hello: check the
            except Exception as exc:  # token, then conn.mark_authenticated()
                reply = conn.send_error(event.id, exc)
            sock.sendall(reply)

Connections are not thread-safe: a server that answers from several threads
must serialise its calls into one connection object (one lock per connection).
"""

from __future__ import annotations

import enum
import hmac
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, NoReturn, TypeAlias

from livepatch.errors import LivepatchError, TooLarge, Unauthenticated, error_for_kind
from livepatch.model import is_slot_name, parse_version_id

__all__ = [
    "BAD_RESULT",
    "BAD_STATE",
    "BUSY",
    "CALL_FAILED",
    "CHECK_FAILED",
    "CONFLICT",
    "ERROR_CODES",
    "EXACTLY_ONE_OF",
    "FRAME_TIMEOUT_S",
    "HELLO_TIMEOUT_S",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "JSONRPC_VERSION",
    "LOAD_FAILED",
    "MAX_FRAME",
    "MAX_NAME",
    "METHODS",
    "METHOD_NOT_FOUND",
    "NEED_DATA",
    "NOTIFICATIONS",
    "PARSE_ERROR",
    "PRE_AUTH_MAX_FRAME",
    "PROTOCOL_VERSION",
    "STORAGE",
    "TIMEOUT",
    "TOO_LARGE",
    "UNAUTHENTICATED",
    "UNKNOWN_VERSION",
    "ClientConnection",
    "ClientEvent",
    "ConnState",
    "ConnectionClosed",
    "ErrorResponse",
    "InternalError",
    "InvalidParamType",
    "InvalidParams",
    "InvalidRequest",
    "JsonType",
    "LocalProtocolError",
    "NeedData",
    "Notification",
    "Param",
    "ParseError",
    "ProtocolError",
    "Rejected",
    "RemoteProtocolError",
    "Request",
    "RequestId",
    "Response",
    "ServerConnection",
    "ServerEvent",
    "UnknownMethod",
    "code_for_kind",
    "encode_message",
    "error_class_for_kind",
    "error_from_response",
    "tokens_match",
    "validate_params",
]

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
# The engine's codes (the -32000..-32099 "server error" range).
UNAUTHENTICATED: Final = -32001
LOAD_FAILED: Final = -32002
CHECK_FAILED: Final = -32003
BAD_STATE: Final = -32004
UNKNOWN_VERSION: Final = -32005
CONFLICT: Final = -32006
BUSY: Final = -32007
TOO_LARGE: Final = -32008
#: ``errors.CallFailed``: a rule raised while serving ``call``.
CALL_FAILED: Final = -32009
#: ``errors.StorageError``: the state directory could not be written; nothing changed.
STORAGE: Final = -32010
#: ``errors.Timeout``: a rule call overran its deadline.
TIMEOUT: Final = -32011
#: ``errors.BadResult``: a rule returned a value the protocol cannot carry.
BAD_RESULT: Final = -32012

#: ``error.data.kind`` -> ``error.code``. The kinds are the stable part: clients
#: should switch on the kind, not on the number.
ERROR_CODES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "parse-error": PARSE_ERROR,
        "invalid-request": INVALID_REQUEST,
        "unknown-method": METHOD_NOT_FOUND,
        "bad-params": INVALID_PARAMS,
        "internal": INTERNAL_ERROR,
        "unauthenticated": UNAUTHENTICATED,
        "load-failed": LOAD_FAILED,
        "check-failed": CHECK_FAILED,
        "bad-state": BAD_STATE,
        "unknown-version": UNKNOWN_VERSION,
        "conflict": CONFLICT,
        "busy": BUSY,
        "too-large": TOO_LARGE,
        "call-failed": CALL_FAILED,
        "storage": STORAGE,
        "timeout": TIMEOUT,
        "bad-result": BAD_RESULT,
    }
)
_KINDS_BY_CODE: Final[Mapping[int, str]] = {code: kind for kind, code in ERROR_CODES.items()}


# ---------------------------------------------------------------------------
# Method table (data, not code)

JsonType: TypeAlias = Literal["string", "integer", "number", "boolean", "array", "object", "null"]


class Param(NamedTuple):
    """One named parameter: the JSON types it accepts and whether it is required.

    ``minimum`` and ``maximum`` bound a number or integer (inclusive). ``text``
    says what a string must be: ``"version"`` (``SLOT@N``: ASCII digits, no
    leading zero), ``"slot"`` (an ASCII identifier of at most 64
    characters), ``"name"`` (a file name or path: no NUL, at most
    :data:`MAX_NAME` characters) or ``"client"`` (at most :data:`MAX_NAME`).
    Checked here, before the engine or its journal ever sees the request.
    """

    types: tuple[JsonType, ...]
    required: bool = False
    minimum: float | None = None
    text: Literal["version", "slot", "name", "client"] | None = None
    maximum: float | None = None


_STR: Final = ("string",)
#: Longest file name, path or client name a request may carry.
MAX_NAME: Final = 4096
_VERSION: Final = Param(_STR, True, text="version")
#: Method name -> param name -> :class:`Param`. Params not listed are refused.
METHODS: Final[Mapping[str, Mapping[str, Param]]] = MappingProxyType(
    {
        name: MappingProxyType(schema)
        for name, schema in {
            "hello": {"token": Param(_STR), "client": Param(_STR, text="client")},
            "status": {},
            # Exactly one of source (the text) and path (a file on the
            # engine's machine: a source, or a ready .so for a native slot).
            "load": {
                "slot": Param(_STR, True, text="slot"),
                "source": Param(_STR),
                "path": Param(_STR, text="name"),
                "filename": Param(_STR, text="name"),
            },
            "check": {"version": _VERSION},
            "swap": {"version": _VERSION, "expect": Param(("string", "null"), text="version")},
            "rollback": {"slot": Param(_STR, True, text="slot")},
            "purge": {"version": _VERSION},
            "unload": {"version": _VERSION, "wait_s": Param(("number",), minimum=0)},
            "symbols": {"version": _VERSION},
            "source": {"version": _VERSION},
            "diff": {"a": _VERSION, "b": _VERSION},
            "call": {
                "slot": Param(_STR, text="slot"),
                "version": Param(_STR, text="version"),
                "symbol": Param(_STR, True),
                "args": Param(("array",)),
                "kwargs": Param(("object",)),
                # The call's deadline; the engine's default (a few seconds) if omitted.
                "timeout_s": Param(("number",), minimum=0.001, maximum=3600),
            },
            "subscribe": {},
            "journal": {"limit": Param(("integer",), minimum=1)},
        }.items()
    }
)
#: Method name -> groups of params of which exactly one must be given.
EXACTLY_ONE_OF: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = MappingProxyType(
    {"call": (("slot", "version"),), "load": (("source", "path"),)}
)
#: Notifications the server may send (params are an object; ``event`` carries
#: one state change after ``subscribe``).
NOTIFICATIONS: Final = frozenset({"event"})


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


class InvalidRequest(LivepatchError, ValueError):
    """The JSON was not a valid JSON-RPC 2.0 request object (code -32600)."""

    kind = "invalid-request"


class UnknownMethod(LivepatchError, ValueError):
    """No such method (code -32601). Raised locally by
    :meth:`ClientConnection.send_request` for a method not in :data:`METHODS`."""

    kind = "unknown-method"


class InvalidParams(LivepatchError, ValueError):
    """The params do not fit the method (code -32602): an unknown or missing
    param, or a value out of range. ``data`` names ``method`` and ``param``.

    Raised locally, before sending, by :func:`validate_params` and
    :meth:`ClientConnection.send_request`; a server handler may raise it too
    (e.g. ``call`` args that do not fit the rule's signature).
    """

    kind = "bad-params"


class InvalidParamType(InvalidParams, TypeError):
    """A param has the wrong JSON type, or a value is not JSON at all.
    Same kind and code as :class:`InvalidParams`, but also a ``TypeError``."""


class InternalError(LivepatchError, RuntimeError):
    """The engine failed in a way it did not expect (code -32603)."""

    kind = "internal"


_PROTOCOL_ERRORS: Final[Mapping[str, type[LivepatchError]]] = {
    cls.kind: cls
    for cls in (ParseError, InvalidRequest, UnknownMethod, InvalidParams, InternalError)
}


def error_class_for_kind(kind: str) -> type[LivepatchError]:
    """The exception class for an ``error.data.kind``: the JSON-RPC kinds
    defined here, then the engine's (``livepatch.errors.error_for_kind``)."""
    return _PROTOCOL_ERRORS.get(kind) or error_for_kind(kind)


def code_for_kind(kind: str) -> int:
    """The JSON-RPC ``error.code`` for a kind; -32603 (internal) if unknown."""
    return ERROR_CODES.get(kind, INTERNAL_ERROR)


# ---------------------------------------------------------------------------
# Events


RequestId: TypeAlias = str | int


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_event`` returns this when it needs more bytes to make an event.
NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True)
class Request:
    """A call from the client that expects exactly one reply naming ``id``.
    ``params`` has been validated against :data:`METHODS`."""

    id: RequestId
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Notification:
    """A message with no id, never answered: the server's ``event``
    notifications, or (rarely) a client notification after ``hello``."""

    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Response:
    """A successful reply to the request ``id``."""

    id: RequestId
    result: Any


@dataclass(frozen=True)
class ErrorResponse:
    """An error reply to the request ``id``. ``id`` is ``None`` only when the
    server could not tell which request the error is about (parse errors)."""

    id: RequestId | None
    code: int
    message: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        """``data.kind``, or the kind the code stands for if it is missing."""
        kind = self.data.get("kind")
        if isinstance(kind, str):
            return kind
        return _KINDS_BY_CODE.get(self.code, "error")


@dataclass(frozen=True)
class Rejected:
    """Server side: the client sent something that cannot be served (bad JSON,
    an invalid request, an unknown method, bad params, a request before
    ``hello``, a frame over the limit). Not an exception: write ``reply``
    back, and if ``close`` is true (only for an oversize frame) drop the
    connection after writing it."""

    error: ErrorResponse
    reply: bytes
    close: bool = False


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its end (``receive_data(b"")`` was called) and every
    complete frame before that has been returned. ``truncated`` is true when
    a partial frame was left unfinished."""

    truncated: bool = False


ServerEvent: TypeAlias = Request | Notification | Rejected | ConnectionClosed | NeedData
ClientEvent: TypeAlias = Response | ErrorResponse | Notification | ConnectionClosed | NeedData


# ---------------------------------------------------------------------------
# Helpers


def tokens_match(given: object, expected: str) -> bool:
    """Compare a token from ``hello`` with the engine's in constant time.

    ``given`` is whatever the client sent (possibly ``None`` or not a string:
    that is simply no match).
    """
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


_JSON_PY_TYPES: Final[Mapping[JsonType, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: names and values the peer
    sent are quoted in error messages, which must stay one short frame."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type_of(value: object) -> str:
    """The JSON type name of a value, or its Python type name if not JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _has_type(value: object, types: tuple[JsonType, ...]) -> bool:
    # bool is an int in Python but never a number in JSON.
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, _JSON_PY_TYPES[t]) for t in types)


def _first_non_json(value: object) -> tuple[str, str] | None:
    """``(path, what)`` of the first part of ``value`` that JSON cannot carry
    faithfully, or ``None``. Iterative so deep nesting cannot overflow."""
    stack: list[tuple[object, str]] = [(value, "")]
    seen: set[int] = set()
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return path, "text that is not valid Unicode (a lone surrogate, e.g. \\ud800)"
            continue
        if item is None or isinstance(item, int):  # int covers bool
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return path, f"{item!r} (NaN and Infinity are not JSON)"
            continue
        if isinstance(item, list | dict):
            if id(item) in seen:  # shared or circular: json.dumps reports cycles
                continue
            seen.add(id(item))
            if isinstance(item, list):
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
            else:
                for key, v in item.items():
                    if not isinstance(key, str):
                        return path, f"an object key {_short(key)} that is not a string"
                    if not key.isascii() and not _encodable(key):
                        return path, "an object key that is not valid Unicode (a lone surrogate)"
                    stack.append((v, f"{path}[{_short(key, 20)}]"))
            continue
        hint = " (use a list)" if isinstance(item, tuple) else ""
        return path, f"a {type(item).__name__}{hint}"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(method: str, name: str, kind: str, value: str) -> None:
    """Refuse a string param that is not what :class:`Param` ``text`` says."""
    problem: str | None = None
    if kind == "version":
        try:
            parse_version_id(value)
        except LivepatchError as exc:
            problem = exc.message
    elif kind == "slot":
        if not is_slot_name(value):
            problem = (
                f"{_short(value, 40)} is not a slot name: use an ASCII identifier of at most "
                "64 characters, e.g. spam"
            )
    elif len(value) > MAX_NAME:
        problem = f"it is {len(value)} characters long, over the {MAX_NAME}-character limit"
    elif kind == "name" and "\0" in value:
        problem = "it contains a NUL character, which no file name can"
    if problem is not None:
        raise InvalidParams(f"param {name!r} of {method!r}: {problem}", method=method, param=name)


_WITH_ARTICLE: Final[Mapping[JsonType, str]] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def _describe_types(types: tuple[JsonType, ...]) -> str:
    return " or ".join(_WITH_ARTICLE[t] for t in types)


def validate_params(method: str, params: object) -> dict[str, Any]:
    """Check ``params`` against :data:`METHODS` and return them as a new dict.

    ``None`` means no params (``{}``). Raises :class:`UnknownMethod` for a
    method not in the table, :class:`InvalidParams` (``ValueError``) for an
    unknown, missing or out-of-range param, and :class:`InvalidParamType`
    (``TypeError``) for a wrong type or a value JSON cannot carry. Each
    message names the method and the param.
    """
    schema = METHODS.get(method) if isinstance(method, str) else None
    if schema is None:
        known = ", ".join(sorted(METHODS))
        raise UnknownMethod(
            f"unknown method {_short(method)} (methods: {known})", method=_clip(str(method))
        )
    if params is None:
        params = {}
    if isinstance(params, list | tuple):
        raise InvalidParamType(
            f"params of {method!r} are positional (an array): "
            "positional params are not supported, use named params (an object)",
            method=method,
        )
    if not isinstance(params, Mapping):
        raise InvalidParamType(
            f"params of {method!r} must be an object of named params, got {_json_type_of(params)}",
            method=method,
        )
    for key in params:
        if not isinstance(key, str):
            raise InvalidParamType(
                f"param names must be strings, got {_short(key)} for {method!r}", method=method
            )
        if key not in schema:
            expected = ", ".join(schema) or "none"
            raise InvalidParams(
                f"unknown param {_short(key)} for {method!r} (params: {expected})",
                method=method,
                param=_clip(key),
            )
    for name, spec in schema.items():
        if name not in params:
            if spec.required:
                raise InvalidParams(
                    f"missing required param {name!r} for {method!r}", method=method, param=name
                )
            continue
        value = params[name]
        if not _has_type(value, spec.types):
            raise InvalidParamType(
                f"param {name!r} of {method!r} must be {_describe_types(spec.types)}, "
                f"got {_json_type_of(value)}",
                method=method,
                param=name,
                expected=list(spec.types),
            )
        bad = _first_non_json(value)
        if bad is not None:
            path, what = bad
            raise InvalidParamType(
                f"param {name!r} of {method!r} contains {what} at {name}{_clip(path, 80)}, "
                "which is not JSON",
                method=method,
                param=name,
            )
        if spec.text is not None and isinstance(value, str):
            _check_text(method, name, spec.text, value)
        if spec.minimum is not None and isinstance(value, int | float) and value < spec.minimum:
            raise InvalidParams(
                f"param {name!r} of {method!r} must be >= {spec.minimum:g}, got {_short(value)}",
                method=method,
                param=name,
            )
        if spec.maximum is not None and isinstance(value, int | float) and value > spec.maximum:
            raise InvalidParams(
                f"param {name!r} of {method!r} must be <= {spec.maximum:g}, got {_short(value)}",
                method=method,
                param=name,
            )
    for group in EXACTLY_ONE_OF.get(method, ()):
        given = [name for name in group if name in params]
        if len(given) != 1:
            names = " or ".join(repr(n) for n in group)
            raise InvalidParams(
                f"{method!r} needs exactly one of {names}, got {len(given)}",
                method=method,
                param=group[0] if not given else given[1],
            )
    return dict(params)


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_message(message: Mapping[str, Any], *, max_frame: int = MAX_FRAME) -> bytes:
    """One frame: compact UTF-8 JSON and exactly one ``\\n``.

    Raises ``ValueError`` (NaN/Infinity, circular or too deeply nested data),
    ``TypeError`` (a value JSON cannot carry) or
    :class:`~livepatch.errors.TooLarge` (over ``max_frame`` bytes): your fault.
    """
    try:
        text = _dumps(message)
    except RecursionError:
        raise ValueError("value is nested too deeply to encode as JSON") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. from surrogateescape'd file names) cannot be
        # raw UTF-8, but JSON's \\uXXXX escapes carry them faithfully.
        data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode("ascii")
    # json.dumps escapes control characters inside strings and compact
    # separators add no whitespace, so a raw newline would mean framing broke.
    if b"\n" in data:  # pragma: no cover - guarded invariant
        raise AssertionError("encoded JSON contains a raw newline")
    if len(data) > max_frame:
        raise TooLarge(
            f"message is {len(data)} bytes, over the {max_frame}-byte frame limit",
            size=len(data),
            limit=max_frame,
        )
    return data + b"\n"


class _BadFrame(Exception):
    """A frame that is not UTF-8 JSON; the message says why."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_short(key)} in an object")
            seen.add(key)
    return result


def _loads(frame: bytes) -> Any:
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadFrame(f"frame is not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except RecursionError:
        raise _BadFrame("JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and the hooks above
        raise _BadFrame(f"invalid JSON: {exc}") from None


def _is_request_id(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# Framing


class _Mark(enum.Enum):
    OVERFLOW = "overflow"
    EOF = "eof"


class _Framer:
    """Splits a byte stream into ``\\n``-terminated frames.

    Frames are split eagerly in :meth:`feed` (so an oversize frame is noticed
    the moment the buffer passes the limit, and nothing after it is kept) but
    parsed lazily by the connection, so the connection's state at the time
    ``next_event`` is called (e.g. authenticated) applies to each frame.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._frames: deque[bytes | _Mark] = deque()
        self._partial = bytearray()
        self.overflowed = False
        self.eof = False
        #: Frames split off so far (lets the connection see a new frame begin).
        self.frames_completed = 0

    @property
    def partial_size(self) -> int:
        return len(self._partial)

    def feed(self, data: bytes) -> None:
        if self.overflowed:
            return  # the stream is already condemned; nothing more is kept
        if not data:
            self.eof = True
            self._frames.append(_Mark.EOF)
            return
        view = memoryview(data)
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            size = len(self._partial) + newline - start
            if size > self.max_frame:
                self._overflow()
                return
            if self._partial:
                self._partial += view[start:newline]
                frame = bytes(self._partial)
                self._partial.clear()
            else:
                frame = bytes(view[start:newline])
            start = newline + 1
            self.frames_completed += 1
            # Blank lines (and a lone "\r" from CRLF senders) are ignored.
            if frame.strip(b" \t\r"):
                self._frames.append(frame)
        if len(self._partial) + len(data) - start > self.max_frame:
            self._overflow()
            return
        self._partial += view[start:]

    def _overflow(self) -> None:
        self.overflowed = True
        self._partial = bytearray()
        self._frames.append(_Mark.OVERFLOW)

    def pop(self) -> bytes | _Mark | None:
        """The next frame or mark, or ``None`` if more data is needed."""
        if self._frames:
            item = self._frames.popleft()
            if item is _Mark.EOF:
                self._frames.appendleft(item)  # closed stays closed
            return item
        return None


def _error_parts(error: BaseException) -> tuple[int, str, dict[str, Any]]:
    """``(code, message, data)`` for an exception: a LivepatchError keeps its
    kind, message and data; anything else is an internal error whose message
    is one line with no traceback text."""
    if isinstance(error, LivepatchError):
        return code_for_kind(error.kind), error.message, error.to_data()
    name = type(error).__name__
    try:
        lines = str(error).strip().splitlines()
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the error reply
        lines = []
    detail = f"{name}: {lines[0]}" if lines else name
    return INTERNAL_ERROR, f"internal error: {detail}"[:500], {"kind": "internal", "type": name}


def _error_message(
    id: RequestId | None, code: int, message: str, data: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "jsonrpc": JSONRPC_VERSION,
        "id": id,
        "error": {"code": code, "message": message, "data": dict(data)},
    }


# ---------------------------------------------------------------------------
# Server side


class ConnState(enum.Enum):
    """The life of a server connection; each live state has its own limits."""

    #: Only ``hello`` is served; small frames, and a deadline from connect.
    AWAITING_HELLO = "awaiting-hello"
    #: Authenticated: every method; big frames, each with its own deadline.
    OPEN = "open"
    #: An oversize frame was refused: write the reply and drop the peer.
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class _Limits:
    max_frame: int
    timeout_s: float
    #: The deadline runs from the connection's opening, not a frame's first byte.
    from_connect: bool


_UNLIMITED: Final = 2**62
_REQUEST_MEMBERS: Final = frozenset({"jsonrpc", "id", "method", "params"})


class ServerConnection:
    """The engine's end of one client connection.

    Feed bytes with :meth:`receive_data`, pull events with :meth:`next_event`
    until it returns :data:`NEED_DATA`. Answer each :class:`Request` exactly
    once with :meth:`send_result` or :meth:`send_error`; write each
    :class:`Rejected` event's ``reply`` back as is. Before
    :meth:`mark_authenticated` only ``hello`` requests come out: anything else
    is rejected with an ``unauthenticated`` error, and notifications are
    dropped.
    """

    def __init__(
        self,
        *,
        max_frame: int = MAX_FRAME,
        pre_auth_max_frame: int = PRE_AUTH_MAX_FRAME,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        frame_timeout_s: float = FRAME_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        # States and their limits as data: the table decides, not flags.
        self._limits: Mapping[ConnState, _Limits] = {
            ConnState.AWAITING_HELLO: _Limits(
                min(pre_auth_max_frame, max_frame), hello_timeout_s, from_connect=True
            ),
            ConnState.OPEN: _Limits(max_frame, frame_timeout_s, from_connect=False),
        }
        self._state = ConnState.AWAITING_HELLO
        self._opened = clock()
        self._frame_started: float | None = None
        self._max_frame = max_frame
        self._framer = _Framer(self._limits[self._state].max_frame)
        self._in_flight: set[RequestId] = set()

    @property
    def state(self) -> ConnState:
        """Where the connection is in its life (see :class:`ConnState`)."""
        return self._state

    @property
    def max_frame(self) -> int:
        """The frame limit in bytes once authenticated (both directions)."""
        return self._max_frame

    @property
    def frame_limit(self) -> int:
        """The frame limit in bytes that applies to what arrives now."""
        return self._framer.max_frame

    @property
    def authenticated(self) -> bool:
        """Whether a ``hello`` has been accepted on this connection."""
        return self._state is ConnState.OPEN

    def read_deadline(self) -> float | None:
        """When (on the connection's clock) to give up waiting for bytes, or
        ``None`` to wait for ever. Before ``hello`` the whole hello must have
        arrived within the hello timeout of the connection opening; after it,
        each frame must arrive whole within the frame timeout of its first
        byte (not of the last read: a client trickling a byte at a time is
        still dropped). A loop that passes the deadline drops the client."""
        limits = self._limits.get(self._state)
        if limits is None:
            return None
        if limits.from_connect:
            return self._opened + limits.timeout_s
        if self._frame_started is None:
            return None
        return self._frame_started + limits.timeout_s

    @property
    def in_flight(self) -> frozenset[RequestId]:
        """Ids of requests handed out by :meth:`next_event` and not yet answered."""
        return frozenset(self._in_flight)

    @property
    def partial_frame_size(self) -> int:
        """Bytes of an unfinished frame held in the buffer. A loop that sees
        this stay non-zero while the peer is silent can drop the peer."""
        return self._framer.partial_size

    def mark_authenticated(self) -> None:
        """Record that the client's ``hello`` was good (the server checked the
        token, e.g. with :func:`tokens_match`). Call it before answering the
        hello and before asking for the next event. The frame limit grows
        from :data:`PRE_AUTH_MAX_FRAME` to ``max_frame`` for frames that
        arrive from now on (a client waits for the hello's answer before it
        sends a big request)."""
        if self._state is ConnState.DEAD:
            raise LocalProtocolError("mark_authenticated() on a connection that is dead")
        self._state = ConnState.OPEN
        self._framer.max_frame = self._limits[ConnState.OPEN].max_frame

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the socket; ``b""`` means the client closed its end.

        Raises :class:`LocalProtocolError` (your fault) if the connection was
        already closed by EOF or by a fatal :class:`Rejected` event.
        """
        if self._state is ConnState.DEAD:
            raise LocalProtocolError("connection was closed after an oversize frame; drop it")
        if self._framer.eof:
            raise LocalProtocolError("receive_data() after EOF (receive_data(b''))")
        completed = self._framer.frames_completed
        self._framer.feed(data)
        if not self._framer.partial_size:
            self._frame_started = None
        elif self._frame_started is None or self._framer.frames_completed != completed:
            self._frame_started = self._clock()  # a new frame began in this chunk

    def next_event(self) -> ServerEvent:
        """The next :class:`Request`, :class:`Notification`, :class:`Rejected`
        or :class:`ConnectionClosed`, or :data:`NEED_DATA`.

        Never raises for anything the client sent. Raises
        :class:`LocalProtocolError` if called again after a ``Rejected`` event
        with ``close=True``.
        """
        if self._state is ConnState.DEAD:
            raise LocalProtocolError("connection was closed after an oversize frame; drop it")
        while True:
            item = self._framer.pop()
            if item is None:
                return NEED_DATA
            if item is _Mark.EOF:
                return ConnectionClosed(truncated=self._framer.partial_size > 0)
            if item is _Mark.OVERFLOW:
                limit = self.frame_limit
                before_hello = self._state is ConnState.AWAITING_HELLO
                self._state = ConnState.DEAD
                error = TooLarge(
                    f"frame is over the {limit}-byte limit"
                    f"{' before hello' if before_hello else ''}; closing the connection",
                    limit=limit,
                )
                return self._reject(None, error, close=True)
            event = self._parse(item)
            if event is not None:
                return event

    def _reject(
        self, id: RequestId | None, error: LivepatchError, *, close: bool = False
    ) -> Rejected:
        code, message, data = _error_parts(error)
        reply = ErrorResponse(id, code, message, data)
        frame = self._encode_error(id, code, message, data)
        return Rejected(reply, frame, close)

    def _parse(self, frame: bytes) -> Request | Notification | Rejected | None:
        try:
            message = _loads(frame)
        except _BadFrame as exc:
            return self._reject(None, ParseError(str(exc)))
        if isinstance(message, list):
            return self._reject(
                None,
                InvalidRequest(
                    "batch requests (JSON arrays) are not supported: "
                    "send one request object per line"
                ),
            )
        if not isinstance(message, dict):
            return self._reject(
                None,
                InvalidRequest(f"a request must be a JSON object, got {_json_type_of(message)}"),
            )

        is_notification = "id" not in message
        rid = message.get("id")
        if not is_notification and not _is_request_id(rid):
            return self._reject(
                None,
                InvalidRequest(f"'id' must be a string or an integer, got {_json_type_of(rid)}"),
            )
        reply_id: RequestId | None = None if is_notification else rid
        if message.get("jsonrpc") != JSONRPC_VERSION:
            return self._reject(reply_id, InvalidRequest("'jsonrpc' must be \"2.0\""))
        extra = sorted(set(message) - _REQUEST_MEMBERS)
        if extra:
            names = ", ".join(_short(k, 30) for k in extra[:5])
            return self._reject(
                reply_id, InvalidRequest(f"unexpected member(s) in request: {names}")
            )
        method = message.get("method")
        if not isinstance(method, str):
            what = "missing" if method is None else f"a {_json_type_of(method)}"
            return self._reject(reply_id, InvalidRequest(f"'method' must be a string, got {what}"))
        params = message.get("params", {})
        if not isinstance(params, dict | list):
            return self._reject(
                reply_id,
                InvalidRequest(
                    f"'params' must be an object (or omitted), got {_json_type_of(params)}"
                ),
            )

        if reply_id is None:
            # JSON-RPC never answers a notification; one that cannot be served
            # (before hello, unknown method, bad params) is simply dropped.
            if not self.authenticated:
                return None
            try:
                return Notification(method, validate_params(method, params))
            except LivepatchError:
                return None

        if reply_id in self._in_flight:
            # Echoing the id would look like the answer to the first request.
            return self._reject(
                None,
                InvalidRequest(
                    f"id {_short(reply_id)} is already used by a request that has not been answered"
                ),
            )
        if method != "hello" and not self.authenticated:
            return self._reject(
                reply_id,
                Unauthenticated("not authenticated: the first request must be 'hello'"),
            )
        try:
            checked = validate_params(method, params)
        except LivepatchError as exc:
            return self._reject(reply_id, exc)
        self._in_flight.add(reply_id)
        return Request(reply_id, method, checked)

    def _answer(self, id: RequestId) -> None:
        if id not in self._in_flight:
            raise LocalProtocolError(
                f"no request with id {id!r} is waiting for an answer "
                "(never received, rejected already, or answered already)"
            )

    def send_result(self, id: RequestId, result: Any) -> bytes:
        """The reply frame for a successful request.

        Raises :class:`LocalProtocolError` if ``id`` is not waiting for an
        answer. If the result cannot be sent it raises a
        :class:`~livepatch.errors.LivepatchError` that is ready to be passed to
        :meth:`send_error` (the request is still waiting for its answer):
        :class:`~livepatch.errors.TooLarge` over the frame limit, or
        :class:`InternalError` if the result is not JSON (NaN, a set, ...),
        which is the engine's bug, not the client's.
        """
        self._answer(id)
        message = {"jsonrpc": JSONRPC_VERSION, "id": id, "result": result}
        try:
            frame = encode_message(message, max_frame=self.max_frame)
        except TooLarge:
            raise
        except (TypeError, ValueError) as exc:
            raise InternalError(f"the result is not JSON: {_clip(str(exc), 200)}") from exc
        self._in_flight.discard(id)
        return frame

    def send_error(
        self,
        id: RequestId | None,
        error: BaseException | int,
        message: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The error reply frame for a request.

        ``error`` is an exception — a :class:`~livepatch.errors.LivepatchError`
        keeps its kind, code, message and data; anything else becomes a -32603
        ``internal`` error with a one-line message and no traceback — or an
        error code from :data:`ERROR_CODES` together with ``message`` (and
        optional ``data``; its ``kind`` defaults to the code's). Never fails
        for data that is not JSON: it falls back to ``{"kind": ...}``.

        ``id=None`` sends an error about no request in particular (e.g. "peer
        refused" just before hanging up); it answers nothing.

        Raises :class:`LocalProtocolError` if ``id`` is not waiting for an
        answer, ``ValueError``/``TypeError`` for an unknown code or a missing
        message (your fault).
        """
        if id is not None:
            self._answer(id)
        if isinstance(error, BaseException):
            if message is not None or data is not None:
                raise TypeError("send_error(id, exception) takes no message or data")
            code, text, payload = _error_parts(error)
        else:
            if isinstance(error, bool) or error not in _KINDS_BY_CODE:
                raise ValueError(f"unknown error code {error!r}; use one of ERROR_CODES")
            if not isinstance(message, str):
                raise TypeError("send_error(id, code, message): message must be a string")
            code, text = error, message
            payload = {"kind": _KINDS_BY_CODE[error], **(data or {})}
        frame = self._encode_error(id, code, text, payload)
        if id is not None:
            self._in_flight.discard(id)
        return frame

    def _encode_error(
        self, id: RequestId | None, code: int, message: str, data: Mapping[str, Any]
    ) -> bytes:
        try:
            return encode_message(_error_message(id, code, message, data), max_frame=self.max_frame)
        except (TypeError, ValueError):
            # Data that is not JSON, or a huge message: the error itself must
            # still get through, so keep only what is certain to encode. It is
            # a few hundred bytes, so it is not held to a (test-sized) limit.
            kind = data.get("kind")
            slim = {"kind": kind if isinstance(kind, str) else _KINDS_BY_CODE.get(code, "error")}
            return encode_message(
                _error_message(id, code, _clip(message, 500), slim), max_frame=_UNLIMITED
            )

    def send_notification(self, method: str, params: Mapping[str, Any]) -> bytes:
        """A notification frame (no id, never answered), e.g. an ``event``.

        Raises :class:`LocalProtocolError` before the client is authenticated
        or for a method not in :data:`NOTIFICATIONS`; ``TypeError``/
        ``ValueError``/``TooLarge`` if ``params`` cannot be sent (your fault).
        """
        if not self.authenticated:
            raise LocalProtocolError("cannot send notifications before the client is authenticated")
        if method not in NOTIFICATIONS:
            raise LocalProtocolError(f"unknown notification {method!r}; see NOTIFICATIONS")
        return encode_message(
            {"jsonrpc": JSONRPC_VERSION, "method": method, "params": dict(params)},
            max_frame=self.max_frame,
        )


# ---------------------------------------------------------------------------
# Client side


class ClientConnection:
    """A client's end of a connection to an engine.

    :meth:`send_request` validates and encodes a request (ids count up from
    ``first_id``); feed the engine's bytes to :meth:`receive_data` and pull
    :class:`Response`, :class:`ErrorResponse`, :class:`Notification` and
    :class:`ConnectionClosed` events from :meth:`next_event`. Garbage from the
    engine raises :class:`RemoteProtocolError`.
    """

    def __init__(self, *, max_frame: int = MAX_FRAME, first_id: int = 1) -> None:
        self._framer = _Framer(max_frame)
        self._next_id = first_id
        self._pending: dict[int, str] = {}
        self._broken: str | None = None

    @property
    def max_frame(self) -> int:
        """The frame limit in bytes (both directions)."""
        return self._framer.max_frame

    @property
    def pending(self) -> Mapping[int, str]:
        """Request id -> method of every request sent and not yet answered."""
        return MappingProxyType(dict(self._pending))

    @property
    def partial_frame_size(self) -> int:
        """Bytes of an unfinished frame held in the buffer."""
        return self._framer.partial_size

    def send_request(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """``(id, frame)`` for a request, after checking it locally.

        Raises, before anything is sent and without using up an id:
        :class:`UnknownMethod` (``ValueError``), :class:`InvalidParams`
        (``ValueError``), :class:`InvalidParamType` (``TypeError``) or
        :class:`~livepatch.errors.TooLarge` (``ValueError``) — your fault.
        """
        checked = validate_params(method, params)
        message: dict[str, Any] = {
            "jsonrpc": JSONRPC_VERSION,
            "id": self._next_id,
            "method": method,
        }
        if checked:
            message["params"] = checked
        try:
            frame = encode_message(message, max_frame=self.max_frame)
        except TooLarge:
            raise
        except (TypeError, ValueError) as exc:  # e.g. a circular structure
            raise InvalidParamType(
                f"params of {method!r} are not JSON: {exc}", method=method
            ) from None
        rid = self._next_id
        self._next_id += 1
        self._pending[rid] = method
        return rid, frame

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the socket; ``b""`` means the engine closed its end.

        Raises :class:`LocalProtocolError` after EOF (your fault).
        """
        if self._framer.eof:
            raise LocalProtocolError("receive_data() after EOF (receive_data(b''))")
        self._framer.feed(data)

    def next_event(self) -> ClientEvent:
        """The next :class:`Response`, :class:`ErrorResponse`,
        :class:`Notification` or :class:`ConnectionClosed`, or :data:`NEED_DATA`.

        Raises :class:`RemoteProtocolError` if the engine sent garbage; the
        connection then stays broken and every later call raises again.
        """
        if self._broken is not None:
            raise RemoteProtocolError(self._broken)
        while True:
            item = self._framer.pop()
            if item is None:
                return NEED_DATA
            if item is _Mark.EOF:
                return ConnectionClosed(truncated=self._framer.partial_size > 0)
            if item is _Mark.OVERFLOW:
                self._fail(f"engine sent a frame over the {self.max_frame}-byte limit")
            event = self._parse(item)
            if event is not None:
                return event

    def _fail(self, reason: str) -> NoReturn:
        self._broken = reason
        raise RemoteProtocolError(reason)

    def _parse(self, frame: bytes) -> Response | ErrorResponse | Notification:
        try:
            message = _loads(frame)
        except _BadFrame as exc:
            self._fail(f"engine sent a bad frame: {exc}")
        if not isinstance(message, dict):
            self._fail(f"engine sent a {_json_type_of(message)}, not a JSON-RPC object")
        if message.get("jsonrpc") != JSONRPC_VERSION:
            self._fail("engine sent a message without 'jsonrpc': \"2.0\"")
        if "method" in message:
            return self._parse_notification(message)
        return self._parse_reply(message)

    def _parse_notification(self, message: dict[str, Any]) -> Notification:
        if "id" in message:
            self._fail("engine sent a request; engines only answer and notify")
        extra = set(message) - {"jsonrpc", "method", "params"}
        method = message["method"]
        params = message.get("params", {})
        if extra or not isinstance(method, str) or not isinstance(params, dict):
            self._fail("engine sent a malformed notification")
        # Unknown notification names are passed on: newer engines may add some.
        return Notification(method, params)

    def _parse_reply(self, message: dict[str, Any]) -> Response | ErrorResponse:
        if "id" not in message:
            self._fail("engine sent a message with neither 'id' nor 'method'")
        if set(message) - {"jsonrpc", "id", "result", "error"}:
            self._fail("engine sent a reply with unexpected members")
        if ("result" in message) == ("error" in message):
            self._fail("engine sent a reply without exactly one of 'result' and 'error'")
        rid = message["id"]
        if "error" in message:
            error = message["error"]
            if not isinstance(error, dict):
                self._fail("engine sent an 'error' that is not an object")
            code = error.get("code")
            text = error.get("message")
            data = error.get("data", {})
            if not (isinstance(code, int) and not isinstance(code, bool)):
                self._fail("engine sent an error without an integer 'code'")
            if not isinstance(text, str) or not isinstance(data, dict):
                self._fail("engine sent an error with a bad 'message' or 'data'")
            if rid is not None:
                self._settle(rid)
            return ErrorResponse(rid, code, text, data)
        self._settle(rid)
        return Response(rid, message["result"])

    def _settle(self, rid: object) -> None:
        # Our ids are ints; True == 1 in a dict lookup, so exclude bools.
        if isinstance(rid, bool) or not isinstance(rid, int) or rid not in self._pending:
            self._fail(f"engine answered id {_short(rid)}, which is not waiting for an answer")
        del self._pending[rid]


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
