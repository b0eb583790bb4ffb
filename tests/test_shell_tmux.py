"""``livepatch shell`` in a real terminal: tmux types the keys, we read the screen.

The pipe-input tests cover the logic; this one proves the real thing draws:
the prompt, command output, the bottom toolbar and Tab completion, on a
terminal prompt-toolkit drives itself. It uses a private tmux server (its own
socket), so it never touches anyone's tmux sessions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess
from terminal import Terminal, open_terminal

from livepatch.examples.spam import rule_path


@pytest.fixture
def terminal(engine_proc: EngineProcess, runtime_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    env = {
        "LIVEPATCH_RUNTIME_DIR": str(runtime_dir),
        "LIVEPATCH_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
    }
    argv = [sys.executable, "-m", "livepatch", "shell"]
    with open_terminal(runtime_dir.parent, "lp", argv, env) as term:
        yield term


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
