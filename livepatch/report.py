"""The result of a resolve-check: :class:`Problem` and :class:`ResolveReport`.

Shared by the Python check (:mod:`livepatch.resolve`) and the native
backend, and carried over the control protocol as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from livepatch.jsonable import JsonFields

__all__ = ["PROBLEM_KINDS", "Problem", "ResolveReport"]

#: Every kind :func:`check_module` reports (warnings may add their own).
PROBLEM_KINDS: Final = (
    "unresolved",
    "missing-attribute",
    "missing-member",
    "not-callable",
    "signature-mismatch",
    "type-mismatch",
    "conditional",  # a warning: bound only in a branch that did not run here
)


@dataclass(frozen=True, slots=True)
class Problem(JsonFields):
    """One finding of the check.

    ``symbol`` is the name at fault (``lenn``, ``re.compil``, ``classify``);
    ``message`` is one line saying what is wrong and where.
    """

    kind: str
    symbol: str
    line: int | None
    message: str
    severity: str = "error"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        """Rebuild a problem from :meth:`to_json` output."""
        line = data.get("line")
        return cls(
            kind=str(data["kind"]),
            symbol=str(data["symbol"]),
            line=int(line) if line is not None else None,
            message=str(data["message"]),
            severity=str(data.get("severity", "error")),
        )


@dataclass(frozen=True, slots=True)
class ResolveReport:
    """The outcome of checking one version: ``ok`` when no problem is an error."""

    version: str
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when no problem has severity ``"error"``."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The problems that make the version fail its check."""
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """The problems worth reading that do not fail the check."""
        return tuple(p for p in self.problems if p.severity == "warning")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; includes ``ok`` for clients that only want that."""
        return {
            "version": self.version,
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResolveReport:
        """Rebuild a report from :meth:`to_json` output (``ok`` is recomputed)."""
        return cls(
            version=str(data["version"]),
            problems=tuple(Problem.from_json(p) for p in data.get("problems", ())),
        )
