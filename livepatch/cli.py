"""The ``livepatch`` command: run an engine, drive one, or run the demo.

The one-shot verbs (``status``, ``load``, ``check``, ...) are the commands of
:mod:`livepatch.commands`, run by the same runner as the shell: their
options, validation, messages and exit codes are defined there once. Every
verb takes ``--existing NAME`` (default: the only engine running) and
``--json``. Exit status: 0 on success, 1 when the engine refused or the check
found problems (one line on stderr says why), 2 for a usage error.

A client verb imports neither the engine core nor the analysis modules: only
``livepatch engine`` (and ``demo``, ``bench``) pay for them. A one-shot verb
that the command layer's parser accepts as written does not build the
argparse parser either (see :func:`_one_shot`): that, and the modules it
would import, were a third of the verb's start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import LivepatchError
from .stopping import SignalExit, Stopped, stop_by_signal

if TYPE_CHECKING:
    # argparse is imported where a parser is built: a one-shot verb needs none.
    import argparse


__all__ = ["build_parser", "main"]

PROG = "livepatch"
#: Exit status when stdout's reader is gone, as for a tool killed by SIGPIPE.
BROKEN_PIPE = 128 + 13


class UsageError(Exception):
    """A command line that cannot be run; the message says how to fix it."""


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse's parser, with its usage errors raised (so ``--json`` can show
    them as JSON)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{message}; `{self.prog} --help` shows the usage")

    return _Parser


# ---------------------------------------------------------------------------
# Output helpers


def _emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# ---------------------------------------------------------------------------
# `livepatch engine`


# ---------------------------------------------------------------------------
# One-shot verbs


def _cmd_engine(args: argparse.Namespace) -> int:
    # Imported only to run an engine: a client verb never pays for it.
    from .enginemain import cmd_engine

    return cmd_engine(args)


def _verb_words(args: argparse.Namespace) -> list[str]:
    """The parsed one-shot verb as the words the command layer parses again
    (one parser for validation: the CLI, the shell and the magics agree)."""
    from .commands.spec import COMMANDS

    spec = COMMANDS[args.verb]
    words = [spec.name]
    for arg in spec.args:
        value = getattr(args, arg.dest)
        if arg.repeat:
            words += value or []
        elif value is not None:
            words.append(value)
    for option in spec.options:
        value = getattr(args, f"opt_{option.dest}")
        if value is True:  # a switch
            words.append(option.flag)
        elif value is not None and value is not False:
            words += [option.flag, value]
    return words


def _watch_file(client: Any, watch: dict[str, Any], *, as_json: bool, color: bool) -> int:
    """``livepatch load FILE --watch [--swap]``: one report per save until Ctrl-C."""
    from .filewatch import WatchStep, describe_step, watch_until_interrupted

    def emit(step: WatchStep) -> None:
        if as_json:  # JSON lines: one object per save, for scripts to follow
            line = json.dumps(
                {
                    "path": step.path,
                    "version": step.version,
                    "new": step.new,
                    "ok": step.ok,
                    "error": step.error,
                    "problems": [p.to_json() for p in step.report.problems] if step.report else [],
                    "swapped": step.swapped,
                    "active": step.active,
                    "seconds": round(step.seconds, 6),
                    "gone": step.gone,
                    "reconnected": step.reconnected or None,
                }
            )
            print(line, flush=True)
        else:
            print(describe_step(step, color=color), flush=True)

    if not as_json:
        print(
            f"watching {watch['path']} for slot {watch['slot']}"
            f"{' (swapping clean saves in)' if watch['swap'] else ''}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
    watch_until_interrupted(
        client, Path(watch["path"]), str(watch["slot"]), swap=bool(watch["swap"]), emit=emit
    )
    return 0


def _emit_error(message: str, kind: str, code: int) -> None:
    """``--json``: the error as JSON on stdout too (the one line stays on stderr)."""
    _emit_json({"error": {"message": message, "kind": kind, "exit_code": code}})


def run_verb(args: argparse.Namespace) -> int:
    """Run a one-shot verb against an engine, through the shared command runner."""
    return _run_words(_verb_words(args), getattr(args, "existing", None), as_json=args.json)


def _run_words(words: list[str], existing: str | None, *, as_json: bool) -> int:
    from .commands.runner import CommandResult
    from .commands.spec import ShellUsageError, fleet_route, parse
    from .render import color_allowed

    color = color_allowed(sys.stdout) and not as_json
    usage: CommandResult | None = None
    try:
        route = fleet_route(parse(words))
    except ShellUsageError as exc:  # said before any connection is tried
        route = None
        usage = CommandResult(" ".join(words), False, error=str(exc), usage=True, kind="usage")
    if usage is not None:
        result = usage
    elif route is not None:
        if existing is not None:
            raise UsageError("--existing names one engine; --fleet acts on every member")
        # Imported only for a fleet verb: an engine's one-shot verb never pays for it.
        from .fleet.console import run_fleet_command

        result = run_fleet_command(words, route, color=color, prefix=f"{PROG} ")
    else:
        from .client import Client
        from .commands.link import EngineLink
        from .commands.runner import CommandRunner

        with Client.connect(existing, client_name="livepatch-cli") as client:
            runner = CommandRunner(EngineLink(client), color=color, prefix=f"{PROG} ")
            if sys.stdout.isatty():
                import shutil

                runner.width = shutil.get_terminal_size().columns
            result = runner.execute(words)
            if result.action == "watch-file" and isinstance(result.data, dict):
                return _watch_file(client, result.data, as_json=as_json, color=runner.color)
    if as_json:
        if result.data is not None:
            _emit_json(result.data)
        elif result.error:
            _emit_error(result.error, result.kind or "error", result.exit_code)
        else:
            _emit_json({"ok": result.ok, "text": result.text})
    elif result.text:
        print(result.text)
    if result.error:
        print(f"{PROG}: error: {result.error}", file=sys.stderr)
    return result.exit_code


def _one_shot(argv: list[str]) -> tuple[list[str], str | None, bool] | None:
    """A one-shot verb's words, ``--existing`` and ``--json``, when the command
    layer's parser takes ``argv`` as written; else ``None`` (argparse then
    parses it: ``--help``, fleet options, abbreviations and every usage error,
    so messages are argparse's as before).

    The runner parses the words with that same parser anyway; skipping
    argparse here only saves building a parser of every verb, which cost a
    third of a verb's start-up.
    """
    from .commands.spec import COMMANDS, ShellUsageError, parse

    spec = COMMANDS.get(argv[0]) if argv else None
    if spec is None or not spec.cli or spec.name != argv[0]:
        return None
    words, existing, as_json = [argv[0]], None, False
    rest = iter(argv[1:])
    for word in rest:
        if word == "--json":
            as_json = True
        elif word == "--existing":
            existing = next(rest, None)
            if existing is None or existing.startswith("-"):
                return None
        elif word.startswith("--existing="):
            existing = word.partition("=")[2]
        elif word.startswith("-") and (not word.startswith("--") or spec.option(word) is None):
            return None  # -h, --help, a fleet option, a negative number: argparse's
        else:
            words.append(word)
    try:
        parse(words)
    except ShellUsageError:
        return None
    return words, existing, as_json


# ---------------------------------------------------------------------------
# `livepatch demo`


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an engine with the demo rules and live traffic, and tour it."""
    from .demo import run_demo

    return run_demo(args)


# ---------------------------------------------------------------------------
# `livepatch bench`


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the hot path, swaps under load, load time, memory and the peers."""
    from .bench import run_bench

    return run_bench(args)


# ---------------------------------------------------------------------------
# `livepatch shell`


def cmd_shell(args: argparse.Namespace) -> int:
    """Attach the interactive shell (or run commands from -c or stdin)."""
    from .shell import run_shell

    return run_shell(args)


# ---------------------------------------------------------------------------
# Parser


#: The engine's GIL switch interval (CPython's default is 0.005): measured by
#: benchmarks/control_plane.py, swap latency while rule calls spin drops about
#: six-fold at 0.0005, and socket call throughput does not suffer.
SWITCH_INTERVAL_S = 0.0005


def _positive(kind: Callable[[str], float], *, allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a number > 0 (>= 0 with ``allow_zero``), else a usage error."""

    def parse(text: str) -> float:
        import argparse

        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (value == 0 and not allow_zero) or value != value:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'>= 0' if allow_zero else '> 0'}")
        return value

    return parse


_EPILOG = """\
exit status:
  0  success
  1  the engine refused (or a check found problems); one line on stderr says why
  2  usage error: the command cannot be run as written
  70 a bug in livepatch (LIVEPATCH_DEBUG=1 shows the traceback)
  130 interrupted (Ctrl-C)
  141 the output's reader went away (`livepatch journal | head`): stopped quietly

environment:
  LIVEPATCH_RUNTIME_DIR  where engines' sockets, connection files and logs live
                         (default: $XDG_RUNTIME_DIR/livepatch, else ~/.livepatch/runtime)
  LIVEPATCH_STATE_HOME   where the shell's history and the local fleets' store live
                         (default: $XDG_STATE_HOME/livepatch, else ~/.local/state/livepatch)
  LIVEPATCH_LOG_MAX_BYTES
                         rotate NAME.log (engines the demo or %hotswap start started)
                         to NAME.log.1 past this many bytes (default: 10 MiB)
  LIVEPATCH_DEBUG=1      show the traceback of an internal error
  NO_COLOR, TERM=dumb    no colour
  CC                     the C compiler for native slots (default: cc)

example:
  livepatch engine --name rules --traffic 20 &
  livepatch load livepatch/examples/rules/spam_v2.py && livepatch check spam@2
"""


def _add_command_verbs(sub: Any) -> None:
    """One subcommand per command of :mod:`livepatch.commands` (``cli`` ones),
    with its arguments, options (defaults in their help) and examples."""
    import argparse

    from .commands.spec import COMMANDS, ArgKind, command_names

    for name in command_names(aliases=False):
        spec = COMMANDS[name]
        if not spec.cli:
            continue
        shown = spec.all_examples()
        examples = "\n".join(f"  {PROG} {e}" for e in shown)
        vp = sub.add_parser(
            name,
            help=spec.summary,
            description=spec.full_description(),
            epilog=f"example{'s' * (len(shown) > 1)}:\n{examples}" if examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for arg in spec.args:
            what = {
                ArgKind.VERSION: "a version id, e.g. spam@2",
                ArgKind.SLOT: "a slot name, e.g. spam",
                ArgKind.FILE: "a rule file (.py; .c or .so for a native slot)",
                ArgKind.TARGET: "SLOT.SYMBOL (active version) or SLOT@N.SYMBOL",
                ArgKind.JSON: "an argument as a JSON value",
                ArgKind.COMMAND: "a command",
            }.get(arg.kind, arg.metavar)
            nargs = "*" if arg.repeat else "?" if arg.optional else None
            vp.add_argument(arg.dest, metavar=arg.metavar, nargs=nargs, help=what)
        for option in spec.options:
            if option.kind is ArgKind.SWITCH:
                vp.add_argument(
                    option.flag, dest=f"opt_{option.dest}", action="store_true", help=option.help
                )
                continue
            vp.add_argument(
                option.flag, dest=f"opt_{option.dest}", metavar=option.metavar, help=option.help
            )
        if not spec.fleet_only:
            vp.add_argument(
                "--existing", metavar="NAME", help="engine name (default: the only one)"
            )
        vp.add_argument("--json", action="store_true", help="machine-readable output (errors too)")
        vp.set_defaults(func=run_verb)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``livepatch`` command."""
    import argparse

    parser_class = _parser_class()
    parser = parser_class(
        prog=PROG,
        description="Hot-swap versioned rule modules inside a running Python process.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(
        dest="verb", metavar="COMMAND", required=True, parser_class=parser_class
    )

    p = sub.add_parser("engine", help="run an engine (the bundled spam demo by default)")
    p.add_argument("--name", default="rules", help="engine name (default: rules)")
    p.add_argument(
        "--state-dir",
        help="keep sources and the journal here; a restart restores the active versions",
    )
    p.add_argument(
        "--recover",
        action="store_true",
        help="start on a damaged journal: keep the records before the damage and set the "
        "rest aside in a file (or begin a new journal if it was lost)",
    )
    p.add_argument(
        "--load-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time limit for a new module body in quarantine (default: 10)",
    )
    p.add_argument(
        "--load-memory",
        type=int,
        default=1024,
        metavar="MB",
        help="address-space limit for a new module body in quarantine (default: 1024)",
    )
    p.add_argument(
        "--no-quarantine", action="store_true", help="run new module bodies only in-process"
    )
    # Defaults live in livepatch.callpool (imported only by the engine).
    p.add_argument(
        "--call-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="deadline of a rule call over the socket (default: 5)",
    )
    p.add_argument(
        "--call-workers",
        type=_positive(int),
        metavar="N",
        help="threads for rule calls over the socket (default: 8)",
    )
    p.add_argument(
        "--switch-interval",
        type=_positive(float),
        metavar="SECONDS",
        help=f"the interpreter's GIL switch interval (default: {SWITCH_INTERVAL_S:g})",
    )
    p.add_argument(
        "--call-queue",
        type=_positive(int, allow_zero=True),
        metavar="N",
        help="calls waiting for a thread before 'busy' (default: 64)",
    )
    p.add_argument(
        "--slot", action="append", metavar="NAME=module:Protocol", help="add a slot (repeatable)"
    )
    p.add_argument(
        "--load", action="append", metavar="SLOT=FILE", help="load, check and swap a file"
    )
    p.add_argument("--listen", metavar="unix|tcp://HOST:PORT", help="transport (default: unix)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback TCP address")
    p.add_argument("--traffic", type=float, metavar="RATE", help="synthetic demo calls per second")
    p.set_defaults(func=_cmd_engine)

    p = sub.add_parser("demo", help="an engine with the demo rules, live traffic and a tour")
    p.add_argument("--rate", type=float, default=50.0, help="demo calls per second")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="measure livepatch against a direct call and its peers (table + JSON)",
        description="Measure the hot path (timed, and in instructions under callgrind), swaps "
        "under load, the control socket under 8 calling clients, load + check time, memory over "
        "load/unload cycles, importlib.reload, IPython autoreload and jurigged next to "
        "livepatch, and the time from a file save to the new code serving (load --watch "
        "--swap, jurigged, autoreload) with what each does with a broken save, side by side "
        "in one run. Exit 1 only when a correctness goal is missed.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=(
            "small counts, as CI runs it; a section named with --section also counts "
            "its instructions under valgrind where it has them (load_check, callgrind, "
            "shadow: minutes)"
        ),
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument(
        "--plot",
        metavar="FILE.svg",
        help="also draw the request latency with and without swaps (swap_under_load) as SVG",
    )
    p.add_argument(
        "--section",
        action="append",
        choices=(
            "hot_path",
            "callgrind",
            "shadow",
            "swap_under_load",
            "control_plane",
            "load_check",
            "memory",
            "fleet",
            "peers",
            "savelive",
        ),
        help="measure only this section (repeatable; default: all)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "shell",
        help="an interactive shell attached to an engine (or a script: -c, stdin)",
        description="Attach to a running engine. With -c, or with commands piped on "
        "stdin, run them in order and stop at the first failure (exit 1; 2 for a "
        "command that cannot be run as written).",
    )
    p.add_argument("--existing", metavar="NAME", help="engine name (default: the only one)")
    p.add_argument(
        "-c",
        dest="commands",
        metavar="COMMANDS",
        help="run these commands (separated by ';' or newlines) and exit",
    )
    p.set_defaults(func=cmd_shell)

    _add_command_verbs(sub)
    from .fleet.cli import add_fleet_arguments

    add_fleet_arguments(sub)  # --fleet/--registry on engine and shell, --fleet N on demo
    return parser


def _unknown_verb(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """ "did you mean" for a misspelled verb (argparse only lists the choices)."""
    import argparse

    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or argv[0].startswith("-"):
        return None
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if first in sub.choices:
        return None
    import difflib

    close = difflib.get_close_matches(first, list(sub.choices), n=1)
    hint = f"did you mean `{PROG} {close[0]}`? " if close else ""
    return f"unknown command {first!r}: {hint}`{PROG} --help` lists the commands"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``livepatch`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    one_shot = _one_shot(argv)
    if one_shot is not None:
        words, existing, as_json = one_shot
        _exit_on_sigterm()
        return _guarded(lambda: _run_words(words, existing, as_json=as_json), as_json)
    parser = build_parser()
    unknown = _unknown_verb(parser, argv)
    if unknown:
        print(f"{PROG}: error: {unknown}", file=sys.stderr)
        return 2
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            # Past the verb's own arguments: its help is the one that says
            # what it takes (argparse's top-level parser would point at its own).
            verb = getattr(args, "verb", None)
            where = f"{PROG} {verb}" if verb else PROG
            raise UsageError(
                f"unrecognized arguments: {' '.join(extra)}; `{where} --help` shows the usage"
            )
    except UsageError as exc:  # argparse's own: a missing argument, a bad value
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if "--json" in argv:
            _emit_error(str(exc), "usage", 2)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    if args.verb != "engine":
        # An engine stops on SIGTERM its own way, once it serves; until then
        # it dies at once, as it always has: unwinding a half-started engine
        # would wait on the threads it has started.
        _exit_on_sigterm()
    return _guarded(lambda: func(args), getattr(args, "json", None) is True)


def _exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``, a service manager) end a front end
    the way Ctrl-C does, through its ``finally`` blocks and context managers,
    so the engines, ZooKeeper servers and helpers it started stop with it;
    by default Python dies at once and leaves them running. ``SystemExit``
    rather than ``KeyboardInterrupt``: the shell takes Ctrl-C as "cancel
    this line" and must not take a SIGTERM so; at a prompt, the prompt is
    asked to exit instead (:mod:`livepatch.stopping`). Not for ``livepatch
    engine`` (see :func:`main`)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # main() called from a thread (tests): signals are not ours
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # an embedding program has its own

    def terminated(signum: int, frame: object) -> None:
        stop_by_signal(signum)  # SystemExit, or a prompt asked to exit

    signal.signal(signal.SIGTERM, terminated)


def _guarded(run: Callable[[], int], as_json: bool) -> int:
    """Run a verb: its errors as one line (and JSON with ``--json``), exit codes."""
    try:
        return run()
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if as_json:
            _emit_error(str(exc), "usage", 2)
        return 2
    except LivepatchError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        if as_json:
            _emit_error(exc.message, exc.kind, 1)
        return 1
    except KeyboardInterrupt:
        # The engine does not know the client gave up: a load or swap it had
        # been sent runs to its end (it was exit 130 and not a word).
        with contextlib.suppress(OSError):
            print(
                f"{PROG}: interrupted; a request already sent may still complete in the "
                f"engine (`{PROG} journal` shows what it did)",
                file=sys.stderr,
                flush=True,
            )
        return 130
    except (Stopped, SignalExit) as exc:  # SIGTERM, SIGHUP: it has unwound
        with contextlib.suppress(OSError):  # a closed terminal takes no line
            print(f"{PROG}: {exc.message}", file=sys.stderr, flush=True)
        return exc.status
    except BrokenPipeError:
        # The reader went away (`livepatch journal | head`): stop quietly, as
        # a tool killed by SIGPIPE does, and keep the exit-time flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as exc:
        if os.environ.get("LIVEPATCH_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug in livepatch; rerun with LIVEPATCH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70
