"""Syntax highlighting of the command line as it is typed.

A prompt-toolkit :class:`~prompt_toolkit.lexers.Lexer` that marks each word
with a style class (``class:cmd``, ``class:cmd.unknown``, ``class:version``
...) and leaves colours to the style sheet, so ``NO_COLOR`` and dumb
terminals only change the style, never the lexer. It is pure: it never asks
the engine anything (it runs on the UI thread at every keystroke); slot names
come from a callable that returns what is already cached.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Final

from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.lexers import Lexer

from .commands import COMMANDS, VERSION_ID

__all__ = ["CommandLineLexer", "classify_words"]

# A word is a run of quoted parts and plain characters; an unclosed quote runs
# to the end of the line (the user is still typing it).
_TOKEN: Final = re.compile(
    r"""(?P<space>\s+)|(?P<sep>;)|(?P<word>(?:'[^']*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$)|[^\s;'"])+)"""
)
_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?")


def _word_style(word: str, command: str | None, slots: Collection[str]) -> str:
    if command is None:
        return "class:cmd" if word in COMMANDS else "class:cmd.unknown"
    if word in COMMANDS and COMMANDS.get(command) is COMMANDS["help"]:
        return "class:cmd"
    if word.startswith("--"):
        return "class:option"
    if word[0] in "'\"{[":
        return "class:json"
    if VERSION_ID.fullmatch(word) or VERSION_ID.fullmatch(word.partition(".")[0]):
        return "class:version"
    if word in slots or word.partition(".")[0] in slots:
        return "class:slot"
    if _NUMBER.fullmatch(word):
        return "class:number"
    if "/" in word or word.endswith((".py", ".c")):
        return "class:path"
    return "class:word"


def classify_words(line: str, slots: Collection[str] = ()) -> StyleAndTextTuples:
    """One line of command text as (style, text) fragments."""
    fragments: StyleAndTextTuples = []
    if line.lstrip().startswith("#"):
        return [("class:comment", line)]
    command: str | None = None  # the current command's name, once seen
    pos = 0
    for match in _TOKEN.finditer(line):
        if match.start() > pos:  # cannot happen with this grammar; keep text intact anyway
            fragments.append(("", line[pos : match.start()]))
        text = match.group()
        if match.lastgroup == "space":
            fragments.append(("", text))
        elif match.lastgroup == "sep":
            fragments.append(("class:separator", text))
            command = None
        else:
            fragments.append((_word_style(text, command, slots), text))
            command = text if command is None else command
        pos = match.end()
    if pos < len(line):
        fragments.append(("", line[pos:]))
    return fragments


class CommandLineLexer(Lexer):
    """Highlights commands, options, version ids, slots, JSON, paths."""

    def __init__(self, slots: Callable[[], Collection[str]] = lambda: ()) -> None:
        self.slots = slots

    def lex_document(self, document: Document) -> Callable[[int], StyleAndTextTuples]:
        """Style each line of the buffer on demand."""
        lines = document.lines
        slots = frozenset(self.slots())

        def get_line(lineno: int) -> StyleAndTextTuples:
            if 0 <= lineno < len(lines):
                return classify_words(lines[lineno], slots)
            return []

        return get_line
