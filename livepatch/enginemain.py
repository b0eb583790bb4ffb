"""``livepatch engine``: build an engine from its options and serve it.

The slots (``--slot NAME=module:Protocol``, default the bundled demo's two),
the state directory's restore, the start-up loads, the synthetic traffic of
``--traffic`` and the serve loop with its ready line. :mod:`livepatch.cli`
defines the options and imports this module only when an engine runs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli import SWITCH_INTERVAL_S, UsageError
from .errors import LivepatchError, StorageError

if TYPE_CHECKING:
    import argparse

    from .engine import Engine
    from .native import NativeInterface
    from .quarantine import Quarantine
    from .statedir import StateDir

__all__ = ["Traffic", "build_engine", "cmd_engine"]


def _parse_slot_spec(spec: str) -> tuple[str, type | NativeInterface | None]:
    from .model import is_slot_name
    from .native import NativeInterface

    name, sep, target = spec.partition("=")
    if not sep or not is_slot_name(name):
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


def build_engine(
    args: argparse.Namespace, state: StateDir | None = None, quarantine: Quarantine | None = None
) -> Engine:
    """The engine described by ``livepatch engine``'s options (loads included).

    With a state directory, every slot's last active version comes back
    first (re-checked; retired ones through ``quarantine``); the bundled
    demo's v1 is loaded only into a slot that has nothing active after that;
    ``--load`` files are applied last, journaled like any change (a file
    that cannot be journaled is not applied, and stderr says so).
    """
    from .engine import Engine
    from .errors import LoadFailed
    from .examples.spam import SpamRules, rule_path
    from .examples.spam_native import NATIVE_SLOT, SpamNativeRules
    from .filekind import is_elf
    from .files import read_regular_file, text_or_object
    from .native import MAX_OBJECT

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
        for restored in state.restore(engine, quarantine):
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
            # As `livepatch load` reads it (a BOM, a coding cookie).
            name = Path(path).name
            content = (
                ""
                if is_object
                else text_or_object(read_regular_file(path, MAX_OBJECT, name=name), name)
            )
        except OSError as exc:
            raise UsageError(f"--load {slot}={path}: {exc.strerror}") from None
        except LoadFailed as exc:
            raise UsageError(f"--load {slot}={path}: {exc.message}") from None
        source = content if isinstance(content, str) else ""
        try:
            _startup_load(engine, slot, path, None if is_object else source, state)
        except StorageError as exc:
            print(f"--load {slot}={path} not applied: {exc.message}", file=sys.stderr)
    return engine


def _startup_load(
    engine: Engine, slot: str, path: str, source: str | None, state: StateDir | None
) -> None:
    """Load, check and swap one startup file, each step journaled first."""

    def commit(op: str) -> Any:
        return state.committer(op) if state is not None else None

    # A ready shared object (native slots, ``source is None``) is mapped from its path.
    if source is None:
        version = engine.load_path(slot, path, commit=commit("load"))
    else:
        version = engine.load(slot, source, Path(path).name, commit=commit("load"))
    if engine.active(slot) == version:
        return  # restored already: a restart adds no record for it
    report = engine.check(version, commit=commit("check"))
    if not report.ok:
        first = report.errors[0]
        raise UsageError(f"--load {slot}={path}: check failed: {first.message}")
    engine.swap(version, commit=commit("swap"))


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
        _startup_load(engine, slot, path, None, state)
    except UsageError as exc:
        print(f"slot {slot} starts without a version: {exc}", file=sys.stderr)
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
                # traffic must go on whatever the rules do, sys.exit() and
                # KeyboardInterrupt included (this is not the main thread:
                # they can only come from a rule, and ended the thread).
                with contextlib.suppress(BaseException):
                    self.engine.call(slot, "classify", messages[i % len(messages)])
            for slot in native:
                with contextlib.suppress(BaseException):
                    self.engine.call(slot, "classify", messages[i % len(messages)].text)
            i += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: do not burst to catch up


def _validate_engine_options(args: argparse.Namespace) -> None:
    """Refuse bad options before anything is built (exit 2)."""
    from .runtime import validate_name

    try:
        validate_name(args.name)
    except ValueError as exc:
        raise UsageError(f"--name: {exc}") from None
    checks = (
        ("--traffic", args.traffic, "0 (no traffic) or more calls per second"),
        ("--load-timeout", args.load_timeout, "more than 0 seconds"),
        ("--load-memory", args.load_memory, "more than 0 MB"),
    )
    for flag, value, wanted in checks:
        if value is None:
            continue
        bad = not value >= 0 if flag == "--traffic" else not value > 0  # nan too
        if bad:
            raise UsageError(f"{flag} {value:g}: use {wanted}")


def cmd_engine(args: argparse.Namespace) -> int:
    """Run an engine in the foreground until interrupted."""
    from .callpool import DEFAULT_QUEUE, DEFAULT_TIMEOUT_S, DEFAULT_WORKERS, CallPool
    from .quarantine import Quarantine
    from .server import Server, parse_listen
    from .statedir import StateDir

    _validate_engine_options(args)
    try:
        listen = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from .runtime import claim_name

    # The name first, then the state dir's lock: a second engine, of this
    # name or on this state dir, leaves before it reads or writes anything.
    try:
        claim = claim_name(args.name)
    except ValueError as exc:
        raise UsageError(f"--name: {exc}") from None
    state = (
        StateDir(Path(args.state_dir), engine_name=args.name, recover=args.recover)
        if args.state_dir
        else None
    )
    quarantine = (
        None
        if args.no_quarantine
        else Quarantine(timeout_s=args.load_timeout, memory_mb=args.load_memory)
    )
    # Rule calls that run long hold the GIL for a switch interval at a time,
    # and the clients' threads and the event loop wait that long per hand-off:
    # a shorter interval keeps swap and status quick while calls run.
    sys.setswitchinterval(args.switch_interval or SWITCH_INTERVAL_S)
    engine = build_engine(args, state, quarantine)
    # Startup loads (and the restored active versions) ran in-process, the
    # engine not serving yet; every load from a client from now on is tried
    # in a throwaway process first.
    engine.quarantine = quarantine
    server = Server(
        engine,
        listen=listen,
        allow_remote=args.allow_remote,
        journal=state.journal if state else None,
        store=state.store if state else None,
        name_claim=claim,
        calls=CallPool(
            args.call_workers or DEFAULT_WORKERS,
            DEFAULT_QUEUE if args.call_queue is None else args.call_queue,
            args.call_timeout or DEFAULT_TIMEOUT_S,
        ),
    )
    info = server.start()
    from .fleet.cli import start_member

    member = start_member(args, info)  # converges before the ready line (None: no --fleet)
    traffic = Traffic(engine, args.traffic) if args.traffic else None
    if traffic:
        traffic.start()
    from .reclaim import freeze

    # Start-up's objects (modules, the versions loaded so far) live as long
    # as the process: later full collections need not stop it to walk them.
    freeze()
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
    # Started by a front end that asked to be outlived by nothing
    # (launcher.EngineProcess(tie_to_parent=True)): stop when it is gone.
    parent = int(os.environ.get("LIVEPATCH_PARENT_PID") or 0)
    while not stop.wait(0.5):
        if parent and os.getppid() != parent:
            break
    if traffic:
        traffic.stop()
    if member is not None:
        member.stop()
    server.stop()
    if state:
        state.close()
    return 0
