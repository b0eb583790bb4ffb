"""Running commands against an engine: text in, :class:`CommandResult` out.

This knows nothing about terminals or prompt-toolkit, so the shell's prompt
loop, its scripts (``-c`` and stdin), the one-shot CLI verbs and the tests all
share it. Hints name the next command in the front end's own syntax
(``prefix``: ``livepatch `` for the CLI, nothing in the shell). Each result
carries its structured ``data`` (what ``--json`` prints). Every
failure becomes a result with one clear line in ``error``: an engine refusal,
a usage mistake, a lost connection or (a bug) anything else; nothing here
lets an exception reach the user.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..client import (
    Client,
    ConnectionLost,
    file_load_params,
    json_arguments,
    split_call_target,
)
from ..errors import LivepatchError
from ..record import Record, set_field
from .link import EngineLink
from .spec import (
    COMMANDS,
    ParsedCommand,
    ShellUsageError,
    command_names,
    fleet_route,
    localize,
    lookup,
    parse,
    split_commands,
)

if TYPE_CHECKING:
    from ..shell.monitor import EngineMonitor

__all__ = [
    "Action",
    "CommandResult",
    "CommandRunner",
    "Handler",
    "LineRunner",
    "register_handler",
    "render_watch",
]

#: What the caller must do after a result: leave, or show the live view.
Action = Literal["quit", "watch", "watch-file"]

#: The widest usage column of ``help``; longer usages get a line of their own.
HELP_USAGE_COLUMN = 36

#: The longest window ``watch --for`` measures (a day).
MAX_WATCH_S = 86_400

_RED = "\x1b[31m"
_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


class CommandResult(Record):
    """What one command did.

    ``text`` is its output (ANSI-coloured only when the runner has colour on);
    ``error`` is the one line saying why it failed (``None`` when ``ok``).
    ``usage`` marks a command that could not even be run (unknown command,
    bad arguments, bad JSON), which scripts report with exit status 2.
    ``data`` is the result as JSON-ready data (``--json``: the engine's reply,
    mostly); ``kind`` the error's kind (``conflict``, ``unknown-version``,
    ``usage``...).
    """

    __slots__ = ("action", "command", "data", "error", "kind", "ok", "text", "usage")
    command: str
    ok: bool
    text: str
    error: str | None
    usage: bool
    action: Action | None
    data: Any
    kind: str | None

    def __init__(
        self,
        command: str,
        ok: bool,
        text: str = "",
        error: str | None = None,
        usage: bool = False,
        action: Action | None = None,
        data: Any = None,
        kind: str | None = None,
    ) -> None:
        set_field(self, "command", command)
        set_field(self, "ok", ok)
        set_field(self, "text", text)
        set_field(self, "error", error)
        set_field(self, "usage", usage)
        set_field(self, "action", action)
        set_field(self, "data", data)
        set_field(self, "kind", kind)

    def with_text(self, text: str) -> CommandResult:
        """The same result with another ``text``."""
        return CommandResult(
            self.command,
            self.ok,
            text,
            self.error,
            self.usage,
            self.action,
            self.data,
            self.kind,
        )

    @property
    def exit_code(self) -> int:
        """0 for success, 2 for a usage error, 70 for a bug in livepatch (as
        ``livepatch --help`` says), 1 for any other failure."""
        if self.ok:
            return 0
        if self.kind == "internal":
            return 70
        return 2 if self.usage else 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_watch(
    status: dict[str, Any] | None,
    rates: dict[str, float],
    *,
    color: bool = False,
    title: str = "",
) -> str:
    """The ``watch`` table: each live version's calls, calls/s, errors and
    calls in flight, grouped by slot, active version marked ``*``."""
    if status is None:
        return title or "no status yet"
    lines = [f"{_BOLD}{title}{_RESET}" if color and title else title] if title else []
    # One id width for every slot, so long ids (spam_native@12) keep the columns.
    w = max([12, *(len(v["id"]) for slot in status["slots"] for v in slot["versions"])])
    header = f"  {'version':<{w}} {'state':<9} {'calls':>9} {'calls/s':>9} {'errors':>7}"
    header += f" {'in flight':>9}"
    lines.append(f"{_DIM}{header}{_RESET}" if color else header)
    for slot in status["slots"]:
        live = [v for v in slot["versions"] if v["state"] != "unloaded"]
        for v in live:
            mark = "*" if v["id"] == slot["active"] else " "
            row = (
                f"{mark} {v['id']:<{w}} {v['state']:<9} {v['calls']:>9} "
                f"{rates.get(v['id'], 0.0):>9.1f} {v['errors']:>7} {v['in_flight']:>9}"
            )
            lines.append(f"{_BOLD}{row}{_RESET}" if color and mark == "*" else row)
        if not live:
            lines.append(f"  {slot['name']}: no versions")
    return "\n".join(lines)


#: A command's handler: the runner and the parsed command in, a result out.
Handler = Callable[["CommandRunner", ParsedCommand], "CommandResult"]

_EXTRA_HANDLERS: dict[str, Handler] = {}


def register_handler(name: str, handler: Handler) -> None:
    """The handler of a command added with :func:`livepatch.commands.spec.register`.

    Another module (``livepatch.fleet`` for ``push``) adds a verb with both
    calls at import; the CLI, the shell and ``help`` then offer it.
    """
    if name in _EXTRA_HANDLERS:
        raise ValueError(f"command {name!r} already has a handler")
    _EXTRA_HANDLERS[name] = handler


def _escape(text: str) -> str:
    """Control characters (terminal escapes) from a peer shown as ``\\x1b``."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LineRunner:
    """Lines of ``;``-separated commands, and scripts of lines, run one
    command at a time through :meth:`execute` (which a runner defines)."""

    def execute(self, words: list[str] | tuple[str, ...]) -> CommandResult:
        raise NotImplementedError

    def iter_line(self, line: str) -> Iterator[CommandResult]:
        """Run the ``;``-separated commands of ``line`` one at a time.

        Stops after the first failure or ``quit``. A generator, so the caller
        can act on each result (show ``watch``) before the next command runs.
        """
        try:
            commands = split_commands(line)
        except ShellUsageError as exc:
            yield CommandResult(line.strip(), False, error=str(exc), usage=True, kind="usage")
            return
        for words in commands:
            result = self.execute(words)
            yield result
            if not result.ok or result.action == "quit":
                return

    def run_line(self, line: str) -> list[CommandResult]:
        """Every result of :meth:`iter_line`, as a list."""
        return list(self.iter_line(line))

    def run_script(self, lines: Iterable[str]) -> Iterator[CommandResult]:
        """Run a script line by line; stops at the first failure or ``quit``."""
        for line in lines:
            for result in self.iter_line(line):
                yield result
                if not result.ok or result.action == "quit":
                    return


class CommandRunner(LineRunner):
    """Executes parsed commands through an :class:`EngineLink`."""

    def __init__(
        self,
        link: EngineLink,
        *,
        color: bool = False,
        base_dir: Path | None = None,
        monitor: EngineMonitor | None = None,
        interactive: bool = False,
        prefix: str = "",
    ) -> None:
        self.link = link
        self.color = color
        #: Relative FILE arguments not found in the working directory are read
        #: from here (the demo's bundled rules folder).
        self.base_dir = base_dir
        self.monitor = monitor
        #: Whether a terminal can show the live ``watch`` view.
        self.interactive = interactive
        #: How this front end writes a command, for hints: ``livepatch `` in
        #: the CLI, nothing in the shell.
        self.prefix = prefix
        #: The terminal's width, when known: a side-by-side view wider than
        #: this is shown stacked instead (set by the shell before each line).
        self.width: int | None = None
        self._handlers: dict[str, Callable[[ParsedCommand], CommandResult]] = {
            "status": self._status,
            "load": self._load,
            "check": self._check,
            "swap": self._swap,
            "rollback": self._rollback,
            "purge": self._purge,
            "unload": self._unload,
            "symbols": self._symbols,
            "diff": self._diff,
            "show": self._show,
            "call": self._call,
            "journal": self._journal,
            "log": self._log,
            "watch": self._watch,
            "help": self._help,
            "quit": self._quit,
        }
        for name, handler in _EXTRA_HANDLERS.items():
            self._handlers[name] = functools.partial(handler, self)
        # The commands table and the handlers must not drift apart (a
        # fleet-only verb runs on a fleet, never here: see execute).
        engine_verbs = {n for n in command_names(aliases=False) if not COMMANDS[n].fleet_only}
        assert set(self._handlers) == engine_verbs

    @property
    def client(self) -> Client:
        """The engine client (it changes connection, never identity, on reconnect)."""
        return self.link.client

    def hint(self, command: str) -> str:
        """``command`` as this front end's user types it."""
        return f"`{self.prefix}{command}`"

    # -- entry points -----------------------------------------------------------

    def execute(self, words: list[str] | tuple[str, ...]) -> CommandResult:
        """Run one command given as words; never raises."""
        text = " ".join(words)
        try:
            parsed = parse(words)
        except ShellUsageError as exc:
            return self._failure(text, str(exc), usage=True)
        text = parsed.text
        if parsed.help:
            return CommandResult(text, True, parsed.spec.help_text(self.prefix))
        try:
            route = fleet_route(parsed)
        except ShellUsageError as exc:
            return self._failure(text, str(exc), usage=True)
        if route is not None:
            # `VERB ... --fleet F`: the whole fleet, as its shell runs it.
            from ..fleet.console import run_fleet_command

            return run_fleet_command(
                list(parsed.words),
                route,
                color=self.color,
                prefix=self.prefix,
                base_dir=self.base_dir,
            )
        needs_engine = parsed.spec.name not in ("help", "quit")
        try:
            announce = self.link.ensure() if needs_engine else ""
            result = self.dispatch(parsed)
        except ShellUsageError as exc:
            return self._failure(text, str(exc), usage=True)
        except ConnectionLost as exc:
            self.link.mark_lost()
            if self.monitor is not None:
                self.monitor.request_refresh()
            return self._failure(text, self._lost_message(exc), kind=exc.kind)
        except LivepatchError as exc:
            # The engine's bad-params is what the user typed (`check spam@`):
            # a command that cannot be run as written, exit 2.
            return self._failure(
                text,
                localize(exc.message, self.prefix),
                kind=exc.kind,
                usage=exc.kind == "bad-params",
            )
        except Exception as exc:  # a traceback shown to a user is a bug
            if os.environ.get("LIVEPATCH_DEBUG"):
                raise
            return self._failure(
                text,
                f"internal error: {type(exc).__name__}: {exc} (this is a bug in livepatch; "
                "LIVEPATCH_DEBUG=1 shows the traceback)",
                kind="internal",
            )
        if announce:
            result = result.with_text(f"{announce}\n{result.text}" if result.text else announce)
        return result

    def dispatch(self, parsed: ParsedCommand) -> CommandResult:
        """Run one parsed command with its handler, letting errors through.

        :meth:`execute` wraps this with the shell's and the CLI's error
        policy; a front end with its own (``%hotswap``: one ``UsageError``
        line, its own reconnect messages) calls this directly and catches
        :class:`ShellUsageError` and :class:`LivepatchError` itself.
        """
        fleet_route(parsed)  # a fleet-only verb here: the usage error that says so
        return self._handlers[parsed.spec.name](parsed)

    def _lost_message(self, exc: ConnectionLost) -> str:
        from .link import EngineGone

        name = self.link.name
        if not self.prefix:  # the shell: it keeps trying
            if isinstance(exc, EngineGone):
                return exc.message
            return (
                f"connection lost: engine {name!r} stopped answering; "
                "the shell reconnects when it is back"
            )
        return (
            f"connection lost: engine {name!r} stopped answering; its output says why "
            f"({self.hint('log')} shows it for an engine the demo or `%hotswap start` started)"
        )

    def _failure(
        self, command: str, error: str, *, usage: bool = False, kind: str | None = None
    ) -> CommandResult:
        return CommandResult(
            command, False, "", error, usage=usage, kind="usage" if usage else kind
        )

    def _ok(
        self, parsed: ParsedCommand, text: str, action: Action | None = None, data: Any = None
    ) -> CommandResult:
        return CommandResult(parsed.text, True, text, action=action, data=data)

    # -- helpers ----------------------------------------------------------------

    def _only_slot(self, filename: str | None = None) -> str:
        # The only slot, or the only one of the file's kind (.c/.so: native).
        try:
            return self.client.default_slot(filename)
        except ValueError as exc:
            raise ShellUsageError(str(exc)) from None

    def _path(self, name: str) -> Path:
        # The working directory first (what a user typing a path means), then
        # the base folder (the demo's bundled rules).
        path = Path(name).expanduser()
        if not path.is_absolute() and self.base_dir is not None and not path.exists():
            bundled = self.base_dir / path
            if bundled.exists():
                return bundled
        return path

    # -- commands ---------------------------------------------------------------

    def _status(self, parsed: ParsedCommand) -> CommandResult:
        from ..render import render_status

        status = self.client.status()
        return self._ok(parsed, render_status(status), data=status)

    def _load(self, parsed: ParsedCommand) -> CommandResult:
        from ..filekind import check_slot_kind

        path = self._path(parsed.string("file"))
        try:
            params = file_load_params(path)
        except ValueError as exc:
            return self._failure(parsed.text, str(exc))
        slot = parsed.optional("slot")
        if slot is None:
            slot = self._only_slot(path.name)
        else:
            try:
                check_slot_kind(self.client.status()["slots"], slot, path.name)
            except ValueError as exc:
                raise ShellUsageError(str(exc)) from None
        params["slot"] = slot
        if parsed.flag("swap") and not parsed.flag("watch"):
            raise ShellUsageError("--swap goes with --watch: load FILE --watch --swap")
        if parsed.flag("watch"):
            # The front end runs the loop (filewatch.watch_file): it owns the
            # terminal, or the cell, and how a person stops it.
            watch = {"path": str(path), "slot": slot, "swap": parsed.flag("swap")}
            return self._ok(parsed, "", action="watch-file", data=watch)
        result = self.client.request("load", params)
        version = result["version"]
        if result.get("new", True):
            text = f"loaded {version} from {path.name}; next: {self.hint(f'check {version}')}"
        else:
            text = f"{path.name} is already loaded as {version} ({result['state']})"
        return self._ok(parsed, text, data=result)

    def _check(self, parsed: ParsedCommand) -> CommandResult:
        from ..render import render_report
        from ..resolve import ResolveReport

        version = parsed.string("version")
        # The reply names the version's state too: no second request to learn
        # whether it already serves (then there is nothing to do next).
        reply = self.client.request("check", {"version": version})
        report = ResolveReport.from_json(reply)
        text = render_report(report, color=self.color)
        if report.ok:
            active = reply.get("state") == "active"
            following = "" if active else f"\nnext: {self.hint(f'swap {version}')}"
            return self._ok(parsed, f"{text}{following}", data=report.to_json())
        count = len(report.errors)
        return CommandResult(
            parsed.text,
            False,
            text,
            f"{version} failed its check ({_plural(count, 'problem')}); it stays loaded "
            f"for inspection ({self.hint(f'symbols {version}')}, "
            f"{self.hint(f'show {version}')}) until you unload it",
            data=report.to_json(),
            kind="check-failed",
        )

    def _swapped(self, parsed: ParsedCommand, result: dict[str, Any]) -> CommandResult:
        if result["changed"]:
            text = f"{result['slot']}: {result['previous'] or 'nothing'} -> {result['active']}"
            if result.get("handed_over"):
                text += f" ({result['active']}'s __livepatch_handoff__ took over the state)"
        else:
            text = f"{result['slot']}: {result['active']} is already active"
        return self._ok(parsed, text, data=result)

    def _swap(self, parsed: ParsedCommand) -> CommandResult:
        result = self.client.swap(parsed.string("version"), expect=parsed.optional("expect"))
        return self._swapped(parsed, result)

    def _rollback(self, parsed: ParsedCommand) -> CommandResult:
        return self._swapped(parsed, self.client.rollback(parsed.string("slot")))

    def _purge(self, parsed: ParsedCommand) -> CommandResult:
        result = self.client.purge(parsed.string("version"))
        return self._ok(
            parsed,
            f"purged {result['version']}: nothing new can find it; calls in flight finish",
            data=result,
        )

    def _unload(self, parsed: ParsedCommand) -> CommandResult:
        version = parsed.string("version")
        result = self.client.unload(version, wait_s=parsed.number("wait"))
        if result["freed"]:
            return self._ok(
                parsed, f"unloaded {version}: freed (its code left memory)", data=result
            )
        holders = ", ".join(f"{k} x{n}" for k, n in result["holders"].items()) or "unknown"
        return self._ok(
            parsed,
            f"unloaded {version}: NOT freed yet ({result['in_flight']} in flight; "
            f"held by {holders})",
            data=result,
        )

    def _side_by_side(self, parsed: ParsedCommand, a: str, b: str) -> CommandResult:
        from ..render import render_diff_to_fit

        diff = self.client.diff(a, b)
        text = render_diff_to_fit(diff, color=self.color, width=self.width)
        return self._ok(parsed, text, data=diff.to_json())

    def _symbols(self, parsed: ParsedCommand) -> CommandResult:
        from ..render import render_table

        version, other = parsed.string("version"), parsed.optional("other")
        if other is not None:
            return self._side_by_side(parsed, version, other)
        table = self.client.symbols(version)
        return self._ok(parsed, render_table(table, color=self.color), data=table.to_json())

    def _diff(self, parsed: ParsedCommand) -> CommandResult:
        # One meaning everywhere (CLI, shell, %hotswap): every row, and a
        # summary that counts exactly the rows shown.
        return self._side_by_side(parsed, parsed.string("a"), parsed.string("b"))

    def _show(self, parsed: ParsedCommand) -> CommandResult:
        version = parsed.string("version")
        result = self.client.request("source", {"version": version})
        source: str = result["source"]
        lines = self._highlight(source).split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the source's final newline
        width = len(str(len(lines)))
        numbered = [
            (f"{_DIM}{n:>{width}}{_RESET}" if self.color else f"{n:>{width}}")
            + (f"  {line}" if line else "")
            for n, line in enumerate(lines, 1)
        ]
        header = (
            f"{result['version']}  ({result.get('filename') or '?'}, {_plural(len(lines), 'line')})"
        )
        if self.color:
            header = f"{_BOLD}{header}{_RESET}"
        return self._ok(parsed, "\n".join([header, *numbered]), data=result)

    def _highlight(self, source: str) -> str:
        if not self.color:
            return source
        from pygments import highlight  # type: ignore[import-untyped]
        from pygments.formatters import TerminalFormatter  # type: ignore[import-untyped]
        from pygments.lexers import PythonLexer  # type: ignore[import-untyped]

        # TerminalFormatter closes its colours at every line end, so the
        # result can be split into lines and numbered safely.
        text: str = highlight(source, PythonLexer(stripnl=False), TerminalFormatter())
        return text

    def _call(self, parsed: ParsedCommand) -> CommandResult:
        try:
            target, symbol = split_call_target(parsed.string("target"))
            args = json_arguments(parsed.strings("args"))
        except ValueError as exc:
            raise ShellUsageError(str(exc)) from None
        result = self.client.call(target, symbol, args)
        return self._ok(
            parsed,
            f"{result['version']}: {json.dumps(result['result'], ensure_ascii=False)}",
            data=result,
        )

    def _journal(self, parsed: ParsedCommand) -> CommandResult:
        limit = parsed.number("limit")
        entries = self.client.journal(int(limit) if limit else 20)
        if not entries:
            return self._ok(parsed, "the journal is empty", data=entries)
        width = max([10, *(len(e["version"] or "-") for e in entries)])
        lines = []
        for e in entries:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            peer = e.get("peer") or {}
            # A client names itself: never let its name drive the terminal.
            who = _escape(str(peer.get("client") or "-"))
            pid = peer.get("pid")
            mark = "ok " if e["ok"] else (f"{_RED}ERR{_RESET}" if self.color else "ERR")
            lines.append(
                f"{stamp}  {mark} {e['op']:<8} {e['version'] or '-':<{width}} "
                f"{who}{f'[{pid}]' if pid else ''}: {_escape(str(e['result']))}"
            )
        return self._ok(parsed, "\n".join(lines), data=entries)

    def _log(self, parsed: ParsedCommand) -> CommandResult:
        from ..launcher import log_path, tail

        count = parsed.number("lines")
        path = log_path(self.link.name)
        if not path.exists():
            return self._failure(
                parsed.text,
                f"engine {self.link.name!r} has no log here ({path}): only engines started "
                "by `livepatch demo` or `%hotswap start` write one",
            )
        lines = tail(path, int(count) if count else 20)
        text = "\n".join(_escape(line) for line in lines) or f"{path} is empty"
        return self._ok(parsed, text, data={"path": str(path), "lines": lines})

    def _watch(self, parsed: ParsedCommand) -> CommandResult:
        from ..shell.monitor import call_counts, rates_between

        seconds = parsed.number("for")
        if seconds is None:
            if not self.interactive:
                raise ShellUsageError(
                    f"watch needs a terminal; in a script use {self.hint('watch --for SECONDS')}"
                )
            return self._ok(parsed, "", action="watch")
        if not 0 < seconds <= MAX_WATCH_S:
            raise ShellUsageError(
                f"watch --for {seconds:g}: use a number of seconds above 0, "
                f"at most {MAX_WATCH_S} (a day)"
            )
        # Measured here rather than by the monitor: a script wants exactly the
        # window it asked for, from two samples of its own.
        before = self.client.status()
        started = time.monotonic()
        time.sleep(seconds)  # the measurement window the user asked for
        after = self.client.status()
        elapsed = time.monotonic() - started
        rates = rates_between(call_counts(before), call_counts(after), elapsed)
        title = f"engine {after['name']}: calls over {elapsed:.1f} s"
        return self._ok(
            parsed, render_watch(after, rates, color=self.color, title=title), data=rates
        )

    def _help(self, parsed: ParsedCommand) -> CommandResult:
        name = parsed.optional("command")
        if name is not None:
            return self._ok(parsed, lookup(name).help_text(self.prefix))
        specs = [lookup(n) for n in command_names(aliases=False)]
        # As argparse lays out its help: a usage past the column goes on a
        # line of its own, its summary below it (a column as wide as the
        # longest usage, ~95 characters, wrapped every line at 120).
        width = min(max(len(s.usage()) for s in specs), HELP_USAGE_COLUMN)
        lines = []
        for s in specs:
            if len(s.usage()) <= width:
                lines.append(f"  {s.usage():<{width}}  {s.summary}")
            else:
                lines += [f"  {s.usage()}", f"  {'':<{width}}  {s.summary}"]
        lines += [
            "",
            "Separate commands with ';'. Tab completes commands, files, slots and versions;",
            "`help COMMAND` or `COMMAND --help` explains one.",
        ]
        if self.interactive:
            from ..shell.keys import describe_bindings, prompt_key_bindings

            keys = describe_bindings(prompt_key_bindings(refresh=lambda: None))
            width = max(len(k) for k, _ in keys)
            lines += ["", "keys:", *(f"  {k:<{width}}  {what}" for k, what in keys)]
        return self._ok(parsed, "\n".join(lines))

    def _quit(self, parsed: ParsedCommand) -> CommandResult:
        return self._ok(parsed, "", action="quit")
