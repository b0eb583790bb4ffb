"""The fleet's verbs on the one command table (``livepatch push``, ``status
--fleet``...), and the pieces of the fleet view that need no process."""

from __future__ import annotations

from typing import Any

from livepatch.fleet.model import MemberState
from livepatch.fleet.view import MIN_WINDOW_S, member_rate


def _status(pid: int, *calls: int) -> dict[str, Any]:
    versions = [{"id": f"spam@{i}", "calls": n} for i, n in enumerate(calls, 1)]
    return {"pid": pid, "slots": [{"name": "spam", "versions": versions}]}


def test_status_rate_comes_from_one_sample_and_the_members_last_report() -> None:
    said = MemberState("a", 42, "ready", calls=100, time=1000.0, rate=7.5)
    # Calls since the member's report, over the time since it.
    assert member_rate(said, _status(42, 80, 40), 1002.0) == 10.0
    # A report too recent to measure over: the rate the member measured itself.
    assert member_rate(said, _status(42, 150), 1000.0 + MIN_WINDOW_S / 2) == 7.5
    # Calls dropped (a version unloaded since): never a negative rate.
    assert member_rate(said, _status(42, 10), 1004.0) == 0.0
    # Another process under that name (restarted), or no report yet: unknown.
    assert member_rate(said, _status(43, 500), 1002.0) is None
    assert member_rate(None, _status(42, 500), 1002.0) is None
