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
import dataclasses
import inspect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split  # type: ignore[attr-defined]

from livepatch.client import Client, ConnectionLost, file_load_params, split_call_target
from livepatch.commands.spec import COMMANDS, localize
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
from .session import DEFAULT_RATE, HotswapSession

__all__ = ["VERBS", "HotswapMagics", "Verb", "load_ipython_extension", "unload_ipython_extension"]

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Verb:
    """One ``%hotswap`` verb: how it is written, what it does, what it accepts."""

    usage: str
    summary: str
    min_args: int
    max_args: int | None
    options: frozenset[str] = frozenset()


#: Every verb, in the order the help lists them. Handlers are ``HotswapMagics._<verb>``.
VERBS: Final[dict[str, Verb]] = {
    "connect": Verb("connect [NAME]", "use the engine NAME (default: the only one running)", 0, 1),
    "start": Verb(
        "start [NAME] [--rate R]",
        "run a demo engine with live traffic for this kernel (stops with it)",
        0,
        1,
        frozenset({"rate"}),
    ),
    "stop": Verb(
        "stop [NAME]",
        "stop the engines `start` started (or NAME, left by an earlier kernel)",
        0,
        1,
    ),
    "status": Verb("status", "slots, versions, states and call counts", 0, 0),
    "load": Verb(
        "load FILE [--slot S] [--watch [--swap]]",
        "load a file as a new version (%%hotswap load SLOT: the cell)",
        0,
        1,
        frozenset({"slot"}),
    ),
    "check": Verb("check V", "resolve-check a version; problems link to their lines", 1, 1),
    "swap": Verb(
        "swap V [--expect V]",
        "make V active atomically (only if --expect is active now)",
        1,
        1,
        frozenset({"expect"}),
    ),
    "rollback": Verb("rollback S", "swap slot S back to its last retired version", 1, 1),
    "purge": Verb("purge V", "forget a version's symbols (calls in flight finish)", 1, 1),
    "unload": Verb(
        "unload V [--wait S]",
        "drop the engine's references; says whether the code was freed",
        1,
        1,
        frozenset({"wait"}),
    ),
    "symbols": Verb("symbols V [V2]", "a symbol table, or two side by side", 1, 2),
    "diff": Verb("diff A B", "two versions' symbol tables side by side (= ~ + -)", 2, 2),
    "call": Verb(
        "call S.SYMBOL [JSON ...]",
        "call a rule of slot S (or version S@N) with JSON arguments",
        1,
        None,
    ),
    "journal": Verb("journal [--limit N]", "the engine's audit log", 0, 0, frozenset({"limit"})),
    "watch": Verb(
        "watch [--for SECONDS]",
        "a live chart of calls/s per version, updated in place (until unwatch)",
        0,
        0,
        frozenset({"for"}),
    ),
    "unwatch": Verb("unwatch", "stop every `watch` and `load FILE --watch` of this kernel", 0, 0),
    "log": Verb(
        "log [--lines N]",
        "the end of the engine's output (rules' print, warnings)",
        0,
        0,
        frozenset({"lines"}),
    ),
}

# A verb the command layer defines says what it does in the same words as
# `livepatch VERB` and the shell's help (one definition); `load` keeps its
# mention of the cell form and `watch` its chart, connect/start/stop are the magics' own.
for _name, _verb in list(VERBS.items()):
    if _name in COMMANDS and _name not in ("load", "watch"):
        VERBS[_name] = dataclasses.replace(_verb, summary=COMMANDS[_name].summary)

_OPTIONS: Final = ("slot", "expect", "wait", "limit", "rate", "lines", "for")

#: How a command is written here, for hints in messages.
PREFIX: Final = "%hotswap "


def _with_verb_help(func: _F) -> _F:
    """Append the verb table to the docstring, so ``%hotswap?`` lists every verb."""
    width = max(len(v.usage) for v in VERBS.values())
    table = "\n".join(f"  {v.usage:<{width}}  {v.summary}" for v in VERBS.values())
    func.__doc__ = f"{inspect.cleandoc(func.__doc__ or '')}\n\nVerbs:\n{table}\n"
    return func


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

    @line_cell_magic
    @magic_arguments()
    @argument("verb", nargs="?", help="what to do (see Verbs below)")
    @argument("args", nargs="*", metavar="ARG", help="the verb's arguments")
    @argument("--slot", metavar="S", help="load: the slot to load into")
    @argument("--expect", metavar="V", help="swap: only if V is the active version now")
    @argument("--wait", type=float, metavar="SECONDS", help="unload: wait for calls in flight")
    @argument("--limit", type=int, metavar="N", help="journal: the last N entries")
    @argument("--rate", type=float, metavar="R", help="start: demo calls per second (default: 20)")
    @argument("--lines", type=int, metavar="N", help="log: the last N lines (default: 20)")
    @argument("--for", type=float, metavar="SECONDS", help="watch: stop after SECONDS")
    @argument(
        "--watch", action="store_true", help="load: load FILE again on every save (until unwatch)"
    )
    @argument("--swap", action="store_true", help="load --watch: swap clean saves in")
    @_with_verb_help
    def hotswap(self, line: str, cell: str | None = None) -> View:
        """Drive a running livepatch engine: load, check, swap, purge, unload rules.

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
        JSON passes the notebook variable of that name.
        """
        args = self._parse(line)
        if args.verb is None:
            raise UsageError(f"%hotswap needs a verb: {', '.join(VERBS)} (see %hotswap?)")
        verb = VERBS.get(args.verb)
        if verb is None:
            raise UsageError(
                f"unknown verb {args.verb!r}: use one of {', '.join(VERBS)} (see %hotswap?)"
            )
        if cell is not None and args.verb != "load":
            raise UsageError(f"%%hotswap {args.verb}: only `%%hotswap load SLOT` takes a cell")
        self._validate(args.verb, verb, args)
        handler: Callable[[Any, str | None], View] = getattr(self, f"_{args.verb}")
        with self._one_line_errors():
            result = handler(args, cell)
        note = self.session.take_note()
        if note:
            print(note)
        bound = self.session.bound
        # With several engines running, say which one this result is from.
        if args.verb not in ("start", "stop", "connect") and bound and len(list_engines()) > 1:
            print(f"(engine {bound[0]!r})")
        return result

    # -- parsing and errors -------------------------------------------------------

    def _parse(self, line: str) -> Any:
        try:
            argv = arg_split(line, posix=True, strict=True)
        except ValueError as exc:  # an unclosed quote
            raise UsageError(f"cannot split {line!r}: {exc}") from None
        if "-h" in argv or "--help" in argv:
            # argparse's own -h would print a usage line without the verbs.
            raise UsageError("`%hotswap?` shows the help: every verb, option and an example")
        # Intermixed: `load --slot spam FILE` and `load FILE --slot spam` both work.
        return cast(Any, self.hotswap).parser.parse_intermixed_args(argv)

    @staticmethod
    def _validate(name: str, verb: Verb, args: Any) -> None:
        count = len(args.args)
        if count < verb.min_args or (verb.max_args is not None and count > verb.max_args):
            raise UsageError(f"usage: %hotswap {verb.usage}")
        for option in _OPTIONS:
            if getattr(args, option) is not None and option not in verb.options:
                raise UsageError(f"%hotswap {name} does not take --{option}: {verb.usage}")
        for switch in ("watch", "swap"):  # store_true: False when not given
            if getattr(args, switch) and name != "load":
                raise UsageError(f"%hotswap {name} does not take --{switch}: {verb.usage}")
        # The same limits as the shell's and the CLI's parser.
        for option, least in (("rate", 0.0), ("wait", 0.0), ("lines", 1), ("for", 0.5)):
            value = getattr(args, option)
            if value is not None and not value >= least:
                raise UsageError(f"--{option} {value:g}: use {least:g} or more")

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

    def _connect(self, args: Any, cell: str | None) -> Outcome:
        client = self.session.connect(args.args[0] if args.args else None)
        hello = client.hello
        slots = ", ".join(hello.get("slots", [])) or "none"
        return Outcome(
            "connect", hello, f"connected to engine {hello.get('engine')!r} (slots: {slots})"
        )

    def _start(self, args: Any, cell: str | None) -> Outcome:
        rate = DEFAULT_RATE if args.rate is None else args.rate
        name = args.args[0] if args.args else self.session.default_name()
        before = self.session.engines.get(name)
        started = self.session.start(name, rate)
        again = started is before
        traffic = f"{started.rate:g} calls/s of demo traffic" if started.rate else "no traffic"
        verb = "already running" if again else "started"
        return Outcome(
            "start",
            started.ready,
            f"{verb}: engine {started.name!r} (pid {started.pid}) with {traffic}; connected. "
            "It stops when this kernel exits, or with `%hotswap stop`.",
        )

    def _stop(self, args: Any, cell: str | None) -> Outcome:
        names = self.session.stop(args.args[0] if args.args else None)
        summary = f"stopped {', '.join(map(repr, names))}" if names else "no engine started here"
        return Outcome("stop", {"stopped": names}, summary)

    def _status(self, args: Any, cell: str | None) -> StatusView:
        return StatusView(self._client().status())

    def _load(self, args: Any, cell: str | None) -> LoadResult | None:
        client = self._client()
        if cell is not None:
            if len(args.args) == 1 and args.slot is not None:
                raise UsageError("usage: %%hotswap load SLOT (the cell is the source)")
            # A cell is Python: with no slot named, the only Python slot.
            given = args.slot or (args.args[0] if args.args else None)
            slot = self._slot(client, given, "<cell>")
            if not cell.strip():
                raise UsageError(
                    "the cell is empty: write the rule module below `%%hotswap load SLOT`"
                )
            filename = f"<cell-{self._cell_number(cell)}>"
            # One blank line for the `%%hotswap` line, so a problem's line
            # number is the line of the cell the user sees.
            source = "\n" + cell
        else:
            if not args.args:
                raise UsageError(
                    "usage: %hotswap load FILE [--slot S] (or `%%hotswap load SLOT` in a cell)"
                )
            path = Path(os.path.expanduser(args.args[0]))
            if args.swap and not args.watch:
                raise UsageError("--swap goes with --watch: %hotswap load FILE --watch --swap")
            if args.watch:
                self._watch_file(client, path, args.slot, swap=args.swap)
                return None
            try:
                params = file_load_params(path)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            params["slot"] = self._slot(client, args.slot, path.name)
            if args.slot:
                try:
                    check_slot_kind(client.status()["slots"], args.slot, path.name)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
            return LoadResult(client.request("load", params), path.name)
        params = {"slot": slot, "source": source, "filename": filename}
        return LoadResult(client.request("load", params), filename)

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

    def _watch(self, args: Any, cell: str | None) -> None:
        from IPython.display import display

        from .chart import TrafficChart

        client = self._client()
        # A connection of its own: the session's client serves the next cells.
        chart = TrafficChart(
            Client(client.info, client_name=f"{self.session.client_name}-traffic"),
            duration=getattr(args, "for"),
        )
        self.session.watches.append(chart)
        chart.start(display(chart, display_id=True))

    def _unwatch(self, args: Any, cell: str | None) -> Outcome:
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

    def _check(self, args: Any, cell: str | None) -> ReportView:
        client = self._client()
        version = args.args[0]
        report = client.check(version)
        source = filename = None
        if any(p.line is not None for p in report.problems):
            # The listing is a nicety: an engine without `source` still gives the report.
            with contextlib.suppress(LivepatchError):
                got = client.request("source", {"version": version})
                source, filename = got.get("source"), got.get("filename")
        return ReportView(report, source, filename)

    def _swap(self, args: Any, cell: str | None) -> Outcome:
        return self._swapped("swap", self._client().swap(args.args[0], expect=args.expect))

    def _rollback(self, args: Any, cell: str | None) -> Outcome:
        return self._swapped("rollback", self._client().rollback(args.args[0]))

    @staticmethod
    def _swapped(verb: str, result: dict[str, Any]) -> Outcome:
        if result.get("changed", True):
            summary = f"{result['slot']}: {result['previous'] or 'nothing'} -> {result['active']}"
        else:
            summary = f"{result['slot']}: {result['active']} is already active"
        return Outcome(verb, result, summary)

    def _purge(self, args: Any, cell: str | None) -> Outcome:
        result = self._client().purge(args.args[0])
        return Outcome(
            "purge",
            result,
            f"purged {args.args[0]}: nothing new can find its symbols "
            "(calls already running finish)",
        )

    def _unload(self, args: Any, cell: str | None) -> Outcome:
        version = args.args[0]
        result = self._client().unload(version, wait_s=args.wait)
        if result["freed"]:
            return Outcome("unload", result, f"unloaded {version}: freed")
        return Outcome(
            "unload",
            result,
            f"unloaded {version}: NOT freed yet ({result['in_flight']} in flight; "
            f"held by {_holders(result.get('holders', {}))})",
            ok=False,
        )

    def _symbols(self, args: Any, cell: str | None) -> TableView | DiffView:
        client = self._client()
        if len(args.args) == 2:
            return DiffView(client.diff(args.args[0], args.args[1]))
        return TableView(client.symbols(args.args[0]))

    def _diff(self, args: Any, cell: str | None) -> DiffView:
        return DiffView(self._client().diff(args.args[0], args.args[1]))

    def _call(self, args: Any, cell: str | None) -> Outcome:
        target, symbol = _split_target(args.args[0])
        values = [self._json_arg(i, text) for i, text in enumerate(args.args[1:], 1)]
        result = self._client().call(target, symbol, values)
        shown = json.dumps(result["result"], ensure_ascii=False)
        return Outcome("call", result, f"{result['version']}: {shown}")

    def _log(self, args: Any, cell: str | None) -> Outcome:
        name = self.session.bound[0] if self.session.bound else self._client().info.name
        path = log_path(name)
        if not path.exists():
            raise UsageError(
                f"engine {name!r} has no log here: only engines started by "
                "`%hotswap start` or `livepatch demo` write one"
            )
        lines = tail(path, args.lines or 20)
        summary = "\n".join(lines) or f"{path} is empty"
        return Outcome("log", {"path": str(path), "lines": lines}, summary)

    def _journal(self, args: Any, cell: str | None) -> JournalView:
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit must be 1 or more")
        return JournalView(self._client().journal(args.limit))


# --- extension entry points -------------------------------------------------------

#: The display formatters registered for livepatch's data models, so objects
#: from the client or an in-process engine show as HTML (and as the terminal
#: text) without wrapping: type, HTML renderer, view for the text form.
_FORMATTERS: Final[tuple[tuple[type, Callable[[Any], str], Callable[[Any], View]], ...]] = (
    (SymbolTable, html_table, TableView),
    (SymbolDiff, html_diff, DiffView),
    (ResolveReport, html_report, ReportView),
)


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
