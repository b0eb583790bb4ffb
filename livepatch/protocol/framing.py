"""One JSON object per line: encoding, decoding and the frame splitter with its size limit."""

from __future__ import annotations

import enum
import json
import json.scanner
import math
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

from livepatch.errors import LivepatchError, TooLarge

from .codes import INTERNAL_ERROR, JSONRPC_VERSION, MAX_FRAME, code_for_kind
from .events import RequestId
from .schema import short

#: One encoder for every frame (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


#: The C encoder ``_ENCODER.encode`` builds on every call (with its Python
#: layers around it); ``None`` where the C accelerator is missing.
_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)


def _dumps(message: Mapping[str, Any]) -> str:
    if _C_ENCODER is None:  # pragma: no cover - CPython always has _json
        return _ENCODER.encode(message)
    # What JSONEncoder.iterencode does for these options, minus its layers:
    # a fresh dict of the containers being encoded (circular data is refused).
    encode = _C_ENCODER(
        {}, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    return "".join(encode(message, 0))


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


class BadFrame(Exception):
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
                raise ValueError(f"duplicate key {short(key)} in an object")
            seen.add(key)
    return result


#: One decoder for every frame (``json.loads`` with options builds one per call).
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    object_pairs_hook=_no_duplicate_keys,
)


#: The strict decoder's own parser (what its decode() calls), with its hooks.
_SCAN = json.scanner.make_scanner(cast(Any, _DECODER))  # typeshed wants a scanner


def loads_frame(frame: bytes) -> Any:
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFrame(f"frame is not valid UTF-8 (bad byte at offset {exc.start})") from None
    # The parser itself, without decode()'s Python layers; anything but a
    # whole value (leading space, trailing data, an error) takes the full
    # decode below, which words what is wrong.
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError, RecursionError):
        pass
    else:
        if end == len(text) or text[end:].isspace():
            return value
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise BadFrame("JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and the hooks above
        raise BadFrame(f"invalid JSON: {exc}") from None


def is_request_id(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# Framing


class Mark(enum.Enum):
    OVERFLOW = "overflow"
    EOF = "eof"


class Framer:
    """Splits a byte stream into ``\\n``-terminated frames.

    Frames are split eagerly in :meth:`feed` (so an oversize frame is noticed
    the moment the buffer passes the limit, and nothing after it is kept) but
    parsed lazily by the connection, so the connection's state at the time
    ``next_event`` is called (e.g. authenticated) applies to each frame.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._frames: deque[bytes | Mark] = deque()
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
            self._frames.append(Mark.EOF)
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
        self._frames.append(Mark.OVERFLOW)

    def pop(self) -> bytes | Mark | None:
        """The next frame or mark, or ``None`` if more data is needed."""
        if self._frames:
            item = self._frames.popleft()
            if item is Mark.EOF:
                self._frames.appendleft(item)  # closed stays closed
            return item
        return None


def error_parts(error: BaseException) -> tuple[int, str, dict[str, Any]]:
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


def error_message(
    id: RequestId | None, code: int, message: str, data: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "jsonrpc": JSONRPC_VERSION,
        "id": id,
        "error": {"code": code, "message": message, "data": dict(data)},
    }
