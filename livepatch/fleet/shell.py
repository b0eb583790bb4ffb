"""``livepatch shell --fleet F``: the shell attached to a whole fleet.

The same habits as the engine shell (:mod:`livepatch.shell.app`): a
prompt-toolkit session that takes ``input``/``output`` (tests drive it with
a pipe), history in the user's state directory, completion off the UI
thread, a bottom toolbar that reads a snapshot refreshed in the background
(never a round trip on redraw), and a script mode (``-c``, piped stdin) that
stops at the first failure. The commands are :mod:`.console`'s.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import (
    CompleteEvent,
    Completer,
    Completion,
    PathCompleter,
    ThreadedCompleter,
)
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from ..commands.spec import ArgKind
from ..errors import LivepatchError
from ..render import color_allowed
from ..shell.base import PromptShell
from .console import FLEET_COMMANDS, FleetRunner, FleetSession
from .model import short

__all__ = ["FleetCompleter", "FleetShell", "fleet_toolbar", "run_fleet_shell"]


def fleet_toolbar(label: str, view: dict[str, Any] | None, error: str | None) -> str:
    """The toolbar's text: members by state, the desired versions, the last push."""
    if view is None:
        return f" fleet {label}: {error or 'reading the registry…'} "
    states: dict[str, int] = {}
    for m in view["members"]:
        states[m["state"]] = states.get(m["state"], 0) + 1
    who = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no members"
    converged = sum(1 for m in view["members"] if m.get("converged"))
    desired = " ".join(f"{s}={short(d['sha256'])}" for s, d in view["desired"].items())
    last = ""
    if view["pushes"]:
        p = view["pushes"][-1]
        last = f" · last push {p['slot']}={short(p['sha256'])} {p['outcome']}"
    stale = f" · (stale: {error})" if error else ""
    return (
        f" fleet {label}: {who}; {converged} converged · desired {desired or 'nothing'}"
        f"{last}{stale} · Ctrl-D quit "
    )


class _Monitor:
    """Re-reads the fleet view every ``interval`` seconds in its own thread."""

    def __init__(self, runner: FleetRunner, interval: float) -> None:
        self.runner = runner
        self.interval = interval
        self.view: dict[str, Any] | None = None
        self.error: str | None = None
        self.on_change: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)

    def refresh(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.view, self.error = self.runner.session.view(history=3), None
            except LivepatchError as exc:
                self.error = exc.message
            except Exception as exc:  # noqa: BLE001 - shown in the toolbar, retried
                self.error = f"{type(exc).__name__}: {exc}"
            if self.on_change is not None:
                self.on_change()
            self._wake.wait(self.interval)
            self._wake.clear()


def _kind_at(spec: Any, words: list[str]) -> ArgKind | None:
    """The kind of the word after ``words``: an option's value, or the next positional."""
    positionals = 0
    pending: ArgKind | None = None
    for word in words:
        if pending is not None:
            pending = None  # that word was the option's value
            continue
        if word.startswith("--"):
            option = spec.option(word)
            if option is not None and option.kind is not ArgKind.SWITCH and "=" not in word:
                pending = option.kind
            continue
        positionals += 1
    if pending is not None:
        return pending
    arg = spec.positional(positionals)
    return arg.kind if arg is not None else None


class FleetCompleter(Completer):
    """Commands, options, files (``push``), slots and shas (from the last view)."""

    def __init__(self, views: Any) -> None:
        #: A callable returning the latest fleet view (or ``None``).
        self.views = views
        self._paths = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        """What fits the word under the cursor."""
        from ..shell.completer import split_partial

        words, partial = split_partial(document.text_before_cursor)
        if not words:
            for name in FLEET_COMMANDS:
                if name.startswith(partial):
                    yield Completion(name, -len(partial))
            return
        spec = FLEET_COMMANDS.get(words[0])
        if spec is None:
            return
        if partial.startswith("--"):
            for option in spec.options:
                if option.flag.startswith(partial):
                    yield Completion(option.flag, -len(partial))
            return
        kind = _kind_at(spec, words[1:])
        if kind is ArgKind.FILE:
            yield from self._paths.get_completions(Document(partial), complete_event)
            return
        for candidate in self._candidates(kind):
            if candidate.startswith(partial):
                yield Completion(candidate, -len(partial))

    def _candidates(self, kind: ArgKind | None) -> list[str]:
        view = self.views()
        if kind is ArgKind.COMMAND:
            return list(FLEET_COMMANDS)
        if view is None:
            return []
        if kind is ArgKind.SLOT:
            slots = set(view["desired"])
            for m in view["members"]:
                slots |= set(m.get("active") or {})
            return sorted(slots)
        if kind is ArgKind.VERSION:
            found = {d["sha256"] for d in view["desired"].values()}
            for m in view["members"]:
                found |= {a["sha256"] for a in (m.get("active") or {}).values() if a.get("sha256")}
            return sorted(short(s) for s in found)
        return []


class FleetShell(PromptShell):
    """An interactive shell attached to a fleet."""

    def __init__(
        self,
        session: FleetSession,
        *,
        input: Input | None = None,
        output: Output | None = None,
        history_file: Path | None = None,
        color: bool | None = None,
        base_dir: Path | None = None,
        greeting: str | None = None,
        status_interval: float = 2.0,
    ) -> None:
        super().__init__(
            input=input, output=output, history_file=history_file, color=color, greeting=greeting
        )
        self.runner: FleetRunner = FleetRunner(session, color=self.color, base_dir=base_dir)
        self.monitor = _Monitor(self.runner, status_interval)

    def _latest(self) -> dict[str, Any] | None:
        return self.monitor.view or self.runner.last_view

    def _build_session(self) -> PromptSession[str]:
        session: PromptSession[str] = PromptSession(
            message=self._message,
            history=self._history(),
            completer=ThreadedCompleter(FleetCompleter(self._latest)),
            complete_while_typing=True,
            bottom_toolbar=self.toolbar,
            refresh_interval=1.0,
            input=self.input,
            output=self.output,
        )
        self.monitor.on_change = self._invalidate
        return session

    def _message(self) -> StyleAndTextTuples:
        return [("bold", f"fleet {self.runner.session.fleet}"), ("", "> ")]

    def toolbar(self) -> str:
        """The bottom toolbar as plain text (from the background snapshot)."""
        return fleet_toolbar(self.runner.session.label, self._latest(), self.monitor.error)

    def _start(self) -> None:
        self.monitor.start()

    def _stop(self) -> None:
        self.monitor.stop()

    def _after_line(self) -> None:
        self.monitor.refresh()  # what the command changed reaches the toolbar

    def run_script(
        self, lines: Iterable[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> int:
        """Run commands in order; stop at the first failure (exit 1; 2 for usage)."""
        self.runner.color = color_allowed(stdout or sys.stdout)
        return self._print_script(self.runner.run_script(lines), stdout, stderr)


def run_fleet_shell(args: argparse.Namespace) -> int:
    """``livepatch shell --fleet F [--registry URL] [-c COMMANDS]``."""
    session = FleetSession(args.fleet, getattr(args, "registry", None))
    shell = FleetShell(session)
    if args.commands is not None:
        return shell.run_script(args.commands.splitlines())
    if not sys.stdin.isatty():
        return shell.run_script(sys.stdin)
    started = time.strftime("%H:%M:%S")
    shell.greeting = (
        f"livepatch shell: fleet {session.label} ({started}). `status` shows every member "
        "side by side; `push FILE --slot S` reaches them all; `help` lists the commands."
    )
    return shell.run()
