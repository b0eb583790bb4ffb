"""The engine core: every lifecycle edge, calls, pins, stats and freeing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from livepatch import (
    BadState,
    CheckFailed,
    Conflict,
    Engine,
    Event,
    LoadFailed,
    UnknownSlot,
    UnknownVersion,
    VersionState,
)
from livepatch.engine import MODULE_PREFIX
from livepatch.examples.spam import Message, SpamRules, Verdict, rule_source

V1 = rule_source("spam_v1.py")
V2 = rule_source("spam_v2.py")
SPAM = Message("promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/x",))


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(name="test")
    e.add_slot("spam", SpamRules)
    yield e
    e.close()


def loaded_names() -> set[str]:
    return {name for name in sys.modules if name.startswith(MODULE_PREFIX + ".")}


def state(engine: Engine, version: str) -> str:
    return engine.info(version).state


def ready(engine: Engine, source: str, filename: str = "rules.py") -> str:
    v = engine.load("spam", source, filename)
    assert engine.check(v).ok, engine.report(v)
    return v


# -- load ---------------------------------------------------------------------


def test_load_numbers_versions_per_slot_and_registers_private_module(engine: Engine) -> None:
    v1 = engine.load("spam", V1, "spam_v1.py")
    v2 = engine.load("spam", V2, "spam_v2.py")
    assert (v1, v2) == ("spam@1", "spam@2")
    assert state(engine, v1) == "loaded"
    assert f"{MODULE_PREFIX}.spam_1" in sys.modules
    assert f"{MODULE_PREFIX}.spam_2" in sys.modules
    assert engine.info(v2).filename == "spam_v2.py"


def test_same_source_twice_returns_the_existing_version(engine: Engine) -> None:
    assert engine.load("spam", V1, "a.py") == "spam@1"
    assert engine.load("spam", V1, "b.py") == "spam@1"
    assert engine.versions("spam") == ["spam@1"]


def test_same_source_after_unload_is_a_new_version(engine: Engine) -> None:
    v = engine.load("spam", V1)
    engine.unload(v)
    assert engine.load("spam", V1) == "spam@2"


def test_syntax_error_names_file_line_col_and_leaves_nothing(engine: Engine) -> None:
    before = loaded_names()
    with pytest.raises(LoadFailed) as info:
        engine.load("spam", rule_source("spam_syntax_error.py"), "spam_syntax_error.py")
    assert str(info.value).startswith("spam_syntax_error.py:6:")
    assert "SyntaxError" in str(info.value)
    assert info.value.data["line"] == 6
    assert loaded_names() == before
    assert engine.versions("spam") == []
    # the failed load consumed no number
    assert engine.load("spam", V1) == "spam@1"


def test_exception_in_body_names_file_line_col_and_leaves_nothing(engine: Engine) -> None:
    source = "import math\n\nX = 1\nY = math.sqrt(-1)\n"
    before = loaded_names()
    with pytest.raises(LoadFailed) as info:
        engine.load("spam", source, "bad_body.py")
    message = str(info.value)
    assert message.startswith("bad_body.py:4:5: ValueError")
    assert "math domain error" in message
    assert loaded_names() == before
    assert engine.versions("spam") == []


def test_system_exit_in_body_is_a_load_failure_not_an_exit(engine: Engine) -> None:
    with pytest.raises(LoadFailed, match="SystemExit"):
        engine.load("spam", "import sys\nsys.exit(3)\n", "exits.py")
    assert engine.versions("spam") == []


def test_dataclasses_in_rule_modules_work(engine: Engine) -> None:
    source = (
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Score:\n    value: float\n"
        "def f() -> float:\n    return Score(2.5).value\n"
    )
    v = engine.load("spam", source)
    assert engine.call_version(v, "f") == 2.5


def test_unknown_slot_and_malformed_ids(engine: Engine) -> None:
    with pytest.raises(UnknownSlot, match="no slot named 'ham'"):
        engine.load("ham", V1)
    with pytest.raises(UnknownVersion, match="not a version id"):
        engine.check("spam")
    with pytest.raises(UnknownVersion, match="no version spam@9"):
        engine.swap("spam@9")
    with pytest.raises(UnknownVersion):
        engine.purge("ham@1")


# -- check ----------------------------------------------------------------------


def test_check_good_version_resolves(engine: Engine) -> None:
    v = engine.load("spam", V2)
    report = engine.check(v)
    assert report.ok and report.problems == ()
    assert state(engine, v) == "resolved"


@pytest.mark.parametrize(
    ("filename", "kind", "symbol"),
    [
        ("spam_unresolved.py", "unresolved", "score_links"),
        ("spam_attr_typo.py", "missing-attribute", "re.compil"),
        ("spam_own_message.py", "type-mismatch", "Message"),
    ],
)
def test_broken_examples_fail_with_the_expected_problem(
    engine: Engine, filename: str, kind: str, symbol: str
) -> None:
    v = engine.load("spam", rule_source(filename), filename)
    report = engine.check(v)
    assert not report.ok
    assert (kind, symbol) in {(p.kind, p.symbol) for p in report.errors}
    assert state(engine, v) == "failed"
    # a failed version stays loaded for inspection
    assert engine.symbols(v)["classify"].letter == "T"


def test_missing_interface_member_is_reported(engine: Engine) -> None:
    v = engine.load("spam", "def classify_message(msg):\n    return None\n")
    report = engine.check(v)
    assert [(p.kind, p.symbol) for p in report.errors] == [("missing-member", "classify")]


def test_recheck_of_active_version_never_demotes_it(engine: Engine) -> None:
    v = ready(engine, V1)
    engine.swap(v)
    assert engine.check(v).ok
    assert state(engine, v) == "active"


# -- swap and rollback ------------------------------------------------------------


def test_swap_requires_a_check(engine: Engine) -> None:
    v = engine.load("spam", V1)
    with pytest.raises(BadState, match=r"run `check spam@1` first"):
        engine.swap(v)
    assert engine.active("spam") is None


def test_swap_of_failed_version_is_refused_and_active_keeps_serving(engine: Engine) -> None:
    good = ready(engine, V1)
    engine.swap(good)
    bad = engine.load("spam", rule_source("spam_unresolved.py"))
    engine.check(bad)
    with pytest.raises(CheckFailed, match="failed its check"):
        engine.swap(bad)
    assert engine.active("spam") == good
    assert engine.call("spam", "classify", SPAM).spam is True


def test_swap_publishes_and_retires(engine: Engine) -> None:
    v1, v2 = ready(engine, V1), ready(engine, V2)
    first = engine.swap(v1)
    assert (first.previous, first.active, first.changed) == (None, v1, True)
    second = engine.swap(v2)
    assert (second.previous, second.active) == (v1, v2)
    assert state(engine, v1) == "retired"
    assert state(engine, v2) == "active"
    assert "shouting" in engine.call("spam", "classify", SPAM).reasons


def test_noop_swap_changes_nothing(engine: Engine) -> None:
    v = ready(engine, V1)
    engine.swap(v)
    events: list[Event] = []
    engine.subscribe(events.append)
    result = engine.swap(v)
    assert result.changed is False and result.active == v
    assert events == []
    assert state(engine, v) == "active"


def test_compare_and_swap(engine: Engine) -> None:
    v1, v2 = ready(engine, V1), ready(engine, V2)
    engine.swap(v1, expect=None)
    with pytest.raises(Conflict, match="running spam@1, not spam@2: another client"):
        engine.swap(v2, expect=v2)
    # A typo is not another client: it names no version (the journal says the same).
    with pytest.raises(UnknownVersion, match=r"^--expect spam@7: no version spam@7; spam has "):
        engine.swap(v2, expect="spam@7")
    assert engine.active("spam") == v1
    assert engine.swap(v2, expect=v1).active == v2


def test_rollback_with_nothing_retired(engine: Engine) -> None:
    with pytest.raises(BadState, match="no retired version"):
        engine.rollback("spam")
    engine.swap(ready(engine, V1))
    with pytest.raises(BadState, match="no retired version"):
        engine.rollback("spam")


def test_rollback_goes_to_the_most_recently_retired(engine: Engine) -> None:
    v1, v2 = ready(engine, V1), ready(engine, V2)
    v3 = ready(engine, V1 + "\n# v3\n")
    engine.swap(v1)
    engine.swap(v2)
    engine.swap(v3)
    assert engine.rollback("spam").active == v2
    # like `cd -`: the last retired version is now v3, so rollback toggles
    assert engine.rollback("spam").active == v3
    assert state(engine, v2) == "retired"
    engine.purge(v2)
    # purged versions are skipped: the next most recent retired one is v1
    assert engine.rollback("spam").active == v1


def test_swap_back_to_retired(engine: Engine) -> None:
    v1, v2 = ready(engine, V1), ready(engine, V2)
    engine.swap(v1)
    engine.swap(v2)
    assert engine.swap(v1).active == v1
    assert state(engine, v2) == "retired"


# -- purge and unload -----------------------------------------------------------------


def test_purge_active_is_refused(engine: Engine) -> None:
    v = ready(engine, V1)
    engine.swap(v)
    with pytest.raises(BadState, match=r"is active: .* before purging it$"):
        engine.purge(v)
    assert state(engine, v) == "active"
    assert engine.call("spam", "classify", SPAM).spam is True


def test_purge_forgets_symbols(engine: Engine) -> None:
    v1, v2 = ready(engine, V1), ready(engine, V2)
    engine.swap(v1)
    engine.swap(v2)
    engine.purge(v1)
    assert state(engine, v1) == "purged"
    assert f"{MODULE_PREFIX}.spam_1" not in sys.modules
    with pytest.raises(BadState, match="purged"):
        engine.swap(v1)
    with pytest.raises(BadState, match="purged"):
        engine.call_version(v1, "classify", SPAM)
    with pytest.raises(BadState, match="no retired version"):
        engine.rollback("spam")
    with pytest.raises(BadState, match="already purged"):
        engine.purge(v1)


def test_failed_check_then_unload_frees(engine: Engine) -> None:
    v = engine.load("spam", rule_source("spam_unresolved.py"))
    engine.check(v)
    result = engine.unload(v)
    assert result.freed is True and result.in_flight == 0 and result.holders == {}
    assert state(engine, v) == "unloaded"
    assert engine.info(v).freed is True
    with pytest.raises(BadState, match="unloaded"):
        engine.source(v)


def test_unload_active_is_refused(engine: Engine) -> None:
    v = ready(engine, V1)
    engine.swap(v)
    with pytest.raises(BadState, match=r"is active: .* before unloading it$"):
        engine.unload(v)  # its own verb (it said "before purging it")
    assert engine.call("spam", "classify", SPAM).spam is True


def test_symbols_survive_unload(engine: Engine) -> None:
    v = engine.load("spam", V1)
    engine.symbols(v)
    engine.unload(v)
    assert engine.symbols(v)["classify"].letter == "T"


def test_unload_with_a_call_in_flight_reports_it_then_frees(engine: Engine) -> None:
    source = (
        "import threading\n"
        "def block(started, release):\n"
        "    started.set()\n"
        "    release.wait(10)\n"
        "    return 'done'\n"
    )
    v = engine.load("spam", source)
    started, release = threading.Event(), threading.Event()
    results: list[object] = []
    caller = threading.Thread(
        target=lambda: results.append(engine.call_version(v, "block", started, release))
    )
    caller.start()
    assert started.wait(10)
    held = engine.unload(v)
    assert held.freed is False
    assert held.in_flight == 1
    assert any(kind.startswith("frame block") for kind in held.holders), held.holders
    release.set()
    caller.join(10)
    assert results == ["done"]
    caller = None  # the thread object's frame references are gone with it
    # status says what is true now, not what was true at unload time
    assert engine.info(v).freed is True
    assert {i.id: i.freed for s in engine.status().slots for i in s.versions}[v] is True
    # unloading again re-examines the tombstone: now nothing holds it
    again = engine.unload(v)
    assert again.freed is True and again.in_flight == 0


def test_leak_report_names_what_holds_the_code(engine: Engine) -> None:
    v = engine.load("spam", "def f():\n    return 1\n")
    stash = {"f": sys.modules[f"{MODULE_PREFIX}.spam_1"].f}
    result = engine.unload(v)
    assert result.freed is False and result.in_flight == 0
    assert result.holders.get("dict", 0) >= 1, result.holders
    del stash
    assert engine.unload(v).freed is True


def test_two_hundred_cycles_free_every_version(engine: Engine) -> None:
    results = []
    for i in range(200):
        v = ready(engine, V1 + f"\nCYCLE = {i}\n")
        engine.swap(v)
        previous = engine.versions("spam")[-2] if i else None
        assert engine.call("spam", "classify", SPAM).spam is True
        if previous:
            engine.purge(previous)
            results.append(engine.unload(previous))
    assert len(results) == 199
    assert all(r.freed for r in results), [r for r in results if not r.freed][:3]
    assert loaded_names() == {f"{MODULE_PREFIX}.spam_200"}


# -- calls, stats and pins ------------------------------------------------------------


def test_call_without_active_version(engine: Engine) -> None:
    with pytest.raises(BadState, match="no active version"):
        engine.call("spam", "classify", SPAM)
    with pytest.raises(UnknownSlot):
        engine.call("ham", "classify", SPAM)


def test_call_of_unknown_symbol(engine: Engine) -> None:
    engine.swap(ready(engine, V1))
    with pytest.raises(UnknownVersion, match="no callable 'nope'"):
        engine.call("spam", "nope")
    with pytest.raises(UnknownVersion, match="no callable 'THRESHOLD'"):
        engine.call("spam", "THRESHOLD")


def test_stats_count_calls_and_errors(engine: Engine) -> None:
    v = ready(engine, V1)
    engine.swap(v)
    for _ in range(5):
        assert isinstance(engine.call("spam", "classify", SPAM), Verdict)
    with pytest.raises(AttributeError):
        engine.call("spam", "classify", None)
    with engine.pin("spam") as rules:
        rules.classify(SPAM)
    info = engine.info(v)
    assert (info.calls, info.errors, info.in_flight) == (7, 1, 0)


def test_pin_keeps_one_version_for_nested_calls(engine: Engine) -> None:
    v1, v2 = ready(engine, V1), ready(engine, V2)
    engine.swap(v1)
    with engine.pin("spam") as rules:
        assert rules.version == v1
        engine.swap(v2)
        # new requests see v2 ...
        seen_outside: list[str] = []
        t = threading.Thread(target=lambda: seen_outside.append(engine.active("spam") or ""))
        t.start()
        t.join()
        assert seen_outside == [v2]
        # ... but this one stays on v1, through engine.call and nested pins
        assert "shouting" not in engine.call("spam", "classify", SPAM).reasons
        with engine.pin("spam") as inner:
            assert inner.version == v1
        assert engine.info(v1).in_flight == 1
    assert engine.info(v1).in_flight == 0
    assert "shouting" in engine.call("spam", "classify", SPAM).reasons


def test_pin_without_active_version(engine: Engine) -> None:
    with pytest.raises(BadState, match="no active version"), engine.pin("spam"):
        pass


def test_concurrent_pinned_requests_never_mix_versions(engine: Engine) -> None:
    engine.add_slot("mix", None)
    sources = [
        f"VERSION = {n}\ndef first():\n    return VERSION\ndef second():\n    return VERSION\n"
        for n in (1, 2)
    ]
    versions = []
    for source in sources:
        v = engine.load("mix", source)
        assert engine.check(v).ok
        versions.append(v)
    engine.swap(versions[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    mixed: list[tuple[int, ...]] = []
    seen: set[int] = set()
    requests = [0] * 8

    def worker(index: int) -> None:
        try:
            while not stop.is_set():
                with engine.pin("mix") as rules:
                    a = rules.first()
                    b = engine.call("mix", "second")
                    c = rules.second()
                if not a == b == c:
                    mixed.append((a, b, c))
                seen.add(a)
                requests[index] += 1
        except BaseException as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for i in range(400):
        engine.swap(versions[i % 2 == 0])
        # let requests run between swaps (a poll with a deadline, not a sleep)
        target, deadline = sum(requests) + 8, time.monotonic() + 5
        while sum(requests) < target and time.monotonic() < deadline:
            time.sleep(0)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert mixed == []
    assert seen == {1, 2}
    assert all(requests), requests


def test_concurrent_swaps_of_one_slot_are_serialized(engine: Engine) -> None:
    versions = [ready(engine, V1 + f"\n# {i}\n") for i in range(4)]
    engine.swap(versions[0])
    conflicts: list[Conflict] = []
    wins: list[str] = []
    barrier = threading.Barrier(len(versions) - 1)

    def contender(v: str) -> None:
        barrier.wait()
        try:
            wins.append(engine.swap(v, expect=versions[0]).active)
        except Conflict as exc:
            conflicts.append(exc)

    threads = [threading.Thread(target=contender, args=(v,)) for v in versions[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1 and len(conflicts) == 2
    assert engine.active("spam") == wins[0]
    states = [state(engine, v) for v in versions]
    assert states.count("active") == 1


# -- events, symbols, status ---------------------------------------------------------


def test_events_for_every_state_change(engine: Engine) -> None:
    events: list[Event] = []
    unsubscribe = engine.subscribe(events.append)
    v1, v2 = ready(engine, V1), ready(engine, V2)
    engine.swap(v1)
    engine.swap(v2)
    engine.unload(v1)
    unsubscribe()
    engine.load("spam", V1 + "\n")
    assert [(e.version, e.op, e.state) for e in events] == [
        (v1, "load", "loaded"),
        (v1, "check-ok", "resolved"),
        (v2, "load", "loaded"),
        (v2, "check-ok", "resolved"),
        (v1, "swap-in", "active"),
        (v2, "swap-in", "active"),
        (v1, "swap-out", "retired"),
        (v1, "purge", "purged"),
        (v1, "unload", "unloaded"),
    ]


def test_symbols_and_diff_of_example_versions(engine: Engine) -> None:
    v1, v2 = engine.load("spam", V1), engine.load("spam", V2)
    table = engine.symbols(v2)
    assert table["classify"].letter == "T"
    assert table["re"].letter == "I"
    assert table["THRESHOLD"].letter == "D"
    markers = {row.name: row.marker for row in engine.diff(v1, v2).rows}
    assert markers["classify"] == "~"
    assert markers["shouting"] == "+"
    assert markers["keyword_hits"] == "="
    assert markers["THRESHOLD"] == "="


def test_status_snapshot(engine: Engine) -> None:
    v = ready(engine, V1)
    engine.swap(v)
    engine.call("spam", "classify", SPAM)
    status = engine.status()
    (slot,) = status.slots
    assert slot.name == "spam" and slot.active == v
    assert slot.members == ("classify",)
    assert slot.interface.endswith("SpamRules")
    assert slot.versions[0].calls == 1
    assert status.to_json()["slots"][0]["versions"][0]["state"] == VersionState.ACTIVE


def test_engine_core_imports_neither_ipython_nor_prompt_toolkit() -> None:
    code = (
        "import sys, livepatch, livepatch.engine, livepatch.examples.spam\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('IPython', 'prompt_toolkit', 'ipykernel', 'ipython_ext'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_a_source_over_the_limit_names_its_file_and_what_to_do(engine: Engine) -> None:
    from livepatch.pyload import MAX_SOURCE

    with pytest.raises(
        LoadFailed, match=r"^big\.py is [\d,]+ characters, over the [\d,]+ .* split"
    ):
        engine.load("spam", "x = 1\n" * (MAX_SOURCE // 6 + 1), "big.py")
