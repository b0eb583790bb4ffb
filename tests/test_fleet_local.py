"""Fleet push on the local registry: real engine processes with traffic."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli, start_engine
from fleet_helpers import (
    SLOT_ARGS,
    SocketTraffic,
    active_sha,
    kill_pusher_after_prepare,
    rule,
    sha_to_n,
    wait_abandoned,
    wait_for,
)

from livepatch.client import Client
from livepatch.fleet.local import push_local
from livepatch.fleet.model import PushRecord, sha_of
from livepatch.fleet.store import LocalStore
from livepatch.runtime import find_engine

FLEET = "f"


def member(
    engines: list[EngineProcess], name: str, *extra: str, env: dict[str, str] | None = None
) -> EngineProcess:
    proc = start_engine(*SLOT_ARGS, "--fleet", FLEET, "--traffic", "50", *extra, name=name, env=env)
    engines.append(proc)
    return proc


def errors_of(name: str) -> int:
    with Client(find_engine(name), client_name="test") as client:
        return sum(v["errors"] for s in client.status()["slots"] for v in s["versions"])


def view() -> dict[str, object]:
    result = run_cli("status", "--fleet", FLEET, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.mark.slow
def test_fifty_pushes_back_and_forth_under_traffic(engines: list[EngineProcess]) -> None:
    names = ["a", "b", "c"]
    for name in names:
        member(engines, name)
    shas = sha_to_n(5)
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok  # something to call
    traffic = SocketTraffic(names, shas)
    traffic.start()
    try:
        for i in range(50):
            n = [1, 2, 3, 4, 5, 4, 3, 2][i % 8]  # new versions, then back again
            record = push_local(FLEET, "spam", rule(n), f"rule_v{n}.py")
            assert record.outcome == "committed", json.dumps(record.to_json())
            assert sorted(record.acks) == names
            for name in names:
                assert active_sha(name) == sha_of(rule(n)), (i, name)
    finally:
        traffic.stop()
    assert traffic.failed == []
    assert traffic.mixed == []
    assert all(count > 0 for count in traffic.calls.values())
    assert [errors_of(name) for name in names] == [0, 0, 0]  # the engines' own traffic
    state = LocalStore(FLEET).read()
    assert state.desired["spam"].sha256 == sha_of(rule(2))
    assert state.generation["spam"] == 51


@pytest.mark.slow
def test_member_that_fails_its_check_aborts_the_whole_push(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    member(engines, "a")
    member(engines, "b", env={"LIVEPATCH_TEST_REFUSE": "1"})
    member(engines, "c")
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    path = tmp_path / "rule_v2.py"
    path.write_text(rule(2, refuse=True), encoding="utf-8")
    result = run_cli("push", str(path), "--slot", "spam", "--fleet", FLEET)
    assert result.returncode == 1
    assert "b: refused: load failed" in result.stdout
    assert "this member refuses the rule" in result.stdout
    assert "push aborted" in result.stderr and "nobody swapped" in result.stderr
    bad = sha_of(rule(2, refuse=True))
    for name in "abc":
        assert active_sha(name) == sha_of(rule(1))
        with Client(find_engine(name), client_name="test") as client:
            states = {
                v["state"]
                for s in client.status()["slots"]
                for v in s["versions"]
                if v["sha256"] == bad
            }
        assert states <= {"unloaded"}, (name, states)  # prepared versions were unloaded
    assert LocalStore(FLEET).read().desired["spam"].sha256 == sha_of(rule(1))
    pushes = view()["pushes"]
    assert isinstance(pushes, list) and pushes[-1]["outcome"] == "aborted"


@pytest.mark.slow
def test_kill9_during_prepare_completes_on_live_members_and_converges_on_restart(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"LIVEPATCH_TEST_MARK": str(marks)}
    for name in "abc":
        member(engines, name, env=env)
    victim = engines[1]
    import threading

    result: list[PushRecord] = []
    pusher = threading.Thread(
        target=lambda: result.append(
            push_local(FLEET, "spam", rule(7, slow=1.0), "rule_v7.py", deadline_s=60)
        )
    )
    pusher.start()
    # Wait until b's quarantine child or b itself runs the body, then kill b.
    wait_for(lambda: list(marks.iterdir()), what="a member to start preparing")
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    pusher.join(120)
    record = result[0]
    new = sha_of(rule(7, slow=1.0))
    assert record.outcome == "committed", json.dumps(record.to_json())
    assert "b" in record.down and sorted(record.acks) == ["a", "c"]
    assert active_sha("a") == new and active_sha("c") == new
    engines.remove(victim)
    member(engines, "b", env=env)  # ready only once converged
    assert active_sha("b") == new
    rows = {m["name"]: m for m in view()["members"]}  # type: ignore[attr-defined]
    assert rows["b"]["state"] == "ready"


@pytest.mark.slow
def test_kill9_during_commit_and_late_members_converge_or_diverge(
    engines: list[EngineProcess],
) -> None:
    member(engines, "a")
    member(engines, "b")
    victim = engines[1]

    def kill_b(phase: str, record: PushRecord) -> None:
        if phase == "committed":  # after the desired version flipped, before any swap
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(10)

    record = push_local(FLEET, "spam", rule(3), "rule_v3.py", phase=kill_b)
    assert record.outcome == "committed"
    assert record.down == ["b"] and list(record.acks) == ["a"]
    engines.remove(victim)
    member(engines, "b")
    assert active_sha("b") == sha_of(rule(3))
    # A late member converges before it is ready; one that cannot is diverged.
    member(engines, "c")
    assert active_sha("c") == sha_of(rule(3))
    assert push_local(FLEET, "spam", rule(4, refuse=True), "rule_v4.py").ok
    proc = member(engines, "d", env={"LIVEPATCH_TEST_REFUSE": "1"})
    assert proc.ready["ready"]
    rows = {m["name"]: m for m in view()["members"]}  # type: ignore[attr-defined]
    assert rows["d"]["state"] == "diverged"
    assert "refuses" in rows["d"]["diverged"]["spam"]
    assert [rows[n]["state"] for n in "abc"] == ["ready"] * 3
    text = run_cli("status", "--fleet", FLEET).stdout
    assert "d diverged on spam" in text


@pytest.mark.slow
def test_pusher_killed_between_prepare_and_commit_leaves_nothing_loaded(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    member(engines, "a")
    member(engines, "b")
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    push_id = kill_pusher_after_prepare(tmp_path / "prepared", FLEET, "local", rule(9), "ab")
    new = sha_of(rule(9))
    wait_abandoned("ab", new, still_active=sha_of(rule(1)))
    record = next(p for p in LocalStore(FLEET).read().pushes if p.id == push_id)
    assert record.outcome == "abandoned" and "went away" in record.reason
    assert "abandoned" in run_cli("status", "--fleet", FLEET).stdout
    # The fleet works on: the same source pushed again commits everywhere.
    assert push_local(FLEET, "spam", rule(9), "rule_v9.py").ok
    assert active_sha("a") == active_sha("b") == new


@pytest.mark.slow
def test_concurrent_pushes_conflict_cleanly_and_rollback(engines: list[EngineProcess]) -> None:
    member(engines, "a")
    member(engines, "b")
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    inner: list[PushRecord] = []

    def race(phase: str, record: PushRecord) -> None:
        if phase == "prepared" and not inner:
            inner.append(push_local(FLEET, "spam", rule(2), "rule_v2.py"))

    outer = push_local(FLEET, "spam", rule(3), "rule_v3.py", phase=race)
    assert inner[0].ok
    assert outer.outcome == "aborted" and "another push" in outer.reason
    assert active_sha("a") == active_sha("b") == sha_of(rule(2))
    stale = run_cli(
        "push", "/dev/null", "--slot", "spam", "--fleet", FLEET, "--expect", sha_of(rule(1))[:12]
    )
    assert stale.returncode == 1 and "not " in stale.stdout
    result = run_cli("rollback", "spam", "--fleet", FLEET, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sha256"] == sha_of(rule(1))
    assert active_sha("a") == active_sha("b") == sha_of(rule(1))
    # symbols and diff name fleet versions by sha, once for the fleet.
    one, two = sha_of(rule(1))[:12], sha_of(rule(2))[:12]
    table = run_cli("symbols", one, "--fleet", FLEET)
    assert table.returncode == 0, table.stderr
    assert "'s registry (local)" in table.stdout and "classify" in table.stdout
    diff = run_cli("diff", one, two, "--fleet", FLEET, "--json")
    assert diff.returncode == 0, diff.stderr
    assert "classify" in diff.stdout
    unknown = run_cli("symbols", "0" * 12, "--fleet", FLEET)
    assert unknown.returncode == 1 and "has no version 000000000000" in unknown.stderr
    bad = run_cli("push", "nothere.py", "--slot", "spam", "--fleet", FLEET)
    assert bad.returncode == 1 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_fleet_demo_tours_push_abort_and_rollback(fleet_env: Path) -> None:
    result = run_cli("demo", "--fleet", "3", input="", timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(spam_v2.py): committed on 3 members" in out
    assert "aborted (1 of 3 members refused)" in out
    assert "refused: load failed" in out and "voted ok, released" in out
    assert "rollback spam=" in out and "(spam_v1.py): committed on 3 members" in out
    assert "Traceback" not in out + result.stderr
    assert not (fleet_env / "livepatch" / "fleets").exists() or not any(
        (fleet_env / "livepatch" / "fleets").iterdir()
    )  # the demo's fleet store is gone


def test_engine_core_imports_nothing_of_the_fleet() -> None:
    import subprocess
    import sys

    code = (
        "import sys, livepatch.engine, livepatch.server, livepatch.service; "
        "print(sorted(m for m in sys.modules if m.startswith('livepatch.fleet') or m == 'kazoo'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_abandoned_push_can_no_longer_commit(fleet_env: Path) -> None:
    from livepatch.fleet.local import abandoned
    from livepatch.fleet.model import Desired, FleetConflict

    store = LocalStore(FLEET)
    sha = store.put_source(rule(1), "rule_v1.py")
    record = PushRecord("p1", "spam", sha, "rule_v1.py", started=0.0, pusher=os.getpid())
    record.deadline = 1.0  # long past
    store.record(record)
    assert abandoned(record) == "it was not committed by its deadline"
    assert store.abandon("p1", "given up")
    assert not store.abandon("p1", "again")  # only a preparing push is given up
    with pytest.raises(FleetConflict, match="gave it up"):
        store.commit(record, Desired("spam", sha, "rule_v1.py", None, "p1", 0.0), 0)
    assert "spam" not in store.read().desired  # nothing flipped


@pytest.mark.slow
def test_a_stuck_member_aborts_the_push_at_its_deadline_and_is_not_said_to_refuse(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    for name in "ab":
        member(engines, name)
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    stuck = engines[1]
    path = tmp_path / "rule_v2.py"
    path.write_text(rule(2), encoding="utf-8")
    os.kill(stuck.proc.pid, signal.SIGSTOP)  # alive, its socket open, answering nothing
    try:
        result = run_cli("push", str(path), "--slot", "spam", "--fleet", FLEET, "--deadline", "2")
    finally:
        os.kill(stuck.proc.pid, signal.SIGCONT)
    assert result.returncode == 1, result.stderr
    assert "aborted (1 members did not vote in time)" not in result.stdout  # (plural)
    assert "aborted (1 member did not vote in time)" in result.stdout, result.stdout
    assert "  b: no vote within 2 s" in result.stdout and "refused" not in result.stdout
    assert "  a: voted ok, released spam@2" in result.stdout
    assert active_sha("a") == sha_of(rule(1))  # nobody swapped
    wait_for(lambda: active_sha("b") == sha_of(rule(1)), 30, "b to answer again")
    [record] = [p for p in view()["pushes"] if p["sha256"] == sha_of(rule(2))]  # type: ignore[attr-defined]
    assert record["votes"]["b"]["answered"] is False and record["votes"]["a"]["ok"] is True


@pytest.mark.slow
def test_a_member_stuck_right_after_a_push_is_shown_on_what_it_acked(
    engines: list[EngineProcess],
) -> None:
    for name in "ab":
        member(engines, name)
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    wait_for(
        lambda: LocalStore(FLEET).read_members()["b"].active["spam"]["sha256"] == sha_of(rule(1))
    )
    record = push_local(FLEET, "spam", rule(2), "rule_v2.py")
    # At once: its agent holds off for half a second after a change, so its
    # own file still names rule 1 while it runs rule 2.
    os.kill(engines[1].proc.pid, signal.SIGSTOP)
    try:
        assert record.ok and sorted(record.acks) == ["a", "b"]
        said = LocalStore(FLEET).read_members()["b"].active["spam"]["sha256"]
        rows = {m["name"]: m for m in view()["members"]}  # type: ignore[attr-defined]
    finally:
        os.kill(engines[1].proc.pid, signal.SIGCONT)
    assert rows["b"]["state"] == "unreachable"
    assert rows["b"]["active"]["spam"] == {"version": record.acks["b"], "sha256": sha_of(rule(2))}
    assert said == sha_of(rule(1))  # (what the view had to see past)


def test_a_member_that_is_gone_is_shown_down_and_named_by_the_next_push(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    # Killed (or stopped) after it reported itself ready: before, `status
    # --fleet` went on showing its last report, "ready" and "converged yes".
    for name in "ab":
        member(engines, name)
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    gone = engines[1]
    assert gone.proc is not None
    gone.proc.kill()
    gone.proc.wait()
    rows = {m["name"]: m for m in view()["members"]}  # type: ignore[attr-defined]
    assert rows["b"]["state"] == "down" and rows["b"]["converged"] is None
    assert rows["a"]["state"] == "ready" and rows["a"]["converged"] is True
    table = run_cli("status", "--fleet", FLEET).stdout
    assert re.search(r"^b +down +- ", table, re.M), table
    path = tmp_path / "rule_v2.py"
    path.write_text(rule(2), encoding="utf-8")
    pushed = run_cli("push", str(path), "--slot", "spam", "--fleet", FLEET)
    assert pushed.returncode == 0, pushed.stderr
    assert "b: down" in pushed.stdout, pushed.stdout  # not silently left out


def test_a_push_reads_its_file_as_load_does_and_a_file_of_the_wrong_kind_is_named(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    member(engines, "a")
    # A C file for a Python slot: each member says so (it was the C text's
    # SyntaxError at 1:1), and nobody swaps.
    c_file = tmp_path / "rules.c"
    c_file.write_text("int classify(const char *text) { return 0; }\n", encoding="utf-8")
    wrong = run_cli("push", str(c_file), "--slot", "spam", "--fleet", FLEET)
    assert wrong.returncode == 1, wrong.stderr
    assert "rules.c is native code, but slot 'spam' is a python slot" in wrong.stdout
    assert "SyntaxError" not in wrong.stdout
    # A module saved with a byte order mark and a coding cookie, which python3
    # runs: pushed as its text (it went with the BOM, which every member refused).
    text = rule(7).replace('"""Fleet test rule, version 7."""', '"""Version 7: caf\u00e9."""', 1)
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# -*- coding: latin-1 -*-\n" + text.encode("latin-1"))
    pushed = run_cli("push", str(latin), "--slot", "spam", "--fleet", FLEET)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbf" + rule(8).encode("utf-8"))
    pushed = run_cli("push", str(bom), "--slot", "spam", "--fleet", FLEET)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert active_sha("a") == sha_of(rule(8))  # the text, without the mark


def test_a_push_interrupted_before_it_commits_is_abandoned_at_once(
    engines: list[EngineProcess],
) -> None:
    # Ctrl-C at `push` in `livepatch shell --fleet F` (the shell lives on, so
    # its pid says nothing): the record said "preparing" for its deadline
    # plus 10 s, and the prepared versions stayed loaded that long.
    member(engines, "a")
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok

    def interrupt(phase: str, record: PushRecord) -> None:
        if phase == "prepared":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push_local(FLEET, "spam", rule(2), "rule_v2.py", deadline_s=600, phase=interrupt)
    [record] = [p for p in LocalStore(FLEET).read().pushes if p.sha256 == sha_of(rule(2))]
    assert (record.outcome, record.reason) == (
        "abandoned",
        "its pusher was interrupted before committing",
    )
    wait_abandoned("a", sha_of(rule(2)), still_active=sha_of(rule(1)))
