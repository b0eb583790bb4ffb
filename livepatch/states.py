"""The lifecycle of a loaded version, as data.

Every state change the engine makes goes through :func:`transition`, which
looks the move up in :data:`TRANSITIONS`. A move that is not in the table is a
:class:`~livepatch.errors.BadState` error whose message says what the user can
do instead, so the rules live in one table rather than in if-chains spread
over the engine.
"""

from __future__ import annotations

import enum

from .errors import BadState

__all__ = ["TRANSITIONS", "Op", "VersionState", "transition"]


class VersionState(enum.StrEnum):
    """Where a version is in its lifecycle (see DESIGN.md, "Lifecycle")."""

    LOADED = "loaded"
    """Compiled and executed; not yet resolve-checked."""
    RESOLVED = "resolved"
    """Checked with no errors; may be swapped in."""
    FAILED = "failed"
    """Checked with errors; kept loaded so people can inspect it."""
    ACTIVE = "active"
    """New calls of its slot run on it. At most one per slot."""
    RETIRED = "retired"
    """Was active, another version replaced it; may be swapped back."""
    PURGED = "purged"
    """Symbols forgotten: nothing new can find it; running calls finish."""
    UNLOADED = "unloaded"
    """The engine dropped its last references; freed when nothing else holds it."""


class Op(enum.StrEnum):
    """The operations that move a version between states."""

    CHECK_OK = "check-ok"
    CHECK_FAIL = "check-fail"
    SWAP_IN = "swap-in"
    SWAP_OUT = "swap-out"
    PURGE = "purge"
    UNLOAD = "unload"


S = VersionState

TRANSITIONS: dict[tuple[VersionState, Op], VersionState] = {
    # check (re-checking is allowed: the outside world, e.g. an imported
    # module's attributes, may have changed since the last check)
    (S.LOADED, Op.CHECK_OK): S.RESOLVED,
    (S.LOADED, Op.CHECK_FAIL): S.FAILED,
    (S.RESOLVED, Op.CHECK_OK): S.RESOLVED,
    (S.RESOLVED, Op.CHECK_FAIL): S.FAILED,
    (S.FAILED, Op.CHECK_OK): S.RESOLVED,
    (S.FAILED, Op.CHECK_FAIL): S.FAILED,
    (S.RETIRED, Op.CHECK_OK): S.RETIRED,
    (S.RETIRED, Op.CHECK_FAIL): S.FAILED,
    # checking the active version reports, but never demotes it: demoting
    # would leave the slot without code to run.
    (S.ACTIVE, Op.CHECK_OK): S.ACTIVE,
    (S.ACTIVE, Op.CHECK_FAIL): S.ACTIVE,
    # swap
    (S.RESOLVED, Op.SWAP_IN): S.ACTIVE,
    (S.RETIRED, Op.SWAP_IN): S.ACTIVE,
    (S.ACTIVE, Op.SWAP_OUT): S.RETIRED,
    # purge: any non-active version that still has symbols
    (S.LOADED, Op.PURGE): S.PURGED,
    (S.RESOLVED, Op.PURGE): S.PURGED,
    (S.FAILED, Op.PURGE): S.PURGED,
    (S.RETIRED, Op.PURGE): S.PURGED,
    # unload (the engine purges first when needed)
    (S.PURGED, Op.UNLOAD): S.UNLOADED,
    # unloading again only re-examines whether the code has been freed since
    (S.UNLOADED, Op.UNLOAD): S.UNLOADED,
}

# What to tell the user when a move is not in the table, by (state, op).
# {v} is the version id, {slot} its slot.
_HINTS: dict[tuple[VersionState, Op], str] = {
    (S.LOADED, Op.SWAP_IN): "{v} has not been checked yet: run `check {v}` first",
    (S.FAILED, Op.SWAP_IN): "{v} failed its check: fix the problems and load a new version",
    (S.ACTIVE, Op.PURGE): "{v} is active: swap another version in (or roll back) before purging it",
    (S.PURGED, Op.SWAP_IN): "{v} was purged: load its source again to get a new version",
    (S.PURGED, Op.PURGE): "{v} is already purged: `unload {v}` frees it",
    (S.PURGED, Op.CHECK_OK): "{v} was purged: load its source again to check it",
    (S.PURGED, Op.CHECK_FAIL): "{v} was purged: load its source again to check it",
}


def transition(version: str, state: VersionState, op: Op) -> VersionState:
    """The state after ``op``, or :class:`BadState` with a hint if not allowed."""
    try:
        return TRANSITIONS[(state, op)]
    except KeyError:
        slot = version.partition("@")[0]
        hint = _HINTS.get((state, op))
        if hint is None:
            hint = f"{{v}} is {state.value}: cannot {op.value.split('-')[0]} it"
        raise BadState(hint.format(v=version, slot=slot), state=state.value) from None
