"""The control server: asyncio in a background thread of the engine process.

A thin I/O layer around :class:`livepatch.protocol.ServerConnection`
(framing, validation, errors) and :class:`livepatch.service.Service` (what
each method does). The event loop accepts connections and reads each one up
to its ``hello``; from then on a client is read by a thread of its own
(:meth:`Server._read_here`), which answers its requests in order, so that no
kind of request waits behind another client's:

* control requests (``status``, ``swap``, ``rollback``, ``purge``,
  ``journal``, ``source``) run right on the client's thread, with no new
  rule call starting meanwhile: quick, and never queued behind a rule call
  or a load;
* lifecycle and introspection (``load``, ``check``, ``unload``, ``symbols``,
  ``diff``) run on a small thread pool, bounded by the quarantine's time
  limit or by an introspection deadline;
* rule calls (``call``) run in place too, each holding one of the
  :class:`~livepatch.callpool.CallPool`'s places: a fixed number at once, a
  capped queue (``busy`` beyond it), a deadline per call (``timeout``; the
  call is interrupted, or shown as stuck in ``status`` while another thread
  takes over the client). A client that has called a rule is served from
  then on by the data loop (:mod:`livepatch.dataloop`), one thread for all
  such clients, which hands a slow one a thread of its own.

Calls run where their frames are read, rather than the loop handing each to
a worker: a call costs no wake-up of another thread and no hand-off of the
interpreter lock. The loop still writes subscribers' events and
whatever a socket did not take at once (:mod:`livepatch.serverclient`).

Before ``hello`` a connection may send only a small frame, must have sent its
hello within a deadline of connecting, and only so many such connections are
kept at once (the limits live in :class:`~livepatch.protocol.ServerConnection`).

Access: by default a Unix socket in the private runtime directory (0600,
created under a 0177 umask, never through a symlink, never over a live
socket), with the peer's uid checked by SO_PEERCRED. Optionally TCP, loopback
unless ``allow_remote``, where a good token in ``hello`` is required.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import secrets
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .callpool import CallPool
from .controlbell import ControlBell
from .dataloop import DataLoop
from .engine import Engine, Event
from .errors import Busy, LivepatchError, Timeout, Unauthenticated
from .interrupt import Interrupted, run_with_deadline
from .journal import Journal, Peer
from .protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    ConnectionClosed,
    InternalError,
    LocalProtocolError,
    Notification,
    Rejected,
    Request,
    ServerConnection,
    tokens_match,
)
from .runtime import (
    ConnectionInfo,
    NameClaim,
    RuntimeDirError,
    claim_name,
    remove_connection_file,
    runtime_dir,
    socket_in_use,
    socket_path,
    validate_name,
    write_connection_file,
)
from .serverclient import ServedClient, end_reader
from .service import Service, bad_result
from .statedir import SourceStore
from .threadsched import request_short_slice

__all__ = ["Listen", "Server", "parse_listen"]

#: A frame must arrive whole within this many seconds of its first byte.
FRAME_TIMEOUT_S = float(os.environ.get("LIVEPATCH_FRAME_TIMEOUT", "10"))
#: A new connection must have sent a good ``hello`` within this.
HELLO_TIMEOUT_S = float(os.environ.get("LIVEPATCH_HELLO_TIMEOUT", str(FRAME_TIMEOUT_S)))
#: Connections not yet past ``hello`` kept at once; more are refused ``busy``.
MAX_UNAUTHENTICATED = int(os.environ.get("LIVEPATCH_MAX_UNAUTHENTICATED", "32"))
#: ``symbols`` and ``diff`` run code of the loaded module (a ``__signature__``,
#: a default's ``__repr__``): interrupted after this.
INTROSPECTION_TIMEOUT_S = float(os.environ.get("LIVEPATCH_INTROSPECTION_TIMEOUT", "10"))
#: Control requests: quick, answered on their client's thread with no new rule
#: call starting meanwhile.
CONTROL_METHODS = frozenset({"status", "swap", "rollback", "purge", "journal", "source"})
#: What a control client's thread answers with new rule calls paused.
QUICK_METHODS = CONTROL_METHODS | {"hello", "subscribe"}
#: Read-only methods that run the loaded module's code: under a deadline.
INTROSPECTION_METHODS = frozenset({"symbols", "diff"})
#: A subscriber whose unread events pile up past this many bytes is dropped.
MAX_BACKLOG = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Listen:
    """Where to listen: ``unix`` (the default) or ``tcp`` host and port."""

    transport: str = "unix"
    host: str = "127.0.0.1"
    port: int = 0


def parse_listen(text: str | None) -> Listen:
    """Parse ``--listen``: ``unix`` or ``tcp://HOST:PORT`` (port 0 picks one)."""
    if text is None or text == "unix":
        return Listen()
    if not text.startswith("tcp://"):
        raise ValueError(f"--listen {text!r}: use 'unix' or tcp://HOST:PORT")
    host, sep, port = text[len("tcp://") :].rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: use tcp://HOST:PORT, e.g. tcp://127.0.0.1:7700")
    return Listen("tcp", host, int(port))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """Serves an engine's control protocol until :meth:`stop`."""

    def __init__(
        self,
        engine: Engine,
        *,
        listen: Listen | None = None,
        token: str | None = None,
        allow_remote: bool = False,
        directory: Path | None = None,
        journal: Journal | None = None,
        store: SourceStore | None = None,
        name_claim: NameClaim | None = None,
        calls: CallPool | None = None,
    ) -> None:
        """``name_claim``: the engine's name, taken already (see
        :func:`~livepatch.runtime.claim_name`); else :meth:`start` takes it."""
        self.engine = engine
        self.name = validate_name(engine.name)
        self.listen = listen or Listen()
        remote = self.listen.transport == "tcp" and not _is_loopback(self.listen.host)
        if remote and not allow_remote:
            raise RuntimeDirError(
                f"refusing to listen on non-loopback {self.listen.host}: "
                "pass --allow-remote if you really mean it (the token is then the only guard)"
            )
        self.token = token or secrets.token_urlsafe(32)
        self.directory = directory
        self.service = Service(engine, journal, store)
        self.calls = calls or CallPool()
        #: Control clients' sockets, which the data loop watches between calls.
        self.bell = ControlBell(self.calls)
        self._lifecycle = ThreadPoolExecutor(4, thread_name_prefix="livepatch-lifecycle")
        self.info: ConnectionInfo | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[ServedClient] = set()
        #: Clients that asked for events (changed from their reader threads
        #: and the loop; read by whichever thread a change happens on).
        self._subscribers: set[ServedClient] = set()
        #: Serves the clients that call rules (started by the first one).
        self._data: DataLoop | None = None
        self._data_lock = threading.Lock()
        #: Requests a data loop answers in place (see livepatch/dataloop.py).
        self.quick_methods = QUICK_METHODS
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._socket_path: Path | None = None
        self._claim = name_claim
        self._unsubscribe = engine.subscribe(self._on_event)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> ConnectionInfo:
        """Bind, write the connection file and serve in a background thread."""
        # One engine per name in the runtime dir, whatever the transport.
        if self._claim is None:
            self._claim = claim_name(self.name, self._dir())
        self._thread = threading.Thread(
            target=self._run, name=f"livepatch-server-{self.name}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._claim.release()
            raise self._error
        assert self.info is not None
        return self.info

    def stop(self) -> None:
        """Stop serving, close every connection and remove our files."""
        self._unsubscribe()
        loop = self._loop
        if loop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._shutdown_requested.set)
            if self._thread is not None:
                self._thread.join(10)
        self._cleanup_files()
        if self._claim is not None:
            self._claim.release()
        self.calls.close()
        if self._data is not None:
            self._data.stop()
        self.bell.close()  # readers still ending find it closed, and carry on
        # Idle threads go; a stuck call's or a hung load's thread is a daemon.
        self._lifecycle.shutdown(wait=False, cancel_futures=True)

    def _cleanup_files(self) -> None:
        if self.info is not None:
            remove_connection_file(self.name, self._dir(), pid=os.getpid())
        path = self._socket_path
        if path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    path.unlink()
            self._socket_path = None

    def _dir(self) -> Path:
        return self.directory or runtime_dir()

    def wait(self) -> None:
        """Block until the server stops."""
        self._stopped.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
        finally:
            self._ready.set()
            self._stopped.set()
            with contextlib.suppress(Exception):
                loop.close()

    async def _main(self) -> None:
        self._shutdown_requested = asyncio.Event()
        self._server = await self._bind()
        self._publish()
        self._ready.set()
        try:
            await self._shutdown_requested.wait()
        finally:
            self._server.close()
            tasks = [c.task for c in self._clients if c.task is not None]
            for client in list(self._clients):
                client.writer.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _bind(self) -> asyncio.Server:
        if self.listen.transport == "tcp":
            return await asyncio.start_server(
                self._serve_client, self.listen.host, self.listen.port, limit=2**16
            )
        path = socket_path(self.name, self._dir())
        self._claim_socket_path(path)
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._serve_client, str(path), limit=2**16)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._socket_path = path
        return server

    def _claim_socket_path(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise RuntimeDirError(f"{path} is a symlink: refusing to follow it; remove it")
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeDirError(f"{path} exists and is not a socket: remove it")
        if socket_in_use(path):
            raise RuntimeDirError(
                f"an engine named {self.name!r} is already running on {path}: "
                "pick another --name or stop it"
            )
        path.unlink()  # stale socket of a dead engine

    def _publish(self) -> None:
        assert self._server is not None
        if self.listen.transport == "tcp":
            host, port = self._server.sockets[0].getsockname()[:2]
            address = f"{host}:{port}"
        else:
            assert self._socket_path is not None
            address = str(self._socket_path)
        self.info = ConnectionInfo(
            name=self.name,
            pid=os.getpid(),
            transport=self.listen.transport,
            address=address,
            token=self.token,
            protocol=PROTOCOL_VERSION,
        )
        write_connection_file(self.info, self._dir())

    # -- connections ------------------------------------------------------------

    def _peer_of(self, writer: asyncio.StreamWriter) -> Peer | None:
        sock: socket.socket | None = writer.get_extra_info("socket")
        if self.listen.transport == "tcp" or sock is None:
            return Peer(transport="tcp")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
        if uid not in (os.getuid(), 0):
            return None
        return Peer(uid=uid, pid=pid, transport="unix")

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = self._peer_of(writer)
        if peer is None:
            # Another user: say why in one line and hang up.
            conn = ServerConnection()
            writer.write(conn.send_error(None, Unauthenticated("peer uid is not the engine's")))
            writer.close()
            return
        waiting = sum(1 for c in self._clients if not c.conn.authenticated)
        if waiting >= MAX_UNAUTHENTICATED:
            # Cheap to refuse: nothing of the peer's is read or parsed.
            busy = Busy(
                f"{waiting} connections are waiting for their hello: retry in a few seconds",
                limit=MAX_UNAUTHENTICATED,
            )
            writer.write(ServerConnection().send_error(None, busy))
            writer.close()
            return
        conn = ServerConnection(hello_timeout_s=HELLO_TIMEOUT_S, frame_timeout_s=FRAME_TIMEOUT_S)
        client = ServedClient(writer, peer, conn)
        if client.fd is None:
            # Its reader thread needs a descriptor of its own: none left.
            busy = Busy(
                "the engine has no file descriptor left for another connection: "
                "close some clients, or raise its limit (ulimit -n)"
            )
            writer.write(conn.send_error(None, busy))
            client.close()
            return
        self._clients.add(client)
        try:
            await self._client_loop(client, reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The engine is stopping. Ending normally, not cancelled: asyncio
            # 3.11's stream callback asks a cancelled task for its exception,
            # and so printed a traceback at every stop with a client attached.
            pass
        finally:
            self._clients.discard(client)
            self._subscribers.discard(client)
            client.close()

    async def _client_loop(self, client: ServedClient, reader: asyncio.StreamReader) -> None:
        conn = client.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                # One deadline for a whole frame (or, before hello, for the
                # whole hello), however the bytes trickle in.
                deadline = conn.read_deadline()
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return  # too slow: drop this client only
                try:
                    data = await asyncio.wait_for(reader.read(1 << 16), timeout)
                except TimeoutError:
                    return  # silent or trickling: drop this client only
                conn.receive_data(data)
                continue
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, Rejected):
                client.write(event.reply)
                await client.writer.drain()
                if event.close:
                    return
                continue
            if isinstance(event, Notification):
                continue  # clients have nothing to notify us of
            # Before hello, the connection lets nothing else out.
            assert isinstance(event, Request) and event.method == "hello"
            try:
                reply = self._hello(client, event)
            except LocalProtocolError:
                return  # our own bookkeeping went wrong: drop this client, not the engine
            client.write(reply)
            await client.writer.drain()
            if conn.authenticated:
                # Past its hello a client gets a thread of its own (see
                # _read_here); the loop keeps its events and its backlog.
                await self._hand_over(client, reader)
                return

    async def _hand_over(self, client: ServedClient, reader: asyncio.StreamReader) -> None:
        """Give the reading of ``client`` to a thread of its own; returns
        once that thread is done with it."""
        transport = client.writer.transport
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        # What the transport read ahead is handed over too: with the stream
        # at EOF (ours, not the peer's: the thread sees the peer's on the
        # socket), read() returns the buffer without waiting.
        reader.feed_eof()
        ahead = await reader.read()
        if ahead and not client.conn.closed_by_peer:
            client.conn.receive_data(ahead)
        loop = asyncio.get_running_loop()
        client.reader_done = loop.create_future()
        client.reader_thread = True
        self._start_reader(client)
        await client.reader_done

    def _start_reader(self, client: ServedClient, first: Request | None = None) -> None:
        threading.Thread(
            target=self._read_here,
            args=(client, first),
            name=f"livepatch-conn-{client.peer.pid or 'tcp'}",
            daemon=True,
        ).start()

    def _on_stuck(self, client: ServedClient) -> None:
        """A call of ``client``'s outlived its deadline on the thread that
        read it: another thread reads the client from now on."""
        if self._data is not None:
            self._data.release(client)
        self._start_reader(client)

    def _end_client(self, client: ServedClient) -> None:
        """The last reader of ``client`` is done: close its descriptor and
        let the loop close the rest."""
        client.release_fd()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(end_reader, client.reader_done)

    def _data_loop(self) -> DataLoop:
        with self._data_lock:
            if self._data is None:
                self._data = DataLoop(self)
            return self._data

    def _read_here(self, client: ServedClient, first: Request | None = None) -> None:
        """A client's reader, past its hello: frames in, requests answered
        right here, replies out.

        One thread per client, so a request costs one wake-up (this
        thread's, when its frame arrives) and no hand-off of the interpreter
        lock between threads: rule calls and control requests alike. A
        control request so never queues behind another client's rule calls
        (it waits only for this client's earlier requests: replies go in
        order), and the call pool starts no new call while it runs; calls
        take one of the call pool's places, under its deadline. A call stuck
        past its deadline keeps this thread: the pool's watchdog answers
        ``timeout`` and starts another reader, and this one, if it ever
        comes back, ends. Whichever thread reads last closes the descriptor.
        """
        loop = self._loop
        fd = client.fd
        assert loop is not None and fd is not None
        conn = client.conn
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        mine = True
        # Until it calls a rule, a client is a control client (a CLI verb, a
        # shell, a deploy script): from the moment its bytes arrive until it
        # is answered, no new rule call starts, so that it is not kept
        # waiting for the interpreter lock behind eight callers: each of the
        # lock's hand-offs could otherwise cost it a switch interval.
        calls = self.calls
        paused = False
        # ... and the data loop stops at its next call when this client's
        # bytes arrive, so that the lock comes here at once (the control
        # bell, livepatch/controlbell.py); the kernel wakes this thread
        # ahead of busy ones (a short slice, livepatch/threadsched.py).
        bell = self.bell
        request_short_slice()
        try:
            while mine:
                event: object = conn.next_event() if first is None else first
                first = None
                if event is NEED_DATA:
                    if paused:
                        calls.resume()
                        paused = False
                    if client.calls_rules and not client.subscribed:
                        # A client that calls rules is served by the data
                        # loop from now on (livepatch/dataloop.py).
                        bell.forget(fd)
                        mine = False
                        self._data_loop().adopt(client)
                        return
                    deadline = conn.read_deadline()
                    timeout_ms = None
                    if deadline is not None:
                        timeout_ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                    if not client.calls_rules:
                        bell.watch(fd)
                        bell.arm(fd)
                    if not poller.poll(timeout_ms):
                        return  # silent or trickling mid-frame: drop this client only
                    if not client.calls_rules:
                        if not bell.take(fd):
                            calls.pause()
                        paused = True
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        return  # reset by the peer, or shut down by close()
                    conn.receive_data(data)
                    continue
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, Rejected):
                    mine = self._send_here(client, event.reply, loop)
                    if event.close:
                        return
                    continue
                if isinstance(event, Notification):
                    continue
                assert isinstance(event, Request)
                if paused and event.method not in QUICK_METHODS:
                    calls.resume()  # a load or a call can take long: not paused
                    paused = False
                if event.method == "call":
                    client.calls_rules = True
                    mine, sent = self._call_here(client, event, loop)
                    if mine and not sent:
                        # The peer reads slower than it asks: read nothing
                        # more of it until what it was sent has gone out.
                        mine = self._wait_loop(self._flush(client), loop)
                else:
                    mine = self._send_here(client, self._answer_here(client, event), loop)
        except LocalProtocolError:
            return  # our own bookkeeping went wrong: drop this client, not the engine
        finally:
            bell.forget(fd)
            if paused:
                calls.resume()
            if mine:
                self._end_client(client)

    def _send_here(
        self, client: ServedClient, data: bytes, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Send from a reader thread; what the socket did not take is
        written by the loop, and this thread waits for it (backpressure: a
        peer that reads slower than it asks gets nothing more read)."""
        if client.write_from_thread(data, loop):
            return True
        return self._wait_loop(self._flush(client), loop)

    def _answer_here(self, client: ServedClient, request: Request) -> bytes:
        """The reply to a request that is not a rule call, on a reader thread."""
        conn = client.conn
        method = request.method
        if method == "hello":
            return self._hello(client, request)
        if method == "subscribe":
            client.subscribed = True
            self._subscribers.add(client)
            return conn.send_result(request.id, {"subscribed": True})
        job = self._job(client, request)
        try:
            if method in CONTROL_METHODS:
                # Quick: run here, with no new rule call starting meanwhile
                # so that it has the interpreter lock to itself.
                self.calls.pause()
                try:
                    result = job()
                finally:
                    self.calls.resume()
            else:
                result = self._lifecycle.submit(job).result()
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            return conn.send_error(request.id, exc)
        try:
            return conn.send_result(request.id, result)
        except LivepatchError as exc:  # a result over the frame limit, or not JSON
            return conn.send_error(request.id, exc)

    def _job(self, client: ServedClient, request: Request) -> Callable[[], Any]:
        """What answering a request that is not a rule call runs."""
        method, params = request.method, request.params
        if method == "status":
            return functools.partial(self._status, client.peer)
        job = functools.partial(self.service.handle, method, params, client.peer)
        if method in INTROSPECTION_METHODS:
            return functools.partial(self._introspect, job, method, params)
        return job

    def _call_here(
        self,
        client: ServedClient,
        request: Request,
        loop: asyncio.AbstractEventLoop,
        *,
        send: Callable[[ServedClient, bytes], bool] | None = None,
    ) -> tuple[bool, bool]:
        """Run a rule call on this (the client's reader) thread and send its
        reply: whether this thread still reads the client (``False`` when
        the call got stuck and another does now), and whether the reply went
        straight out (else the loop writes the rest). ``send``: how the
        reply is sent (the data loop's, which may hold it for the batch's
        end), from whichever thread answers."""
        conn = client.conn
        params = dict(request.params)
        timeout_s = params.pop("timeout_s", None)
        target = str(params.get("version") or params.get("slot"))
        symbol = str(params["symbol"])
        flushed = [True]

        def answer(value: Any, error: BaseException | None) -> None:
            frame = self._call_reply(conn, request, target, symbol, value, error)
            if send is not None:
                flushed[0] = send(client, frame)
            else:
                flushed[0] = client.write_from_thread(frame, loop)

        try:
            mine = self.calls.run(
                functools.partial(self.service.handle, "call", params, client.peer),
                target=target,
                symbol=symbol,
                answer=answer,
                on_stuck=functools.partial(self._on_stuck, client),
                timeout_s=timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - busy, or never a traceback
            answer(None, exc)
            mine = True
        return mine, flushed[0]

    @staticmethod
    def _wait_loop(work: Coroutine[Any, Any, bool | None], loop: asyncio.AbstractEventLoop) -> bool:
        """Run ``work`` on the loop and wait for it; ``False`` when it failed
        or the loop is gone (the client is then dropped)."""
        try:
            return asyncio.run_coroutine_threadsafe(work, loop).result() is not False
        except RuntimeError:  # the loop is closed: shutting down
            work.close()
            return False
        except BaseException:  # noqa: BLE001 - cancelled, or the peer went away
            return False

    async def _flush(self, client: ServedClient) -> bool:
        await client.flush()
        return True

    @staticmethod
    def _call_reply(
        conn: ServerConnection,
        request: Request,
        target: str,
        symbol: str,
        value: Any,
        error: BaseException | None,
    ) -> bytes:
        """The reply frame for a settled rule call: its result or its error."""
        if error is not None:
            return conn.send_error(request.id, error)
        try:
            return conn.send_result(request.id, value)
        except InternalError as exc:
            # The result came from the rule: its value is at fault, not us.
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            return conn.send_error(request.id, bad_result(f"{target} {symbol}()", cause))
        except LivepatchError as exc:  # over the frame limit
            return conn.send_error(request.id, exc)

    def _status(self, peer: Peer) -> Any:
        result = self.service.handle("status", {}, peer)
        result["calls"] = self.calls.snapshot()
        return result

    @staticmethod
    def _introspect(job: Callable[[], Any], method: str, params: dict[str, Any]) -> Any:
        try:
            return run_with_deadline(job, INTROSPECTION_TIMEOUT_S)
        except Interrupted:
            what = " ".join(str(v) for v in params.values())
            raise Timeout(
                f"{method} {what}: reading the loaded code did not finish within "
                f"{INTROSPECTION_TIMEOUT_S:g} s (a __signature__ or __repr__ that never "
                "returns?); it was interrupted",
                timeout_s=INTROSPECTION_TIMEOUT_S,
            ) from None

    def _hello(self, client: ServedClient, request: Request) -> bytes:
        conn = client.conn
        token = request.params.get("token")
        needs_token = self.listen.transport == "tcp"
        if (needs_token or token is not None) and not tokens_match(token, self.token):
            what = "wrong token" if token is not None else "this transport needs the token"
            return conn.send_error(
                request.id,
                Unauthenticated(f"{what}: read it from the engine's connection file"),
            )
        conn.mark_authenticated()
        client.peer = Peer(
            uid=client.peer.uid,
            pid=client.peer.pid,
            client=str(request.params.get("client", "")),
            transport=client.peer.transport,
        )
        return conn.send_result(request.id, self.service.handle("hello", {}, client.peer))

    # -- events -----------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        # With no subscriber, waking the loop would only make it take the
        # interpreter lock from the request that made the change.
        loop = self._loop
        if self._subscribers and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._broadcast, event)

    def _broadcast(self, event: Event) -> None:
        for client in list(self._clients):
            if not client.subscribed or not client.conn.authenticated:
                continue
            transport = client.writer.transport
            if transport.get_write_buffer_size() > MAX_BACKLOG:
                client.writer.close()  # a subscriber that never reads
                continue
            client.write(client.conn.send_notification("event", event.to_json()))
