"""The ``%hotswap`` line and cell magic: parse, call the client, return a view.

Kept thin on purpose (the machinery is :class:`~ipython_ext.session.HotswapSession`,
the display is :mod:`ipython_ext.display`). Every verb returns a result object,
so ``r = %hotswap status`` works in code; bad input and refusals from the
engine become a one-line :class:`~IPython.core.error.UsageError`, never a
traceback from inside livepatch.
"""

# IPython's magic decorators are untyped; the rest of the module is checked strictly.
# mypy: disable-error-code="untyped-decorator,no-untyped-call"

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split  # type: ignore[attr-defined]

from livepatch.client import Client, ConnectionLost, file_load_params, split_call_target
from livepatch.commands.spec import (
    COMMANDS,
    Arg,
    ArgKind,
    CommandSpec,
    Option,
    ParsedCommand,
    ShellUsageError,
    command_names,
    localize,
    on_register,
    parse,
)
from livepatch.errors import LivepatchError
from livepatch.filekind import check_slot_kind
from livepatch.launcher import log_path, tail
from livepatch.resolve import ResolveReport
from livepatch.runtime import EngineNotFound, list_engines
from livepatch.symbols import SymbolDiff, SymbolTable

from .display import (
    DiffView,
    JournalView,
    LoadResult,
    Outcome,
    ReportView,
    StatusView,
    TableView,
    View,
    html_diff,
    html_report,
    html_table,
    themed,
)
from .fleetview import detach_fleet, fleet_line
from .session import DEFAULT_RATE, HotswapSession
from .shadowview import ShadowView, shadow_verb

__all__ = [
    "MAGIC_VERBS",
    "PREFIX",
    "HotswapMagics",
    "help_text",
    "load_ipython_extension",
    "unload_ipython_extension",
    "verb_table",
]

_F = TypeVar("_F", bound=Callable[..., Any])


#: How a command is written here, for hints in messages.
PREFIX: Final = "%hotswap "

_NAME = Arg("name", "NAME", ArgKind.ENGINE, optional=True)

#: The verbs only ``%hotswap`` has: this kernel's engines and file watches.
#: Every other verb is the command layer's (:data:`livepatch.commands.spec.COMMANDS`),
#: parsed by the same parser as the CLI's and the shell's. A magics-only verb
#: is one entry here plus a handler in ``HotswapMagics._handlers``; one named
#: like a shared verb replaces it here (it must then accept all its options).
MAGIC_VERBS: Final[Mapping[str, CommandSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            CommandSpec(
                "connect",
                "use the engine NAME (default: the only one running)",
                "Talk to the engine NAME from now on (default: the only one running).\n"
                "The session stays bound to it: after a lost connection it reconnects\n"
                "to that engine only, and says so when it was restarted.",
                args=(_NAME,),
                examples=("connect rules",),
            ),
            CommandSpec(
                "start",
                "run a demo engine with live traffic for this kernel (stops with it)",
                "Start an engine with the bundled demo rules and synthetic traffic, tied\n"
                "to this kernel (it stops when the kernel exits, even killed), and\n"
                "connect to it. NAME defaults to ipython-PID. Its output goes to a log\n"
                "file (`%hotswap log`).",
                args=(_NAME,),
                options=(
                    Option(
                        "--rate",
                        "rate",
                        "R",
                        ArgKind.NUMBER,
                        f"demo calls per second (default: {DEFAULT_RATE:g}; 0: none)",
                    ),
                ),
                examples=("start", "start lab --rate 0"),
            ),
            CommandSpec(
                "stop",
                "stop the engines `start` started (or NAME, left by an earlier kernel)",
                "Stop every engine `%hotswap start` started in this kernel, or just NAME;\n"
                "NAME may also be an ipython-PID engine whose kernel is gone.",
                args=(_NAME,),
                examples=("stop",),
            ),
            CommandSpec(
                "unwatch",
                "stop every `watch` chart and `load FILE --watch` of this kernel",
                "Stop every file watch `%hotswap load FILE --watch` started here.",
                examples=("unwatch",),
            ),
        )
    }
)

#: The cell form, ``%%hotswap load SLOT``: the cell is the source.
_CELL_LOAD: Final = CommandSpec(
    "load",
    "load the cell as a new version of SLOT",
    "Load the cell's source as a new version of SLOT (default: the only Python slot).",
    args=(Arg("slot", "SLOT", ArgKind.SLOT, optional=True),),
    options=(Option("--slot", "slot_option", "SLOT", ArgKind.SLOT, "the slot to load into"),),
)

#: Magics-only verbs listed before the shared ones in the help (the rest after).
_FIRST: Final = ("connect", "start", "stop")


def verb_table() -> dict[str, CommandSpec]:
    """Every ``%hotswap`` verb (and alias), in the order the help lists them.

    Built on each use from the command layer's table, so a verb another module
    registers there (``register(CommandSpec(...))``) is a ``%hotswap`` verb
    too, with no edit here. Verbs that are not one-shot commands
    (``help``, ``quit``: ``spec.cli`` false) have no meaning in IPython.
    """
    table = {name: MAGIC_VERBS[name] for name in _FIRST}
    for name in command_names(aliases=False):
        spec = COMMANDS[name]
        if spec.cli and name not in table:
            chosen = MAGIC_VERBS.get(name, spec)
            table.update(dict.fromkeys((name, *chosen.aliases), chosen))
    for name, spec in MAGIC_VERBS.items():
        table.setdefault(name, spec)
    return table


def _verb_specs() -> list[CommandSpec]:
    return list(dict.fromkeys(verb_table().values()))


_DESCRIPTION: Final = """\
Drive a running livepatch engine: load, check, swap, purge, unload rules.

Connects to the only running engine on first use (or `%hotswap
connect NAME`; `%hotswap start` runs one for this kernel). Every verb
returns an object shown as a table, with the data in `.data`:

    r = %hotswap status
    v = %hotswap load spam_v2.py --slot spam
    %hotswap check {v}
    %hotswap swap {v} --expect spam@1

As a cell magic, `%%hotswap load SLOT` loads the cell as a new
version of SLOT. JSON arguments of `call` are written as on a shell
command line ('{"sender": "a", "text": "b"}'); a name that is not
JSON passes the notebook variable of that name. `%hotswap VERB --help`
shows one verb's help with examples.

`%hotswap connect --fleet F [--registry URL]` drives a whole fleet:
status (every member side by side), push FILE --slot S, rollback S,
symbols/diff by sha, history; `%hotswap connect NAME` goes back."""


def _here(text: str) -> str:
    """Help written for the shell and the CLI, in this front end's terms: its
    syntax, and a watch here runs in the background until `%hotswap unwatch`
    (Ctrl-C would interrupt the cell, not the watch)."""
    return (
        localize(text, PREFIX)
        .replace("until Ctrl-C", f"until `{PREFIX}unwatch`")
        .replace("Ctrl-C stops watching", f"`{PREFIX}unwatch` stops watching")
    )


def help_text() -> str:
    """``%hotswap?``: the usage, every verb, and every option with its verb.

    Built by IPython's ``magic_arguments`` from the verb table (so it reads
    like any magic's help); refreshed on every use, so verbs registered
    after the extension loaded are listed too.
    """
    specs = _verb_specs()
    width = max(len(s.usage()) for s in specs)
    rows = "\n".join(f"  {s.usage():<{width}}  {s.summary}" for s in specs)
    cell = f"  %%hotswap {_CELL_LOAD.usage()}  {_CELL_LOAD.summary} (a cell magic)"

    def stub() -> None:
        pass

    stub.__name__ = "hotswap"
    stub.__doc__ = f"{_DESCRIPTION}\n\nVerbs:\n{rows}\n{cell}\n"
    # One argparse option per flag; a flag several verbs take says which.
    options: dict[str, tuple[Option, list[str]]] = {}
    for spec in specs:
        for option in spec.options:
            described = f"{spec.name}: {_here(option.help)}"
            options.setdefault(option.flag, (option, []))[1].append(described)
    decorators = [
        argument("verb", nargs="?", help="what to do (see Verbs above)"),
        argument("args", nargs="*", metavar="ARG", help="the verb's arguments"),
    ]
    for flag, (option, helps) in options.items():
        described = "; ".join(helps).replace("%", "%%")  # argparse formats help with %
        if option.kind is ArgKind.SWITCH:
            decorators.append(argument(flag, action="store_true", help=described))
        else:
            decorators.append(argument(flag, metavar=option.metavar, help=described))
    # Decorators apply innermost first; magic_arguments lists them in source order.
    func: Any = stub
    for decorator in reversed(decorators):
        func = decorator(func)
    func = magic_arguments()(func)
    return str(func.__doc__)


def _refresh_help(func: _F) -> _F:
    func.__doc__ = help_text()
    return func


def _in_magic_syntax(message: str, verb: str, prefix: str) -> str:
    """A parser's message (``swap needs VERSION: usage: swap VERSION``) in
    ``%hotswap`` syntax (``%hotswap swap needs ...: usage: %hotswap swap VERSION``)."""
    message = localize(message, PREFIX).replace("usage: ", f"usage: {prefix}")
    if verb and message.startswith((f"{verb} ", f"{verb}:")):
        message = prefix + message
    return message


def _split_target(text: str) -> tuple[str, str]:
    try:
        return split_call_target(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _holders(holders: dict[str, int]) -> str:
    return ", ".join(f"{kind} x{n}" for kind, n in holders.items()) or "?"


@magics_class
class HotswapMagics(Magics):
    """``%hotswap`` / ``%%hotswap``: drive a running livepatch engine."""

    def __init__(self, shell: InteractiveShell, session: HotswapSession) -> None:
        super().__init__(shell)
        self.session = session
        #: The verbs with a view of their own (HTML tables, reports, results
        #: that are objects). Any other verb of the command layer runs through
        #: its shared handler (:meth:`_shared`) and shows its text.
        self._handlers: dict[str, Callable[[ParsedCommand, str | None], View | None]] = {
            "connect": self._connect,
            "start": self._start,
            "stop": self._stop,
            "unwatch": self._unwatch,
            "status": self._status,
            "load": self._load,
            "check": self._check,
            "swap": self._swap,
            "rollback": self._rollback,
            "purge": self._purge,
            "unload": self._unload,
            "symbols": self._symbols,
            "diff": self._diff,
            "call": self._call,
            "log": self._log,
            "journal": self._journal,
            "shadow": self._shadow,
            "watch": self._watch,
        }

    @line_cell_magic
    @_refresh_help
    def hotswap(self, line: str, cell: str | None = None) -> View | None:
        # The docstring is help_text(), built from the verb table (again
        # for every verb registered later: see the end of this module).
        fleet = fleet_line(self, line, cell)  # a fleet verb, or None: an engine's
        if fleet is not None:
            return fleet
        parsed = self._parse(line, cell)
        if parsed.help:
            prefix = "%%hotswap " if cell is not None else PREFIX
            print(_here(parsed.spec.help_text(prefix)))
            return None
        name = parsed.spec.name
        handler = self._handlers.get(name, self._shared)
        with self._one_line_errors():
            result = handler(parsed, cell)
        note = self.session.take_note()
        if note:
            print(note)
        bound = self.session.bound
        # With several engines running, say which one this result is from.
        if name not in ("start", "stop", "connect") and bound and len(list_engines()) > 1:
            print(f"(engine {bound[0]!r})")
        return result

    # -- parsing and errors -------------------------------------------------------

    def _parse(self, line: str, cell: str | None) -> ParsedCommand:
        try:
            words = arg_split(line, posix=True, strict=True)
        except ValueError as exc:  # an unclosed quote
            raise UsageError(f"cannot split {line!r}: {exc}") from None
        table = verb_table()
        if not words:
            raise UsageError(f"%hotswap needs a verb: {', '.join(table)} (see %hotswap?)")
        verb = words[0]
        if verb in ("-h", "--help"):
            raise UsageError("`%hotswap?` shows the help: every verb, option and an example")
        if verb not in table:
            close = difflib.get_close_matches(verb, list(table), n=1)
            hint = f"did you mean `{PREFIX}{close[0]}`? " if close else ""
            raise UsageError(
                f"unknown verb {verb!r}: {hint}use one of {', '.join(table)} (see %hotswap?)"
            )
        prefix = PREFIX
        if cell is not None:
            if verb != "load":
                raise UsageError(f"%%hotswap {verb}: only `%%hotswap load SLOT` takes a cell")
            table, prefix = {"load": _CELL_LOAD}, "%%hotswap "
        try:
            return parse(words, table)
        except ShellUsageError as exc:
            raise UsageError(_in_magic_syntax(str(exc), verb, prefix)) from None

    @contextlib.contextmanager
    def _one_line_errors(self) -> Iterator[None]:
        """Engine refusals and lost connections as one line, never a traceback."""
        try:
            yield
        except ConnectionLost as exc:
            self.session.disconnect()
            name = self.session.bound[0] if self.session.bound else "NAME"
            raise UsageError(
                f"{exc.message}; the next command reconnects to {name!r} when it is back "
                "(never to another engine); `%hotswap connect [NAME]` picks one, "
                "`%hotswap start` runs one for this kernel"
            ) from None
        except EngineNotFound as exc:
            raise UsageError(exc.message) from None
        except LivepatchError as exc:
            raise UsageError(localize(exc.message, PREFIX)) from None
        except ShellUsageError as exc:  # from a shared handler
            raise UsageError(_in_magic_syntax(str(exc), "", PREFIX)) from None

    def _client(self) -> Client:
        return self.session.client()

    def _slot(self, client: Client, given: str | None, filename: str | None = None) -> str:
        if given:
            return given
        slots = list(client.hello.get("slots", []))
        if len(slots) == 1:
            return str(slots[0])
        # Several slots: a .c/.so file goes to the only native one, other files
        # to the only Python one (the demo's spam and spam_native).
        with contextlib.suppress(ValueError):
            if filename is not None:
                return client.default_slot(filename)
        raise UsageError(f"which slot? name one with --slot ({', '.join(slots) or 'none'})")

    def _json_arg(self, index: int, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            namespace = self.shell.user_ns if self.shell is not None else {}
            if text.isidentifier() and text in namespace:
                value = namespace[text]
                try:
                    json.dumps(value)
                except (TypeError, ValueError):
                    raise UsageError(
                        f"argument {index}: variable {text!r} holds a "
                        f"{type(value).__name__}, which is not JSON"
                    ) from None
                return value
            raise UsageError(
                f"argument {index} is not JSON ({exc.msg} at column {exc.colno}) nor a "
                'variable: quote strings, e.g. \'"text"\' or \'{"sender": "a", "text": "b"}\''
            ) from None

    # -- verbs ----------------------------------------------------------------------

    def _shared(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        """A verb of the command layer with no view of its own: the shared
        handler's text, its data in ``.data``, a failure as one line."""
        from livepatch.commands.link import EngineLink
        from livepatch.commands.runner import CommandRunner

        runner = CommandRunner(EngineLink(self._client()), prefix=PREFIX)
        result = runner.dispatch(parsed)
        name = parsed.spec.name
        if result.action is not None:  # a live view or a loop a terminal runs
            raise UsageError(
                f"`{PREFIX}{parsed.text}` needs a terminal: run it in `livepatch shell`"
            )
        if not result.ok:
            if result.usage or not result.text:
                raise UsageError(_in_magic_syntax(result.error or "failed", name, PREFIX))
            error = result.error or "failed"
            return Outcome(name, result.data, error, ok=False, detail=result.text)
        summary, _, detail = result.text.partition("\n")
        return Outcome(name, result.data, summary or f"{name}: done", detail=detail or None)

    def _connect(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        client = self.session.connect(parsed.optional("name"))
        detach_fleet(self)  # connected: this kernel drives one engine now
        hello = client.hello
        slots = ", ".join(hello.get("slots", [])) or "none"
        return Outcome(
            "connect", hello, f"connected to engine {hello.get('engine')!r} (slots: {slots})"
        )

    def _start(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        rate = parsed.number("rate")
        rate = DEFAULT_RATE if rate is None else rate
        name = parsed.optional("name") or self.session.default_name()
        before = self.session.engines.get(name)
        started = self.session.start(name, rate)
        detach_fleet(self)
        again = started is before
        traffic = f"{started.rate:g} calls/s of demo traffic" if started.rate else "no traffic"
        verb = "already running" if again else "started"
        return Outcome(
            "start",
            started.ready,
            f"{verb}: engine {started.name!r} (pid {started.pid}) with {traffic}; connected. "
            "It stops when this kernel exits, or with `%hotswap stop`.",
        )

    def _stop(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        names = self.session.stop(parsed.optional("name"))
        summary = f"stopped {', '.join(map(repr, names))}" if names else "no engine started here"
        return Outcome("stop", {"stopped": names}, summary)

    def _status(self, parsed: ParsedCommand, cell: str | None) -> StatusView:
        return StatusView(self._client().status())

    def _load(self, parsed: ParsedCommand, cell: str | None) -> LoadResult | None:
        client = self._client()
        if cell is not None:
            if parsed.optional("slot") and parsed.optional("slot_option"):
                raise UsageError("usage: %%hotswap load SLOT (the cell is the source)")
            # A cell is Python: with no slot named, the only Python slot.
            given = parsed.optional("slot") or parsed.optional("slot_option")
            slot = self._slot(client, given, "<cell>")
            if not cell.strip():
                raise UsageError(
                    "the cell is empty: write the rule module below `%%hotswap load SLOT`"
                )
            filename = f"<cell-{self._cell_number(cell)}>"
            # One blank line for the `%%hotswap` line, so a problem's line
            # number is the line of the cell the user sees.
            params = {"slot": slot, "source": "\n" + cell, "filename": filename}
            return LoadResult(client.request("load", params), filename)
        path = Path(os.path.expanduser(parsed.string("file")))
        given = parsed.optional("slot")
        if parsed.flag("swap") and not parsed.flag("watch"):
            raise UsageError("--swap goes with --watch: %hotswap load FILE --watch --swap")
        if parsed.flag("watch"):
            self._watch_file(client, path, given, swap=parsed.flag("swap"))
            return None
        try:
            params = file_load_params(path)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        params["slot"] = self._slot(client, given, path.name)
        if given:
            try:
                check_slot_kind(client.status()["slots"], given, path.name)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        return LoadResult(client.request("load", params), path.name)

    def _watch_file(self, client: Any, path: Path, slot: str | None, *, swap: bool) -> None:
        from IPython.display import display

        from .watching import NotebookWatch

        chosen = self._slot(client, slot, path.name)
        if not path.is_file():
            raise UsageError(f"cannot watch {path}: no such file")
        # A connection of its own: the session's client serves the next cells.
        watch = NotebookWatch(
            Client(client.info, client_name=f"{self.session.client_name}-watch"),
            path,
            chosen,
            swap=swap,
        )
        self.session.watches.append(watch)
        handle = display(watch, display_id=True)
        watch.start(handle)
        return None

    def _watch(self, parsed: ParsedCommand, cell: str | None) -> None:
        from IPython.display import display

        from .chart import TrafficChart

        duration = parsed.number("for")
        if duration is not None and duration < 0.5:  # the chart samples every 0.5 s
            raise UsageError(f"--for {duration:g}: use 0.5 or more")
        client = self._client()
        # A connection of its own: the session's client serves the next cells.
        chart = TrafficChart(
            Client(client.info, client_name=f"{self.session.client_name}-traffic"),
            duration=duration,
        )
        self.session.watches.append(chart)
        chart.start(display(chart, display_id=True))

    def _unwatch(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        stopped = self.session.unwatch()
        summary = f"stopped watching {', '.join(stopped)}" if stopped else "nothing is watched"
        return Outcome("unwatch", {"stopped": stopped}, summary)

    def _cell_number(self, cell: str) -> int:
        """The N of the cell's ``In [N]``, whichever IPython counts when.

        IPython 9 advances ``execution_count`` before the cell runs, 8 after;
        both store the cell in the input history first.
        """
        shell = self.shell
        if shell is None:
            return 0
        history = shell.history_manager.input_hist_raw if shell.history_manager else []
        if history and cell.strip() and cell.strip() in history[-1]:
            return len(history) - 1
        return int(shell.execution_count)

    def _check(self, parsed: ParsedCommand, cell: str | None) -> ReportView:
        client = self._client()
        version = parsed.string("version")
        report = client.check(version)
        source = filename = None
        if any(p.line is not None for p in report.problems):
            # The listing is a nicety: an engine without `source` still gives the report.
            with contextlib.suppress(LivepatchError):
                got = client.request("source", {"version": version})
                source, filename = got.get("source"), got.get("filename")
        return ReportView(report, source, filename)

    def _swap(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        result = self._client().swap(parsed.string("version"), expect=parsed.optional("expect"))
        return self._swapped("swap", result)

    def _rollback(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        return self._swapped("rollback", self._client().rollback(parsed.string("slot")))

    @staticmethod
    def _swapped(verb: str, result: dict[str, Any]) -> Outcome:
        if result.get("changed", True):
            summary = f"{result['slot']}: {result['previous'] or 'nothing'} -> {result['active']}"
        else:
            summary = f"{result['slot']}: {result['active']} is already active"
        return Outcome(verb, result, summary)

    def _purge(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        version = parsed.string("version")
        result = self._client().purge(version)
        return Outcome(
            "purge",
            result,
            f"purged {version}: nothing new can find its symbols (calls already running finish)",
        )

    def _unload(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        version = parsed.string("version")
        result = self._client().unload(version, wait_s=parsed.number("wait"))
        if result["freed"]:
            return Outcome("unload", result, f"unloaded {version}: freed")
        return Outcome(
            "unload",
            result,
            f"unloaded {version}: NOT freed yet ({result['in_flight']} in flight; "
            f"held by {_holders(result.get('holders', {}))})",
            ok=False,
        )

    def _symbols(self, parsed: ParsedCommand, cell: str | None) -> TableView | DiffView:
        client = self._client()
        version, other = parsed.string("version"), parsed.optional("other")
        if other is not None:
            return DiffView(client.diff(version, other))
        return TableView(client.symbols(version))

    def _diff(self, parsed: ParsedCommand, cell: str | None) -> DiffView:
        return DiffView(self._client().diff(parsed.string("a"), parsed.string("b")))

    def _call(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        target, symbol = _split_target(parsed.string("target"))
        values = [self._json_arg(i, text) for i, text in enumerate(parsed.strings("args"), 1)]
        result = self._client().call(target, symbol, values)
        shown = json.dumps(result["result"], ensure_ascii=False)
        return Outcome("call", result, f"{result['version']}: {shown}")

    def _log(self, parsed: ParsedCommand, cell: str | None) -> Outcome:
        name = self.session.bound[0] if self.session.bound else self._client().info.name
        path = log_path(name)
        if not path.exists():
            raise UsageError(
                f"engine {name!r} has no log here: only engines started by "
                "`%hotswap start` or `livepatch demo` write one"
            )
        count = parsed.number("lines")
        lines = tail(path, int(count) if count else 20)
        summary = "\n".join(lines) or f"{path} is empty"
        return Outcome("log", {"path": str(path), "lines": lines}, summary)

    def _journal(self, parsed: ParsedCommand, cell: str | None) -> JournalView:
        limit = parsed.number("limit")
        return JournalView(self._client().journal(int(limit) if limit else None))

    def _shadow(self, parsed: ParsedCommand, cell: str | None) -> ShadowView:
        queue = parsed.number("queue")
        words = [parsed.string("what"), *filter(None, [parsed.optional("slot")])]
        return shadow_verb(
            self._client(),
            words,
            sample=parsed.number("sample"),
            for_s=parsed.number("for"),
            queue=int(queue) if queue is not None else None,
        )


# --- extension entry points -------------------------------------------------------

#: The display formatters registered for livepatch's data models, so objects
#: from the client or an in-process engine show as HTML (and as the terminal
#: text) without wrapping: type, HTML renderer, view for the text form.
_FORMATTERS: Final[tuple[tuple[type, Callable[[Any], str], Callable[[Any], View]], ...]] = (
    (SymbolTable, html_table, TableView),
    (SymbolDiff, html_diff, DiffView),
    (ResolveReport, html_report, ReportView),
)


def _relist_verbs(_spec: CommandSpec) -> None:
    HotswapMagics.hotswap.__doc__ = help_text()


# ``%hotswap?`` lists a verb registered after this module loaded at once.
on_register(_relist_verbs)


def _themed_with(render: Callable[[Any], str]) -> Callable[[Any], str]:
    def html(obj: Any) -> str:
        return themed(render(obj))

    return html


def _pretty_with(make_view: Callable[[Any], View]) -> Callable[[Any, Any, bool], None]:
    def pretty(obj: Any, printer: Any, cycle: bool) -> None:
        make_view(obj)._repr_pretty_(printer, cycle)

    return pretty


_loaded: dict[int, HotswapMagics] = {}


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%hotswap`` (``%load_ext livepatch`` or ``%load_ext ipython_ext``)."""
    if id(ipython) in _loaded:
        return  # loaded under the other module name: one set of magics is enough
    # An earlier load of this kernel (before %reload_ext) hands its session
    # over: the engines it started stay this kernel's.
    session = getattr(ipython, "_livepatch_session", None) or HotswapSession()
    ipython._livepatch_session = None  # type: ignore[attr-defined]
    magics = HotswapMagics(ipython, session)
    ipython.register_magics(magics)
    assert ipython.display_formatter is not None
    formatters = ipython.display_formatter.formatters
    for cls, render, make_view in _FORMATTERS:
        formatters["text/html"].for_type(cls, _themed_with(render))
        formatters["text/plain"].for_type(cls, _pretty_with(make_view))
    _loaded[id(ipython)] = magics


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Remove ``%hotswap``; the engines ``%hotswap start`` started keep running.

    They are handed to the next ``load_ipython_extension`` (``%reload_ext``
    keeps them, with the reloaded code) and stop when the kernel exits, or
    with ``%hotswap stop`` before unloading.
    """
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    session = magics.session
    # Watch loops run this module's code: they end with it (engines stay).
    session.unwatch()
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        if getattr(table.get("hotswap"), "__self__", None) is magics:
            del table["hotswap"]
    if manager.registry.get(type(magics).__name__) is magics:
        del manager.registry[type(magics).__name__]
    assert ipython.display_formatter is not None
    formatters = ipython.display_formatter.formatters
    for cls, _render, _view in _FORMATTERS:
        for mime in ("text/html", "text/plain"):
            with contextlib.suppress(KeyError):
                formatters[mime].pop(cls)
    session.disconnect()
    running = [n for n, e in session.engines.items() if e.alive]
    if session.bound is not None and session.bound[0] not in running:
        session.bound = None  # bound to an engine of somebody else's: choose again
    if running:
        ipython._livepatch_session = session  # type: ignore[attr-defined]
        print(
            f"%hotswap unloaded; engines started here keep running until the kernel exits: "
            f"{', '.join(running)} (`%load_ext livepatch` takes them back)"
        )
