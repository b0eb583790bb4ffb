"""The data loop: one thread that reads every client that calls rules.

A thread per client (:meth:`livepatch.server.Server._read_here`) makes a
rule call cost that thread's wake-up and the interpreter lock's hand-offs
between eight such threads: about three context switches per call, each a
wait for a CPU on a busy machine. Clients that call rules are served by one
thread instead, which waits on all their sockets at once (``epoll``), reads
whatever is ready and runs the calls right there, one client after another:
one wake-up for all the frames that arrived meanwhile, and the lock stays
with it.

It never lets a slow client hold up the others. Each socket is armed for
one event at a time (``EPOLLONESHOT``), so only the thread serving a client
touches it. When the loop has been busy with one client for longer than
:data:`HAND_OFF_S` (a slow rule, a long pipeline), a new thread takes the
loop over, and the old one keeps that client as its own reader from then on
(the thread-per-client path) until it has answered what it had; so does a
client that asks for something that may wait (a load, a reply the socket
did not take). Then the client comes back to the loop. Subscribers and
control clients (those that never called a rule) are never here: a control
request never waits behind a call. The loop only listens for them: between
calls it asks the control bell (:mod:`livepatch.controlbell`) whether a
control request has arrived, and if one has, it stops at its next call so
that the control client's thread gets the interpreter lock at once.

Replies to calls go out when the batch is done, as Redis writes its
replies before its event loop sleeps: while more ready clients wait in the
batch, the loop holds each reply back (for at most :data:`HOLD_S`), then
writes them all. A caller's process asleep for its reply is so woken once
per batch, not once per reply: on this two-core VM each wake-up was paid
in the engine's own write, and the callers' process slept for nearly every
reply. Whatever else is written to a client (a quick request's reply, a
refusal, the watchdog's ``timeout``, a subscriber's events) goes out after
what is held: a client's replies keep their order. A client whose held
reply its socket did not take is not read again until the rest is written
(backpressure, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from typing import TYPE_CHECKING

from .protocol import (
    NEED_DATA,
    ConnectionClosed,
    LocalProtocolError,
    Notification,
    Rejected,
    Request,
)

if TYPE_CHECKING:
    from .server import Server
    from .serverclient import ServedClient

__all__ = ["BELL_EVERY_S", "HAND_OFF_S", "HOLD_S", "DataLoop"]

#: How long the loop serves one client before another thread takes the loop.
HAND_OFF_S = 0.01
#: How often, at most, the loop asks the control bell between calls: what a
#: control request may wait for beyond the call running when it came.
BELL_EVERY_S = 0.0001
#: The longest a call's reply is held back for the rest of its batch (a reply
#: behind a slow call waits for it, at most until the hand-off).
HOLD_S = 0.0002
_ARMED = select.EPOLLIN | select.EPOLLONESHOT


class DataLoop:
    """One thread at a time waits on the sockets of every client that calls
    rules, and serves the ready ones in place."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._lock = threading.Lock()
        self._clients: dict[int, ServedClient] = {}
        #: Partial frames' deadlines, by descriptor (a trickling client is dropped).
        self._deadlines: dict[int, float] = {}
        #: Which thread owns the loop: a new one is started with the next number.
        self._generation = 0
        #: (generation, since when, which descriptor) while the owner serves a client.
        self._busy: tuple[int, float, int] | None = None
        #: Ready descriptors of the owner's batch not served yet (disarmed).
        self._pending: list[int] = []
        self._stopped = False
        self._closed = False
        self._watch_wakeup = threading.Event()
        #: When the loop next asks the control bell (see BELL_EVERY_S).
        self._bell_due = 0.0
        #: Replies held back for the end of the batch (see the module), since
        #: when, and the thread that may hold them (the loop's owner).
        self._held: list[tuple[ServedClient, bytes]] = []
        self._held_since = 0.0
        self._holder: int | None = None
        #: Taken for a whole flush, so that flushes from two threads (the
        #: owner's, a hand-off's) write their replies one after the other.
        self._flushing = threading.Lock()
        self._start(0)
        threading.Thread(target=self._watch, name="livepatch-data-watch", daemon=True).start()

    def adopt(self, client: ServedClient) -> None:
        """Serve ``client`` from now on (its own reader thread stops reading)."""
        fd = client.fd
        assert fd is not None
        deadline = client.conn.read_deadline()
        with self._lock:
            self._clients[fd] = client
            if deadline is not None:
                self._deadlines[fd] = deadline
        self._epoll.register(fd, _ARMED)
        if deadline is not None:  # the owner may be waiting with no timeout
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def release(self, client: ServedClient) -> None:
        """Stop serving ``client`` (from any thread): its call got stuck, so
        a thread of its own reads it now; and if the loop's owner is the
        stuck thread, another takes the loop."""
        fd = client.fd
        with self._lock:
            if fd is None or self._clients.get(fd) is not client:
                return
            del self._clients[fd]
            self._deadlines.pop(fd, None)
            busy = self._busy
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        if busy is not None and busy[2] == fd:
            self._hand_off(busy[0])

    def stop(self) -> None:
        """End the loop's threads (the clients are closed by the server)."""
        self.flush_held()
        self._stopped = True
        self._watch_wakeup.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- threads -------------------------------------------------------------

    def _start(self, generation: int) -> None:
        threading.Thread(
            target=self._run, args=(generation,), name="livepatch-data", daemon=True
        ).start()

    def _hand_off(self, generation: int) -> None:
        """Start a new owner unless one took over from ``generation``
        already; it gets the ready clients the old one had not served yet."""
        with self._lock:
            if self._generation != generation or self._stopped:
                return
            self._generation += 1
            self._busy = None
            self._holder = None  # the old owner holds nothing more back
            generation = self._generation
            pending, self._pending = self._pending, []
        self.flush_held()  # what the old owner held must not wait for its slow call
        for fd in pending:
            self._rearm(fd)
        self._start(generation)

    def _watch(self) -> None:
        # Wakes only while the loop serves a client: the thread-per-client
        # path's watchdog would be the call pool's, but a slow client is
        # not a late call.
        while not self._stopped:
            busy = self._busy
            if busy is None:
                self._watch_wakeup.wait(0.5)
                self._watch_wakeup.clear()
                continue
            late = busy[1] + HAND_OFF_S - time.monotonic()
            if late <= 0:
                self._hand_off(busy[0])
            else:
                time.sleep(late)

    def _run(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation:
                self._holder = threading.get_ident()
        try:
            self._loop(generation)
        finally:
            if self._stopped:
                self._close_files()

    def _close_files(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for close in (
            self._epoll.close,
            lambda: os.close(self._wake_r),
            lambda: os.close(self._wake_w),
        ):
            with contextlib.suppress(OSError):
                close()

    def _loop(self, generation: int) -> None:
        epoll = self._epoll
        while not self._stopped and self._generation == generation:
            timeout = self._timeout()
            try:
                events = epoll.poll(timeout)
            except OSError:
                return
            self._drop_late()
            ready = []
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                else:
                    ready.append(fd)
            with self._lock:
                if self._generation != generation:
                    pending = ready  # taken over meanwhile: the new owner's
                else:
                    self._pending.extend(ready)
                    pending = []
            for taken in pending:
                self._rearm(taken)
            try:
                while (next_fd := self._next(generation)) is not None:
                    with self._lock:
                        client = self._clients.get(next_fd)
                    if client is None:
                        continue
                    if not self._serve(client, generation):
                        return  # this thread keeps that client, or lost it to a stuck call
            finally:
                self.flush_held()  # the batch is done (or this thread leaves it)
            with self._lock:
                if self._busy is not None and self._busy[0] == generation:
                    self._busy = None

    def _next(self, generation: int) -> int | None:
        """The next ready descriptor to serve, marked busy; ``None`` when
        the batch is done or another thread owns the loop now."""
        with self._lock:
            if self._generation != generation or not self._pending:
                return None
            fd = self._pending.pop()
            self._busy = (generation, time.monotonic(), fd)
        if not self._watch_wakeup.is_set():
            self._watch_wakeup.set()
        return fd

    def _rearm(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            self._epoll.modify(fd, _ARMED)

    def _timeout(self) -> float | None:
        if not self._deadlines:  # the usual case; one added later writes the wake pipe
            return None
        with self._lock:
            if not self._deadlines:
                return None
            soonest = min(self._deadlines.values())
        return max(0.0, soonest - time.monotonic())

    def _drop_late(self) -> None:
        if not self._deadlines:  # nobody is mid-frame (read without the lock: a
            return  # deadline added meanwhile is looked at on the next round)
        now = time.monotonic()
        with self._lock:
            late = [fd for fd, when in self._deadlines.items() if when <= now]
            clients = [self._clients.pop(fd, None) for fd in late]
            for fd in late:
                del self._deadlines[fd]
            if late:
                self._pending = [fd for fd in self._pending if fd not in late]
        for fd, client in zip(late, clients, strict=True):
            if client is not None:
                self._close(fd, client)  # silent or trickling mid-frame

    def _close(self, fd: int, client: ServedClient) -> None:
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        self.server._end_client(client)

    def _leave(self, fd: int, client: ServedClient) -> None:
        """Stop serving ``client`` here: the calling thread reads it from now on."""
        with self._lock:
            self._clients.pop(fd, None)
            self._deadlines.pop(fd, None)
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)

    def _serve(self, client: ServedClient, generation: int) -> bool:
        """Read and answer what ``client`` sent; ``False`` when this thread
        keeps the client as its own reader (or lost it to a stuck call)."""
        server = self.server
        loop = server._loop
        fd = client.fd
        assert loop is not None and fd is not None
        conn = client.conn
        bell = server.bell
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            self._rearm(fd)
            return True
        except OSError:
            data = b""
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    deadline = conn.read_deadline()
                    with self._lock:
                        if deadline is None:
                            self._deadlines.pop(fd, None)
                        else:
                            self._deadlines[fd] = deadline
                    self._rearm(fd)
                    return True
                if isinstance(event, ConnectionClosed):
                    self._forget(fd)
                    self._close(fd, client)
                    return True
                if isinstance(event, Rejected):
                    sent = self.send_now(client, event.reply)
                    if event.close:
                        self._forget(fd)
                        self._close(fd, client)
                        return True
                    if not sent:
                        return self._keep(fd, client, None, generation, flush=True)
                    continue
                if isinstance(event, Notification):
                    continue
                assert isinstance(event, Request)
                if event.method == "call":
                    if bell.watched:
                        # A control request waiting? Step aside first. Asked
                        # at most every BELL_EVERY_S: the answer is a system
                        # call, a clock read is not.
                        now = time.monotonic()
                        if now >= self._bell_due:
                            self._bell_due = now + BELL_EVERY_S
                            bell.check()
                    mine, sent = server._call_here(client, event, loop, send=self.send_reply)
                    if not mine:
                        return False  # stuck: released, another thread reads it
                    if not sent or self._generation != generation:
                        return self._keep(fd, client, None, generation, flush=not sent)
                elif event.method in server.quick_methods and not client.subscribed:
                    reply = server._answer_here(client, event)
                    if not self.send_now(client, reply) or client.subscribed:
                        return self._keep(fd, client, None, generation, flush=True)
                else:
                    return self._keep(fd, client, event, generation, flush=False)
        except LocalProtocolError:
            self._forget(fd)
            self._close(fd, client)
            return True

    # -- replies ---------------------------------------------------------------

    def send_reply(self, client: ServedClient, frame: bytes) -> bool:
        """Send a call's reply: held back while the loop's owner has more
        ready clients to serve in this batch (see the module), else written
        now, after anything held. Whether it went out or is held (``False``:
        the socket did not take it all, the loop writes the rest)."""
        if self._pending and threading.get_ident() == self._holder:
            now = time.monotonic()
            with self._lock:
                if not self._held:
                    self._held_since = now
                if now - self._held_since < HOLD_S:
                    self._held.append((client, frame))
                    return True
        return self.send_now(client, frame)

    def send_now(self, client: ServedClient, frame: bytes) -> bool:
        """Write ``frame`` to ``client`` now, after the replies held back."""
        if self._held:
            self.flush_held()
        loop = self.server._loop
        assert loop is not None
        return client.write_from_thread(frame, loop)

    def flush_held(self) -> None:
        """Write every reply held back, in the order held (from any thread).
        A client whose socket did not take its reply is read no more until
        the loop has written the rest."""
        if not self._held:
            return
        loop = self.server._loop
        with self._flushing:
            with self._lock:
                held, self._held = self._held, []
            if loop is None:
                return
            slow = [client for client, frame in held if not client.write_from_thread(frame, loop)]
        for client in dict.fromkeys(slow):
            self._wait_for_flush(client, loop)

    def _wait_for_flush(self, client: ServedClient, loop: asyncio.AbstractEventLoop) -> None:
        fd = client.fd
        with self._lock:
            if fd is None or self._clients.get(fd) is not client:
                return
        self._leave(fd, client)

        async def readopt() -> None:
            try:
                await client.flush()
            except Exception:  # noqa: BLE001 - the peer went away: the loop closes it
                return
            if not self._stopped and not client.closed and client.fd is not None:
                self.adopt(client)

        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            asyncio.run_coroutine_threadsafe(readopt(), loop)

    def _forget(self, fd: int) -> None:
        with self._lock:
            self._clients.pop(fd, None)
            self._deadlines.pop(fd, None)

    def _keep(
        self,
        fd: int,
        client: ServedClient,
        first: Request | None,
        generation: int,
        *,
        flush: bool,
    ) -> bool:
        """This thread leaves the loop (to a new owner, unless one took over
        already) and reads ``client`` itself from now on, starting with
        ``first``."""
        self.flush_held()
        self._leave(fd, client)
        self._hand_off(generation)
        server = self.server
        loop = server._loop
        assert loop is not None
        if flush and not server._wait_loop(server._flush(client), loop):
            server._end_client(client)
            return False
        server._read_here(client, first)
        return False
