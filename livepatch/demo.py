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
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .client import Client
from .errors import LivepatchError
from .examples.spam import rule_path, rule_source
from .render import color_allowed

__all__ = ["demo_hint", "run_demo", "start_engine", "tour"]


@contextlib.contextmanager
def start_engine(name: str, rate: float, timeout: float = 30.0) -> Iterator[dict[str, Any]]:
    """Run ``livepatch engine`` in a child process until the block exits.

    Yields the engine's ready line (name, pid, transport, address).
    """
    cmd = [sys.executable, "-m", "livepatch", "engine", "--name", name]
    if rate:
        cmd += ["--traffic", str(rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"the engine did not start: {err.strip().splitlines()[-1:]}")
        yield json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _step(title: str) -> None:
    print(f"\n\033[1m## {title}\033[0m" if color_allowed(sys.stdout) else f"\n## {title}")


def _cmd(text: str) -> None:
    print(f"$ livepatch {text}")


def tour(client: Client) -> None:
    """The guided tour: load, check, compare, swap, a broken push, roll back, free."""
    from .render import render_diff, render_report, render_status, render_table

    color = color_allowed(sys.stdout)
    _step("1. The engine is serving spam@1 under live traffic")
    _cmd("status")
    print(render_status(client.status()))

    _step("2. Load version 2 next to it and resolve-check it (nothing runs it yet)")
    _cmd(f"load {rule_path('spam_v2.py')} --slot spam")
    v2 = client.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
    print(f"loaded {v2}")
    _cmd(f"check {v2}")
    print(render_report(client.check(v2), color=color))

    _step("3. Compare the symbol tables side by side (= same, ~ changed, + added)")
    _cmd(f"symbols spam@1 {v2}")
    print(render_diff(client.diff("spam@1", v2), color=color))

    _step("4. Swap atomically: calls in flight finish on v1, new ones run on v2")
    _cmd(f"swap {v2} --expect spam@1")
    result = client.swap(v2, expect="spam@1")
    print(f"spam: {result['previous']} -> {result['active']}")
    msg = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!!", "links": []}
    _cmd(f"call spam.classify '{json.dumps(msg)}'")
    answer = client.call("spam", "classify", [msg])
    print(f"{answer['version']}: {json.dumps(answer['result'])}")

    _step("5. A broken push is caught by the check, and the active version keeps serving")
    for name in ("spam_unresolved.py", "spam_attr_typo.py", "spam_own_message.py"):
        _cmd(f"load {name} --slot spam && livepatch check ...")
        bad = client.load("spam", rule_source(name), name)
        print(render_report(client.check(bad), color=color))
    _cmd("load spam_syntax_error.py --slot spam")
    try:
        client.load("spam", rule_source("spam_syntax_error.py"), "spam_syntax_error.py")
    except LivepatchError as exc:
        print(f"livepatch: error: {exc.message}")
    _cmd(f"symbols {v2}")
    print(render_table(client.symbols(v2), color=color))

    _step("6. Roll back, then purge and unload v2: its code leaves memory")
    _cmd("rollback spam")
    back = client.rollback("spam")
    print(f"spam: {back['previous']} -> {back['active']}")
    _cmd(f"unload {v2}")
    freed = client.unload(v2, wait_s=2.0)
    print(f"unloaded {v2}: {'freed' if freed['freed'] else 'NOT freed'}")
    _cmd("status")
    print(render_status(client.status()))

    _step("7. Every change is in the audit journal")
    _cmd("journal --limit 6")
    for e in client.journal(6):
        print(
            f"  {'ok ' if e['ok'] else 'ERR'} {e['op']:<8} {e['version'] or '-':<8} {e['result']}"
        )


def demo_hint(rules_dir: Path) -> str:
    """What to try first in the demo shell."""
    return f"""\
livepatch demo: engine with the bundled spam rules and live traffic (spam@1 serving).
Relative paths are read from the bundled rules folder: {rules_dir}
Try, in order (Tab completes commands, files and version ids):
  status                                 spam@1 serves the traffic (see the toolbar)
  load spam_v2.py                        a second version next to the first
  check spam@2                           resolve-check it; nothing runs it yet
  symbols spam@1 spam@2                  both symbol tables side by side (= ~ + -)
  swap spam@2                            atomic: the toolbar's calls move to spam@2
  load spam_unresolved.py; check spam@3  a broken push, caught with its line
  rollback spam, watch, show spam@2, help; quit stops the demo engine."""


def _wait_for_traffic(client: Client, deadline_s: float = 2.0) -> None:
    """Let some traffic reach v1 so the first status shows calls moving."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        versions = client.status()["slots"][0]["versions"]
        if versions and versions[0]["calls"] > 0:
            return
        time.sleep(0.05)


def run_demo(args: argparse.Namespace) -> int:
    """Start a demo engine and attach the shell to it (on a terminal), or run
    the scripted tour (stdin not a terminal); the engine stops either way."""
    if getattr(args, "fleet", None):
        from .fleet.demo import run_fleet_demo

        return run_fleet_demo(args.fleet, args.rate)
    name = f"demo-{os.getpid()}"
    interactive = sys.stdin.isatty()
    with start_engine(name, args.rate) as ready:
        print(f"started engine {ready['name']!r} (pid {ready['pid']}) with {args.rate:g} calls/s")
        client = Client.connect(name, client_name="livepatch-demo")
        with client:
            _wait_for_traffic(client)
            if interactive:
                from .shell import Shell

                rules_dir = Path(rule_path("spam_v1.py")).parent
                Shell(client, base_dir=rules_dir, greeting=demo_hint(rules_dir)).run()
            else:
                tour(client)
    print(f"\nengine {name!r} stopped. Run `livepatch engine --traffic 20` to keep one running.")
    return 0
