"""The engine link now lives in :mod:`livepatch.commands.link`; this name stays
for existing imports."""

from __future__ import annotations

from ..commands.link import *  # noqa: F403
from ..commands.link import __all__ as __all__
