"""Tests for the sans-IO control protocol: tables, hello, params, the client side; no sockets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import (
    SPEC_CODES,
    VALID_PARAMS,
    authed,
    drain,
    line,
    one_event,
    rejected,
    request,
    serve,
    started,
)

from livepatch import errors
from livepatch import protocol as proto
from livepatch.protocol import (
    EXACTLY_ONE_OF,
    MAX_FRAME,
    METHODS,
    NEED_DATA,
    ClientConnection,
    ErrorResponse,
    InvalidParams,
    InvalidParamType,
    LocalProtocolError,
    Notification,
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
