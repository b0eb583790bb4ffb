"""Sans-IO protocol: property tests over random streams, garbage and params; no sockets."""

from __future__ import annotations

import functools
import itertools
import json
import operator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    VALID_PARAMS,
    authed,
    drain,
    line,
    one_event,
    request,
    serve,
    started,
)

from livepatch import protocol as proto
from livepatch.protocol import (
    EXACTLY_ONE_OF,
    METHODS,
    ClientConnection,
    ErrorResponse,
    Notification,
    Rejected,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
    validate_params,
)

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
