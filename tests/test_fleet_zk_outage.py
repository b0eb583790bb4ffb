"""ZooKeeper going away for a while: a pusher gives it up in one line, a
member keeps trying every couple of seconds and is back soon after it.

These tests stop this module's own ZooKeeper server (the ``zk_server``
fixture is per module), and start it again before they end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, start_engine, zk_registry_url
from fleet_helpers import SLOT_ARGS, active_sha, rule, versions_of, wait_for

from livepatch.fleet.model import sha_of
from livepatch.fleet.zk import GIVE_UP_MIN_S, RECONNECT_MAX_S, ZkRegistry, parse_zk_url
from livepatch.fleet.zkserver import ZooKeeperServer

FLEET = "zf"
#: Short sessions: a stopped member's (and a gone pusher's) session expires soon.
SESSION_S = 2


@pytest.fixture
def registry_url(zk_server: ZooKeeperServer, runtime_dir: Path) -> Iterator[str]:
    """A fresh registry path; the server is running again when the test ends."""
    yield zk_registry_url(zk_server, SESSION_S)
    if zk_server.proc is None:
        zk_server.start()


@pytest.fixture
def engines(registry_url: str) -> Iterator[list[EngineProcess]]:
    started: list[EngineProcess] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.proc.pid, signal.SIGCONT)
        proc.stop()


def member(
    engines: list[EngineProcess], url: str, name: str, env: dict[str, str] | None = None
) -> EngineProcess:
    proc = start_engine(*SLOT_ARGS, "--fleet", FLEET, "--registry", url, name=name, env=env)
    engines.append(proc)
    return proc


@pytest.mark.slow
def test_a_push_that_loses_zookeeper_gives_up_in_one_line_and_is_recorded_abandoned(
    engines: list[EngineProcess], registry_url: str, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    """QA's hang: a push waiting for a member's vote when ZooKeeper dies
    used to wait forever (kazoo retries forever, its backoff doubling to an
    hour). Now the pusher gives ZooKeeper up once it has been unreachable for
    the session timeout (at least GIVE_UP_MIN_S), says so in one line, and
    exits 1; the push is never half-committed: once ZooKeeper is back, its
    members record it as abandoned and release what they prepared."""
    for name in ("z1", "z2"):
        member(engines, registry_url, name)
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        assert reg.push("spam", rule(1), "rule_v1.py").ok
    os.kill(engines[1].proc.pid, signal.SIGSTOP)  # the push waits for z2's vote
    path = tmp_path / "rule_v2.py"
    path.write_text(rule(2), encoding="utf-8")
    new = sha_of(rule(2))
    command = ["push", str(path), "--slot", "spam", "--fleet", FLEET, "--registry", registry_url]
    pusher = subprocess.Popen(
        [sys.executable, "-m", "livepatch", *command, "--deadline", "15"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: versions_of("z1", new) == ["resolved"], what="z1 to vote on the push")
        zk_server.stop(kill=True)
        lost = time.monotonic()
        out, err = pusher.communicate(timeout=GIVE_UP_MIN_S + 20)
    finally:
        if pusher.poll() is None:
            pusher.kill()
            pusher.wait()
    took = time.monotonic() - lost
    assert pusher.returncode == 1, (out, err)
    assert took < GIVE_UP_MIN_S + 5, took
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    prefix = f"livepatch: error: lost ZooKeeper at {zk_server.hosts} during the push (unreachable"
    assert err.startswith(prefix), err
    found = re.search(r"push (\S+) was not committed and nobody swapped to it", err)
    assert found and "record it as abandoned" in err, err
    push_id = found[1]
    # Back: the pusher's session (and the push's lease) expires, and the
    # members give the push up, on the record.
    zk_server.start()
    os.kill(engines[1].proc.pid, signal.SIGCONT)
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        wait_for(
            lambda: {r.id: r.outcome for r in reg.history(10)}.get(push_id) == "abandoned",
            timeout=30,
            what="the members to record the push abandoned",
        )
        assert reg.desired()["spam"][0].sha256 == sha_of(rule(1))
    try:
        wait_for(lambda: versions_of("z1", new) == ["unloaded"], what="z1 to release the push")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: z1 has {versions_of('z1', new)}; its log:\n{engines[0].log_text()}"
        ) from None
    assert active_sha("z1") == active_sha("z2") == sha_of(rule(1))  # nobody swapped


def members(url: str) -> set[str]:
    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        return set(reg.members())


@pytest.mark.slow
def test_a_member_whose_vote_was_lost_with_zookeeper_still_releases_what_it_prepared(
    engines: list[EngineProcess], registry_url: str, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    """A member that prepared a push while ZooKeeper was gone could not
    write its vote; its session expired before it was back. It used to
    forget it had prepared (it prepared again, finding the version loaded:
    not new, never released; or the deadline had passed: never looked at
    again), so the version stayed loaded and nobody recorded the push
    abandoned. Now it knows what it prepared before it votes."""
    marks = tmp_path / "marks"
    marks.mkdir()
    z1 = member(engines, registry_url, "z1", env={"LIVEPATCH_TEST_MARK": str(marks)})
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        assert reg.push("spam", rule(1), "rule_v1.py").ok
        slow = rule(2, slow=2.0)
        pushed: list[BaseException] = []

        def push() -> None:
            try:
                reg.push("spam", slow, "slow.py", deadline_s=10)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                pushed.append(exc)

        pusher = threading.Thread(target=push)
        pusher.start()
        new = sha_of(slow)
        try:
            wait_for(lambda: list(marks.iterdir()), what="z1 to start preparing")
            zk_server.stop(kill=True)  # before z1 can vote
            # Prepared: its vote waits for ZooKeeper, and its session must
            # expire before it is back.
            wait_for(lambda: versions_of("z1", new) == ["resolved"], what="z1 to prepare")
            os.kill(z1.proc.pid, signal.SIGSTOP)
        finally:
            pusher.join(GIVE_UP_MIN_S + 20)
    assert len(pushed) == 1 and "was not committed" in str(pushed[0]), pushed
    zk_server.start()
    try:
        wait_for(lambda: members(registry_url) == set(), what="z1's session to expire")
    finally:
        os.kill(z1.proc.pid, signal.SIGCONT)
    try:
        wait_for(lambda: versions_of("z1", new) == ["unloaded"], what="z1 to release the push")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: z1 has {versions_of('z1', new)}") from None
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        outcomes = [r.outcome for r in reg.history(10)]
        assert outcomes == ["committed", "abandoned"], outcomes
        assert reg.desired()["spam"][0].sha256 == sha_of(rule(1))
    assert active_sha("z1") == sha_of(rule(1))


class _Attempts:
    """Stands in for a dead server on its port: accepts each connection and
    closes it at once, noting when, so every reconnect attempt is seen."""

    def __init__(self, port: int) -> None:
        self.times: list[float] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.times.append(time.monotonic())
            conn.close()

    def close(self) -> list[float]:
        """Stop; the gaps between attempts (from the start, to now)."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        marks = [self.started, *self.times, time.monotonic()]
        return [b - a for a, b in itertools.pairwise(marks)]


@pytest.mark.slow
def test_a_member_retries_a_lost_zookeeper_every_few_seconds_and_is_back_soon_after_it(
    engines: list[EngineProcess], registry_url: str, zk_server: ZooKeeperServer
) -> None:
    """QA saw members take 3.5 minutes to come back after a 95 s outage:
    kazoo's reconnect backoff doubles up to an hour. A member tries forever,
    at most RECONNECT_MAX_S (+ kazoo's 40 % jitter) apart: over a 15 s
    outage kazoo's default would be waiting 6 s or more between attempts."""
    engine = member(engines, registry_url, "m1")
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        assert reg.push("spam", rule(1), "rule_v1.py").ok
    zk_server.stop(kill=True)
    attempts = _Attempts(zk_server.port)
    try:
        wait_for(lambda: "lost ZooKeeper at" in engine.log_text(), what="the member to see it go")
        time.sleep(15)  # the outage itself: what is measured is the member's attempts in it
    finally:
        gaps = attempts.close()
    bound = RECONNECT_MAX_S * 1.4 + 0.7  # kazoo's jitter, and a loaded machine's slack
    print("gaps between attempts:", [round(g, 1) for g in gaps])
    assert len(gaps) > 4 and max(gaps) <= bound, [round(g, 1) for g in gaps]
    zk_server.start()
    up = time.monotonic()
    back = f"fleet {FLEET}: ZooKeeper at {zk_server.hosts} is back: converging"
    wait_for(lambda: back in engine.log_text(), timeout=30, what="the member to say it is back")
    assert time.monotonic() - up <= bound + 1, engine.log_text()
    # It follows the fleet again (once it is in the membership: its session
    # may have expired meanwhile, and then it joins again).
    with ZkRegistry(parse_zk_url(registry_url), FLEET) as reg:
        wait_for(lambda: "m1" in reg.members(), what="m1 to be a member again")
        record = reg.push("spam", rule(2), "rule_v2.py", deadline_s=30)
        assert record.ok and list(record.acks) == ["m1"], record.to_json()
    assert active_sha("m1") == sha_of(rule(2))
