"""The ZooKeeper registry: membership, sources, desired versions and pushes.

Layout under the registry path (``zookeeper://HOST:PORT/PATH``)::

    PATH/fleets/<fleet>/members/<name>       ephemeral: the member's MemberState
    PATH/fleets/<fleet>/sources/<sha256>     {"filename", "source"}, content-addressed
    PATH/fleets/<fleet>/desired/<slot>       the slot's Desired; CAS on the znode version
    PATH/fleets/<fleet>/pushes/<id>          the PushRecord (+ deadline, members)
    PATH/fleets/<fleet>/pushes/<id>/votes/<name>   a member's Vote
    PATH/fleets/<fleet>/pushes/<id>/acks/<name>    {"version"}: it swapped

The pusher never talks to an engine: it writes the push node, waits for a
vote from every member that is still alive, then commits with one
ZooKeeper transaction (``desired/<slot>`` set with the version it read,
and the push node marked ``committed``: both or neither, so a commit never
exists without its record), or marks the push ``aborted``. Members
(:class:`ZkMember`, in each engine process) watch the pushes and the
desired versions; every watch only wakes a reconcile pass that re-reads the
nodes and makes the engine match, then acks.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError

from ..errors import LivepatchError
from .handle import EngineHandle, converge, prepare, release
from .model import Desired, FleetError, MemberState, PushRecord, Vote, new_push_id, sha_of

__all__ = ["ZkAddress", "ZkMember", "ZkRegistry", "parse_zk_url"]

#: Push nodes kept (the oldest are deleted by the next push).
HISTORY = 50
#: A member gives up on a push that is still preparing this long past its deadline.
STALE_PUSH_S = 30.0

_Phase = Callable[[str, PushRecord], None]


@dataclass(frozen=True, slots=True)
class ZkAddress:
    """A parsed ``zookeeper://HOST:PORT[,HOST:PORT]/PATH[?timeout=S]``."""

    hosts: str
    path: str
    timeout: float = 10.0


def parse_zk_url(url: str) -> ZkAddress:
    """Parse a ZooKeeper registry URL; :class:`FleetError` says what is wrong."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "zookeeper" or not parsed.netloc:
        raise FleetError(f"--registry {url!r}: use zookeeper://HOST:PORT/PATH")
    path = parsed.path.rstrip("/") or "/livepatch"
    query = urllib.parse.parse_qs(parsed.query)
    try:
        timeout = float(query.get("timeout", ["10"])[0])
    except ValueError:
        raise FleetError(f"--registry {url!r}: timeout must be a number of seconds") from None
    return ZkAddress(parsed.netloc, path, timeout)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _connect(address: ZkAddress, wait_s: float = 15.0, handler: Any = None) -> Any:
    client = KazooClient(hosts=address.hosts, timeout=address.timeout, handler=handler)
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


class _Paths:
    def __init__(self, root: str, fleet: str) -> None:
        self.base = f"{root}/fleets/{fleet}"
        self.members = f"{self.base}/members"
        self.sources = f"{self.base}/sources"
        self.desired = f"{self.base}/desired"
        self.pushes = f"{self.base}/pushes"

    def ensure(self, client: Any) -> None:
        for path in (self.members, self.sources, self.desired, self.pushes):
            client.ensure_path(path)


class ZkRegistry:
    """The pushing and reading side of a fleet in ZooKeeper."""

    def __init__(self, address: ZkAddress, fleet: str, client: Any = None) -> None:
        self.address = address
        self.fleet = fleet
        self.paths = _Paths(address.path, fleet)
        self._own = client is None
        self.client = client if client is not None else _connect(address)
        self._retry = self.client.retry
        self._retry(self.paths.ensure, self.client)

    def close(self) -> None:
        """Close the session (if this registry opened it)."""
        if self._own:
            with contextlib.suppress(Exception):
                self.client.stop()
                self.client.close()

    def __enter__(self) -> ZkRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------

    def put_source(self, source: str, filename: str) -> str:
        """Store a source content-addressed (idempotent); returns its sha256."""
        sha = sha_of(source)
        with contextlib.suppress(NodeExistsError):
            self._retry(
                self.client.create,
                f"{self.paths.sources}/{sha}",
                _dumps({"filename": filename, "source": source}),
            )
        return sha

    def get_source(self, sha: str) -> tuple[str, str]:
        """``(source, filename)``; ``LookupError`` if the registry has none."""
        try:
            data, _ = self._retry(self.client.get, f"{self.paths.sources}/{sha}")
        except NoNodeError:
            raise LookupError(f"the registry has no source {sha[:12]}") from None
        value = _loads(data)
        return str(value["source"]), str(value["filename"])

    def desired(self) -> dict[str, tuple[Desired, int]]:
        """slot -> (desired version, znode version for compare-and-set)."""
        found = {}
        for slot in self._retry(self.client.get_children, self.paths.desired):
            with contextlib.suppress(NoNodeError):
                data, stat = self._retry(self.client.get, f"{self.paths.desired}/{slot}")
                found[slot] = (Desired.from_json(_loads(data)), stat.version)
        return found

    def members(self) -> dict[str, MemberState]:
        """The live members (their ephemeral nodes), by name."""
        names = self._retry(self.client.get_children, self.paths.members)
        results = {n: self.client.get_async(f"{self.paths.members}/{n}") for n in names}
        found = {}
        for name, result in results.items():
            with contextlib.suppress(NoNodeError):
                data, _ = result.get(30)
                found[name] = MemberState.from_json(_loads(data))
        return found

    def history(self, limit: int = 10) -> list[PushRecord]:
        """The last pushes, oldest first."""
        names = sorted(self._retry(self.client.get_children, self.paths.pushes))[-limit:]
        records = []
        for name in names:
            with contextlib.suppress(NoNodeError):
                records.append(self._record(name))
        return records

    def _record(self, push_id: str) -> PushRecord:
        base = f"{self.paths.pushes}/{push_id}"
        with contextlib.suppress(NoNodeError):
            data, _ = self._retry(self.client.get, f"{base}/record")
            return PushRecord.from_json(_loads(data))
        data, _ = self._retry(self.client.get, base)
        record = PushRecord.from_json(_loads(data))
        if record.outcome == "preparing" or not record.votes:
            for name, vote in self._votes(push_id, set()).items():
                record.votes.setdefault(name, vote)
        return record

    def _votes(self, push_id: str, known: set[str]) -> dict[str, Vote]:
        base = f"{self.paths.pushes}/{push_id}/votes"
        names = [n for n in self._retry(self.client.get_children, base) if n not in known]
        results = {n: self.client.get_async(f"{base}/{n}") for n in names}
        votes = {}
        for name, result in results.items():
            data, _ = result.get(30)
            votes[name] = Vote.from_json(_loads(data))
        return votes

    def view(self, history: int = 10) -> dict[str, Any]:
        """The fleet side by side (see :mod:`livepatch.fleet.view`)."""
        members = []
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
        source: str,
        filename: str,
        *,
        expect: str | None = None,
        deadline_s: float = 60.0,
        rollback: bool = False,
        phase: _Phase | None = None,
    ) -> PushRecord:
        """Two-phase push through the registry; returns the push record."""
        self._prune()
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
        meta = {"deadline": time.time() + deadline_s}
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
        self._create_push(base, record, meta, names)
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
            record.votes[name] = Vote(name, False, reason=reason)
        if refused or missing or not votes:
            why = (
                f"{len(refused)} of {len(names)} members refused"
                if refused
                else f"{len(missing)} members did not vote in time"
                if missing
                else "every member left during prepare"
            )
            return self._finish(base, record, meta, "aborted", why)
        if current is None:
            record.previous = self._common_previous(slot)
        if phase is not None:
            phase("prepared", record)
        desired = Desired(slot, sha, filename, record.previous, record.id, time.time())
        try:
            self._commit(base, record, meta, desired, zversion)
        except BadVersionError:
            return self._finish(
                base,
                record,
                meta,
                "aborted",
                f"another push changed {slot}'s desired version first: push again",
            )
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
        def create() -> None:
            tx = self.client.transaction()
            tx.create(base, _header(record, meta))
            tx.create(f"{base}/votes")
            tx.create(f"{base}/acks")
            tx.create(f"{base}/roster", _dumps(names))
            results = tx.commit()
            failed = [r for r in results if isinstance(r, Exception)]
            if failed and not isinstance(failed[0], NodeExistsError):
                raise failed[0]

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
        for _attempt in range(10):
            try:
                tx = self.client.transaction()
                if zversion < 0:
                    tx.create(path, _dumps(desired.to_json()))
                else:
                    tx.set_data(path, _dumps(desired.to_json()), version=zversion)
                tx.set_data(base, body)
                results = tx.commit()
            except (ConnectionLoss, SessionExpiredError, KazooTimeoutError):
                self._wait_connected()
                data, _ = self._retry(self.client.get, base)
                if _loads(data).get("outcome") == "committed":
                    return
                continue
            failed = [r for r in results if isinstance(r, Exception)]
            if not failed:
                return
            if isinstance(failed[0], BadVersionError | NodeExistsError):
                record.outcome = "preparing"
                raise BadVersionError()
            raise failed[0]
        raise FleetError("could not reach ZooKeeper to commit: the push was not committed")

    def _wait_connected(self, wait_s: float = 60.0) -> None:
        deadline = time.monotonic() + wait_s
        while self.client.state != KazooState.CONNECTED:
            if time.monotonic() > deadline:
                raise FleetError(f"lost ZooKeeper at {self.address.hosts}: is it running?")
            time.sleep(0.05)  # kazoo reconnects in its own thread: poll with a deadline

    def _finish(
        self, base: str, record: PushRecord, meta: dict[str, Any], outcome: str, reason: str
    ) -> PushRecord:
        record.outcome, record.reason, record.finished = outcome, reason, time.time()

        def write() -> None:
            # The full record (every vote and ack) in a child nobody watches;
            # the header members watch stays small.
            tx = self.client.transaction()
            tx.set_data(base, _header(record, meta))
            tx.create(f"{base}/record", _dumps(record.to_json()))
            results = tx.commit()
            failed = [r for r in results if isinstance(r, Exception)]
            if failed and not isinstance(failed[0], NodeExistsError):
                raise failed[0]

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
        live: set[str] = set()
        while True:
            wake.clear()
            names = set(self._retry(self.client.get_children, path, watch=on_change))
            new = [n for n in names if n not in got]
            results = {n: self.client.get_async(f"{path}/{n}") for n in new}
            for name, result in results.items():
                data, _ = result.get(30)
                value = _loads(data)
                got[name] = Vote.from_json(value) if "ok" in value else value
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
            # the whole list (longer for larger fleets, at most 50 ms).
            time.sleep(min(0.05, 0.00005 * len(wanted)))
        return got, gone

    def _prune(self) -> None:
        names = sorted(self._retry(self.client.get_children, self.paths.pushes))
        for name in names[:-HISTORY]:
            with contextlib.suppress(NoNodeError):
                self._retry(self.client.delete, f"{self.paths.pushes}/{name}", recursive=True)


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


# ---------------------------------------------------------------------------
# The member side


class ZkMember:
    """A member agent: an ephemeral node, watches, and a reconcile loop.

    By default the loop is a thread of its own. Simulated members (the
    benchmark's, hundreds per process) pass an ``executor`` that runs their
    passes instead, and a kazoo ``handler`` they share: the same protocol,
    without three threads per member.
    """

    def __init__(
        self,
        address: ZkAddress,
        fleet: str,
        handle: EngineHandle,
        pid: int = 0,
        refresh_s: float = 2.0,
        executor: Any = None,
        handler: Any = None,
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
        self._sources: dict[str, tuple[str, str]] = {}
        self._desired: dict[str, Desired] = {}
        self._last_calls: tuple[int, float] | None = None
        self._thread: threading.Thread | None = None
        self._executor = executor
        self._handler = handler
        self._scheduled = False
        self.passes = 0

    def start(self, wait: bool = True) -> MemberState:
        """Join the fleet; with ``wait``, converge once before returning."""
        self.client = _connect(self.address, handler=self._handler)
        self.client.add_listener(self._on_state)
        self.client.retry(self.paths.ensure, self.client)
        if wait:
            self._pass()
        if self._executor is None:
            self._thread = threading.Thread(
                target=self._loop, name="livepatch-fleet-zk", daemon=True
            )
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
        if state == KazooState.LOST:
            # Session expired: our ephemeral node is gone; join again when back.
            self._rejoin = True
        self._mark("*")

    def _on_watch(self, event: Any) -> None:
        self._mark(str(getattr(event, "path", "*") or "*"))

    def _mark(self, path: str) -> None:
        with self._dirty_lock:
            self._dirty.add(path)
            if self._executor is not None:
                if self._scheduled or self._stop.is_set():
                    return
                self._scheduled = True
        if self._executor is not None:
            self._executor.submit(self._run_scheduled)
        else:
            self._wake.set()

    def _run_scheduled(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            self._scheduled = False
        try:
            self._pass(dirty)
        except (KazooException, KazooTimeoutError, LivepatchError, OSError):
            timer = threading.Timer(0.2, self._mark, args=("*",))  # retry, not at once
            timer.daemon = True
            timer.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(self.refresh_s):
                self._mark("*")  # a periodic full pass: never trust only events
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            try:
                self._pass(dirty)
            except (KazooException, KazooTimeoutError, LivepatchError, OSError):
                # Disconnected, or the engine is busy: retry everything soon.
                self._stop.wait(0.1)
                self._mark("*")

    def _pass(self, dirty: set[str] | None = None) -> None:
        """One reconcile pass: re-read what a watch said changed (everything
        for ``*``), make the engine match, ack, report."""
        self.passes += 1
        dirty = {"*"} if dirty is None else dirty
        full = "*" in dirty
        if self._rejoin:
            self._join()
            full = True
        pushes = self.paths.pushes
        fresh: set[str] = set()
        if full or pushes in dirty:
            fresh = self._prepare_new(
                self.client.get_children(pushes, watch=self._on_watch), check_votes=full
            )
        touched = {p[len(pushes) + 1 :] for p in dirty if p.startswith(pushes + "/")}
        # A push prepared in this very pass was just read: no need to look again.
        self._release_aborted(None if full or pushes in dirty else touched, skip=fresh)
        desired_dir = self.paths.desired
        slots = {p[len(desired_dir) + 1 :] for p in dirty if p.startswith(desired_dir + "/")}
        if not (full or desired_dir in dirty or slots):
            return

        def read_desired() -> dict[str, tuple[str, str]]:
            # Re-read only what changed (a new slot re-reads the list).
            if full or desired_dir in dirty or not self._desired:
                self._desired = self._read_desired()
            else:
                self._desired.update(self._read_desired(slots))
            return {slot: (d.sha256, d.filename) for slot, d in self._desired.items()}

        result = converge(self.handle, read_desired, self._source, self.pid)
        changed = result.state.active != self.state.active or result.state.state != self.state.state
        self.state = result.state
        pending = self._ack(self._desired)
        if changed or full:
            self._upload_active()
            pending.append(self._publish_async())
        for op in pending:  # acks and the report travel together
            with contextlib.suppress(NodeExistsError, NoNodeError):
                op.get(30)

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

    def _source(self, sha: str) -> tuple[str, str]:
        if sha not in self._sources:  # content-addressed: safe to keep
            try:
                data, _ = self.client.get(f"{self.paths.sources}/{sha}")
            except NoNodeError:
                raise LookupError(f"the registry has no source {sha[:12]}") from None
            value = _loads(data)
            self._sources[sha] = (str(value["source"]), str(value["filename"]))
        return self._sources[sha]

    def _prepare_new(self, pushes: list[str], check_votes: bool = True) -> set[str]:
        """Vote on every push we have not seen; returns the ones we prepared."""
        fresh = set()
        for push_id in sorted(set(pushes) - self._seen):
            base = f"{self.paths.pushes}/{push_id}"
            try:
                data, _ = self.client.get(base, watch=self._on_watch)
            except NoNodeError:
                self._seen.add(push_id)
                continue
            push = _loads(data)
            if push.get("outcome") != "preparing" or time.time() > float(push.get("deadline", 0)):
                self._seen.add(push_id)
                continue
            if check_votes and self.client.exists(f"{base}/votes/{self.name}"):
                self._seen.add(push_id)
                continue  # voted before a restart: the commit (or abort) will tell
            source, filename = self._source(str(push["sha256"]))
            vote = prepare(self.handle, str(push["slot"]), source, filename)
            vote.member = self.name
            with contextlib.suppress(NodeExistsError, NoNodeError):
                self.client.create(f"{base}/votes/{self.name}", _dumps(vote.to_json()))
            # Seen only once voted: a pass that failed half-way votes next time.
            self._seen.add(push_id)
            self._prepared[push_id] = vote
            fresh.add(push_id)
        return fresh

    def _release_aborted(self, only: set[str] | None, skip: set[str]) -> None:
        """Prepared versions of pushes that were aborted (or abandoned) go."""
        for push_id, vote in list(self._prepared.items()):
            if (only is not None and push_id not in only) or push_id in skip:
                continue
            base = f"{self.paths.pushes}/{push_id}"
            try:
                data, _ = self.client.get(base, watch=self._on_watch)
                push = _loads(data)
            except NoNodeError:
                push = {"outcome": "aborted"}
            outcome = push.get("outcome")
            stale = (
                outcome == "preparing"
                and time.time() > float(push.get("deadline", 0)) + STALE_PUSH_S
            )
            if outcome == "aborted" or stale:
                release(self.handle, vote)
            if outcome != "preparing" or stale:
                del self._prepared[push_id]

    def _read_desired(self, slots: set[str] | None = None) -> dict[str, Desired]:
        c = self.client
        if slots is None:
            slots = set(c.get_children(self.paths.desired, watch=self._on_watch))
        results = {
            slot: c.get_async(f"{self.paths.desired}/{slot}", watch=self._on_watch)
            for slot in slots
        }
        found = {}
        for slot, result in results.items():
            with contextlib.suppress(NoNodeError):
                data, _ = result.get(30)
                found[slot] = Desired.from_json(_loads(data))
        return found

    def _ack(self, desired: dict[str, Desired]) -> list[Any]:
        """Start an ack for every push whose version we now run."""
        pending = []
        for slot, d in desired.items():
            active = self.state.active.get(slot)
            if not d.push or d.push in self._acked or not active:
                continue
            if active.get("sha256") != d.sha256:
                continue
            pending.append(
                self.client.create_async(
                    f"{self.paths.pushes}/{d.push}/acks/{self.name}",
                    _dumps({"version": active["version"], "time": time.time()}),
                )
            )
            self._acked.add(d.push)
        return pending

    def _upload_active(self) -> None:
        """Keep what we run in the registry, so a fleet rollback to it works."""
        for active in self.state.active.values():
            sha = str(active["sha256"])
            if sha in self._sources:
                continue
            path = f"{self.paths.sources}/{sha}"
            if not self.client.exists(path):
                source = self.handle.source(str(active["version"]))
                if sha_of(source) != sha:
                    continue
                filename = f"{active['version'].partition('@')[0]}-{sha[:12]}.py"
                with contextlib.suppress(NodeExistsError):
                    self.client.create(path, _dumps({"filename": filename, "source": source}))
            self._sources[sha] = self._source(sha)

    def _publish_async(self) -> Any:
        now = time.monotonic()
        rate = 0.0
        if self._last_calls is not None:
            calls, then = self._last_calls
            rate = (self.state.calls - calls) / max(now - then, 1e-6)
        self._last_calls = (self.state.calls, now)
        self.state.rate = round(rate, 1)
        result = self.client.set_async(
            f"{self.paths.members}/{self.name}", _dumps(self.state.to_json())
        )

        def gone(async_result: Any) -> None:
            if isinstance(async_result.exception, NoNodeError):
                self._rejoin = True  # our node went (session expired): join again
                self._mark("*")

        result.rawlink(gone)
        return result
