"""A fleet push of a native rule travels as bytes (issue 15).

Real engine processes with a native slot, real gcc-built objects of the
bundled ``spam_native_*.c`` rules, and (for the ZooKeeper test) a real
ZooKeeper server. The object is pushed from a file only the pusher sees:
members load it from its bytes (``load {"object": base64}``), the registry
keeps the bytes content-addressed, and a member restarted after the file is
deleted converges on the desired sha from the registry alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli, start_engine, zk_registry_url
from fleet_helpers import SLOT_ARGS, active_sha, wait_for
from test_native_bytes import build

from livepatch.client import Client
from livepatch.examples.spam import rule_path
from livepatch.examples.spam_native import NATIVE_SLOT
from livepatch.fleet.model import FleetError
from livepatch.fleet.zk import ZkRegistry, parse_zk_url
from livepatch.fleet.zkserver import ZooKeeperServer
from livepatch.fleet.zksource import MAX_SOURCE
from livepatch.native import find_compiler
from livepatch.runtime import find_engine

pytestmark = pytest.mark.skipif(
    find_compiler() is None and not os.environ.get("CI"),
    reason="no C compiler (cc, gcc, clang or $CC): the native rules are built with it",
)

FLEET = "nat"
#: The Python demo slot and the native one.
ARGS = (*SLOT_ARGS, "--slot", f"{NATIVE_SLOT}=livepatch.examples.spam_native:SpamNativeRules")
#: Spam to version 2 of the native rule only (two of its keywords, none of version 1's).
OFFER = "a limited offer, no prescription"


def classify(name: str, text: str) -> tuple[int, str]:
    """``spam_native.classify(text)`` on engine ``name``: (result, sha of the version)."""
    with Client(find_engine(name), client_name="test") as client:
        reply = client.call(NATIVE_SLOT, "classify", [text])
        sha = next(
            v["sha256"]
            for s in client.status()["slots"]
            for v in s["versions"]
            if v["id"] == reply["version"]
        )
    return int(reply["result"]), str(sha)


def refusals(stdout: str, names: str) -> dict[str, str]:
    """Each member's one-line reason in a push's output."""
    found = {}
    for line in stdout.splitlines():
        for name in names:
            if line.strip().startswith(f"{name}: refused"):
                found[name] = line.strip()
    return found


def test_native_object_pushed_as_bytes_to_local_members(
    engines: list[EngineProcess], tmp_path: Path
) -> None:
    names = "abc"
    for name in names:
        engines.append(start_engine(*ARGS, "--fleet", FLEET, name=name, timeout=60))
    obj = build(tmp_path / "rule_v2.so")
    sha = hashlib.sha256(obj.read_bytes()).hexdigest()
    result = run_cli("push", str(obj), "--slot", NATIVE_SLOT, "--fleet", FLEET, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(result.stdout)
    assert record["sha256"] == sha and sorted(record["acks"]) == list(names)
    for name in names:
        assert classify(name, OFFER) == (1, sha)

    # The object is gone from disk; a restarted member gets it from the store by sha.
    obj.unlink()
    engines[1].restart()
    assert active_sha("b", NATIVE_SLOT) == sha
    assert classify("b", OFFER) == (1, sha)
    rows = {
        m["name"]: m
        for m in json.loads(run_cli("status", "--fleet", FLEET, "--json").stdout)["members"]
    }
    assert rows["b"]["state"] == "ready"

    # Once for the fleet by sha: the object's dynamic symbols.
    shown = run_cli("symbols", sha[:12], "--fleet", FLEET)
    assert shown.returncode == 0, shown.stderr
    assert "classify" in shown.stdout and "shouting" in shown.stdout

    # A C source goes as text (each member's native slot compiles it; pushed
    # here from the fleet shell, which reads files as the CLI does), and a
    # fleet rollback brings the object back from the store by its sha.
    c_file = rule_path("spam_native_v1.c")
    c_result = run_cli("shell", "--fleet", FLEET, "-c", f"push {c_file} --slot {NATIVE_SLOT}")
    assert c_result.returncode == 0, c_result.stdout + c_result.stderr
    assert "committed on 3 members" in c_result.stdout
    assert [classify(name, OFFER)[0] for name in names] == [0, 0, 0]
    back = run_cli("rollback", NATIVE_SLOT, "--fleet", FLEET)
    assert back.returncode == 0, back.stdout + back.stderr
    assert [classify(name, OFFER) for name in names] == [(1, sha)] * 3
    c_sha = hashlib.sha256(Path(c_file).read_bytes()).hexdigest()
    diff = run_cli("diff", sha[:12], c_sha[:12], "--fleet", FLEET)
    assert diff.returncode == 0, diff.stderr
    assert "shouting" in diff.stdout  # version 2's alone

    # Not an object, or an object for a Python slot: every member says why, nobody swaps.
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"#!/bin/sh\necho not an object\n")
    wrong = build(tmp_path / "again.so")
    for args, expected in (
        ((str(fake), "--slot", NATIVE_SLOT), "not an ELF"),
        ((str(wrong), "--slot", "spam"), "spam"),
    ):
        bad = run_cli("push", *args, "--fleet", FLEET)
        assert bad.returncode == 1, bad.stdout
        assert "push aborted" in bad.stderr and "nobody swapped" in bad.stderr
        reasons = refusals(bad.stdout, names)
        assert sorted(reasons) == list(names), bad.stdout
        assert all(expected in line for line in reasons.values()), reasons
        assert "Traceback" not in bad.stdout + bad.stderr
    assert [classify(name, OFFER) for name in names] == [(1, sha)] * 3


def zk_native_members(
    server: ZooKeeperServer, engines: list[EngineProcess], fleet: str, names: str = "ab"
) -> str:
    """Engines ``names`` with the native slot, members of ``fleet`` on a fresh
    registry path of ``server``; returns its URL."""
    url = zk_registry_url(server, 2)
    for name in names:
        engines.append(
            start_engine(*ARGS, "--fleet", fleet, "--registry", url, name=name, timeout=60)
        )
    return url


def test_native_object_pushed_through_zookeeper(
    zk_server: ZooKeeperServer, engines: list[EngineProcess], tmp_path: Path
) -> None:
    url = zk_native_members(zk_server, engines, FLEET)
    obj = build(tmp_path / "rule_v2.so")
    sha = hashlib.sha256(obj.read_bytes()).hexdigest()
    result = run_cli("push", str(obj), "--slot", NATIVE_SLOT, "--fleet", FLEET, "--registry", url)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in "ab":
        assert classify(name, OFFER) == (1, sha)
    obj.unlink()
    engines[0].restart()  # converges from the registry's node, by sha
    assert classify("a", OFFER) == (1, sha)
    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        assert reg.desired()[NATIVE_SLOT][0].sha256 == sha
        # An object no member could hand its engine is refused before anything
        # is written (one over a znode goes in chunks: test_fleet_zk_chunks.py).
        with pytest.raises(FleetError, match="one control-socket frame"):
            reg.put_source(b"\x7fELF" + bytes(MAX_SOURCE), "huge.so")
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"not an object")
    bad = run_cli("push", str(fake), "--slot", NATIVE_SLOT, "--fleet", FLEET, "--registry", url)
    assert bad.returncode == 1, bad.stdout
    assert sorted(refusals(bad.stdout, "ab")) == ["a", "b"], bad.stdout
    wait_for(lambda: classify("b", OFFER) == (1, sha), what="b still on the object")
