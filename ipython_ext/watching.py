"""``%hotswap load FILE --watch``: save-to-live in a notebook.

The loop (:func:`livepatch.filewatch.watch_file`) runs on a thread of its
own with its own connection to the session's engine, so the kernel stays
free for the next cell. Each save's report replaces the previous ones in
the output of the cell that started the watch (a display handle updated in
place); ``%hotswap unwatch`` stops it.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

from livepatch.client import Client
from livepatch.filewatch import WatchStep, describe_step, watch_file

__all__ = ["NotebookWatch"]

#: How many reports the cell shows (the newest last).
SHOWN = 8


class NotebookWatch:
    """One file watched for one slot; ``steps`` holds every report so far."""

    def __init__(self, client: Client, path: Path, slot: str, *, swap: bool) -> None:
        self.path = path
        self.slot = slot
        self.swap = swap
        self.steps: list[WatchStep] = []
        self.error: str | None = None
        self._client = client
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._handle: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"livepatch-watch-{path.name}", daemon=True
        )

    def start(self, handle: Any = None) -> None:
        """Start watching; ``handle`` (an IPython display handle) is updated per save."""
        self._handle = handle
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching and close the connection."""
        self._stop.set()
        self._thread.join(timeout)
        self._client.close()

    @property
    def label(self) -> str:
        """What ``%hotswap unwatch`` names when it stops this watch."""
        return self.path.name

    @property
    def running(self) -> bool:
        """True until :meth:`stop` (or a lost engine) ends the loop."""
        return self._thread.is_alive()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` reports exist (for scripts and tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.steps) >= count, timeout)

    def _run(self) -> None:
        try:
            for step in watch_file(
                self._client, self.path, self.slot, swap=self.swap, stop=self._stop
            ):
                with self._changed:
                    self.steps.append(step)
                    self._changed.notify_all()
                self._show()
        except Exception as exc:  # noqa: BLE001 - the watch ends; the cell says why
            self.error = f"stopped watching: {exc}"
            self._show()

    def _show(self) -> None:
        if self._handle is not None:
            self._handle.update(self)

    # -- display ------------------------------------------------------------------

    def text(self) -> str:
        """The newest reports as text."""
        head = (
            f"watching {self.path.name} for slot {self.slot}"
            f"{' (swapping clean saves in)' if self.swap else ''}"
            f"{'' if self.running or self.error else ' (stopped)'}; `%hotswap unwatch` stops it"
        )
        lines = [head, *(describe_step(s) for s in self.steps[-SHOWN:])]
        if self.error:
            lines.append(self.error)
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_html_(self) -> str:
        return (
            '<pre class="lp-watch" style="white-space:pre-wrap;margin:2px 0;color:inherit">'
            f"{html.escape(self.text())}</pre>"
        )

    def __repr__(self) -> str:
        return f"<NotebookWatch {self.path.name} -> {self.slot}: {len(self.steps)} saves>"
