"""The host side of the bundled spam demo: boundary types and the interface.

These classes belong to the "main binary". Rule versions import them from
here, and the resolve-check insists that the annotations at the boundary are
these very objects: a rule module that defines its own ``Message`` fails
with a type mismatch, as a shared object built against the wrong header would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

__all__ = [
    "BROKEN_RULES",
    "GOOD_RULES",
    "Message",
    "SpamRules",
    "Verdict",
    "rule_path",
    "rule_source",
    "sample_messages",
]


@dataclass(frozen=True)
class Message:
    """A piece of content to classify."""

    sender: str
    text: str
    links: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        """Build a message from a JSON object (``links`` may be a list)."""
        return cls(
            sender=str(data["sender"]),
            text=str(data["text"]),
            links=tuple(str(link) for link in data.get("links", ())),
        )


@dataclass(frozen=True)
class Verdict:
    """What the rules decided, and why."""

    spam: bool
    score: float
    reasons: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


class SpamRules(Protocol):
    """The interface every version of the ``spam`` slot must provide."""

    def classify(self, msg: Message) -> Verdict:
        """Decide whether ``msg`` is spam."""
        ...


#: Rule versions that pass the check, in the order they are meant to be loaded
#: (v3 counts what it classifies; v4 takes the counts over at swap).
GOOD_RULES = ("spam_v1.py", "spam_v2.py", "spam_v3.py", "spam_v4.py")

#: Versions that fail, each for one teaching reason.
BROKEN_RULES = {
    "spam_unresolved.py": "calls a function that is defined nowhere",
    "spam_attr_typo.py": "reads re.compil, a typo for re.compile",
    "spam_own_message.py": "defines its own Message type at the boundary",
    "spam_syntax_error.py": "does not compile",
}


def rule_path(name: str) -> str:
    """The file system path of a bundled rule source (``"spam_v2.py"``)."""
    return str(resources.files("livepatch.examples") / "rules" / name)


def rule_source(name: str) -> str:
    """The text of a bundled rule source."""
    return (resources.files("livepatch.examples") / "rules" / name).read_text("utf-8")


def sample_messages() -> list[Message]:
    """A few messages, some spammy, for demos and tests."""
    return [
        Message("alice@example.org", "Lunch at noon?"),
        Message("promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/win",)),
        Message("bob@example.org", "Minutes from today's meeting attached"),
        Message(
            "noreply@pharma.biz",
            "Cheap meds, no prescription, limited offer",
            ("http://pharma.biz/a", "http://pharma.biz/b", "http://pharma.biz/c"),
        ),
        Message("carol@example.org", "Free tickets for the team game, anyone?"),
    ]
