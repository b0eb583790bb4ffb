"""The live ``watch`` view: calls per version, redrawn until a key is pressed.

A small non-full-screen prompt-toolkit application that redraws from the
monitor's latest snapshot (sampled in the background), so it shows traffic
moving without ever blocking on the socket; its last frame stays on screen
when it exits.
"""

from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import ANSI, AnyFormattedText
from prompt_toolkit.input import Input
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import Output

from .keys import watch_key_bindings
from .monitor import EngineMonitor
from .runner import render_watch

__all__ = ["WATCH_REFRESH", "watch_application"]

#: Seconds between redraws of the live view.
WATCH_REFRESH = 0.5


def watch_application(
    monitor: EngineMonitor,
    *,
    engine: str,
    color: bool,
    input: Input | None = None,
    output: Output | None = None,
    on_start: Callable[[], None] | None = None,
) -> Application[None]:
    """The live view as an application; ``run()`` it, any key ends it."""

    def text() -> AnyFormattedText:
        snapshot = monitor.latest()
        if not snapshot.connected:
            body = f"engine {engine!r} is gone: waiting for it to come back"
        else:
            body = render_watch(
                dict(snapshot.status) if snapshot.status else None,
                dict(snapshot.rates),
                color=color,
                title=f"engine {engine}: live calls (any key returns to the prompt)",
            )
        return ANSI(body)

    app: Application[None] = Application(
        layout=Layout(HSplit([Window(FormattedTextControl(text), dont_extend_height=True)])),
        key_bindings=watch_key_bindings(),
        refresh_interval=WATCH_REFRESH,
        full_screen=False,
        input=input,
        output=output,
    )
    if on_start is not None:
        app.pre_run_callables.append(on_start)
    return app
