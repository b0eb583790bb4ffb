"""%hotswap magics for IPython and Jupyter.

``%load_ext livepatch`` (or ``%load_ext ipython_ext``) registers ``%hotswap``
and ``%%hotswap``, which drive a running engine over its control socket
(through :mod:`livepatch.client`, never the engine core) and return result
objects shown as HTML in Jupyter and as text in a terminal.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .display import (
    DiffView,
    JournalView,
    LoadResult,
    Outcome,
    ReportView,
    StatusView,
    TableView,
    View,
    view,
)
from .magics import HotswapMagics, unload_ipython_extension
from .session import HotswapSession

#: How many times this module ran: ``importlib.reload`` (what ``%reload_ext
#: ipython_ext`` does) runs it again in the same namespace.
_executions: int = globals().get("_executions", 0) + 1
_loaded_at: int = globals().get("_loaded_at", 0)


def load_ipython_extension(ipython: Any, *, fresh_code: bool = False) -> None:
    """Register ``%hotswap``; after ``%reload_ext``, with the reloaded code.

    IPython's reload re-imports only the module it was given (``livepatch``
    or ``ipython_ext``), so the modules with the magics' code are reloaded
    here when this one was (or ``livepatch`` says it was: ``fresh_code``).
    """
    global _loaded_at
    if fresh_code or 0 < _loaded_at < _executions:
        for name in (
            "ipython_ext.theme",
            "ipython_ext.display",
            "ipython_ext.session",
            "ipython_ext.magics",
        ):
            module = sys.modules.get(name)
            if module is not None:
                importlib.reload(module)
    _loaded_at = _executions
    sys.modules["ipython_ext.magics"].load_ipython_extension(ipython)


__all__ = [
    "DiffView",
    "HotswapMagics",
    "HotswapSession",
    "JournalView",
    "LoadResult",
    "Outcome",
    "ReportView",
    "StatusView",
    "TableView",
    "View",
    "load_ipython_extension",
    "unload_ipython_extension",
    "view",
]
