"""Fleet figures: push time, commit skew, and what a push costs traffic.

- :func:`measure_local`: N real ``livepatch engine`` processes with traffic
  on the local registry; push p50/p99 (prepare + commit) and the commit
  skew (first to last member's swap, from the members' own journals); the
  p99 of ``call`` round trips over each member's socket while pushes run,
  next to the p99 without pushes.
- :func:`measure_zookeeper`: a private ZooKeeper server and simulated
  members, hundreds per process (:mod:`livepatch.fleet.zksim`: each a real
  :class:`~livepatch.fleet.zkmember.ZkMember` with its own session, on one
  gevent loop per process, with an in-memory engine stand-in,
  :class:`~livepatch.fleet.handle.MemoryHandle`); push time for each fleet
  size.

``benchmarks/fleet.py`` runs both and prints the table.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..launcher import EngineProcess

__all__ = ["measure_local", "measure_zookeeper"]

_RULE = '''"""Fleet benchmark rule {n}."""

from livepatch.examples.spam import Message, Verdict

TAG = {n}


def classify(msg: Message) -> Verdict:
    return Verdict(spam=False, score=0.0, reasons=(f"v{{TAG}}",))
'''


def _rule(n: int) -> str:
    return _RULE.format(n=n)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _dist_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50": round(_pct(ms, 50), 3),
        "p99": round(_pct(ms, 99), 3),
        "max": round(max(ms), 3) if ms else float("nan"),
    }


@contextlib.contextmanager
def _private_env() -> Iterator[Path]:
    """A private runtime dir and state home, for this process and its children."""
    saved = {k: os.environ.get(k) for k in ("LIVEPATCH_RUNTIME_DIR", "XDG_STATE_HOME")}
    with tempfile.TemporaryDirectory(prefix="lp-fb-", dir="/tmp") as tmp:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = f"{tmp}/run"
        os.environ["XDG_STATE_HOME"] = f"{tmp}/state"
        try:
            yield Path(tmp)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _start_engines(names: list[str], extra: list[str]) -> list[EngineProcess]:
    """The members, started side by side by the launcher (output to their logs)."""
    args = ["--slot", "spam=livepatch.examples.spam:SpamRules", "--load-timeout", "60", *extra]
    # Tied to this process: a benchmark killed with -9 leaves no member behind.
    engines = [EngineProcess(name, args, tie_to_parent=True) for name in names]
    for engine in engines:
        engine.spawn()
    for engine in engines:
        engine.wait_ready()
    return engines


def _stop(engines: list[EngineProcess]) -> None:
    for engine in engines:
        engine.stop(20)


class _Callers:
    """One client per engine calling ``spam.classify`` at a steady rate."""

    def __init__(self, names: list[str], rate: float) -> None:
        from ..client import Client
        from ..runtime import find_engine

        self.clients = [Client(find_engine(n), client_name="bench-traffic") for n in names]
        self.interval = 1.0 / rate
        self.window: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in self.clients]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def take(self) -> list[float]:
        """The latencies since the last take."""
        with self._lock:
            window, self.window = self.window, []
        return window

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        for c in self.clients:
            c.close()

    def _run(self, client: Any) -> None:
        msg = {"sender": "a@example.org", "text": "hello"}
        while not self._stop.wait(self.interval):
            t0 = time.perf_counter()
            try:
                client.call("spam", "classify", [msg])
            except Exception:  # noqa: BLE001 - counted, the traffic goes on
                self.failed += 1
                continue
            with self._lock:
                self.window.append(time.perf_counter() - t0)


def measure_local(
    engines: int = 8, pushes: int = 40, rate: float = 100.0, quiet_s: float = 5.0
) -> dict[str, Any]:
    """Pushes to ``engines`` local members with traffic (see the module doc)."""
    from ..client import Client
    from ..runtime import find_engine
    from .local import push_local
    from .model import sha_of

    names = [f"m{i}" for i in range(engines)]
    with _private_env():
        procs = _start_engines(names, ["--fleet", "bench", "--traffic", str(rate)])
        try:
            assert push_local("bench", "spam", _rule(0), "rule_0.py").ok
            callers = _Callers(names, rate)
            callers.start()
            time.sleep(quiet_s)  # the baseline window: traffic without pushes
            without = callers.take()
            durations: list[float] = []
            skews: list[float] = []
            pushed: list[tuple[str, float]] = []
            aborted = 0
            for i in range(pushes):
                n = 1 + i % 2  # back and forth between two versions
                t0 = time.perf_counter()
                record = push_local("bench", "spam", _rule(n), f"rule_{n}.py")
                durations.append(time.perf_counter() - t0)
                aborted += not record.ok
                pushed.append((sha_of(_rule(n)), record.started))
            during = callers.take()
            callers.stop()
            # Commit skew, from the members' own journals: for each push, the
            # time of every member's swap to the pushed sha after it started.
            swaps: dict[str, list[tuple[float, str]]] = {}
            for name in names:
                with Client(find_engine(name), client_name="bench") as client:
                    swaps[name] = [
                        (e["time"], e["sha256"])
                        for e in client.journal(10_000)
                        if e["op"] == "swap" and e["ok"]
                    ]
            for index, (sha, started) in enumerate(pushed):
                end = pushed[index + 1][1] if index + 1 < len(pushed) else float("inf")
                times = []
                for name in names:
                    hits = [t for t, s in swaps[name] if s == sha and started <= t < end]
                    if hits:
                        times.append(min(hits))
                if len(times) == len(names):
                    skews.append(max(times) - min(times))
        finally:
            _stop(procs)
    p99_without = _pct(without, 99)
    p99_during = _pct(during, 99)
    return {
        "engines": engines,
        "pushes": pushes,
        "aborted": aborted,
        "push_ms": _dist_ms(durations),
        "commit_skew_ms": _dist_ms(skews),
        "skews_measured": len(skews),
        "call_p99_ms_without": round(p99_without * 1000, 3),
        "call_p99_ms_during": round(p99_during * 1000, 3),
        "call_p99_ratio": round(p99_during / p99_without, 2) if p99_without else None,
        "failed_calls": callers.failed,
    }


# ---------------------------------------------------------------------------
# ZooKeeper, simulated members


def measure_zookeeper(
    sizes: tuple[int, ...] = (10, 100, 1000),
    pushes: int = 5,
    processes: int = 2,
    warmup: int = 2,
) -> dict[str, Any]:
    """Push time to ``sizes`` simulated ZooKeeper members (see the module doc).

    Each size is timed after ``warmup`` untimed pushes (one of each of the two
    versions the timed pushes go back and forth between): the server's JIT
    has compiled its request path and every member has fetched both sources,
    for the small fleet as for the large one. Without them the first size
    measured paid the server's start-up and flattered the large-to-small ratio.
    """
    from .zk import ZkRegistry, parse_zk_url
    from .zkserver import ZooKeeperServer, zookeeper_missing
    from .zksim import gevent_missing, member_hosts

    missing = zookeeper_missing() or gevent_missing()
    if missing:
        return {"skipped": missing}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lp-fbzk-") as tmp, ZooKeeperServer(Path(tmp)) as zk:
        for size in sizes:
            url = f"zookeeper://{zk.hosts}/bench{size}?timeout=30"
            with member_hosts(url, "bench", size, processes):
                times: list[float] = []
                acked: list[int] = []
                with ZkRegistry(parse_zk_url(url), "bench") as reg:
                    for i in range(warmup):
                        n = 1 + i % 2
                        if not reg.push("spam", _rule(n), f"rule_{n}.py", deadline_s=120).ok:
                            raise RuntimeError(f"a warm-up push to {size} members aborted")
                    for i in range(pushes):
                        n = 1 + i % 2
                        t0 = time.perf_counter()
                        record = reg.push("spam", _rule(n), f"rule_{n}.py", deadline_s=120)
                        times.append(time.perf_counter() - t0)
                        if not record.ok:
                            raise RuntimeError(f"push to {size} members aborted: {record.reason}")
                        acked.append(len(record.acks))
                results[str(size)] = {
                    "members": size,
                    "push_s_median": round(statistics.median(times), 3),
                    "push_s_max": round(max(times), 3),
                    "push_s": [round(t, 3) for t in times],
                    "acks_min": min(acked),
                }
    small, large = results.get(str(min(sizes))), results.get(str(max(sizes)))
    if small and large:
        results["ratio_largest_to_smallest"] = round(
            large["push_s_median"] / small["push_s_median"], 2
        )
    return results
