"""The ZooKeeper registry URL: what ``--registry zookeeper://...`` accepts,
and a one-line usage error naming the bad part for everything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from livepatch.fleet.model import FleetError
from livepatch.fleet.zkurl import ZkAddress, parse_zk_url

#: A bad URL's part (as QA found them and a few more), and what its error says.
BAD = [
    ("zookeeper://127.0.0.1:99999/lp", "port 99999 of '127.0.0.1:99999' is out of range"),
    ("zookeeper://127.0.0.1:0/lp", "port 0 of '127.0.0.1:0' is out of range"),
    ("zookeeper://127.0.0.1:abc/lp", "port 'abc' of '127.0.0.1:abc' is not a number"),
    ("zookeeper://127.0.0.1:/lp", "port '' of '127.0.0.1:' is not a number"),
    ("zookeeper://127.0.0.1:2181/lp/../x", "path '/lp/../x' has a '.' or '..' part"),
    ("zookeeper://127.0.0.1:2181/lp/./x", "path '/lp/./x' has a '.' or '..' part"),
    ("zookeeper://127.0.0.1:2181//lp", "path '//lp' has an empty part"),
    ("zookeeper://127.0.0.1:2181/zookeeper/lp", "is under /zookeeper, ZooKeeper's own"),
    ("zookeeper://127.0.0.1:2181/lp?timeout=nan", "timeout 'nan' is not a finite number"),
    ("zookeeper://127.0.0.1:2181/lp?timeout=inf", "timeout 'inf' is not a finite number"),
    ("zookeeper://127.0.0.1:2181/lp?timeout=0", "timeout 0 is out of range"),
    ("zookeeper://127.0.0.1:2181/lp?timeout=-1", "timeout -1 is out of range"),
    ("zookeeper://127.0.0.1:2181/lp?timeout=abc", "timeout must be a number of seconds"),
    ("zookeeper://127.0.0.1:2181/lp?timeout=2&timeout=3", "timeout is given twice"),
    ("zookeeper://127.0.0.1:2181/lp?foo=1", "unknown option 'foo'"),
    ("zookeeper://127.0.0.1:2181/lp#x", "a registry URL has no '#' part"),
    ("zookeeper://a:1,,b:2/lp", "an empty host in the host list"),
    ("zookeeper://me@h:2181/lp", "a registry URL has no user part"),
    ("zookeeper://h_ost!:2181/lp", "host 'h_ost!' is not a host name or address"),
    ("http://127.0.0.1:2181/lp", "use zookeeper://HOST:PORT/PATH"),
]


@pytest.mark.parametrize(("url", "says"), BAD, ids=[u for u, _ in BAD])
def test_a_bad_registry_url_is_one_line_naming_its_bad_part(url: str, says: str) -> None:
    with pytest.raises(FleetError) as raised:
        parse_zk_url(url)
    message = raised.value.message
    assert message.startswith(f"--registry {url!r}: ") and says in message, message
    assert "\n" not in message
    # And what to write instead.
    assert "write" in message or "use" in message or "give it once" in message, message


def test_good_registry_urls_parse() -> None:
    assert parse_zk_url("zookeeper://127.0.0.1:2181/lp") == ZkAddress("127.0.0.1:2181", "/lp")
    assert parse_zk_url("zookeeper://a:1,b.example.org:2,[::1]:3/x/y/?timeout=2.5") == ZkAddress(
        "a:1,b.example.org:2,[::1]:3", "/x/y", 2.5
    )
    # No port: kazoo's (ZooKeeper's) 2181; no path: /livepatch.
    assert parse_zk_url("zookeeper://zk1") == ZkAddress("zk1", "/livepatch")
    assert parse_zk_url("zookeeper://zk1:2181/?timeout=1") == ZkAddress("zk1:2181", "/livepatch", 1)


def test_every_fleet_verb_and_the_engine_refuse_a_bad_registry_url_as_usage(
    runtime_dir: Path, tmp_path: Path
) -> None:
    """Exit 2 and one line naming the bad part (these used to be internal
    errors, or "cannot reach ZooKeeper" 15 s later, or ignored)."""
    rule = tmp_path / "rule.py"
    rule.write_text("x = 1\n", encoding="utf-8")
    verbs = {
        "status": ("status", "--fleet", "zf"),
        "push": ("push", str(rule), "--slot", "spam", "--fleet", "zf"),
        "engine": ("engine", "--name", "e1", "--fleet", "zf"),
    }
    cases = [
        ("status", "zookeeper://127.0.0.1:99999/lp", "is out of range"),
        ("status", "zookeeper://127.0.0.1:2181/lp?timeout=0", "timeout 0 is out of range"),
        ("push", "zookeeper://127.0.0.1:abc/lp", "port 'abc'"),
        ("push", "zookeeper://127.0.0.1:2181/lp/../x", "has a '.' or '..' part"),
        ("engine", "zookeeper://127.0.0.1:2181/lp?timeout=nan", "is not a finite number"),
        ("engine", "zookeeper://127.0.0.1:2181/lp?foo=1", "unknown option 'foo'"),
    ]
    for verb, url, says in cases:
        used = run_cli(*verbs[verb], "--registry", url, timeout=30)
        where = (verb, url, used.stderr)
        assert used.returncode == 2, where
        assert len(used.stderr.splitlines()) == 1 and says in used.stderr, where
        assert "internal error" not in used.stderr and "Traceback" not in used.stderr, where
