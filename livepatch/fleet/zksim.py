"""Simulated ZooKeeper members for the fleet benchmark: many per process.

A simulated member *is* a real :class:`~livepatch.fleet.zkmember.ZkMember`
(its own session, ephemeral node, watches, reads, votes, acks and state
reports: the real member's ZooKeeper logic, line for line, its reconcile
loop and its periodic pass every couple of seconds included) whose engine
is a :class:`~livepatch.fleet.handle.MemoryHandle` (it compiles each
source, so a syntax error votes no, and swaps in memory).
What differs from a real member is only how the process runs it, so that a
thousand fit on one small machine:

- the process is patched by gevent, so every member's threads (its
  reconcile loop, kazoo's callback worker) are greenlets on one event loop,
  and watch callbacks run in the greenlet that read the event (a member's
  only mark what changed and wake its loop);
- each member's session is a :class:`SharedLoopClient`: kazoo's own client,
  whose request layer builds, frames and decodes every request exactly as
  for a real member (so the server gets the same requests, creates the same
  watches and sends the same notifications), but whose connection is one
  reader greenlet per session plus one pinger for all of them, instead of
  kazoo's select loop per session (that loop was most of a member's CPU).
  It pings an idle session as kazoo does (after a third of the session
  timeout, less a jitter). It does not reconnect: a simulated member whose
  connection drops says so on stderr and stays out.

Run by :func:`livepatch.fleet.bench.measure_zookeeper` as
``python -m livepatch.fleet.zksim --members N --registry URL --fleet F``;
it prints ``{"ready": N}`` once every member has joined and converged,
and exits when its standard input closes. Needs ``gevent`` (the ``test``
extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["SharedLoopClient", "gevent_missing", "main", "member_hosts"]


def gevent_missing() -> str | None:
    """Why simulated members cannot run here, or None."""
    try:
        import gevent  # noqa: F401
    except ImportError:
        return "no gevent: pip install gevent (it is in livepatch's test extra)"
    return None


def _client_class() -> Any:
    """:class:`SharedLoopClient`, defined once gevent has patched the process
    (its base class and sockets must be the patched ones)."""
    import gevent
    import gevent.socket
    from kazoo.client import KazooClient
    from kazoo.exceptions import ConnectionClosedError, SessionExpiredError
    from kazoo.protocol.connection import PING_XID, WATCH_XID
    from kazoo.protocol.serialization import (
        CloseInstance,
        Connect,
        PingInstance,
        ReplyHeader,
        int_struct,
    )
    from kazoo.protocol.states import KeeperState

    clients: list[Any] = []

    def pinger() -> None:
        # kazoo pings a session idle for half its read timeout (2/3 of the
        # negotiated session timeout) less a jitter of 10-400 ms.
        while True:
            gevent.sleep(0.1)
            now = time.monotonic()
            for client in list(clients):
                # The cheap test first: a thousand sessions, ten times a second.
                if now >= client._next_ping and client.connected:
                    client._send(PingInstance, PING_XID)

    class SharedLoopClient(KazooClient):  # type: ignore[misc]
        """kazoo's client with a greenlet connection (see the module doc)."""

        def __init__(self, hosts: str, timeout: float, handler: Any) -> None:
            super().__init__(hosts=hosts, timeout=timeout, handler=handler)
            self._sock: Any = None
            self._xid = 0
            self._read_timeout = timeout * 2 / 3
            self._next_ping = float("inf")
            self._reader: Any = None
            self._session_id: int | None = None
            self._session_passwd: bytes = b"\x00" * 16

        def _send(self, request: Any, xid: int | None) -> None:
            body = bytearray()
            if xid:
                body += int_struct.pack(xid)
            if request.type:
                body += int_struct.pack(request.type)
            body += request.serialize()
            frame = memoryview(int_struct.pack(len(body)) + body)
            # ``send`` until all is out, not gevent's ``sendall``: that asks
            # the kernel for the send buffer's size (a getsockopt call) on
            # every request, a tenth of a simulated member's CPU, for frames
            # that always fit.
            while frame:
                frame = frame[self._sock.send(frame) :]
            # Any request is an implicit ping.
            jitter = random.randint(1, 40) / 100
            self._next_ping = time.monotonic() + self._read_timeout / 2 - jitter

        def _frame(self, buf: bytearray) -> bytes | None:
            if len(buf) < 4:
                return None
            length = int_struct.unpack_from(buf, 0)[0]
            if len(buf) < 4 + length:
                return None
            frame = bytes(buf[4 : 4 + length])
            del buf[: 4 + length]
            return frame

        def start(self, timeout: float = 15) -> None:
            """Open the session (kazoo's Connect request), then read in a
            greenlet; a refused or closed connection is tried again, as
            kazoo does, until ``timeout``."""
            deadline = time.monotonic() + timeout
            while True:
                try:
                    return self._open(max(0.5, deadline - time.monotonic()))
                except (OSError, ConnectionClosedError):
                    if self._sock is not None:
                        self._sock.close()
                    if time.monotonic() > deadline:
                        raise
                    gevent.sleep(0.1)

        def _open(self, timeout: float) -> None:
            host, port = self.hosts[0]
            self._sock = gevent.socket.create_connection((host, port), timeout)
            # As kazoo's own connection does: no request waits behind another's ACK.
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.settimeout(None)
            self._stopped.clear()
            connect = Connect(
                0,
                self.last_zxid,
                self._session_timeout,
                self._session_id or 0,
                self._session_passwd,
                self.read_only,
            )
            self._send(connect, None)
            buf = bytearray()
            deadline = time.monotonic() + timeout
            while (frame := self._frame(buf)) is None:
                self._sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionClosedError("ZooKeeper closed the connection")
                buf += chunk
            self._sock.settimeout(None)
            result, _ = Connect.deserialize(frame, 0)
            if result.time_out <= 0:
                raise SessionExpiredError("Session has expired")
            self._session_id = result.session_id
            self._session_passwd = result.passwd
            self._protocol_version = result.protocol_version
            self._read_timeout = result.time_out / 1000 * 2 / 3
            self._session_callback(KeeperState.CONNECTED)
            clients.append(self)
            self._reader = gevent.spawn(self._read_loop, buf)

        def _read_loop(self, buf: bytearray) -> None:
            conn = self._connection
            # Wait until the socket is readable, then read: gevent's ``recv``
            # tries first and waits on EAGAIN, a failed system call for
            # nearly every message (each reply or event is alone on the wire).
            hub = gevent.get_hub()
            readable = hub.loop.io(self._sock.fileno(), 1)
            try:
                while True:
                    while (frame := self._frame(buf)) is not None:
                        header, offset = ReplyHeader.deserialize(frame, 0)
                        if header.xid == PING_XID:
                            continue
                        if header.xid == WATCH_XID:
                            # kazoo's dispatch (behind the member's signal hook)
                            conn._read_watch_event(frame, offset)
                        elif conn._read_response(header, frame, offset) is not None:
                            return  # the reply to our Close
                    hub.wait(readable)
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except OSError:
                pass
            finally:
                readable.close()
            if not self._stopped.is_set():
                lost = f"zksim: a simulated member lost its session {self._session_id}"
                print(lost, file=sys.stderr)
            self._gone()

        def _gone(self) -> None:
            if self in clients:
                clients.remove(self)
            self._session_callback(KeeperState.CLOSED)

        def _call(self, request: Any, async_object: Any) -> bool | None:
            """Send at once (kazoo queues for its connection loop instead)."""
            if self._state != KeeperState.CONNECTED:
                async_object.set_exception(ConnectionClosedError("Connection has been closed"))
                return False
            self._xid = (self._xid % 2147483647) + 1
            self._pending.append((request, async_object, self._xid))
            try:
                self._send(request, self._xid)
            except OSError:
                self._gone()
            return None

        def stop(self) -> None:
            """Close the session (the server deletes its ephemeral nodes)."""
            if self._stopped.is_set():
                return
            self._stopped.set()
            if self.connected:
                self._xid += 1
                self._pending.append((CloseInstance, None, self._xid))
                try:
                    self._send(CloseInstance, self._xid)
                    if self._reader is not None:
                        self._reader.join(5)
                except OSError:
                    pass
            self._gone()

        def close(self) -> None:
            """Release the socket."""
            if self._sock is not None:
                self._sock.close()

    gevent.spawn(pinger)
    return SharedLoopClient


@contextlib.contextmanager
def member_hosts(
    registry: str, fleet: str, members: int, processes: int
) -> Iterator[list[subprocess.Popen[str]]]:
    """``members`` simulated members of ``fleet``, spread over ``processes``
    processes of this module, each ready (joined and converged) when the
    block starts; they exit when it ends (their standard input closes)."""
    per = [members // processes + (i < members % processes) for i in range(processes)]
    hosts: list[subprocess.Popen[str]] = []
    try:
        for i, count in enumerate(per):
            if count == 0:
                continue
            cmd = [sys.executable, "-m", "livepatch.fleet.zksim", "--members", str(count)]
            cmd += ["--registry", registry, "--fleet", fleet, "--prefix", f"p{i}-"]
            hosts.append(
                subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        for host in hosts:
            assert host.stdout is not None
            if not host.stdout.readline():
                raise RuntimeError("a simulated member process failed to start")
        yield hosts
    finally:
        for host in hosts:
            with contextlib.suppress(OSError):
                assert host.stdin is not None
                host.stdin.close()
        for host in hosts:
            try:
                host.wait(60)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()


#: Set by :func:`main` once the process is patched.
SharedLoopClient: Any = None


def main(argv: list[str] | None = None) -> int:
    """Host ``--members`` simulated members until stdin closes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--prefix", default="m")
    args = parser.parse_args(argv)
    missing = gevent_missing()
    if missing:
        print(f"zksim: {missing}", file=sys.stderr)
        return 2
    from gevent import monkey

    monkey.patch_all()
    import logging

    import gevent
    import gevent.os
    from kazoo.handlers.gevent import SequentialGeventHandler

    from .handle import MemoryHandle
    from .zkmember import ZkMember
    from .zkurl import parse_zk_url

    global SharedLoopClient
    SharedLoopClient = _client_class()
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    address = parse_zk_url(args.registry)

    class InlineHandler(SequentialGeventHandler):  # type: ignore[misc]
        """kazoo's gevent handler, whose watch callbacks run in the reader
        greenlet that received the event instead of being queued for its
        worker greenlet: a member's callbacks only mark what changed and
        wake its loop (two greenlet switches less per event)."""

        def dispatch_callback(self, callback: Any) -> None:
            callback.func(*callback.args)

    # One kazoo handler for all sessions.
    handler = InlineHandler()
    handler.start()

    def connect(addr: Any) -> Any:
        client = SharedLoopClient(addr.hosts, addr.timeout, handler)
        client.start()
        return client

    members: list[ZkMember] = []

    def join(i: int) -> None:
        member = ZkMember(address, args.fleet, MemoryHandle(f"{args.prefix}{i}"), connect=connect)
        member.start(wait=True)
        members.append(member)

    for chunk in range(0, args.members, 50):  # do not open 1,000 sessions at once
        gevent.joinall(
            [gevent.spawn(join, i) for i in range(chunk, min(args.members, chunk + 50))],
            raise_error=True,
        )
    print(json.dumps({"ready": len(members)}), flush=True)
    while gevent.os.tp_read(0, 4096):  # until the benchmark closes our stdin
        pass
    # Close the sessions (all at once), so that the server does not expire
    # them a session timeout later, in the middle of the next measurement.
    gevent.joinall([gevent.spawn(m.client.stop) for m in members], timeout=30)
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
