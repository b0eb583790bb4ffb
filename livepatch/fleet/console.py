"""The fleet's commands for the interactive front ends: the shell and ``%hotswap``.

``livepatch shell --fleet F`` and ``%hotswap connect --fleet F`` drive a
whole fleet rather than one engine; ``VERB ... --fleet F`` in the CLI, the
engine shell and ``%hotswap`` runs one command so. Their commands are the
fleet forms of the command layer's verbs
(:data:`~livepatch.commands.spec.FLEET_COMMANDS`, derived from the one
table), parsed by its parser, and :class:`FleetRunner` runs them
to :class:`~livepatch.commands.runner.CommandResult` objects (text, one-line
error, JSON-ready ``data``), as the engine's runner does:

- ``status``: every member side by side (state, converged, calls/s, the
  active version of each slot) and the push history;
- ``push FILE --slot S``, ``rollback S``: the two-phase push, member by member;
- ``symbols SHA [SHA2]``, ``diff A B``: once for the fleet, by sha;
- ``history``, ``help``, ``quit``.

:class:`FleetSession` is the fleet and its registry; it holds no connection
between commands (every registry operation opens its own), so a session
survives a registry or member restart with nothing to repair.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..commands.runner import CommandResult, LineRunner
from ..commands.spec import (
    COMMANDS,
    FLEET_COMMANDS,
    ParsedCommand,
    ShellUsageError,
    fleet_command_names,
    parse,
    strip_route,
)
from ..errors import LivepatchError
from .model import PushRecord, short, validate_fleet_name

__all__ = ["FLEET_COMMANDS", "FleetRunner", "FleetSession", "not_in_fleet", "run_fleet_command"]


@dataclass(frozen=True, slots=True)
class FleetSession:
    """A fleet and its registry (``None``: the local one)."""

    fleet: str
    registry: str | None = None

    def __post_init__(self) -> None:
        validate_fleet_name(self.fleet)
        if self.registry not in (None, "", "local"):
            from .zkurl import parse_zk_url

            parse_zk_url(str(self.registry))

    @property
    def label(self) -> str:
        """``f (local)``, ``f (zookeeper://...)``."""
        return f"{self.fleet} ({self.registry or 'local'})"

    def view(self, history: int = 10) -> dict[str, Any]:
        """Every member side by side, and the last ``history`` pushes."""
        from .cli import fleet_view

        return fleet_view(self.fleet, self.registry, history)

    def history(self, limit: int = 10) -> list[PushRecord]:
        """The last ``limit`` pushes, oldest first."""
        from .cli import fleet_history

        return fleet_history(self.fleet, self.registry, limit)

    def push(
        self,
        path: Path,
        slot: str,
        *,
        expect: str | None = None,
        deadline_s: float = 60.0,
        source: str | None = None,
    ) -> PushRecord:
        """Push the rule file ``path`` (or ``source`` under that file name)."""
        from .cli import push_source, read_rule

        text = read_rule(path) if source is None else source
        return push_source(
            self.fleet, self.registry, slot, text, path.name, expect=expect, deadline_s=deadline_s
        )

    def rollback(self, slot: str, deadline_s: float = 60.0) -> PushRecord:
        """Push the slot's previous desired version."""
        from .cli import rollback_fleet

        return rollback_fleet(self.fleet, self.registry, slot, deadline_s)

    def symbols(self, shas: list[str]) -> tuple[Any, str]:
        """A ``SymbolTable`` (one sha) or ``SymbolDiff`` (two), and where it was read."""
        from .cli import fleet_symbols

        return fleet_symbols(self.fleet, self.registry, shas)


def _shas_of(view: Mapping[str, Any]) -> list[str]:
    """Short shas worth completing: the desired and every active version."""
    found = {d["sha256"] for d in view.get("desired", {}).values()}
    for m in view.get("members", []):
        found |= {a.get("sha256") for a in (m.get("active") or {}).values() if a.get("sha256")}
    return sorted(short(s) for s in found if s)


class FleetRunner(LineRunner):
    """Runs :data:`FLEET_COMMANDS` against a :class:`FleetSession`; never raises."""

    def __init__(
        self,
        session: FleetSession,
        *,
        color: bool = False,
        prefix: str = "",
        base_dir: Path | None = None,
    ) -> None:
        self.session = session
        self.color = color
        #: How this front end writes a command, for hints (``%hotswap ``).
        self.prefix = prefix
        #: Relative FILE arguments are read from here when not found as given.
        self.base_dir = base_dir
        #: The last ``status`` view (the shell's toolbar and completion read it).
        self.last_view: dict[str, Any] | None = None
        self._handlers: dict[str, Callable[[ParsedCommand], CommandResult]] = {
            "status": self._status,
            "push": self._push,
            "rollback": self._rollback,
            "symbols": self._symbols,
            "diff": self._diff,
            "history": self._history,
            "help": self._help,
            "quit": self._quit,
        }

    # -- entry points -----------------------------------------------------------

    def execute(self, words: list[str] | tuple[str, ...]) -> CommandResult:
        """Run one command given as words."""
        text = " ".join(words)
        if words and words[0] not in FLEET_COMMANDS and words[0] in COMMANDS:
            # An engine's verb (load, swap...): say how it is done for a fleet.
            error = not_in_fleet(words[0], self.session, self.prefix)
            return CommandResult(text, False, error=error, usage=True, kind="usage")
        try:
            parsed = parse(words, FLEET_COMMANDS)
        except ShellUsageError as exc:
            return CommandResult(text, False, error=str(exc), usage=True, kind="usage")
        if parsed.help:
            return CommandResult(parsed.text, True, parsed.spec.help_text(self.prefix))
        try:
            return self._handlers[parsed.spec.name](parsed)
        except ShellUsageError as exc:
            return CommandResult(parsed.text, False, error=str(exc), usage=True, kind="usage")
        except LivepatchError as exc:
            return CommandResult(parsed.text, False, error=exc.message, kind=exc.kind)
        except Exception as exc:  # a traceback shown to a user is a bug
            if os.environ.get("LIVEPATCH_DEBUG"):
                raise
            return CommandResult(
                parsed.text,
                False,
                error=f"internal error: {type(exc).__name__}: {exc} (this is a bug in "
                "livepatch; LIVEPATCH_DEBUG=1 shows the traceback)",
                kind="internal",
            )

    def completions(self) -> list[str]:
        """Short shas from the last ``status`` (for completion)."""
        return _shas_of(self.last_view) if self.last_view else []

    # -- commands ---------------------------------------------------------------

    def _status(self, parsed: ParsedCommand) -> CommandResult:
        from .view import render_view

        view = self.session.view()
        self.last_view = view
        return CommandResult(parsed.text, True, render_view(view), data=view)

    def _history(self, parsed: ParsedCommand) -> CommandResult:
        from .view import render_push_line

        limit = int(parsed.number("limit") or 0)
        records = self.session.history(limit)
        text = "\n".join(render_push_line(r) for r in records) or "no pushes yet"
        return CommandResult(parsed.text, True, text, data=[r.to_json() for r in records])

    def _path(self, name: str) -> Path:
        path = Path(name).expanduser()
        if not path.is_absolute() and self.base_dir is not None and not path.exists():
            bundled = self.base_dir / path
            if bundled.exists():
                return bundled
        return path

    def _pushed(self, parsed: ParsedCommand, record: PushRecord) -> CommandResult:
        from .view import render_push

        text = render_push(record)
        if record.ok:
            return CommandResult(parsed.text, True, text, data=record.to_json())
        return CommandResult(
            parsed.text,
            False,
            text,
            error=f"push aborted: {record.reason}; nobody swapped",
            data=record.to_json(),
            kind="aborted",
        )

    @staticmethod
    def _deadline(parsed: ParsedCommand) -> float:
        deadline = parsed.number("deadline")
        assert deadline is not None  # the option has a default
        return deadline

    def _push(self, parsed: ParsedCommand) -> CommandResult:
        slot = parsed.optional("slot")
        if not slot:
            raise ShellUsageError(f"push needs --slot SLOT: usage: {parsed.spec.usage()}")
        record = self.session.push(
            self._path(parsed.string("file")),
            slot,
            expect=parsed.optional("expect"),
            deadline_s=self._deadline(parsed),
        )
        return self._pushed(parsed, record)

    def _rollback(self, parsed: ParsedCommand) -> CommandResult:
        record = self.session.rollback(parsed.string("slot"), self._deadline(parsed))
        return self._pushed(parsed, record)

    def _side_by_side(self, parsed: ParsedCommand, shas: list[str]) -> CommandResult:
        from ..render import render_diff, render_table

        result, note = self.session.symbols(shas)
        if len(shas) == 2:
            text = render_diff(result, color=self.color)
        else:
            text = render_table(result, color=self.color)
        return CommandResult(parsed.text, True, f"{note}\n{text}", data=result.to_json())

    def _symbols(self, parsed: ParsedCommand) -> CommandResult:
        other = parsed.optional("other")
        return self._side_by_side(parsed, [parsed.string("version"), *([other] if other else [])])

    def _diff(self, parsed: ParsedCommand) -> CommandResult:
        return self._side_by_side(parsed, [parsed.string("a"), parsed.string("b")])

    def _help(self, parsed: ParsedCommand) -> CommandResult:
        name = parsed.optional("command")
        if name:
            spec = FLEET_COMMANDS.get(name)
            if spec is None:
                raise ShellUsageError(f"unknown command {name!r}: `help` lists the commands")
            return CommandResult(parsed.text, True, spec.help_text(self.prefix))
        names = fleet_command_names()
        width = max(len(n) for n in names)
        lines = [f"fleet {self.session.label}: commands"]
        lines += [f"  {n:<{width}}  {FLEET_COMMANDS[n].summary}" for n in names]
        lines.append(f"{self.prefix}help COMMAND shows one command's usage")
        return CommandResult(parsed.text, True, "\n".join(lines))

    def _quit(self, parsed: ParsedCommand) -> CommandResult:
        return CommandResult(parsed.text, True, action="quit")


def not_in_fleet(verb: str, session: FleetSession, prefix: str = "") -> str:
    """The error for an engine verb given while attached to a fleet."""
    return (
        f"{verb}: attached to fleet {session.label}, whose verbs are "
        f"{', '.join(n for n in fleet_command_names() if FLEET_COMMANDS[n].cli)}; "
        f"`{prefix}push FILE --slot S` reaches "
        "every member"
    )


def run_fleet_command(
    words: list[str],
    route: tuple[str, str | None],
    *,
    color: bool = False,
    prefix: str = "",
    base_dir: Path | None = None,
) -> CommandResult:
    """Run a command of the one table given with ``--fleet`` (``route``:
    :func:`~livepatch.commands.spec.fleet_route`'s fleet and registry) on
    that fleet, as the fleet shell runs it: the CLI's, the engine shell's and
    ``%hotswap``'s way to one fleet command. Never raises."""
    text = " ".join(words)
    try:
        session = FleetSession(*route)
        fleet_words = strip_route(parse(words))
    except ShellUsageError as exc:
        return CommandResult(text, False, error=str(exc), usage=True, kind="usage")
    except LivepatchError as exc:  # a bad fleet name or registry URL
        return CommandResult(text, False, error=exc.message, usage=True, kind="usage")
    runner = FleetRunner(session, color=color, prefix=prefix, base_dir=base_dir)
    return runner.execute(fleet_words)
