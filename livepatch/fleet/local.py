"""The local registry: the engines of one host, coordinated over their sockets.

Members are the live engines whose connection files name the fleet. The
pushing client drives the two phases itself, over each member's control
socket, in parallel: *prepare* (load + check the same source, one vote per
member), then a compare-and-set of the slot's desired version in the
fleet's :class:`~livepatch.fleet.store.LocalStore` (the commit point, with
its push record in the same atomic write), then every member swaps. Each
member also runs a :class:`LocalMember` agent that polls the store and
converges its engine to the desired versions, so a member that was down,
or killed mid-push, catches up when it comes back.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..client import Client, ConnectionLost
from ..errors import LivepatchError
from ..runtime import ConnectionInfo, list_engines, write_connection_file
from .handle import ClientHandle, converge, prepare, release, release_since
from .model import (
    Desired,
    FleetConflict,
    FleetError,
    MemberState,
    PushRecord,
    Rule,
    Vote,
    count,
    new_push_id,
    sha_of,
)
from .store import LocalStore

__all__ = [
    "LocalMember",
    "Phase",
    "abandoned",
    "local_members",
    "push_local",
    "rollback_local",
]

#: A member re-checks its engine against the desired versions this often.
REFRESH_S = 2.0

#: After a change, a member waits this long before it converges by itself:
#: the pusher swaps its members right after a commit, and a member that
#: reconciles at the same moment only competes with those swaps for the CPU.
GRACE_S = 0.5

#: A push still preparing this long past its deadline is abandoned even when
#: a process with its pusher's pid is alive (the pid reused, a pusher stuck).
ABANDON_SLACK_S = 10.0

#: How long after a push was abandoned its members still look for versions
#: it prepared (a load it started can finish after the pusher died).
RELEASE_WINDOW_S = 120.0

#: Called by :func:`push_local` between phases (tests inject faults there).
Phase = Callable[[str, PushRecord], None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def abandoned(record: PushRecord, now: float | None = None) -> str | None:
    """Why nobody will ever commit ``record`` (``None`` if it may still be).

    A push that is still ``preparing`` is abandoned once its pusher (a
    process of this host) is gone, or well past its deadline.
    """
    if record.outcome != "preparing":
        return None
    now = time.time() if now is None else now
    if record.pusher > 0 and not _alive(record.pusher):
        return f"its pusher (pid {record.pusher}) went away before committing"
    if record.deadline is not None and now > record.deadline + ABANDON_SLACK_S:
        return "it was not committed by its deadline"
    return None


def local_members(fleet: str) -> list[ConnectionInfo]:
    """The live engines of this host that are members of ``fleet``."""
    return [info for info in list_engines() if info.fleet == fleet]


class LocalMember:
    """The member agent inside an engine process (local registry)."""

    def __init__(self, fleet: str, info: ConnectionInfo, poll_s: float = 0.05) -> None:
        self.fleet = fleet
        self.info = info
        self.store = LocalStore(fleet)
        self.poll_s = poll_s
        self.state = MemberState(info.name, info.pid, "converging")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None

    def start(self) -> MemberState:
        """Join: converge to the desired versions, then keep converging.

        Returns the state after the first pass (``ready`` or ``diverged``).
        """
        self.store.write_member(self.state)
        self._client = Client(self.info, client_name="livepatch-fleet", timeout=120.0)
        # Membership: our connection file names the fleet from now on.
        self.info = self.info._replace(fleet=self.fleet)
        write_connection_file(self.info, self.info.path.parent if self.info.path else None)
        signature = self.store.signature()
        self._reconcile()
        self._thread = threading.Thread(
            target=self._loop, args=(signature,), name="livepatch-fleet", daemon=True
        )
        self._thread.start()
        return self.state

    def stop(self) -> None:
        """Stop converging (the engine is shutting down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._client is not None:
            self._client.close()

    def _loop(self, signature: tuple[int, int, int]) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.poll_s):
            now = self.store.signature()
            # A change wakes us at once; a full pass every few seconds anyway
            # repairs what no change announced (another client's swap).
            if now == signature and time.monotonic() - last < REFRESH_S:
                continue
            if now != signature and self._stop.wait(GRACE_S):
                return  # a pusher that just committed swaps us itself: stay out of its way
            signature, last = self.store.signature(), time.monotonic()
            # Re-read the whole state: the change that woke us may be stale.
            try:
                self._reconcile()
            except (LivepatchError, OSError):
                signature = (0, 0, 0)  # try again on the next poll

    def _reconcile(self) -> None:
        assert self._client is not None

        def read_desired() -> dict[str, tuple[str, str]]:
            desired = self.store.read().desired
            return {slot: (d.sha256, d.filename) for slot, d in desired.items()}

        handle = ClientHandle(self._client)
        self._release_abandoned(handle)
        result = converge(handle, read_desired, self.store.get_source, self.info.pid)
        previous, self.state = self.state, result.state
        # Our calls per second since the last report, so `status --fleet`
        # reads a rate instead of sampling every member twice.
        elapsed = self.state.time - previous.time
        if previous.time and elapsed > 0:
            self.state.rate = round(max(self.state.calls - previous.calls, 0) / elapsed, 1)
        self.store.write_member(self.state)

    def _release_abandoned(self, handle: ClientHandle) -> None:
        """A pusher that died between prepare and commit left versions loaded
        here: mark its push abandoned (so it can never commit) and unload
        what it prepared. Every member does this for itself; the first one
        to look marks the record. A load the dead pusher started may still
        finish after that, so a recently abandoned push is looked at again
        on every pass for a while."""
        state = self.store.read()
        now = time.time()
        desired = {slot: d.sha256 for slot, d in state.desired.items()}
        wanted = {
            (p.slot, p.sha256)
            for p in state.pushes
            if p.outcome == "preparing" and abandoned(p, now) is None
        }
        targets = []
        for record in state.pushes:
            why = abandoned(record, now)
            if why is not None:
                if not self.store.abandon(record.id, why):
                    continue  # it committed or ended just now
                record.finished = now
            elif record.outcome != "abandoned":
                continue
            if now - (record.finished or now) > RELEASE_WINDOW_S:
                continue
            if desired.get(record.slot) == record.sha256 or (record.slot, record.sha256) in wanted:
                continue  # the same source is wanted (or being pushed) again
            targets.append((record.slot, record.sha256, record.started))
        release_since(handle, targets)


# ---------------------------------------------------------------------------
# The pushing side


def _parallel(
    work: dict[str, Callable[[], Any]], deadline: float
) -> tuple[dict[str, Any], dict[str, BaseException], list[str]]:
    """Run each callable in its own thread; results, errors and the names
    still running at ``deadline``."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    lock = threading.Lock()

    def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - reported per member
            with lock:
                errors[name] = exc
            return
        with lock:
            results[name] = value

    threads = {
        name: threading.Thread(target=run, args=(name, fn), daemon=True)
        for name, fn in work.items()
    }
    for t in threads.values():
        t.start()
    for t in threads.values():
        t.join(max(0.0, deadline - time.monotonic()))
    late = [name for name, t in threads.items() if t.is_alive()]
    with lock:
        return dict(results), dict(errors), late


def push_local(
    fleet: str,
    slot: str,
    source: Rule,
    filename: str,
    *,
    expect: str | None = None,
    deadline_s: float = 60.0,
    rollback: bool = False,
    phase: Phase | None = None,
) -> PushRecord:
    """Push ``source`` (text, or a ready shared object's bytes) to every live
    member of ``fleet``, two-phase.

    Returns the push record: ``committed`` (every member that stayed up
    swapped, the others converge when they are back) or ``aborted`` (nobody
    swapped; each member's reason is in its vote). Raises
    :class:`FleetError` only when there is nothing to push to.
    """
    members = local_members(fleet)  # before the store: a mistyped name creates none
    if not members:
        raise FleetError(
            f"fleet {fleet!r} has no live members on this host: "
            f"start engines with `livepatch engine --name NAME --fleet {fleet}`"
        )
    store = LocalStore(fleet)
    sha = store.put_source(source, filename)
    state = store.read()
    generation = state.generation.get(slot, 0)
    current = state.desired.get(slot)
    record = PushRecord(
        id=new_push_id(),
        slot=slot,
        sha256=sha,
        filename=filename,
        started=time.time(),
        previous=current.sha256 if current else None,
        rollback=rollback,
        pusher=os.getpid(),
        deadline=time.time() + deadline_s,
    )
    # Members that reported before and have no live engine now: named in the
    # record (and by the push's output), never silently left out.
    live = {info.name for info in members}
    record.down = sorted(set(store.read_members()) - live)
    if expect is not None and not _matches(current, expect):
        return _abort(
            store,
            record,
            f"the fleet's desired {slot} is {current.sha256[:12] if current else 'none'}, "
            f"not {expect}: look at `livepatch status --fleet {fleet}`",
            {},
            {},
        )
    store.record(record)  # durable before any member is touched
    deadline = time.monotonic() + deadline_s
    clients: dict[str, Client] = {}
    running: dict[str, dict[str, Any] | None] = {}

    def prepare_on(info: ConnectionInfo) -> Vote:
        remaining = max(1.0, deadline - time.monotonic())
        client = Client(info, client_name="livepatch-fleet-push", timeout=remaining)
        clients[info.name] = client
        if current is None:
            running[info.name] = _active_of(client, slot)
        return prepare(ClientHandle(client), slot, source, filename)

    try:
        votes, errors, late = _parallel(
            {info.name: functools.partial(prepare_on, info) for info in members}, deadline
        )
        record.votes = dict(votes)
        for name, exc in errors.items():
            if isinstance(exc, ConnectionLost):
                record.down.append(name)
            else:
                record.votes[name] = Vote(name, False, reason=_reason(exc))
        for name in late:
            record.votes[name] = Vote.missing(name, f"no vote within {deadline_s:g} s")
        refused = {n: v for n, v in record.votes.items() if not v.ok and v.answered}
        if refused or late or not votes:
            why = (
                f"{len(refused)} of {len(members)} members refused"
                if refused
                else f"{count(len(late), 'member')} did not vote in time"
                if late
                else "every member went away during prepare"
            )
            return _abort(store, record, why, clients, votes)
        if current is None:
            record.previous = _common_previous(store, clients, running, slot)
        if phase is not None:
            phase("prepared", record)
        desired = Desired(slot, sha, filename, record.previous, record.id, time.time())
        try:
            store.commit(record, desired, generation)
        except FleetConflict as exc:
            return _abort(store, record, exc.message, clients, votes)
        if phase is not None:
            phase("committed", record)
        _commit_swaps(record, clients, votes)
        record.finished = time.time()
        store.record(record)
        return record
    except BaseException:
        # Interrupted (Ctrl-C in the shell, SIGTERM) before it committed:
        # nobody will commit it now, so say so at once. Each member's agent
        # then unloads what it prepared, as for a pusher that died; before,
        # the push stayed "preparing" until its deadline had long passed.
        store.abandon(record.id, "its pusher was interrupted before committing")
        raise
    finally:
        for client in list(clients.values()):
            client.close()


def rollback_local(fleet: str, slot: str, deadline_s: float = 60.0) -> PushRecord:
    """Push the version the fleet ran before its current desired one."""
    store = LocalStore.existing(fleet)
    current = store.read().desired.get(slot)
    if current is None or current.previous is None:
        raise FleetError(f"fleet {fleet} has no previous version of {slot} to roll back to")
    source, filename = store.get_source(current.previous)
    return push_local(
        fleet,
        slot,
        source,
        filename,
        expect=current.sha256,
        deadline_s=deadline_s,
        rollback=True,
    )


def _active_of(client: Client, slot: str) -> dict[str, Any] | None:
    for s in client.status()["slots"]:
        for v in s["versions"] if s["name"] == slot else ():
            if v["id"] == s["active"]:
                version: dict[str, Any] = v
                return version
    return None


def _common_previous(
    store: LocalStore,
    clients: dict[str, Client],
    running: dict[str, dict[str, Any] | None],
    slot: str,
) -> str | None:
    """The fleet's first push of a slot: when every member ran the same
    source before, that is the version a rollback goes back to (kept in the
    fleet's store)."""
    shas = {v["sha256"] if v else None for v in running.values()}
    if len(shas) != 1 or None in shas or not running:
        return None
    name, version = next(iter(running.items()))
    assert version is not None
    try:
        text = clients[name].source(version["id"])
    except LivepatchError:
        return None  # a ready object has no source to keep: no rollback target
    if sha_of(text) != version["sha256"]:
        return None
    return store.put_source(text, version.get("filename") or f"{slot}.py")


def _commit_swaps(record: PushRecord, clients: dict[str, Client], votes: dict[str, Vote]) -> None:
    """Every prepared member swaps. One thread sends every swap request
    back to back before reading any reply, so the swaps land close together
    (the commit skew) rather than one round trip after another."""
    sent: dict[str, int] = {}
    failed: dict[str, BaseException] = {}
    for name, vote in votes.items():
        if name not in clients or vote.version is None:
            continue
        try:
            sent[name] = clients[name].send("swap", {"version": vote.version})
        except LivepatchError as exc:
            failed[name] = exc
    for name, rid in sent.items():
        try:
            record.acks[name] = str(clients[name].receive(rid)["active"])
        except LivepatchError as exc:
            failed[name] = exc
    for name, error in failed.items():
        # Down, or refused: either way its agent converges to the desired version.
        record.down.append(name)
        record.votes[name].reason = f"swap: {_reason(error)} (it converges when it can)"


def _abort(
    store: LocalStore,
    record: PushRecord,
    reason: str,
    clients: dict[str, Client],
    votes: dict[str, Vote],
) -> PushRecord:
    def undo(name: str) -> None:
        release(ClientHandle(clients[name]), votes[name])

    _parallel({n: functools.partial(undo, n) for n in votes if n in clients}, time.monotonic() + 30)
    record.outcome = "aborted"
    record.reason = reason
    record.finished = time.time()
    store.record(record)
    return record


def _matches(current: Desired | None, expect: str) -> bool:
    if expect in ("none", ""):
        return current is None
    return current is not None and len(expect) >= 7 and current.sha256.startswith(expect.lower())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LivepatchError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
