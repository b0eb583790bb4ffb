"""Rule code that raises what is not an ``Exception``: ``sys.exit()``,
``KeyboardInterrupt``, a ``BaseException`` of its own. On the engine's
worker threads these can only come from a rule, so each is the rule's
failure, reported like any other; before, a call said "internal error", a
hand-over hook ended the connection's thread (the client was told the engine
had stopped), the demo traffic's thread died for good, and a shadow
candidate ended the shadow's worker with a report that read clean.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli, start_engine

from livepatch import Engine
from livepatch.client import Client
from livepatch.errors import CallFailed

HEADER = """\
import sys
from livepatch.examples.spam import Message, Verdict


class Fatal(BaseException):
    pass
"""

RAISES = {
    "sys.exit": ("sys.exit(3)", "SystemExit: 3"),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    "BaseException": ('raise Fatal("stop")', "Fatal: stop"),
}
CASES = pytest.mark.parametrize("how", list(RAISES))
MSG = {"sender": "a@example.com", "text": "hello"}


def rule(statement: str) -> str:
    return HEADER + f"\n\ndef classify(msg: Message) -> Verdict:\n    {statement}\n"


def swapped_in(client: Client, source: str, name: str = "bad.py") -> str:
    version = client.load("spam", source, name)
    assert client.check(version).ok
    client.swap(version)
    return version


def info(client: Client, version: str) -> dict[str, int]:
    for slot in client.status()["slots"]:
        for v in slot["versions"]:
            if v["id"] == version:
                return {"calls": v["calls"], "errors": v["errors"]}
    raise AssertionError(f"no {version}")


@CASES
def test_a_call_that_raises_it_is_call_failed_naming_the_rule(
    engine_proc: EngineProcess, how: str
) -> None:
    statement, said = RAISES[how]
    with Client.connect() as client:
        version = swapped_in(client, rule(statement))
        for _ in range(2):
            with pytest.raises(CallFailed) as failed:
                client.call("spam", "classify", [MSG])
            assert failed.value.message == f"{version} classify() raised {said} at bad.py:10"
        assert info(client, version) == {"calls": 2, "errors": 2}
        assert client.status()["pid"] == engine_proc.pid  # still up, still answering


def test_an_exception_whose_str_raises_is_call_failed_and_counted_once(
    engine_proc: EngineProcess,
) -> None:
    source = HEADER + (
        "\n\nclass Odd(Exception):\n"
        "    def __str__(self):\n"
        '        raise RuntimeError("no text")\n'
        "\n\ndef classify(msg: Message) -> Verdict:\n"
        "    raise Odd()\n"
    )
    with Client.connect() as client:
        version = swapped_in(client, source)
        with pytest.raises(CallFailed, match=r"raised Odd: <exception str\(\) failed> at bad\.py"):
            client.call("spam", "classify", [MSG])
        assert info(client, version) == {"calls": 1, "errors": 1}


@CASES
def test_a_hand_over_hook_that_raises_it_refuses_the_swap(
    engine_proc: EngineProcess, how: str
) -> None:
    statement, said = RAISES[how]
    source = HEADER + (
        f"\n\ndef __livepatch_handoff__(previous):\n    {statement}\n"
        "\n\ndef classify(msg: Message) -> Verdict:\n"
        "    return Verdict(spam=False, score=0.5)\n"
    )
    with Client.connect() as client:
        version = client.load("spam", source, "hook.py")
        assert client.check(version).ok
        with pytest.raises(CallFailed, match=f"raised {said} at hook.py:10: the swap was refused"):
            client.swap(version)
        # The same connection answers on, and nothing changed.
        assert client.call("spam", "classify", [MSG])["version"] == "spam@1"


def test_the_demo_traffic_outlives_a_rule_that_exits(runtime_dir: Path) -> None:
    engine = start_engine("--traffic", "100")
    try:
        with Client.connect() as client:
            bad = swapped_in(client, rule("sys.exit(3)"))
            deadline = time.monotonic() + 20
            while info(client, bad)["errors"] < 3:
                assert time.monotonic() < deadline, "the traffic never called the bad rule"
                time.sleep(0.02)
            client.swap("spam@1")
            before = info(client, "spam@1")["calls"]
            while info(client, "spam@1")["calls"] < before + 20:
                assert time.monotonic() < deadline, "the traffic stopped"
                time.sleep(0.02)
    finally:
        engine.stop()
    assert "Traceback" not in engine.log_text()


@CASES
def test_a_shadow_candidate_that_raises_it_is_a_finding(runtime_dir: Path, how: str) -> None:
    statement, said = RAISES[how]
    engine = start_engine("--traffic", "200")
    try:
        with Client.connect() as client:
            version = client.load("spam", rule(statement), "bad.py")
            assert client.check(version).ok
        shown = run_cli("shadow", version, "--sample", "1", "--for", "1", "--json")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        compared = report["compared"]
        assert compared > 0 and report["candidate_errors"] == compared, report
        assert said.split(":")[0] in json.dumps(report)
    finally:
        engine.stop()
    assert "Traceback" not in engine.log_text()


def test_a_signature_that_cannot_be_read_is_a_check_problem() -> None:
    # Without the quarantine (`--no-quarantine`, an in-process host): the
    # check reads the rule's signature, which its own code may break.
    source = HEADER + (
        "\n\nclass Rule:\n"
        "    @property\n"
        "    def __signature__(self):\n"
        '        raise RuntimeError("sig")\n'
        "\n"
        "    def __call__(self, msg: Message) -> Verdict:\n"
        "        return Verdict(spam=False, score=0.5)\n"
        "\n\nclassify = Rule()\n"
    )
    from livepatch.examples.spam import SpamRules

    engine = Engine("sig")
    engine.add_slot("spam", SpamRules)
    try:
        report = engine.check(engine.load("spam", source, "sig.py"))
    finally:
        engine.close()
    assert not report.ok
    [problem] = report.problems
    assert re.search(r"classify's signature cannot be read \(RuntimeError: sig\)", problem.message)
