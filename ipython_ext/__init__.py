"""%hotswap magics for IPython and Jupyter.

``%load_ext livepatch`` (or ``%load_ext ipython_ext``) registers ``%hotswap``
and ``%%hotswap``, which drive a running engine over its control socket
(through :mod:`livepatch.client`, never the engine core) and return result
objects shown as HTML in Jupyter and as text in a terminal.
"""

from __future__ import annotations

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
from .magics import HotswapMagics, load_ipython_extension, unload_ipython_extension
from .session import HotswapSession

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
