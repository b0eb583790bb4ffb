"""The two ends of a connection, as state machines: bytes in, events out."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, NoReturn

from livepatch.errors import LivepatchError, TooLarge, Unauthenticated

from .codes import (
    FRAME_TIMEOUT_S,
    HELLO_TIMEOUT_S,
    JSONRPC_VERSION,
    KINDS_BY_CODE,
    MAX_FRAME,
    PRE_AUTH_MAX_FRAME,
    InternalError,
    InvalidParamType,
    InvalidRequest,
    LocalProtocolError,
    ParseError,
    RemoteProtocolError,
)
from .events import (
    NEED_DATA,
    ClientEvent,
    ConnectionClosed,
    ErrorResponse,
    Notification,
    Rejected,
    Request,
    RequestId,
    Response,
    ServerEvent,
)
from .framing import (
    BadFrame,
    Framer,
    Mark,
    encode_message,
    error_message,
    error_parts,
    is_request_id,
    loads_frame,
)
from .schema import NOTIFICATIONS, clip, json_type_of, short, validate_params


def tokens_match(given: object, expected: str) -> bool:
    """Compare a token from ``hello`` with the engine's in constant time.

    ``given`` is whatever the client sent (possibly ``None`` or not a string:
    that is simply no match).
    """
    if not isinstance(given, str):
        return False
    # Imported here: hmac loads OpenSSL, which a client never needs.
    import hmac

    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


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


class _Limits(NamedTuple):  # not a dataclass: clients import this module
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
        self._framer = Framer(self._limits[self._state].max_frame)
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
    def closed_by_peer(self) -> bool:
        """Whether the end of the stream was received (``receive_data(b"")``)."""
        return self._framer.eof

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
            if item is Mark.EOF:
                return ConnectionClosed(truncated=self._framer.partial_size > 0)
            if item is Mark.OVERFLOW:
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
        code, message, data = error_parts(error)
        reply = ErrorResponse(id, code, message, data)
        frame = self._encode_error(id, code, message, data)
        return Rejected(reply, frame, close)

    def _parse(self, frame: bytes) -> Request | Notification | Rejected | None:
        try:
            message = loads_frame(frame)
        except BadFrame as exc:
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
                InvalidRequest(f"a request must be a JSON object, got {json_type_of(message)}"),
            )

        is_notification = "id" not in message
        rid = message.get("id")
        if not is_notification and not is_request_id(rid):
            return self._reject(
                None,
                InvalidRequest(f"'id' must be a string or an integer, got {json_type_of(rid)}"),
            )
        reply_id: RequestId | None = None if is_notification else rid
        if message.get("jsonrpc") != JSONRPC_VERSION:
            return self._reject(reply_id, InvalidRequest("'jsonrpc' must be \"2.0\""))
        if not _REQUEST_MEMBERS.issuperset(message):
            extra = sorted(set(message) - _REQUEST_MEMBERS)
            names = ", ".join(short(k, 30) for k in extra[:5])
            return self._reject(
                reply_id, InvalidRequest(f"unexpected member(s) in request: {names}")
            )
        method = message.get("method")
        if not isinstance(method, str):
            what = "missing" if method is None else f"a {json_type_of(method)}"
            return self._reject(reply_id, InvalidRequest(f"'method' must be a string, got {what}"))
        params = message.get("params", {})
        if type(params) is not dict and not isinstance(params, dict | list):
            return self._reject(
                reply_id,
                InvalidRequest(
                    f"'params' must be an object (or omitted), got {json_type_of(params)}"
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
                    f"id {short(reply_id)} is already used by a request that has not been answered"
                ),
            )
        if method != "hello" and not self.authenticated:
            return self._reject(
                reply_id,
                Unauthenticated("not authenticated: the first request must be 'hello'"),
            )
        try:
            checked = validate_params(method, params, json_clean=b"\\u" not in frame)
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
            raise InternalError(f"the result is not JSON: {clip(str(exc), 200)}") from exc
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
            code, text, payload = error_parts(error)
        else:
            if isinstance(error, bool) or error not in KINDS_BY_CODE:
                raise ValueError(f"unknown error code {error!r}; use one of ERROR_CODES")
            if not isinstance(message, str):
                raise TypeError("send_error(id, code, message): message must be a string")
            code, text = error, message
            payload = {"kind": KINDS_BY_CODE[error], **(data or {})}
        frame = self._encode_error(id, code, text, payload)
        if id is not None:
            self._in_flight.discard(id)
        return frame

    def _encode_error(
        self, id: RequestId | None, code: int, message: str, data: Mapping[str, Any]
    ) -> bytes:
        try:
            return encode_message(error_message(id, code, message, data), max_frame=self.max_frame)
        except (TypeError, ValueError):
            # Data that is not JSON, or a huge message: the error itself must
            # still get through, so keep only what is certain to encode. It is
            # a few hundred bytes, so it is not held to a (test-sized) limit.
            kind = data.get("kind")
            slim = {"kind": kind if isinstance(kind, str) else KINDS_BY_CODE.get(code, "error")}
            return encode_message(
                error_message(id, code, clip(message, 500), slim), max_frame=_UNLIMITED
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
        self._framer = Framer(max_frame)
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
            if item is Mark.EOF:
                return ConnectionClosed(truncated=self._framer.partial_size > 0)
            if item is Mark.OVERFLOW:
                self._fail(f"engine sent a frame over the {self.max_frame}-byte limit")
            event = self._parse(item)
            if event is not None:
                return event

    def _fail(self, reason: str) -> NoReturn:
        self._broken = reason
        raise RemoteProtocolError(reason)

    def _parse(self, frame: bytes) -> Response | ErrorResponse | Notification:
        try:
            message = loads_frame(frame)
        except BadFrame as exc:
            self._fail(f"engine sent a bad frame: {exc}")
        if not isinstance(message, dict):
            self._fail(f"engine sent a {json_type_of(message)}, not a JSON-RPC object")
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
            self._fail(f"engine answered id {short(rid)}, which is not waiting for an answer")
        del self._pending[rid]
