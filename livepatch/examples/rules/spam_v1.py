"""Spam rules, version 1: a few keywords."""

from livepatch.examples.spam import Message, Verdict

KEYWORDS = ("free", "win", "click now")
THRESHOLD = 0.5


def keyword_hits(text: str) -> list[str]:
    lowered = text.lower()
    return [word for word in KEYWORDS if word in lowered]


def classify(msg: Message) -> Verdict:
    hits = keyword_hits(msg.text)
    score = min(1.0, 0.3 * len(hits))
    reasons = tuple(f"keyword:{word}" for word in hits)
    return Verdict(spam=score >= THRESHOLD, score=round(score, 3), reasons=reasons)
