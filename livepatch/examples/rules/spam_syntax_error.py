"""Broken on purpose: this file does not compile (a missing colon)."""

from livepatch.examples.spam import Message, Verdict


def classify(msg: Message) -> Verdict
    return Verdict(spam=False, score=0.0)
