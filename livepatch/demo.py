"""``livepatch demo``: an engine with the bundled rules, live traffic, a tour.

The engine runs in a child process (as a real service would) with synthetic
traffic flowing through the ``spam`` slot; the tour drives it over the
control socket exactly as a deploy script or the shell would, printing each
command before its output. Every engine the demo started is stopped when it
exits, whatever happens.
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
from typing import Any

from .client import Client
from .errors import LivepatchError
from .examples.spam import rule_path, rule_source

__all__ = ["run_demo", "start_engine"]


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
    print(f"\n\033[1m## {title}\033[0m" if _tty() else f"\n## {title}")


def _tty() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _cmd(text: str) -> None:
    print(f"$ livepatch {text}")


def tour(client: Client) -> None:
    """The guided tour: load, check, compare, swap, a broken push, roll back, free."""
    from .cli import render_status
    from .render import render_diff, render_report, render_table

    color = _tty()
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
        print(f"  {'ok ' if e['ok'] else 'ERR'} {e['op']:<8} {e['version'] or '-':<8} {e['result']}")


def run_demo(args: argparse.Namespace) -> int:
    """Start a demo engine, run the tour against it, and stop the engine."""
    name = f"demo-{os.getpid()}"
    with start_engine(name, args.rate) as ready:
        print(f"started engine {ready['name']!r} (pid {ready['pid']}) with {args.rate:g} calls/s")
        client = Client.connect(name, client_name="livepatch-demo")
        with client:
            # Let some traffic reach v1 so the status shows calls moving.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                versions = client.status()["slots"][0]["versions"]
                if versions and versions[0]["calls"] > 0:
                    break
                time.sleep(0.05)
            tour(client)
    print("\nengine stopped. Run `livepatch engine --traffic 20` to keep one running.")
    return 0
