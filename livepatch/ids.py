"""Slot names and version ids: what every front end and the engine check alike.

Kept apart from :mod:`livepatch.model` (the engine's dataclasses) so that a
client validating a request (:mod:`livepatch.protocol.schema`) does not pay
for defining them.
"""

from __future__ import annotations

import functools
import re

from .errors import UnknownVersion

__all__ = ["SLOT_NAME", "is_slot_name", "parse_version_id"]

#: A slot name: an ASCII Python identifier of at most 64 characters.
SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


# Both are asked on every rule call over the socket, for the same few names:
# remembered (the answers never change; a malformed id raises, and is not).
@functools.lru_cache(maxsize=4096)
def is_slot_name(name: str) -> bool:
    """Whether ``name`` is a slot name (see :data:`SLOT_NAME`)."""
    return SLOT_NAME.match(name) is not None


@functools.lru_cache(maxsize=4096)
def parse_version_id(version: str) -> tuple[str, int]:
    """Split ``"spam@2"`` into ``("spam", 2)``; :class:`UnknownVersion` if malformed.

    The number is ASCII digits with no leading zero (``spam@01``, ``spam@²``
    and Arabic-Indic digits are not ids: ``str.isdigit`` would take them), and the
    slot a slot name (:data:`SLOT_NAME`), so one id never has two spellings.
    """
    slot, sep, number = version.rpartition("@")
    if (
        not sep
        or not is_slot_name(slot)
        or not (number.isascii() and number.isdigit())
        or (number.startswith("0"))
        or len(number) > 18
    ):
        raise UnknownVersion(
            f"{_shown(version)} is not a version id: use SLOT@N, e.g. spam@2", version=version
        )
    return slot, int(number)


def _shown(text: str, limit: int = 40) -> str:
    """``repr`` of a client's text, clipped: a 5,000-digit id makes a short error."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
