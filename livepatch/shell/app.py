"""The shell: a prompt-toolkit session around the command runner.

:class:`Shell` puts the pieces together: the prompt (history in the user's
state directory, completion off the UI thread, command-line highlighting, a
live bottom toolbar, key bindings), the loop that hands each line to the
:class:`~.runner.CommandRunner` and prints its results, and the script mode
behind ``livepatch shell -c`` and piped stdin. The shell takes ``input`` and
``output`` so tests drive it with ``create_pipe_input()`` and
``DummyOutput()``; every result is also kept in :attr:`Shell.transcript`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import ThreadedCompleter
from prompt_toolkit.formatted_text import ANSI, StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style

from ..client import Client
from ..render import color_allowed
from .completer import ShellCompleter
from .keys import prompt_key_bindings
from .lexer import CommandLineLexer
from .link import EngineLink
from .monitor import EngineMonitor, Snapshot
from .runner import CommandResult, CommandRunner
from .toolbar import Toolbar
from .watch import watch_application

__all__ = ["Shell", "color_allowed", "history_path", "run_shell", "state_home"]

_RED = "\x1b[31m"
_RESET = "\x1b[0m"

_STYLE = Style.from_dict(
    {
        "cmd": "bold ansigreen",
        "cmd.unknown": "ansired",
        "option": "ansicyan",
        "version": "ansimagenta",
        "slot": "ansiblue",
        "json": "ansiyellow",
        "number": "ansiyellow",
        "path": "underline",
        "separator": "bold",
        "comment": "italic",
        "prompt.engine": "bold ansicyan",
        "prompt.lost": "bold ansired",
        "toolbar.engine": "bold",
        "toolbar.active": "bold",
        "toolbar.lost": "bold",
    }
)


def state_home() -> Path:
    """Where the shell keeps its state: ``$LIVEPATCH_STATE_HOME``, else
    ``$XDG_STATE_HOME/livepatch``, else ``~/.local/state/livepatch``."""
    explicit = os.environ.get("LIVEPATCH_STATE_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "livepatch"


def history_path() -> Path:
    """The shell's history file."""
    return state_home() / "history"


class Shell:
    """An interactive shell attached to one engine."""

    def __init__(
        self,
        client: Client,
        *,
        input: Input | None = None,
        output: Output | None = None,
        history_file: Path | None = None,
        color: bool | None = None,
        base_dir: Path | None = None,
        greeting: str | None = None,
        status_interval: float = 1.0,
    ) -> None:
        self.link = EngineLink(client)
        self.monitor = EngineMonitor(self.link, interval=status_interval)
        self.input = input
        self.output = output
        self.base_dir = base_dir
        # Tests pass an output; a real terminal is judged by stdout.
        self.color = (
            color
            if color is not None
            else color_allowed(None if output is not None else sys.stdout)
        )
        self.runner = CommandRunner(
            self.link, color=self.color, base_dir=base_dir, monitor=self.monitor, interactive=True
        )
        self.history_file = history_file
        self.greeting = greeting
        #: Every result shown, in order (what tests read instead of bytes).
        self.transcript: list[CommandResult] = []
        #: Set while the live ``watch`` view runs.
        self.watching = threading.Event()
        self._session: PromptSession[str] | None = None
        self._history_note: str | None = None

    # -- the prompt -------------------------------------------------------------

    @property
    def session(self) -> PromptSession[str]:
        """The prompt session, built on first use."""
        if self._session is None:
            self._session = self._build_session()
        return self._session

    def _history(self) -> History:
        path = self.history_file or history_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.touch(mode=0o600, exist_ok=True)
        except OSError as exc:
            self._history_note = (
                f"note: history is not saved ({path.parent}: {exc.strerror or exc})"
            )
            return InMemoryHistory()
        return FileHistory(str(path))

    def _build_session(self) -> PromptSession[str]:
        completer = ShellCompleter(self.monitor, base_dir=lambda: self.base_dir)
        lexer = CommandLineLexer(slots=lambda: self.monitor.latest().slot_names())
        session: PromptSession[str] = PromptSession(
            message=self._message,
            history=self._history(),
            completer=ThreadedCompleter(completer),
            complete_while_typing=True,
            lexer=lexer,
            auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=Toolbar(self.link.name, self.monitor),
            refresh_interval=1.0,
            key_bindings=prompt_key_bindings(refresh=self.monitor.request_refresh),
            style=_STYLE,
            include_default_pygments_style=False,
            input=self.input,
            output=self.output,
        )
        self.monitor.on_change = self._on_monitor_change
        return session

    def _message(self) -> StyleAndTextTuples:
        if self.link.lost:
            return [("class:prompt.lost", f"{self.link.name} (disconnected)"), ("", "> ")]
        return [("class:prompt.engine", self.link.name), ("", "> ")]

    def _on_monitor_change(self, snapshot: Snapshot) -> None:
        # From the sampling thread: invalidate() is thread-safe and a no-op
        # while no prompt is showing.
        if self._session is not None:
            self._session.app.invalidate()

    # -- output -----------------------------------------------------------------

    def _print(self, text: str) -> None:
        output = self.session.output
        if self.color:
            print_formatted_text(ANSI(text), output=output, style=_STYLE)
        else:
            # Straight to the terminal: no escape codes at all, and write()
            # turns any stray ESC from the engine into "?".
            output.write(text + "\n")
            output.flush()

    def show(self, result: CommandResult) -> None:
        """Record a result and print it: output, then the error line."""
        self.transcript.append(result)
        if result.text:
            self._print(result.text)
        if result.error:
            line = f"error: {result.error}"
            self._print(f"{_RED}{line}{_RESET}" if self.color else line)

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Prompt, run, print, until ``quit`` or Ctrl-D. Returns 0."""
        session = self.session
        if self._history_note:
            self._print(self._history_note)
        if self.greeting:
            self._print(self.greeting)
        self.monitor.start()
        try:
            while True:
                try:
                    line = session.prompt()
                except KeyboardInterrupt:
                    continue  # Ctrl-C abandons the line, as in any shell
                except EOFError:
                    return 0
                self.runner.width = self.session.output.get_size().columns
                try:
                    for result in self.runner.iter_line(line):
                        self.show(result)
                        if result.action == "quit":
                            return 0
                        if result.action == "watch":
                            self._watch()
                        if result.action == "watch-file":
                            self._watch_file(result.data)
                except KeyboardInterrupt:
                    self._interrupted()
                # Whatever the command changed should reach the toolbar now.
                self.monitor.request_refresh()
        finally:
            self.monitor.stop()

    def _interrupted(self) -> None:
        # The engine's reply may still be on its way: reading it later as the
        # answer to another request would be wrong, so start a new connection.
        self.link.client.close()
        self.link.mark_lost()
        self._print(
            "interrupted: the engine may still complete that request (see `status`, `journal`)"
        )

    def _watch_file(self, watch: Any) -> None:
        """``load FILE --watch``: report every save until Ctrl-C."""
        from ..filewatch import describe_step, watch_until_interrupted

        self._print(f"watching {watch['path']}; Ctrl-C stops")
        watch_until_interrupted(
            self.link.client,
            Path(watch["path"]),
            str(watch["slot"]),
            swap=bool(watch["swap"]),
            emit=lambda step: self._print(describe_step(step, color=self.runner.color)),
        )
        self._print("stopped watching")

    def _watch(self) -> None:
        app = watch_application(
            self.monitor,
            engine=self.link.name,
            color=self.color,
            input=self.session.input,
            output=self.session.output,
            on_start=self.watching.set,
        )
        try:
            app.run()
        except KeyboardInterrupt:
            pass
        finally:
            self.watching.clear()

    # -- scripts ----------------------------------------------------------------

    def run_script(
        self,
        lines: Iterable[str],
        *,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> int:
        """Run commands from ``lines`` in order; stop at the first failure.

        Output goes to ``stdout``, the failing command's one-line error to
        ``stderr``. Returns 0, 1 (a failure, including a check with problems)
        or 2 (a command that could not be run as written).
        """
        out = stdout or sys.stdout
        err = stderr or sys.stderr
        runner = CommandRunner(
            self.link, color=color_allowed(out), base_dir=self.base_dir, interactive=False
        )
        code = 0
        for result in runner.run_script(lines):
            self.transcript.append(result)
            if result.text:
                print(result.text, file=out, flush=True)
            if result.error:
                print(f"livepatch: {result.command}: {result.error}", file=err, flush=True)
            code = result.exit_code
        return code


def run_shell(args: argparse.Namespace) -> int:
    """``livepatch shell``: interactive on a terminal, a script otherwise."""
    if getattr(args, "fleet", None):
        from ..fleet.shell import run_fleet_shell

        return run_fleet_shell(args)
    client = Client.connect(args.existing, client_name="livepatch-shell")
    with client:
        if args.commands is not None:
            return Shell(client).run_script(args.commands.splitlines())
        if not sys.stdin.isatty():
            return Shell(client).run_script(sys.stdin)
        slots = ", ".join(client.hello.get("slots") or []) or "none"
        greeting = (
            f"livepatch shell: engine {client.info.name!r} (pid {client.info.pid}), "
            f"slots: {slots}. `help` lists the commands; Tab completes."
        )
        return Shell(client, greeting=greeting).run()
