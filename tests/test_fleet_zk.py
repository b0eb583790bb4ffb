"""Fleet push through a real ZooKeeper server, with faults.

The server is Debian's ``zookeeper`` package, started by the tests on a free
loopback port with a private data directory. In CI a missing server fails
these tests (``.ci/run`` installs it); elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli, start_engine, zk_registry_url
from fleet_helpers import (
    SLOT_ARGS,
    active_sha,
    kill_pusher_after_prepare,
    rule,
    versions_of,
    wait_abandoned,
    wait_for,
)
from test_fleet_cli import engine_rows

from livepatch.fleet.model import PushRecord, sha_of
from livepatch.fleet.zk import ZkAddress, ZkRegistry, current_of, parse_zk_url
from livepatch.fleet.zkmember import ZkMember
from livepatch.fleet.zkserver import ZooKeeperServer

FLEET = "z"
#: Short sessions: a killed member's node goes within a few seconds.
SESSION_S = 2


@pytest.fixture
def registry_url(zk_server: ZooKeeperServer, runtime_dir: Path) -> str:
    """A fresh registry path per test on the shared server."""
    return zk_registry_url(zk_server, SESSION_S)


@pytest.fixture
def engines(registry_url: str) -> Iterator[list[EngineProcess]]:
    started: list[EngineProcess] = []
    yield started
    for proc in started:
        proc.stop()


def member(
    engines: list[EngineProcess],
    url: str,
    name: str,
    env: dict[str, str] | None = None,
) -> EngineProcess:
    proc = start_engine(
        *SLOT_ARGS, "--fleet", FLEET, "--registry", url, "--traffic", "50", name=name, env=env
    )
    engines.append(proc)
    return proc


def push(url: str, n: int, **kwargs: object) -> PushRecord:
    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        return reg.push("spam", rule(n), f"rule_v{n}.py", **kwargs)  # type: ignore[arg-type]


def members(url: str) -> set[str]:
    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        return set(reg.members())


def kill9(proc: EngineProcess) -> None:
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)


@pytest.mark.slow
def test_push_abort_status_and_rollback(engines: list[EngineProcess], registry_url: str) -> None:
    for name in "abc":
        member(
            engines, registry_url, name, env={"LIVEPATCH_TEST_REFUSE": "1"} if name == "c" else None
        )
    first = push(registry_url, 1)
    assert first.ok and sorted(first.acks) == ["a", "b", "c"], first.to_json()
    for n in (2, 3, 2):
        record = push(registry_url, n)
        assert record.ok and sorted(record.acks) == ["a", "b", "c"]
        assert {active_sha(name) for name in "abc"} == {sha_of(rule(n))}
    assert push(registry_url, 4).ok  # c refuses only the rules that say so
    path = Path(tempfile.mkdtemp()) / "rule_v5.py"
    path.write_text(rule(5, refuse=True), encoding="utf-8")
    result = run_cli(
        "push", str(path), "--slot", "spam", "--fleet", FLEET, "--registry", registry_url
    )
    assert result.returncode == 1
    assert "c: refused: load failed" in result.stdout and "refuses the rule" in result.stdout
    assert {active_sha(name) for name in "abc"} == {sha_of(rule(4))}  # nobody swapped
    status = run_cli("status", "--fleet", FLEET, "--registry", registry_url, "--json")
    view = json.loads(status.stdout)
    assert view["desired"]["spam"]["sha256"] == sha_of(rule(4))
    assert [m["state"] for m in view["members"]] == ["ready"] * 3
    assert [p["outcome"] for p in view["pushes"]][-2:] == ["committed", "aborted"]
    back = run_cli("rollback", "spam", "--fleet", FLEET, "--registry", registry_url)
    assert back.returncode == 0, back.stdout + back.stderr
    assert {active_sha(name) for name in "abc"} == {sha_of(rule(2))}


@pytest.mark.slow
def test_kill9_during_prepare_and_commit_then_restart_converges(
    engines: list[EngineProcess], registry_url: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"LIVEPATCH_TEST_MARK": str(marks)}
    for name in "abc":
        member(engines, registry_url, name, env=env)
    assert push(registry_url, 1).ok
    # During prepare: the members are running the slow body; b dies.
    result: list[PushRecord] = []

    def slow_push() -> None:
        with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
            result.append(reg.push("spam", rule(2, slow=1.0), "slow.py", deadline_s=60))

    pusher = threading.Thread(target=slow_push)
    pusher.start()
    wait_for(lambda: list(marks.iterdir()), what="a member to start preparing")
    victim = engines[1]
    kill9(victim)
    engines.remove(victim)
    pusher.join(120)
    slow = sha_of(rule(2, slow=1.0))
    record = result[0]
    print(f"push with a member killed during prepare: {record.outcome} ({record.reason})")
    if record.ok:  # completed on the live members...
        assert sorted(record.acks) == ["a", "c"] and "b" in record.down
        assert active_sha("a") == active_sha("c") == slow
    else:  # ...or aborted, and then nobody swapped
        assert active_sha("a") == active_sha("c") == sha_of(rule(1))
    member(engines, registry_url, "b", env=env)
    assert active_sha("b") == (slow if record.ok else sha_of(rule(1)))
    # During commit: the desired version flipped, then c dies before it swaps.
    victim = engines[1]  # c

    def kill_c(phase: str, rec: PushRecord) -> None:
        # Frozen once it has voted, so it cannot swap before it dies (a
        # member watching the desired node swaps within milliseconds of the
        # flip, sooner than a kill sent after it).
        if phase == "prepared":
            os.kill(victim.proc.pid, signal.SIGSTOP)
        elif phase == "committed":
            kill9(victim)

    record = push(registry_url, 3, phase=kill_c)
    engines.remove(victim)
    assert record.ok
    assert "c" not in record.acks and "c" in record.down
    assert active_sha("a") == active_sha("b") == sha_of(rule(3))
    member(engines, registry_url, "c", env=env)  # ready only once converged
    assert active_sha("c") == sha_of(rule(3))


def open_pushes(url: str) -> list[str]:
    """The pushes the fleet's ``current`` node lists as still preparing."""
    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        data, _ = reg.client.get(reg.paths.current)
        return [str(p["id"]) for p in current_of(data)["pushes"]]


@pytest.mark.slow
def test_two_pushes_at_once_one_commits_and_the_other_aborts_cleanly(
    engines: list[EngineProcess], registry_url: str
) -> None:
    for name in "ab":
        member(engines, registry_url, name)
    assert push(registry_url, 1).ok
    second: list[PushRecord] = []
    pusher = threading.Thread(target=lambda: second.append(push(registry_url, 6)))

    watcher = ZkRegistry(parse_zk_url(registry_url), FLEET)

    def start_second(phase: str, rec: PushRecord) -> None:
        # The second push opens while the first waits here, prepared: both
        # read the same desired version, and ``current`` lists both open.
        if phase == "prepared":
            pusher.start()
            wait_for(
                lambda: len(watcher.client.get_children(watcher.paths.pushes)) == 3,
                what="the second push to open",
            )

    try:
        first = push(registry_url, 5, phase=start_second)
        pusher.join(120)
    finally:
        watcher.close()
    records = {5: first, 6: second[0]}
    won = [n for n, r in records.items() if r.ok]
    assert len(won) == 1, {n: (r.outcome, r.reason) for n, r in records.items()}
    (lost,) = set(records) - set(won)
    assert "another push changed spam's desired version first" in records[lost].reason
    assert open_pushes(registry_url) == []
    for name in "ab":
        assert active_sha(name) == sha_of(rule(won[0]))
        # What the losing push prepared is unloaded; nobody swapped to it.
        wait_for(
            lambda name=name: versions_of(name, sha_of(rule(lost))) == ["unloaded"],
            what=f"{name} to release the aborted push's version",
        )
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        assert reg.desired()["spam"][0].sha256 == sha_of(rule(won[0]))


@pytest.mark.slow
def test_old_pushes_are_pruned_whole_in_batched_transactions(
    engines: list[EngineProcess], registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import livepatch.fleet.zk as zk

    monkeypatch.setattr(zk, "HISTORY", 2)
    monkeypatch.setattr(zk, "PRUNE_BATCH", 3)  # a push's nodes take several transactions
    for name in "ab":
        member(engines, registry_url, name)
    records = [push(registry_url, n) for n in (1, 2, 3, 4, 5)]
    assert all(r.ok for r in records)
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        kept = sorted(reg.client.get_children(reg.paths.pushes))
        assert kept == sorted(r.id for r in records[-3:])  # HISTORY, then the new one
        for gone in records[:2]:
            assert reg.client.exists(f"{reg.paths.pushes}/{gone.id}") is None
        last = f"{reg.paths.pushes}/{records[-1].id}"
        assert len(reg.client.get_children(f"{last}/votes")) == 2
        assert [r.outcome for r in reg.history(10)] == ["committed"] * 3
    assert active_sha("a") == active_sha("b") == sha_of(rule(5))


@pytest.mark.slow
def test_pusher_killed_between_prepare_and_commit_leaves_nothing_loaded(
    engines: list[EngineProcess], registry_url: str, tmp_path: Path
) -> None:
    for name in "ab":
        member(engines, registry_url, name)
    assert push(registry_url, 1).ok
    push_id = kill_pusher_after_prepare(tmp_path / "prepared", FLEET, registry_url, rule(9), "ab")
    new = sha_of(rule(9))
    # Its session (and with it the push's lease node) expires: the members
    # give the push up and unload what they prepared.
    wait_abandoned("ab", new, still_active=sha_of(rule(1)))
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        history = {r.id: r for r in reg.history(50)}
        assert reg.desired()["spam"][0].sha256 == sha_of(rule(1))
    assert history[push_id].outcome == "abandoned"
    assert push(registry_url, 9).ok
    assert active_sha("a") == active_sha("b") == new


@pytest.mark.slow
def test_fleet_shell_on_zookeeper(
    engines: list[EngineProcess], registry_url: str, tmp_path: Path
) -> None:
    for name in "ab":
        member(engines, registry_url, name)
    assert push(registry_url, 1).ok
    path = tmp_path / "rule_v2.py"
    path.write_text(rule(2), encoding="utf-8")
    new = sha_of(rule(2))[:12]
    script = f"push {path} --slot spam; status; history; rollback spam"
    result = run_cli("shell", "--fleet", FLEET, "--registry", registry_url, "-c", script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"push spam={new} (rule_v2.py): committed on 2 members" in out
    assert f"fleet {FLEET} (zookeeper://" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("a ", "b "))]
    assert [r[:3] for r in rows] == [["a", "ready", "yes"], ["b", "ready", "yes"]]
    assert f"rollback spam={sha_of(rule(1))[:12]}" in out
    assert active_sha("a") == active_sha("b") == sha_of(rule(1))


@pytest.mark.slow
def test_zookeeper_restart_mid_push_completes_or_aborts_with_a_record(
    engines: list[EngineProcess], registry_url: str, zk_server: ZooKeeperServer
) -> None:
    for name in "ab":
        member(engines, registry_url, name)
    assert push(registry_url, 1).ok

    def restart(phase: str, rec: PushRecord) -> None:
        if phase == "prepared":  # votes are in; the commit comes next
            zk_server.restart(kill=True)

    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        record = reg.push("spam", rule(2), "rule_v2.py", phase=restart, deadline_s=60)
        desired = reg.desired()["spam"][0]
        history = {r.id: r for r in reg.history(50)}
    print(f"push across a ZooKeeper restart: {record.outcome} ({record.reason})")
    # Never half-committed without a record: the desired version and the
    # push's record agree, whatever happened.
    assert history[record.id].outcome == record.outcome
    if record.ok:
        assert desired.sha256 == sha_of(rule(2)) and desired.push == record.id
    else:
        assert desired.sha256 == sha_of(rule(1))
    expected = desired.sha256
    for name in "ab":
        wait_for(lambda name=name: active_sha(name) == expected, what=f"{name} to converge")
    # The fleet works on after the restart.
    assert push(registry_url, 3).ok
    assert active_sha("a") == active_sha("b") == sha_of(rule(3))
    # Each engine said, in one line each, that ZooKeeper went and came back,
    # and kazoo's warnings (one per reconnect attempt) stayed out of its log.
    for engine in engines:
        log = engine.log_text()
        assert f"fleet {FLEET}: lost ZooKeeper at {zk_server.hosts}: reconnecting" in log, log
        assert f"fleet {FLEET}: ZooKeeper at {zk_server.hosts} is back: converging" in log, log
        assert "Connection dropped" not in log and "Traceback" not in log, log


@pytest.mark.slow
def test_expired_session_leaves_membership_then_rejoins_and_converges(
    engines: list[EngineProcess], registry_url: str
) -> None:
    for name in "ab":
        member(engines, registry_url, name)
    assert push(registry_url, 1).ok
    frozen = engines[1]
    os.kill(frozen.proc.pid, signal.SIGSTOP)  # b stops answering ZooKeeper's pings
    try:
        wait_for(lambda: members(registry_url) == {"a"}, what="b's session to expire")
        record = push(registry_url, 2)
        assert record.ok and list(record.acks) == ["a"]
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    wait_for(lambda: members(registry_url) == {"a", "b"}, what="b to join again")
    wait_for(lambda: active_sha("b") == sha_of(rule(2)), what="b to converge")
    # A late member converges before it reports ready.
    member(engines, registry_url, "c")
    assert active_sha("c") == sha_of(rule(2))


def test_symbols_and_diff_by_sha_come_from_zookeeper_with_no_member_anywhere(
    registry_url: str,
) -> None:
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        one = reg.put_source(rule(1), "rule_v1.py")
        two = reg.put_source(rule(2), "rule_v2.py")
        assert reg.members() == {}
    shown = run_cli("symbols", one[:12], "--fleet", FLEET, "--registry", registry_url, "--json")
    assert shown.returncode == 0, shown.stderr
    # The rows an engine shows for that source, with no member anywhere.
    assert json.loads(shown.stdout)["rows"] == engine_rows(rule(1))
    script = f"symbols {one[:12]}; diff {one[:12]} {two[:12]}"
    shell = run_cli("shell", "--fleet", FLEET, "--registry", registry_url, "-c", script)
    assert shell.returncode == 0, shell.stderr
    assert f"from fleet {FLEET}'s registry (zookeeper://" in shell.stdout
    assert f"{one[:12]} (rule_v1.py) vs {two[:12]} (rule_v2.py)" in shell.stdout
    missing = run_cli("symbols", "0" * 12, "--fleet", FLEET, "--registry", registry_url)
    assert missing.returncode == 1 and "registry has no version" in missing.stderr


def _session_counts(server: ZooKeeperServer) -> dict[int, tuple[int, int]]:
    """session id -> (packets received from it, packets sent to it), from the
    server's own ``cons`` command."""
    import re
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"cons")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    counts = {}
    for line in reply.decode().splitlines():
        found = re.search(r"recved=(\d+),sent=(\d+),sid=0x([0-9a-f]+)", line)
        if found:
            counts[int(found[3], 16)] = (int(found[1]), int(found[2]))
    return counts


@contextlib.contextmanager
def memory_members(
    server: ZooKeeperServer, names: list[str], refresh_s: float = 3600.0
) -> Iterator[tuple[ZkAddress, list[ZkMember]]]:
    """Real member agents on in-memory engines, joined (and converged) to a
    fresh registry path on ``server``; they leave when the block ends. The
    default refresh of an hour means no periodic pass: signals are all they hear."""
    from livepatch.fleet.handle import MemoryHandle
    from livepatch.fleet.zkmember import ZkMember

    address = parse_zk_url(zk_registry_url(server, 30))
    agents = [ZkMember(address, FLEET, MemoryHandle(n), refresh_s=refresh_s) for n in names]
    try:
        for agent in agents:
            agent.start()
        yield address, agents
    finally:
        for agent in agents:
            agent.stop()


def test_a_push_costs_each_member_two_requests_and_two_watch_events(
    zk_server: ZooKeeperServer,
) -> None:
    """The member protocol's cost per push, counted by the server for each
    member's session: the push's signal (its opening) arrives as a watch
    event, and the member votes; the commit's signal arrives, and it swaps
    and acks (with its state) in one transaction: 2 requests; the server
    sends their 2 replies and the 2 events. No read of ``current``."""
    pushes = 4
    with memory_members(zk_server, [f"s{i}" for i in range(4)]) as (address, agents):
        with ZkRegistry(address, FLEET) as reg:
            # Both versions once first: every member has their sources.
            assert all(reg.push("spam", rule(n), f"rule_v{n}.py").ok for n in (1, 2))
            before = _session_counts(zk_server)
            for i in range(pushes):
                record = reg.push("spam", rule(1 + i % 2), f"rule_v{1 + i % 2}.py")
                assert record.ok and len(record.acks) == len(agents)
            after = _session_counts(zk_server)
        for agent in agents:
            sid = agent.client.client_id[0]
            received = after[sid][0] - before[sid][0]
            sent = after[sid][1] - before[sid][1]
            assert 2 * pushes <= received <= 2 * pushes + 1, (agent.name, received)
            assert 4 * pushes <= sent <= 4 * pushes + 1, (agent.name, sent)
            assert agent.state.active["spam"]["sha256"] == sha_of(rule(2))


def test_members_follow_the_signals_across_epochs_and_old_epochs_go(
    zk_server: ZooKeeperServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no periodic pass, signals are all a member hears: over many
    epoch changes (a small epoch here) every push is still acked by every
    member, and only the last three epochs are left in the registry."""
    from livepatch.fleet import zksignal

    monkeypatch.setattr(zksignal, "EPOCH_SIGNALS", 3)
    with memory_members(zk_server, ["e0", "e1", "e2"]) as (address, agents):
        with ZkRegistry(address, FLEET) as reg:
            for i in range(12):
                record = reg.push("spam", rule(1 + i % 2), f"rule_v{1 + i % 2}.py", deadline_s=20)
                assert record.ok and len(record.acks) == len(agents), (i, record.reason)
            epochs = sorted(reg.client.get_children(reg.paths.signals))
        # Two pushes (four signals) per epoch of three: the twelfth push's is the
        # sixth; members watch the last two, the pusher keeps three.
        assert epochs == ["e0000000003", "e0000000004", "e0000000005"], epochs
        for agent in agents:
            assert agent._epoch == f"{reg.paths.signals}/{epochs[-1]}"
            assert agent._previous == f"{reg.paths.signals}/{epochs[-2]}"
            assert agent.state.active["spam"]["sha256"] == sha_of(rule(2))


def test_a_pusher_that_read_the_epoch_before_the_next_began_is_still_heard(
    zk_server: ZooKeeperServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race at an epoch's end: a pusher read the epoch, another started
    the next one, and the first signals into the old one. Members (with no
    periodic pass to fall back on) still hear every signal of that push."""
    from livepatch.fleet import zk, zksignal

    monkeypatch.setattr(zksignal, "EPOCH_SIGNALS", 3)
    with memory_members(zk_server, ["r0", "r1"]) as (address, agents):
        with ZkRegistry(address, FLEET) as reg:
            for i in range(3):  # the third push starts epoch 1
                assert reg.push("spam", rule(1 + i % 2), f"rule_v{1 + i % 2}.py").ok
            late = f"{reg.paths.signals}/{zksignal.epoch_name(0)}"
            # Members move to epoch 1 with the third push's own signals.
            assert all(a._epoch and a._epoch.endswith(zksignal.epoch_name(1)) for a in agents)
            monkeypatch.setattr(zk, "pusher_epoch", lambda client, signals: late)
            record = reg.push("spam", rule(2), "rule_v2.py", deadline_s=20)
            assert record.ok and len(record.acks) == len(agents), record.reason
            names = [n for n in reg.client.get_children(late) if n.startswith("commit.")]
        assert len(names) == 3  # the lagging push's commit went to the old epoch
        for agent in agents:
            assert agent.state.active["spam"]["sha256"] == sha_of(rule(2))


def test_a_member_sets_its_signal_watch_again_after_a_lost_connection(
    zk_server: ZooKeeperServer,
) -> None:
    """The server forgets a persistent watch with its connection, and kazoo
    restores only its own: after a ZooKeeper restart a member (with no
    periodic pass to fall back on) still hears the next push at once."""
    with memory_members(zk_server, ["w0"]) as (address, (agent,)):
        with ZkRegistry(address, FLEET) as reg:
            assert reg.push("spam", rule(1), "rule_v1.py").ok
            watched = agent.watch_sets
            zk_server.restart(kill=False)
            reg._wait_connected()
            # Until the member's full pass after reconnecting has set its
            # watch again (it reads ``current`` only after that).
            deadline = time.monotonic() + 30
            while agent.watch_sets == watched and time.monotonic() < deadline:
                time.sleep(0.02)
            assert agent.watch_sets > watched
            record = reg.push("spam", rule(2), "rule_v2.py", deadline_s=20)
            assert record.ok and set(record.acks) == {"w0"}, record.reason
        assert agent.state.active["spam"]["sha256"] == sha_of(rule(2))


def test_a_member_woken_all_the_time_still_makes_its_periodic_pass(
    zk_server: ZooKeeperServer,
) -> None:
    """Signals are hints: a member whose loop is woken faster than its
    refresh interval (pushes back to back) still re-reads the registry now
    and then, and so repairs an engine that runs what the fleet did not ask
    (swapped by hand here)."""
    from livepatch.fleet.zkmember import BUSY_REFRESHES

    stop = threading.Event()
    with memory_members(zk_server, ["b0"], refresh_s=0.2) as (address, (agent,)):

        def wake() -> None:  # an event for the member every 20 ms, about nothing
            while not stop.wait(0.02):
                agent._mark(f"{agent.paths.base}/nothing")

        waker = threading.Thread(target=wake, daemon=True)
        try:
            with ZkRegistry(address, FLEET) as reg:
                assert reg.push("spam", rule(1), "rule_v1.py").ok
            waker.start()
            by_hand = agent.handle.load("spam", rule(2), "by_hand.py")["version"]
            agent.handle.swap(by_hand)
            deadline = time.monotonic() + BUSY_REFRESHES * 0.2 * 10
            while time.monotonic() < deadline:
                status = agent.handle.status()["slots"][0]
                active = next(v for v in status["versions"] if v["id"] == status["active"])
                if active["sha256"] == sha_of(rule(1)):
                    break
                time.sleep(0.05)
            assert active["sha256"] == sha_of(rule(1)), "the engine was never repaired"
        finally:
            stop.set()


def test_a_pushs_lease_goes_with_its_outcome(zk_server: ZooKeeperServer) -> None:
    """The pusher's ephemeral lease under a push only tells members that a
    preparing push still has its pusher: it goes in the transaction that
    records the outcome (committed, aborted, refused by ``--expect``), not
    when the pusher's session ends; and a lease already gone (our session
    was lost and a new one began) does not stop the record being written."""
    with (
        memory_members(zk_server, ["l0", "l1"]) as (address, _agents),
        ZkRegistry(address, FLEET) as reg,
    ):
        committed = reg.push("spam", rule(1), "rule_v1.py")
        aborted = reg.push("spam", "def classify(:\n", "broken.py")
        refused = reg.push("spam", rule(2), "rule_v2.py", expect="none")
        assert committed.ok and aborted.outcome == refused.outcome == "aborted"

        def lose_lease(phase: str, record: PushRecord) -> None:
            if phase == "committed":
                reg.client.delete(f"{reg.paths.pushes}/{record.id}/pusher")

        lost = reg.push("spam", rule(2), "rule_v2.py", phase=lose_lease)
        assert lost.ok and len(lost.acks) == 2
        for record in (committed, aborted, refused, lost):
            children = reg.client.get_children(f"{reg.paths.pushes}/{record.id}")
            # A push --expect refused never opened: its header is its record.
            full = ["record"] if record is not refused else []
            assert sorted(children) == sorted(["acks", "roster", "votes", *full]), record
        outcomes = [r.outcome for r in reg.history(4)]
        assert outcomes == ["committed", "aborted", "aborted", "committed"]


def test_a_failed_transaction_is_named_by_its_failing_operation(
    zk_server: ZooKeeperServer,
) -> None:
    """ZooKeeper reports the operations before the failing one as rolled
    back and those after it as inconsistent: the pusher's retries (an
    aborted push written again after a lost connection) must look at the
    failing one, or a record already written reads as a failure."""
    from kazoo.exceptions import NodeExistsError

    from livepatch.fleet.zk import first_error

    with ZkRegistry(parse_zk_url(zk_registry_url(zk_server, 30)), FLEET) as reg:
        reg.client.ensure_path("/t/there")
        tx = reg.client.transaction()
        tx.set_data("/t", b"x")
        tx.create("/t/there")
        tx.create("/t/new")
        results = tx.commit()
        assert isinstance(first_error(results), NodeExistsError), results
        assert reg.client.get("/t")[0] == b"" and not reg.client.exists("/t/new")
        tx = reg.client.transaction()
        tx.set_data("/t", b"y")
        assert first_error(tx.commit()) is None
