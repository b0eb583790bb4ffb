"""The runner now lives in :mod:`livepatch.commands.runner` (shared by the CLI,
the shell and the magics); this name stays for existing imports."""

from __future__ import annotations

from ..commands.runner import *  # noqa: F403
from ..commands.runner import __all__ as __all__
