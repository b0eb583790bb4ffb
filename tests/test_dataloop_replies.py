"""Replies from the data loop (livepatch/dataloop.py): held back for the end
of a batch, they keep each client's order, never wait behind a slow call
beyond the hand-off, and a client that stops reading holds up no one. Each
against a real ``livepatch engine`` process on its real socket."""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from pathlib import Path

from conftest import start_engine
from test_server_threads import MSG, call, frame, poll, raw_hello, setup

from livepatch.client import Client


def test_replies_keep_each_clients_order_across_busy_batches(runtime_dir: Path) -> None:
    proc = start_engine("--no-quarantine")
    try:
        with Client.connect() as admin:
            setup(admin)
        clients = [raw_hello() for _ in range(4)]
        for sock, reader in clients:  # each calls once: the data loop serves it from now on
            sock.sendall(call(1, "classify", MSG))
            assert "result" in json.loads(reader.readline())
        for round_ in range(30):
            base = 10 + round_ * 10
            # Everyone at once, each a pipeline of calls with a quick request
            # and a refused call among them: several clients are ready in
            # one batch, so calls' replies are held while quick replies and
            # refusals are written at once.
            for sock, _ in clients:
                sock.sendall(
                    call(base, "classify", MSG)
                    + call(base + 1, "nap", 0.0005)
                    + frame(base + 2, "status")
                    + call(base + 3, "no_such_rule")
                    + call(base + 4, "classify", MSG)
                )
            for _, reader in clients:
                replies = [json.loads(reader.readline()) for _ in range(5)]
                assert [r["id"] for r in replies] == list(range(base, base + 5))
                assert replies[0]["result"]["result"]["spam"] is True
                assert replies[1]["result"]["result"] == 0.0005
                assert "calls" in replies[2]["result"]
                assert "error" in replies[3]
                assert replies[4]["result"]["result"]["spam"] is True
        for sock, reader in clients:
            reader.close()
            sock.close()
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_a_reply_is_not_held_behind_a_slow_call_of_its_batch(runtime_dir: Path) -> None:
    proc = start_engine("--no-quarantine", "--call-workers", "10")
    pid = proc.ready["pid"]
    try:
        with Client.connect() as admin:
            setup(admin)
            # A slow client per round, each in the data loop since its first
            # call: one whose call was cut short comes back to the loop only
            # after its timeout reply, and a client re-armed after the
            # others' bytes came would be listed last.
            slows = [raw_hello() for _ in range(6)]
            fast, fast_reader = raw_hello()
            for sock, reader in (*slows, (fast, fast_reader)):
                sock.sendall(call(1, "nap", 0.0001))
                assert "result" in json.loads(reader.readline())
            for rid, (slow, slow_reader) in enumerate(slows, start=2):
                # A call that hangs (until its 1 s deadline) and a fast one
                # arrive while the engine is stopped, in that order: when it
                # goes on, one epoll wait returns both, one batch. The fast
                # one is served first (epoll lists them as they came; the
                # loop takes the last), and its reply, held while the other
                # waits in the batch, must go out at the hand-off (10 ms),
                # long before the deadline. (Another write may flush it as
                # early; six rounds make sure the hand-off is what is tested.)
                os.kill(pid, signal.SIGSTOP)
                try:
                    slow.sendall(call(rid, "hang", timeout_s=1.0))
                    fast.sendall(call(rid, "classify", MSG))
                finally:
                    os.kill(pid, signal.SIGCONT)
                reply = json.loads(fast_reader.readline())
                assert reply["id"] == rid and reply["result"]["result"]["spam"] is True
                # This round's hung call is not past its deadline yet (only
                # the earlier rounds' are stuck): the fast reply did not wait
                # for the watchdog's answer to the slow one.
                assert len(admin.status()["calls"]["stuck"]) == rid - 2
                assert select.select([slow], [], [], 0)[0] == []
                assert json.loads(slow_reader.readline())["error"]["data"]["kind"] == "timeout"
            for sock, reader in (*slows, (fast, fast_reader)):
                reader.close()
                sock.close()
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_a_client_that_stops_reading_holds_up_no_one_and_loses_nothing(
    runtime_dir: Path,
) -> None:
    proc = start_engine("--no-quarantine")
    try:
        with Client.connect() as admin:
            setup(admin)
        greedy, greedy_reader = raw_hello()
        greedy.sendall(call(1, "classify", MSG))
        assert "result" in json.loads(greedy_reader.readline())
        count = 20_000
        frames = b"".join(call(rid, "classify", MSG) for rid in range(2, count + 2))
        # It asks for 20,000 replies (megabytes) and reads none of them for
        # now: its socket fills, the engine stops reading it, and the
        # sender blocks (in a thread of its own here).
        sender = threading.Thread(target=greedy.sendall, args=(frames,))
        sender.start()
        other, other_reader = raw_hello()
        for rid in range(1, 50):
            other.sendall(call(rid, "classify", MSG))
            reply = json.loads(other_reader.readline())
            assert reply["id"] == rid and "result" in reply
        # Now it reads: every reply, in order.
        ids = [json.loads(greedy_reader.readline())["id"] for _ in range(count)]
        sender.join(60)
        assert not sender.is_alive()
        assert ids == list(range(2, count + 2))
        poll(lambda: proc.proc.poll() is None)
        for sock, reader in ((greedy, greedy_reader), (other, other_reader)):
            reader.close()
            sock.close()
        assert proc.proc.poll() is None
    finally:
        proc.stop()
