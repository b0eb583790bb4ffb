"""Shadow runs (issue 18, part 2): a checked version beside the active one on
live calls, compared, without ever changing what callers get.

The engine-side tests run a real :class:`Engine` in this process with caller
threads as its traffic, on the C dispatcher and on the Python path; the
front-end tests run a real engine process with ``--traffic`` and drive it
through the CLI and the shell.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_notebook_frontends
from conftest import EngineProcess, run_cli, start_engine

from livepatch.engine import Engine
from livepatch.errors import BadState
from livepatch.examples.spam import Message, SpamRules, Verdict, rule_path, rule_source
from livepatch.journal import Journal, Peer
from livepatch.shadow import Shadows

PEER = Peer(client="test")

#: The real-kernel fixture of the notebook front-end tests.
kernel = test_notebook_frontends.kernel

#: Raises on one input, never returns on another (a Python loop, which the
#: deadline can interrupt), and otherwise answers like spam_v1.
TROUBLED = """
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    if "cruise" in msg.text:
        raise ZeroDivisionError("no cruises")
    if "meds" in msg.text:
        while True:
            pass
    return Verdict(spam=False, score=0.0, reasons=())
"""

#: Slow on every call: the queue fills.
SLOW = """
import time
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    time.sleep(0.05)
    return Verdict(spam=False, score=0.0, reasons=())
"""

MESSAGES = (
    Message("promo@deals.biz", "WIN a FREE cruise!!! Click now", ("http://deals.biz/win",)),
    Message("bob@example.org", "lunch tomorrow?", ()),
    Message("noreply@pharma.biz", "Cheap meds, no prescription", ("http://pharma.biz/a",)),
    Message("carol@example.org", "Free tickets for the team game", ()),
)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(params=["c", "python"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine with spam_v1 active, on the C dispatcher or the Python path."""
    e = Engine("shadow", accelerate=request.param == "c")
    if request.param == "c" and not e.accelerated:
        pytest.fail("livepatch._speedups is not built")
    e.add_slot("spam", SpamRules)
    v1 = e.load("spam", rule_source("spam_v1.py"), "spam_v1.py")
    assert e.check(v1).ok
    e.swap(v1)
    yield e
    e.close()


def candidate(engine: Engine, source: str, name: str) -> str:
    version = engine.load("spam", source, name)
    assert engine.check(version).ok
    return version


class Traffic:
    """Caller threads calling ``engine.call`` and keeping every result."""

    def __init__(self, engine: Engine, threads: int = 3) -> None:
        self.engine = engine
        self.results: list[tuple[Message, Any]] = []
        self.failures: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            msg = MESSAGES[i % len(MESSAGES)]
            try:
                self.results.append((msg, self.engine.call("spam", "classify", msg)))
            except BaseException as exc:  # noqa: BLE001 - whatever reached a caller
                self.failures.append(exc)
            i += 1

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_a_differing_candidate_is_reported_with_the_inputs_it_differs_on(
    engine: Engine,
) -> None:
    v2 = candidate(engine, rule_source("spam_v2.py"), "spam_v2.py")
    journal = Journal()
    shadows = Shadows(engine, journal)
    shadows.start(v2, peer=PEER, sample=0.5)
    with Traffic(engine):
        wait_until(lambda: shadows.report("spam")["compared"] >= 200)
    report = shadows.stop("spam", peer=PEER)
    assert report["state"] == "ended" and report["reason"] == "stopped"
    assert report["differed"] > 0 and report["compared"] >= 200
    assert report["candidate_errors"] == report["timeouts"] == 0
    v1_fn, v2_fn = engine.function("spam@1", "classify"), engine.function(v2, "classify")
    differing = {m.text for m in MESSAGES if v1_fn(m) != v2_fn(m)}
    shown = report["differences"]
    assert shown and {d["args"][0]["text"] for d in shown} == differing
    for d in shown:
        msg = Message(d["args"][0]["sender"], d["args"][0]["text"], tuple(d["args"][0]["links"]))
        assert d["active"]["score"] == v1_fn(msg).score
        assert d["candidate"]["score"] == v2_fn(msg).score
    # Latency of both sides, from the sampled calls.
    latency = report["latency"]
    assert latency["spam@1"]["n"] == latency[v2]["n"] == report["compared"]
    assert latency["spam@1"]["p50_us"] > 0 and latency[v2]["p50_us"] > 0
    # Journaled: the start, then the summary at the stop.
    records = [e for e in journal.entries() if e.op == "shadow"]
    assert [r.result.split(":")[0].split(" ")[0] for r in records] == ["started", "stopped"]
    assert f"{report['compared']} compared, {report['differed']} differed" in records[1].result


def test_a_candidate_that_raises_or_hangs_never_reaches_the_callers(engine: Engine) -> None:
    bad = candidate(engine, TROUBLED, "troubled.py")
    shadows = Shadows(engine, Journal())
    shadows.start(bad, peer=PEER, sample=1.0, timeout_s=0.2)
    with Traffic(engine) as traffic:
        wait_until(
            lambda: (
                shadows.report("spam")["candidate_errors"] >= 3
                and shadows.report("spam")["timeouts"] >= 2
            )
        )
    report = shadows.stop("spam", peer=PEER)
    assert not traffic.failures
    active = engine.function("spam@1", "classify")
    assert traffic.results and all(result == active(msg) for msg, result in traffic.results)
    assert all(isinstance(result, Verdict) for _, result in traffic.results)
    errors = report["errors"]
    raised = [e for e in errors if "ZeroDivisionError: no cruises" in e["error"]]
    assert raised and "cruise" in raised[0]["args"][0]["text"]
    assert "troubled.py:6" in raised[0]["error"]  # the candidate's own line
    hung = [e for e in errors if "did not return within 0.2 s" in e["error"]]
    assert hung and "meds" in hung[0]["args"][0]["text"]
    # Interrupted, the shadow thread went on comparing after each hang.
    assert report["compared"] > report["timeouts"] + report["candidate_errors"]


def test_drops_are_counted_when_the_queue_is_full(engine: Engine) -> None:
    slow = candidate(engine, SLOW, "slow.py")
    shadows = Shadows(engine, Journal())
    shadows.start(slow, peer=PEER, sample=1.0, queue=2)
    with Traffic(engine, threads=1) as traffic:
        wait_until(lambda: shadows.report("spam")["dropped"] >= 50)
    report = shadows.stop("spam", peer=PEER)
    assert report["dropped"] >= 50
    assert report["compared"] + report["dropped"] <= report["sampled"]
    # The callers never waited for the candidate: far more calls than it answered.
    assert len(traffic.results) > 10 * report["compared"]


def test_one_run_per_slot_and_it_ends_on_a_swap_or_a_purge(engine: Engine) -> None:
    v2 = candidate(engine, rule_source("spam_v2.py"), "spam_v2.py")
    journal = Journal()
    shadows = Shadows(engine, journal)
    with pytest.raises(BadState, match="spam@1 is the active version"):
        shadows.start("spam@1", peer=PEER)
    unchecked = engine.load("spam", SLOW, "slow.py")
    with pytest.raises(BadState, match=f"`check {unchecked}` first"):
        shadows.start(unchecked, peer=PEER)
    with pytest.raises(BadState, match="has had no shadow run"):
        shadows.report("spam")
    shadows.start(v2, peer=PEER)
    with pytest.raises(BadState, match="already has a shadow run"):
        shadows.start(v2, peer=PEER)
    engine.swap(v2)  # the comparison would no longer be against what callers get
    wait_until(lambda: not shadows._runs["spam"].running)
    assert shadows.report("spam")["reason"] == f"{v2} was swapped in"
    # The sampler came off: calls on the old version are no longer sampled.
    engine.swap("spam@1")
    ended = shadows.report("spam")
    engine.call("spam", "classify", MESSAGES[0])
    assert shadows.report("spam")["sampled"] == ended["sampled"]
    shadows.start(v2, peer=PEER)
    engine.purge(v2)
    wait_until(lambda: not shadows._runs["spam"].running)
    assert shadows.report("spam")["reason"] == f"{v2} was purged"
    wait_until(lambda: sum(e.result.startswith("ended") for e in journal.entries()) == 2)
    # Stopping a run that is over gives its report again, unchanged.
    assert shadows.stop("spam", peer=PEER)["reason"] == f"{v2} was purged"


# --- the front ends, against a real engine with traffic ----------------------------------


@pytest.fixture
def traffic_engine(runtime_dir: Path, tmp_path: Path) -> Iterator[EngineProcess]:
    proc = start_engine("--traffic", "200", "--state-dir", str(tmp_path / "state"))
    yield proc
    proc.stop()


def test_cli_shadow_for_seconds_reports_and_journals_durably(
    traffic_engine: EngineProcess, tmp_path: Path
) -> None:
    assert run_cli("load", str(rule_path("spam_v2.py")), "--slot", "spam").returncode == 0
    assert run_cli("check", "spam@2").returncode == 0
    done = run_cli("shadow", "spam@2", "--sample", "1", "--for", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["state"] == "ended" and report["reason"] == "time is up"
    assert report["compared"] > 0 and report["differed"] > 0
    assert report["differences"][0]["args"][0]["text"]
    text = run_cli("shadow", "report", "spam").stdout
    assert "compared" in text and "first" in text and "spam@1" in text
    # Started without --for, it runs until stopped.
    started = run_cli("shadow", "spam@2", "--sample", "0.5")
    assert "`livepatch shadow stop spam` ends it" in started.stdout
    again = run_cli("shadow", "spam@2")
    assert again.returncode == 1 and "already has a shadow run" in again.stderr
    stopped = json.loads(run_cli("shadow", "stop", "spam", "--json").stdout)
    assert stopped["reason"] == "stopped"
    usage = run_cli("shadow", "spam@2", "--sample", "2")
    assert usage.returncode == 2 and "--sample" in usage.stderr
    # In the journal file, and the engine restarts on it as before.
    lines = (tmp_path / "state" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    written = [json.loads(line) for line in lines]
    assert [r.get("action") for r in written if r["op"] == "shadow" and r["ok"]] == [
        "start",
        "end",
        "start",
        "stop",
    ]
    traffic_engine.restart()
    entries = json.loads(run_cli("journal", "--json").stdout)
    assert [e["result"].split(" ")[0] for e in entries if e["op"] == "shadow" and e["ok"]] == [
        "started",
        "ended",
        "started",
        "stopped:",
    ]


def test_shell_shadow_runs_and_stops(traffic_engine: EngineProcess) -> None:
    script = (
        f"load {rule_path('spam_v2.py')} --slot spam; check spam@2; "
        "shadow spam@2 --sample 1; shadow report spam; shadow stop spam"
    )
    done = run_cli("shell", "-c", script)
    assert done.returncode == 0, done.stderr
    assert "shadowing spam@2 against spam@1 on 100% of spam's calls" in done.stdout
    assert "ended after" in done.stdout and ": stopped" in done.stdout


# --- %hotswap shadow in a real kernel ------------------------------------------------------


def test_hotswap_shadow_in_a_real_kernel_shows_the_report_live_then_final(
    kernel: Any, runtime_dir: Path
) -> None:
    _km, kc = kernel
    messages: list[dict[str, Any]] = []

    def run(code: str) -> str:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            messages.append(msg)
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            assert msg["msg_type"] != "error", msg["content"]

        kc.execute_interactive(code, output_hook=hook, timeout=120)
        return "".join(out)

    run("%load_ext livepatch\nr = %hotswap start shadowed --rate 200")
    run(f"%hotswap load {rule_path('spam_v2.py')} --slot spam\n%hotswap check spam@2")
    shown = run(
        "r = %hotswap shadow spam@2 --sample 1 --for 2\n"
        "print(r['state'], r['reason'], r['compared'] > 0, r['differed'] > 0)\n"
        "html = r._repr_html_()\n"
        "print('lp-shadow-differed' in html, 'lp-themed' in html, 'spam@1' in html)"
    )
    assert "ended time is up True True" in shown and "True True True" in shown
    kinds = [m["msg_type"] for m in messages]
    assert "display_data" in kinds and "update_display_data" in kinds  # live in the cell
    started = run("r = %hotswap shadow spam@2\nprint(r)")
    assert "`%hotswap shadow stop spam` ends it" in started
    stopped = run("r = %hotswap shadow stop\nprint(r['reason'])")
    assert stopped.strip().endswith("stopped")
    usage = run(
        "from IPython.core.error import UsageError\n"
        "try:\n    %hotswap shadow spam@2 --sample 5\nexcept UsageError as e:\n    print(e)"
    )
    assert "--sample" in usage
