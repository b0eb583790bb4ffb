"""Quarantined loads: run a module body in a throwaway process first.

A bad push must never take the engine down. Before an engine with a
quarantine policy runs a new source in its own process, it runs it here: a
fresh ``python -m livepatch.quarantine`` child with a time limit and a memory
limit compiles the source, executes its body and resolve-checks it against
the slot's interface. A body that loops forever, calls ``os._exit``, crashes
the interpreter or eats memory fails the load with a one-line reason, and
the engine (and its active versions) never saw it.

For a native slot the same child maps the shared object (``dlopen``, which
runs its constructors) before the engine does, as the last step of a clean
check (:meth:`Quarantine.run_native`).

The child compares the process and the interpreter before and after the
body (:class:`~livepatch.processstate.ProcessState`): a body that leaves
processes running (detached ones too: the child is their subreaper), closes
or replaces fds 0-2, rebinds ``builtins`` or a host module's attribute,
replaces a host module in ``sys.modules``, or changes the recursion limit,
the switch interval or a signal handler fails the load with one line naming
the change, because in the engine no unload or rollback could undo it.

The child dies with its engine (``PR_SET_PDEATHSIG``), has a CPU limit of
its own (``RLIMIT_CPU``) and kills what the body left behind, also when its
own deadline passes; on the engine's side a child past its time is killed
with its process group and reaped.

The time limit is the body's: it starts when the child has started and
imported what it needs (it says so with one byte), so a loaded machine that
is slow to start a Python process does not fail trivial bodies. Start-up has
a deadline of its own (:data:`START_TIMEOUT_S`).

Starting a child (Python plus the engine's imports) costs ~0.3 s, most of a
save-to-live round trip. So after the first quarantined load a process keeps
one spare child, started and imported, waiting for its request
(:attr:`Quarantine.warm`); each load takes it and a new one is started behind
it. A spare holds no state of any load (the request carries every setting),
and it dies with its engine like any quarantine child.

Consequence worth knowing: a module body runs twice (once here, once in the
engine), so module bodies should have no side effects beyond defining
things. The check report warns about threads started at import.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .errors import LoadFailed
from .processstate import (
    ProcessState,
    become_subreaper,
    descendants,
    die_with_parent,
    kill_descendants,
)

__all__ = ["START_TIMEOUT_S", "Quarantine", "interface_spec", "main", "spare_pid"]

#: How long the child may take to start, before the body's limit begins.
START_TIMEOUT_S = 60.0

_PARENT_ENV = "LIVEPATCH_QUARANTINE_PARENT"
#: Exit status of a child that could not write its result (the body closed it).
_NO_RESULT = 97
#: The child's first byte on its result pipe: started, the body's clock runs.
_STARTED = b"R"
#: Bound at import, before any body runs: a body that rebinds json.dumps must
#: not garble our answer (the comparison reports it instead).
_dumps = json.dumps


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Limits for the quarantine process."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    #: Keep a started child waiting for the next load (see the module's doc).
    warm: bool = True

    def run(self, source: str, filename: str, interface: type | None) -> None:
        """Run the source in a child process; :class:`LoadFailed` if it misbehaves."""
        self._child(
            {"source": source, "interface": interface_spec(interface)},
            filename,
            timeout_hint="the module body did not finish within {limit} in quarantine "
            "(an endless loop at import?); nothing was loaded",
            what="the module body",
        )

    def run_native(self, path: str, filename: str, *, fd: int | None = None) -> None:
        """``dlopen`` a shared object in a child process first (its constructors
        run there); :class:`LoadFailed` if that crashes, hangs or fails.

        ``fd``: the object is a memory file, ``path`` its ``/proc/self/fd/N``;
        the child inherits the fd under the same number, so the path holds there.
        """
        self._child(
            {"native": path},
            filename,
            timeout_hint="mapping the object did not finish within {limit} in quarantine "
            "(a constructor that never returns?); it was not mapped here",
            what="mapping the object (its constructors)",
            pass_fds=() if fd is None else (fd,),
        )

    def run_libraries(self, paths: list[str], filename: str) -> None:
        """``dlopen`` an object's ``DT_NEEDED`` libraries (``RTLD_LAZY |
        RTLD_LOCAL``, as the check's scope opens them) in a child first: their
        constructors run there. :class:`LoadFailed` if that crashes or hangs.

        A library the child cannot open is no failure here: the check reports
        it as ``missing-library`` with the dynamic linker's reason.
        """
        self._child(
            {"libraries": paths},
            filename,
            timeout_hint="opening its DT_NEEDED libraries did not finish within {limit} in "
            "quarantine (a constructor that never returns?); nothing was opened here",
            what=f"opening its DT_NEEDED libraries ({', '.join(paths)})",
        )

    def _child(
        self,
        job: dict[str, Any],
        filename: str,
        timeout_hint: str,
        what: str,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """Run ``job`` (what the child does: ``source``, ``native`` or
        ``libraries``) in a quarantine child, under this quarantine's limits."""
        request = {
            **job,
            "filename": filename,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
        }
        # A spare cannot inherit an fd made after it started: such a request
        # (a memory-file object) starts a child of its own.
        proc = _SPARES.take() if self.warm and not pass_fds else None
        if proc is None:
            proc = _spawn(pass_fds)
        try:
            _await_start(proc, filename)
            out, _ = proc.communicate(json.dumps(request).encode("utf-8"), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            limit = f"{self.timeout_s:g} s"
            raise LoadFailed(
                f"{filename}: {timeout_hint.format(limit=limit)}",
                filename=filename,
                reason="timeout",
            ) from None
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        _raise_for(proc.returncode, out, filename, what=what)


def _spawn(pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start a quarantine child; it imports, says it started, then waits."""
    return subprocess.Popen(
        [sys.executable, "-m", "livepatch.quarantine"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so a body that forks can be killed as a group
        # The child's own safety net: it dies with us (its CPU budget comes
        # with the request).
        env={**os.environ, _PARENT_ENV: str(os.getpid())},
        pass_fds=pass_fds,
    )


class _Spares:
    """One started quarantine child kept waiting for the next load.

    Spares are started by one long-lived thread of their own: the kernel sends
    a child's PR_SET_PDEATHSIG when the *thread* that forked it ends, so a
    spare forked by a short-lived thread would die with that thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: subprocess.Popen[bytes] | None = None
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> subprocess.Popen[bytes] | None:
        """The spare if there is a live one (and order the next), else ``None``."""
        with self._lock:
            proc, self._ready = self._ready, None
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="livepatch-quarantine-spares", daemon=True
                )
                self._thread.start()
        self._wanted.set()
        if proc is not None and proc.poll() is not None:
            return None  # it died waiting (killed by hand?): start afresh
        return proc

    def pid(self) -> int | None:
        with self._lock:
            return self._ready.pid if self._ready is not None else None

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                if self._ready is not None and self._ready.poll() is None:
                    continue
            try:
                proc = _spawn()
            except OSError:
                continue  # out of processes: the next load starts its own child
            with self._lock:
                self._ready = proc


_SPARES = _Spares()


def spare_pid() -> int | None:
    """The pid of this process's waiting quarantine child, if one is ready."""
    return _SPARES.pid()


def _await_start(proc: subprocess.Popen[bytes], filename: str) -> None:
    """Wait for the child's started byte; a child that exits first is left
    to :func:`_raise_for` (its exit status says why)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT_S):
            _kill_group(proc)
            raise LoadFailed(
                f"{filename}: the quarantine process did not start within "
                f"{START_TIMEOUT_S:g} s (is the machine overloaded?); nothing was loaded",
                filename=filename,
                reason="timeout",
            )
    os.read(fd, len(_STARTED))  # b"" if it exited: communicate() collects the rest


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _raise_for(returncode: int, out: bytes, filename: str, what: str = "the module body") -> None:
    result: dict[str, Any] | None = None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if result is not None and result.get("ok"):
        return
    if result is not None and "error" in result:
        data = {k: v for k, v in result.get("data", {}).items() if k != "kind"}
        raise LoadFailed(str(result["error"]), **data)
    if returncode == _NO_RESULT and not lines:
        raise LoadFailed(
            f"{filename}: {what} closed the quarantine's result pipe (closed every fd?); "
            "nothing was loaded",
            filename=filename,
            reason="side-effect",
        )
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        raise LoadFailed(
            f"{filename}: {what} crashed the interpreter ({name}) in quarantine; "
            "nothing was loaded",
            filename=filename,
            reason="crash",
        )
    raise LoadFailed(
        f"{filename}: {what} ended the process (exit status {returncode}, "
        "e.g. os._exit) in quarantine; nothing was loaded",
        filename=filename,
        reason="exit",
    )


def interface_spec(interface: type | None) -> str | None:
    """``module:qualname`` of an importable interface, else ``None``."""
    if interface is None or interface.__module__ in ("__main__", "builtins"):
        return None
    return f"{interface.__module__}:{interface.__qualname__}"


def _import_interface(spec: str | None) -> type | None:
    if spec is None:
        return None
    import importlib

    module_name, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, type) else None


def main() -> None:
    """The child: read a request on stdin, load and check, one JSON line out."""
    parent = int(os.environ.get(_PARENT_ENV, "0") or 0)
    if parent:
        die_with_parent(parent)
    become_subreaper()
    # The module body may print or write to fd 1: keep the real stdout for
    # our one result line and point fd 1 (and sys.stdout) at stderr.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import resource

    from . import engine  # noqa: F401 - imported before the body's clock starts

    os.write(result_fd, _STARTED)
    request = json.loads(sys.stdin.read())
    timeout_s = float(request.get("timeout_s") or 0)
    try:
        limit = int(request["memory_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if timeout_s > 0:
            # Should the engine die between PDEATHSIG's cracks, the CPU runs
            # out: the body's budget on top of what start-up used.
            used = resource.getrusage(resource.RUSAGE_SELF)
            cpu = math.ceil(used.ru_utime + used.ru_stime + timeout_s) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    except (ValueError, OSError):
        pass  # no limit available here: the time limit still applies
    answer = _Answer(result_fd)
    if timeout_s > 0:
        # Before the engine kills us (and so cannot reach what the body
        # detached), clean up and say so ourselves.
        watchdog = threading.Timer(timeout_s * 0.9, answer.out_of_time, args=(request, timeout_s))
        watchdog.daemon = True
        watchdog.start()
    native = "native" in request or "libraries" in request
    result = _map_native(request) if native else _load_python(request)
    answer.send(result)


class _Answer:
    """The one result line, written once (by the load or by the watchdog)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, result: dict[str, Any]) -> None:
        with self.lock:
            kill_descendants()
            try:
                os.write(self.fd, (_dumps(result) + "\n").encode("utf-8"))
            except OSError:
                os._exit(_NO_RESULT)
            os._exit(0)  # skip interpreter teardown: threads the body started must not hang us

    def out_of_time(self, request: dict[str, Any], timeout_s: float) -> None:
        self.send(
            {
                "ok": False,
                "error": f"{request['filename']}: "
                + (
                    f"mapping the object did not finish within {timeout_s:g} s in quarantine "
                    "(a constructor that never returns?); it was not mapped here"
                    if "native" in request
                    else "opening its DT_NEEDED libraries did not finish within "
                    f"{timeout_s:g} s in quarantine (a constructor that never returns?); "
                    "nothing was opened here"
                    if "libraries" in request
                    else f"the module body did not finish within {timeout_s:g} s in "
                    "quarantine (an endless loop at import?); nothing was loaded"
                ),
                "data": {"reason": "timeout"},
            }
        )


def _map_native(request: dict[str, Any]) -> dict[str, Any]:
    """dlopen the libraries or the object as the engine would; a crash shows
    as a signal."""
    import _ctypes

    for library in request.get("libraries", ()):
        with contextlib.suppress(OSError):  # missing: the check says so, with the reason
            _ctypes.dlopen(library, os.RTLD_LAZY | os.RTLD_LOCAL)
    if "native" not in request:
        return {"ok": True}
    try:
        _ctypes.dlopen(request["native"], os.RTLD_NOW | os.RTLD_LOCAL)
    except OSError as exc:
        return {"ok": False, "error": f"{request['filename']}: dlopen failed: {exc}", "data": {}}
    return {"ok": True}


def _load_python(request: dict[str, Any]) -> dict[str, Any]:
    """Load and check a Python source as the engine would."""
    from .engine import Engine
    from .errors import LivepatchError

    result: dict[str, Any]
    try:
        interface = _import_interface(request["interface"])
        engine = Engine(name="quarantine")
        engine.add_slot("quarantine", interface)
        before = ProcessState.capture()
        version = engine.load("quarantine", request["source"], request["filename"])
        report = engine.check(version)
        # Build the symbol table too: introspection that never ends (a
        # metaclass __signature__) then fails the load here, by the time limit.
        with contextlib.suppress(Exception):
            engine.symbols(version)
        changes = before.changes(descendants())
        if changes:
            shown = "; ".join(changes[:4]) + (
                f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
            )
            result = {
                "ok": False,
                "error": f"{request['filename']}: the module body changed the process ({shown}); "
                "nothing was loaded: a module body should only define things",
                "data": {"reason": "side-effect", "changes": changes},
            }
        else:
            result = {"ok": True, "report": report.to_json()}
    except LivepatchError as exc:
        result = {"ok": False, "error": exc.message, "data": exc.to_data()}
    except MemoryError:
        result = {
            "ok": False,
            "error": f"{request['filename']}: the module body ran out of memory in quarantine "
            f"(limit {request['memory_mb']} MB); nothing was loaded",
            "data": {"reason": "memory"},
        }
    except BaseException as exc:  # noqa: BLE001 - anything else is still a failed load
        result = {
            "ok": False,
            "error": f"{request['filename']}: quarantine failed: {type(exc).__name__}: {exc}",
            "data": {},
        }
    return result


if __name__ == "__main__":
    main()
