"""What comes out of a connection: requests, replies, notifications, rejections."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from .codes import KINDS_BY_CODE

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
        return KINDS_BY_CODE.get(self.code, "error")


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
