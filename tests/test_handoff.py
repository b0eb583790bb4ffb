"""State handed over at swap (``__livepatch_handoff__``), in process and over the socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import EngineProcess

from livepatch import Engine
from livepatch.client import Client
from livepatch.errors import CallFailed
from livepatch.examples.spam import Message, SpamRules, rule_source

HAM = Message("alice@example.org", "Lunch at noon?")

COUNTING = """
from livepatch.examples.spam import Message, Verdict

SEEN = {{"count": 0}}
GENERATION = {generation}

def classify(msg: Message) -> Verdict:
    SEEN["count"] += 1
    return Verdict(spam=False, score=float(SEEN["count"]), reasons=(f"gen{{GENERATION}}",))

def __livepatch_handoff__(previous):
    SEEN["count"] = previous["SEEN"]["count"]
"""

RAISING = """
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    return Verdict(spam=True, score=1.0)

def __livepatch_handoff__(previous):
    return previous["NO_SUCH_NAME"]
"""


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(name="handoff")
    e.add_slot("spam", SpamRules)
    yield e
    e.close()


def ready(engine: Engine, source: str) -> str:
    v = engine.load("spam", source)
    assert engine.check(v).ok, engine.report(v)
    return v


def test_a_counter_is_carried_across_swap_and_rollback(engine: Engine) -> None:
    first = ready(engine, COUNTING.format(generation=1))
    engine.swap(first)
    for _ in range(3):
        engine.call("spam", "classify", HAM)
    second = ready(engine, COUNTING.format(generation=2))
    result = engine.swap(second)
    assert result.handed_over is True
    verdict = engine.call("spam", "classify", HAM)
    assert verdict.reasons == ("gen2",) and verdict.score == 4.0
    # rollback hands back the same way: the old version takes the new count
    back = engine.rollback("spam")
    assert back.active == first and back.handed_over is True
    assert engine.call("spam", "classify", HAM).score == 5.0


def test_first_swap_has_nothing_to_hand_over(engine: Engine) -> None:
    result = engine.swap(ready(engine, COUNTING.format(generation=1)))
    assert result.handed_over is False
    assert engine.call("spam", "classify", HAM).score == 1.0


def test_a_raising_hook_refuses_the_swap_and_changes_nothing(engine: Engine) -> None:
    v1 = ready(engine, rule_source("spam_v1.py"))
    engine.swap(v1)
    bad = ready(engine, RAISING)
    with pytest.raises(CallFailed, match=r"__livepatch_handoff__\(\) raised KeyError") as info:
        engine.swap(bad)
    assert "refused" in str(info.value) and info.value.data["line"] == 8
    assert engine.active("spam") == v1
    assert engine.info(bad).state == "resolved"
    assert engine.info(v1).state == "active"
    assert engine.call("spam", "classify", HAM).spam is False


@pytest.mark.parametrize(
    ("hook", "kind"),
    [
        ("__livepatch_handoff__ = 3\n", "not-callable"),
        ("def __livepatch_handoff__(): pass\n", "signature-mismatch"),
    ],
)
def test_a_malformed_hook_fails_the_check(engine: Engine, hook: str, kind: str) -> None:
    v = engine.load("spam", rule_source("spam_v1.py") + hook)
    report = engine.check(v)
    assert not report.ok
    assert [p.kind for p in report.errors] == [kind]
    assert report.errors[0].symbol == "__livepatch_handoff__"


def test_the_hook_is_in_the_symbol_table(engine: Engine) -> None:
    v = engine.load("spam", COUNTING.format(generation=1))
    assert engine.symbols(v)["__livepatch_handoff__"].letter == "T"


def test_over_the_socket_a_raising_hook_is_a_one_line_refusal(
    engine_proc: EngineProcess,
) -> None:
    with Client.connect(engine_proc.name) as client:
        bad = client.load("spam", RAISING, "raising.py")
        assert client.check(bad).ok
        with pytest.raises(CallFailed, match=r"raising\.py:8: the swap was refused"):
            client.swap(bad)
        status = client.status()
        spam = next(s for s in status["slots"] if s["name"] == "spam")
        assert spam["active"] == "spam@1"
        # the engine keeps serving the old version and answering
        answer = client.call("spam", "classify", [{"sender": "a@b.c", "text": "hi"}])
        assert answer["version"] == "spam@1"
