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
- The engine runs in its **own session** (process group), so Ctrl-C or a
  closed terminal reaches only the front end, which then stops the engine
  properly (connection file, socket and native copies removed).
- With ``tie_to_parent`` the engine watches its parent's pid
  (``LIVEPATCH_PARENT_PID``) and stops itself when the parent is gone, so a
  ``kill -9``ed kernel leaves no engine behind under PID 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import LivepatchError
from .runtime import runtime_dir

__all__ = ["EngineProcess", "EngineStartError", "log_path", "tail"]

#: Set in the engine's environment: its parent's pid, to stop with it.
PARENT_ENV = "LIVEPATCH_PARENT_PID"


class EngineStartError(LivepatchError, RuntimeError):
    """The engine process exited (or said nothing) before it was ready."""

    kind = "engine-start"


def log_path(name: str, directory: Path | None = None) -> Path:
    """Where the launcher writes engine ``name``'s output."""
    return (directory or runtime_dir()) / f"{name}.log"


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a log (reads at most the last 256 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    return text[-lines:] if lines > 0 else []


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
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env or {})
        self.tie_to_parent = tie_to_parent
        self.log_path = log or log_path(name)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self._log: IO[bytes] | None = None
        # Where the current process's output begins in the shared log.
        self._offset = 0

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
        return self.ready

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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()
        return proc.returncode

    def restart(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop and start again with the same arguments (and state directory)."""
        self.stop()
        self.proc = None
        return self.start(timeout)

    def log_text(self) -> str:
        """Everything the engine wrote so far (every start of it: the log is
        appended across restarts)."""
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
