"""``livepatch demo``: an engine with the bundled rules, live traffic, a shell.

The engine runs in a child process (as a real service would) with synthetic
traffic flowing through the ``spam`` slot. On a terminal the demo attaches the
interactive shell with a short hint of what to try; otherwise (stdin piped or
closed, as in CI) it runs the scripted tour, which drives the engine over the
control socket exactly as a deploy script would, printing each command before
its output. Every engine the demo started is stopped when it exits, whatever
happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .client import Client
from .examples.spam import rule_path
from .launcher import EngineProcess
from .render import color_allowed
from .stopping import stop_by_signal

__all__ = ["demo_hint", "run_demo", "start_engine", "startup_notes", "tour"]


@contextlib.contextmanager
def start_engine(name: str, rate: float, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """Run a demo ``livepatch engine`` until the block exits; yields its ready line.

    A thin wrapper over :class:`~livepatch.launcher.EngineProcess` (output in
    its log, its own session, tied to this process), kept for callers that
    only need the ready line (``livepatch bench``).
    """
    with _demo_engine(name, rate) as engine:
        yield engine.ready


def _demo_engine(name: str, rate: float) -> EngineProcess:
    args = ["--traffic", f"{rate:g}"] if rate else []
    return EngineProcess(name, args, tie_to_parent=True, ephemeral=True)


def startup_notes(engine: EngineProcess) -> list[str]:
    """What the engine said on stderr while starting (e.g. no C compiler), so
    the demo shows it instead of hiding it in the log."""
    notes = []
    for line in engine.log_text().splitlines():
        if line.startswith('{"ready"'):
            break
        notes.append(line)
    return notes


def _step(title: str) -> None:
    print(f"\n\033[1m## {title}\033[0m" if color_allowed(sys.stdout) else f"\n## {title}")


def tour(client: Client) -> int:
    """The guided tour: load, check, compare, swap, a broken push, roll back,
    purge and free, state handed over at swap. Each step is a real
    ``livepatch`` command run by the same command layer as the CLI, so what
    it prints is what the command prints.
    Returns 0, or 1 if a step that should work did not."""
    from .commands.link import EngineLink
    from .commands.runner import CommandRunner

    runner = CommandRunner(EngineLink(client), color=color_allowed(sys.stdout), prefix="livepatch ")
    v2 = rule_path("spam_v2.py")
    msg = json.dumps({"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!!", "links": []})
    steps: list[tuple[str, list[tuple[str, bool]]]] = [
        ("1. The engine is serving spam@1 under live traffic", [("status", True)]),
        (
            "2. Load version 2 next to it and resolve-check it (nothing runs it yet)",
            [(f"load {v2}", True), ("check spam@2", True)],
        ),
        (
            "3. Compare the symbol tables side by side (= same, ~ changed, + added)",
            [("symbols spam@1 spam@2", True)],
        ),
        (
            "4. Swap atomically: calls in flight finish on v1, new ones run on v2",
            [("swap spam@2 --expect spam@1", True), (f"call spam.classify '{msg}'", True)],
        ),
        (
            "5. A broken push is caught by the check, and the active version keeps serving",
            [
                (f"load {rule_path('spam_unresolved.py')}", True),
                ("check spam@3", False),
                (f"load {rule_path('spam_attr_typo.py')}", True),
                ("check spam@4", False),
                (f"load {rule_path('spam_own_message.py')}", True),
                ("check spam@5", False),
                (f"load {rule_path('spam_syntax_error.py')}", False),
                ("symbols spam@2", True),
            ],
        ),
        (
            "6. Roll back, then purge and unload v2: its code leaves memory",
            [
                ("rollback spam", True),
                ("purge spam@2", True),
                ("unload spam@2 --wait 2", True),
                ("status", True),
            ],
        ),
        (
            "7. Hand state over at swap: spam@7's __livepatch_handoff__ takes spam@6's counts",
            [
                (f"load {rule_path('spam_v3.py')}", True),
                ("check spam@6", True),
                ("swap spam@6", True),
                (f"call spam.classify '{msg}'", True),
                (f"call spam.classify '{msg}'", True),
                ("call spam.stats", True),
                (f"load {rule_path('spam_v4.py')}", True),
                ("check spam@7", True),
                ("symbols spam@6 spam@7", True),
                ("swap spam@7 --expect spam@6", True),
                ("call spam.stats", True),
            ],
        ),
        ("8. Every change is in the audit journal", [("journal --limit 8", True)]),
    ]
    code = 0
    for title, commands in steps:
        _step(title)
        for command, should_work in commands:
            print(f"$ livepatch {command}", flush=True)
            result = runner.run_line(command)[0]
            if result.text:
                print(result.text)
            if result.error:
                print(f"livepatch: error: {result.error}")
            if result.ok != should_work:
                code = 1
    return code


def demo_hint(rules_dir: Path) -> str:
    """What to try first in the demo shell."""
    return f"""\
livepatch demo: engine with the bundled spam rules and live traffic (spam@1 serving).
Relative paths are read from the working directory, else the bundled rules: {rules_dir}
Try, in order (Tab completes commands, files and version ids):
  status                                 spam@1 serves the traffic (see the toolbar)
  load spam_v2.py                        a second version next to the first
  check spam@2                           resolve-check it; nothing runs it yet
  symbols spam@1 spam@2                  both symbol tables side by side (= ~ + -)
  swap spam@2                            atomic: the toolbar's calls move to spam@2
  load spam_unresolved.py; check spam@3  a broken push, caught with its line
  rollback spam, watch, show spam@2, log, help
quit (or Ctrl-D) leaves the demo and stops its engine."""


def _wait_for_traffic(client: Client, deadline_s: float = 2.0) -> None:
    """Let some traffic reach v1 so the first status shows calls moving."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        versions = client.status()["slots"][0]["versions"]
        if versions and versions[0]["calls"] > 0:
            return
        time.sleep(0.05)


def _hangup(signum: int, frame: object) -> None:
    # A closed terminal: unwind, so the engine is stopped and its files go.
    stop_by_signal(signum)


def run_demo(args: argparse.Namespace) -> int:
    """Start a demo engine and attach the shell to it (on a terminal), or run
    the scripted tour (stdin not a terminal); the engine stops either way,
    also when the terminal is closed (SIGHUP)."""
    if not args.rate >= 0:
        print(
            f"livepatch: error: --rate {args.rate:g}: use 0 or more calls per second",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "fleet", None):
        from .fleet.demo import run_fleet_demo

        return run_fleet_demo(args.fleet, args.rate)
    name = f"demo-{os.getpid()}"
    interactive = sys.stdin.isatty()
    previous = signal.signal(signal.SIGHUP, _hangup)
    code = 0
    try:
        with _demo_engine(name, args.rate) as engine:
            print(
                f"started engine {name!r} (pid {engine.pid}) with {args.rate:g} calls/s; "
                f"its output: {engine.log_path}"
            )
            for note in startup_notes(engine):
                print(f"engine: {note}")
            client = Client.connect(name, client_name="livepatch-demo")
            with client:
                _wait_for_traffic(client)
                if interactive:
                    from .shell import Shell

                    rules_dir = Path(rule_path("spam_v1.py")).parent
                    Shell(client, base_dir=rules_dir, greeting=demo_hint(rules_dir)).run()
                else:
                    code = tour(client)
    finally:
        signal.signal(signal.SIGHUP, previous)
    print(f"\nengine {name!r} stopped. Run `livepatch engine --traffic 20` to keep one running.")
    return code
