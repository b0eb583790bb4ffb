"""One owner for the lifetime of an engine process a front end starts.

Like jupyter_client's ``KernelManager`` for a kernel, an :class:`EngineProcess`
owns everything about a ``livepatch engine`` child: the command line, the
ready line it waits for, where its output goes, liveness, the shutdown ladder
(SIGTERM, then SIGKILL) and a restart with the same arguments (so the same
state directory). The demo, ``%hotswap start`` and the tests all use it.

Why each choice:

- Output goes to a **log file** (``NAME.log`` in the runtime directory,
  next to the connection file), never to a pipe: a pipe nobody
  drains fills after 64 KiB of a rule's ``print`` and then blocks every
  thread that writes, which wedges the engine. The ready line is read back
  from the log. :func:`tail` shows its end (``log`` in the shell,
  ``%hotswap log``).
- The log is **bounded**, as logrotate's ``copytruncate`` would keep it: a
  start finds a log of at least the limit (``LIVEPATCH_LOG_MAX_BYTES``,
  default 10 MiB) and moves it to ``NAME.log.1``, so the last run's end is
  still there; while the engine runs, a thread of the launcher checks every
  second and, past the limit, copies the log to ``NAME.log.1`` and empties
  it (the engine writes with ``O_APPEND``, so its next line lands at the
  start). At most the limit, plus a second of output, plus one older
  generation stay on disk; nothing blocks or wedges the engine.
- The engine runs in its **own session** (process group), so Ctrl-C or a
  closed terminal reaches only the front end, which then stops the engine
  properly (connection file, socket and native copies removed).
- An engine whose name is the front end's own (``demo-PID``,
  ``ipython-PID``: ``ephemeral``) leaves **no log behind** once the front
  end has stopped it: nothing will ever ask for that name's log again, and a
  runtime directory under ``$HOME`` would otherwise gain a file per run. An
  engine that died by itself keeps its log, which the front end pointed to.
- With ``tie_to_parent`` the engine watches its parent's pid
  (``LIVEPATCH_PARENT_PID``) and stops itself when the parent is gone, so a
  ``kill -9``ed kernel leaves no engine behind under PID 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import LivepatchError
from .runtime import runtime_dir

__all__ = [
    "DEFAULT_LOG_MAX_BYTES",
    "BadLogLimit",
    "EngineProcess",
    "EngineStartError",
    "log_limit",
    "log_path",
    "rotate_log",
    "tail",
]

#: Set in the engine's environment: its parent's pid, to stop with it.
PARENT_ENV = "LIVEPATCH_PARENT_PID"

#: The size past which an engine's log is rotated to ``NAME.log.1``.
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
#: Overrides :data:`DEFAULT_LOG_MAX_BYTES` (a number of bytes).
LOG_MAX_ENV = "LIVEPATCH_LOG_MAX_BYTES"
#: How often a running engine's log size is checked.
LOG_CHECK_INTERVAL_S = 1.0


class EngineStartError(LivepatchError, RuntimeError):
    """The engine process exited (or said nothing) before it was ready."""

    kind = "engine-start"


class BadLogLimit(LivepatchError, ValueError):
    """``LIVEPATCH_LOG_MAX_BYTES`` is not a positive number of bytes."""

    kind = "usage"


def log_path(name: str, directory: Path | None = None) -> Path:
    """Where the launcher writes engine ``name``'s output."""
    return (directory or runtime_dir()) / f"{name}.log"


def log_limit() -> int:
    """The log size limit: ``$LIVEPATCH_LOG_MAX_BYTES``, else 10 MiB."""
    raw = os.environ.get(LOG_MAX_ENV, "").strip()
    if not raw:
        return DEFAULT_LOG_MAX_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise BadLogLimit(f"{LOG_MAX_ENV}={raw!r}: use a positive number of bytes, e.g. 10485760")
    return int(raw)


def _older(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate_log(path: Path, max_bytes: int) -> bool:
    """Move ``path`` to ``path.1`` (replacing an older one) if it holds at
    least ``max_bytes``; whether it did. For a log nobody writes to now."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    os.replace(path, _older(path))
    return True


def _read_end(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read()
    except FileNotFoundError:
        return b""


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a log (reads at most the last 256 KiB),
    continued from the rotated ``path.1`` when the log was just emptied."""
    if lines <= 0:
        return []
    text = _read_end(path, 256 * 1024).decode("utf-8", "replace").splitlines()
    if len(text) < lines:
        older = _read_end(_older(path), 256 * 1024).decode("utf-8", "replace").splitlines()
        text = older + text
    return text[-lines:]


class EngineProcess:
    """A ``livepatch engine --name NAME ARGS`` child process and its lifetime.

    >>> engine = EngineProcess("rules", ["--traffic", "20"])  # doctest: +SKIP
    >>> engine.start()["pid"]                                # the ready line
    >>> engine.stop()                                        # SIGTERM, then SIGKILL
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        tie_to_parent: bool = False,
        log: Path | None = None,
        ephemeral: bool = False,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env or {})
        self.tie_to_parent = tie_to_parent
        #: The name is this front end's own: :meth:`stop` removes the log.
        self.ephemeral = ephemeral
        self.log_path = log or log_path(name)
        #: Past this size the log is rotated (see the module's docstring).
        self.log_max_bytes = log_limit()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self._log: IO[bytes] | None = None
        # Where the current process's output begins in the shared log.
        self._offset = 0
        self._trimmer: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifetime -----------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The engine's pid (0 before start)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        """Whether the engine process is running."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited."""
        return self.proc.poll() if self.proc is not None else None

    def command(self) -> list[str]:
        """The command line the engine is started with."""
        return [sys.executable, "-m", "livepatch", "engine", "--name", self.name, *self.args]

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start the engine and wait for its ready line; returns it.

        Raises :class:`EngineStartError` with the last line of its output when
        it exits first (or stays silent past ``timeout``, then it is killed).
        """
        if self.alive:
            return self.ready
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (several engines can
        start side by side; :meth:`wait_ready` then waits for each)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        rotate_log(self.log_path, self.log_max_bytes)
        # Append mode (O_APPEND): after the trimmer empties the file, the
        # engine's next write lands at its start, not past a hole.
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned until stop()
        offset = log.tell()
        env = {**os.environ, **self.env}
        if self.tie_to_parent:
            env[PARENT_ENV] = str(os.getpid())
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError:
            log.close()
            raise
        self._log = log
        self._offset = offset

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the ready line of a spawned engine; returns it (see :meth:`start`)."""
        self.ready = self._wait_ready(self._offset, timeout)
        self._start_trimmer()
        return self.ready

    # -- the log's bound ----------------------------------------------------------

    def _start_trimmer(self) -> None:
        if self._trimmer is not None and self._trimmer.is_alive():
            return
        self._stopping.clear()
        self._trimmer = threading.Thread(
            target=self._trim_loop, name=f"livepatch-log-{self.name}", daemon=True
        )
        self._trimmer.start()

    def _trim_loop(self) -> None:
        while not self._stopping.wait(LOG_CHECK_INTERVAL_S):
            # A full disk or a removed runtime dir must not kill the thread
            # silently mid-way, nor the front end: try again next time.
            try:
                self.trim_log()
            except OSError:
                continue

    def trim_log(self) -> bool:
        """Past the limit, copy the log to ``NAME.log.1`` and empty it (the
        engine keeps writing to it); whether it did. Runs every second while
        the engine is up."""
        try:
            if self.log_path.stat().st_size < self.log_max_bytes:
                return False
        except FileNotFoundError:
            return False
        import shutil

        older = _older(self.log_path)
        partial = older.with_name(older.name + ".part")
        shutil.copyfile(self.log_path, partial)
        os.replace(partial, older)
        # What the engine wrote between the copy and here is lost, as with
        # logrotate's copytruncate: a few lines at most, against a full disk.
        os.truncate(self.log_path, 0)
        self._offset = 0
        return True

    def _stop_trimmer(self) -> None:
        self._stopping.set()
        if self._trimmer is not None and self._trimmer is not threading.current_thread():
            self._trimmer.join()
        self._trimmer = None

    def _wait_ready(self, offset: int, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            pending = b""
            while True:
                chunk = f.read()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b'{"ready"'):
                        ready: dict[str, Any] = json.loads(line)
                        return ready
                if not chunk:
                    if self.proc.poll() is not None:
                        f.seek(offset)
                        last = f.read().decode("utf-8", "replace").strip().splitlines()
                        self._close_log()
                        why = last[-1] if last else "no output"
                        raise EngineStartError(
                            f"engine {self.name!r} exited with status "
                            f"{self.proc.returncode} before it was ready: {why}"
                        )
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EngineStartError(
                            f"engine {self.name!r} was not ready within {timeout:g} s "
                            f"(its output: {self.log_path})"
                        )
                    time.sleep(0.02)  # polling a file: there is no event to wait on

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the engine: SIGTERM, then SIGKILL after ``timeout``; idempotent.

        Returns its exit status (``None`` if it was never started).
        """
        proc = self.proc
        if proc is None:
            return None
        healthy = proc.poll() is None
        if healthy:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stop_trimmer()
        self._close_log()
        if self.ephemeral and healthy:
            for path in (self.log_path, _older(self.log_path)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return proc.returncode

    def restart(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop and start again with the same arguments (and state directory)."""
        self.stop()
        self.proc = None
        return self.start(timeout)

    def log_text(self) -> str:
        """What the log holds (every start of the engine since it was last
        rotated: the log is appended across restarts)."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        """What the current (or last) process wrote since it started."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EngineProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
