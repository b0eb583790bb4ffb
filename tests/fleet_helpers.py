"""Shared pieces of the fleet tests: rule versions, traffic, status polls."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livepatch.client import Client
from livepatch.fleet.model import sha_of
from livepatch.runtime import find_engine

# A generous quarantine limit: this machine's cores are shared, and a
# quarantine child that starts slowly must not fail a push.
SLOT_ARGS = ("--slot", "spam=livepatch.examples.spam:SpamRules", "--load-timeout", "60")

RULE = '''"""Fleet test rule, version {n}."""

import os
import time

from livepatch.examples.spam import Message, Verdict

TAG = {n}
if os.environ.get("LIVEPATCH_TEST_REFUSE") and {refuse}:
    raise RuntimeError("this member refuses the rule (LIVEPATCH_TEST_REFUSE)")
if {slow} and os.environ.get("LIVEPATCH_TEST_MARK"):
    # Tells the test this member is preparing, then makes prepare last.
    open(os.path.join(os.environ["LIVEPATCH_TEST_MARK"], str(os.getpid())), "w").close()
    time.sleep({slow})


def tag() -> int:
    return {n}


def classify(msg: Message) -> Verdict:
    return Verdict(spam=False, score=0.0, reasons=(f"v{{TAG}}", f"v{{tag()}}"))
'''


def rule(n: int, *, refuse: bool = False, slow: float = 0) -> str:
    """Version ``n`` of the test rule (``refuse``: members with the env var fail to load it)."""
    return RULE.format(n=n, refuse=refuse, slow=slow)


def sha_to_n(count: int) -> dict[str, int]:
    """sha256 of each plain version -> its number."""
    return {sha_of(rule(n)): n for n in range(1, count + 1)}


def active_sha(name: str, slot: str = "spam") -> str | None:
    """The sha of the version active in ``slot`` of engine ``name``."""
    with Client(find_engine(name), client_name="test") as client:
        for s in client.status()["slots"]:
            if s["name"] == slot:
                for v in s["versions"]:
                    if v["id"] == s["active"]:
                        return str(v["sha256"])
    return None


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true, with a deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_exc!r})")


class SocketTraffic:
    """Calls ``spam.classify`` over each engine's socket (``rate`` a second), and
    counts failed calls and mixed requests: a reply whose code (the tags
    the rule returns) is not the version the engine says answered."""

    def __init__(self, names: list[str], versions: dict[str, int], rate: float = 200) -> None:
        self.names = names
        self.interval = 1.0 / rate
        self.versions = versions  # sha -> n
        self.calls = dict.fromkeys(names, 0)
        self.failed: list[str] = []
        self.mixed: list[tuple[str, Any]] = []
        self._ids: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in names]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _number_of(self, client: Client, name: str, version: str) -> int | None:
        key = (name, version)
        if key not in self._ids:
            info = next(
                v for s in client.status()["slots"] for v in s["versions"] if v["id"] == version
            )
            n = self.versions.get(info["sha256"])
            if n is None:
                return None
            self._ids[key] = n
        return self._ids[key]

    def _run(self, name: str) -> None:
        msg = {"sender": "a@example.org", "text": "hello"}
        with Client(find_engine(name), client_name="test-traffic") as client:
            while not self._stop.wait(self.interval):  # paced: the cores are shared
                try:
                    reply = client.call("spam", "classify", [msg])
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    self.failed.append(f"{name}: {exc}")
                    continue
                self.calls[name] += 1
                reasons = reply["result"]["reasons"]
                n = self._number_of(client, name, reply["version"])
                if n is None:
                    continue  # a version from before the test's
                if reasons != [f"v{n}", f"v{n}"]:
                    self.mixed.append((name, reply))


# A pusher process that stops between prepare and commit: it writes its push
# id to MARK once every member voted, then waits to be killed.
PUSHER = """
import pathlib, sys, time
from livepatch.fleet.local import push_local
from livepatch.fleet.zk import ZkRegistry, parse_zk_url
mark, fleet, registry, source = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def phase(name, record):
    if name == "prepared":
        mark.write_text(record.id)
        time.sleep(3600)

if registry == "local":
    push_local(fleet, "spam", source, "abandoned.py", phase=phase, deadline_s=600)
else:
    with ZkRegistry(parse_zk_url(registry), fleet) as reg:
        reg.push("spam", source, "abandoned.py", phase=phase, deadline_s=600)
"""


def start_pusher(mark: Path, fleet: str, registry: str, source: str) -> subprocess.Popen[bytes]:
    """A real pushing process, stopped between prepare and commit (see PUSHER)."""
    return subprocess.Popen(
        [sys.executable, "-c", PUSHER, str(mark), fleet, registry, source],
        stdout=subprocess.DEVNULL,
    )


def kill_pusher_after_prepare(
    mark: Path, fleet: str, registry: str, source: str, members: str
) -> str:
    """Start a pusher, SIGKILL it once every one of ``members`` has prepared
    ``source`` (resolved, not swapped), and return its push id."""
    pusher = start_pusher(mark, fleet, registry, source)
    try:
        wait_for(mark.exists, timeout=120, what="the pusher to finish prepare")
        new = sha_of(source)
        assert all(versions_of(name, new) == ["resolved"] for name in members)
    finally:
        pusher.kill()  # SIGKILL, between prepare and commit
        pusher.wait(10)
    return mark.read_text()


def wait_abandoned(members: str, sha: str, still_active: str) -> None:
    """Wait until each member unloaded what an abandoned push prepared
    (``sha``), and check that none swapped away from ``still_active``."""
    for name in members:
        wait_for(
            lambda name=name: versions_of(name, sha) == ["unloaded"],
            what=f"{name} to unload the abandoned push's version",
        )
        assert active_sha(name) == still_active  # nobody swapped


def versions_of(name: str, sha: str, slot: str = "spam") -> list[str]:
    """The states of engine ``name``'s versions of ``sha`` (unloaded ones included)."""
    with Client(find_engine(name), client_name="test") as client:
        return [
            str(v["state"])
            for s in client.status()["slots"]
            if s["name"] == slot
            for v in s["versions"]
            if v["sha256"] == sha
        ]
