"""The control plane against a real ``livepatch engine`` process on a real socket."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, run_cli, start_engine

from livepatch import BadState, CheckFailed, Conflict, LoadFailed, Unauthenticated
from livepatch.client import Client, ConnectionLost
from livepatch.errors import CallFailed, UnknownVersion
from livepatch.examples.spam import rule_path, rule_source
from livepatch.protocol import MAX_FRAME
from livepatch.runtime import ConnectionInfo, find_engine, list_engines, write_connection_file

MSG = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}


def raw(info: ConnectionInfo) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(info.address)
    return sock


def read_line(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return json.loads(data)


def closed(sock: socket.socket) -> bool:
    """True once the engine has hung up on ``sock`` (EOF or reset)."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def send(sock: socket.socket, obj: Any) -> dict[str, Any]:
    sock.sendall(json.dumps(obj).encode() + b"\n")
    return read_line(sock)


def test_runtime_files_are_private(engine_proc: EngineProcess, runtime_dir: Path) -> None:
    assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    info = find_engine("rules")
    assert info.pid == engine_proc.proc.pid and info.transport == "unix"
    assert stat.S_IMODE(os.stat(info.path or "").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(info.address).st_mode) == 0o600
    assert len(info.token) >= 32


def test_full_lifecycle_over_the_wire(engine_proc: EngineProcess) -> None:
    with Client.connect() as client:
        assert client.hello["engine"] == "rules"
        assert client.hello["slots"] == ["spam", "spam_native"]  # the demo's two slots
        assert client.status()["slots"][0]["active"] == "spam@1"
        v2 = client.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
        assert v2 == "spam@2"
        with pytest.raises(BadState, match="check spam@2"):
            client.swap(v2)
        assert client.check(v2).ok
        assert client.swap(v2, expect="spam@1")["active"] == v2
        answer = client.call("spam", "classify", [MSG])
        assert answer["version"] == v2
        assert answer["result"]["spam"] is True and "shouting" in answer["result"]["reasons"]
        # by version id, with keyword arguments
        old = client.call("spam@1", "classify", kwargs={"msg": MSG})
        assert old["version"] == "spam@1" and "shouting" not in old["result"]["reasons"]
        diff = client.diff("spam@1", v2)
        assert {r.name: r.marker for r in diff.rows}["shouting"] == "+"
        assert client.symbols(v2)["classify"].letter == "T"
        assert client.rollback("spam")["active"] == "spam@1"
        assert client.purge(v2)["state"] == "purged"
        unloaded = client.unload(v2)
        assert unloaded["freed"] is True
        ops = [(e["op"], e["ok"]) for e in client.journal()]
        assert ops == [
            ("load", True),
            ("swap", False),
            ("check", True),
            ("swap", True),
            ("rollback", True),
            ("purge", True),
            ("unload", True),
        ]
        assert client.journal(2)[-1]["op"] == "unload"
        assert client.journal()[0]["peer"]["pid"] == os.getpid()


def test_errors_carry_their_kind_and_change_nothing(engine_proc: EngineProcess) -> None:
    with Client.connect() as client:
        with pytest.raises(LoadFailed, match=r"spam_syntax_error.py:6:"):
            client.load("spam", rule_source("spam_syntax_error.py"), "spam_syntax_error.py")
        bad = client.load("spam", rule_source("spam_unresolved.py"), "spam_unresolved.py")
        report = client.check(bad)
        assert [(p.kind, p.symbol) for p in report.errors] == [("unresolved", "score_links")]
        with pytest.raises(CheckFailed):
            client.swap(bad)
        with pytest.raises(Conflict):
            client.swap("spam@1", expect="spam@2")  # spam@2 exists but is not active
        with pytest.raises(UnknownVersion, match="--expect spam@9: no version spam@9"):
            client.swap("spam@1", expect="spam@9")  # a typo is not "another client"
        refused = client.journal()[-1]  # and the audit log says what the client was told
        assert (refused["op"], refused["ok"]) == ("swap", False)
        assert refused["result"].startswith("--expect spam@9: no version spam@9")
        with pytest.raises(BadState, match="is active"):
            client.purge("spam@1")
        with pytest.raises(CallFailed, match="AttributeError"):
            client.call("spam", "classify", [{"sender": "a", "text": None}])
        with pytest.raises(Exception, match="needs field 'text'") as info:
            client.call("spam", "classify", [{"sender": "a"}])
        assert getattr(info.value, "kind", None) == "bad-params"
        status = client.status()["slots"][0]
        assert status["active"] == "spam@1"
        assert client.call("spam", "classify", [MSG])["version"] == "spam@1"


def test_second_client_receives_events(engine_proc: EngineProcess) -> None:
    with Client.connect() as watcher, Client.connect() as actor:
        watcher.subscribe()
        v2 = actor.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
        actor.check(v2)
        actor.swap(v2)
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            seen.extend((e["version"], e["state"]) for e in watcher.events(timeout=1.0))
        assert seen == [
            (v2, "loaded"),
            (v2, "resolved"),
            (v2, "active"),
            ("spam@1", "retired"),
        ]


def test_a_client_sees_its_idle_connection_dropped_without_sending(
    engine_proc: EngineProcess,
) -> None:
    # What the shell and %hotswap ask before a command: an engine that stopped
    # since the last one is found gone, and nothing is sent on the dead socket.
    with Client.connect() as idle, Client.connect() as watcher, Client.connect() as actor:
        assert not idle.dropped()
        watcher.subscribe()
        actor.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
        assert watcher._sock is not None
        readable, _, _ = select.select([watcher._sock], [], [], 10)
        assert readable, "no event arrived"  # it waits, unread, in the socket
        assert not watcher.dropped()  # pending bytes are a live connection
        assert next(watcher.events(timeout=1.0))["state"] == "loaded"
        engine_proc.stop()
        assert idle.dropped() and idle.connected  # seen, and still to be closed by its owner
        with pytest.raises(ConnectionLost):
            idle.status()
        assert idle.dropped() and not idle.connected


def test_thirty_two_concurrent_clients(engine_proc: EngineProcess) -> None:
    errors: list[BaseException] = []
    versions: list[str] = []
    barrier = threading.Barrier(32)

    def work(i: int) -> None:
        try:
            with Client.connect(client_name=f"c{i}") as client:
                barrier.wait(10)
                for _ in range(5):
                    versions.append(client.call("spam", "classify", [MSG])["version"])
                source = rule_source("spam_v1.py") + f"\n# client {i % 4}\n"
                v = client.load("spam", source, f"c{i}.py")
                assert client.check(v).ok
        except BaseException as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert versions == ["spam@1"] * 160
    with Client.connect() as client:
        # 4 distinct sources -> exactly 4 new versions, however the loads raced
        assert len(client.status()["slots"][0]["versions"]) == 5


def test_requests_before_hello_are_refused(engine_proc: EngineProcess) -> None:
    info = find_engine()
    with raw(info) as sock:
        reply = send(sock, {"jsonrpc": "2.0", "id": 1, "method": "status"})
        assert reply["error"]["data"]["kind"] == "unauthenticated"
        assert reply["id"] == 1
        reply = send(sock, {"jsonrpc": "2.0", "id": 2, "method": "hello", "params": {}})
        assert reply["result"]["engine"] == "rules"
        reply = send(sock, {"jsonrpc": "2.0", "id": 3, "method": "status"})
        assert reply["result"]["slots"][0]["active"] == "spam@1"


def test_wrong_token_is_refused(engine_proc: EngineProcess) -> None:
    info = find_engine()
    with raw(info) as sock:
        reply = send(
            sock, {"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"token": "nope"}}
        )
        assert reply["error"]["data"]["kind"] == "unauthenticated"
        assert "wrong token" in reply["error"]["message"]
        reply = send(sock, {"jsonrpc": "2.0", "id": 2, "method": "status"})
        assert reply["error"]["data"]["kind"] == "unauthenticated"


def test_garbage_and_oversized_frames_affect_only_their_connection(
    engine_proc: EngineProcess,
) -> None:
    info = find_engine()
    with Client.connect() as bystander, raw(info) as sock:
        sock.sendall(b"this is not json\n")
        assert read_line(sock)["error"]["data"]["kind"] == "parse-error"
        sock.sendall(b"[1, 2]\n")
        assert read_line(sock)["error"]["data"]["kind"] == "invalid-request"
        reply = send(sock, {"jsonrpc": "2.0", "id": 5, "method": "hello"})
        assert "result" in reply
        reply = send(sock, {"jsonrpc": "2.0", "id": 6, "method": "frobnicate"})
        assert reply["error"]["data"]["kind"] == "unknown-method"
        reply = send(sock, {"jsonrpc": "2.0", "id": 7, "method": "check", "params": {"v": 1}})
        assert reply["error"]["data"]["kind"] == "bad-params"
        # the connection survived all of that
        assert send(sock, {"jsonrpc": "2.0", "id": 8, "method": "status"})["id"] == 8
        # an oversized frame: answered with too-large, then dropped
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(OSError):  # the engine hangs up mid-send
            for _ in range(MAX_FRAME // len(chunk) + 2):
                sock.sendall(chunk)
        reply = read_line(sock)
        assert reply["error"]["data"]["kind"] == "too-large"
        assert closed(sock)
        # the other client never noticed
        assert bystander.status()["slots"][0]["active"] == "spam@1"


def test_client_silent_mid_frame_is_dropped(runtime_dir: Path) -> None:
    proc = start_engine(env={"LIVEPATCH_FRAME_TIMEOUT": "0.3"})
    try:
        info = find_engine()
        with Client.connect() as bystander, raw(info) as sock:
            sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "meth')
            assert closed(sock)  # dropped after the timeout
            assert bystander.status()["slots"][0]["active"] == "spam@1"
    finally:
        proc.stop()


def test_tcp_needs_the_token(runtime_dir: Path) -> None:
    proc = start_engine("--listen", "tcp://127.0.0.1:0", name="tcp")
    try:
        info = find_engine("tcp")
        assert info.transport == "tcp" and info.address.startswith("127.0.0.1:")
        host, _, port = info.address.rpartition(":")
        for hello in ({}, {"token": "wrong"}):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                reply = send(sock, {"jsonrpc": "2.0", "id": 1, "method": "hello", "params": hello})
                assert reply["error"]["data"]["kind"] == "unauthenticated"
        with Client.connect("tcp") as client:
            assert client.status()["name"] == "tcp"
        bad = ConnectionInfo("tcp", info.pid, "tcp", info.address, "wrong", 1)
        with pytest.raises(Unauthenticated, match="wrong token"):
            Client(bad)
    finally:
        proc.stop()


def test_non_loopback_needs_a_flag(runtime_dir: Path) -> None:
    result = run_cli("engine", "--listen", "tcp://0.0.0.0:0")
    assert result.returncode != 0
    assert "--allow-remote" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_live_socket_is_not_reused_and_stale_files_are_cleaned(
    engine_proc: EngineProcess, runtime_dir: Path
) -> None:
    result = run_cli("engine", "--name", "rules")
    assert result.returncode != 0
    assert "already running" in result.stderr and "Traceback" not in result.stderr
    assert Client.connect("rules").status()["pid"] == engine_proc.proc.pid
    # a connection file whose process is gone is removed when engines are listed
    ghost = ConnectionInfo("ghost", 2**22 + 12345, "unix", str(runtime_dir / "ghost.sock"), "t", 1)
    write_connection_file(ghost, runtime_dir)
    assert [e.name for e in list_engines(runtime_dir)] == ["rules"]
    assert not (runtime_dir / "ghost.json").exists()


def test_engine_stop_removes_its_files_and_clients_notice(runtime_dir: Path) -> None:
    proc = start_engine(name="brief")
    client = Client.connect("brief")
    assert proc.stop() == 0
    assert not (runtime_dir / "brief.json").exists()
    assert not (runtime_dir / "brief.sock").exists()
    with pytest.raises(ConnectionLost, match="reconnect"):
        client.status()
    proc2 = start_engine(name="brief")
    try:
        client.reconnect(wait_s=10)
        assert client.status()["pid"] == proc2.proc.pid
    finally:
        client.close()
        proc2.stop()


# -- the one-shot CLI --------------------------------------------------------------


def test_cli_verbs_exit_codes_and_output(engine_proc: EngineProcess) -> None:
    ok = run_cli("load", rule_path("spam_v2.py"), "--slot", "spam")
    assert ok.returncode == 0, ok.stderr
    assert "loaded spam@2" in ok.stdout
    assert run_cli("check", "spam@2").returncode == 0
    swapped = run_cli("swap", "spam@2", "--expect", "spam@1")
    assert swapped.returncode == 0 and "spam@1 -> spam@2" in swapped.stdout
    conflict = run_cli("swap", "spam@1", "--expect", "spam@1")  # spam@2 is active
    assert conflict.returncode == 1
    assert conflict.stderr.count("\n") == 1 and "another client swapped first" in conflict.stderr
    called = run_cli("call", "spam.classify", json.dumps(MSG), "--json")
    assert called.returncode == 0
    assert json.loads(called.stdout)["version"] == "spam@2"
    bad_json = run_cli("call", "spam.classify", "{not json")
    assert bad_json.returncode == 2 and "is not JSON" in bad_json.stderr
    broken = run_cli("load", rule_path("spam_attr_typo.py"), "--slot", "spam")
    assert broken.returncode == 0
    failed = run_cli("check", "spam@3")
    assert failed.returncode == 1
    assert "re.compil" in failed.stdout and "failed its check" in failed.stderr
    status = json.loads(run_cli("status", "--json").stdout)
    assert status["slots"][0]["active"] == "spam@2"
    side = run_cli("symbols", "spam@1", "spam@2")
    assert side.returncode == 0 and "spam@1" in side.stdout and "spam@2" in side.stdout
    missing = run_cli("unload", "spam@9")
    assert missing.returncode == 1 and "no version spam@9" in missing.stderr
    assert run_cli("rollback", "spam").returncode == 0
    assert run_cli("purge", "spam@2").returncode == 0
    unloaded = run_cli("unload", "spam@2")
    assert unloaded.returncode == 0 and "freed" in unloaded.stdout
    journal = run_cli("journal")
    assert journal.returncode == 0 and "unload" in journal.stdout
    for result in (conflict, bad_json, failed, missing):
        assert "Traceback" not in result.stderr


def test_a_verb_given_too_many_arguments_points_at_its_own_help(runtime_dir: Path) -> None:
    for argv, verb in ((("swap", "spam@1", "spam@2"), "swap"), (("bench", "--bogus"), "bench")):
        result = run_cli(*argv)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"unrecognized arguments: {argv[-1]}; `livepatch {verb} --help`" in result.stderr


def test_cli_without_engine_says_what_to_do(runtime_dir: Path) -> None:
    result = run_cli("status")
    assert result.returncode == 1
    assert "no running engine found: start one with `livepatch engine`" in result.stderr
    result = run_cli("status", "--existing", "nope")
    assert result.returncode == 1 and "no running engine named 'nope'" in result.stderr


def test_pipelined_requests_are_answered_in_order(engine_proc: EngineProcess) -> None:
    # Rule calls are answered by the thread that ran them; whatever comes
    # after a call on the same connection (another call, a control request,
    # a bad frame) is answered after it, also when the call's reply is too
    # big for the socket's buffer and goes out in pieces.
    with Client.connect() as client:
        big = client.load(
            "spam",
            rule_source("spam_v1.py") + "\n\ndef big(n: int) -> str:\n    return 'x' * n\n",
            "spam_big.py",
        )
        assert client.check(big).ok
        client.swap(big)
    sock = raw(find_engine())
    reader = sock.makefile("rb")
    frames = [
        {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"client": "pipelined"}},
        {"jsonrpc": "2.0", "id": 1, "method": "call", "params": call_params("classify", MSG)},
        {"jsonrpc": "2.0", "id": 2, "method": "call", "params": call_params("big", 600_000)},
        {"jsonrpc": "2.0", "id": 3, "method": "status"},
        {"jsonrpc": "2.0", "id": 4, "method": "call", "params": call_params("nope")},
        {"jsonrpc": "2.0", "id": 5, "method": "call", "params": call_params("big", 10)},
    ]
    data = b"".join(json.dumps(f).encode() + b"\n" for f in frames) + b"not json\n"
    sock.sendall(data)
    replies = [json.loads(reader.readline()) for _ in range(len(frames) + 1)]
    assert [r.get("id") for r in replies] == [0, 1, 2, 3, 4, 5, None]
    assert replies[1]["result"]["result"]["spam"] is True
    assert replies[2]["result"]["result"] == "x" * 600_000
    assert replies[3]["result"]["slots"][0]["active"] == big
    assert replies[4]["error"]["data"]["kind"] == "unknown-version"
    assert replies[5]["result"] == {"version": big, "result": "x" * 10}
    assert replies[6]["error"]["data"]["kind"] == "parse-error"
    reader.close()
    sock.close()


def call_params(symbol: str, *args: Any) -> dict[str, Any]:
    return {"slot": "spam", "symbol": symbol, "args": list(args)}
