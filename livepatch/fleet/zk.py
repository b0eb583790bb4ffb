"""The ZooKeeper registry: membership, sources, desired versions and pushes.

Layout under the registry path (``zookeeper://HOST:PORT/PATH``)::

    PATH/fleets/<fleet>                      {"layout": 1}: see :data:`.model.LAYOUT`
    PATH/fleets/<fleet>/members/<name>       ephemeral: the member's MemberState
    PATH/fleets/<fleet>/sources/<sha256>     {"filename", "source" or "object" (base64)}
                                             or a manifest of chunks (see :mod:`.zksource`)
    PATH/fleets/<fleet>/chunks/<sha256>      a big source's piece, raw bytes
    PATH/fleets/<fleet>/desired/<slot>       the slot's Desired; CAS on the znode version
    PATH/fleets/<fleet>/current              {"pushes": [open pushes], "desired": {slot: Desired}}
    PATH/fleets/<fleet>/pushes/<id>          the PushRecord (+ deadline, members)
    PATH/fleets/<fleet>/pushes/<id>/votes/<name>=<version>=<new>   an ok vote (no data)
    PATH/fleets/<fleet>/pushes/<id>/votes/<name>   a refusal: the Vote
    PATH/fleets/<fleet>/pushes/<id>/acks/<name>=<version>   it swapped (no data)
    PATH/fleets/<fleet>/signals/<epoch>/<kind>.<body>.<seq>   news of a change to current

The pusher never talks to an engine: it writes the push node, waits for a
vote from every member that is still alive, then commits with one
ZooKeeper transaction (``desired/<slot>`` set with the version it read,
and the push node marked ``committed``: both or neither, so a commit never
exists without its record), or marks the push ``aborted``.

``current`` is the one node that says which pushes are open. Every
transaction that opens, commits, aborts or gives up a push also rewrites it
(compare-and-set on its znode version): the pushes still preparing, and a
copy of every slot's desired version, written in the same transaction as
the desired nodes, so it can never disagree with them. The same transaction
creates a *signal* (:mod:`.zksignal`): a node whose name is the news, which
members learn from the event of their one persistent watch, with no read.
Members (:class:`ZkMember`, in each engine process) make the engine match,
then vote or ack; they re-read ``current`` on a periodic pass, and the
desired nodes, the truth, whenever they join or lost their connection.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.retry import KazooRetry, RetryFailedError

from .model import (
    LAYOUT,
    Desired,
    FleetError,
    MemberState,
    PushRecord,
    Rule,
    Vote,
    check_layout,
    count,
    new_push_id,
    parse_node,
    parse_value,
)
from .zksignal import add_signal, epoch_name, pusher_epoch
from .zksource import MAX_NODE, read_source, source_from_node, source_node, write_source
from .zkurl import ZkAddress, parse_zk_url

__all__ = [
    "MAX_NODE",
    "ZkAddress",
    "ZkRegistry",
    "current_of",
    "parse_zk_url",
    "source_from_node",
    "source_node",
    "update_current",
    "vote_member",
    "vote_node",
]

#: Push nodes kept (the oldest are deleted by the next push).
HISTORY = 50

#: Deletes per transaction when a push is pruned (well under a request's 1 MiB).
PRUNE_BATCH = 1000

#: Members give up a push that is still preparing this long past its deadline.
STALE_PUSH_S = 30.0

_Phase = Callable[[str, PushRecord], None]

#: What a read cut short by a lost ZooKeeper left.
_NOTHING = "nothing was changed; try again once ZooKeeper is back"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


#: The longest wait between two attempts to reach ZooKeeper again (kazoo's
#: default doubles up to an hour: an engine's member came back minutes after
#: its server). A member tries forever, so it is back within about this long
#: (plus kazoo's jitter of up to 40 %) of its server.
RECONNECT_MAX_S = 2.0

#: A one-shot verb (push, status, history, rollback) gives ZooKeeper up once
#: it has been unreachable for the registry's session timeout (by then our
#: session, and a push's lease with it, is gone or going), and no sooner than
#: this: time for a server to restart.
GIVE_UP_MIN_S = 10.0


def give_up_s(address: ZkAddress) -> float:
    """How long a one-shot verb keeps trying to reach ZooKeeper again."""
    return max(address.timeout, GIVE_UP_MIN_S)


def _connect(
    address: ZkAddress,
    wait_s: float = 15.0,
    handler: Any = None,
    *,
    give_up: float | None = None,
) -> Any:
    """A started kazoo client. ``give_up``: seconds after which a lost
    connection is given up (the client closes, and every call waiting on it,
    or made after, fails); ``None`` (a member): it reconnects forever. Either
    way at most :data:`RECONNECT_MAX_S` between two attempts."""
    sleep = handler.sleep_func if handler is not None else time.sleep

    def retry(deadline: float | None) -> KazooRetry:
        return KazooRetry(
            max_tries=-1, max_delay=RECONNECT_MAX_S, deadline=deadline, sleep_func=sleep
        )

    client = KazooClient(
        hosts=address.hosts,
        timeout=address.timeout,
        handler=handler,
        connection_retry=retry(give_up),
        command_retry=retry(None),
    )
    if give_up is not None:
        wait_s = give_up  # the connection retry gives up then anyway
    try:
        client.start(timeout=wait_s)
    except KazooTimeoutError:
        with contextlib.suppress(Exception):
            client.stop()
            client.close()
        raise FleetError(
            f"cannot reach ZooKeeper at {address.hosts} within {wait_s:g} s: is it running?"
        ) from None
    return client


class _Abandoned(FleetError):
    """The members gave a push up before its pusher could commit it."""


class _Gone(FleetError):
    """ZooKeeper was given up: unreachable for longer than :func:`give_up_s`."""


#: What kazoo raises when ZooKeeper is lost (a client that gave it up fails
#: every call: ConnectionLoss for those waiting, ConnectionClosedError, a
#: SessionExpiredError, after).
_LOST = (
    ConnectionLoss,
    SessionExpiredError,
    OperationTimeoutError,
    KazooTimeoutError,
    RetryFailedError,
    _Gone,
)


class _Paths:
    def __init__(self, root: str, fleet: str) -> None:
        self.base = f"{root}/fleets/{fleet}"
        self.members = f"{self.base}/members"
        self.sources = f"{self.base}/sources"
        self.desired = f"{self.base}/desired"
        self.pushes = f"{self.base}/pushes"
        self.current = f"{self.base}/current"
        self.chunks = f"{self.base}/chunks"
        self.signals = f"{self.base}/signals"

    def ensure(self, client: Any, where: str) -> None:
        """Create the fleet's nodes if need be, and refuse a fleet of a
        layout this livepatch cannot read (:class:`FleetError`; ``where``
        names the registry for the message)."""
        for path in (self.members, self.sources, self.desired, self.pushes, self.current):
            client.ensure_path(path)
        client.ensure_path(f"{self.signals}/{epoch_name(0)}")
        while True:
            data, stat = client.get(self.base)
            if data:
                break
            # A new fleet (or one made before layouts were recorded: layout 1).
            with contextlib.suppress(BadVersionError):
                client.set(self.base, _dumps({"layout": LAYOUT}), version=stat.version)
                return
        where = f"fleet node {self.base} in {where}"
        layout = parse_node(lambda value: value.get("layout"), data, where, "fleet layout")
        check_layout(layout, where)


def current_of(data: bytes) -> dict[str, Any]:
    """The ``current`` node's content: ``{"pushes": [...], "desired": {...}}``
    (empty before the fleet's first push); :class:`FleetError` if it is not."""

    def parse(value: dict[str, Any]) -> dict[str, Any]:
        pushes, desired = value.get("pushes", []), value.get("desired", {})
        if not isinstance(pushes, list) or not isinstance(desired, dict):
            raise TypeError("its pushes are not a list or its desired versions not an object")
        return {"pushes": pushes, "desired": desired}

    if not data:
        return {"pushes": [], "desired": {}}
    return parse_node(parse, data, "the fleet's current node", "open pushes")


def update_current(
    client: Any,
    paths: _Paths,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    ops: Callable[[Any], None] = lambda tx: None,
) -> list[Any]:
    """One transaction: ``ops`` (added first), and ``current`` rewritten by
    ``change`` with compare-and-set; retried while only ``current`` changed
    meanwhile (another push opened or ended). Returns the results, ``current``'s last."""
    while True:
        data, stat = client.get(paths.current)
        tx = client.transaction()
        ops(tx)
        tx.set_data(paths.current, _dumps(change(current_of(data))), version=stat.version)
        results: list[Any] = tx.commit()
        others = results[:-1]
        if isinstance(results[-1], BadVersionError) and not any(
            isinstance(r, Exception) and not isinstance(r, RolledBackError) for r in others
        ):
            continue
        return results


def first_error(results: list[Any]) -> Exception | None:
    """What made a transaction fail, or ``None``: the one operation's own
    error (ZooKeeper reports the operations before it as rolled back, those
    after it as a runtime inconsistency)."""
    for result in results:
        if isinstance(result, Exception) and not isinstance(
            result, RolledBackError | RuntimeInconsistency
        ):
            return result
    return None


def _without(push_id: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(current: dict[str, Any]) -> dict[str, Any]:
        current["pushes"] = [p for p in current["pushes"] if p.get("id") != push_id]
        return current

    return change


class ZkRegistry:
    """The pushing and reading side of a fleet in ZooKeeper."""

    def __init__(
        self, address: ZkAddress, fleet: str, client: Any = None, *, create: bool = True
    ) -> None:
        """Open fleet ``fleet`` (``create``: make its nodes if it has none; a
        verb that only reads passes False, so a mistyped name is an error,
        not a new empty fleet left in ZooKeeper)."""
        self.address = address
        self.fleet = fleet
        self.paths = _Paths(address.path, fleet)
        self._own = client is None
        #: A lost connection is given up after this long (see :func:`give_up_s`).
        self.give_up_s = give_up_s(address)
        self.client = client if client is not None else _connect(address, give_up=self.give_up_s)
        self._retry = self.client.retry
        #: When the connection was lost (``None``: connected).
        self._lost_at: float | None = None
        self.client.add_listener(self._on_state)
        self._guards = 0
        #: The push under way, and how far it got (what a lost ZooKeeper left).
        self._pushing: PushRecord | None = None
        self._stage = "before"
        try:
            with self._guard(f"while opening fleet {fleet}", "nothing was changed"):
                if not create and self._retry(self.client.exists, self.paths.base) is None:
                    self._no_such_fleet()
                self._retry(self.paths.ensure, self.client, f"ZooKeeper at {address.hosts}")
        except BaseException:
            self.close()
            raise
        #: The epoch node this push's signals go under (see :mod:`.zksignal`).
        self._epoch = f"{self.paths.signals}/{epoch_name(0)}"

    def _no_such_fleet(self) -> None:
        fleets = f"{self.address.path}/fleets"
        try:
            known = sorted(self._retry(self.client.get_children, fleets))
        except NoNodeError:
            known = []
        there = f"fleets there: {', '.join(known)}" if known else "no fleet is there"
        raise FleetError(
            f"no fleet {self.fleet!r} in ZooKeeper at {self.address.hosts} under "
            f"{self.address.path} ({there}): check the name and --registry, or start an "
            f"engine with `livepatch engine --name NAME --fleet {self.fleet} --registry ...`"
        )

    def close(self) -> None:
        """Close the session (if this registry opened it)."""
        with contextlib.suppress(Exception):
            self.client.remove_listener(self._on_state)
        if self._own:
            with contextlib.suppress(Exception):
                self.client.stop()
                self.client.close()

    def __enter__(self) -> ZkRegistry:
        return self

    @property
    def url(self) -> str:
        """The registry's URL, as ``--registry`` takes it."""
        query = "" if self.address.timeout == 10.0 else f"?timeout={self.address.timeout:g}"
        return f"zookeeper://{self.address.hosts}{self.address.path}{query}"

    @contextlib.contextmanager
    def _guard(self, during: str, left: str | Callable[[], str]) -> Iterator[None]:
        """Make ZooKeeper lost for good (or a session lost) during the block
        one :class:`FleetError` line: what was lost, while doing what, and
        what is left (``left``: said then; a callable is asked then). Only
        the outermost block of nested ones says it."""
        self._guards += 1
        try:
            yield
        except _LOST as exc:
            if self._guards > 1:
                raise
            what = left() if callable(left) else left
            raise FleetError(
                f"lost ZooKeeper at {self.address.hosts} {during} ({self._why(exc)}): {what}"
            ) from None
        finally:
            self._guards -= 1

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._lost_at = None
        elif self._lost_at is None:
            self._lost_at = time.monotonic()

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, _Gone) or self.client.client_state == KeeperState.CLOSED:
            lost = self._lost_at
            seconds = self.give_up_s if lost is None else time.monotonic() - lost
            return f"unreachable for {seconds:.0f} s"
        if isinstance(exc, SessionExpiredError):
            return "its session expired"
        if isinstance(exc, ConnectionLoss):
            return "the connection dropped"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------

    def put_source(self, source: Rule, filename: str) -> str:
        """Store a source or an object's bytes content-addressed (idempotent;
        split into chunk nodes when over one node); returns its sha256."""
        with self._guard("while storing a source", "it may not be stored"):
            return write_source(
                self.client, self.paths.sources, self.paths.chunks, source, filename
            )

    def get_source(self, sha: str) -> tuple[Rule, str]:
        """``(source, filename)`` (``bytes`` for an object); ``LookupError``
        if the registry has none, or it is damaged."""
        with self._guard("while reading a source", _NOTHING):
            return read_source(self.client, self.paths.sources, self.paths.chunks, sha)

    def source_shas(self) -> list[str]:
        """The sha256 of every source and object in the registry."""
        with self._guard("while listing the sources", _NOTHING):
            return sorted(self._retry(self.client.get_children, self.paths.sources))

    def desired(self) -> dict[str, tuple[Desired, int]]:
        """slot -> (desired version, znode version for compare-and-set)."""
        found = {}
        with self._guard("while reading the desired versions", _NOTHING):
            for slot in self._retry(self.client.get_children, self.paths.desired):
                with contextlib.suppress(NoNodeError):
                    data, stat = self._retry(self.client.get, f"{self.paths.desired}/{slot}")
                    where = f"{self.paths.desired}/{slot}"
                    desired = parse_node(Desired.from_json, data, where, "desired version")
                    found[slot] = (desired, stat.version)
        return found

    def members(self) -> dict[str, MemberState]:
        """The live members (their ephemeral nodes), by name."""
        found = {}
        with self._guard("while reading the members", _NOTHING):
            names = self._retry(self.client.get_children, self.paths.members)
            results = {n: self.client.get_async(f"{self.paths.members}/{n}") for n in names}
            for name, result in results.items():
                with contextlib.suppress(NoNodeError):
                    data, _ = result.get(30)
                    where = f"{self.paths.members}/{name}"
                    found[name] = parse_node(MemberState.from_json, data, where, "member state")
        return found

    def history(self, limit: int = 10) -> list[PushRecord]:
        """The last pushes, oldest first."""
        records = []
        with self._guard("while reading the push history", _NOTHING):
            names = sorted(self._retry(self.client.get_children, self.paths.pushes))[-limit:]
            for name in names:
                with contextlib.suppress(NoNodeError):
                    records.append(self._record(name))
        return records

    def _record(self, push_id: str) -> PushRecord:
        base = f"{self.paths.pushes}/{push_id}"
        with contextlib.suppress(NoNodeError):
            data, _ = self._retry(self.client.get, f"{base}/record")
            return parse_node(PushRecord.from_json, data, f"{base}/record", "push record")
        data, _ = self._retry(self.client.get, base)
        record = parse_node(PushRecord.from_json, data, base, "push record")
        if record.outcome == "preparing" or not record.votes:
            for name, vote in self._votes(push_id, set()).items():
                record.votes.setdefault(name, vote)
        return record

    def _votes(self, push_id: str, known: set[str]) -> dict[str, Vote]:
        base = f"{self.paths.pushes}/{push_id}/votes"
        votes = {}
        names = []
        for name in self._retry(self.client.get_children, base):
            decoded = _from_name(name, True)
            if decoded is not None:
                votes[decoded[0]] = decoded[1]
            elif name not in known:
                names.append(name)
        results = {n: self.client.get_async(f"{base}/{n}") for n in names}
        for name, result in results.items():
            data, _ = result.get(30)
            votes[name] = parse_node(Vote.from_json, data, f"{base}/{name}", "vote")
        return votes

    def view(self, history: int = 10) -> dict[str, Any]:
        """The fleet side by side (see :mod:`livepatch.fleet.view`)."""
        members = []
        with self._guard("while reading the fleet", _NOTHING):
            for _name, m in sorted(self.members().items()):
                row = m.to_json()
                row["calls_per_s"] = row.pop("rate", 0.0)
                members.append(row)
            return {
                "fleet": self.fleet,
                "registry": f"zookeeper://{self.address.hosts}{self.address.path}",
                "desired": {s: d.to_json() for s, (d, _) in sorted(self.desired().items())},
                "members": members,
                "pushes": [r.to_json() for r in self.history(history)],
            }

    # -- pushing -------------------------------------------------------------------

    def push(
        self,
        slot: str,
        source: Rule,
        filename: str,
        *,
        expect: str | None = None,
        deadline_s: float = 60.0,
        rollback: bool = False,
        phase: _Phase | None = None,
    ) -> PushRecord:
        """Two-phase push through the registry; returns the push record.

        ZooKeeper lost for good meanwhile (unreachable for :func:`give_up_s`)
        is a :class:`FleetError` whose one line says what the push left:
        nothing, a push not committed (its members record it abandoned once
        ZooKeeper is back: its lease goes with our session), one committed,
        or, lost during the commit itself, one of those two, never half.
        """
        self._pushing, self._stage = None, "before"
        try:
            with self._guard("during the push", self._push_left):
                return self._push(slot, source, filename, expect, deadline_s, rollback, phase)
        finally:
            self._pushing, self._stage = None, "before"

    def _push_left(self) -> str:
        """What a push cut short by a lost ZooKeeper left, for its error line."""
        record, stage = self._pushing, self._stage
        if record is None or stage == "before":
            return "nothing was pushed; push again once ZooKeeper is back"
        history = f"`livepatch history --fleet {self.fleet} --registry {self.url}`"
        if stage == "committing":
            return (
                f"push {record.id} is either committed or not, never half (its desired "
                "version and its record change in one transaction): once ZooKeeper is back "
                f"its record says which (committed, or abandoned), see {history}"
            )
        if stage == "committed":
            return (
                f"push {record.id} is recorded as committed ({record.slot}={record.sha256[:12]} "
                "is the fleet's desired version); members that had not swapped yet swap once "
                "ZooKeeper is back"
            )
        opened = " (if it had opened)" if stage == "opening" else ""
        return (
            f"push {record.id} was not committed and nobody swapped to it; once ZooKeeper is "
            f"back its members record it as abandoned{opened} and release what they prepared: "
            "push again then"
        )

    def _push(
        self,
        slot: str,
        source: Rule,
        filename: str,
        expect: str | None,
        deadline_s: float,
        rollback: bool,
        phase: _Phase | None,
    ) -> PushRecord:
        self._prune()
        self._epoch = self._retry(pusher_epoch, self.client, self.paths.signals)
        sha = self.put_source(source, filename)
        current, zversion = self.desired().get(slot, (None, -1))
        names = sorted(self._retry(self.client.get_children, self.paths.members))
        if not names:
            raise FleetError(
                f"fleet {self.fleet!r} has no live members in the registry: start engines "
                f"with `livepatch engine --fleet {self.fleet} --registry zookeeper://...`"
            )
        record = PushRecord(
            id=new_push_id(),
            slot=slot,
            sha256=sha,
            filename=filename,
            started=time.time(),
            previous=current.sha256 if current else None,
            rollback=rollback,
        )
        base = f"{self.paths.pushes}/{record.id}"
        self._pushing = record
        # ``lease``: an ephemeral child of the push node, until the push has
        # its outcome or this session ends. Members that find it gone while
        # the push is still preparing know nobody will commit it, and release
        # what they prepared.
        meta = {"deadline": time.time() + deadline_s, "lease": "pusher"}
        if expect is not None and not _matches(current, expect):
            record.outcome, record.reason = (
                "aborted",
                (
                    f"the fleet's desired {slot} is {current.sha256[:12] if current else 'none'}, "
                    f"not {expect}"
                ),
            )
            record.finished = time.time()
            self._create_push(base, record, meta, names)
            return record
        self._stage = "opening"
        self._create_push(base, record, meta, names)
        self._stage = "preparing"
        deadline = time.monotonic() + deadline_s
        votes, down = self._await(f"{base}/votes", set(names), deadline, stop_on_no=True)
        record.votes, record.down = votes, sorted(down)
        refused = {n: v for n, v in record.votes.items() if not v.ok}
        missing = set(names) - set(votes) - down
        for name in missing:
            reason = (
                "had not voted when the push aborted"
                if refused
                else (f"no vote within {deadline_s:g} s")
            )
            record.votes[name] = Vote.missing(name, reason)
        if refused or missing or not votes:
            why = (
                f"{len(refused)} of {len(names)} members refused"
                if refused
                else f"{count(len(missing), 'member')} did not vote in time"
                if missing
                else "every member left during prepare"
            )
            return self._finish(base, record, meta, "aborted", why)
        if current is None:
            record.previous = self._common_previous(slot)
        if phase is not None:
            phase("prepared", record)
        desired = Desired(slot, sha, filename, record.previous, record.id, time.time())
        self._stage = "committing"
        try:
            self._commit(base, record, meta, desired, zversion)
        except _Abandoned as exc:
            self._stage = "preparing"
            return self._finish(base, record, meta, "aborted", exc.message)
        except BadVersionError:
            self._stage = "preparing"
            return self._finish(
                base,
                record,
                meta,
                "aborted",
                f"another push changed {slot}'s desired version first: push again",
            )
        self._stage = "committed"
        if phase is not None:
            phase("committed", record)
        voters = {n for n, v in votes.items() if v.ok}
        acks, gone = self._await(f"{base}/acks", voters, time.monotonic() + deadline_s)
        record.acks = {n: str(a.get("version", "")) for n, a in acks.items()}
        record.down = sorted(set(record.down) | gone | (voters - set(acks) - gone))
        return self._finish(base, record, meta, "committed", "")

    def _common_previous(self, slot: str) -> str | None:
        """The fleet's first push of a slot: when every member ran the same
        source before (members upload what they run), a rollback goes there."""
        shas = {m.active.get(slot, {}).get("sha256") for m in self.members().values()}
        if len(shas) != 1:
            return None
        (sha,) = shas
        if sha is None or not self.client.exists(f"{self.paths.sources}/{sha}"):
            return None
        return str(sha)

    def _create_push(
        self, base: str, record: PushRecord, meta: dict[str, Any], names: list[str]
    ) -> None:
        header = _header(record, meta)
        now = time.time()

        def opened(current: dict[str, Any]) -> dict[str, Any]:
            # Pushes long past their deadline were given up by the members.
            current["pushes"] = [
                p
                for p in current["pushes"]
                if float(p.get("deadline", 0)) + STALE_PUSH_S > now and p.get("id") != record.id
            ]
            current["pushes"].append(_loads(header))
            return current

        def ops(tx: Any) -> None:
            tx.create(base, header)
            tx.create(f"{base}/votes")
            tx.create(f"{base}/acks")
            tx.create(f"{base}/roster", _dumps(names))

        def announced(tx: Any) -> None:
            ops(tx)
            tx.create(f"{base}/{meta['lease']}", ephemeral=True)
            news = {"id": record.id, "slot": record.slot, "sha256": record.sha256}
            add_signal(tx, self._epoch, "prepare", {**news, "deadline": meta["deadline"]})

        def create() -> None:
            if record.outcome == "preparing":
                results = update_current(self.client, self.paths, opened, announced)
            else:  # refused before it opened (--expect): no member need know
                tx = self.client.transaction()
                ops(tx)
                results = tx.commit()
            failed = first_error(results)
            # NodeExists: a retry after a lost connection, and the first try won.
            if failed is not None and not isinstance(failed, NodeExistsError):
                raise failed

        self._retry(create)

    def _commit(
        self,
        base: str,
        record: PushRecord,
        meta: dict[str, Any],
        desired: Desired,
        zversion: int,
    ) -> None:
        """The commit point: desired flips and the record says so, atomically.

        On a lost connection the outcome is unknown: after reconnecting, the
        push node tells (committed, or still preparing and safe to retry).
        """
        record.outcome = "committed"
        body = _header(record, meta)
        path = f"{self.paths.desired}/{desired.slot}"

        def committed(current: dict[str, Any]) -> dict[str, Any]:
            current = _without(record.id)(current)
            current["desired"][desired.slot] = desired.to_json()
            return current

        def ops(tx: Any) -> None:
            if zversion < 0:
                tx.create(path, _dumps(desired.to_json()))
            else:
                tx.set_data(path, _dumps(desired.to_json()), version=zversion)
            # version=0: the push node as we created it. A member that
            # gave the push up as abandoned changed it: then no commit.
            tx.set_data(base, body, version=0)
            add_signal(tx, self._epoch, "commit", desired.to_json())

        for _attempt in range(10):
            try:
                results = update_current(self.client, self.paths, committed, ops)
            except (ConnectionLoss, SessionExpiredError, KazooTimeoutError):
                self._wait_connected()  # _Gone: given up (and the outcome unknown)
                data, _ = self._retry(self.client.get, base)
                if _loads(data).get("outcome") == "committed":
                    return
                continue
            failed = first_error(results)
            if failed is None:
                return
            if isinstance(results[1], BadVersionError):
                record.outcome = "preparing"
                raise _Abandoned(
                    "the members gave this push up as abandoned before it could commit "
                    "(its deadline passed): nobody swapped; push again"
                )
            if isinstance(failed, BadVersionError | NodeExistsError):
                record.outcome = "preparing"
                raise BadVersionError()
            raise failed
        raise FleetError("could not reach ZooKeeper to commit: the push was not committed")

    def _wait_connected(self, wait_s: float | None = None) -> None:
        """Wait until kazoo has reconnected; :class:`_Gone` once it gave
        ZooKeeper up (or after ``wait_s``, by default a little longer)."""
        deadline = time.monotonic() + (self.give_up_s + 5 if wait_s is None else wait_s)
        while self.client.state != KazooState.CONNECTED:
            if self.client.client_state == KeeperState.CLOSED or time.monotonic() > deadline:
                raise _Gone(f"lost ZooKeeper at {self.address.hosts}: is it running?")
            time.sleep(0.05)  # kazoo reconnects in its own thread: poll with a deadline

    def _finish(
        self, base: str, record: PushRecord, meta: dict[str, Any], outcome: str, reason: str
    ) -> PushRecord:
        record.outcome, record.reason, record.finished = outcome, reason, time.time()
        # The lease goes with the outcome, in its transaction: it only told
        # members that a preparing push still has its pusher. (It is gone
        # already when our session was lost and a new one began.)
        lease = [f"{base}/{meta['lease']}"]

        def write() -> None:
            # The full record (every vote and ack) in a child nobody watches;
            # the header members watch stays small, and is left alone after a
            # commit (which already marked it): members that still watch it
            # need not wake for this.
            def ops(tx: Any) -> None:
                if outcome != "committed":
                    tx.set_data(base, _header(record, meta))
                    add_signal(tx, self._epoch, "end", {"id": record.id, "outcome": outcome})
                tx.create(f"{base}/record", _dumps(record.to_json()))
                for path in lease:
                    tx.delete(path)

            if outcome == "committed":  # the commit took it out of ``current``
                tx = self.client.transaction()
                ops(tx)
                results = tx.commit()
            else:
                results = update_current(self.client, self.paths, _without(record.id), ops)
            failed = first_error(results)
            if lease and isinstance(failed, NoNodeError):
                lease.clear()  # our lease went with a lost session: write without it
                write()
            elif failed is not None and not isinstance(failed, NodeExistsError):
                raise failed

        self._retry(write)
        return record

    def _await(
        self, path: str, wanted: set[str], deadline: float, stop_on_no: bool = False
    ) -> tuple[dict[str, Any], set[str]]:
        """Wait until every wanted member has a child under ``path`` or has
        left the membership; returns (children's data by name, the left)."""
        wake = threading.Event()
        membership = threading.Event()
        membership.set()

        def on_change(_event: object) -> None:
            wake.set()

        def on_members(_event: object) -> None:
            membership.set()
            wake.set()

        got: dict[str, Any] = {}
        seen: set[str] = set()
        live: set[str] = set()
        votes = path.endswith("/votes")
        while True:
            wake.clear()
            names = set(self._retry(self.client.get_children, path, watch=on_change))
            new = [n for n in names if n not in seen]
            seen.update(new)
            # An ok vote or an ack says everything in its name: only a
            # refusal (its reason, its problems) is read.
            for name in new:
                decoded = _from_name(name, votes)
                if decoded is not None:
                    got[decoded[0]] = decoded[1]
            results = {
                n: self.client.get_async(f"{path}/{n}") for n in new if _from_name(n, votes) is None
            }
            for name, result in results.items():
                data, _ = result.get(30)
                value = parse_node(dict, data, f"{path}/{name}", "vote or ack")
                got[name] = (
                    parse_value(Vote.from_json, value, f"{path}/{name}", "vote")
                    if "ok" in value
                    else value
                )
            if membership.is_set():  # re-read the membership only when it changed
                membership.clear()
                live = set(
                    self._retry(self.client.get_children, self.paths.members, watch=on_members)
                )
            gone = (wanted - live) - set(got)
            if wanted <= set(got) | gone:
                break
            if stop_on_no and any(
                isinstance(v, Vote) and not v.ok for n, v in got.items() if n in wanted
            ):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wake.wait(min(remaining, 1.0))
            # Many members answer at once: let a batch land before re-reading
            # the whole list (longer while many are still to answer, at most
            # 50 ms; the last few are read at once).
            time.sleep(min(0.05, 0.00005 * len(wanted - set(got) - gone)))
        return got, gone

    def _prune(self) -> None:
        """Delete the oldest pushes past :data:`HISTORY`, each in a few
        transactions (a push of a 1,000-member fleet has 2,000 vote and ack
        nodes: one delete request each would make every push O(members))."""
        names = sorted(self._retry(self.client.get_children, self.paths.pushes))
        for name in names[:-HISTORY]:
            with contextlib.suppress(NoNodeError):
                self._retry(self._delete_push, f"{self.paths.pushes}/{name}")

    def _delete_push(self, base: str) -> None:
        # Children first (a node with children cannot go), parents last.
        paths = []
        for child in self.client.get_children(base):
            below = self.client.get_children(f"{base}/{child}")
            paths += [f"{base}/{child}/{n}" for n in below] + [f"{base}/{child}"]
        paths.append(base)
        for start in range(0, len(paths), PRUNE_BATCH):
            tx = self.client.transaction()
            for path in paths[start : start + PRUNE_BATCH]:
                tx.delete(path)
            if any(isinstance(r, Exception) for r in tx.commit()):
                # A node went (a lease) or came (a late vote) meanwhile: the
                # slow way, one request per node.
                with contextlib.suppress(NoNodeError):
                    self.client.delete(base, recursive=True)
                return


def vote_node(base: str, vote: Vote) -> tuple[str, bytes]:
    """Where a member puts its vote on the push at ``base``, and the data.

    An ok vote is its name alone, ``member=version=new`` (1 or 0), so the
    pusher reads a thousand votes with one ``get_children``; a refusal is
    ``member`` with the vote (reason, problems) as data.
    """
    if vote.ok and vote.version:
        return f"{base}/votes/{vote.member}={vote.version}={int(vote.new)}", b""
    return f"{base}/votes/{vote.member}", _dumps(vote.to_json())


def vote_member(name: str) -> str:
    """The member a vote (or ack) node is from."""
    return name.partition("=")[0]


def _from_name(name: str, vote: bool) -> tuple[str, Any] | None:
    """An ok vote (``member=version=new``) or an ack (``member=version``) from
    its node name; ``None`` for a node whose data must be read."""
    parts = name.split("=")
    if vote and len(parts) == 3:
        return parts[0], Vote(parts[0], True, parts[1], parts[2] == "1")
    if not vote and len(parts) == 2:
        return parts[0], {"version": parts[1]}
    return None


def _header(record: PushRecord, meta: dict[str, Any]) -> bytes:
    """The push node's data: what members need, without the votes."""
    body = record.to_json()
    for key in ("votes", "acks", "down"):
        body.pop(key)
    return _dumps({**body, **meta})


def _matches(current: Desired | None, expect: str) -> bool:
    if expect in ("none", ""):
        return current is None
    return current is not None and len(expect) >= 7 and current.sha256.startswith(expect.lower())
