"""Where a ZooKeeper fleet push spends its CPU: per process, per push.

Run: ``.venv/bin/python benchmarks/fleet_cpu.py [--members 1000] [--hosts 2]
[--pushes 4]``

Starts a private ZooKeeper server and ``--hosts`` processes of simulated
members (as :func:`livepatch.fleet.bench.measure_zookeeper` does), pushes
twice to warm up (the two versions the timed pushes go back and forth
between, as the benchmark does), then ``--pushes`` times, and prints the
wall time per push and the CPU seconds per push of the ZooKeeper server,
each member process and the pusher (``utime + stime`` from
``/proc/PID/stat``, and the share of it spent in the kernel), and the
packets the server received (requests) and sent (replies and watch events)
per member per push, from its ``srvr`` command.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

from livepatch.fleet.bench import _rule
from livepatch.fleet.zk import ZkRegistry, parse_zk_url
from livepatch.fleet.zkserver import ZooKeeperServer, zookeeper_missing
from livepatch.fleet.zksim import member_hosts


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    return sum(cpu_times(pid))


def served(port: int) -> tuple[int, int]:
    """The server's (received, sent) packet counts so far (``srvr``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"srvr")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    counts = dict(line.split(": ", 1) for line in reply.decode().splitlines() if ": " in line)
    return int(counts["Received"]), int(counts["Sent"])


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=4)
    args = parser.parse_args()
    missing = zookeeper_missing()
    if missing:
        raise SystemExit(f"fleet_cpu: {missing}")
    with tempfile.TemporaryDirectory() as tmp, ZooKeeperServer(Path(tmp)) as zk:
        url = f"zookeeper://{zk.hosts}/cpu?timeout=30"
        with member_hosts(url, "cpu", args.members, args.hosts) as hosts:
            assert zk.proc is not None
            pids = {"zookeeper": zk.proc.pid, "pusher": os.getpid()}
            pids.update({f"members{i}": h.pid for i, h in enumerate(hosts)})
            with ZkRegistry(parse_zk_url(url), "cpu") as reg:
                for n in (1, 2):
                    assert reg.push("spam", _rule(n), f"w{n}.py", deadline_s=120).ok
                before = {k: cpu_times(p) for k, p in pids.items()}
                packets = served(zk.port)
                t0 = time.perf_counter()
                for i in range(args.pushes):
                    record = reg.push("spam", _rule(1 + i % 2), f"r{i}.py", deadline_s=120)
                    if not record.ok:
                        raise SystemExit(f"fleet_cpu: push aborted: {record.reason}")
                wall = (time.perf_counter() - t0) / args.pushes
                after = {k: cpu_times(p) for k, p in pids.items()}
                received, sent = (b - a for a, b in zip(packets, served(zk.port), strict=True))
    used = {k: [b - a for a, b in zip(before[k], after[k], strict=True)] for k in pids}
    per = {k: round(sum(u) / args.pushes, 3) for k, u in used.items()}
    kernel = {k: f"{u[1] / max(sum(u), 1e-9):.0%}" for k, u in used.items()}
    print(f"{args.members} members: {wall:.3f} s per push; CPU s per push: {per}")
    print(f"of which in the kernel: {kernel}; load average {os.getloadavg()[0]:.2f}")
    n = args.pushes * args.members
    print(f"per member per push: {received / n:.2f} requests received, {sent / n:.2f} packets sent")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a member process that did not start
        raise SystemExit(f"fleet_cpu: {exc}") from None
