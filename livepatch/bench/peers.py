"""``peers``: importlib.reload, IPython autoreload and jurigged next to livepatch."""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..engine import Engine
from .common import (
    PEER_HELPERS,
    ProgressFn,
    Settings,
    _Callers,
    _distribution,
    _no_progress,
    _request_through_pin,
    peer_module,
)

# Peers


class _ModuleFile:
    """The peer module as a file in a directory on ``sys.path``, rewritten per version.

    Each write moves the file's mtime one second further (starting well in
    the past), so mtime-based staleness checks (``.pyc`` validation,
    autoreload's) always see a new version, however fast the writes come.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.path = directory / f"{name}.py"
        self._mtime_ns = (int(time.time()) - 100_000) * 1_000_000_000

    def write(self, marker: int) -> None:
        self.path.write_text(peer_module(marker), encoding="utf-8")
        self._mtime_ns += 1_000_000_000
        os.utime(self.path, ns=(self._mtime_ns, self._mtime_ns))


@contextlib.contextmanager
def _module_on_path(tool: str) -> Iterator[_ModuleFile]:
    """A fresh module file in a temporary directory on ``sys.path``."""
    name = f"livepatch_bench_{tool}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="lpbench-peer-") as tmp:
        module_file = _ModuleFile(Path(tmp), name)
        module_file.write(1)
        sys.path.insert(0, tmp)
        importlib.invalidate_caches()
        try:
            yield module_file
        finally:
            sys.modules.pop(name, None)
            with contextlib.suppress(ValueError):
                sys.path.remove(tmp)


def _module_request(module: Any) -> Callable[[int], tuple[int, int]]:
    """A request that calls ``first`` and ``second`` through the module object."""

    def request(i: int) -> tuple[int, int]:
        a = module.first(i)[0]
        b = module.second(i)[0]
        return int(a), int(b)

    return request


def _drive(
    request: Callable[[int], tuple[int, int]],
    apply: Callable[[int], dict[str, float]],
    current: Callable[[], int],
    settings: Settings,
    progress: ProgressFn,
) -> dict[str, Any]:
    """Switch the module to versions 2, 3, ... with ``apply(marker)``.

    First ``peer_idle`` times with no callers (the idle reload time), then
    up to ``peer_reloads`` times (or for ``peer_budget_s``) while the callers
    run, one every ``peer_interval_s``, so that every tool runs its callers
    for about as long. ``apply`` returns its timed phases in seconds (at
    least ``reload``); ``current()`` tells which marker the code has after
    it: a reload that did not take is counted in ``not_applied``. A reload
    counts in ``reloads_with_mixed`` (``_failed``) when requests that saw two
    versions (that failed) were counted between it and the next one.
    """
    idle: list[float] = []
    phases: dict[str, list[float]] = {}
    not_applied = 0
    marker = 1
    total = settings.peer_idle + settings.peer_reloads
    for _ in range(settings.peer_idle):
        marker += 1
        idle.append(apply(marker)["reload"])
        not_applied += current() != marker
        progress((marker - 1) / total)
    exposed_mixed = exposed_failed = 0
    with _Callers(request, settings.callers) as callers:
        time.sleep(0.02)
        last_mixed, last_failed = callers.counts()
        next_at = time.perf_counter()
        deadline = next_at + settings.peer_budget_s
        for _ in range(settings.peer_reloads):
            marker += 1
            for phase, seconds in apply(marker).items():
                phases.setdefault(phase, []).append(seconds)
            not_applied += current() != marker
            progress((marker - 1) / total)
            now = time.perf_counter()
            if now <= deadline:
                next_at = max(next_at + settings.peer_interval_s, now)
                time.sleep(next_at - now)
            # What the callers saw since the last reload is this reload's doing.
            mixed, failed = callers.counts()
            exposed_mixed += mixed > last_mixed
            exposed_failed += failed > last_failed
            last_mixed, last_failed = mixed, failed
            if now > deadline:
                break
    seen = callers.result()
    return {
        "available": True,
        "reloads_idle": settings.peer_idle,
        "reloads": len(phases.get("reload", ())),
        "not_applied": not_applied,
        "reload_idle_ms": _distribution(idle, 1e3, 4),
        **{f"{phase}_ms": _distribution(values, 1e3, 4) for phase, values in phases.items()},
        "duration_s": round(callers.duration_s, 3),
        "requests": seen["requests"],
        "requests_per_s": seen["requests_per_s"],
        "failed": seen["failed"],
        "mixed": seen["mixed"],
        "reloads_with_mixed": exposed_mixed,
        "reloads_with_failed": exposed_failed,
        "errors": seen["errors"],
        "latency_us": seen["latency_us"],
    }


def _peer_livepatch(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """livepatch: load + check + swap each new version; requests run inside ``pin``."""
    engine = Engine("bench-peers")
    engine.add_slot("rules", None)
    first = engine.load("rules", peer_module(1), "rules.py")
    engine.check(first)
    engine.swap(first)
    retired: list[str] = []

    def apply(marker: int) -> dict[str, float]:
        t0 = time.perf_counter()
        version = engine.load("rules", peer_module(marker), "rules.py")
        t1 = time.perf_counter()
        ok = engine.check(version).ok
        t2 = time.perf_counter()
        result = engine.swap(version) if ok else None
        t3 = time.perf_counter()
        if result is not None and result.previous is not None:
            engine.purge(result.previous)
            retired.append(result.previous)
        return {"reload": t3 - t0, "load": t1 - t0, "check": t2 - t1, "swap": t3 - t2}

    def current() -> int:
        return int(engine.call("rules", "first", 0)[0])

    try:
        row = _drive(_request_through_pin(engine, "rules"), apply, current, settings, progress)
        freed = sum(engine.unload(v, wait_s=1.0).freed for v in retired)
    finally:
        engine.close()
    return {
        "tool": "livepatch",
        "version": __version__,
        "how": "load + check + swap of each new version; requests run in engine.pin()",
        **row,
        "retired_freed": freed,
        "retired": len(retired),
    }


def _peer_importlib(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """``importlib.reload`` of the module after its file is rewritten."""
    with _module_on_path("importlib") as module_file:
        module = importlib.import_module(module_file.name)

        def apply(marker: int) -> dict[str, float]:
            module_file.write(marker)
            t0 = time.perf_counter()
            importlib.reload(module)
            return {"reload": time.perf_counter() - t0}

        row = _drive(
            _module_request(module), apply, lambda: int(module.first(0)[0]), settings, progress
        )
    return {
        "tool": "importlib.reload",
        "version": platform.python_version(),
        "how": "file rewritten, then importlib.reload(module); requests call module.first/second",
        **row,
    }


@contextlib.contextmanager
def _private_ipython_dir() -> Iterator[None]:
    """A throwaway ``IPYTHONDIR``: the shell must not touch the user's profile."""
    previous = os.environ.get("IPYTHONDIR")
    with tempfile.TemporaryDirectory(prefix="lpbench-ipython-") as tmp:
        os.environ["IPYTHONDIR"] = tmp
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("IPYTHONDIR", None)
            else:
                os.environ["IPYTHONDIR"] = previous


def _peer_autoreload(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """IPython's ``%autoreload 2`` in a real InteractiveShell, run by ``pre_run_cell``."""
    try:
        ipython = importlib.import_module("IPython")
        shell_mod = importlib.import_module("IPython.core.interactiveshell")
        config_mod = importlib.import_module("traitlets.config")
    except ImportError as exc:
        return {"tool": "IPython autoreload", "available": False, "reason": str(exc)}
    with _private_ipython_dir():
        config = config_mod.Config()
        config.HistoryManager.enabled = False
        shell = shell_mod.InteractiveShell.instance(config=config)
        info = shell_mod.ExecutionInfo(
            raw_cell="pass", store_history=False, silent=False, shell_futures=True, cell_id=None
        )
        shell.extension_manager.load_extension("autoreload")
        shell.run_line_magic("autoreload", "2")
        # Count the reloads IPython's deduperreload patched in place (the
        # others were a full superreload), without changing what it does.
        magics = shell.magics_manager.registry.get("AutoreloadMagics")
        deduper = getattr(getattr(magics, "_reloader", None), "deduper_reloader", None)
        in_place = [0]
        if deduper is not None and hasattr(deduper, "maybe_reload_module"):
            original = deduper.maybe_reload_module

            def counted(module: Any) -> bool:
                patched = bool(original(module))
                in_place[0] += patched
                return patched

            deduper.maybe_reload_module = counted
        try:
            with _module_on_path("autoreload") as module_file:
                module = importlib.import_module(module_file.name)
                # The first cell after an import records the module's mtime.
                shell.events.trigger("pre_run_cell", info)

                def apply(marker: int) -> dict[str, float]:
                    module_file.write(marker)
                    t0 = time.perf_counter()
                    # What IPython does before every cell: the extension's
                    # reloader checks every module's mtime and reloads the
                    # changed ones.
                    shell.events.trigger("pre_run_cell", info)
                    return {"reload": time.perf_counter() - t0}

                row = _drive(
                    _module_request(module),
                    apply,
                    lambda: int(module.first(0)[0]),
                    settings,
                    progress,
                )
        finally:
            shell.run_line_magic("autoreload", "0")
            shell_mod.InteractiveShell.clear_instance()
    return {
        "tool": "IPython autoreload",
        "version": ipython.__version__,
        "how": (
            "%autoreload 2 in an InteractiveShell; file rewritten, then the pre_run_cell "
            "event (as before every cell); requests call module.first/second"
        ),
        **row,
        "patched_in_place": in_place[0] if deduper is not None else None,
    }


def _peer_jurigged(settings: Settings, progress: ProgressFn) -> dict[str, Any]:
    """jurigged's in-place patching (``CodeFile.refresh``), or "not installed"."""
    try:
        jurigged = importlib.import_module("jurigged")
        register = importlib.import_module("jurigged.register")
    except ImportError:
        return {"tool": "jurigged", "available": False, "reason": "not installed"}
    with _module_on_path("jurigged") as module_file:
        module = importlib.import_module(module_file.name)
        registry = register.Registry()
        # What jurigged.watch() does when it first sees a module: cache its source.
        codefile, _ = registry.find(module)

        def apply(marker: int) -> dict[str, float]:
            module_file.write(marker)
            t0 = time.perf_counter()
            # What jurigged's watcher does when the file changes: diff the new
            # source against the cached one and patch the changed code in place.
            codefile.refresh()
            return {"reload": time.perf_counter() - t0}

        row = _drive(
            _module_request(module), apply, lambda: int(module.first(0)[0]), settings, progress
        )
    return {
        "tool": "jurigged",
        "version": getattr(jurigged, "__version__", None),
        "how": (
            "file rewritten, then the module's jurigged CodeFile.refresh() (what its watcher "
            "calls on a change); requests call module.first/second"
        ),
        **row,
    }


#: The peers in the order they run and appear.
_PEERS: tuple[tuple[str, Callable[[Settings, ProgressFn], dict[str, Any]]], ...] = (
    ("livepatch", _peer_livepatch),
    ("importlib_reload", _peer_importlib),
    ("ipython_autoreload", _peer_autoreload),
    ("jurigged", _peer_jurigged),
)


def measure_peers(settings: Settings, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """livepatch and its peers on the same module under the same callers.

    The module is :func:`peer_module`; each tool switches it to
    ``peer_reloads`` new versions in turn while ``callers`` threads run
    requests that call ``first`` and then ``second``.
    """
    tools: dict[str, Any] = {}
    share = 1 / len(_PEERS)
    for index, (key, measure) in enumerate(_PEERS):

        def sub(fraction: float, index: int = index) -> None:
            progress((index + fraction) * share)

        gc.collect()
        tools[key] = measure(settings, sub)
    return {
        "callers": settings.callers,
        "reloads_max": settings.peer_reloads,
        "interval_s": settings.peer_interval_s,
        "budget_s": settings.peer_budget_s,
        "module": {
            "helpers": PEER_HELPERS,
            "lines": peer_module(1).count("\n") + 1,
            "shape": "first() at the top, second() at the bottom, helpers between",
        },
        "tools": tools,
    }
