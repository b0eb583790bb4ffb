"""Tab completion: commands, options, file paths, slots, versions, rule symbols.

What to offer follows from the command table (:mod:`.commands`): the kind of
the argument under the cursor says whether to list version ids, slot names or
files. Names come from the engine through the monitor's cached status, which
may need a round trip, so the shell wraps this completer in prompt-toolkit's
``ThreadedCompleter``: completions are computed off the UI thread and typing
never waits on the socket.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from .commands import COMMANDS, ArgKind, command_names
from .monitor import EngineMonitor, Snapshot

__all__ = ["WANTED_STATES", "ShellCompleter", "split_partial"]

VERSION_KIND = ArgKind.VERSION


#: The states a version must be in to be worth offering, per (command, argument):
#: `swap` takes only what can become active, `--expect` only the active one.
#: Anything not listed offers every version that is not unloaded.
WANTED_STATES: dict[tuple[str, str], frozenset[str]] = {
    ("swap", "version"): frozenset({"resolved", "retired"}),
    ("swap", "expect"): frozenset({"active"}),
    ("check", "version"): frozenset({"loaded", "resolved", "failed", "active", "retired"}),
    ("purge", "version"): frozenset({"loaded", "resolved", "failed", "retired"}),
    ("unload", "version"): frozenset({"loaded", "resolved", "failed", "retired", "purged"}),
    # `shadow` runs a checked version that is not active.
    ("shadow", "what"): frozenset({"resolved", "retired"}),
}

#: How old the cached status may be when completing (seconds): fresh enough to
#: offer a version loaded a moment ago, without a round trip per keystroke.
STATUS_MAX_AGE = 0.5


def split_partial(text: str) -> tuple[list[str], str]:
    """Split the text before the cursor into finished words and the word
    being typed (``""`` after a space). Tolerates an unclosed quote."""
    segment = _last_segment(text)
    if not segment.strip():
        return [], ""
    ends_in_space = segment[-1].isspace()
    for closing in ("", "'", '"'):
        try:
            words = shlex.split(segment + closing)
        except ValueError:
            continue
        if closing:
            ends_in_space = False  # inside an open quote the word goes on
        break
    else:
        words = segment.split()
    if ends_in_space:
        return words, ""
    return words[:-1], words[-1] if words else ""


def _last_segment(text: str) -> str:
    """The text after the last ``;`` that is not inside quotes."""
    quote: str | None = None
    start = 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            start = i + 1
    return text[start:].lstrip()


class ShellCompleter(Completer):
    """Completes shell command lines (blocking; wrap in ``ThreadedCompleter``)."""

    def __init__(
        self,
        monitor: EngineMonitor | None,
        *,
        base_dir: Callable[[], Path | None] = lambda: None,
    ) -> None:
        self.monitor = monitor
        self.base_dir = base_dir
        self._paths = PathCompleter(
            expanduser=True,
            get_paths=lambda: [str(self.base_dir() or ".")],
            # Rule sources and the folders that lead to them.
            file_filter=lambda name: os.path.isdir(name) or name.endswith((".py", ".c")),
        )

    def _snapshot(self) -> Snapshot | None:
        if self.monitor is None:
            return None
        return self.monitor.fresh(STATUS_MAX_AGE)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        """Completions for the word under the cursor."""
        words, current = split_partial(document.text_before_cursor)
        if not words:
            yield from self._commands(current)
            return
        spec = COMMANDS.get(words[0])
        if spec is None:
            return
        kind: ArgKind | None = None
        dest = ""
        previous = spec.option(words[-1]) if len(words) > 1 else None
        if previous is not None and "=" not in words[-1]:
            kind, dest = previous.kind, previous.dest
        elif current.startswith("-"):
            used = {spec.option(w) for w in words}
            for option in spec.options:
                if option not in used and option.flag.startswith(current):
                    yield Completion(option.flag, -len(current), display_meta=option.help)
            return
        else:
            arg = spec.positional(self._positional_index(words))
            kind, dest = (arg.kind, arg.dest) if arg is not None else (None, "")
        if kind is VERSION_KIND:
            yield from self._versions(current, WANTED_STATES.get((spec.name, dest)))
        elif kind is not None:
            yield from self._complete(kind, current, document)

    @staticmethod
    def _positional_index(words: list[str]) -> int:
        spec = COMMANDS[words[0]]
        index = 0
        skip = False
        for word in words[1:]:
            if skip:
                skip = False
                continue
            option = spec.option(word) if word.startswith("--") else None
            if option is not None:
                skip = "=" not in word
                continue
            index += 1
        return index

    def _complete(self, kind: ArgKind, current: str, document: Document) -> Iterable[Completion]:
        if kind is ArgKind.COMMAND:
            yield from self._commands(current)
        elif kind is ArgKind.FILE:
            yield from self._files(current)
        elif kind is ArgKind.SLOT:
            yield from self._slots(current)
        elif kind is ArgKind.VERSION:
            yield from self._versions(current)
        elif kind is ArgKind.TARGET:
            yield from self._targets(current)

    def _commands(self, current: str) -> Iterable[Completion]:
        for name in command_names():
            if name.startswith(current):
                yield Completion(name, -len(current), display_meta=COMMANDS[name].summary)

    def _files(self, current: str) -> Iterable[Completion]:
        # PathCompleter completes relative to the document it is given; the
        # word being typed is the end of the real document too, so the
        # start positions it returns apply unchanged.
        hidden_wanted = os.path.basename(current).startswith(".")
        for completion in self._paths.get_completions(
            Document(current, len(current)), CompleteEvent(completion_requested=True)
        ):
            # .git, .venv and friends only when asked for with a leading dot.
            if hidden_wanted or not completion.display_text.startswith("."):
                yield completion

    def _slots(self, current: str) -> Iterable[Completion]:
        snapshot = self._snapshot()
        if snapshot is None:
            return
        for slot in snapshot.slots:
            if slot["name"].startswith(current):
                meta = f"active {slot['active'] or '-'}"
                yield Completion(slot["name"], -len(current), display_meta=meta)

    def _versions(self, current: str, states: frozenset[str] | None = None) -> Iterable[Completion]:
        snapshot = self._snapshot()
        if snapshot is None:
            return
        for v in snapshot.versions():
            if states is not None and v["state"] not in states:
                continue
            if v["id"].startswith(current):
                yield Completion(v["id"], -len(current), display_meta=f"{v['state']}")

    def _targets(self, current: str) -> Iterable[Completion]:
        snapshot = self._snapshot()
        if snapshot is None:
            return
        for slot in snapshot.slots:
            # Offer SLOT.SYMBOL first; SLOT@N.SYMBOL once an "@" says which.
            owners = [slot["name"]]
            if "@" in current:
                owners = [v["id"] for v in slot["versions"] if v["state"] != "unloaded"]
            for owner in owners:
                for member in slot["members"]:
                    target = f"{owner}.{member}"
                    if target.startswith(current):
                        yield Completion(target, -len(current), display_meta=slot["interface"])
