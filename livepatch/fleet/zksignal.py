"""Signals: a push's news in node names, under a persistent recursive watch.

A ZooKeeper event says only what happened to which path; it carries no data.
With one-shot watches on ``current`` every member paid for each push with two
reads of it (one per change: the push opened, the push committed), on top of
its vote and its ack: four requests, and four replies, per member per push.

So the pusher also announces each change to ``current`` by creating a node
whose *name* is the news (the kind and a small JSON body), in the same
transaction as the change it announces, under ``signals/<epoch>/``. Members
hold one persistent recursive watch (ZooKeeper 3.6's ``addWatch``) on the
epoch: the event that a signal node was created is the whole message, and a
push costs a member its vote and its ack, two requests.

Signals are hints, never the truth: ``current`` and the desired nodes are.
A member that missed one (its connection dropped, and the server forgot the
watch with the connection) re-reads everything on its next full pass, and
every member re-reads ``current`` on its periodic pass anyway.

Epochs keep the tree small without waking anyone: the pusher starts the
next epoch once one holds :data:`EPOCH_SIGNALS` signals (announced by an
``epoch`` signal in the old one). Members watch the new epoch too, read its
names once (what was signalled before their watch), and keep watching the
one they leave (a pusher that read it just before the change still signals
there), but no older one; the pusher deletes epochs three behind, which by
then nobody watches, so their deletion sends no events.

kazoo 2.11 has neither ``addWatch`` nor ``removeWatches``: the requests are
sent through its request layer (:meth:`KazooClient._call`), and the events
of a recursive watch, for paths kazoo has no watcher of, are taken from its
connection before its own dispatch (:func:`hook_events`).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kazoo.version
from kazoo.exceptions import NoNodeError, NoWatcherError
from kazoo.protocol.serialization import Watch, int_struct, write_string
from kazoo.protocol.states import Callback, EventType, WatchedEvent

from .model import FleetError

__all__ = [
    "EPOCH_SIGNALS",
    "Signal",
    "add_recursive_watch",
    "add_signal",
    "epoch_name",
    "hook_events",
    "parse_signal",
    "pusher_epoch",
    "remove_watches",
    "signal_name",
]

#: Signals per epoch before the pusher starts the next one.
EPOCH_SIGNALS = 64

#: ZooKeeper's ``addWatch`` mode for a persistent watch on a path and every path below it.
PERSISTENT_RECURSIVE = 1

#: ``removeWatches``'s watcher type *any* (which covers persistent watches).
WATCHER_ANY = 3

#: The event type of a created node, as ZooKeeper sends it.
CREATED = 1

KINDS = ("prepare", "commit", "end", "epoch")


class _AddWatch:
    """ZooKeeper's ``addWatch`` request (opcode 106): path, mode; no reply body."""

    type = 106

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode

    def serialize(self) -> bytes:
        mode: bytes = int_struct.pack(self.mode)
        return bytes(write_string(self.path)) + mode

    @classmethod
    def deserialize(cls, _buffer: bytes, _offset: int) -> bool:
        return True


class _RemoveWatches(_AddWatch):
    """ZooKeeper's ``removeWatches`` request (opcode 18): path, watcher type."""

    type = 18


def _send(client: Any, request: _AddWatch, timeout_s: float) -> None:
    result = client.handler.async_result()
    client._call(request, result)
    result.get(timeout_s)


def add_recursive_watch(client: Any, path: str, timeout_s: float = 30.0) -> None:
    """Watch ``path`` and everything below it until the connection ends."""
    _send(client, _AddWatch(path, PERSISTENT_RECURSIVE), timeout_s)


def remove_watches(client: Any, path: str, timeout_s: float = 30.0) -> None:
    """Stop watching ``path`` (no watch, or no node, is no error)."""
    with contextlib.suppress(NoWatcherError, NoNodeError):
        _send(client, _RemoveWatches(path, WATCHER_ANY), timeout_s)


def hook_events(client: Any, prefix: str, callback: Callable[[WatchedEvent], None]) -> None:
    """Hand the creation events of paths below ``prefix`` to ``callback`` (on
    kazoo's callback thread, as its own watchers run; other events there,
    such as a pruned epoch's deletions, are dropped); all others to kazoo."""
    connection: Any = getattr(client, "_connection", None)
    dispatch = getattr(connection, "_read_watch_event", None)
    if dispatch is None:
        raise FleetError(
            f"kazoo {kazoo.version.__version__} reads watch events in a way livepatch "
            "does not know: install kazoo 2.9 to 2.11 (pip install 'kazoo>=2.9,<2.12')"
        )

    def read_watch_event(buffer: bytes, offset: int) -> Any:
        watch, _ = Watch.deserialize(buffer, offset)
        if not watch.path.startswith(prefix):
            return dispatch(buffer, offset)
        if watch.type == CREATED and not client._stopped.is_set():
            event = WatchedEvent(EventType.CREATED, client._state, watch.path)
            client.handler.dispatch_callback(Callback("watch", callback, (event,)))
        return None

    connection._read_watch_event = read_watch_event


def epoch_name(number: int) -> str:
    """The node name of epoch ``number``."""
    return f"e{number:010d}"


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal: its kind, its body, and its node's name (for de-duplication)."""

    kind: str
    body: dict[str, Any]
    name: str


def signal_name(kind: str, body: dict[str, Any]) -> str:
    """The node name (before ZooKeeper's sequence suffix) of a signal.

    ``kind.BODY.`` with the body as URL-safe base64 of compact JSON, which
    holds no ``/`` (nor ``.``) whatever the body's strings hold."""
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return f"{kind}.{base64.urlsafe_b64encode(data).decode('ascii')}."


def parse_signal(name: str) -> Signal | None:
    """A signal from its node name; ``None`` for a name that is not one."""
    kind, _, rest = name.partition(".")
    encoded, _, _sequence = rest.partition(".")
    if kind not in KINDS:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(encoded.encode("ascii")))
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return Signal(kind, body, name)


def add_signal(tx: Any, epoch: str, kind: str, body: dict[str, Any]) -> None:
    """Add the creation of a signal under the epoch node ``epoch`` to ``tx``."""
    tx.create(f"{epoch}/{signal_name(kind, body)}", sequence=True)


def pusher_epoch(client: Any, signals: str) -> str:
    """The epoch node a pusher signals into: the latest, once the next was
    started if the latest is full. Members watch the last two; epochs before
    the last three go (nobody watches them any more: every member stopped a
    whole epoch ago, so their deletion wakes nobody)."""
    epochs = sorted(n for n in client.get_children(signals) if n.startswith("e"))
    if not epochs:
        client.ensure_path(f"{signals}/{epoch_name(0)}")
        epochs = [epoch_name(0)]
    latest = epochs[-1]
    stat = client.exists(f"{signals}/{latest}")
    if stat is not None and stat.numChildren >= EPOCH_SIGNALS:
        following = epoch_name(int(latest[1:]) + 1)
        tx = client.transaction()
        tx.create(f"{signals}/{following}")
        add_signal(tx, f"{signals}/{latest}", "epoch", {"epoch": following})
        tx.commit()  # its create failing: another pusher started it first
        epochs.append(following)
        latest = following
    for old in epochs[:-3]:
        _delete_epoch(client, f"{signals}/{old}")
    return f"{signals}/{latest}"


def _delete_epoch(client: Any, path: str) -> None:
    with contextlib.suppress(NoNodeError):
        tx = client.transaction()
        for name in client.get_children(path):
            tx.delete(f"{path}/{name}")
        tx.delete(path)
        if any(isinstance(r, Exception) for r in tx.commit()):
            # A signal came meanwhile (a pusher that read this epoch long ago).
            client.delete(path, recursive=True)
