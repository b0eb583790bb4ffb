"""Shared pieces of the sans-IO protocol tests: feeding bytes, reading events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from livepatch import protocol as proto
from livepatch.protocol import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    ErrorResponse,
    Rejected,
    Request,
    ServerConnection,
)

# --------------------------------------------------------------------------
# helpers


def drain(conn: ServerConnection | ClientConnection, limit: int = 100_000) -> list[Any]:
    """Every event up to NEED_DATA (or the first ConnectionClosed)."""
    events: list[Any] = []
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed) or (isinstance(event, Rejected) and event.close):
            return events
    raise AssertionError("next_event() never returned NEED_DATA")


def serve(server: ServerConnection, chunks: Iterable[bytes]) -> list[Any]:
    """Feed chunks like an I/O loop would, accepting any hello on the way."""
    events: list[Any] = []
    for chunk in chunks:
        if not chunk:  # b"" would mean EOF
            continue
        server.receive_data(chunk)
        while (event := server.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Rejected) and event.close:
                return events
            if isinstance(event, Request) and event.method == "hello":
                server.mark_authenticated()
                server.send_result(event.id, {"protocol": proto.PROTOCOL_VERSION})
    return events


def line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def request(id: Any, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def authed() -> ServerConnection:
    server = ServerConnection()
    server.mark_authenticated()
    return server


def one_event(server: ServerConnection, data: bytes) -> Any:
    server.receive_data(data)
    events = drain(server)
    assert len(events) == 1, events
    return events[0]


def rejected(server: ServerConnection, data: bytes) -> ErrorResponse:
    event = one_event(server, data)
    assert isinstance(event, Rejected), event
    assert not event.close
    # The ready-made reply is exactly the error, as one frame.
    assert event.reply.endswith(b"\n") and event.reply.count(b"\n") == 1
    reply = json.loads(event.reply)
    assert reply == {
        "jsonrpc": "2.0",
        "id": event.error.id,
        "error": {
            "code": event.error.code,
            "message": event.error.message,
            "data": event.error.data,
        },
    }
    assert event.error.data["kind"] in proto.ERROR_CODES
    assert proto.ERROR_CODES[event.error.data["kind"]] == event.error.code
    return event.error


VALID_PARAMS: dict[str, dict[str, Any]] = {
    "hello": {"token": "t0k3n", "client": "pytest"},
    "status": {},
    "load": {"slot": "spam", "source": "def classify(m):\n    return 'hâm'\n", "filename": "v2.py"},
    "check": {"version": "spam@1"},
    "swap": {"version": "spam@2", "expect": "spam@1"},
    "rollback": {"slot": "spam"},
    "purge": {"version": "spam@1"},
    "unload": {"version": "spam@1", "wait_s": 0.5},
    "symbols": {"version": "spam@1"},
    "source": {"version": "spam@1"},
    "diff": {"a": "spam@1", "b": "spam@2"},
    "call": {"slot": "spam", "symbol": "classify", "args": [{"text": "hi"}], "kwargs": {"x": None}},
    "subscribe": {},
    "journal": {"limit": 10},
    "shadow": {"version": "spam@2", "sample": 0.1, "for_s": 10, "queue": 100, "timeout_s": 1},
}

# The spec's numbers, written out independently of the module's table.
SPEC_CODES = {
    "parse-error": -32700,
    "invalid-request": -32600,
    "unknown-method": -32601,
    "bad-params": -32602,
    "internal": -32603,
    "unauthenticated": -32001,
    "load-failed": -32002,
    "check-failed": -32003,
    "bad-state": -32004,
    "unknown-version": -32005,
    "conflict": -32006,
    "busy": -32007,
    "too-large": -32008,
    # Not in the design's list: errors.CallFailed arrived later; next free code.
    "call-failed": -32009,
    # Durable state (storage), then the liveness kinds.
    "storage": -32010,
    "timeout": -32011,
    "bad-result": -32012,
}


def started(*methods: str) -> ClientConnection:
    """A client that has sent these requests and awaits their replies."""
    client = ClientConnection()
    for method in methods:
        client.send_request(method)
    return client
