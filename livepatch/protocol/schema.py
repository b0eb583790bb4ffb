"""The method table (params, types, limits) and the validation of params against it."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from livepatch.errors import LivepatchError, TooLarge
from livepatch.ids import is_slot_name, parse_version_id

from .codes import InvalidParams, InvalidParamType, UnknownMethod

# ---------------------------------------------------------------------------
# Method table (data, not code)

JsonType: TypeAlias = Literal["string", "integer", "number", "boolean", "array", "object", "null"]


class Param(NamedTuple):
    """One named parameter: the JSON types it accepts and whether it is required.

    ``minimum`` and ``maximum`` bound a number or integer (inclusive). ``text``
    says what a string must be: ``"version"`` (``SLOT@N``: ASCII digits, no
    leading zero), ``"slot"`` (an ASCII identifier of at most 64
    characters), ``"name"`` (a file name or path: no NUL, at most
    :data:`MAX_NAME` characters) or ``"client"`` (at most :data:`MAX_NAME`).
    Checked here, before the engine or its journal ever sees the request.
    """

    types: tuple[JsonType, ...]
    required: bool = False
    minimum: float | None = None
    text: Literal["version", "slot", "name", "client"] | None = None
    maximum: float | None = None


_STR: Final = ("string",)
#: Longest file name, path or client name a request may carry.
MAX_NAME: Final = 4096
_VERSION: Final = Param(_STR, True, text="version")
#: Method name -> param name -> :class:`Param`. Params not listed are refused.
METHODS: Final[Mapping[str, Mapping[str, Param]]] = MappingProxyType(
    {
        name: MappingProxyType(schema)
        for name, schema in {
            "hello": {"token": Param(_STR), "client": Param(_STR, text="client")},
            "status": {},
            # Exactly one of source (the text), path (a file on the engine's
            # machine: a source, or a ready .so for a native slot) and object
            # (a ready .so's bytes, base64: see decode_object).
            "load": {
                "slot": Param(_STR, True, text="slot"),
                "source": Param(_STR),
                "path": Param(_STR, text="name"),
                "object": Param(_STR),
                "filename": Param(_STR, text="name"),
            },
            "check": {"version": _VERSION},
            "swap": {"version": _VERSION, "expect": Param(("string", "null"), text="version")},
            "rollback": {"slot": Param(_STR, True, text="slot")},
            "purge": {"version": _VERSION},
            "unload": {"version": _VERSION, "wait_s": Param(("number",), minimum=0)},
            "symbols": {"version": _VERSION},
            "source": {"version": _VERSION},
            "diff": {"a": _VERSION, "b": _VERSION},
            "call": {
                "slot": Param(_STR, text="slot"),
                "version": Param(_STR, text="version"),
                "symbol": Param(_STR, True),
                "args": Param(("array",)),
                "kwargs": Param(("object",)),
                # The call's deadline; the engine's default (a few seconds) if omitted.
                "timeout_s": Param(("number",), minimum=0.001, maximum=3600),
            },
            "subscribe": {},
            "journal": {"limit": Param(("integer",), minimum=1)},
            # A shadow run: start VERSION, or stop / report the run of a slot.
            "shadow": {
                "action": Param(_STR),
                "version": Param(_STR, text="version"),
                "slot": Param(_STR, text="slot"),
                "sample": Param(("number",), minimum=0.0001, maximum=1),
                "for_s": Param(("number",), minimum=0.001, maximum=86400),
                "queue": Param(("integer",), minimum=1, maximum=1_000_000),
                "timeout_s": Param(("number",), minimum=0.001, maximum=3600),
            },
        }.items()
    }
)
#: Method name -> groups of params of which exactly one must be given.
EXACTLY_ONE_OF: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = MappingProxyType(
    {"call": (("slot", "version"),), "load": (("source", "path", "object"),)}
)
#: Notifications the server may send (params are an object; ``event`` carries
#: one state change after ``subscribe``).
NOTIFICATIONS: Final = frozenset({"event"})


# ---------------------------------------------------------------------------
# Helpers


_JSON_PY_TYPES: Final[Mapping[JsonType, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: names and values the peer
    sent are quoted in error messages, which must stay one short frame."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type_of(value: object) -> str:
    """The JSON type name of a value, or its Python type name if not JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _has_type(value: object, types: tuple[JsonType, ...]) -> bool:
    # bool is an int in Python but never a number in JSON.
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, _JSON_PY_TYPES[t]) for t in types)


def _first_non_json(value: object) -> tuple[str, str] | None:
    """``(path, what)`` of the first part of ``value`` that JSON cannot carry
    faithfully, or ``None``. Iterative so deep nesting cannot overflow."""
    stack: list[tuple[object, str]] = [(value, "")]
    seen: set[int] = set()
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return path, "text that is not valid Unicode (a lone surrogate, e.g. \\ud800)"
            continue
        if item is None or isinstance(item, int):  # int covers bool
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return path, f"{item!r} (NaN and Infinity are not JSON)"
            continue
        if isinstance(item, list | dict):
            if id(item) in seen:  # shared or circular: json.dumps reports cycles
                continue
            seen.add(id(item))
            if isinstance(item, list):
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
            else:
                for key, v in item.items():
                    if not isinstance(key, str):
                        return path, f"an object key {short(key)} that is not a string"
                    if not key.isascii() and not _encodable(key):
                        return path, "an object key that is not valid Unicode (a lone surrogate)"
                    stack.append((v, f"{path}[{short(key, 20)}]"))
            continue
        hint = " (use a list)" if isinstance(item, tuple) else ""
        return path, f"a {type(item).__name__}{hint}"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(method: str, name: str, kind: str, value: str) -> None:
    """Refuse a string param that is not what :class:`Param` ``text`` says."""
    problem: str | None = None
    if kind == "version":
        try:
            parse_version_id(value)
        except LivepatchError as exc:
            problem = exc.message
    elif kind == "slot":
        if not is_slot_name(value):
            problem = (
                f"{short(value, 40)} is not a slot name: use an ASCII identifier of at most "
                "64 characters, e.g. spam"
            )
    elif len(value) > MAX_NAME:
        problem = f"it is {len(value)} characters long, over the {MAX_NAME}-character limit"
    elif kind == "name" and "\0" in value:
        problem = "it contains a NUL character, which no file name can"
    if problem is not None:
        raise InvalidParams(f"param {name!r} of {method!r}: {problem}", method=method, param=name)


_WITH_ARTICLE: Final[Mapping[JsonType, str]] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def _describe_types(types: tuple[JsonType, ...]) -> str:
    return " or ".join(_WITH_ARTICLE[t] for t in types)


#: Exact Python types of each JSON type, for the fast path (a subclass, or a
#: bool for a number, takes the long way, which says what is wrong).
_EXACT: Final[Mapping[JsonType, frozenset[type]]] = {
    "string": frozenset({str}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "boolean": frozenset({bool}),
    "array": frozenset({list}),
    "object": frozenset({dict}),
    "null": frozenset({type(None)}),
}
_FAST: Final[dict[str, dict[str, tuple[frozenset[type], Param]]]] = {
    method: {
        name: (frozenset().union(*(_EXACT[t] for t in spec.types)), spec)
        for name, spec in schema.items()
    }
    for method, schema in METHODS.items()
}
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    method: tuple(name for name, spec in schema.items() if spec.required)
    for method, schema in METHODS.items()
}


def _text_ok(kind: str, value: str) -> bool:
    if kind == "version":
        try:
            parse_version_id(value)
        except LivepatchError:
            return False
        return True
    if kind == "slot":
        return is_slot_name(value)
    return len(value) <= MAX_NAME and not (kind == "name" and "\0" in value)


def _surely_valid(method: str, params: dict[str, Any]) -> bool:
    """Whether ``params`` (a dict parsed from a frame with no escape) pass
    every check of :func:`validate_params`; ``False`` also when unsure, and
    the full checks then say what is wrong. A rule call runs this on every
    frame, so it asks each question once, with exact types."""
    fast = _FAST.get(method) if type(method) is str else None
    if fast is None:
        return False
    for key, value in params.items():
        check = fast.get(key)
        if check is None or type(value) not in check[0]:
            return False
        spec = check[1]
        if spec.text is not None and type(value) is str and not _text_ok(spec.text, value):
            return False
        if type(value) is int or type(value) is float:
            if spec.minimum is not None and value < spec.minimum:
                return False
            if spec.maximum is not None and value > spec.maximum:
                return False
    for name in _REQUIRED[method]:
        if name not in params:
            return False
    for group in EXACTLY_ONE_OF.get(method, ()):
        if sum(name in params for name in group) != 1:
            return False
    return True


def validate_params(method: str, params: object, *, json_clean: bool = False) -> dict[str, Any]:
    """Check ``params`` against :data:`METHODS` and return them as a new dict.

    ``json_clean``: the params were just parsed from a frame that has no
    ``\\u`` escape, so every value in them is JSON already (the parser
    refuses NaN and Infinity, and only an escape can make a lone
    surrogate): the walk that looks for what JSON cannot carry is skipped.

    ``None`` means no params (``{}``). Raises :class:`UnknownMethod` for a
    method not in the table, :class:`InvalidParams` (``ValueError``) for an
    unknown, missing or out-of-range param, and :class:`InvalidParamType`
    (``TypeError``) for a wrong type or a value JSON cannot carry. Each
    message names the method and the param.
    """
    if json_clean and type(params) is dict and _surely_valid(method, params):
        return dict(params)
    schema = METHODS.get(method) if isinstance(method, str) else None
    if schema is None:
        known = ", ".join(sorted(METHODS))
        raise UnknownMethod(
            f"unknown method {short(method)} (methods: {known})", method=clip(str(method))
        )
    if params is None:
        params = {}
    if isinstance(params, list | tuple):
        raise InvalidParamType(
            f"params of {method!r} are positional (an array): "
            "positional params are not supported, use named params (an object)",
            method=method,
        )
    if not isinstance(params, Mapping):
        raise InvalidParamType(
            f"params of {method!r} must be an object of named params, got {json_type_of(params)}",
            method=method,
        )
    for key in params:
        if not isinstance(key, str):
            raise InvalidParamType(
                f"param names must be strings, got {short(key)} for {method!r}", method=method
            )
        if key not in schema:
            expected = ", ".join(schema) or "none"
            raise InvalidParams(
                f"unknown param {short(key)} for {method!r} (params: {expected})",
                method=method,
                param=clip(key),
            )
    for name, spec in schema.items():
        if name not in params:
            if spec.required:
                raise InvalidParams(
                    f"missing required param {name!r} for {method!r}", method=method, param=name
                )
            continue
        value = params[name]
        if not _has_type(value, spec.types):
            raise InvalidParamType(
                f"param {name!r} of {method!r} must be {_describe_types(spec.types)}, "
                f"got {json_type_of(value)}",
                method=method,
                param=name,
                expected=list(spec.types),
            )
        bad = None if json_clean else _first_non_json(value)
        if bad is not None:
            path, what = bad
            raise InvalidParamType(
                f"param {name!r} of {method!r} contains {what} at {name}{clip(path, 80)}, "
                "which is not JSON",
                method=method,
                param=name,
            )
        if spec.text is not None and isinstance(value, str):
            _check_text(method, name, spec.text, value)
        if spec.minimum is not None and isinstance(value, int | float) and value < spec.minimum:
            raise InvalidParams(
                f"param {name!r} of {method!r} must be >= {spec.minimum:g}, got {short(value)}",
                method=method,
                param=name,
            )
        if spec.maximum is not None and isinstance(value, int | float) and value > spec.maximum:
            raise InvalidParams(
                f"param {name!r} of {method!r} must be <= {spec.maximum:g}, got {short(value)}",
                method=method,
                param=name,
            )
    for group in EXACTLY_ONE_OF.get(method, ()):
        given = [name for name in group if name in params]
        if len(given) != 1:
            quoted = [repr(n) for n in group]
            names = (
                " or ".join(quoted)
                if len(quoted) < 3
                else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            )
            raise InvalidParams(
                f"{method!r} needs exactly one of {names}, got {len(given)}",
                method=method,
                param=group[0] if not given else given[1],
            )
    return dict(params)


def decode_object(text: str, limit: int, *, filename: str | None = None) -> bytes:
    """The bytes of ``load``'s ``object`` param: standard base64 (RFC 4648,
    padded, no line breaks). :class:`InvalidParams` if it is not base64,
    :class:`~livepatch.errors.TooLarge` if it decodes to more than ``limit``
    bytes (refused before decoding when the text alone says so)."""
    shown = filename or "the object"
    if len(text) > 4 * ((limit + 2) // 3):
        raise TooLarge(
            f"param 'object' of 'load': {shown} is about {len(text) * 3 // 4} bytes, over the "
            f"{limit}-byte limit for a shared object",
            method="load",
            param="object",
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidParams(
            f"param 'object' of 'load' is not base64 ({clip(str(exc), 80)}): send the "
            "object's bytes base64-encoded (RFC 4648, padded, no line breaks)",
            method="load",
            param="object",
        ) from None
    if len(data) > limit:
        raise TooLarge(
            f"param 'object' of 'load': {shown} is {len(data)} bytes, over the {limit}-byte "
            "limit for a shared object",
            method="load",
            param="object",
        )
    return data
