"""The bottom toolbar: engine name, active version per slot, calls per second.

A callable that prompt-toolkit calls on every redraw (the session refreshes
it every second), reading the monitor's latest snapshot only: the toolbar
must never wait on the engine.
"""

from __future__ import annotations

from prompt_toolkit.formatted_text import StyleAndTextTuples

from .monitor import EngineMonitor, Snapshot

__all__ = ["Toolbar", "toolbar_fragments"]

_KEYS_HINT = "Tab complete · F1 help · F5 refresh · Ctrl-D quit"


def toolbar_fragments(engine: str, snapshot: Snapshot) -> StyleAndTextTuples:
    """The toolbar's text for one snapshot, as styled fragments."""
    out: StyleAndTextTuples = [("class:toolbar.engine", f" {engine} ")]
    if not snapshot.connected:
        out.append(("class:toolbar.lost", " disconnected: waiting for the engine to come back "))
    elif snapshot.status is None:
        out.append(("class:toolbar", " connecting… "))
    else:
        for slot in snapshot.slots:
            name = slot["name"]
            active = slot["active"] or "-"
            out.append(("class:toolbar", f" {name}: "))
            out.append(("class:toolbar.active", active))
            out.append(("class:toolbar", f" {snapshot.slot_rate(name):.1f} calls/s "))
        if not snapshot.slots:
            out.append(("class:toolbar", " no slots "))
    out.append(("class:toolbar.keys", f"  {_KEYS_HINT}"))
    return out


class Toolbar:
    """``bottom_toolbar`` for the prompt session."""

    def __init__(self, engine: str, monitor: EngineMonitor) -> None:
        self.engine = engine
        self.monitor = monitor

    def __call__(self) -> StyleAndTextTuples:
        """The toolbar as it should look now."""
        return toolbar_fragments(self.engine, self.monitor.latest())

    def text(self) -> str:
        """The toolbar as plain text (for tests and logs)."""
        return "".join(text for _style, text, *_ in self())
