"""The ``livepatch`` command: run an engine, drive one, or run the demo.

Every verb that talks to an engine takes ``--existing NAME`` (default: the
only engine running) and ``--json``. Exit status: 0 on success, 1 when the
engine refused or the check found problems (one line on stderr says why),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .engine import Engine
from .errors import LivepatchError
from .native import NativeInterface, is_elf
from .quarantine import Quarantine
from .state import StateDir

__all__ = ["build_parser", "main"]

PROG = "livepatch"


class UsageError(Exception):
    """A command line that cannot be run; the message says how to fix it."""


# ---------------------------------------------------------------------------
# Output helpers


def _emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# ---------------------------------------------------------------------------
# `livepatch engine`


def _parse_slot_spec(spec: str) -> tuple[str, type | NativeInterface | None]:
    name, sep, target = spec.partition("=")
    if not sep or not name.isidentifier():
        raise UsageError(
            f"--slot {spec!r}: use NAME=module:Protocol, e.g. spam=pkg.rules:SpamRules"
        )
    if not target:
        return name, None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--slot {spec!r}: cannot import {module_name!r}: {exc}") from None
    try:
        interface = getattr(module, attr) if attr else None
    except AttributeError:
        raise UsageError(f"--slot {spec!r}: {module_name} has no {attr!r}") from None
    if interface is not None and not isinstance(interface, type | NativeInterface):
        raise UsageError(f"--slot {spec!r}: {target} is neither a class nor a NativeInterface")
    return name, interface


def build_engine(args: argparse.Namespace, state: StateDir | None = None) -> Engine:
    """The engine described by ``livepatch engine``'s options (loads included).

    With a state directory, every slot's last active version comes back
    first (re-checked); the bundled demo's v1 is loaded only into a slot that
    has nothing active after that; ``--load`` files are applied last.
    """
    from .examples.spam import SpamRules, rule_path
    from .examples.spam_native import NATIVE_SLOT, SpamNativeRules

    engine = Engine(name=args.name)
    if state is not None:
        # Compiled native objects are kept with the state: a restart reuses them.
        engine.build_dir = state.path / "native"
    loads: list[tuple[str, str]] = []
    if args.slot:
        for spec in args.slot:
            slot, interface = _parse_slot_spec(spec)
            engine.add_slot(slot, interface)
    else:
        engine.add_slot("spam", SpamRules)
        engine.add_slot(NATIVE_SLOT, SpamNativeRules)
    if state is not None:
        for restored in state.restore(engine):
            verb = "restored" if restored.ok else "could not restore"
            print(f"{verb} {restored.version}: {restored.message}", file=sys.stderr)
    if not args.slot and not args.load and engine.active("spam") is None:
        loads.append(("spam", rule_path("spam_v1.py")))
    native_loaded = any(spec.partition("=")[0] == NATIVE_SLOT for spec in args.load or [])
    if not args.slot and not native_loaded and engine.active(NATIVE_SLOT) is None:
        _start_native_demo(engine, NATIVE_SLOT, rule_path("spam_native_v1.c"), state)
    for spec in args.load or []:
        slot, sep, path = spec.partition("=")
        if not sep:
            raise UsageError(f"--load {spec!r}: use SLOT=FILE")
        loads.append((slot, path))
    for slot, path in loads:
        try:
            with open(path, "rb") as f:
                is_object = is_elf(f.read(4))
            source = "" if is_object else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--load {slot}={path}: {exc.strerror}") from None
        # A ready shared object (native slots) is mapped from its path.
        if is_object:
            version = engine.load_path(slot, path)
        else:
            version = engine.load(slot, source, Path(path).name)
        report = engine.check(version)
        if not report.ok:
            first = report.errors[0]
            raise UsageError(f"--load {slot}={path}: check failed: {first.message}")
        if engine.swap(version).changed and state is not None:
            state.record_startup(engine, version)
    return engine


def _start_native_demo(engine: Engine, slot: str, path: str, state: StateDir | None) -> None:
    """Compile, check and swap in the bundled native v1, when a C compiler is
    there. Without one (or if it fails) the slot stays empty and stderr says
    why: the Python demo must start either way."""
    from .examples.spam_native import compiler_available

    if not compiler_available():
        print(
            f"no C compiler found (install gcc or set CC): slot {slot} starts without a version",
            file=sys.stderr,
        )
        return
    try:
        version = engine.load_path(slot, path)
        report = engine.check(version)
        if not report.ok:
            raise LivepatchError(f"check failed: {report.errors[0].message}")
        if engine.swap(version).changed and state is not None:
            state.record_startup(engine, version)
    except LivepatchError as exc:
        print(f"slot {slot} starts without a version: {exc.message}", file=sys.stderr)


class Traffic:
    """Synthetic messages through every slot whose interface is the demo's
    (the text alone for the native demo slot)."""

    def __init__(self, engine: Engine, rate: float) -> None:
        self.engine = engine
        self.rate = rate
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="livepatch-traffic", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self.thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the thread."""
        self.stop_event.set()
        self.thread.join(5)

    def _run(self) -> None:
        import time

        from .examples.spam import SpamRules, sample_messages
        from .examples.spam_native import SpamNativeRules

        slots = [s for s in self.engine.slots if self.engine.interface(s) is SpamRules]
        # The native demo slot takes the message text (const char *).
        native = [s for s in self.engine.slots if self.engine.interface(s) is SpamNativeRules]
        messages = sample_messages()
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            for slot in slots:
                # A failing rule is counted in its version's errors; the
                # traffic must go on whatever the rules do.
                with contextlib.suppress(Exception):
                    self.engine.call(slot, "classify", messages[i % len(messages)])
            for slot in native:
                with contextlib.suppress(Exception):
                    self.engine.call(slot, "classify", messages[i % len(messages)].text)
            i += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: do not burst to catch up


def cmd_engine(args: argparse.Namespace) -> int:
    """Run an engine in the foreground until interrupted."""
    from .server import Server, parse_listen

    try:
        listen = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    state = StateDir(Path(args.state_dir)) if args.state_dir else None
    engine = build_engine(args, state)
    if not args.no_quarantine:
        # Startup loads ran in-process (the engine is not serving yet); every
        # load from a client from now on is tried in a throwaway process first.
        engine.quarantine = Quarantine(timeout_s=args.load_timeout, memory_mb=args.load_memory)
    server = Server(
        engine,
        listen=listen,
        allow_remote=args.allow_remote,
        journal=state.journal if state else None,
        store=state.store if state else None,
    )
    info = server.start()
    from .fleet.cli import start_member

    member = start_member(args, info)  # converges before the ready line (None: no --fleet)
    traffic = Traffic(engine, args.traffic) if args.traffic else None
    if traffic:
        traffic.start()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # One line on stdout when ready, for scripts and tests to wait on.
    print(
        json.dumps(
            {
                "ready": True,
                "name": info.name,
                "pid": info.pid,
                "transport": info.transport,
                "address": info.address,
            }
        ),
        flush=True,
    )
    print(
        f"engine {info.name!r} serving on {info.transport}:{info.address} "
        f"(pid {info.pid}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    if traffic:
        traffic.stop()
    if member is not None:
        member.stop()
    server.stop()
    if state:
        state.close()
    return 0


# ---------------------------------------------------------------------------
# One-shot verbs


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client.connect(args.existing, client_name="livepatch-cli")


def run_verb(args: argparse.Namespace) -> int:
    """Run a one-shot verb against an engine."""
    from .client import file_load_params, json_arguments, split_call_target
    from .render import color_allowed, render_diff, render_report, render_status, render_table

    color = color_allowed(sys.stdout)
    verb = args.verb
    with _client(args) as client:
        if verb == "status":
            status = client.status()
            _emit_json(status) if args.json else print(render_status(status))
            return 0
        if verb == "load":
            try:
                params = {"slot": args.slot, **file_load_params(Path(args.file))}
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            result = client.request("load", params)
            if args.json:
                _emit_json(result)
            else:
                note = "" if result["new"] else " (same source as before)"
                print(
                    f"loaded {result['version']}{note}; next: livepatch check {result['version']}"
                )
            return 0
        if verb == "check":
            report = client.check(args.version)
            if args.json:
                _emit_json(report.to_json())
            else:
                print(render_report(report, color=color))
            if not report.ok:
                count = len(report.errors)
                print(
                    f"{PROG}: {args.version} failed its check "
                    f"({count} problem{'s' * (count != 1)})",
                    file=sys.stderr,
                )
                return 1
            return 0
        if verb in ("swap", "rollback"):
            result = (
                client.swap(args.version, expect=args.expect)
                if verb == "swap"
                else client.rollback(args.slot)
            )
            if args.json:
                _emit_json(result)
            elif result["changed"]:
                print(f"{result['slot']}: {result['previous'] or 'nothing'} -> {result['active']}")
            else:
                print(f"{result['slot']}: {result['active']} is already active")
            return 0
        if verb == "purge":
            result = client.purge(args.version)
            _emit_json(result) if args.json else print(f"purged {args.version}")
            return 0
        if verb == "unload":
            result = client.unload(args.version, wait_s=args.wait)
            if args.json:
                _emit_json(result)
            elif result["freed"]:
                print(f"unloaded {args.version}: freed")
            else:
                holders = ", ".join(f"{k} x{n}" for k, n in result["holders"].items()) or "?"
                print(
                    f"unloaded {args.version}: NOT freed yet "
                    f"({result['in_flight']} in flight; held by {holders})"
                )
            return 0
        if verb == "symbols":
            if args.other:
                diff = client.diff(args.version, args.other)
                _emit_json(diff.to_json()) if args.json else print(render_diff(diff, color=color))
            else:
                table = client.symbols(args.version)
                _emit_json(table.to_json()) if args.json else print(
                    render_table(table, color=color)
                )
            return 0
        if verb == "diff":
            diff = client.diff(args.a, args.b)
            if args.json:
                _emit_json(diff.to_json())
            else:
                print(render_diff(diff, color=color))
            return 0
        if verb == "call":
            try:
                target, symbol = split_call_target(args.target)
                values = json_arguments(args.args)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            result = client.call(target, symbol, values)
            if args.json:
                _emit_json(result)
            else:
                print(f"{result['version']}: {json.dumps(result['result'], ensure_ascii=False)}")
            return 0
        if verb == "journal":
            entries = client.journal(args.limit)
            if args.json:
                _emit_json(entries)
            else:
                import time as _time

                for e in entries:
                    stamp = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(e["time"]))
                    who = e["peer"].get("client") or "-"
                    pid = e["peer"].get("pid")
                    status = "ok " if e["ok"] else "ERR"
                    print(
                        f"{stamp}  {status} {e['op']:<8} {e['version'] or '-':<10} "
                        f"{who}{f'[{pid}]' if pid else ''}: {e['result']}"
                    )
            return 0
    raise UsageError(f"unknown verb {verb!r}")  # pragma: no cover - argparse prevents it


# ---------------------------------------------------------------------------
# `livepatch demo`


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an engine with the demo rules and live traffic, and tour it."""
    from .demo import run_demo

    return run_demo(args)


# ---------------------------------------------------------------------------
# `livepatch bench`


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the hot path, swaps under load, load time, memory and the peers."""
    from .bench import run_bench

    return run_bench(args)


# ---------------------------------------------------------------------------
# `livepatch shell`


def cmd_shell(args: argparse.Namespace) -> int:
    """Attach the interactive shell (or run commands from -c or stdin)."""
    from .shell import run_shell

    return run_shell(args)


# ---------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``livepatch`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hot-swap versioned rule modules inside a running Python process.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    p = sub.add_parser("engine", help="run an engine (the bundled spam demo by default)")
    p.add_argument("--name", default="rules", help="engine name (default: rules)")
    p.add_argument(
        "--state-dir",
        help="keep sources and the journal here; a restart restores the active versions",
    )
    p.add_argument(
        "--load-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time limit for a new module body in quarantine (default: 10)",
    )
    p.add_argument(
        "--load-memory",
        type=int,
        default=1024,
        metavar="MB",
        help="address-space limit for a new module body in quarantine (default: 1024)",
    )
    p.add_argument(
        "--no-quarantine", action="store_true", help="run new module bodies only in-process"
    )
    p.add_argument(
        "--slot", action="append", metavar="NAME=module:Protocol", help="add a slot (repeatable)"
    )
    p.add_argument(
        "--load", action="append", metavar="SLOT=FILE", help="load, check and swap a file"
    )
    p.add_argument("--listen", metavar="unix|tcp://HOST:PORT", help="transport (default: unix)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback TCP address")
    p.add_argument("--traffic", type=float, metavar="RATE", help="synthetic demo calls per second")
    p.set_defaults(func=cmd_engine)

    p = sub.add_parser("demo", help="an engine with the demo rules, live traffic and a tour")
    p.add_argument("--rate", type=float, default=50.0, help="demo calls per second")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="measure livepatch against a direct call and its peers (table + JSON)",
        description="Measure the hot path, swaps under load, load + check time, memory over "
        "load/unload cycles, and importlib.reload, IPython autoreload and jurigged next to "
        "livepatch, side by side in one run. Exit 1 only when a correctness goal is missed.",
    )
    p.add_argument("--quick", action="store_true", help="small counts (about 15 s), as CI runs it")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument(
        "--section",
        action="append",
        choices=("hot_path", "swap_under_load", "load_check", "memory", "peers"),
        help="measure only this section (repeatable; default: all)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "shell",
        help="an interactive shell attached to an engine (or a script: -c, stdin)",
        description="Attach to a running engine. With -c, or with commands piped on "
        "stdin, run them in order and stop at the first failure (exit 1; 2 for a "
        "command that cannot be run as written).",
    )
    p.add_argument("--existing", metavar="NAME", help="engine name (default: the only one)")
    p.add_argument(
        "-c",
        dest="commands",
        metavar="COMMANDS",
        help="run these commands (separated by ';' or newlines) and exit",
    )
    p.set_defaults(func=cmd_shell)

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        vp = sub.add_parser(name, help=help_text)
        vp.add_argument("--existing", metavar="NAME", help="engine name (default: the only one)")
        vp.add_argument("--json", action="store_true", help="machine-readable output")
        vp.set_defaults(func=run_verb)
        return vp

    verb("status", "slots, versions, states and call counts")
    p = verb("load", "load a file as a new version")
    p.add_argument("file")
    p.add_argument("--slot", required=True)
    verb("check", "resolve-check a version").add_argument("version")
    p = verb("swap", "make a version active")
    p.add_argument("version")
    p.add_argument("--expect", metavar="VERSION", help="only if VERSION is active now")
    verb("rollback", "swap back to the last retired version").add_argument("slot")
    verb("purge", "forget a version's symbols").add_argument("version")
    p = verb("unload", "unload a version and report whether it was freed")
    p.add_argument("version")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait for calls in flight")
    p = verb("symbols", "a version's symbol table, or two side by side")
    p.add_argument("version")
    p.add_argument("other", nargs="?")
    p = verb("diff", "what changed between two versions")
    p.add_argument("a")
    p.add_argument("b")
    p = verb("call", "call a rule: SLOT.SYMBOL or SLOT@N.SYMBOL with JSON arguments")
    p.add_argument("target")
    p.add_argument("args", nargs="*")
    p = verb("journal", "the audit log")
    p.add_argument("--limit", type=int)
    from .fleet.cli import add_fleet_arguments

    add_fleet_arguments(sub)  # push; --fleet/--registry on engine, status, rollback
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``livepatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except LivepatchError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("LIVEPATCH_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug in livepatch; rerun with LIVEPATCH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70
