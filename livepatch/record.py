"""Immutable records without :mod:`dataclasses`, for what a one-shot client imports.

Importing :mod:`dataclasses` pulls in :mod:`inspect` (and ``ast``, ``dis``,
``tokenize``), and every ``@dataclass`` compiles its methods when the class
is defined: together a good share of a ``livepatch status`` run. The
modules a client imports (the command table, the protocol's events, the
runner's results) define their records on :class:`Record` instead: fields
in ``__slots__``, an explicit ``__init__`` that sets them with
:data:`set_field`, and from here what a frozen dataclass gives: a repr,
equality and hashing over the fields, and no assignment afterwards.
"""

from __future__ import annotations

__all__ = ["Record", "set_field"]

#: Sets a field inside ``__init__`` (plain assignment is refused).
set_field = object.__setattr__


class Record:
    """Fields are the subclass's ``__slots__``, in order."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")
