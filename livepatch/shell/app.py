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
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import ThreadedCompleter
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style

from ..client import Client
from ..render import color_allowed
from .base import PromptShell, history_path, state_home
from .completer import ShellCompleter
from .keys import prompt_key_bindings
from .lexer import CommandLineLexer
from .link import EngineLink
from .monitor import EngineMonitor
from .runner import CommandResult, CommandRunner
from .toolbar import Toolbar
from .watch import watch_application

__all__ = ["Shell", "color_allowed", "history_path", "run_shell", "state_home"]


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


class Shell(PromptShell):
    """An interactive shell attached to one engine."""

    print_style = _STYLE

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
        super().__init__(
            input=input, output=output, history_file=history_file, color=color, greeting=greeting
        )
        self.link = EngineLink(client)
        self.monitor = EngineMonitor(self.link, interval=status_interval)
        self.base_dir = base_dir
        self.runner: CommandRunner = CommandRunner(
            self.link, color=self.color, base_dir=base_dir, monitor=self.monitor, interactive=True
        )
        #: Set while the live ``watch`` view runs.
        self.watching = threading.Event()

    # -- the prompt -------------------------------------------------------------

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
        self.monitor.on_change = lambda _snapshot: self._invalidate()
        return session

    def _message(self) -> StyleAndTextTuples:
        if self.link.lost:
            return [("class:prompt.lost", f"{self.link.name} (disconnected)"), ("", "> ")]
        return [("class:prompt.engine", self.link.name), ("", "> ")]

    # -- the loop's hooks -------------------------------------------------------

    def _start(self) -> None:
        self.monitor.start()

    def _stop(self) -> None:
        self.monitor.stop()

    def _before_line(self) -> None:
        self.runner.width = self.session.output.get_size().columns

    def _after_result(self, result: CommandResult) -> None:
        if result.action == "watch":
            self._watch()
        if result.action == "watch-file":
            self._watch_file(result.data)

    def _after_line(self) -> None:
        # Whatever the command changed should reach the toolbar now.
        self.monitor.request_refresh()

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
        runner = CommandRunner(
            self.link,
            color=color_allowed(stdout or sys.stdout),
            base_dir=self.base_dir,
            interactive=False,
        )
        return self._print_script(runner.run_script(lines), stdout, stderr)


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
