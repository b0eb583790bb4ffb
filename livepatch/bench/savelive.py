"""``savelive``: from a file save to the new code serving, next to jurigged and autoreload.

Each tool watches the same rule module, the way a person's edit loop uses it:

livepatch
    ``livepatch load FILE --watch --swap --json``, a real CLI process
    (:mod:`livepatch.filewatch`), against a real engine process; a probe
    client calls the rules over the control socket back to back. Twice:
    with the engine's default quarantine (each load's body runs first in a
    throwaway child process) and with ``--no-quarantine``, so the cost of
    that child shows.
jurigged
    ``jurigged.watch()`` on the module's directory in this process (its
    watchdog observer and debounce, as ``python -m jurigged`` runs them); a
    probe thread calls the module's functions back to back.
IPython autoreload
    ``%autoreload 2`` in a real ipykernel; a client executes cells back to
    back, each calling the module's functions. autoreload reloads only
    before a cell runs (its ``pre_run_cell`` hook), so for it the new code
    serves from the first cell that starts after the save: that is what is
    timed, as a person in a notebook sees it.

Time runs from the save (the write of the file returned) to the first probe
that ran the new code: for the kernel, the time taken inside the cell, after
autoreload's check. Then each tool gets two broken saves, and what happens
is observed, not assumed: a save with a syntax error, and one whose
``second()`` uses a name defined nowhere (its ``first()`` is a good new
version). The probes keep running; the row says whether the old code kept
serving, whether calls failed (and with what), how much of the save was
applied (``none``, ``partly``, ``all``), and what the tool said. After each
broken save a good save checks that the tool recovers.

jurigged is an optional dependency (the ``bench`` extra); without it its row
says "not installed".
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .common import ProgressFn, Settings, _distribution, _no_progress, _private_runtime_dir

__all__ = ["BROKEN_SAVES", "TOOLS", "measure_savelive", "saved_module"]

#: The tools in the order they run and appear.
TOOLS = ("livepatch", "livepatch_no_quarantine", "jurigged", "ipython_autoreload")

#: The broken saves each tool is given, in order.
BROKEN_SAVES = ("syntax_error", "unresolved_name")

#: How long a save may take to serve before it counts as missed.
SERVE_DEADLINE_S = 30.0
#: After a broken save: how long to wait for the tool to react, then how
#: long the probes go on watching what serves.
REACT_DEADLINE_S = 5.0
SETTLE_S = 0.5
#: Pause between the end of one save and the next (debouncers settle).
GAP_S = 0.15
#: Pause between two probes (so the probe does not starve the tool on a
#: loaded machine; the resolution of the figures).
PROBE_PAUSE_S = 0.002

#: One function's outcome in a probe: its marker, or the exception's type name.
Outcome = int | str


def saved_module(marker: int, broken: str | None = None) -> str:
    """The rule module as saved: ``first()`` and ``second()`` return ``marker``.

    ``broken="syntax_error"`` leaves ``second`` unparsable;
    ``broken="unresolved_name"`` makes ``second`` add ``undefined_offset``, a
    name defined nowhere (``first`` is a good new version either way).
    ``classify`` is the spam slot's interface, so livepatch can load it.
    """
    if broken == "syntax_error":
        second = f"    return ({marker}"
    elif broken == "unresolved_name":
        second = f"    return {marker} + undefined_offset"
    elif broken is None:
        second = f"    return {marker}"
    else:
        raise ValueError(f"unknown broken save {broken!r}: use one of {BROKEN_SAVES}")
    return "\n".join(
        [
            f'"""Save-to-serving rules, save {marker}."""',
            "",
            "from livepatch.examples.spam import Message, Verdict",
            "",
            "",
            "def first() -> int:",
            f"    return {marker}",
            "",
            "",
            "def second() -> int:",
            second,
            "",
            "",
            "def classify(msg: Message) -> Verdict:",
            '    return Verdict(spam=False, score=0.0, reasons=(f"{first()}/{second()}",))',
            "",
        ]
    )


# ---------------------------------------------------------------------------
# Probing what serves


@dataclass(frozen=True)
class _Sample:
    """One probe: when the new code ran (``time.time()``) and what each function gave."""

    at: float
    first: Outcome
    second: Outcome


ProbeFn = Callable[[], _Sample]


class _Prober:
    """Runs ``probe`` back to back on a thread and keeps every sample."""

    def __init__(self, probe: ProbeFn) -> None:
        self._probe = probe
        self._samples: list[_Sample] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="savelive-probe", daemon=True)

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self._probe()
            except Exception as exc:  # noqa: BLE001 - the probe's own failure ends the run
                self.error = f"probe failed: {type(exc).__name__}: {exc}"
                with self._changed:
                    self._changed.notify_all()
                return
            with self._changed:
                self._samples.append(sample)
                self._changed.notify_all()
            time.sleep(PROBE_PAUSE_S)

    def since(self, t: float) -> list[_Sample]:
        """The samples whose code ran at ``t`` or later."""
        with self._changed:
            return [s for s in self._samples if s.at >= t]

    def wait_for(
        self, after: float, wanted: Callable[[_Sample], bool], timeout: float
    ) -> _Sample | None:
        """The first sample from ``after`` on that is ``wanted``, or None at the deadline."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                fresh = [s for s in self._samples[seen:] if s.at >= after]
                seen = len(self._samples)
                for sample in fresh:
                    if wanted(sample):
                        return sample
                left = deadline - time.monotonic()
                if left <= 0 or self.error or not self._thread.is_alive():
                    return None
                self._changed.wait(min(left, 0.5))


@dataclass
class _Said:
    """What a tool printed or reported, with the time it arrived."""

    lines: list[tuple[float, str, bool]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, text: str, *, error: bool) -> None:
        with self.changed:
            self.lines.append((time.time(), text, error))
            self.changed.notify_all()

    def since(self, t: float) -> list[tuple[float, str, bool]]:
        with self.changed:
            return [line for line in self.lines if line[0] >= t]

    def wait_since(self, t: float, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(at >= t for at, _, _ in self.lines), timeout)


def _label(outcome: Outcome, old: int, new: int) -> str:
    if outcome == old:
        return "old"
    if outcome == new:
        return "new"
    return str(outcome)


class _Session:
    """One tool's run: the file, its prober, what it said, and the saves so far."""

    def __init__(
        self, path: Path, prober: _Prober, said: _Said, reacted: Callable[[float], bool]
    ) -> None:
        self.path = path
        self.prober = prober
        self.said = said
        #: Whether the tool reacted to a save made at the time given (waits).
        self.reacted = reacted
        self.marker = 1
        #: For each good save that never served: its marker and what the tool said.
        self.missed: list[dict[str, Any]] = []

    def save(self, marker: int, broken: str | None = None) -> float:
        """Write the module (as an editor does: the whole file in place); the time after."""
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(saved_module(marker, broken))
        return time.time()

    def good_save(self) -> float | None:
        """A good save of the next marker; seconds until it served, or None (missed)."""
        self.marker += 1
        new = self.marker
        saved = self.save(new)
        sample = self.prober.wait_for(
            saved, lambda s: s.first == new and s.second == new, SERVE_DEADLINE_S
        )
        time.sleep(GAP_S)
        if sample is None:
            said = [text for _, text, _error in self.said.since(saved)]
            self.missed.append({"marker": new, "tool_said": said[:5]})
            return None
        return max(0.0, sample.at - saved)

    def broken_save(self, broken: str) -> dict[str, Any]:
        """A broken save of the next marker, observed; then a good save to recover."""
        old = self.marker
        new = old + 1
        saved = self.save(new, broken)
        reacted = self.reacted(saved)
        time.sleep(SETTLE_S)
        samples = self.prober.since(saved)
        said = self.said.since(saved)
        seen: dict[str, int] = {}
        errors: dict[str, int] = {}
        failed = 0
        for s in samples:
            key = f"{_label(s.first, old, new)}/{_label(s.second, old, new)}"
            seen[key] = seen.get(key, 0) + 1
            bad = [o for o in (s.first, s.second) if isinstance(o, str)]
            failed += bool(bad)
            for kind in bad:
                errors[kind] = errors.get(kind, 0) + 1
        last = samples[-1] if samples else None
        after = (
            {"first": _label(last.first, old, new), "second": _label(last.second, old, new)}
            if last
            else None
        )
        if after is None:
            applied = None
        elif after == {"first": "old", "second": "old"}:
            applied = "none"
        elif after == {"first": "new", "second": "new"}:
            applied = "all"
        else:
            applied = "partly"
        complaints = [text for _, text, error in said if error and text]
        # The recovery: the next good save must serve (its marker skips the broken one).
        self.marker = new
        recovered = self.good_save()
        return {
            "save": broken,
            "reacted": reacted,
            "probes": len(samples),
            "seen": seen,
            "old_code_kept_serving": bool(samples) and seen == {"old/old": len(samples)},
            "failed_probes": failed,
            "errors": errors,
            "after": after,
            "applied": applied,
            "error_shown": bool(complaints),
            "tool_said": _condensed("\n".join(complaints)) if complaints else None,
            "recovered_ms": None if recovered is None else round(recovered * 1e3, 3),
        }


def _condensed(text: str) -> str:
    """A report in one line: its first line, and its last when there are more
    (a traceback's first and error lines)."""
    lines = [line.strip() for line in text.splitlines() if any(c.isalnum() for c in line)]
    return " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""


def _run_saves(session: _Session, saves: int, progress: ProgressFn) -> dict[str, Any]:
    """``saves`` good saves timed, then the broken saves observed."""
    first = session.prober.wait_for(0.0, lambda s: s.first == s.second == 1, SERVE_DEADLINE_S)
    if first is None:
        reason = session.prober.error or "the first version never served"
        return {"available": False, "reason": reason}
    latencies: list[float] = []
    missed = 0
    for i in range(saves):
        took = session.good_save()
        if took is None:
            missed += 1
        else:
            latencies.append(took)
        progress(0.8 * (i + 1) / max(1, saves))
    broken = {}
    for i, kind in enumerate(BROKEN_SAVES):
        broken[kind] = session.broken_save(kind)
        progress(0.8 + 0.2 * (i + 1) / len(BROKEN_SAVES))
    return {
        "available": True,
        "saves": saves,
        "missed": missed,
        "missed_saves": session.missed,
        "save_to_serving_ms": _distribution(latencies, 1e3, 3),
        "probes": len(session.prober.since(0.0)),
        "broken": broken,
        "probe_error": session.prober.error,
    }


@contextlib.contextmanager
def _module_dir(tool: str) -> Iterator[tuple[Path, str]]:
    """A temporary directory holding the module at save 1; its path and module name."""
    name = f"livepatch_savelive_{tool}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="lpbench-save-") as tmp:
        path = Path(tmp) / f"{name}.py"
        path.write_text(saved_module(1), encoding="utf-8")
        yield path, name


# ---------------------------------------------------------------------------
# The tools


def _read_lines(stream: Any, sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _tool_livepatch(saves: int, progress: ProgressFn, quarantine: bool = True) -> dict[str, Any]:
    """``livepatch load FILE --watch --swap --json`` against a real engine process."""
    from ..client import Client
    from ..errors import LivepatchError
    from ..launcher import EngineProcess

    name = f"bench-save-{os.getpid()}"
    with (
        _private_runtime_dir(),
        _module_dir("livepatch") as (path, _module),
        EngineProcess(
            name,
            ["--slot", "spam=livepatch.examples.spam:SpamRules"]
            + ([] if quarantine else ["--no-quarantine"]),
            tie_to_parent=True,
        ) as engine,
    ):
        engine.start()
        said = _Said()
        #: The watch's own time per swapped save (from the change being seen).
        step_s: list[float] = []
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "livepatch",
                "load",
                str(path),
                "--slot",
                "spam",
                "--watch",
                "--swap",
                "--json",
                "--existing",
                name,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )

        def follow() -> None:
            assert watcher.stdout is not None
            for line in watcher.stdout:
                try:
                    step = json.loads(line)
                except json.JSONDecodeError:
                    said.add(line.strip(), error=True)
                    continue
                if step.get("error"):
                    said.add(str(step["error"]), error=True)
                elif step.get("problems"):
                    p = step["problems"][0]
                    said.add(f"check failed: {p['message']} (line {p['line']})", error=True)
                else:
                    said.add(f"{step.get('version')} swapped={step.get('swapped')}", error=False)
                    if step.get("swapped"):
                        step_s.append(float(step["seconds"]))

        follower = threading.Thread(target=follow, name="savelive-follow", daemon=True)
        follower.start()
        probe_client = Client.connect(name, client_name="livepatch-bench-probe")

        def outcome(symbol: str) -> Outcome:
            try:
                return int(probe_client.call("spam", symbol)["result"])
            except LivepatchError as exc:
                return str(exc.data.get("exception") or exc.kind)

        def probe() -> _Sample:
            at = time.time()
            return _Sample(at, outcome("first"), outcome("second"))

        try:
            with _Prober(probe) as prober:
                session = _Session(
                    path, prober, said, lambda t: said.wait_since(t, REACT_DEADLINE_S)
                )
                row = _run_saves(session, saves, progress)
        finally:
            probe_client.close()
            watcher.send_signal(signal.SIGINT)  # Ctrl-C: the watch ends quietly
            try:
                watcher.wait(10)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()
            follower.join(5)
    return {
        "tool": "livepatch" if quarantine else "livepatch, no quarantine",
        "version": __version__,
        "how": (
            "`livepatch load FILE --slot spam --watch --swap --json` (a CLI process) against an "
            + (
                "engine process (its default: each load's body runs first in a throwaway child)"
                if quarantine
                else "engine started with --no-quarantine"
            )
            + "; a client calls first() and second() over the socket back to back"
        ),
        **row,
        # The first step is the initial load, not a save.
        "watch_step_ms": _distribution(step_s[1:], 1e3, 3),
    }


def _tool_jurigged(saves: int, progress: ProgressFn) -> dict[str, Any]:
    """``jurigged.watch()`` on the module's directory, in this process."""
    import importlib

    try:
        jurigged = importlib.import_module("jurigged")
    except ImportError:
        return {
            "tool": "jurigged",
            "available": False,
            "reason": "not installed (pip install -e '.[bench]')",
        }
    said = _Said()

    def logger(event: object) -> None:
        if isinstance(event, BaseException):
            text = str(event).strip().splitlines()
            said.add(f"{type(event).__name__}: {text[0] if text else ''}", error=True)
        else:
            said.add(str(event), error=False)

    with _module_dir("jurigged") as (path, module_name):
        # Watched before the import, as `python -m jurigged` does: jurigged
        # registers the modules whose files match when they are imported.
        watcher = jurigged.watch(str(path.parent / "*.py"), logger=logger)
        sys.path.insert(0, str(path.parent))
        try:
            module = importlib.import_module(module_name)

            def outcome(function: Callable[[], int]) -> Outcome:
                try:
                    return int(function())
                except Exception as exc:  # noqa: BLE001 - what the patched code raised
                    return type(exc).__name__

            def probe() -> _Sample:
                at = time.time()
                return _Sample(at, outcome(module.first), outcome(module.second))

            with _Prober(probe) as prober:
                session = _Session(
                    path, prober, said, lambda t: said.wait_since(t, REACT_DEADLINE_S)
                )
                row = _run_saves(session, saves, progress)
        finally:
            watcher.stop()
            watcher.join()
            sys.path.remove(str(path.parent))
            sys.modules.pop(module_name, None)
    return {
        "tool": "jurigged",
        "version": getattr(jurigged, "__version__", None) or _dist_version("jurigged"),
        "how": (
            "jurigged.watch() on the module's directory in this process (watchdog, its "
            "default debounce); a thread calls module.first() and module.second() back to back"
        ),
        **row,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


#: The cell the kernel runs back to back: the time the cell's code ran
#: (autoreload has checked by then) and what each function gave.
_PROBE_CELL = "_lp_probe()"

_KERNEL_SETUP = """
import json as _lp_json, sys as _lp_sys, time as _lp_time
_lp_sys.path.insert(0, {directory!r})
%load_ext autoreload
%autoreload 2
import {module} as _lp_mod

def _lp_probe():
    at = _lp_time.time()
    out = []
    for name in ("first", "second"):
        try:
            out.append(int(getattr(_lp_mod, name)()))
        except Exception as exc:
            out.append(type(exc).__name__)
    print(_lp_json.dumps([at, *out]))
"""


def _tool_autoreload(saves: int, progress: ProgressFn) -> dict[str, Any]:
    """``%autoreload 2`` in a real ipykernel, cells executed back to back."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
    except ImportError as exc:
        return {"tool": "IPython autoreload", "available": False, "reason": str(exc)}
    with (
        _module_dir("autoreload") as (path, module_name),
        tempfile.TemporaryDirectory(prefix="lpbench-kernel-") as tmp,
    ):
        spec_dir = Path(tmp) / "kernels" / "lpbench"
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "livepatch bench",
            "language": "python",
            # A private profile; and no .pyc files: saves come faster than the
            # one-second mtime a .pyc records, and a stale .pyc of the same size
            # would be reloaded instead of the new source.
            "env": {"IPYTHONDIR": str(Path(tmp) / "ipython"), "PYTHONDONTWRITEBYTECODE": "1"},
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        km = KernelManager(
            kernel_name="lpbench",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]),
        )
        # The kernel's own warnings (TCP without encryption) are not the bench's output.
        km.start_kernel(cwd=str(path.parent), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kc = km.client()
        kc.start_channels()
        said = _Said()
        try:
            kc.wait_for_ready(timeout=60)
            setup = _KERNEL_SETUP.format(directory=str(path.parent), module=module_name)
            reply = kc.execute_interactive(setup, timeout=60, output_hook=lambda msg: None)
            if reply["content"]["status"] != "ok":
                return {
                    "tool": "IPython autoreload",
                    "available": False,
                    "reason": f"kernel setup failed: {reply['content'].get('evalue')}",
                }
            ipython_version = _dist_version("ipython")

            def probe() -> _Sample:
                printed: list[str] = []

                def hook(msg: dict[str, Any]) -> None:
                    content = msg["content"]
                    if msg["msg_type"] == "stream" and content["name"] == "stdout":
                        printed.append(content["text"])
                    elif msg["msg_type"] == "stream":  # autoreload reports on stderr
                        said.add(content["text"].strip(), error=True)
                    elif msg["msg_type"] == "error":
                        said.add(f"{content['ename']}: {content['evalue']}", error=True)

                kc.execute_interactive(_PROBE_CELL, timeout=60, output_hook=hook)
                at, first, second = json.loads("".join(printed).strip().splitlines()[-1])
                return _Sample(float(at), first, second)

            with _Prober(probe) as prober:
                # autoreload acts when the next cell starts: a cell begun after the save.
                session = _Session(
                    path,
                    prober,
                    said,
                    lambda t: prober.wait_for(t, lambda s: True, REACT_DEADLINE_S) is not None,
                )
                row = _run_saves(session, saves, progress)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return {
        "tool": "IPython autoreload",
        "version": ipython_version,
        "how": (
            "%autoreload 2 in a real ipykernel; a client executes cells back to back, each "
            "calling first() and second(); autoreload reloads before each cell, so the new "
            "code serves from the first cell after the save"
        ),
        **row,
    }


_MEASURES: dict[str, Callable[[int, ProgressFn], dict[str, Any]]] = {
    "livepatch": _tool_livepatch,
    "livepatch_no_quarantine": lambda saves, progress: _tool_livepatch(
        saves, progress, quarantine=False
    ),
    "jurigged": _tool_jurigged,
    "ipython_autoreload": _tool_autoreload,
}


def measure_savelive(settings: Settings, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Save-to-serving of livepatch, jurigged and autoreload, and their broken saves."""
    tools: dict[str, Any] = {}
    share = 1 / len(TOOLS)
    for index, key in enumerate(TOOLS):

        def sub(fraction: float, index: int = index) -> None:
            progress((index + fraction) * share)

        tools[key] = _MEASURES[key](settings.savelive_saves, sub)
    return {
        "saves": settings.savelive_saves,
        "method": (
            "each tool watches the same module; a save rewrites the file in place; the time is "
            "from the write to the first probe call that ran the new code (probes back to back, "
            f"{PROBE_PAUSE_S * 1e3:g} ms apart; in the kernel, one cell per probe). Then a save "
            "with a syntax error and one with an unresolved name in second(), each followed by "
            "a good save; what served after each is what the probes saw."
        ),
        "broken_saves": {
            "syntax_error": "second() does not parse; first() is a good new version",
            "unresolved_name": (
                "second() adds undefined_offset, defined nowhere; first() is a good new version"
            ),
        },
        "tools": tools,
    }
