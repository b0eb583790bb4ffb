"""One client of the control server: its protocol state, its socket, and the
writes to it.

The server's event loop writes through the asyncio transport (events,
control replies); other threads (a client's reader thread, a call worker,
the call pool's watchdog) write straight to a duplicate of the socket's
descriptor when nothing is queued before them, else through the loop, all
under one lock so that replies keep their order (see
:meth:`ServedClient.write_from_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading

from .journal import Peer
from .protocol import ServerConnection

__all__ = ["ServedClient", "end_reader"]


class ServedClient:
    """One connected client, as the server sees it: its protocol state, its
    socket, and the writes to it from the loop and from other threads."""

    def __init__(self, writer: asyncio.StreamWriter, peer: Peer, conn: ServerConnection) -> None:
        self.conn = conn
        self.writer = writer
        self.peer = peer
        self.subscribed = False
        self.task = asyncio.current_task()
        # A rule call's reply is written by the thread that settled the call,
        # on a duplicate of the socket's descriptor: the descriptor number
        # cannot be reused for another client while this one is open, even
        # once the transport has closed its own. Guarded by `lock`.
        self.lock = threading.Lock()
        self.closed = False
        self.backlog = b""
        sock = writer.get_extra_info("socket")
        self.fd: int | None = None
        if sock is not None:
            with contextlib.suppress(OSError):
                self.fd = os.dup(sock.fileno())
        #: Set once a thread of its own reads this client (see Server._read_here):
        #: the loop no longer reads it, and that thread closes ``fd`` when it ends.
        self.reader_thread = False
        #: It has called a rule (see Server._read_here).
        self.calls_rules = False
        #: Ended (from any thread, through the loop) when the reading thread is done.
        self.reader_done: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        """Write from the loop: after any reply a call thread wrote or left."""
        with self.lock:
            if self.writer.is_closing():
                return
            if self.backlog:
                self.writer.write(self.backlog)
                self.backlog = b""
            if data:
                self.writer.write(data)

    def write_from_thread(self, data: bytes, loop: asyncio.AbstractEventLoop) -> bool:
        """Send a reply from a thread other than the loop's (a client's
        reader thread, or the call pool's watchdog with a ``timeout``);
        ``True`` when all of it went straight to the socket.

        Straight to the socket when the transport has nothing buffered and
        nothing else writes to this client; to a subscriber, through the
        loop, after the events it has queued; else, and for the rest of a
        partial write, as a backlog the loop writes before anything else of
        this client's. All of
        it under ``lock``, which the loop's writes take too. Never blocks:
        the watchdog answers timeouts through it.
        """
        with self.lock:
            if self.closed:
                return True
            if self.subscribed:
                # Behind the events the loop has queued already (a swap's
                # come before its reply), in the order they were queued.
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self.write, data)
                return False
            if (
                self.fd is not None
                and not self.backlog
                and self.writer.transport.get_write_buffer_size() == 0
            ):
                try:
                    done = os.write(self.fd, data)
                except BlockingIOError:
                    done = 0
                except OSError:
                    return True  # the peer is gone: its reader sees it too
                if done == len(data):
                    return True
                data = data[done:]
            self.backlog += data
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(self.write, b"")
        return False

    async def flush(self) -> None:
        """Write the backlog and wait until the transport took it all in."""
        self.write(b"")
        await self.writer.drain()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.fd is not None:
                if self.reader_thread:
                    # Wake the thread that reads it (a blocked poll() does not
                    # notice a close()); it closes the descriptor itself, so
                    # the number is not reused under it.
                    with contextlib.suppress(OSError):
                        _shutdown(self.fd)
                else:
                    os.close(self.fd)
                    self.fd = None
        self.writer.close()

    def release_fd(self) -> None:
        """The reading thread's end: close the descriptor it read."""
        with self.lock:
            self.closed = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def end_reader(done: asyncio.Future[None] | None) -> None:
    if done is not None and not done.done():
        done.set_result(None)


def _shutdown(fd: int) -> None:
    """shutdown(2) the socket behind ``fd`` (both directions), keeping ``fd``."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
