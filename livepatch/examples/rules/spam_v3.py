"""Spam rules, version 3: version 2's rules, counting the messages they see."""

import re
import threading

from livepatch.examples.spam import Message, Verdict

KEYWORDS = ("free", "win", "click now", "limited offer", "no prescription")
BAD_DOMAINS = frozenset({"deals.biz", "pharma.biz"})
THRESHOLD = 0.5
_DOMAIN = re.compile(r"^https?://([^/:]+)")


def keyword_hits(text: str) -> list[str]:
    lowered = text.lower()
    return [word for word in KEYWORDS if word in lowered]


def shouting(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 3 and sum(c.isupper() for c in letters) / len(letters) > 0.3


def bad_links(links: tuple[str, ...]) -> list[str]:
    found = []
    for link in links:
        match = _DOMAIN.match(link)
        if match and match.group(1) in BAD_DOMAINS:
            found.append(match.group(1))
    return found


#: What this version has classified. A module global: a plain swap to the next
#: version would start again from zero (see spam_v4.py's handoff hook).
SEEN = {"messages": 0, "spam": 0}
#: Calls run on several threads at once: ``+=`` on a dict item is a read and
#: a write, and two threads can lose an update between them.
_COUNTING = threading.Lock()


def stats() -> dict[str, int]:
    with _COUNTING:
        return dict(SEEN)


def classify(msg: Message) -> Verdict:
    reasons = [f"keyword:{word}" for word in keyword_hits(msg.text)]
    if shouting(msg.text) or "!!!" in msg.text:
        reasons.append("shouting")
    reasons.extend(f"domain:{domain}" for domain in bad_links(msg.links))
    if len(msg.links) > 2:
        reasons.append("many-links")
    score = min(1.0, 0.25 * len(reasons))
    verdict = Verdict(spam=score >= THRESHOLD, score=round(score, 3), reasons=tuple(reasons))
    with _COUNTING:
        SEEN["messages"] += 1
        SEEN["spam"] += verdict.spam
    return verdict
