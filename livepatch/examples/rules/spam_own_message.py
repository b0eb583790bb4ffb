"""Broken on purpose: defines its own Message instead of the host's.

It looks the same, but it is another type: at the boundary the host passes
its own Message objects, so the contract is broken (the resolve-check reports
a type mismatch, as a linker would for an object built against another ABI).
"""

from dataclasses import dataclass

from livepatch.examples.spam import Verdict


@dataclass(frozen=True)
class Message:
    sender: str
    text: str
    links: tuple[str, ...] = ()


def classify(msg: Message) -> Verdict:
    return Verdict(spam="free" in msg.text.lower(), score=0.5, reasons=("free",))
