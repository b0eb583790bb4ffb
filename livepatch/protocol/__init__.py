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

from .codes import (
    BAD_RESULT,
    BAD_STATE,
    BUSY,
    CALL_FAILED,
    CHECK_FAILED,
    CONFLICT,
    ERROR_CODES,
    FRAME_TIMEOUT_S,
    HELLO_TIMEOUT_S,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSONRPC_VERSION,
    LOAD_FAILED,
    MAX_FRAME,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PRE_AUTH_MAX_FRAME,
    PROTOCOL_VERSION,
    STORAGE,
    TIMEOUT,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNKNOWN_VERSION,
    InternalError,
    InvalidParams,
    InvalidParamType,
    InvalidRequest,
    LocalProtocolError,
    ParseError,
    ProtocolError,
    RemoteProtocolError,
    UnknownMethod,
    code_for_kind,
    error_class_for_kind,
    error_from_response,
)
from .connection import ClientConnection, ConnState, ServerConnection, tokens_match
from .events import (
    NEED_DATA,
    ClientEvent,
    ConnectionClosed,
    ErrorResponse,
    NeedData,
    Notification,
    Rejected,
    Request,
    RequestId,
    Response,
    ServerEvent,
)
from .framing import encode_message
from .schema import (
    EXACTLY_ONE_OF,
    MAX_NAME,
    METHODS,
    NOTIFICATIONS,
    JsonType,
    Param,
    decode_object,
    validate_params,
)

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
    "decode_object",
    "encode_message",
    "error_class_for_kind",
    "error_from_response",
    "tokens_match",
    "validate_params",
]
