"""A real terminal for tests: a private tmux server types keys and reads the screen.

Each terminal runs on its own tmux socket beside the test's runtime dir, so a
test never touches anyone's tmux sessions. tmux is a part the terminal tests
need: when it is missing they fail (``.ci/run`` installs it), never skip.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
#: What the pane's sh prints when the program exits: ``[... status N]``.
EXITED = "[shell exited with status "


class Terminal:
    """One tmux session on a private server."""

    def __init__(self, socket: Path, name: str = "lp") -> None:
        self.socket = socket
        self.name = name

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        done = subprocess.run(
            [TMUX, "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def type(self, text: str, *keys: str) -> None:
        """Type ``text`` literally, then press ``keys`` (``Enter``, ``Tab``)."""
        if text:
            self.tmux("send-keys", "-t", self.name, "-l", text)
        if keys:
            self.tmux("send-keys", "-t", self.name, *keys)

    def screen(self, *, escapes: bool = False) -> str:
        """The visible screen; with ``escapes`` its colours as escape codes too."""
        return self.tmux("capture-pane", *(("-e",) if escapes else ()), "-p", "-t", self.name)

    def wait_for(self, *needles: str, timeout: float = 15.0) -> str:
        """Poll the screen until it shows every needle; fail with the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(n in screen for n in needles):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"the screen never showed {needles!r}; it shows:\n{screen}")
            threading.Event().wait(0.05)

    def exit_status(self, timeout: float = 10.0) -> int:
        """Wait for the program to exit; its exit status (as the pane's sh saw it)."""
        screen = self.wait_for(EXITED, timeout=timeout)
        return int(screen.split(EXITED, 1)[1].split("]", 1)[0])


@contextmanager
def open_terminal(
    beside: Path,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    size: tuple[int, int] = (200, 50),
) -> Iterator[Terminal]:
    """Run ``argv`` with ``env`` in a new ``columns x lines`` terminal whose
    tmux socket lives in ``beside`` (a short path: socket paths are limited).

    The pane stays after the program exits, and the pane's sh prints the exit
    status (tmux's own ``pane_dead_status`` depends on when its server reaps).
    """
    if TMUX is None:
        pytest.fail("tmux is needed for the terminal tests (.ci/run installs it)")
    conf = beside / f"{name}.tmux.conf"
    conf.write_text("set -g remain-on-exit on\nset -g status off\n")
    command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *argv])
    if cwd is not None:
        command = f"cd {shlex.quote(str(cwd))} && {command}"
    term = Terminal(beside / "tmux.sock", name=name)
    columns, lines = size
    try:
        term.tmux(
            "-f", str(conf), "new-session", "-d", "-x", str(columns), "-y", str(lines),
            "-s", name, f'{command}; echo "{EXITED}$?]"',
        )  # fmt: skip
        yield term
    finally:
        subprocess.run([TMUX, "-S", str(term.socket), "kill-server"], capture_output=True)
        term.socket.unlink(missing_ok=True)
