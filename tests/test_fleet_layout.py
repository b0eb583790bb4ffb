"""A fleet's registry records its layout, and what livepatch did not write is
refused in one line naming where it is (local store and a real ZooKeeper).

A rolling upgrade of livepatch itself leaves hosts of two releases on one
fleet: a release that changes what the nodes mean raises the layout, and
an older one then refuses the fleet, before it reads or writes anything,
instead of misreading it. Hand edits and other tools' nodes get the same
one-line treatment: the node's path, what it should hold, what to do.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli, start_engine, zk_registry_url
from fleet_helpers import SLOT_ARGS, active_sha, rule, wait_for
from kazoo.client import KazooClient

from livepatch.fleet.model import LAYOUT, sha_of
from livepatch.fleet.store import LocalStore
from livepatch.fleet.zk import ZkRegistry, parse_zk_url
from livepatch.fleet.zkserver import ZooKeeperServer

FLEET = "lay"


def rule_file(n: int) -> str:
    path = Path(tempfile.mkdtemp()) / f"rule_v{n}.py"
    path.write_text(rule(n), encoding="utf-8")
    return str(path)


def one_line_error(result: object, *needles: str) -> str:
    """The command failed with exactly one line on stderr holding ``needles``."""
    assert getattr(result, "returncode", None) == 1, result
    lines = str(getattr(result, "stderr", "")).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "internal" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the local store ---------------------------------------------------------------


def test_a_local_store_of_a_newer_layout_is_refused_and_left_as_it_was(
    fleet_env: Path, engines: list[EngineProcess]
) -> None:
    store = LocalStore(FLEET)
    engines.append(start_engine(*SLOT_ARGS, "--fleet", FLEET, name="m1"))
    first = run_cli("push", rule_file(1), "--slot", "spam", "--fleet", FLEET)
    assert first.returncode == 0, first.stderr
    state = json.loads(store._state.read_text())
    assert state["layout"] == LAYOUT  # every write records it
    # A newer livepatch on this host moved the store on.
    state["layout"] = LAYOUT + 1
    newer = json.dumps(state).encode()
    store._state.write_bytes(newer)
    newer_text = f"has layout {LAYOUT + 1}, newer than this livepatch reads ({LAYOUT})"
    for args in (
        ("status", "--fleet", FLEET),
        ("push", rule_file(2), "--slot", "spam", "--fleet", FLEET),
        ("rollback", "spam", "--fleet", FLEET),
    ):
        one_line_error(run_cli(*args), str(store._state), newer_text, "upgrade livepatch")
    engine = run_cli("engine", "--name", "m2", *SLOT_ARGS, "--fleet", FLEET)
    one_line_error(engine, newer_text)
    assert store._state.read_bytes() == newer  # nothing was written
    assert active_sha("m1") == sha_of(rule(1))  # and the member serves on


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[]", "a JSON list, not an object"),
        (b'{"desired": ', "Expecting value"),
        (b'{"a": "\xc3("}', "can't decode"),
        (b'{"layout": "one"}', "records layout 'one', which no livepatch writes"),
    ],
)
def test_a_damaged_local_store_is_named_in_one_line(
    fleet_env: Path, content: bytes, reason: str
) -> None:
    store = LocalStore(FLEET)
    store._state.write_bytes(content)
    one_line_error(run_cli("status", "--fleet", FLEET), str(store._state), reason)


# -- ZooKeeper ----------------------------------------------------------------------


@pytest.fixture
def registry_url(zk_server: ZooKeeperServer, fleet_env: Path) -> str:
    return zk_registry_url(zk_server, 2)


@pytest.fixture
def zk(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    client = KazooClient(hosts=zk_server.hosts)
    client.start(15)
    yield client
    client.stop()
    client.close()


def test_a_zookeeper_fleet_of_a_newer_layout_is_refused_and_left_as_it_was(
    registry_url: str, zk: KazooClient, engines: list[EngineProcess]
) -> None:
    address = parse_zk_url(registry_url)
    base = f"{address.path}/fleets/{FLEET}"
    with ZkRegistry(address, FLEET):
        pass
    data, _ = zk.get(base)
    assert json.loads(data) == {"layout": LAYOUT}  # a new fleet is stamped
    zk.set(base, json.dumps({"layout": LAYOUT + 1}).encode())
    before = {path: zk.get(path)[1].mzxid for path in (base, f"{base}/current")}
    where = f"fleet node {base} in ZooKeeper at {address.hosts}"
    newer = f"has layout {LAYOUT + 1}, newer than this livepatch reads ({LAYOUT})"
    for args in (
        ("status", "--fleet", FLEET),
        ("push", rule_file(1), "--slot", "spam", "--fleet", FLEET),
    ):
        one_line_error(run_cli(*args, "--registry", registry_url), where, newer)
    engine = run_cli(
        "engine", "--name", "z1", *SLOT_ARGS, "--fleet", FLEET, "--registry", registry_url
    )
    one_line_error(engine, where, newer)
    assert zk.get_children(f"{base}/members") == []  # it never joined
    assert {path: zk.get(path)[1].mzxid for path in before} == before  # nothing was written


def test_a_node_livepatch_did_not_write_is_named_and_a_member_says_so_once(
    registry_url: str, zk: KazooClient, engines: list[EngineProcess]
) -> None:
    address = parse_zk_url(registry_url)
    base = f"{address.path}/fleets/{FLEET}"
    engines.append(
        start_engine(*SLOT_ARGS, "--fleet", FLEET, "--registry", registry_url, name="z1")
    )
    first = run_cli(
        "push", rule_file(1), "--slot", "spam", "--fleet", FLEET, "--registry", registry_url
    )
    assert first.returncode == 0, first.stderr
    # Another tool's member node: status names it, in one line.
    zk.create(f"{base}/members/intruder", b"not json", ephemeral=True)
    status = run_cli("status", "--fleet", FLEET, "--registry", registry_url)
    one_line_error(status, f"{base}/members/intruder holds no member state", "restore or delete it")
    zk.delete(f"{base}/members/intruder")
    # ``current`` overwritten by hand: the member tells its operator once,
    # serves on what it runs, and follows again once the node is restored.
    good, _ = zk.get(f"{base}/current")
    zk.set(f"{base}/current", b'{"pushes": 7}')
    said = "fleet lay: cannot follow the fleet: "
    wait_for(lambda: said in engines[0].log_text(), 30, "the member to say it cannot follow")
    assert active_sha("z1") == sha_of(rule(1))
    zk.set(f"{base}/current", good)
    second = run_cli(
        "push", rule_file(2), "--slot", "spam", "--fleet", FLEET, "--registry", registry_url
    )
    assert second.returncode == 0, second.stderr
    assert active_sha("z1") == sha_of(rule(2))
    assert engines[0].log_text().count(said) == 1


# -- a mistyped fleet name -----------------------------------------------------------

TYPO = "lya"
#: Every fleet verb that reads, on the mistyped fleet.
READING = (
    ("status", "--fleet", TYPO),
    ("history", "--fleet", TYPO),
    ("rollback", "spam", "--fleet", TYPO),
    ("symbols", "abcdef", "--fleet", TYPO),
)


def test_a_mistyped_local_fleet_is_an_error_and_leaves_nothing_behind(
    fleet_env: Path, engines: list[EngineProcess]
) -> None:
    engines.append(start_engine(*SLOT_ARGS, "--fleet", FLEET, name="m1"))
    for args in READING:
        one_line_error(run_cli(*args), f"no fleet '{TYPO}' on this host (fleets here: {FLEET})")
    pushed = run_cli("push", rule_file(1), "--slot", "spam", "--fleet", TYPO)
    one_line_error(pushed, f"fleet '{TYPO}' has no live members on this host")
    assert sorted(p.name for p in LocalStore(FLEET).path.parent.iterdir()) == [FLEET]


def test_a_mistyped_zookeeper_fleet_is_an_error_and_leaves_nothing_behind(
    registry_url: str, zk: KazooClient, engines: list[EngineProcess]
) -> None:
    address = parse_zk_url(registry_url)
    engines.append(
        start_engine(*SLOT_ARGS, "--fleet", FLEET, "--registry", registry_url, name="z1")
    )
    for args in (*READING, ("push", rule_file(1), "--slot", "spam", "--fleet", TYPO)):
        one_line_error(
            run_cli(*args, "--registry", registry_url),
            f"no fleet '{TYPO}' in ZooKeeper at {address.hosts} under {address.path} "
            f"(fleets there: {FLEET})",
        )
    assert zk.get_children(f"{address.path}/fleets") == [FLEET]
