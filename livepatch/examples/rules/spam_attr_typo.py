"""Broken on purpose: re.compil is a typo for re.compile, read at call time."""

import re

from livepatch.examples.spam import Message, Verdict


def classify(msg: Message) -> Verdict:
    pattern = re.compil(r"free|win")
    hits = pattern.findall(msg.text.lower())
    return Verdict(spam=bool(hits), score=min(1.0, 0.5 * len(hits)), reasons=tuple(hits))
