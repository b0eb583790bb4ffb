"""Each client past its hello is read by a thread of its own, which runs its
rule calls and control requests in place (livepatch/server.py, _read_here):
replies in order across a stuck call, a swap answered while a rule hangs,
clients that hang up mid-call, and a shutdown with calls in flight, each
against a real ``livepatch engine`` process on its real socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import start_engine

from livepatch.client import Client, ConnectionLost
from livepatch.errors import LivepatchError, Timeout
from livepatch.examples.spam import rule_source
from livepatch.runtime import find_engine

MSG = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}

RULES = (
    rule_source("spam_v2.py")
    + """

import threading
import time

_never = threading.Event()


def hang() -> None:
    _never.wait()  # blocked in C: no exception can reach it


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
"""
)


def poll(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def raw_hello() -> tuple[socket.socket, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(find_engine().address)
    reader = sock.makefile("rb")
    sock.sendall(frame(0, "hello", {"client": "threads-test"}))
    assert "result" in json.loads(reader.readline())
    return sock, reader


def frame(rid: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
    return json.dumps(message).encode() + b"\n"


def call(rid: int, symbol: str, *args: Any, timeout_s: float | None = None) -> bytes:
    params: dict[str, Any] = {"slot": "spam", "symbol": symbol, "args": list(args)}
    if timeout_s is not None:
        params["timeout_s"] = timeout_s
    return frame(rid, "call", params)


def setup(admin: Client) -> tuple[str, str]:
    """The rules with ``hang`` and ``nap`` active, and spam_v2 resolved beside them."""
    rules = admin.load("spam", RULES, "threads.py")
    assert admin.check(rules).ok
    admin.swap(rules)
    other = admin.load("spam", rule_source("spam_v2.py") + "\n# other\n", "spam_v2.py")
    assert admin.check(other).ok
    return rules, other


def test_a_stuck_call_keeps_neither_its_connection_nor_a_swap_waiting(runtime_dir: Path) -> None:
    proc = start_engine("--no-quarantine", "--call-workers", "4")
    try:
        with Client.connect() as admin:
            rules, other = setup(admin)
            # Pipelined on one connection: a call that never returns, then a
            # control request and two calls. The stuck call's reader thread
            # stays in it; another takes over the connection once the
            # timeout is answered, and the replies keep their order.
            sock, reader = raw_hello()
            sock.sendall(
                # The deadline leaves the swap below time to land first,
                # however busy the machine: what comes after must run on it.
                call(1, "hang", timeout_s=5.0)
                + frame(2, "status")
                + call(3, "classify", MSG)
                + call(4, "nap", 0.01)
            )
            # While the rule hangs, another client swaps: answered at once,
            # not after the hung call.
            poll(lambda: admin.status()["calls"]["running"] == 1)
            assert admin.swap(other, expect=rules)["active"] == other
            replies = [json.loads(reader.readline()) for _ in range(4)]
            assert [r["id"] for r in replies] == [1, 2, 3, 4]
            assert replies[0]["error"]["data"]["kind"] == "timeout"
            assert "hang() did not return within 5 s" in replies[0]["error"]["message"]
            stuck = replies[1]["result"]["calls"]["stuck"]
            assert [(s["version"], s["symbol"]) for s in stuck] == [(rules, "hang")]
            # Swapped meanwhile: the calls after it ran on the new version,
            # which has no nap().
            assert replies[2]["result"]["version"] == other
            assert replies[3]["error"]["data"]["kind"] == "unknown-version"
            # The same connection goes on serving, calls and control alike.
            sock.sendall(frame(5, "rollback", {"slot": "spam"}) + call(6, "nap", 0.01))
            rolled, napped = (json.loads(reader.readline()) for _ in range(2))
            assert rolled["result"]["active"] == rules
            assert napped["result"] == {"version": rules, "result": 0.01}
            reader.close()
            sock.close()
            # The stuck call still holds its place in the pool (4 workers):
            # three more calls run side by side, a fifth waits.
            assert admin.status()["calls"]["running"] == 1
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_clients_that_hang_up_mid_call_leave_the_engine_serving(runtime_dir: Path) -> None:
    proc = start_engine("--no-quarantine", "--call-workers", "2", "--call-queue", "4")
    try:
        with Client.connect() as admin:
            setup(admin)
            # Six clients each send a call that takes a while and hang up at
            # once: two run, four wait for a place; none has anyone to
            # answer.
            for _ in range(6):
                sock, reader = raw_hello()
                sock.sendall(call(1, "nap", 0.3))
                reader.close()
                sock.close()
            poll(lambda: admin.status()["calls"]["running"] == 2)
            # Every call ran to its end and gave its place back.
            calls = poll(
                lambda: (c := admin.status()["calls"])["running"] == 0 and c["queued"] == 0 and c
            )
            assert calls["stuck"] == []
            # One more that hangs up between its frame and its reply, with
            # another client calling meanwhile on the same pool.
            sock, reader = raw_hello()
            sock.sendall(call(1, "nap", 0.2))
            time.sleep(0.05)
            sock.shutdown(socket.SHUT_RDWR)
            reader.close()
            sock.close()
            assert admin.call("spam", "nap", [0.01])["result"] == 0.01
            assert admin.call("spam", "classify", [MSG])["result"]["spam"] is True
            poll(lambda: admin.status()["calls"]["running"] == 0)
        assert proc.proc.poll() is None
        assert "Traceback" not in proc.log_text()
    finally:
        proc.stop()


def test_stop_with_calls_in_flight_ends_promptly_and_tells_the_callers(
    runtime_dir: Path,
) -> None:
    proc = start_engine("--no-quarantine", "--call-timeout", "60", name="busy")
    outcomes: list[str] = []

    def caller(symbol: str, args: list[Any], timeout_s: float | None = None) -> None:
        with Client.connect("busy") as client:
            try:
                # With a deadline past the client's own timeout, the client
                # waits longer for that call alone (and must still say
                # "lost", not trip over its closed socket, when it goes).
                client.call("spam", symbol, args, timeout_s=timeout_s)
                outcomes.append("answered")
            except ConnectionLost:
                outcomes.append("lost")
            except LivepatchError as exc:
                outcomes.append(exc.kind)

    try:
        with Client.connect("busy") as admin:
            setup(admin)
            # Two calls stuck in C, two asleep for longer than the stop
            # takes, all in flight when the engine is told to stop.
            threads = [
                threading.Thread(target=caller, args=args)
                for args in (("hang", []), ("hang", []), ("nap", [30], 58.0), ("nap", [30]))
            ]
            for thread in threads:
                thread.start()
            poll(lambda: admin.status()["calls"]["running"] == 4)
        started = time.monotonic()
        assert proc.stop(timeout=20) == 0
        took = time.monotonic() - started
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
        # Every caller heard that the engine went away; none was left waiting.
        assert sorted(outcomes) == ["lost"] * 4
        assert not (runtime_dir / "busy.json").exists()
        assert not (runtime_dir / "busy.sock").exists()
        print(f"stopped with 4 calls in flight in {took:.2f} s")
    finally:
        proc.stop()


def test_a_swap_is_answered_while_every_worker_runs_a_rule(runtime_dir: Path) -> None:
    # Eight clients keep every call place busy with rules that run Python
    # (holding the interpreter lock in turns); swaps and status from a
    # ninth still get answered, and every call gets its reply in order.
    proc = start_engine("--no-quarantine", "--call-workers", "8")
    stop = threading.Event()
    counts: list[int] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            sock, reader = raw_hello()
            rid = 0
            while not stop.is_set():
                rid += 1
                sock.sendall(call(rid, "classify", MSG) + call(rid + 10**6, "nap", 0.001))
                first, second = json.loads(reader.readline()), json.loads(reader.readline())
                assert (first["id"], second["id"]) == (rid, rid + 10**6)
                assert "result" in first and "result" in second
            counts.append(rid)
            reader.close()
            sock.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        with Client.connect() as admin:
            rules, _ = setup(admin)
            twin = admin.load("spam", RULES + "\n# twin\n", "threads_twin.py")
            assert admin.check(twin).ok
            callers = [threading.Thread(target=caller) for _ in range(8)]
            for thread in callers:
                thread.start()
            poll(lambda: admin.status()["calls"]["running"] > 0)
            # Back and forth between two versions that both have nap().
            for i in range(20):
                target = (twin, rules)[i % 2]
                assert admin.swap(target)["active"] == target
                assert admin.status()["slots"][0]["active"] == target
            with pytest.raises(Timeout):
                admin.call("spam", "hang", timeout_s=0.2)
            stop.set()
            for thread in callers:
                thread.join(60)
            assert errors == []
            assert len(counts) == 8 and all(n > 0 for n in counts)
            assert admin.status()["calls"]["stuck"][0]["symbol"] == "hang"
        assert proc.proc.poll() is None
    finally:
        stop.set()
        proc.stop()


def test_a_slow_or_stuck_call_in_the_data_loop_holds_up_no_other_caller(
    runtime_dir: Path,
) -> None:
    # Clients that call rules share one thread (livepatch/dataloop.py): a
    # rule that is slow, or that never returns, must not hold up the
    # others. Each client here makes a first call, so the data loop
    # serves it from then on.
    proc = start_engine("--no-quarantine", "--call-workers", "4")
    try:
        with Client.connect() as admin:
            setup(admin)
            slow, slow_reader = raw_hello()
            fast, fast_reader = raw_hello()
            for sock, reader in ((slow, slow_reader), (fast, fast_reader)):
                sock.sendall(call(1, "nap", 0.001))
                assert json.loads(reader.readline())["result"]["result"] == 0.001
            # A nap of 2 s on one client; the other's calls are answered
            # meanwhile, in order, long before the nap ends.
            slow.sendall(call(2, "nap", 2.0))
            poll(lambda: admin.status()["calls"]["running"] == 1)
            for rid in range(2, 12):
                fast.sendall(call(rid, "classify", MSG))
                reply = json.loads(fast_reader.readline())
                assert reply["id"] == rid and reply["result"]["result"]["spam"] is True
            # Only the nap still going: a fast call has left the count by the
            # time its reply is out (its worker's bookkeeping is not the caller's).
            assert admin.status()["calls"]["running"] == 1
            assert json.loads(slow_reader.readline())["result"]["result"] == 2.0
            # Now one that never returns: answered `timeout` at its deadline;
            # the other client is served throughout, and so is this one after.
            slow.sendall(call(3, "hang", timeout_s=1.0) + call(4, "nap", 0.001))
            poll(lambda: admin.status()["calls"]["running"] == 1)
            for rid in range(12, 22):
                fast.sendall(call(rid, "nap", 0.001))
                assert json.loads(fast_reader.readline())["id"] == rid
            hung, after = json.loads(slow_reader.readline()), json.loads(slow_reader.readline())
            assert hung["id"] == 3 and hung["error"]["data"]["kind"] == "timeout"
            assert after["id"] == 4 and after["result"]["result"] == 0.001
            # Control requests from a calling client are answered in order too.
            fast.sendall(frame(30, "status") + call(31, "nap", 0.001) + frame(32, "journal"))
            replies = [json.loads(fast_reader.readline()) for _ in range(3)]
            assert [r["id"] for r in replies] == [30, 31, 32]
            assert len(replies[0]["result"]["calls"]["stuck"]) == 1
            for sock, reader in ((slow, slow_reader), (fast, fast_reader)):
                reader.close()
                sock.close()
            # The callers' sockets are closed by the engine's side too once
            # they hang up: nothing of theirs is left running.
            poll(lambda: admin.status()["calls"]["running"] == 1)  # only the hung one
        assert proc.proc.poll() is None
        assert "Traceback" not in proc.log_text()
    finally:
        proc.stop()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_with_clients_attached_ends_with_no_traceback(runtime_dir: Path, how: str) -> None:
    import signal

    proc = start_engine("--no-quarantine", name="attached")
    try:
        # One control client and one that calls rules (served by the data
        # loop), both connected and idle when the engine stops.
        control = Client.connect("attached")
        control.status()
        caller, reader = raw_hello()
        caller.sendall(call(1, "classify", MSG))
        assert "result" in json.loads(reader.readline())
        sig = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
        proc.proc.send_signal(sig)
        assert proc.proc.wait(30) == 0
        log = proc.log_text()
        assert "Traceback" not in log and "Exception in callback" not in log, log
        control.close()
        caller.close()
    finally:
        proc.stop()
