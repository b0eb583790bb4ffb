"""Save-to-live against a real engine, with real file edits (in place and by rename)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli

from livepatch.client import Client
from livepatch.filewatch import WatchStep, watch_file

RULE = """
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    return Verdict(spam={spam}, score={score})
"""


class Watcher:
    """``watch_file`` on a thread of its own, its steps in a queue."""

    def __init__(self, engine: EngineProcess, path: Path, swap: bool) -> None:
        self.client = Client.connect(engine.name)
        self.stop = threading.Event()
        self.steps: queue.Queue[WatchStep | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(path, swap), daemon=True)
        self.thread.start()

    def _run(self, path: Path, swap: bool) -> None:
        try:
            for step in watch_file(self.client, path, "spam", swap=swap, stop=self.stop):
                self.steps.put(step)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.steps.put(exc)

    def next(self) -> WatchStep:
        item = self.steps.get(timeout=30)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.close()
        assert not self.thread.is_alive()


@pytest.fixture
def rule_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.py"
    path.write_text(RULE.format(spam=False, score=0.1))
    return path


@pytest.fixture
def watcher(engine_proc: EngineProcess, rule_file: Path) -> Iterator[Watcher]:
    w = Watcher(engine_proc, rule_file, swap=True)
    yield w
    w.close()


def active(engine: EngineProcess) -> str:
    with Client.connect(engine.name) as client:
        return next(s["active"] for s in client.status()["slots"] if s["name"] == "spam")


def test_every_save_is_loaded_checked_diffed_and_swapped(
    engine_proc: EngineProcess, rule_file: Path, watcher: Watcher
) -> None:
    first = watcher.next()
    assert first.ok and first.swapped and first.active == first.version == "spam@2"
    assert first.diff is not None and first.diff.counts()["~"] >= 1  # against spam@1

    rule_file.write_text(RULE.format(spam=True, score=0.9))
    second = watcher.next()
    assert second.swapped and second.version == "spam@3" and active(engine_proc) == "spam@3"

    # an editor that saves by writing a new file and renaming it over the old
    fresh = rule_file.with_name(".rules.py.swp-new")
    fresh.write_text(RULE.format(spam=True, score=0.7))
    os.replace(fresh, rule_file)
    third = watcher.next()
    assert third.swapped and third.version == "spam@4"


def test_a_broken_save_leaves_the_active_version_serving(
    engine_proc: EngineProcess, rule_file: Path, watcher: Watcher
) -> None:
    assert watcher.next().active == "spam@2"

    rule_file.write_text("def classify(msg:\n")
    syntax = watcher.next()
    assert syntax.version is None and not syntax.swapped
    assert syntax.error is not None
    assert "rules.py:1" in syntax.error and "SyntaxError" in syntax.error

    rule_file.write_text(RULE.format(spam="undefined_name", score=0.5))
    unresolved = watcher.next()
    assert unresolved.report is not None and not unresolved.report.ok
    assert [p.symbol for p in unresolved.report.errors] == ["undefined_name"]
    assert not unresolved.swapped and unresolved.active == "spam@2"
    assert active(engine_proc) == "spam@2"


def test_without_swap_a_clean_save_is_loaded_and_checked_only(
    engine_proc: EngineProcess, rule_file: Path
) -> None:
    w = Watcher(engine_proc, rule_file, swap=False)
    try:
        step = w.next()
        assert step.ok and not step.swapped and step.version == "spam@2"
        assert step.active == "spam@1" and active(engine_proc) == "spam@1"
    finally:
        w.close()


def test_each_save_is_compared_with_what_is_active_when_it_is_seen(
    engine_proc: EngineProcess, rule_file: Path, watcher: Watcher
) -> None:
    assert watcher.next().active == "spam@2"
    with Client.connect(engine_proc.name) as other:
        other.swap("spam@1")  # someone rolls back by hand meanwhile
        rule_file.write_text(RULE.format(spam=True, score=0.3))
        step = watcher.next()
    # diffed against what was active when the save was seen (not what the
    # watcher swapped last), and the compare-and-swap named that version
    assert step.swapped and step.diff is not None and step.diff.a == "spam@1"
    with Client.connect(engine_proc.name) as client:
        swap = [e for e in client.journal() if e["op"] == "swap"][-1]
    assert swap["version"] == "spam@3" and "spam@1 -> spam@3" in swap["result"]


def cli_watch(path: Path) -> tuple[subprocess.Popen[str], Callable[[], dict[str, object]]]:
    """``livepatch load PATH --watch --swap --json`` and a reader of its next
    JSON line (one per save)."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "livepatch", "load", str(path), "--watch", "--swap", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in cli.stdout or ()], daemon=True
    ).start()

    def next_step() -> dict[str, object]:
        step: dict[str, object] = json.loads(lines.get(timeout=30))
        return step

    return cli, next_step


def test_the_cli_watches_until_ctrl_c(engine_proc: EngineProcess, rule_file: Path) -> None:
    # `livepatch load FILE --watch --swap --json`: one JSON line per save,
    # Ctrl-C (SIGINT) ends it with status 0
    cli, next_step = cli_watch(rule_file)
    try:
        first = next_step()
        assert first["swapped"] is True and first["version"] == "spam@2"
        rule_file.write_text("def classify(msg:\n")
        broken = next_step()
        assert broken["ok"] is False and broken["version"] is None
        assert "SyntaxError" in str(broken["error"]) and broken["active"] == "spam@2"
        rule_file.write_text(RULE.format(spam=True, score=0.9))
        fixed = next_step()
        assert fixed["swapped"] is True and fixed["active"] == "spam@3"
    finally:
        cli.send_signal(signal.SIGINT)
        assert cli.wait(20) == 0, cli.stderr.read() if cli.stderr else ""
    assert active(engine_proc) == "spam@3"
    assert cli.stderr is not None and cli.stderr.read() == ""  # quietly: not even watchfiles'


def test_swap_without_watch_is_a_usage_error(engine_proc: EngineProcess, rule_file: Path) -> None:
    done = run_cli("load", str(rule_file), "--swap")
    assert done.returncode == 2
    assert "--swap goes with --watch" in done.stderr
    assert done.stderr.count("\n") == 1  # one line, no traceback


def test_a_save_right_after_the_first_report_is_not_missed(
    engine_proc: EngineProcess, rule_file: Path
) -> None:
    # The generator sets its watcher up only when asked for the next step: a
    # save made while the caller handles the first report has no event.
    stop = threading.Event()
    deadline = threading.Timer(30, stop.set)  # missed: the watch ends, next() fails
    deadline.start()
    with Client.connect(engine_proc.name) as client:
        steps = watch_file(client, rule_file, "spam", swap=True, stop=stop)
        assert next(steps).active == "spam@2"
        rule_file.write_text(RULE.format(spam=True, score=0.7))
        try:
            second = next(steps)
        finally:
            stop.set()
            deadline.cancel()
        assert second.swapped and second.active == "spam@3"


def test_the_watch_outlives_its_engine_and_follows_it_when_it_is_back(
    engine_proc: EngineProcess, rule_file: Path
) -> None:
    # An engine restarted (by its supervisor, a deploy) under the same name:
    # the save made while it is away is not loaded and says so; the next one
    # reconnects, says the engine was restarted, and loads there.
    cli, next_step = cli_watch(rule_file)
    try:
        first = next_step()
        assert first["swapped"] is True and first["gone"] is False
        old_pid = engine_proc.pid
        engine_proc.stop()
        rule_file.write_text(RULE.format(spam=True, score=0.9))
        away = next_step()
        assert away["gone"] is True and away["version"] is None and away["swapped"] is False
        assert "once the engine is back" in str(away["error"]), away
        assert cli.poll() is None  # still watching
        new_pid = engine_proc.restart()["pid"]
        rule_file.write_text(RULE.format(spam=True, score=0.8))
        back = next_step()
        assert back["reconnected"] == (
            f"reconnected to engine {engine_proc.name!r}: it was restarted "
            f"(pid {old_pid}, now {new_pid})"
        )
        # The new process restored nothing (no state directory): the save is its spam@2.
        assert back["swapped"] is True and back["version"] == back["active"] == "spam@2"
        assert active(engine_proc) == "spam@2"
    finally:
        # SIGTERM while watchfiles waits (it reports any signal as Ctrl-C):
        # still the front end's SIGTERM, one line and 143.
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(20)
    assert cli.stderr is not None and cli.stderr.read() == "livepatch: stopped by SIGTERM\n"
    assert code == 128 + signal.SIGTERM
