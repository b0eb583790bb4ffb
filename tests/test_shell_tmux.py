"""``livepatch shell`` in a real terminal: tmux types the keys, we read the screen.

The pipe-input tests cover the logic; this one proves the real thing draws:
the prompt, command output, the bottom toolbar and Tab completion, on a
terminal prompt-toolkit drives itself. It uses a private tmux server (its own
socket), so it never touches anyone's tmux sessions.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess

from livepatch.examples.spam import rule_path

TMUX = shutil.which("tmux")
EXITED = "[shell exited with status "

pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed: the real-terminal shell test needs it"
)


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

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

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
        """Wait for the shell to exit; its exit status (as the pane's sh saw it)."""
        screen = self.wait_for(EXITED, timeout=timeout)
        return int(screen.split(EXITED, 1)[1].split("]", 1)[0])


@pytest.fixture
def terminal(engine_proc: EngineProcess, runtime_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    conf = tmp_path / "tmux.conf"
    # Keep the pane after the program exits so the test can read the screen.
    conf.write_text("set -g remain-on-exit on\nset -g status off\n")
    env = {
        "LIVEPATCH_RUNTIME_DIR": str(runtime_dir),
        "LIVEPATCH_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
    }
    shell = shlex.join(
        ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "livepatch", "shell"]
    )
    # sh reports the exit status on screen: tmux's own pane_dead_status depends
    # on when the tmux server gets around to reaping the process.
    command = f'{shell}; echo "{EXITED}$?]"'

    # Beside the runtime dir: a short, private path (socket paths are limited).
    term = Terminal(runtime_dir.parent / "tmux.sock")
    try:
        term.tmux(
            "-f", str(conf), "new-session", "-d", "-x", "200", "-y", "50", "-s", "lp", command
        )
        yield term
    finally:
        subprocess.run([TMUX or "tmux", "-S", str(term.socket), "kill-server"], capture_output=True)
        term.socket.unlink(missing_ok=True)


def test_shell_in_a_real_terminal(terminal: Terminal) -> None:
    # The prompt, the greeting and the live toolbar.
    terminal.wait_for("rules>", "engine 'rules'", "spam: spam@1", "calls/s")

    terminal.type("status", "Enter")
    terminal.wait_for("slot spam: active spam@1", "* spam@1        active")

    terminal.type(f"load {rule_path('spam_v2.py')}", "Enter")
    terminal.wait_for("loaded spam@2 from spam_v2.py")
    terminal.type("check spam@2", "Enter")
    terminal.wait_for("spam@2: ok, no problems")
    terminal.type("swap spam@2", "Enter")
    screen = terminal.wait_for("spam: spam@1 -> spam@2", "spam: spam@2 ")
    assert "Traceback" not in screen

    # Tab completes the command name in a real terminal.
    terminal.type("rollb", "Tab")
    terminal.wait_for("rules> rollback")
    terminal.type(" spam", "Enter")
    terminal.wait_for("spam: spam@2 -> spam@1")

    terminal.type("quit", "Enter")
    assert terminal.exit_status() == 0
