"""Sans-IO protocol: framing, bad input on the server, limits by connection state; no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from protocol_helpers import (
    authed,
    drain,
    line,
    one_event,
    rejected,
    request,
    serve,
)

from livepatch import errors
from livepatch import protocol as proto
from livepatch.protocol import (
    MAX_FRAME,
    NEED_DATA,
    PRE_AUTH_MAX_FRAME,
    ClientConnection,
    ConnectionClosed,
    ConnState,
    InvalidParams,
    InvalidParamType,
    LocalProtocolError,
    Rejected,
    Request,
    ServerConnection,
    validate_params,
)

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
