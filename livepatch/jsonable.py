"""One way to turn the engine's snapshot dataclasses into JSON-able dicts."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

__all__ = ["JsonFields", "plain"]


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and nested snapshots as dicts."""
    if isinstance(value, JsonFields):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class JsonFields:
    """Mixin for frozen dataclasses whose fields are all JSON-able."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the public fields, in declaration order.

        Fields named with a leading underscore are derived caches (such as a
        table's index by name) and are left out.
        """
        fields = dataclasses.fields(cast(Any, self))
        return {f.name: plain(getattr(self, f.name)) for f in fields if not f.name.startswith("_")}
