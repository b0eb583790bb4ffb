"""Broken on purpose: classify() calls score_links(), which is defined nowhere.

Loading works (nothing runs classify yet); the resolve-check catches it, the
way a linker refuses an object with an undefined symbol.
"""

from livepatch.examples.spam import Message, Verdict


def classify(msg: Message) -> Verdict:
    score = score_links(msg.links)
    return Verdict(spam=score > 0.5, score=score, reasons=("links",))
