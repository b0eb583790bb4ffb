"""What comes out of a connection: requests, replies, notifications, rejections."""

from __future__ import annotations

import enum
from typing import Any, Final, TypeAlias

from livepatch.record import Record, set_field

from .codes import KINDS_BY_CODE

# The events are records, not dataclasses: every one-shot client imports
# this module, and defining dataclasses (and importing dataclasses) is a good
# part of such a client's start-up. Each is immutable, compared by value.

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


class Request(Record):
    """A call from the client that expects exactly one reply naming ``id``.
    ``params`` has been validated against :data:`METHODS`."""

    __slots__ = ("id", "method", "params")
    __match_args__ = ("id", "method", "params")
    id: RequestId
    method: str
    params: dict[str, Any]

    def __init__(self, id: RequestId, method: str, params: dict[str, Any]) -> None:
        set_field(self, "id", id)
        set_field(self, "method", method)
        set_field(self, "params", params)


class Notification(Record):
    """A message with no id, never answered: the server's ``event``
    notifications, or (rarely) a client notification after ``hello``."""

    __slots__ = ("method", "params")
    __match_args__ = ("method", "params")
    method: str
    params: dict[str, Any]

    def __init__(self, method: str, params: dict[str, Any]) -> None:
        set_field(self, "method", method)
        set_field(self, "params", params)


class Response(Record):
    """A successful reply to the request ``id``."""

    __slots__ = ("id", "result")
    __match_args__ = ("id", "result")
    id: RequestId
    result: Any

    def __init__(self, id: RequestId, result: Any) -> None:
        set_field(self, "id", id)
        set_field(self, "result", result)


class ErrorResponse(Record):
    """An error reply to the request ``id``. ``id`` is ``None`` only when the
    server could not tell which request the error is about (parse errors)."""

    __slots__ = ("code", "data", "id", "message")
    __match_args__ = ("id", "code", "message", "data")
    id: RequestId | None
    code: int
    message: str
    data: dict[str, Any]

    def __init__(self, id: RequestId | None, code: int, message: str, data: dict[str, Any]) -> None:
        set_field(self, "id", id)
        set_field(self, "code", code)
        set_field(self, "message", message)
        set_field(self, "data", data)

    @property
    def kind(self) -> str:
        """``data.kind``, or the kind the code stands for if it is missing."""
        kind = self.data.get("kind")
        if isinstance(kind, str):
            return kind
        return KINDS_BY_CODE.get(self.code, "error")


class Rejected(Record):
    """Server side: the client sent something that cannot be served (bad JSON,
    an invalid request, an unknown method, bad params, a request before
    ``hello``, a frame over the limit). Not an exception: write ``reply``
    back, and if ``close`` is true (only for an oversize frame) drop the
    connection after writing it."""

    __slots__ = ("close", "error", "reply")
    __match_args__ = ("error", "reply", "close")
    error: ErrorResponse
    reply: bytes
    close: bool

    def __init__(self, error: ErrorResponse, reply: bytes, close: bool = False) -> None:
        set_field(self, "error", error)
        set_field(self, "reply", reply)
        set_field(self, "close", close)


class ConnectionClosed(Record):
    """The peer closed its end (``receive_data(b"")`` was called) and every
    complete frame before that has been returned. ``truncated`` is true when
    a partial frame was left unfinished."""

    __slots__ = ("truncated",)
    __match_args__ = ("truncated",)
    truncated: bool

    def __init__(self, truncated: bool = False) -> None:
        set_field(self, "truncated", truncated)


ServerEvent: TypeAlias = Request | Notification | Rejected | ConnectionClosed | NeedData
ClientEvent: TypeAlias = Response | ErrorResponse | Notification | ConnectionClosed | NeedData
