"""A private ZooKeeper server for tests and benchmarks (Debian's package).

Runs ``org.apache.zookeeper.server.ZooKeeperServerMain`` from
``/usr/share/java/zookeeper.jar`` (``apt-get install zookeeper``; it needs a
JRE) on a free loopback port with its own data directory, so it can be
stopped, killed and started again on the same data, as a real server
restart would. It never outlives what started it: stopped on the way out of
its ``with`` block, and, started from the main thread where util-linux's
``setpriv`` exists, killed by the kernel when its starter dies however it
dies (``PR_SET_PDEATHSIG``; the signal follows the starting *thread*, so a
server started from another thread is left untied rather than killed early).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["ZOOKEEPER_JAR", "ZooKeeperServer", "zookeeper_missing"]

ZOOKEEPER_JAR = Path(os.environ.get("LIVEPATCH_ZOOKEEPER_JAR", "/usr/share/java/zookeeper.jar"))


def zookeeper_missing() -> str | None:
    """Why a ZooKeeper server cannot be started here, or None."""
    if shutil.which("java") is None:
        return "no java: install a JRE (apt-get install zookeeper pulls one in)"
    if not ZOOKEEPER_JAR.exists():
        return f"no {ZOOKEEPER_JAR}: apt-get install zookeeper"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ZooKeeperServer:
    """One standalone server; :meth:`start`, :meth:`stop`, :meth:`restart`."""

    def __init__(self, directory: Path, port: int | None = None, tick_ms: int = 500) -> None:
        self.directory = directory
        self.port = port or _free_port()
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = directory / "zoo.cfg"
        # A short tick allows short sessions (min 2 ticks), so tests of
        # expiry and of killed members do not wait long.
        self.config.write_text(
            f"tickTime={tick_ms}\n"
            f"dataDir={self.data}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,cons\n"
            f"minSessionTimeout={2 * tick_ms}\n"
            "maxSessionTimeout=60000\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "zookeeper.log"

    @property
    def hosts(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self, wait_s: float = 60.0) -> None:
        """Start the server and wait until it answers ``ruok``."""
        cmd = [
            "java",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            # The quick compiler only: a server that lives for one test or
            # one benchmark never earns back what the optimizing compiler
            # spends compiling on the same two cores (a 1,000-member push:
            # 0.43 -> 0.28 ms of server CPU per member; a 10-member push is
            # no slower).
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            # No worker pools: the selector thread reads and writes, and the
            # commit processor runs each request itself, instead of handing
            # every request across two more threads. On a machine of two
            # shared cores that is a third less server CPU per request.
            "-Dzookeeper.nio.numWorkerThreads=0",
            "-Dzookeeper.commitProcessor.numWorkerThreads=0",
            "-cp",
            str(ZOOKEEPER_JAR),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.config),
        ]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]  # execs java: same pid
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait_s
        while not self._ruok():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper did not start within {wait_s:g} s; see {self.log}")
            time.sleep(0.1)  # the JVM takes a few seconds: poll with a deadline

    def _ruok(self) -> bool:
        # Serving sessions, not just up: ``ruok`` answers ``imok`` while the
        # server still closes new sessions ("not running"); ``srvr`` names
        # the server's mode only once it serves them.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"srvr")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
                return b"Mode: " in reply
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Stop the server (``kill``: SIGKILL, as a crash)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, kill: bool = True) -> None:
        """Stop (killed by default) and start again on the same data and port."""
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
