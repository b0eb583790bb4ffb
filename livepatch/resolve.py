"""The resolve-check: the linker's job for a loaded rule module.

A version's module body already ran, so everything it looked up at load time
is settled. What can still fail is code that runs *later*: functions,
methods, lambdas and what is nested in them. :func:`check_module` vouches
for those, the way a linker refuses an object with undefined references:

* every global name they read is bound at module level, in builtins, or by a
  ``global`` statement somewhere (a weak binding: it exists only at run time);
* every attribute they read straight off an imported module exists
  (``re.compil``, ``os.path.joinn``);
* every member of the slot's interface (a ``typing.Protocol`` owned by the
  host) is present, callable, has the same parameters, and any annotation it
  carries is the host's own type object: a module that defines its own
  ``Message`` would hand the host objects the host does not understand.

The result is a :class:`ResolveReport`: one :class:`Problem` per finding,
each with a kind, the symbol at fault, a line and a one-line message that
names the function it was found in.
"""

from __future__ import annotations

import inspect
import threading
import types
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import CodeType, FunctionType, ModuleType
from typing import Any, Final

from livepatch.bytecode import ModuleFacts, module_facts
from livepatch.namecheck import check_names
from livepatch.namecheck import first_line as _first_line
from livepatch.report import PROBLEM_KINDS, Problem, ResolveReport
from livepatch.symbols import (
    builtin_namespace,
    format_annotation,
    format_signature,
)

__all__ = [
    "PROBLEM_KINDS",
    "Problem",
    "ResolveReport",
    "boundary_types",
    "check_module",
    "interface_members",
]

# --- interfaces --------------------------------------------------------------

# What typing.Protocol (and class creation) put into a protocol class's
# namespace. None of it is a member the rule module has to provide.
_PROTOCOL_INTERNALS: Final = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__dict__",
        "__weakref__",
        "__annotations__",
        "__init__",
        "__init_subclass__",
        "__subclasshook__",
        "__class_getitem__",
        "__parameters__",
        "__orig_bases__",
        "__abstractmethods__",
        "__protocol_attrs__",
        "__non_callable_proto_members__",
        "__callable_proto_members_only__",
        "__slots__",
        "__match_args__",
        "__firstlineno__",
        "__static_attributes__",
        "__type_params__",
        "_is_protocol",
        "_is_runtime_protocol",
    }
)

# Annotations from these modules are scaffolding (containers, unions, ABCs),
# not the host's own types.
_SCAFFOLDING_MODULES: Final = frozenset(
    {
        "builtins",
        "typing",
        "typing_extensions",
        "collections.abc",
        "_collections_abc",
        "types",
        "abc",
    }
)

_EMPTY: Final = inspect.Parameter.empty


@dataclass(frozen=True, slots=True)
class _Interface:
    name: str
    methods: dict[str, inspect.Signature]
    data: dict[str, object]  # annotated non-method members -> resolved annotation
    boundary: frozenset[type]


_interfaces: weakref.WeakKeyDictionary[type, _Interface] = weakref.WeakKeyDictionary()
_interfaces_lock = threading.Lock()


def _is_protocol(cls: type) -> bool:
    return bool(cls.__dict__.get("_is_protocol", False))


def _method_function(attr: object) -> tuple[Callable[..., Any], bool] | None:
    """(function, whether its first parameter is bound) for a class attribute."""
    if isinstance(attr, staticmethod):
        return attr.__func__, False
    if isinstance(attr, classmethod):
        return attr.__func__, True
    if isinstance(attr, FunctionType):
        return attr, True
    return None


def _resolved_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Annotations with strings evaluated, one by one so one bad one does not
    hide the others (``typing.get_type_hints`` is all-or-nothing)."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001 - any failure: fall back to one at a time
        pass
    raw = getattr(func, "__annotations__", None) or {}
    globalns = getattr(func, "__globals__", {})
    out: dict[str, Any] = {}
    for key, ann in raw.items():
        try:
            out[key] = _evaluate(ann, globalns)
        except Exception:  # noqa: BLE001 - leave unresolvable annotations as written
            out[key] = ann
    return out


def _evaluate(annotation: object, globalns: Mapping[str, Any]) -> object:
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        # The annotation's own module already ran; evaluating its annotation
        # text runs nothing new from an untrusted party.
        annotation = eval(annotation, dict(globalns))
    if annotation is None:
        return type(None)
    return annotation


def _host_signature(func: Callable[..., Any], drop_first: bool) -> inspect.Signature:
    sig = inspect.signature(func)
    hints = _resolved_hints(func)
    params = list(sig.parameters.values())
    if (
        drop_first
        and params
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ):
        params = params[1:]
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
    return sig.replace(
        parameters=params, return_annotation=hints.get("return", sig.return_annotation)
    )


def _collect_types(annotation: object, out: set[type]) -> None:
    if annotation is _EMPTY or isinstance(annotation, str | typing.ForwardRef):
        return
    if isinstance(annotation, list | tuple):  # Callable[[A, B], C] has a list inside
        for item in annotation:
            _collect_types(item, out)
        return
    args = typing.get_args(annotation)
    if args:
        origin = typing.get_origin(annotation)
        if isinstance(origin, type):
            _collect_types(origin, out)
        for arg in args:
            _collect_types(arg, out)
        return
    if isinstance(annotation, type) and annotation.__module__ not in _SCAFFOLDING_MODULES:
        out.add(annotation)


def _interface(interface: type) -> _Interface:
    with _interfaces_lock:
        cached = _interfaces.get(interface)
    if cached is not None:
        return cached
    protocol = _is_protocol(interface)
    methods: dict[str, inspect.Signature] = {}
    data: dict[str, object] = {}
    # Bases first so a subclass's definition of a member wins.
    for base in reversed(interface.__mro__):
        if base is object or base is typing.Protocol or base is typing.Generic:
            continue
        if protocol and not _is_protocol(base):
            continue
        for name, attr in base.__dict__.items():
            if name in _PROTOCOL_INTERNALS or name.startswith("_abc_"):
                continue
            found = _method_function(attr)
            if found is not None:
                methods[name] = _host_signature(*found)
                data.pop(name, None)
            elif isinstance(attr, property):
                data[name] = (
                    _resolved_hints(attr.fget).get("return", _EMPTY) if attr.fget else _EMPTY
                )
                methods.pop(name, None)
        annotations = inspect.get_annotations(base)
        if annotations:
            module = inspect.getmodule(base)
            globalns = module.__dict__ if module is not None else {}
            for name, ann in annotations.items():
                if name in methods:
                    continue
                try:
                    data[name] = _evaluate(ann, globalns)
                except Exception:  # noqa: BLE001 - unresolvable host annotation: keep text
                    data[name] = ann
    boundary: set[type] = set()
    for sig in methods.values():
        for param in sig.parameters.values():
            _collect_types(param.annotation, boundary)
        _collect_types(sig.return_annotation, boundary)
    for ann in data.values():
        _collect_types(ann, boundary)
    info = _Interface(interface.__qualname__, methods, data, frozenset(boundary))
    with _interfaces_lock:
        _interfaces[interface] = info
    return info


def interface_members(interface: type) -> dict[str, inspect.Signature]:
    """The methods a slot's interface requires, name -> signature without
    ``self``, inherited protocol bases included. String annotations are
    resolved against the interface's module."""
    return dict(_interface(interface).methods)


def boundary_types(interface: type) -> frozenset[type]:
    """The host classes that cross the boundary: every class named in the
    interface's annotations (inside ``list[Message]``, ``Message | None`` ...),
    builtins and typing scaffolding excluded."""
    return _interface(interface).boundary


# --- the check ---------------------------------------------------------------


def _same_type(host: object, impl: object, globalns: Mapping[str, Any]) -> bool:
    """Whether an implementation annotation names exactly the host's type."""
    if host is _EMPTY or impl is _EMPTY or impl is typing.Any:
        return True
    if isinstance(impl, str | typing.ForwardRef):
        try:
            impl = _evaluate(impl, globalns)
        except Exception:  # noqa: BLE001 - reported separately as unresolved
            return True
    if impl is None:
        impl = type(None)
    if host is None:
        host = type(None)
    if host is impl:
        return True
    if isinstance(host, str | typing.ForwardRef):
        # The host's own annotation did not resolve: compare as written.
        text = host if isinstance(host, str) else host.__forward_arg__
        return text == format_annotation(impl)
    host_args, impl_args = typing.get_args(host), typing.get_args(impl)
    if not host_args or not impl_args:
        return False
    host_origin, impl_origin = typing.get_origin(host), typing.get_origin(impl)
    unions = (typing.Union, types.UnionType)
    if host_origin in unions and impl_origin in unions:
        # ``X | None`` and ``Optional[X]`` are the same union, in any order.
        return len(host_args) == len(impl_args) and all(
            any(_same_type(h, i, globalns) for h in host_args) for i in impl_args
        )
    if host_origin is not impl_origin or len(host_args) != len(impl_args):
        return False
    return all(_same_type(h, i, globalns) for h, i in zip(host_args, impl_args, strict=True))


def _describe_type(annotation: object) -> str:
    shown = format_annotation(annotation)
    module = getattr(annotation, "__module__", None)
    if isinstance(annotation, type) and module not in (None, "builtins"):
        return f"{shown} (from {module})"
    return shown


def _unwrapped(value: object) -> FunctionType | None:
    current = value
    for _ in range(16):
        if isinstance(current, FunctionType) and "__wrapped__" not in current.__dict__:
            return current
        try:
            current = current.__dict__["__wrapped__"]
        except (AttributeError, KeyError, TypeError):
            return current if isinstance(current, FunctionType) else None
    return None


def _signature_problem(expected: inspect.Signature, actual: inspect.Signature) -> str | None:
    """Why ``actual`` cannot stand in for ``expected``, or None if it can."""
    want = list(expected.parameters.values())
    got = list(actual.parameters.values())
    if len(want) != len(got):
        return f"it takes {len(got)} parameter(s), the interface passes {len(want)}"
    for position, (w, g) in enumerate(zip(want, got, strict=True), start=1):
        if w.name != g.name:
            return f"parameter {position} is named {g.name!r}, the interface calls it {w.name!r}"
        if w.kind != g.kind:
            return (
                f"parameter {g.name!r} is {g.kind.description}, "
                f"the interface declares it {w.kind.description}"
            )
        if w.default is not _EMPTY and g.default is _EMPTY:
            return f"parameter {g.name!r} needs a default: the interface lets callers omit it"
    return None


def _check_member(
    iface: _Interface,
    name: str,
    expected: inspect.Signature,
    value: object,
    facts: ModuleFacts,
    out: list[Problem],
) -> None:
    func = _unwrapped(value)
    line = func.__code__.co_firstlineno if func is not None else _first_line(facts, name)
    try:
        actual = inspect.signature(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # a callable without introspectable parameters: nothing to compare
    except Exception as exc:  # noqa: BLE001 - the rule's own __signature__ raised
        out.append(
            Problem(
                "signature-mismatch",
                name,
                line,
                f"{name}'s signature cannot be read ({type(exc).__name__}: {exc}), so it "
                f"cannot be compared with {iface.name}.{name}{format_signature(expected)}",
            )
        )
        return
    reason = _signature_problem(expected, actual)
    if reason is not None:
        out.append(
            Problem(
                "signature-mismatch",
                name,
                line,
                f"{name}{format_signature(actual)} does not match "
                f"{iface.name}.{name}{format_signature(expected)}: {reason}",
            )
        )
        return
    if func is None:
        return
    globalns = func.__globals__
    raw = func.__annotations__
    hints = _resolved_hints(func)
    pairs: list[tuple[str, object, object]] = [
        (p.name, expected.parameters[p.name].annotation, hints.get(p.name, _EMPTY))
        for p in actual.parameters.values()
    ]
    pairs.append(("return", expected.return_annotation, hints.get("return", _EMPTY)))
    for pname, host, impl in pairs:
        what = "the return value" if pname == "return" else f"parameter {pname!r}"
        if isinstance(impl, str) and pname in raw:
            try:
                _evaluate(impl, globalns)
            except NameError as exc:
                missing = exc.name or impl
                out.append(
                    Problem(
                        "unresolved",
                        missing,
                        line,
                        f"annotation {impl!r} of {what} of {name}() names {missing!r}, "
                        "which is not defined at module level or in builtins",
                    )
                )
                continue
            except Exception:  # noqa: BLE001 - not a name problem; compare as written
                pass
        if _same_type(host, impl, globalns):
            continue
        out.append(
            Problem(
                "type-mismatch",
                name,
                line,
                f"{what} of {name}() is annotated {_describe_type(impl)}, "
                f"but {iface.name} expects the host's {_describe_type(host)}",
            )
        )


def _check_interface(
    interface: type, ns: Mapping[str, Any], facts: ModuleFacts, out: list[Problem]
) -> None:
    iface = _interface(interface)
    boundary_names = {t.__name__: t for t in iface.boundary}
    module_name = ns.get("__name__")
    for name, expected in iface.methods.items():
        if name not in ns:
            out.append(
                Problem(
                    "missing-member",
                    name,
                    None,
                    f"{iface.name} requires {name}{format_signature(expected)}, "
                    "which the module does not define",
                )
            )
            continue
        value = ns[name]
        if not callable(value):
            out.append(
                Problem(
                    "not-callable",
                    name,
                    _first_line(facts, name),
                    f"{iface.name}.{name} must be callable, "
                    f"but the module binds it to a {type(value).__name__}",
                )
            )
            continue
        _check_member(iface, name, expected, value, facts, out)
    for name in iface.data:
        if name not in ns:
            out.append(
                Problem(
                    "missing-member",
                    name,
                    None,
                    f"{iface.name} requires attribute {name!r}, which the module does not define",
                )
            )
    # A class of the module's own that takes a boundary type's name: even if
    # no annotation mentions it, objects of it would reach the host as
    # strangers (``isinstance(x, Message)`` fails on the host's side).
    reported: set[int] = set()
    for key, value in ns.items():
        if not isinstance(value, type) or value in iface.boundary or id(value) in reported:
            continue
        host = boundary_names.get(key)
        if host is None and value.__dict__.get("__module__") == module_name:
            host = boundary_names.get(value.__name__)
        if host is None:
            continue
        reported.add(id(value))
        bodies = facts.class_bodies.get(value.__qualname__)
        line = bodies[0].co_firstlineno if bodies else _first_line(facts, key)
        out.append(
            Problem(
                "type-mismatch",
                key,
                line,
                f"{key!r} is the module's own {_describe_type(value)}, shadowing the host's "
                f"boundary type {_describe_type(host)} used by {iface.name}",
            )
        )


def check_module(
    version: str, module: ModuleType, code: CodeType, interface: type | None
) -> ResolveReport:
    """Resolve-check a loaded version against the module globals, builtins
    and, when given, the slot's ``interface`` (a ``typing.Protocol``).

    ``code`` is the module's compiled top-level code object and ``module``
    the module after its body ran.
    """
    facts = module_facts(code)
    ns = module.__dict__
    problems: list[Problem] = []
    check_names(facts, ns, builtin_namespace(ns), problems)
    if interface is not None:
        _check_interface(interface, ns, facts, problems)
    # Problems without a line (missing members) first, then in file order;
    # the sort is stable, so findings on one line keep their walk order.
    problems.sort(key=lambda p: (p.line is not None, p.line or 0))
    return ResolveReport(version, tuple(problems))
