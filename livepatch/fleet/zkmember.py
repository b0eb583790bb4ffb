"""The ZooKeeper member agent: an ephemeral node, signals, a reconcile loop.

Each engine process that joins a fleet through ZooKeeper runs one
:class:`ZkMember` (the benchmark runs hundreds per process). It holds an
ephemeral node under ``members/``; it holds one persistent recursive watch
on the fleet's signal epoch (:mod:`.zksignal`), whose events are the
pushes' news in node names: a push opened (vote: load and check through its
engine), committed (swap, ack), or ended without a commit (release what it
prepared). It reports its state in its node. Signals are hints: a pass
makes the engine match the registry, re-reading ``current`` every couple of
seconds anyway, and the desired nodes themselves whenever it joins or lost
its connection (which also loses the watch: it is set again). After a
session expires it joins again and converges.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
)
from kazoo.handlers.threading import KazooTimeoutError

from ..errors import LivepatchError
from .handle import EngineHandle, converge, prepare, release
from .model import (
    Desired,
    FleetError,
    MemberState,
    Rule,
    Vote,
    parse_node,
    parse_value,
    sha_of,
)
from .zk import (
    STALE_PUSH_S,
    ZkAddress,
    _connect,
    _dumps,
    _loads,
    _Paths,
    _without,
    current_of,
    update_current,
    vote_member,
    vote_node,
)
from .zksignal import (
    add_recursive_watch,
    add_signal,
    epoch_name,
    hook_events,
    parse_signal,
    remove_watches,
)
from .zksource import read_source, write_source

__all__ = ["ZkMember"]

#: The mark of the loop's periodic pass (re-reads ``current``, checks open pushes).
PERIODIC = "~"

#: A member re-reports its state (calls/s) on a periodic pass this often.
REPORT_S = 10.0

#: A member woken all the time (pushes back to back) still makes a periodic
#: pass after this many refresh intervals: signals are hints, and one that
#: never came must not leave it different for as long as the pushes go on.
BUSY_REFRESHES = 5


@dataclass(slots=True)
class _News:
    """What a pass's signals said: pushes to vote on, desired versions by
    slot (commits), and pushes that ended without a commit (id: outcome)."""

    prepares: list[dict[str, Any]] = field(default_factory=list)
    desired: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)


def _signal_order(path: str) -> tuple[str, str]:
    """A signal's place: its epoch, then its sequence number (the name's end)."""
    epoch, _, name = path.rpartition("/")
    return epoch, name.rpartition(".")[2]


class ZkMember:
    """A member agent: an ephemeral node, watches, and a reconcile loop.

    The loop is a thread of its own. ``connect`` opens the session (the
    benchmark's simulated members, a thousand per process, pass one that
    shares an event loop: :mod:`livepatch.fleet.zksim`).
    """

    def __init__(
        self,
        address: ZkAddress,
        fleet: str,
        handle: EngineHandle,
        pid: int = 0,
        refresh_s: float = 2.0,
        connect: Callable[[ZkAddress], Any] = _connect,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.fleet = fleet
        self.handle = handle
        self.name = handle.name
        self.pid = pid
        self.refresh_s = refresh_s
        self.paths = _Paths(address.path, fleet)
        self.state = MemberState(self.name, pid, "converging")
        self.client: Any = None
        self._wake = threading.Event()
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._stop = threading.Event()
        self._rejoin = True
        self._seen: set[str] = set()
        self._prepared: dict[str, Vote] = {}
        self._acked: set[str] = set()
        self._sources: dict[str, tuple[Rule, str]] = {}
        self._desired: dict[str, Desired] = {}
        self._desired_json: dict[str, Any] = {}
        self._last_calls: tuple[int, float] | None = None
        self._reported = 0.0
        self._periodic_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._connect = connect
        #: Where the member tells its operator that ZooKeeper went or came back.
        self._say = say
        self._disconnected = False
        #: The last fleet problem told (said once, until a pass succeeds).
        self._trouble: str | None = None
        #: The signal epochs we watch (the latest, and the one before it:
        #: a pusher that read the epoch just before another started the
        #: next still signals there), and the signals already handled.
        self._epoch: str | None = None
        self._previous: str | None = None
        self._signalled: set[str] = set()
        self.passes = 0
        #: How many times the signal watch was set (joins, reconnections).
        self.watch_sets = 0

    def start(self, wait: bool = True) -> MemberState:
        """Join the fleet; with ``wait``, converge once before returning."""
        self.client = self._connect(self.address)
        self.client.add_listener(self._on_state)
        hook_events(self.client, f"{self.paths.signals}/", self._on_watch)
        self.client.retry(self.paths.ensure, self.client, f"ZooKeeper at {self.address.hosts}")
        if wait:
            self._pass()
        self._thread = threading.Thread(target=self._loop, name="livepatch-fleet-zk", daemon=True)
        self._thread.start()
        return self.state

    def stop(self) -> None:
        """Leave: stop reconciling and close the session (the node goes)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop()
                self.client.close()

    def _on_state(self, state: str) -> None:
        hosts = self.address.hosts
        if state == KazooState.LOST:
            # Session expired: our ephemeral node is gone; join again when back.
            self._rejoin = True
            self._tell(f"its ZooKeeper session expired: it joins again once {hosts} answers")
        elif state == KazooState.SUSPENDED:
            self._tell(f"lost ZooKeeper at {hosts}: reconnecting; the engine serves on as it was")
        elif state == KazooState.CONNECTED and self._disconnected:
            self._tell(f"ZooKeeper at {hosts} is back: converging")
        self._disconnected = state != KazooState.CONNECTED
        self._mark("*")

    def _tell(self, message: str) -> None:
        if self._say is not None:
            self._say(message)

    def _on_watch(self, event: Any) -> None:
        self._mark(str(getattr(event, "path", "*") or "*"))

    def _mark(self, path: str) -> None:
        with self._dirty_lock:
            self._dirty.add(path)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Jittered, so that a thousand members started together do not
            # all re-read at the same moment.
            if not self._wake.wait(self.refresh_s * random.uniform(0.8, 1.2)):
                self._mark(PERIODIC)  # never trust only events
            elif time.monotonic() - self._periodic_at >= BUSY_REFRESHES * self.refresh_s:
                self._mark(PERIODIC)  # nor when they keep coming
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            try:
                self._pass(dirty)
            except FleetError as exc:
                # A node livepatch did not write (or a newer layout): no
                # retry soon mends that. Say it once; keep looking now and then.
                if exc.message != self._trouble:
                    self._trouble = exc.message
                    self._tell(f"cannot follow the fleet: {exc.message}")
                self._stop.wait(self.refresh_s)
                self._mark("*")
            except (KazooException, KazooTimeoutError, LivepatchError, OSError):
                # Disconnected, or the engine is busy: retry everything soon.
                self._stop.wait(0.1)
                self._mark("*")
            else:
                self._trouble = None

    def _pass(self, dirty: set[str] | None = None) -> None:
        """One reconcile pass: take the signals a watch delivered (re-read
        everything for ``*``), make the engine match, vote or ack, report."""
        self.passes += 1
        dirty = {"*"} if dirty is None else dirty
        full = "*" in dirty
        if self._rejoin:
            self._join()
            full = True
        if full:
            # The watch first, the reads after: no change falls between them.
            self._watch_signals()
        periodic = PERIODIC in dirty and not full
        current: dict[str, Any] | None = None
        fresh: set[str] = set()
        if full or periodic:
            self._periodic_at = time.monotonic()
            data, _ = self.client.get(self.paths.current)
            current = current_of(data)
            fresh = self._prepare_new(current["pushes"], check_votes=full)
        # What a read of ``current`` told is at least as new as any signal
        # that arrived before it.
        news = _News() if full else self._take_signals(dirty, read=current is not None)
        fresh |= self._prepare_new(news.prepares, check_votes=False)
        # A watch on a push's lease (``pushes/<id>/pusher``) names the push.
        pushes = self.paths.pushes
        touched = {
            p[len(pushes) + 1 :].partition("/")[0] for p in dirty if p.startswith(pushes + "/")
        }
        if full:
            self._converge(None)  # the desired nodes themselves: the truth
        elif current is not None and (periodic or current["desired"] != self._desired_json):
            # A periodic pass also repairs an engine swapped by hand, and
            # refreshes the calls/s in our node now and then.
            stale = time.monotonic() - self._reported >= REPORT_S
            self._converge(current["desired"], report=periodic and stale)
        elif news.desired:
            self._converge({**self._desired_json, **news.desired})
        for push_id, outcome in news.ended.items():
            vote = self._prepared.pop(push_id, None)
            if vote is not None and outcome in ("aborted", "abandoned"):
                release(self.handle, vote)
        open_ids = None if current is None else {str(p.get("id")) for p in current["pushes"]}
        # A push prepared in this very pass was just read: no need to look again.
        self._release_ended(full or periodic, touched, open_ids, skip=fresh)

    def _watch_signals(self) -> None:
        """Watch the latest two signal epochs (again: a new connection has
        no watches of ours; kazoo restores only its own)."""
        signals = self.paths.signals
        epochs = [f"{signals}/{e}" for e in sorted(self.client.get_children(signals))]
        watched = epochs[-2:] or [f"{signals}/{epoch_name(0)}"]
        for epoch in watched:
            add_recursive_watch(self.client, epoch)
        for old in (self._epoch, self._previous):
            if old is not None and old not in watched:
                remove_watches(self.client, old)
        self.watch_sets += 1
        self._previous = watched[-2] if len(watched) == 2 else None
        self._epoch = watched[-1]
        self._signalled.clear()

    def _take_signals(self, dirty: set[str], read: bool) -> _News:
        """The news in the signals among ``dirty`` not handled yet, in the
        order they were made (``read``: ``current`` was just read, so only an
        epoch's end matters)."""
        signals = self.paths.signals
        queue = sorted((p for p in dirty if p.startswith(signals + "/")), key=_signal_order)
        news = _News()
        while queue:
            path = queue.pop(0)
            if path in self._signalled:
                continue
            self._signalled.add(path)
            signal = parse_signal(path.rpartition("/")[2])
            if signal is None:
                continue
            body = signal.body
            if signal.kind == "epoch":
                queue += self._move_to(f"{signals}/{body.get('epoch')}")
            elif read:
                continue
            elif signal.kind == "prepare":
                news.prepares.append({**body, "outcome": "preparing"})
            elif signal.kind == "commit":
                news.desired[str(body.get("slot"))] = body
            elif signal.kind == "end":
                news.ended[str(body.get("id"))] = str(body.get("outcome"))
        # No vote on a push that already ended (committed or not) in the same news.
        done = set(news.ended) | {str(d.get("push")) for d in news.desired.values()}
        for push in news.prepares:
            if str(push.get("id")) in done:
                self._seen.add(str(push.get("id")))
        return news

    def _move_to(self, epoch: str) -> list[str]:
        """Follow the pusher to the next epoch: watch it, and take what it
        signalled before our watch began; the watch of the epoch before the
        one we leave goes (the pusher deletes that one next)."""
        if epoch in (self._epoch, self._previous):
            return []
        add_recursive_watch(self.client, epoch)
        try:
            names = self.client.get_children(epoch)
        except NoNodeError:
            names = []
            self._mark("*")  # gone already: we are far behind, re-read everything
        if self._previous is not None:
            remove_watches(self.client, self._previous)
        self._previous, self._epoch = self._epoch, epoch
        kept = tuple(f"{e}/" for e in (self._previous, epoch) if e is not None)
        self._signalled = {p for p in self._signalled if p.startswith(kept)}
        return sorted((f"{epoch}/{n}" for n in names), key=_signal_order)

    def _converge(self, desired: dict[str, Any] | None, report: bool = False) -> None:
        """Make the engine run the desired versions (``desired``: from
        ``current``; ``None``: read the desired nodes); ack and report
        (when anything changed, on a full pass, or with ``report``) in one
        transaction (one round trip, and one watch event for nobody)."""
        first = [desired]

        def read_desired() -> dict[str, tuple[str, str]]:
            # A retry (someone swapped meanwhile) reads ``current`` again.
            given = first.pop() if first else self._read_current_desired()
            if given is None:
                self._desired = self._read_desired()
            else:
                where = f"{self.paths.current}'s desired versions"
                self._desired = {
                    s: parse_value(Desired.from_json, d, where, "desired version")
                    for s, d in given.items()
                }
            self._desired_json = {s: d.to_json() for s, d in self._desired.items()}
            return {slot: (d.sha256, d.filename) for slot, d in self._desired.items()}

        result = converge(self.handle, read_desired, self._source, self.pid)
        changed = result.state.active != self.state.active or result.state.state != self.state.state
        self.state = result.state
        # A push the desired node names is committed: nothing to release, so
        # its node need not be read (nor watched) again.
        for d in self._desired.values():
            self._prepared.pop(d.push, None)
        acks = self._acks(self._desired)
        publish = changed or desired is None or report  # a full pass reports anyway
        if publish:
            self._upload_active()
        if not acks and not publish:
            return
        tx = self.client.transaction()
        for path in acks:
            tx.create(path)
        if publish:
            tx.set_data(f"{self.paths.members}/{self.name}", self._report())
        results = tx.commit_async().get(30)
        if any(isinstance(r, Exception) for r in results):
            # An ack for a push already gone (or acked by our previous
            # incarnation) fails the whole transaction: one at a time, then.
            for path in acks:
                with contextlib.suppress(NodeExistsError, NoNodeError):
                    self.client.create(path)
            if publish:
                self._publish()

    def _join(self) -> None:
        path = f"{self.paths.members}/{self.name}"
        body = _dumps(self.state.to_json())
        try:
            self.client.create(path, body, ephemeral=True)
        except NodeExistsError:
            _data, stat = self.client.get(path)
            if stat.ephemeralOwner != self.client.client_id[0]:
                # Our previous incarnation's node (killed, its session not yet
                # expired): we are that member now.
                with contextlib.suppress(NoNodeError):
                    self.client.delete(path, version=stat.version)
                self.client.create(path, body, ephemeral=True)
        self._rejoin = False

    def _source(self, sha: str) -> tuple[Rule, str]:
        if sha not in self._sources:  # content-addressed: safe to keep
            self._sources[sha] = read_source(
                self.client, self.paths.sources, self.paths.chunks, sha
            )
        return self._sources[sha]

    def _prepare_new(self, pushes: list[dict[str, Any]], check_votes: bool = True) -> set[str]:
        """Vote on every open push (headers from ``current``) we have not
        seen; returns the ones we prepared."""
        fresh = set()
        for push in sorted(pushes, key=lambda p: str(p.get("id"))):
            push_id = str(push.get("id"))
            if push_id in self._seen:
                continue
            base = f"{self.paths.pushes}/{push_id}"
            if push.get("outcome") != "preparing" or time.time() > float(push.get("deadline", 0)):
                self._seen.add(push_id)
                continue
            # Prepared on a pass that could not write the vote (ZooKeeper went
            # meanwhile): that vote again. Preparing again would find the version
            # loaded (not new: never released), and an abort must unload it.
            vote = self._prepared.get(push_id)
            if vote is None:
                if check_votes and self._voted(base):
                    self._seen.add(push_id)
                    continue  # voted before a restart: the commit (or abort) will tell
                source, filename = self._source(str(push["sha256"]))
                vote = prepare(self.handle, str(push["slot"]), source, filename)
                vote.member = self.name
                # Known before the vote is written: if that fails, the push's
                # end (abort, abandoned) still releases what this loaded.
                self._prepared[push_id] = vote
            self._vote(base, vote)
            # Seen only once voted: a pass that failed half-way votes next time.
            self._seen.add(push_id)
            fresh.add(push_id)
        return fresh

    def _vote(self, base: str, vote: Vote) -> None:
        """Create our vote node. A transaction of one create: kazoo sends it
        with one pending result, where its ``create`` chains two and wraps
        three closures (a sixth less CPU per push for a simulated member).
        A vote already there (a retry) or a push gone meanwhile is no error."""
        tx = self.client.transaction()
        tx.create(*vote_node(base, vote))
        (result,) = tx.commit_async().get(30)
        if isinstance(result, Exception) and not isinstance(result, NodeExistsError | NoNodeError):
            raise result

    def _voted(self, base: str) -> bool:
        try:
            names = self.client.get_children(f"{base}/votes")
        except NoNodeError:
            return False
        return any(vote_member(n) == self.name for n in names)

    def _release_ended(
        self, full: bool, touched: set[str], open_ids: set[str] | None, skip: set[str]
    ) -> None:
        """Prepared versions of pushes that were aborted (or abandoned) go.

        A push is looked at when it left ``current``'s open pushes without
        a commit naming it, when its lease changed, and on a full pass."""
        for push_id, vote in list(self._prepared.items()):
            if push_id in skip:
                continue
            left = open_ids is not None and push_id not in open_ids
            if not (full or left or push_id in touched):
                continue
            base = f"{self.paths.pushes}/{push_id}"
            try:
                data, stat = self.client.get(base)
                push = _loads(data)
            except NoNodeError:
                push, stat = {"outcome": "aborted"}, None
            outcome = push.get("outcome")
            if outcome == "preparing" and stat is not None and self._abandoned(base, push):
                outcome = self._give_up(base, push, stat.version)
            if outcome in ("aborted", "abandoned"):
                release(self.handle, vote)
            if outcome != "preparing":
                del self._prepared[push_id]

    def _abandoned(self, base: str, push: dict[str, Any]) -> bool:
        """Nobody will commit this push: its pusher's session (the lease) is
        gone, or it is long past its deadline."""
        if time.time() > float(push.get("deadline", 0)) + STALE_PUSH_S:
            return True
        lease = push.get("lease")
        return bool(lease) and self.client.exists(f"{base}/{lease}", watch=self._on_watch) is None

    def _give_up(self, base: str, push: dict[str, Any], version: int) -> str:
        """Mark the push abandoned, unless it changed meanwhile (the pusher's
        commit is a compare-and-set on the same node version): the outcome."""
        body = {**push, "outcome": "abandoned", "finished": time.time()}
        body["reason"] = "its pusher went away (or stalled) before committing"
        push_id = base.rpartition("/")[2]

        def ops(tx: Any) -> None:
            tx.set_data(base, _dumps(body), version=version)
            epoch = self._epoch or f"{self.paths.signals}/{epoch_name(0)}"
            add_signal(tx, epoch, "end", {"id": push_id, "outcome": "abandoned"})

        results = update_current(self.client, self.paths, _without(push_id), ops)
        if isinstance(results[0], BadVersionError):
            data, _ = self.client.get(base)
            return str(_loads(data).get("outcome"))
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, RolledBackError):
                raise result
        return "abandoned"

    def _read_current_desired(self) -> dict[str, Any]:
        data, _ = self.client.get(self.paths.current)
        desired: dict[str, Any] = current_of(data)["desired"]
        return desired

    def _read_desired(self) -> dict[str, Desired]:
        """The desired nodes themselves (no watch: ``current`` tells changes)."""
        c = self.client
        slots = set(c.get_children(self.paths.desired))
        results = {slot: c.get_async(f"{self.paths.desired}/{slot}") for slot in slots}
        found = {}
        for slot, result in results.items():
            with contextlib.suppress(NoNodeError):
                data, _ = result.get(30)
                where = f"{self.paths.desired}/{slot}"
                found[slot] = parse_node(Desired.from_json, data, where, "desired version")
        return found

    def _acks(self, desired: dict[str, Desired]) -> list[str]:
        """The ack nodes of every push whose version we now run. The name says
        it all (``member=version``): the pusher reads no data."""
        paths = []
        for slot, d in desired.items():
            active = self.state.active.get(slot)
            if not d.push or d.push in self._acked or not active:
                continue
            if active.get("sha256") != d.sha256:
                continue
            paths.append(f"{self.paths.pushes}/{d.push}/acks/{self.name}={active['version']}")
            self._acked.add(d.push)
        return paths

    def _upload_active(self) -> None:
        """Keep what we run in the registry, so a fleet rollback to it works."""
        for active in self.state.active.values():
            sha = str(active["sha256"])
            if sha in self._sources:
                continue
            path = f"{self.paths.sources}/{sha}"
            if not self.client.exists(path):
                try:
                    source = self.handle.source(str(active["version"]))
                except LivepatchError:
                    continue  # a ready object has no source to upload
                if sha_of(source) != sha:
                    continue
                filename = f"{active['version'].partition('@')[0]}-{sha[:12]}.py"
                try:
                    write_source(
                        self.client, self.paths.sources, self.paths.chunks, source, filename
                    )
                except FleetError:
                    continue  # too big for any fleet: nobody can roll back to it
            self._sources[sha] = self._source(sha)

    def _report(self) -> bytes:
        """Our member node's data: the state, with calls per second since the last."""
        now = time.monotonic()
        rate = 0.0
        if self._last_calls is not None:
            calls, then = self._last_calls
            rate = (self.state.calls - calls) / max(now - then, 1e-6)
        self._last_calls = (self.state.calls, now)
        self._reported = now
        self.state.rate = round(rate, 1)
        return _dumps(self.state.to_json())

    def _publish(self) -> None:
        try:
            self.client.set(f"{self.paths.members}/{self.name}", self._report())
        except NoNodeError:
            self._rejoin = True  # our node went (session expired): join again
            self._mark("*")
