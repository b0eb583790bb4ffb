"""Key bindings of the shell's prompt and of the ``watch`` view.

All bindings come from the factory functions here, each handler with a
docstring saying what the key does (``help`` lists them from these).
"""

from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from .commands import COMMANDS, command_names

__all__ = ["describe_bindings", "prompt_key_bindings", "watch_key_bindings"]


def prompt_key_bindings(*, refresh: Callable[[], None]) -> KeyBindings:
    """Bindings added to the prompt's defaults (Emacs keys, history search).

    ``refresh`` asks for a new engine status without blocking.
    """
    kb = KeyBindings()

    @Condition
    def line_empty() -> bool:
        from prompt_toolkit.application.current import get_app

        return not get_app().current_buffer.text

    @kb.add("c-d", filter=line_empty)
    def _quit(event: KeyPressEvent) -> None:
        """Ctrl-D on an empty line: leave the shell (the engine keeps running)."""
        event.app.exit(result="quit")

    @kb.add("f1")
    def _help(event: KeyPressEvent) -> None:
        """F1: help on the command being typed (the line stays as typed)."""
        from prompt_toolkit.application import run_in_terminal

        words = event.current_buffer.text.split()
        spec = COMMANDS.get(words[0]) if words else None
        if spec is not None:
            text = spec.help_text()
        else:
            width = max(len(s.usage()) for s in COMMANDS.values())
            names = command_names(aliases=False)
            text = "\n".join(
                f"  {COMMANDS[n].usage():<{width}}  {COMMANDS[n].summary}" for n in names
            )
        # Printed above the prompt; the half-typed line is kept.
        run_in_terminal(lambda: print(text))

    @kb.add("tab")
    def _tab(event: KeyPressEvent) -> None:
        """Tab: complete the word under the cursor (also right after fast typing)."""
        from prompt_toolkit.completion import CompleteEvent, get_common_complete_suffix

        buffer = event.current_buffer
        state = buffer.complete_state
        document = buffer.document
        if state is not None and state.original_document.text == document.text:
            if len(state.completions) == 1 and state.complete_index is None:
                buffer.apply_completion(state.completions[0])
            else:
                buffer.complete_next()
            return
        # No menu for this text yet: the threaded completer may still be busy
        # with the text of a keystroke ago (a paste, a laggy ssh: "sy" and Tab
        # in one burst), and prompt-toolkit would drop Tab's request. Tab is
        # an explicit request, so complete now.
        found = list(
            buffer.completer.get_completions(document, CompleteEvent(completion_requested=True))
        )
        if len(found) == 1:
            buffer.apply_completion(found[0])
            return
        common = get_common_complete_suffix(document, found) if found else ""
        if common:
            buffer.insert_text(common)
        buffer.start_completion(select_first=False)

    @kb.add("f5")
    def _refresh(event: KeyPressEvent) -> None:
        """F5: refresh the toolbar and the names completion offers, now."""
        refresh()

    @kb.add("c-space")
    def _complete(event: KeyPressEvent) -> None:
        """Ctrl-Space: open the completion menu (same as Tab)."""
        buffer = event.current_buffer
        if buffer.complete_state:
            buffer.complete_next()
        else:
            buffer.start_completion(select_first=False)

    return kb


def watch_key_bindings() -> KeyBindings:
    """Bindings of the live ``watch`` view."""
    kb = KeyBindings()

    @kb.add("<any>")
    @kb.add("c-c")
    def _leave(event: KeyPressEvent) -> None:
        """Any key: leave the live view and return to the prompt."""
        event.app.exit()

    return kb


def describe_bindings(kb: KeyBindings) -> list[tuple[str, str]]:
    """(keys, first docstring line) of each handler, for help texts."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for binding in kb.bindings:
        doc = (binding.handler.__doc__ or "").strip().splitlines()
        if not doc or doc[0] in seen:
            continue
        seen.add(doc[0])
        keys, _, what = doc[0].partition(": ")
        out.append((keys, what))
    return out
