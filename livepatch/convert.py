"""JSON values in and out of rule calls made over the control protocol.

A ``call`` request carries JSON values. Parameters annotated with a host
dataclass (``msg: Message``) are built from JSON objects; dataclass results
(``Verdict``) go back as objects. Tuples, lists, sets and nested dataclasses
are handled; anything JSON cannot say comes back as its ``repr``, marked so a
client can tell (``{"$repr": "..."}``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ConversionError", "arguments_from_json", "from_json", "to_json"]


class ConversionError(ValueError):
    """A JSON value does not fit the parameter it was given for."""


def to_json(value: Any) -> Any:
    """A JSON-able form of ``value`` (dataclasses as objects, tuples as lists)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$repr": repr(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [to_json(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    return {"$repr": repr(value)}


def from_json(value: Any, annotation: Any, where: str = "value") -> Any:
    """Build a Python value for ``annotation`` from a JSON value.

    Only what JSON cannot express directly is converted (dataclasses from
    objects, tuples and sets from arrays); other values pass through as is.
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            is_dataclass = isinstance(option, type) and dataclasses.is_dataclass(option)
            if is_dataclass and isinstance(value, dict):
                return from_json(value, option, where)
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass_from_json(value, annotation, where)
    if origin in (tuple, list, set, frozenset) and isinstance(value, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [from_json(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            items = [
                from_json(v, args[i] if i < len(args) else Any, f"{where}[{i}]")
                for i, v in enumerate(value)
            ]
        else:
            item = args[0] if args else Any
            items = [from_json(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        builder: Callable[[list[Any]], Any] = origin
        return builder(items)
    if annotation in (tuple, set, frozenset) and isinstance(value, list):
        return annotation(value)
    return value


_host_hints: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _dataclass_from_json(value: Any, cls: type, where: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConversionError(f"{where} must be a JSON object with the fields of {cls.__name__}")
    hints = _host_hints.get(cls)
    if hints is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - unresolvable hints: pass fields through
            hints = {}
        if not cls.__module__.startswith("livepatch.loaded."):
            # The host's types live as long as the host: resolve them once
            # (string annotations cost a compile each). A loaded version's
            # own classes are not kept: unload must be able to free them.
            _host_hints[cls] = hints
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConversionError(
            f"{where}: {cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in value
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConversionError(f"{where}: {cls.__name__} needs field {missing[0]!r}")
    kwargs = {
        name: from_json(v, hints.get(name, Any), f"{where}.{name}") for name, v in value.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{where}: cannot build {cls.__name__}: {exc}") from None


def arguments_from_json(
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    hints: Mapping[str, Any],
    signature: inspect.Signature | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Convert JSON ``args``/``kwargs`` for ``fn`` using annotations ``hints``.

    ``signature`` is ``fn``'s, if the caller has it already. Raises
    :class:`ConversionError` naming the parameter when a value does not fit,
    or when the arguments do not bind to the signature at all.
    """
    try:
        if signature is None:
            signature = inspect.signature(fn)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConversionError(
            f"arguments do not fit {getattr(fn, '__name__', 'it')}: {exc}"
        ) from None
    params = signature.parameters
    for name, value in bound.arguments.items():
        kind = params[name].kind
        annotation = hints.get(name, inspect.Parameter.empty)
        if kind is inspect.Parameter.VAR_POSITIONAL:
            bound.arguments[name] = tuple(from_json(v, annotation, name) for v in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            bound.arguments[name] = {k: from_json(v, annotation, k) for k, v in value.items()}
        else:
            bound.arguments[name] = from_json(value, annotation, name)
    return list(bound.args), dict(bound.kwargs)
