"""The seam between the engine's lifecycle and what each step does to code.

The engine owns the lifecycle of every slot, whatever its kind: version
numbers, states, locks, publication, events, statistics and the
write-ahead commit. A slot's :class:`Backend` does the steps to the code:

- load: Python compiles the source and runs its body in a private module
  (:class:`~livepatch.pyload.PythonBackend`); native compiles C or takes a
  ready object and reads its ELF tables (:class:`~livepatch.native.NativeBackend`);
- check: bytecode names and the Protocol / resolve, then dlopen and dlsym;
- table: nm for Python / ``.dynsym``;
- forget (purge): drop the module from ``sys.modules`` / drop the pointers;
- release (after unload): the collector decides / dlclose, then
  ``/proc/self/maps`` says whether the object left memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .native_interface import NativeInterface
    from .quarantine import Quarantine
    from .report import ResolveReport
    from .symbols import SymbolTable
    from .versions import Version

__all__ = ["Backend"]


class Backend(Protocol):
    """What a slot's kind does at each lifecycle step (see the module doc)."""

    @property
    def kind(self) -> str:
        """``python`` or ``native``."""
        ...

    @property
    def interface(self) -> type | NativeInterface | None:
        """The slot's interface: a Protocol, C signatures, or ``None``."""
        ...

    def describe(self) -> str:
        """The interface in one line, for ``status``."""
        ...

    def members(self) -> dict[str, Any]:
        """The interface's members by name."""
        ...

    def load(
        self,
        version: str,
        content: str | bytes,
        filename: str,
        *,
        sha256: str | None = None,
        origin: Path | None = None,
        build_dir: Path | None = None,
        quarantine: Quarantine | None = None,
        in_memory: bool = False,
    ) -> Version:
        """A new, unpublished version from source text or (native) an object.

        :class:`~livepatch.errors.LoadFailed` leaves nothing behind.
        """
        ...

    def identity(
        self,
        content: str | bytes,
        filename: str,
        *,
        origin: Path | None = None,
        build_dir: Path | None = None,
    ) -> str | None:
        """What makes a version of ``content`` besides its sha (a C source's
        headers, compiler and flags), or ``None``: loading content with the
        same sha and identity returns the existing version."""
        ...

    def discard(self, version: Version) -> None:
        """Undo :meth:`load` for a version that is never published."""
        ...

    def check(
        self, version: Version, quarantine: Quarantine | None
    ) -> tuple[ResolveReport, dict[str, Any]]:
        """The report, and the functions the engine publishes into the
        version's namespace once the check is committed (may be empty)."""
        ...

    def table(self, version: Version) -> SymbolTable:
        """The version's symbol table."""
        ...

    def forget(self, version: Version) -> None:
        """Purge: make the version's symbols unfindable."""
        ...

    def release(self, version: Version, *, pointers_freed: bool) -> tuple[bool, dict[str, int]]:
        """After unload (``pointers_freed``: the engine's weak references are
        all dead): whether the code left memory, and if not, what holds it."""
        ...
