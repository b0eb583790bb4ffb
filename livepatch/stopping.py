"""Ending a front end from a signal (SIGTERM, a closed terminal's SIGHUP).

A front end must leave through its clean-up, so that the engines, servers
and helpers it started stop with it. The plain way is to raise
``SystemExit`` from the signal handler; but a handler runs between any two
bytecodes, and raised in the middle of prompt_toolkit's event loop it
leaves asyncio to cancel tasks that were cut off half-way (a demo was once
seen waiting there for good after its terminal closed). At a prompt, then,
the running application is asked to exit, in its own loop, with
:class:`Stopped`; it unwinds as it does when it ends normally, and the
front end's ``finally`` blocks run after it. Elsewhere ``SystemExit`` is
raised at once. Either way the exit status is ``128 + signum``.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["SignalExit", "Stopped", "raise_if_stopped", "stop_by_signal"]

#: The signal that asked this front end to stop, if any (see
#: :func:`raise_if_stopped`).
_requested: int | None = None


class _BySignal:
    """What a stop by signal ``signum`` says (``message``) and exits with
    (``status``, ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        self.message = f"stopped by {signal.Signals(signum).name}"
        self.status = 128 + signum


class Stopped(_BySignal, Exception):
    """A front end was asked to stop by a signal at a prompt. An
    ``Exception``, not a ``BaseException``: asyncio lets an ordinary
    exception travel through the application's future, where a
    ``SystemExit`` would break out of the event loop again."""

    def __init__(self, signum: int) -> None:
        _BySignal.__init__(self, signum)
        Exception.__init__(self, self.message)


class SignalExit(_BySignal, SystemExit):
    """A front end stopped by a signal where no prompt ran: ``SystemExit``
    with ``128 + signum``, unwinding through every ``finally`` on the way."""

    def __init__(self, signum: int) -> None:
        _BySignal.__init__(self, signum)
        SystemExit.__init__(self, self.status)


def _running_app() -> Any:
    # Never import prompt_toolkit for this: a verb that has not imported
    # it has no prompt running.
    current = sys.modules.get("prompt_toolkit.application.current")
    if current is None:
        return None
    app = current.get_app_or_none()
    if app is None or not app.is_running or app.loop is None or app.loop.is_closed():
        return None
    return app


def stop_by_signal(signum: int) -> None:
    """End the front end for signal ``signum``; call from its handler.

    Ignores further ``signum`` signals first: a second one must not cut the
    clean-up short. Raises ``SystemExit`` unless a prompt is running, which
    is asked to exit with :class:`Stopped` instead (then it returns).
    """
    global _requested
    signal.signal(signum, signal.SIG_IGN)
    # Kept, for code that swallows what a handler raises (watchfiles turns
    # it into a KeyboardInterrupt): :func:`raise_if_stopped` raises it again.
    _requested = signum
    app = _running_app()
    if app is None:
        raise SignalExit(signum)

    def ask() -> None:
        future = app.future
        if future is not None and not future.done():
            app.exit(exception=Stopped(signum))
        # Else the prompt is returning a line: the shell's loop calls
        # :func:`raise_if_stopped` before it runs it.

    app.loop.call_soon_threadsafe(ask)


def raise_if_stopped() -> None:
    """:class:`SignalExit` if a signal asked to stop (a shell calls this after
    every prompt, before it runs the line; a loop whose library swallowed
    the handler's exception calls it when that loop ends)."""
    if _requested is not None:
        raise SignalExit(_requested)
