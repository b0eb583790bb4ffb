"""The interface of a native slot: C signatures declared with ctypes types.

A host declares what every object of a native slot must export::

    NativeInterface({"classify": (c_int, [("text", c_char_p)])})

and gets, per entry point, its C declaration (for status and symbol
tables), its Python view (an :class:`inspect.Signature`) and a ctypes
function pointer type that keeps the GIL during the call (see
:mod:`livepatch.native` for why).
"""

from __future__ import annotations

import ctypes
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["NativeFunction", "NativeInterface", "make_pointer"]


# C spelling of the ctypes types a host may declare. Aliases collapse on a
# given platform (c_longlong is c_long on LP64), so the plainer name is last.
_C_NAMES: dict[Any, str] = {}
for _ctype, _name in (
    (ctypes.c_bool, "bool"),
    (ctypes.c_char, "char"),
    (ctypes.c_wchar, "wchar_t"),
    (ctypes.c_byte, "signed char"),
    (ctypes.c_ubyte, "unsigned char"),
    (ctypes.c_short, "short"),
    (ctypes.c_ushort, "unsigned short"),
    (ctypes.c_longlong, "long long"),
    (ctypes.c_ulonglong, "unsigned long long"),
    (ctypes.c_long, "long"),
    (ctypes.c_ulong, "unsigned long"),
    (ctypes.c_int, "int"),
    (ctypes.c_uint, "unsigned int"),
    (ctypes.c_float, "float"),
    (ctypes.c_double, "double"),
    (ctypes.c_longdouble, "long double"),
    (ctypes.c_char_p, "const char *"),
    (ctypes.c_wchar_p, "const wchar_t *"),
    (ctypes.c_void_p, "void *"),
):
    _C_NAMES[_ctype] = _name

_INTEGERS: Final = frozenset(
    {
        ctypes.c_byte,
        ctypes.c_ubyte,
        ctypes.c_short,
        ctypes.c_ushort,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_long,
        ctypes.c_ulong,
        ctypes.c_longlong,
        ctypes.c_ulonglong,
    }
)
_FLOATS: Final = frozenset({ctypes.c_float, ctypes.c_double, ctypes.c_longdouble})


class _Text(ctypes.c_char_p):
    """``const char *`` that also takes ``str``, encoded as UTF-8.

    Arguments arriving over the control protocol are JSON strings; with a
    plain ``c_char_p`` every caller would have to encode them first. ctypes
    keeps the encoded bytes alive for the duration of the call.
    """

    @classmethod
    def from_param(cls, value: Any) -> Any:
        """Convert one argument (ctypes' hook for ``argtypes`` entries)."""
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        return ctypes.c_char_p.from_param(value)


def _c_name(ctype: Any) -> str:
    if ctype is None:
        return "void"
    name = _C_NAMES.get(ctype)
    if name is not None:
        return name
    if isinstance(ctype, type) and issubclass(ctype, ctypes._Pointer):
        return _c_name(ctype._type_) + " *"
    return getattr(ctype, "__name__", repr(ctype))


def _python_type(ctype: Any) -> Any:
    """The Python type a caller passes (or gets back) for a ctypes type."""
    if ctype is None:
        return None
    if ctype is ctypes.c_bool:
        return bool
    if ctype in _INTEGERS:
        return int
    if ctype in _FLOATS:
        return float
    if ctype in (ctypes.c_char_p, ctypes.c_wchar_p, ctypes.c_char, ctypes.c_wchar):
        return str
    return Any


def _check_ctype(ctype: Any, where: str, *, allow_none: bool) -> None:
    if ctype is None and allow_none:
        return
    if isinstance(ctype, type) and issubclass(
        ctype, (ctypes._SimpleCData, ctypes._Pointer, ctypes.Structure, ctypes.Union)
    ):
        return
    raise TypeError(f"{where} must be a ctypes type (e.g. ctypes.c_int), not {ctype!r}")


@dataclass(frozen=True, slots=True)
class NativeFunction:
    """One entry point of a native interface: ``int classify(const char *text)``."""

    name: str
    restype: Any
    argtypes: tuple[Any, ...]
    params: tuple[str, ...]

    def declaration(self) -> str:
        """The C declaration, e.g. ``int classify(const char *text)``."""
        args = []
        for ctype, param in zip(self.argtypes, self.params, strict=True):
            c = _c_name(ctype)
            args.append(f"{c}{param}" if c.endswith("*") else f"{c} {param}")
        return f"{_c_name(self.restype)} {self.name}({', '.join(args) or 'void'})"

    def signature(self) -> inspect.Signature:
        """The Python view of the call: ``(text: str, /) -> int``."""
        empty = inspect.Parameter.empty
        params = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_ONLY,
                annotation=_python_type(ctype) if _python_type(ctype) is not Any else empty,
            )
            for ctype, name in zip(self.argtypes, self.params, strict=True)
        ]
        ret = _python_type(self.restype)
        if self.restype is ctypes.c_char_p:
            ret = bytes  # ctypes hands back the bytes, not text
        return inspect.Signature(params, return_annotation=empty if ret is Any else ret)

    def prototype(self) -> Any:
        """The ctypes function type: GIL kept during the call (see the module doc)."""
        converters = [_Text if t is ctypes.c_char_p else t for t in self.argtypes]
        return ctypes.PYFUNCTYPE(self.restype, *converters)


class NativeInterface:
    """The C signatures a native slot's objects must export.

    ``functions`` maps each entry point's name to ``(restype, argtypes)``:
    ``restype`` a ctypes type or ``None`` (``void``), ``argtypes`` a list of
    ctypes types or ``(name, ctype)`` pairs (the names show in signatures
    and symbol tables; unnamed ones become ``arg1``, ``arg2``...). A
    ``c_char_p`` parameter also accepts ``str`` (encoded as UTF-8).

    The object file carries no types, so the check can verify that each
    entry point exists and is a function, not that its C signature matches:
    the declaration is the host's promise, as a header file is.
    """

    def __init__(
        self,
        functions: Mapping[str, tuple[Any, Sequence[Any]]],
        *,
        name: str = "NativeInterface",
    ) -> None:
        if not functions:
            raise ValueError("a NativeInterface needs at least one function")
        self.name = name
        built: dict[str, NativeFunction] = {}
        for fname, spec in functions.items():
            if not (isinstance(fname, str) and fname.isidentifier()):
                raise ValueError(f"function name {fname!r} is not a C identifier")
            try:
                restype, argspec = spec
            except (TypeError, ValueError):
                raise TypeError(
                    f"{fname}: use (restype, [argtypes]), e.g. (ctypes.c_int, [ctypes.c_char_p])"
                ) from None
            _check_ctype(restype, f"{fname}: the return type", allow_none=True)
            argtypes: list[Any] = []
            params: list[str] = []
            for index, arg in enumerate(argspec, 1):
                pname, ctype = arg if isinstance(arg, tuple) else (f"arg{index}", arg)
                if not (isinstance(pname, str) and pname.isidentifier()):
                    raise ValueError(f"{fname}: parameter name {pname!r} is not an identifier")
                _check_ctype(ctype, f"{fname}: parameter {pname}", allow_none=False)
                argtypes.append(ctype)
                params.append(pname)
            built[fname] = NativeFunction(fname, restype, tuple(argtypes), tuple(params))
        self.functions: Mapping[str, NativeFunction] = built

    def describe(self) -> str:
        """Every declaration, ``; ``-separated (what ``status`` shows)."""
        return "; ".join(f.declaration() for f in self.functions.values())

    def __repr__(self) -> str:
        return f"NativeInterface({self.describe()})"


def make_pointer(spec: NativeFunction, address: int, interface: str) -> Any:
    """A ctypes function pointer for ``spec`` at ``address``, introspectable
    like a Python function (name, signature, annotations)."""
    fn = spec.prototype()(address)
    signature = spec.signature()
    annotations: dict[str, Any] = {
        p.name: p.annotation
        for p in signature.parameters.values()
        if p.annotation is not inspect.Parameter.empty
    }
    if signature.return_annotation is not inspect.Signature.empty:
        annotations["return"] = signature.return_annotation
    # ctypes function objects take attributes; inspect and typing read these.
    for attr, value in (
        ("__name__", spec.name),
        ("__qualname__", spec.name),
        ("__signature__", signature),
        ("__annotations__", annotations),
        ("__doc__", f"{spec.declaration()} (native code; {interface})"),
    ):
        setattr(fn, attr, value)
    return fn
