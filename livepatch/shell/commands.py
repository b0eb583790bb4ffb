"""The command language now lives in :mod:`livepatch.commands.spec` (shared by
the CLI, the shell and the magics); this name stays for existing imports."""

from __future__ import annotations

from ..commands.spec import *  # noqa: F403
from ..commands.spec import __all__ as __all__
