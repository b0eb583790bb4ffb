"""What every livepatch prompt has in common: :class:`PromptShell`.

The engine shell (:class:`~livepatch.shell.app.Shell`) and the fleet shell
(:class:`~livepatch.fleet.shell.FleetShell`) differ in their commands,
completion, toolbar and what a few results make them do (``watch``). They
share the rest, defined here once:

- the prompt session, built on first use from :meth:`PromptShell._build_session`,
  with history in the user's state directory (in memory, with a note, when
  that cannot be written);
- printing results (ANSI colour or plain text, a one-line error after);
- the loop: prompt, run the line, show each result, ``quit`` or Ctrl-D ends
  it, Ctrl-C abandons the line (and, during a command, the command);
- the script mode behind ``-c`` and piped stdin, stopping at the first
  failure with the command layer's exit codes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import ANSI
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import BaseStyle

from ..commands.runner import CommandResult, LineRunner
from ..render import color_allowed
from ..runtime import state_home
from ..stopping import raise_if_stopped

__all__ = ["PromptShell", "history_path", "state_home"]

_RED = "\x1b[31m"
_RESET = "\x1b[0m"


class _SavedHistory(FileHistory):
    """prompt_toolkit's file history, which stops saving when its file cannot
    be read or written (a full disk, a directory in its place) instead of
    showing a traceback on every line; :attr:`problem` says why, once."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self._path = filename
        self.problem: str | None = None
        self._broken = False

    def _fail(self, exc: OSError) -> None:
        if not self._broken:
            self._broken = True
            why = exc.strerror or str(exc)
            self.problem = f"note: history is no longer saved ({self._path}: {why})"

    def load_history_strings(self) -> Iterable[str]:
        try:
            return list(super().load_history_strings())
        except OSError as exc:
            self._fail(exc)
            return []

    def store_string(self, string: str) -> None:
        if self._broken:
            return
        try:
            super().store_string(string)
        except OSError as exc:
            self._fail(exc)


def history_path() -> Path:
    """The shell's history file."""
    return state_home() / "history"


class PromptShell:
    """The shared half of an interactive shell (see the module doc).

    A subclass sets :attr:`runner` and builds its session in
    :meth:`_build_session` (calling :meth:`_history`); it may react to a
    result in :meth:`_after_result`, and start and stop a background sampler
    in :meth:`_start`/:meth:`_stop`.
    """

    #: The style of printed ANSI text (None: prompt-toolkit's default).
    print_style: BaseStyle | None = None
    runner: LineRunner

    def __init__(
        self,
        *,
        input: Input | None,
        output: Output | None,
        history_file: Path | None,
        color: bool | None,
        greeting: str | None,
    ) -> None:
        self.input = input
        self.output = output
        # Tests pass an output; a real terminal is judged by stdout.
        self.color = (
            color
            if color is not None
            else color_allowed(None if output is not None else sys.stdout)
        )
        self.history_file = history_file
        self.greeting = greeting
        #: Every result shown, in order (what tests read instead of bytes).
        self.transcript: list[CommandResult] = []
        self._session: PromptSession[str] | None = None
        self._history_note: str | None = None
        self._saved: _SavedHistory | None = None

    # -- the prompt -------------------------------------------------------------

    @property
    def session(self) -> PromptSession[str]:
        """The prompt session, built on first use."""
        if self._session is None:
            self._session = self._build_session()
        return self._session

    def _build_session(self) -> PromptSession[str]:
        raise NotImplementedError

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
        self._saved = _SavedHistory(str(path))
        return self._saved

    def _invalidate(self) -> None:
        # From a sampling thread: invalidate() is thread-safe and a no-op
        # while no prompt is showing.
        if self._session is not None:
            self._session.app.invalidate()

    # -- output -----------------------------------------------------------------

    def _print(self, text: str) -> None:
        output = self.session.output
        if self.color:
            print_formatted_text(ANSI(text), output=output, style=self.print_style)
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
        self._start()
        try:
            while True:
                try:
                    line = session.prompt()
                except KeyboardInterrupt:
                    continue  # Ctrl-C abandons the line, as in any shell
                except EOFError:
                    return 0
                raise_if_stopped()  # a signal came as the line was entered
                self._tell_history_problem()
                self._before_line()
                try:
                    for result in self.runner.iter_line(line):
                        self.show(result)
                        if result.action == "quit":
                            return 0
                        self._after_result(result)
                except KeyboardInterrupt:
                    self._interrupted()
                self._after_line()
        finally:
            self._stop()

    def _tell_history_problem(self) -> None:
        saved = self._saved
        if saved is not None and saved.problem:
            problem, saved.problem = saved.problem, None
            self._print(problem)

    def _start(self) -> None:
        """Before the first prompt (start a background sampler)."""

    def _stop(self) -> None:
        """When the loop ends, however it ends."""

    def _before_line(self) -> None:
        """Before a line runs (e.g. tell the runner the terminal's width)."""

    def _after_result(self, result: CommandResult) -> None:
        """What a result asks the shell to do (a live view, a watch)."""

    def _after_line(self) -> None:
        """After a line ran (what it changed should reach the toolbar now)."""

    def _interrupted(self) -> None:
        self._print("interrupted")

    # -- scripts ----------------------------------------------------------------

    def _print_script(
        self, results: Iterable[CommandResult], stdout: TextIO | None, stderr: TextIO | None
    ) -> int:
        """Print a script's results: output to ``stdout``, the failing
        command's one-line error to ``stderr``; the last exit code."""
        out = stdout or sys.stdout
        err = stderr or sys.stderr
        code = 0
        for result in results:
            self.transcript.append(result)
            if result.text:
                print(result.text, file=out, flush=True)
            if result.error:
                print(f"livepatch: {result.command}: {result.error}", file=err, flush=True)
            code = result.exit_code
        return code
