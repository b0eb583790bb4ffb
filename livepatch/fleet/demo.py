"""``livepatch demo --fleet N``: a tour of a fleet push on N local engines.

Starts N engines with live traffic as members of a throwaway fleet (the
local registry), then, printing each step's command and output: the fleet
side by side; a push of ``spam_v2.py`` (every member swaps); a push that one
member refuses (its environment makes the rule's body fail there), so the
whole push aborts and nobody swaps; and a fleet rollback. The engines and
the fleet's store are removed at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..examples.spam import rule_path, rule_source
from ..launcher import EngineProcess
from .local import push_local, rollback_local
from .store import fleet_root
from .view import local_view, render_push, render_view

__all__ = ["REFUSE_ENV", "run_fleet_demo"]

#: The member started with this variable set refuses the tour's risky rule.
REFUSE_ENV = "LIVEPATCH_DEMO_REFUSE"

_RISKY_HEADER = '''"""Spam rules, version 3: v2 plus a dependency one host does not have."""

import os

if os.environ.get("LIVEPATCH_DEMO_REFUSE"):
    raise ImportError("the geo database is not installed on this host")

'''


def _risky_source() -> str:
    """spam_v2 with a module body that fails on the refusing member."""
    body = rule_source("spam_v2.py").split('"""', 2)[2]
    return _RISKY_HEADER + body.lstrip("\n")


@contextlib.contextmanager
def _members(fleet: str, count: int, rate: float) -> Iterator[list[dict[str, Any]]]:
    # The launcher: output to each engine's log (never a pipe nobody drains),
    # SIGTERM then SIGKILL on the way out.
    engines = [
        EngineProcess(
            f"{fleet}-{i}",
            [
                "--fleet",
                fleet,
                "--slot",
                "spam=livepatch.examples.spam:SpamRules",
                "--load",
                f"spam={rule_path('spam_v1.py')}",
                "--traffic",
                str(rate),
            ],
            env={REFUSE_ENV: "1"} if i == count else None,
            tie_to_parent=True,  # a demo killed with -9 leaves no member behind
            ephemeral=True,  # demo-PID-i: no log left behind
        )
        for i in range(1, count + 1)
    ]
    try:
        for engine in engines:
            engine.spawn()
        yield [engine.wait_ready() for engine in engines]
    finally:
        for engine in engines:
            engine.stop(15)


def _step(title: str, command: str) -> None:
    print(f"\n## {title}\n$ {command}")


def run_fleet_demo(count: int, rate: float = 50.0) -> int:
    """Run the tour on ``count`` engines (at least 2); returns the exit status."""
    if count < 2:
        print("livepatch: error: --fleet needs at least 2 engines", file=sys.stderr)
        return 2
    fleet = f"demo-{os.getpid()}"
    try:
        with _members(fleet, count, rate) as ready:
            names = ", ".join(r["name"] for r in ready)
            print(f"started {count} engines in fleet {fleet!r} ({names}), {rate:g} calls/s each")
            print(f"(the last one, {ready[-1]['name']}, runs with {REFUSE_ENV}=1)")
            time.sleep(1.0)  # let some traffic flow so calls/s means something
            _step("every member side by side", f"livepatch status --fleet {fleet}")
            print(render_view(local_view(fleet)))

            _step(
                "a push: prepare on every member, then commit",
                f"livepatch push spam_v2.py --slot spam --fleet {fleet}",
            )
            record = push_local(fleet, "spam", rule_source("spam_v2.py"), "spam_v2.py")
            print(render_push(record))

            _step(
                "a push one member refuses: the whole push aborts, nobody swaps",
                f"livepatch push spam_v3_geo.py --slot spam --fleet {fleet}",
            )
            record = push_local(fleet, "spam", _risky_source(), "spam_v3_geo.py")
            print(render_push(record))
            print(f"(exit status {0 if record.ok else 1})")

            _step("the fleet after the aborted push", f"livepatch status --fleet {fleet}")
            print(render_view(local_view(fleet)))

            _step(
                "a fleet rollback: a push of the previous version",
                f"livepatch rollback spam --fleet {fleet}",
            )
            record = rollback_local(fleet, "spam")
            print(render_push(record))
            _step("every member is back on v1", f"livepatch status --fleet {fleet}")
            print(render_view(local_view(fleet)))
    finally:
        shutil.rmtree(fleet_root() / fleet, ignore_errors=True)
    print(f"\nfleet {fleet!r} stopped. Start members with `livepatch engine --name N --fleet F`.")
    return 0
