"""The fleet side by side: every member's active versions, state and traffic.

One data model (:func:`local_view` / the ZooKeeper registry's ``view``, a
JSON-able dict) and one text renderer (:func:`render_view`), so the CLI,
and later the shell and the magics, show the same thing.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from ..client import Client
from ..errors import LivepatchError
from .local import _parallel, local_members
from .model import MemberState, PushRecord, short
from .store import LocalStore

__all__ = [
    "annotate",
    "local_view",
    "member_rate",
    "render_push",
    "render_push_line",
    "render_view",
]


def _calls(status: dict[str, Any]) -> int:
    return sum(int(v.get("calls", 0)) for s in status["slots"] for v in s["versions"])


#: A rate is measured over at least this long: a member's report younger
#: than this gives way to the rate the member measured itself.
MIN_WINDOW_S = 0.5


def member_rate(said: MemberState | None, status: dict[str, Any], now: float) -> float | None:
    """A member's calls per second from one status sample and its own last
    report (written every couple of seconds by its agent): the calls since
    that report, or the rate the report carries when it is too recent to
    measure over. ``None`` when the member has not reported since it started."""
    if said is None or said.pid != status["pid"] or not said.time:
        return None
    elapsed = now - said.time
    if elapsed < MIN_WINDOW_S:
        return said.rate
    return max(_calls(status) - said.calls, 0) / elapsed


def local_view(fleet: str, history: int = 10) -> dict[str, Any]:
    """The local fleet now: desired versions, members (live and down), pushes.

    One status request per member, in parallel; calls per second come from
    :func:`member_rate` (a sleep between two samples made every view take
    half a second).
    """
    store = LocalStore.existing(fleet)
    state = store.read()
    infos = {info.name: info for info in local_members(fleet)}
    said = store.read_members()

    def sample(name: str) -> tuple[dict[str, Any], float | None]:
        with Client(infos[name], client_name="livepatch-fleet-status", timeout=10) as client:
            status = client.status()
        return status, member_rate(said.get(name), status, time.time())

    samples, errors, _late = _parallel(
        {n: functools.partial(sample, n) for n in infos}, time.monotonic() + 15
    )
    members = []
    for name in sorted(set(infos) | set(said)):
        member = said.get(name)
        row: dict[str, Any] = {"name": name, "pid": None, "state": "down", "active": {}}
        if member is not None:
            row.update(
                pid=member.pid, state=member.state, diverged=member.diverged, active=member.active
            )
        if name in samples:
            status, rate = samples[name]
            row["pid"] = status["pid"]
            if member is None or member.pid != status["pid"]:
                row["state"] = "converging"  # started, its agent has not reported yet
            row["active"] = {
                s["name"]: {
                    "version": s["active"],
                    "sha256": next(
                        (v["sha256"] for v in s["versions"] if v["id"] == s["active"]), None
                    ),
                }
                for s in status["slots"]
                if s["active"]
            }
            if rate is not None:
                row["calls_per_s"] = round(rate, 1)
        else:
            if member is not None:
                # Its own last word, and what it acked since: the pusher swaps
                # a member before its agent next writes its file.
                row["active"] = {**member.active, **_acked_since(state.pushes, name, member.time)}
            if name in infos:
                err = errors.get(name)
                row["state"] = "unreachable"
                row["error"] = err.message if isinstance(err, LivepatchError) else str(err)
            else:
                # No live engine of that name: its last report is history,
                # however "ready" it read (kill -9, a stop, a crash).
                row["state"] = "down"
        members.append(row)
    return {
        "fleet": fleet,
        "registry": "local",
        "desired": {slot: d.to_json() for slot, d in sorted(state.desired.items())},
        "members": members,
        "pushes": [p.to_json() for p in state.pushes[-history:]],
    }


def _acked_since(pushes: list[PushRecord], name: str, since: float) -> dict[str, Any]:
    """slot -> the version ``name`` acked in the last committed push of the
    slot that ended after ``since`` (its last report)."""
    acked: dict[str, Any] = {}
    for push in pushes:  # oldest first: a later push replaces an earlier one
        if push.outcome == "committed" and name in push.acks and (push.finished or 0) > since:
            acked[push.slot] = {"version": push.acks[name], "sha256": push.sha256}
    return acked


def annotate(view: dict[str, Any]) -> dict[str, Any]:
    """Mark each member ``converged`` (it runs every desired version) or not;
    ``None`` for a member that is down. Returns ``view``."""
    desired = view["desired"]
    for m in view["members"]:
        if m["state"] in ("down", "unreachable"):
            m["converged"] = None
            continue
        active = m.get("active") or {}
        m["converged"] = all(
            (active.get(slot) or {}).get("sha256") == d["sha256"] for slot, d in desired.items()
        )
    return view


def render_view(view: dict[str, Any]) -> str:
    """The fleet as a text table, then the push history."""
    desired = view["desired"]
    slots = sorted(set(desired) | {s for m in view["members"] for s in m.get("active", {})})
    lines = [f"fleet {view['fleet']} ({view['registry']}): {len(view['members'])} members"]
    if desired:
        lines.append(
            "desired: "
            + ", ".join(
                f"{slot}={short(d['sha256'])} ({d['filename']})" for slot, d in desired.items()
            )
        )
    else:
        lines.append("desired: nothing pushed yet")
    header = ["member", "state", "converged", "calls/s", *slots]
    rows = [header]
    converged = {True: "yes", False: "no", None: "-"}
    for m in view["members"]:
        cells = [
            m["name"],
            m["state"],
            converged[m.get("converged")],
            f"{m['calls_per_s']:g}" if "calls_per_s" in m else "-",
        ]
        for slot in slots:
            active = m.get("active", {}).get(slot)
            if not active:
                cells.append("-")
                continue
            mark = ""
            if slot in desired and active.get("sha256") != desired[slot]["sha256"]:
                mark = " !"  # not on the desired version
            cells.append(f"{active['version']} {short(active.get('sha256'))}{mark}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for m in view["members"]:
        for slot, why in (m.get("diverged") or {}).items():
            lines.append(f"{m['name']} diverged on {slot}: {why}")
        if m.get("error"):
            lines.append(f"{m['name']}: {m['error']}")
    if view["pushes"]:
        lines.append("pushes:")
        for p in view["pushes"]:
            lines.append("  " + render_push_line(PushRecord.from_json(p)))
    return "\n".join(lines)


def render_push_line(record: PushRecord) -> str:
    """One line of push history."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.started))
    took = f" in {record.finished - record.started:.2f}s" if record.finished else ""
    kind = "rollback" if record.rollback else "push"
    why = f": {record.reason}" if record.reason else ""
    return (
        f"{stamp} {kind} {record.slot}={short(record.sha256)} ({record.filename}) "
        f"{record.outcome}{took}, {len(record.acks)} swapped{why}"
    )


def render_push(record: PushRecord) -> str:
    """What a push did, member by member."""
    lines = []
    names = sorted(set(record.votes) | set(record.down))
    for name in names:
        vote = record.votes.get(name)
        if name in record.acks:
            lines.append(f"  {name}: swapped to {record.acks[name]}")
        elif vote is not None and not vote.ok:
            lines.append(f"  {name}: {vote.says()}")
        elif name in record.down:
            extra = f" ({vote.reason})" if vote is not None and vote.reason else ""
            lines.append(f"  {name}: down, converges when it is back{extra}")
        elif vote is not None and record.outcome == "aborted":
            lines.append(f"  {name}: voted ok, released {vote.version or ''}".rstrip())
    head = (
        f"{'rollback' if record.rollback else 'push'} {record.slot}={short(record.sha256)} "
        f"({record.filename}): {record.outcome}"
    )
    if record.outcome == "committed":
        head += f" on {len(record.acks)} member{'s' * (len(record.acks) != 1)}"
    if record.reason:
        head += f" ({record.reason})"
    return "\n".join([head, *lines])
