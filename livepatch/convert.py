"""JSON values in and out of rule calls made over the control protocol.

A ``call`` request carries JSON values. Parameters annotated with a host
dataclass (``msg: Message``) are built from JSON objects; dataclass results
(``Verdict``) go back as objects. Tuples, lists, sets and nested dataclasses
are handled; anything JSON cannot say comes back as its ``repr``, marked so a
client can tell (``{"$repr": "..."}``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import types
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CallPlan", "ConversionError", "arguments_from_json", "from_json", "to_json"]


class ConversionError(ValueError):
    """A JSON value does not fit the parameter it was given for."""


#: Dataclass -> its field names, for to_json (weak: a version's classes go with it).
_field_names: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


#: Exact types that are JSON as they are (subclasses take the long way).
_PLAIN: frozenset[type] = frozenset({str, int, bool, type(None)})


def to_json(value: Any) -> Any:
    """A JSON-able form of ``value`` (dataclasses as objects, tuples as lists)."""
    kind = type(value)
    # Exact types first: a rule's result is converted on every socket call.
    if kind in _PLAIN:
        return value
    if kind is list or kind is tuple:
        return [v if type(v) in _PLAIN else to_json(v) for v in value]
    if kind is dict:
        return {
            k if type(k) is str else str(k): v if type(v) in _PLAIN else to_json(v)
            for k, v in value.items()
        }
    if kind is float:
        return value if math.isfinite(value) else {"$repr": repr(value)}
    names = _field_names.get(kind)
    if names is not None:  # a dataclass seen before: its fields, without asking again
        fields = {}
        for name in names:
            field = getattr(value, name)
            kind = type(field)
            if kind in _PLAIN or (kind is float and math.isfinite(field)):
                fields[name] = field
            else:
                fields[name] = to_json(field)
        return fields
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$repr": repr(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in dataclasses.fields(value))
        with contextlib.suppress(TypeError):  # a class that cannot be weakly referenced
            _field_names[type(value)] = names
        return {name: to_json(getattr(value, name)) for name in names}
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


def _needs_no_conversion(annotation: Any) -> bool:
    """Whether :func:`from_json` returns any value for ``annotation`` as it is."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if typing.get_origin(annotation) is not None or annotation in (tuple, set, frozenset):
        return False
    return not (isinstance(annotation, type) and dataclasses.is_dataclass(annotation))


Converter = Callable[[Any, str], Any]


def _converter(annotation: Any, *, nested: bool = False) -> Converter | None:
    """:func:`from_json` for ``annotation``, prepared: ``None`` where it would
    return the value as it is. A dataclass gets a :class:`_DataclassPlan`
    (not ``nested``: its own dataclass fields take :func:`from_json`, so a
    class that refers to itself cannot recurse here)."""
    if _needs_no_conversion(annotation):
        return None
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, set, frozenset):
        items = typing.get_args(annotation)
        if all(a is Ellipsis or _needs_no_conversion(a) for a in items):
            builder: Callable[[list[Any]], Any] = origin
            return lambda value, _where: builder(value) if isinstance(value, list) else value
    if not nested and isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass_plan(annotation)
    return lambda value, where: from_json(value, annotation, where)


class _DataclassPlan:
    """``_dataclass_from_json`` for one dataclass, with its fields and their
    converters worked out once; the same checks, in the same order, with
    the same messages."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - unresolvable hints: pass fields through
            hints = {}
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        self.names = frozenset(fields)
        self.listed = ", ".join(fields)
        self.required = [
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        self.convert = {name: _converter(hints.get(name, Any), nested=True) for name in fields}

    def __call__(self, value: Any, where: str) -> Any:
        cls = self.cls
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConversionError(
                f"{where} must be a JSON object with the fields of {cls.__name__}"
            )
        if not self.names.issuperset(value):
            unknown = sorted(set(value) - self.names)
            raise ConversionError(
                f"{where}: {cls.__name__} has no field {unknown[0]!r} (fields: {self.listed})"
            )
        for name in self.required:
            if name not in value:
                raise ConversionError(f"{where}: {cls.__name__} needs field {name!r}")
        kwargs = {}
        for name, v in value.items():
            convert = self.convert[name]
            kwargs[name] = v if convert is None else convert(v, f"{where}.{name}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"{where}: cannot build {cls.__name__}: {exc}") from None


_dataclass_plans: weakref.WeakKeyDictionary[type, _DataclassPlan] = weakref.WeakKeyDictionary()


def _dataclass_plan(cls: type) -> _DataclassPlan:
    plan = _dataclass_plans.get(cls)
    if plan is None:
        plan = _DataclassPlan(cls)
        if not cls.__module__.startswith("livepatch.loaded."):
            # Kept for the host's classes only (the plan holds its class, and
            # unload must be able to free a loaded version's).
            _dataclass_plans[cls] = plan
    return plan


class CallPlan:
    """:func:`arguments_from_json` for one function, prepared once.

    The common call passes positional arguments only, as many as the
    function takes positionally: the plan then converts each with its
    parameter's prepared converter and skips binding (which would give back
    the same arguments). Any other call takes :func:`arguments_from_json`,
    so the outcome is the same.
    """

    __slots__ = ("_converters", "_least", "_most", "_names", "fn", "hints", "signature")

    def __init__(
        self, fn: Callable[..., Any], hints: Mapping[str, Any], signature: inspect.Signature | None
    ) -> None:
        self.fn = fn
        self.hints = hints
        self.signature = signature
        self._least = self._most = -1  # no fast path
        self._names: list[str] = []
        self._converters: list[Converter | None] = []
        if signature is None:
            return
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        least = 0
        for param in signature.parameters.values():
            if param.kind in positional:
                if param.default is inspect.Parameter.empty:
                    least += 1
                self._names.append(param.name)
                self._converters.append(_converter(hints.get(param.name, inspect.Parameter.empty)))
            elif (
                param.kind is inspect.Parameter.KEYWORD_ONLY
                and param.default is inspect.Parameter.empty
            ):
                return  # bind must refuse a call without it
            # *args and **kwargs take nothing in a call the fast path serves.
        self._least, self._most = least, len(self._names)

    def arguments(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """What :func:`arguments_from_json` returns for these arguments."""
        if kwargs or not self._least <= len(args) <= self._most:
            return arguments_from_json(self.fn, args, kwargs, self.hints, self.signature)
        return [
            value if convert is None else convert(value, name)
            for value, convert, name in zip(args, self._converters, self._names, strict=False)
        ], {}
