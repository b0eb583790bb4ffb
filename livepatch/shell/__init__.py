"""``livepatch shell``: an interactive prompt-toolkit shell attached to an engine.

One concept per module:

- :mod:`livepatch.commands` (shared with the CLI and the magics): the command
  language, the runner (text in, :class:`CommandResult` out) and the link
  (the shared connection and its reconnect policy); ``.commands``,
  ``.runner`` and ``.link`` here re-export them,
- :mod:`.monitor` status sampled in the background (toolbar, completion, watch),
- :mod:`.completer`, :mod:`.lexer`, :mod:`.toolbar`, :mod:`.keys`, :mod:`.watch`
  the prompt-toolkit parts,
- :mod:`.app` the :class:`Shell` that puts them together, and scripts.

The engine core never imports this package (nor prompt-toolkit).
"""

from __future__ import annotations

from .app import Shell, color_allowed, history_path, run_shell, state_home
from .commands import COMMANDS, ShellUsageError
from .runner import CommandResult, CommandRunner

__all__ = [
    "COMMANDS",
    "CommandResult",
    "CommandRunner",
    "Shell",
    "ShellUsageError",
    "color_allowed",
    "history_path",
    "run_shell",
    "state_home",
]
