"""Tests for the sans-IO control protocol: bytes in, events out; no sockets."""

from __future__ import annotations

import functools
import itertools
import json
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livepatch import errors
from livepatch import protocol as proto
from livepatch.protocol import (
    EXACTLY_ONE_OF,
    MAX_FRAME,
    METHODS,
    NEED_DATA,
    PRE_AUTH_MAX_FRAME,
    ClientConnection,
    ConnectionClosed,
    ConnState,
    ErrorResponse,
    InvalidParams,
    InvalidParamType,
    LocalProtocolError,
    Notification,
    Rejected,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
    UnknownMethod,
    error_from_response,
    tokens_match,
    validate_params,
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


# --------------------------------------------------------------------------
# tables and round trips


def test_an_error_kind_is_defined_once_by_its_class() -> None:
    # Every class with a kind and a code of its own is that kind on the wire...
    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    for cls in subclasses(errors.LivepatchError):
        if "kind" in cls.__dict__ and "wire_code" in cls.__dict__:
            assert proto.ERROR_CODES[cls.kind] == cls.wire_code
            assert proto.error_class_for_kind(cls.kind) is cls
    # ...and a second class cannot take a kind or a code already taken.
    with pytest.raises(TypeError, match="already taken"):
        type("Again", (errors.LivepatchError,), {"kind": "storage", "wire_code": -32099})
    with pytest.raises(TypeError, match="already taken"):
        type("Again", (errors.LivepatchError,), {"kind": "fresh-kind", "wire_code": -32010})
    assert "fresh-kind" not in proto.ERROR_CODES


def test_tables_match_the_spec() -> None:
    assert dict(proto.ERROR_CODES) == SPEC_CODES
    # One class per engine kind, carrying its kind and its code.
    assert errors.error_for_kind("storage") is errors.StorageError
    assert proto.code_for_kind(errors.StorageError.kind) == errors.StorageError.wire_code
    assert set(METHODS) == set(VALID_PARAMS)
    assert proto.PROTOCOL_VERSION == 1
    assert MAX_FRAME == 16 * 1024 * 1024
    for name in proto.__all__:
        assert hasattr(proto, name), name
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("method", sorted(VALID_PARAMS))
def test_round_trip_every_method(method: str) -> None:
    client, server = ClientConnection(), authed()
    rid, data = client.send_request(method, VALID_PARAMS[method])
    assert client.pending == {rid: method}
    event = one_event(server, data)
    assert event == Request(rid, method, VALID_PARAMS[method])
    assert server.in_flight == {rid}
    result = {"method": method, "nested": [1, 2.5, "ü", None, True]}
    client.receive_data(server.send_result(rid, result))
    assert server.in_flight == set()
    assert drain(client) == [Response(rid, result)]
    assert client.pending == {}


@pytest.mark.parametrize("method", sorted(VALID_PARAMS))
def test_only_required_params(method: str) -> None:
    sample = {"version": "x@1", "slot": "x"}
    params = {
        name: sample.get(spec.text or "", "x")
        for name, spec in METHODS[method].items()
        if spec.required
    }
    # One of each exactly-one-of group is required too.
    for group in EXACTLY_ONE_OF.get(method, ()):
        params[group[-1]] = "spam@1" if method == "call" else "x"
    client = ClientConnection()
    rid, data = client.send_request(method, params)
    assert one_event(authed(), data) == Request(rid, method, params)


def test_params_may_be_omitted() -> None:
    server = authed()
    assert one_event(server, line(request(1, "status"))) == Request(1, "status", {})
    _, data = ClientConnection().send_request("subscribe")
    assert b"params" not in data


def test_client_ids_count_up_and_are_unique() -> None:
    client = ClientConnection()
    ids = [client.send_request("status")[0] for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert ClientConnection(first_id=100).send_request("status")[0] == 100


ERROR_CASES: list[tuple[BaseException, str, type[errors.LivepatchError]]] = [
    (
        errors.LoadFailed("bad syntax", filename="a.py", line=3, col=7),
        "load-failed",
        errors.LoadFailed,
    ),
    (
        errors.CheckFailed("unresolved name", problems=[{"symbol": "x"}]),
        "check-failed",
        errors.CheckFailed,
    ),
    (errors.BadState("spam@1 is active"), "bad-state", errors.BadState),
    (errors.UnknownVersion("no spam@9"), "unknown-version", errors.UnknownVersion),
    (errors.UnknownSlot("no slot ham"), "unknown-version", errors.UnknownVersion),
    (errors.Conflict("expected spam@1", current="spam@2"), "conflict", errors.Conflict),
    (errors.Busy("swap lock"), "busy", errors.Busy),
    (errors.TooLarge("source too big", size=10), "too-large", errors.TooLarge),
    (errors.CallFailed("rule raised", exception="KeyError"), "call-failed", errors.CallFailed),
    (errors.Unauthenticated("bad token"), "unauthenticated", errors.Unauthenticated),
    (proto.ParseError("bad"), "parse-error", proto.ParseError),
    (proto.InvalidRequest("bad"), "invalid-request", proto.InvalidRequest),
    (proto.UnknownMethod("nope", method="x"), "unknown-method", proto.UnknownMethod),
    (InvalidParams("bad", param="a"), "bad-params", InvalidParams),
    (InvalidParamType("bad", param="a"), "bad-params", InvalidParams),
    (proto.InternalError("oops"), "internal", proto.InternalError),
    (KeyError("k"), "internal", proto.InternalError),
]


@pytest.mark.parametrize(("exc", "kind", "cls"), ERROR_CASES, ids=lambda v: type(v).__name__)
def test_every_error_kind_round_trips(
    exc: BaseException, kind: str, cls: type[errors.LivepatchError]
) -> None:
    client, server = ClientConnection(), authed()
    rid, data = client.send_request("status")
    server.receive_data(data)
    drain(server)
    client.receive_data(server.send_error(rid, exc))
    (reply,) = drain(client)
    assert isinstance(reply, ErrorResponse) and reply.id == rid
    assert reply.kind == kind and reply.data["kind"] == kind
    assert reply.code == SPEC_CODES[kind]
    error = error_from_response(reply)
    assert type(error) is cls
    assert error.code == SPEC_CODES[kind]  # type: ignore[attr-defined]
    if isinstance(exc, errors.LivepatchError):
        assert error.message == exc.message
        assert error.data == exc.data
        assert error.to_data() == {**exc.to_data(), "kind": kind}


def test_every_engine_error_kind_has_its_own_code() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    kinds = {
        c.kind for c in classes if isinstance(c, type) and issubclass(c, errors.LivepatchError)
    }
    kinds.discard("error")  # the base class: sent as internal, kind kept
    assert kinds <= set(proto.ERROR_CODES)
    assert len(set(proto.ERROR_CODES.values())) == len(proto.ERROR_CODES)


def test_error_about_no_request() -> None:
    server = ServerConnection()
    reply = json.loads(server.send_error(None, errors.Unauthenticated("wrong uid")))
    assert reply["id"] is None and reply["error"]["code"] == -32001
    with pytest.raises(LocalProtocolError):
        server.send_result(None, {})  # type: ignore[arg-type]


def test_internal_error_is_one_line_without_traceback() -> None:
    server = authed()
    server.receive_data(line(request(1, "status")))
    drain(server)
    exc = RuntimeError("first line\nTraceback (most recent call last):\n  File 'x', line 1")
    reply = json.loads(server.send_error(1, exc))
    assert reply["error"] == {
        "code": -32603,
        "message": "internal error: RuntimeError: first line",
        "data": {"kind": "internal", "type": "RuntimeError"},
    }


@pytest.mark.parametrize(("kind", "code"), sorted(SPEC_CODES.items()))
def test_send_error_by_code(kind: str, code: int) -> None:
    server = authed()
    server.receive_data(line(request("a", "status")))
    drain(server)
    reply = json.loads(server.send_error("a", code, "went wrong", {"detail": 1}))
    assert reply == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": code, "message": "went wrong", "data": {"kind": kind, "detail": 1}},
    }


def test_send_error_misuse_is_local() -> None:
    server = authed()
    server.receive_data(line(request(1, "status")))
    drain(server)
    with pytest.raises(ValueError, match="unknown error code"):
        server.send_error(1, -1, "x")
    with pytest.raises(TypeError):
        server.send_error(1, errors.Busy("x"), "extra message")
    assert server.in_flight == {1}
    # Error data that is not JSON still produces a reply.
    reply = json.loads(server.send_error(1, errors.LoadFailed("bad", path=Path("a.py"))))
    assert reply["error"]["data"] == {"kind": "load-failed"}


def test_error_from_response_edge_cases() -> None:
    # A remote "message" key does not collide with the constructor argument.
    err = error_from_response(
        ErrorResponse(1, -32002, "m", {"kind": "load-failed", "message": "x", "line": 3})
    )
    assert isinstance(err, errors.LoadFailed) and err.data == {"message": "x", "line": 3}
    # Unknown kinds keep the kind and the code.
    err = error_from_response(ErrorResponse(1, -32099, "m", {"kind": "weird"}))
    assert type(err) is errors.LivepatchError
    assert err.to_data() == {"kind": "weird"} and err.code == -32099  # type: ignore[attr-defined]
    # No data at all: the kind comes from the code.
    assert isinstance(error_from_response(ErrorResponse(1, -32006, "m", {})), errors.Conflict)


# --------------------------------------------------------------------------
# hello first


def test_requests_before_hello_are_refused() -> None:
    server = ServerConnection()
    error = rejected(server, line(request(7, "status")))
    assert error.id == 7 and error.code == -32001 and error.kind == "unauthenticated"
    # Even unknown methods: nothing is revealed before hello.
    assert rejected(server, line(request(8, "nope"))).kind == "unauthenticated"
    # Notifications before hello are dropped without a reply.
    server.receive_data(line({"jsonrpc": "2.0", "method": "status"}))
    assert drain(server) == []
    # A bad hello is still answered as bad params, not unauthenticated.
    assert rejected(server, line(request(9, "hello", {"token": 1}))).kind == "bad-params"
    hello = one_event(server, line(request(10, "hello", {"token": "t"})))
    assert hello == Request(10, "hello", {"token": "t"})
    assert not server.authenticated
    server.send_error(10, errors.Unauthenticated("wrong token"))
    assert rejected(server, line(request(11, "status"))).kind == "unauthenticated"
    server.mark_authenticated()
    assert one_event(server, line(request(12, "status"))) == Request(12, "status", {})


def test_pipelined_hello_then_request() -> None:
    # Frames are parsed when asked for, so the hello is accepted first.
    stream = line(request(1, "hello", {"token": "t"})) + line(request(2, "status"))
    events = serve(ServerConnection(), [stream])
    assert events == [Request(1, "hello", {"token": "t"}), Request(2, "status", {})]


def test_notifications_after_hello() -> None:
    server = authed()
    assert one_event(server, line({"jsonrpc": "2.0", "method": "status"})) == Notification(
        "status", {}
    )
    # Unservable notifications are never answered: dropped.
    for bad in (
        {"jsonrpc": "2.0", "method": "nope"},
        {"jsonrpc": "2.0", "method": "load", "params": {"slot": 1}},
        {"jsonrpc": "2.0", "method": "load", "params": [1]},
    ):
        server.receive_data(line(bad))
        assert drain(server) == []


def test_server_notifications() -> None:
    server, client = ServerConnection(), ClientConnection()
    with pytest.raises(LocalProtocolError):
        server.send_notification("event", {"x": 1})
    server.mark_authenticated()
    with pytest.raises(LocalProtocolError):
        server.send_notification("nope", {})
    data = server.send_notification("event", {"version": "spam@2", "state": "active"})
    client.receive_data(data)
    assert drain(client) == [Notification("event", {"version": "spam@2", "state": "active"})]


def test_tokens_match() -> None:
    assert tokens_match("s3cret", "s3cret")
    assert not tokens_match("s3cre", "s3cret")
    assert not tokens_match(None, "s3cret")
    assert not tokens_match(123, "s3cret")
    assert tokens_match("ünï", "ünï")


# --------------------------------------------------------------------------
# framing


STREAM = (
    line(request(1, "hello", {"client": "tëst 😀"}))
    + b"\n  \r\n"
    + line(request(2, "load", {"slot": "s", "source": "x = '€'\n"}))
    + b"{not json\n"
    + json.dumps(request("three", "status"), ensure_ascii=False).encode()
    + b"\r\n"
    + line([request(4, "status")])
)


def test_every_split_point_gives_the_same_events() -> None:
    whole = serve(ServerConnection(), [STREAM])
    kinds = [type(e).__name__ for e in whole]
    assert kinds == ["Request", "Request", "Rejected", "Request", "Rejected"]
    assert whole[1].params["source"] == "x = '€'\n"
    for i in range(len(STREAM) + 1):
        assert serve(ServerConnection(), [STREAM[:i], STREAM[i:]]) == whole, i
    assert serve(ServerConnection(), [STREAM[i : i + 1] for i in range(len(STREAM))]) == whole


def test_split_utf8_character() -> None:
    data = line(request(1, "hello", {"client": "é€😀"}))
    start = data.index("é".encode())
    for i in range(start, start + 9):
        events = serve(ServerConnection(), [data[:i], data[i:]])
        assert events == [Request(1, "hello", {"client": "é€😀"})]


def test_invalid_utf8_is_a_parse_error() -> None:
    error = rejected(authed(), b'{"jsonrpc":"2.0","id":1,"method":"\xff"}\n')
    assert error.kind == "parse-error" and error.id is None and "UTF-8" in error.message


def test_blank_lines_are_ignored() -> None:
    server = authed()
    server.receive_data(b"\n\n   \n\t\r\n")
    assert drain(server) == []
    assert one_event(server, b"\n" + line(request(1, "status"))) == Request(1, "status", {})


def test_oversize_is_detected_as_soon_as_the_buffer_passes_the_limit() -> None:
    server = ServerConnection()
    server.receive_data(line(request(1, "hello")))
    assert isinstance(server.next_event(), Request)
    server.mark_authenticated()
    mib = b"x" * (1024 * 1024)
    for _ in range(16):
        server.receive_data(mib)
        assert server.next_event() is NEED_DATA
    assert server.partial_frame_size == MAX_FRAME  # exactly at the limit is still fine
    server.receive_data(b"x")
    event = server.next_event()
    assert isinstance(event, Rejected) and event.close
    assert event.error.kind == "too-large" and event.error.code == -32008
    assert json.loads(event.reply)["error"]["data"]["kind"] == "too-large"
    assert server.partial_frame_size == 0  # the buffer was let go
    with pytest.raises(LocalProtocolError):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"\n")


def test_oversize_does_not_buffer_without_next_event() -> None:
    server = ServerConnection(max_frame=1000)
    for _ in range(50):
        server.receive_data(b"y" * 100)
        assert server.partial_frame_size <= 1000
    event = server.next_event()
    assert isinstance(event, Rejected) and event.close and event.error.kind == "too-large"


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    head = b'{"jsonrpc":"2.0","id":1,"method":"load","params":{"slot":"s","source":"'
    tail = b'"}}'
    body = b"x" * (MAX_FRAME - len(head) - len(tail))
    server = authed()
    server.receive_data(head + body + tail + b"\n")
    (event,) = drain(server)
    assert isinstance(event, Request) and len(event.params["source"]) == len(body)
    # One byte more, in a single chunk with its newline, after a good frame.
    server = authed()
    server.receive_data(line(request(2, "status")) + head + body + b"x" + tail + b"\n")
    first, second = drain(server)
    assert first == Request(2, "status", {})
    assert isinstance(second, Rejected) and second.close and second.error.kind == "too-large"


def test_small_limit_any_chunking() -> None:
    data = line(request(1, "status")) + b"z" * 60 + b"\n"
    for size in (1, 7, 64, 1000):
        server = ServerConnection(max_frame=50)
        server.mark_authenticated()
        events = serve(server, [data[i : i + size] for i in range(0, len(data), size)])
        assert events[0] == Request(1, "status", {})
        assert isinstance(events[1], Rejected) and events[1].close


def test_eof() -> None:
    server = authed()
    server.receive_data(line(request(1, "status")) + b'{"jsonrpc"')
    server.receive_data(b"")
    assert drain(server) == [Request(1, "status", {}), ConnectionClosed(truncated=True)]
    assert server.next_event() == ConnectionClosed(truncated=True)
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")
    client = ClientConnection()
    client.receive_data(b"")
    assert drain(client) == [ConnectionClosed(truncated=False)]


# --------------------------------------------------------------------------
# invalid input on the server: answered, and the connection goes on


@pytest.mark.parametrize(
    ("data", "kind", "needle"),
    [
        (b"{nope\n", "parse-error", "invalid JSON"),
        (b'{"jsonrpc":"2.0","id":1,"method":"status"\n', "parse-error", "invalid JSON"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"status","method":"load"}\n',
            "parse-error",
            "duplicate",
        ),
        (b"[" * 100_000 + b"\n", "parse-error", ""),
        (line([request(1, "status")]), "invalid-request", "batch"),
        (b"[]\n", "invalid-request", "batch"),
        (b"42\n", "invalid-request", "object"),
        (b'"status"\n', "invalid-request", "object"),
        (b"null\n", "invalid-request", "object"),
        (line({"jsonrpc": "2.0", "id": True, "method": "status"}), "invalid-request", "'id'"),
        (line({"jsonrpc": "2.0", "id": 1.5, "method": "status"}), "invalid-request", "'id'"),
        (line({"jsonrpc": "2.0", "id": None, "method": "status"}), "invalid-request", "'id'"),
        (line({"jsonrpc": "2.0", "id": [1], "method": "status"}), "invalid-request", "'id'"),
        (line({"jsonrpc": "2.0", "id": {}, "method": "status"}), "invalid-request", "'id'"),
        (line({"jsonrpc": "2.0", "method": 5}), "invalid-request", "'method'"),
    ],
)
def test_bad_input_without_usable_id(data: bytes, kind: str, needle: str) -> None:
    server = authed()
    error = rejected(server, data)
    assert error.kind == kind and error.id is None and needle in error.message
    assert one_event(server, line(request(1, "status"))) == Request(1, "status", {})


@pytest.mark.parametrize(
    ("message", "kind", "needle"),
    [
        ({"jsonrpc": "1.0", "id": 5, "method": "status"}, "invalid-request", "jsonrpc"),
        ({"id": 5, "method": "status"}, "invalid-request", "jsonrpc"),
        ({"jsonrpc": 2.0, "id": 5, "method": "status"}, "invalid-request", "jsonrpc"),
        ({"jsonrpc": "2.0", "id": 5}, "invalid-request", "missing"),
        ({"jsonrpc": "2.0", "id": 5, "method": ["status"]}, "invalid-request", "'method'"),
        (
            {"jsonrpc": "2.0", "id": 5, "method": "status", "parmas": {}},
            "invalid-request",
            "parmas",
        ),
        ({"jsonrpc": "2.0", "id": 5, "result": 1}, "invalid-request", "result"),
        (
            {"jsonrpc": "2.0", "id": 5, "method": "status", "params": None},
            "invalid-request",
            "params",
        ),
        (
            {"jsonrpc": "2.0", "id": 5, "method": "status", "params": "x"},
            "invalid-request",
            "params",
        ),
        ({"jsonrpc": "2.0", "id": 5, "method": "nope"}, "unknown-method", "nope"),
        ({"jsonrpc": "2.0", "id": 5, "method": "rpc.discover"}, "unknown-method", "rpc.discover"),
    ],
)
def test_bad_request_with_id_is_answered_to_that_id(
    message: dict[str, Any], kind: str, needle: str
) -> None:
    server = authed()
    error = rejected(server, line(message))
    assert error.kind == kind and error.id == 5 and needle in error.message
    assert server.in_flight == set()


@pytest.mark.parametrize("rid", ["a", "", "ü", 0, -3, 2**70])
def test_valid_id_types(rid: Any) -> None:
    server = authed()
    assert one_event(server, line(request(rid, "status"))) == Request(rid, "status", {})
    reply = json.loads(server.send_result(rid, None))
    assert reply["id"] == rid and type(reply["id"]) is type(rid)


def test_nan_and_infinity_are_not_json() -> None:
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"):
        data = (
            b'{"jsonrpc":"2.0","id":1,"method":"unload","params":{"version":"v@1","wait_s":%s}}\n'
        )
        error = rejected(authed(), data % token)
        assert error.kind == "parse-error"
    client = ClientConnection()
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="NaN"):
            client.send_request("unload", {"version": "v@1", "wait_s": bad})
        with pytest.raises(ValueError):
            client.send_request("call", {"slot": "s", "symbol": "f", "args": [[bad]]})
    assert client.pending == {}
    server = authed()
    server.receive_data(line(request(1, "status")))
    drain(server)
    with pytest.raises(proto.InternalError) as info:
        server.send_result(1, {"x": float("nan")})
    assert server.in_flight == {1}  # still waiting: answer with the error instead
    reply = json.loads(server.send_error(1, info.value))
    assert reply["error"]["data"]["kind"] == "internal" and "not JSON" in reply["error"]["message"]


def test_replies_quoting_peer_input_stay_short() -> None:
    server = ServerConnection(max_frame=3000)
    server.mark_authenticated()
    long = "k" * 2500
    for message in (
        request(1, "status", {long: 1}),
        request(1, long),
        {"jsonrpc": "2.0", "id": 1, "method": "status", long: 1},
        request(1, "journal", {"limit": -(10**2000)}),
    ):
        assert len(rejected(server, line(message)).message) < 300
    assert isinstance(one_event(server, line(request(long, "status"))), Request)
    assert len(rejected(server, line(request(long, "status"))).message) < 300


def test_duplicate_in_flight_id() -> None:
    server = authed()
    assert one_event(server, line(request(1, "status"))) == Request(1, "status", {})
    error = rejected(server, line(request(1, "status")))
    assert error.kind == "invalid-request" and error.id is None and "already" in error.message
    server.send_result(1, {})
    assert one_event(server, line(request(1, "status"))) == Request(1, "status", {})


def test_result_that_is_not_json() -> None:
    server = authed()
    server.receive_data(line(request(1, "status")))
    drain(server)
    for bad in ({1, 2}, object(), {"k": b"bytes"}):
        with pytest.raises(proto.InternalError, match="not JSON"):
            server.send_result(1, bad)
    assert server.in_flight == {1}


def test_answering_wrong_ids_is_local_misuse() -> None:
    server = authed()
    with pytest.raises(LocalProtocolError):
        server.send_result(1, {})
    assert isinstance(one_event(server, line(request(2, "nope"))), Rejected)
    with pytest.raises(LocalProtocolError):  # already answered by the Rejected reply
        server.send_error(2, errors.Busy("x"))
    server.receive_data(line(request(3, "status")))
    drain(server)
    server.send_result(3, {})
    with pytest.raises(LocalProtocolError):
        server.send_result(3, {})


def test_encoding_is_one_compact_utf8_line() -> None:
    server = authed()
    server.receive_data(line(request(1, "status")))
    drain(server)
    data = server.send_result(1, {"text": "a\nb\r\u2028é", "n": [1, 2]})
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and b"\r" not in data
    assert "é".encode() in data and b", " not in data and b": " not in data
    assert json.loads(data)["result"]["text"] == "a\nb\r\u2028é"


def test_lone_surrogates_are_refused_at_the_boundary() -> None:
    # Text UTF-8 cannot carry never reaches the engine (or its journal):
    # refused before sending, and refused by the server when sent raw.
    name = "bad\udcffname.py"
    with pytest.raises(InvalidParamType, match="not valid Unicode"):
        ClientConnection().send_request("load", {"slot": "s", "source": "", "filename": name})
    for params in (
        {"client": "\ud800"},
        {"client": "ok", "token": "\udfff"},
    ):
        frame = json.dumps(request(1, "hello", params)).encode() + b"\n"
        error = rejected(ServerConnection(), frame)
        assert error.kind == "bad-params" and "not valid Unicode" in error.message
    frame = json.dumps(request(1, "call", {"slot": "s", "symbol": "f", "kwargs": {"\ud800": 1}}))
    assert rejected(authed(), frame.encode() + b"\n").kind == "bad-params"


@pytest.mark.parametrize(
    ("method", "params", "needle"),
    [
        ("check", {"version": "spam@²"}, "not a version id"),
        ("check", {"version": "spam@01"}, "not a version id"),
        ("check", {"version": "spam@" + "9" * 5000}, "not a version id"),
        ("check", {"version": "spam@\u0661"}, "not a version id"),
        ("swap", {"version": "spam@1", "expect": "x@²"}, "not a version id"),
        ("diff", {"a": "spam@1", "b": "spam"}, "not a version id"),
        ("rollback", {"slot": "x@²"}, "not a slot name"),
        ("rollback", {"slot": "sp\u00e4m"}, "not a slot name"),
        ("call", {"slot": "s" * 65, "symbol": "f"}, "not a slot name"),
        ("load", {"slot": "s", "source": "", "filename": "a\0b"}, "NUL"),
        ("load", {"slot": "s", "path": "x" * 5000}, "over the 4096-character limit"),
        ("hello", {"client": "c" * 5000}, "over the 4096-character limit"),
    ],
)
def test_ids_and_names_are_checked_at_the_boundary(
    method: str, params: dict[str, Any], needle: str
) -> None:
    with pytest.raises(InvalidParams, match=needle):
        validate_params(method, params)
    server = ServerConnection() if method == "hello" else authed()
    error = rejected(server, line(request(1, method, params)))
    assert error.kind == "bad-params" and needle in error.message
    assert len(error.message) < 300  # a 5,000-digit id makes a short error


def test_reply_over_the_limit() -> None:
    server = ServerConnection(max_frame=200)
    server.mark_authenticated()
    server.receive_data(line(request(1, "status")))
    drain(server)
    with pytest.raises(errors.TooLarge):
        server.send_result(1, "x" * 500)
    reply = json.loads(server.send_error(1, errors.TooLarge("result too large")))
    assert reply["error"]["data"]["kind"] == "too-large"
    client = ClientConnection(max_frame=200)
    with pytest.raises(errors.TooLarge):
        client.send_request("load", {"slot": "s", "source": "x" * 500})
    assert client.pending == {} and client.send_request("status")[0] == 1


# --------------------------------------------------------------------------
# params


@pytest.mark.parametrize(
    ("method", "params", "exc", "needle"),
    [
        ("load", {"slot": "s", "source": "", "bogus": 1}, InvalidParams, "'bogus'"),
        ("status", {"verbose": True}, InvalidParams, "'verbose'"),
        (
            "load",
            {"slot": "s"},
            InvalidParams,
            "needs exactly one of 'source', 'path' or 'object', got 0",
        ),
        (
            "load",
            {"slot": "s", "source": "", "path": "/x.so"},
            InvalidParams,
            "needs exactly one of 'source', 'path' or 'object', got 2",
        ),
        ("load", {"slot": 3, "source": ""}, InvalidParamType, "'slot' of 'load' must be a string"),
        (
            "unload",
            {"version": "v@1", "wait_s": True},
            InvalidParamType,
            "must be a number, got boolean",
        ),
        ("unload", {"version": "v@1", "wait_s": "1"}, InvalidParamType, "'wait_s'"),
        ("unload", {"version": "v@1", "wait_s": -0.5}, InvalidParams, ">= 0"),
        ("journal", {"limit": 0}, InvalidParams, ">= 1"),
        ("journal", {"limit": True}, InvalidParamType, "an integer"),
        ("journal", {"limit": 1.0}, InvalidParamType, "an integer"),
        ("swap", {"version": "v@1", "expect": 1}, InvalidParamType, "a string or null"),
        ("call", {"symbol": "f"}, InvalidParams, "exactly one of 'slot' or 'version'"),
        ("call", {"slot": "s", "version": "v@1", "symbol": "f"}, InvalidParams, "exactly one"),
        ("call", {"slot": "s", "symbol": "f", "args": {}}, InvalidParamType, "an array"),
        ("call", {"slot": "s", "symbol": "f", "kwargs": []}, InvalidParamType, "an object"),
        ("load", ["s", "src"], InvalidParamType, "use named params"),
        ("hello", {"client": None}, InvalidParamType, "'client'"),
    ],
)
def test_bad_params(method: str, params: Any, exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle.replace("(", r"\(")) as info:
        ClientConnection().send_request(method, params)
    assert isinstance(info.value, ValueError if exc is InvalidParams else TypeError)
    error = rejected(authed(), line(request(1, method, params)))
    assert error.code == -32602 and error.kind == "bad-params" and needle in error.message
    assert error.id == 1


def test_good_edge_params() -> None:
    for method, params in [
        ("swap", {"version": "v@1", "expect": None}),
        ("unload", {"version": "v@1", "wait_s": 0}),
        ("unload", {"version": "v@1", "wait_s": 2.5}),
        ("journal", {"limit": 1}),
        ("call", {"version": "spam@1", "symbol": "f", "args": [], "kwargs": {}}),
        ("check", {"version": "spam_2@10"}),
        ("hello", {"client": "évian \x1b[1m"}),  # shown escaped, never refused
    ]:
        assert validate_params(method, params) == params
        rid, data = ClientConnection().send_request(method, params)
        assert one_event(authed(), data) == Request(rid, method, params)


@pytest.mark.parametrize(
    "value",
    [{1, 2}, (1, 2), b"bytes", object(), {1: "int key"}, [[float("nan")]], {"a": {2: 3}}],
    ids=repr,
)
def test_values_json_cannot_carry_are_refused_locally(value: Any) -> None:
    client = ClientConnection()
    with pytest.raises((TypeError, ValueError)) as info:
        client.send_request("call", {"slot": "s", "symbol": "f", "args": [value]})
    assert isinstance(info.value, InvalidParams)
    assert client.pending == {}


def test_circular_and_deep_values_are_refused_locally() -> None:
    client = ClientConnection()
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="not JSON"):
        client.send_request("call", {"slot": "s", "symbol": "f", "args": loop})
    deep: list[Any] = []
    for _ in range(5_000):  # deeper than the recursion limit
        deep = [deep]
    with pytest.raises(ValueError):
        client.send_request("call", {"slot": "s", "symbol": "f", "args": deep})
    assert client.pending == {}


def test_unknown_method_is_local_misuse() -> None:
    client = ClientConnection()
    with pytest.raises(ValueError, match="unknown method"):
        client.send_request("stats")
    with pytest.raises(UnknownMethod):
        client.send_request("stats")
    assert client.pending == {}


# --------------------------------------------------------------------------
# client side: garbage from the engine


def started(*methods: str) -> ClientConnection:
    client = ClientConnection()
    for method in methods:
        client.send_request(method)
    return client


@pytest.mark.parametrize(
    "data",
    [
        b"{nope\n",
        b"[]\n",
        b"7\n",
        line({"jsonrpc": "2.0", "id": 99, "result": {}}),
        line({"jsonrpc": "2.0", "id": "1", "result": {}}),
        line({"jsonrpc": "2.0", "id": True, "result": {}}),
        line({"jsonrpc": "2.0", "id": 1}),
        line({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": ""}}),
        line({"jsonrpc": "1.0", "id": 1, "result": 1}),
        line({"id": 1, "result": 1}),
        line({"jsonrpc": "2.0", "id": 1, "result": 1, "extra": 2}),
        line({"jsonrpc": "2.0", "id": 1, "error": "boom"}),
        line({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}),
        line({"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "m"}}),
        line({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": 2}}),
        line({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m", "data": []}}),
        line({"jsonrpc": "2.0", "id": 1, "method": "event", "params": {}}),
        line({"jsonrpc": "2.0", "method": "event", "params": [1]}),
        line({"jsonrpc": "2.0", "method": 3}),
        b'{"jsonrpc":"2.0","id":1,"result":NaN}\n',
    ],
)
def test_client_rejects_garbage(data: bytes) -> None:
    client = started("status")
    client.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    with pytest.raises(RemoteProtocolError):  # and stays broken
        client.next_event()


def test_client_oversize_from_engine() -> None:
    client = ClientConnection(max_frame=64)
    client.send_request("status")
    client.receive_data(b"x" * 65)
    with pytest.raises(RemoteProtocolError, match="limit"):
        client.next_event()


def test_client_accepts_error_without_id_and_unknown_notifications() -> None:
    client = started("status")
    reply = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "bad"}}
    client.receive_data(line(reply) + line({"jsonrpc": "2.0", "method": "future-thing"}))
    assert drain(client) == [
        ErrorResponse(None, -32700, "bad", {}),
        Notification("future-thing", {}),
    ]
    assert client.pending == {1: "status"}
    assert isinstance(error_from_response(ErrorResponse(None, -32700, "bad", {})), proto.ParseError)


def test_client_events_in_order_with_interleaved_notifications() -> None:
    client, server = ClientConnection(), authed()
    out = b"".join(client.send_request(m)[1] for m in ("status", "subscribe", "journal"))
    server.receive_data(out)
    reqs = drain(server)
    replies = (
        server.send_result(reqs[1].id, {})
        + server.send_notification("event", {"n": 1})
        + server.send_error(reqs[0].id, errors.Busy("later"))
        + server.send_result(reqs[2].id, [])
    )
    got = serve_client(client, [replies[i : i + 5] for i in range(0, len(replies), 5)])
    assert [type(e).__name__ for e in got] == [
        "Response",
        "Notification",
        "ErrorResponse",
        "Response",
    ]
    assert [getattr(e, "id", None) for e in got] == [2, None, 1, 3]
    assert client.pending == {}


def serve_client(client: ClientConnection, chunks: Iterable[bytes]) -> list[Any]:
    events: list[Any] = []
    for chunk in chunks:
        if chunk:
            client.receive_data(chunk)
            events.extend(drain(client))
    return events


# --------------------------------------------------------------------------
# property tests

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=20),
    "integer": st.integers(),
    "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "array": st.lists(JSON_VALUES, max_size=3),
    "object": st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
    "null": st.none(),
}


TEXT_FOR: dict[str, st.SearchStrategy[str]] = {
    "version": st.from_regex(r"[a-z_][a-z0-9_]{0,5}@[1-9][0-9]{0,5}", fullmatch=True),
    "slot": st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    "name": st.text(max_size=20).filter(lambda t: "\0" not in t),
    "client": st.text(max_size=20),
}


@st.composite
def valid_params(draw: st.DrawFn, method: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, spec in METHODS[method].items():
        if spec.required or draw(st.booleans()):
            strategy = st.one_of([BY_TYPE[t] for t in spec.types])
            if spec.text is not None:
                text = TEXT_FOR[spec.text]
                strategy = st.one_of([text if t == "string" else BY_TYPE[t] for t in spec.types])
            if spec.minimum is not None:
                strategy = strategy.filter(functools.partial(operator.le, spec.minimum))
            if spec.maximum is not None:
                strategy = strategy.filter(functools.partial(operator.ge, spec.maximum))
            params[name] = draw(strategy)
    for group in EXACTLY_ONE_OF.get(method, ()):
        for name in group:
            params.pop(name, None)
        chosen = draw(st.sampled_from(group))
        text = METHODS[method][chosen].text
        params[chosen] = draw(TEXT_FOR[text] if text else st.text(max_size=10))
    return params


CALLS = st.sampled_from(sorted(METHODS)).flatmap(lambda m: st.tuples(st.just(m), valid_params(m)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(CALLS, max_size=6),
    ids=st.lists(st.integers() | st.text(max_size=6), min_size=6, max_size=6, unique=True),
    style=st.lists(st.tuples(st.booleans(), st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \n"]))),
    data=st.data(),
)
def test_random_request_streams_chunked_anywhere(
    calls: list[tuple[str, dict[str, Any]]],
    ids: list[str | int],
    style: list[tuple[bool, bytes]],
    data: st.DataObject,
) -> None:
    stream = b""
    expected = []
    for i, (method, params) in enumerate(calls):
        ascii_only, end = style[i] if i < len(style) else (False, b"\n")
        text = json.dumps(request(ids[i], method, params), ensure_ascii=ascii_only)
        stream += text.encode() + end
        expected.append(Request(ids[i], method, params))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert serve(authed(), chunks) == expected


FINAL = line(request("final-ω", "status"))
RPCISH = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | JSON_SCALARS,
        "id": st.integers() | st.text(max_size=3) | JSON_VALUES,
        "method": st.sampled_from(sorted(METHODS)) | st.text(max_size=5) | JSON_SCALARS,
        "params": JSON_VALUES
        | st.dictionaries(st.sampled_from(["slot", "version", "x"]), JSON_VALUES),
        "result": JSON_VALUES,
    },
)
GARBAGE = (
    st.binary(max_size=200)
    | st.text(alphabet='{}[]":,0123456789.-eE\\ truefalsnNI\nu', max_size=100).map(str.encode)
    | st.lists(RPCISH, max_size=4).map(lambda ms: b"".join(line(m) for m in ms))
    | st.tuples(
        st.sampled_from([line(request(1, m, p)) for m, p in VALID_PARAMS.items()]), st.data()
    ).map(lambda t: t[0][: t[1].draw(st.integers(0, len(t[0]) - 2))])  # truncated frames
)


@settings(max_examples=300, deadline=None)
@given(garbage=GARBAGE, authenticated=st.booleans())
def test_garbage_never_raises_and_a_later_frame_still_parses(
    garbage: bytes, authenticated: bool
) -> None:
    server = ServerConnection()
    if authenticated:
        server.mark_authenticated()
    if garbage:
        server.receive_data(garbage)
    for event in drain(server):
        assert isinstance(event, Request | Notification | Rejected)
        if isinstance(event, Rejected):
            assert not event.close
            reply = json.loads(event.reply)
            assert reply["id"] == event.error.id
            assert proto.ERROR_CODES[reply["error"]["data"]["kind"]] == reply["error"]["code"]
        if isinstance(event, Request):
            assert authenticated or event.method == "hello"
            validate_params(event.method, event.params)
    server.mark_authenticated()
    events = drain_after(server, b"\n" + FINAL)
    assert events[-1] == Request("final-ω", "status", {})


def drain_after(server: ServerConnection, data: bytes) -> list[Any]:
    server.receive_data(data)
    return drain(server)


@settings(max_examples=200, deadline=None)
@given(garbage=GARBAGE)
def test_client_garbage_raises_only_remote_protocol_error(garbage: bytes) -> None:
    client = started("status", "subscribe")
    if garbage:
        client.receive_data(garbage)
    try:
        for event in drain(client):
            assert isinstance(event, Response | ErrorResponse | Notification)
    except RemoteProtocolError:
        pass


ANYTHING = st.recursive(
    JSON_SCALARS
    | st.floats()
    | st.binary(max_size=3)
    | st.sets(st.integers(), max_size=2)
    | st.just(object()),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=3) | st.integers() | st.none(), inner, max_size=3)
    ),
    max_leaves=6,
)
PARAM_NAMES = sorted({name for schema in METHODS.values() for name in schema})


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(sorted(METHODS)) | st.text(max_size=6),
    params=st.none()
    | st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=4), ANYTHING, max_size=4)
    | ANYTHING,
)
def test_client_never_puts_an_invalid_request_on_the_wire(method: str, params: Any) -> None:
    client = ClientConnection()
    try:
        rid, data = client.send_request(method, params)
    except (TypeError, ValueError):
        assert client.pending == {}
        return
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert one_event(authed(), data) == Request(rid, method, dict(params or {}))


# --------------------------------------------------------------------------
# limits by connection state: before hello small and quick, after it big


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_before_hello_frames_are_small_and_the_hello_has_one_deadline() -> None:
    clock = FakeClock()
    server = ServerConnection(hello_timeout_s=5, frame_timeout_s=7, clock=clock)
    assert server.state is ConnState.AWAITING_HELLO
    assert server.frame_limit == PRE_AUTH_MAX_FRAME and server.max_frame == MAX_FRAME
    assert server.read_deadline() == 105.0  # from connect, even with nothing sent
    hello = line(request(1, "hello", {"client": "t"}))
    for byte in hello[:-1]:  # trickled: every read brings a byte, the deadline stays
        clock.now += 1
        server.receive_data(bytes([byte]))
        assert server.read_deadline() == 105.0
    server.receive_data(b"\n")
    assert isinstance(server.next_event(), Request)
    server.mark_authenticated()
    assert server.state is ConnState.OPEN and server.frame_limit == MAX_FRAME
    assert server.read_deadline() is None  # idle between frames is fine
    # After hello: each frame has its own deadline, from its first byte.
    clock.now = 200.0
    server.receive_data(b'{"jsonrpc": "2.0", ')
    assert server.read_deadline() == 207.0
    clock.now = 206.0
    server.receive_data(b'"id": 2, ')
    assert server.read_deadline() == 207.0  # not extended by the read
    clock.now = 206.5
    server.receive_data(b'"method": "status"}\n{"jsonrpc"')  # one ends, the next begins
    assert server.read_deadline() == 213.5
    assert server.next_event() == Request(2, "status", {})


def test_a_frame_over_the_pre_hello_limit_is_refused_and_closes() -> None:
    server = ServerConnection()
    server.receive_data(b"x" * (PRE_AUTH_MAX_FRAME + 1))
    event = server.next_event()
    assert isinstance(event, Rejected) and event.close and event.error.kind == "too-large"
    assert "before hello" in event.error.message and server.state is ConnState.DEAD
    assert server.partial_frame_size == 0
    with pytest.raises(LocalProtocolError):
        server.mark_authenticated()
