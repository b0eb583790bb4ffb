"""What an engine can be asked about its slots and versions, without
changing anything: lookups, symbol tables, sources, status.

:class:`~livepatch.engine.Engine` inherits it; the lifecycle, publication
and calls stay in :mod:`livepatch.engine`.
"""

from __future__ import annotations

import os
import threading

from .errors import BadState, UnknownSlot, UnknownVersion
from .ids import parse_version_id
from .model import EngineStatus, VersionInfo
from .states import VersionState
from .symbols import SymbolDiff, SymbolTable, diff_tables
from .versions import Slot, Version

__all__ = ["Introspection"]


class Introspection:
    """The read-only half of the engine (see the module doc)."""

    # No instance layout of its own: the Engine's __slots__ (its C-read
    # `_dispatcher`, the __dict__) define it.
    __slots__ = ()

    name: str
    _slots: dict[str, Slot]
    _lock: threading.RLock

    # -- symbols ----------------------------------------------------------------

    def symbols(self, version: str) -> SymbolTable:
        """The version's symbol table (nm for Python, .dynsym for native
        versions). Kept after unload."""
        v = self._version(version)
        if v.table is None:
            v.table = self._slots[v.slot].backend.table(v)
        return v.table

    def object_path(self, version: str) -> str | None:
        """The file a native version is (or would be) mapped from: its private
        copy, the name ``/proc/self/maps`` shows. ``None`` for Python versions."""
        obj = self._version(version).obj
        return str(obj.path) if obj is not None else None

    def diff(self, a: str, b: str) -> SymbolDiff:
        """Two versions' symbol tables side by side, rows marked = ~ + -."""
        return diff_tables(self.symbols(a), self.symbols(b))

    def source(self, version: str) -> str:
        """The source a version was loaded from (gone once it is unloaded)."""
        v = self._version(version)
        if v.source is None and v.obj is not None and v.state is not VersionState.UNLOADED:
            raise BadState(
                f"{v.id} was loaded from a ready shared object ({v.filename}): it has no source",
                version=v.id,
            )
        if v.source is None:
            raise BadState(f"{v.id} is unloaded: its source is gone", version=v.id)
        return v.source

    # -- status -----------------------------------------------------------------

    def status(self) -> EngineStatus:
        """A snapshot of every slot and version, with call statistics."""
        with self._lock:
            slots = list(self._slots.values())
        return EngineStatus(self.name, os.getpid(), tuple(s.info() for s in slots))

    def info(self, version: str) -> VersionInfo:
        """A snapshot of one version."""
        return self._version(version).info()

    def versions(self, slot: str | None = None) -> list[str]:
        """Ids of every version known (including unloaded tombstones)."""
        slots = [self._slot(slot)] if slot else list(self._slots.values())
        return [v.id for s in slots for v in s.versions.values()]

    # -- lookups ----------------------------------------------------------------

    def _slot(self, name: str) -> Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise UnknownSlot(
                f"no slot named {name!r}; slots: {self._slot_list()}", slot=name
            ) from None

    def _slot_list(self) -> str:
        return ", ".join(self._slots) or "(none)"

    def _version(self, version: str) -> Version:
        slot, number = parse_version_id(version)
        s = self._slot(slot)
        try:
            return s.versions[number]
        except KeyError:
            raise UnknownVersion(
                f"no version {version}; {slot} has "
                f"{', '.join(v.id for v in s.versions.values()) or 'no versions'}",
                version=version,
            ) from None
