"""``control_plane``: the control socket while clients call rules flat out.

``clients`` connections to a real ``livepatch engine`` process, driven by
one asyncio loop in a process of their own, send ``call`` frames (the
bundled ``classify``) back to back for ``duration_s``, each waiting for its
reply; meanwhile one more connection, from the benchmark's own otherwise
idle process, swaps between two resolved versions ``swaps`` times, timing
each request to its reply. The same clients, frames and swap requests go,
in the same run, to a minimal asyncio JSON-lines server in its own process
(written here: it parses each frame and answers it with a canned reply, no
rule work), the reference for what a Python socket server can answer on
this machine. The two take turns in ``Settings.control_rounds`` short
rounds, so that the machine's own ups and downs fall on both.

The thread that times the swaps asks for a short scheduler slice
(:mod:`livepatch.threadsched`), as the engine's control threads do, so
that the figure is the server's and not this process's wait for a CPU.

:func:`serve_reference` is that server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..examples.spam import rule_source
from ..threadsched import request_short_slice
from .common import ProgressFn, Settings, _distribution, _no_progress, _private_runtime_dir

__all__ = ["drive", "measure_control_plane", "placement", "serve_reference"]

MESSAGE = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}


def _frame(rid: int, method: str, params: dict[str, Any]) -> bytes:
    request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


class _Line:
    """A connection that sends one frame and reads one reply line at a time."""

    def __init__(self, address: str, token: str | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(address)
        self.reader = self.sock.makefile("rb")
        reply = self.ask(_frame(0, "hello", {"client": "livepatch-bench", "token": token}))
        if "error" in reply:
            raise RuntimeError(f"hello refused: {reply['error']}")

    def ask(self, frame: bytes) -> dict[str, Any]:
        self.sock.sendall(frame)
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


async def _drive(address: str, token: str | None, clients: int) -> None:
    """The callers: ``clients`` connections, each sending ``call`` frames back
    to back and waiting for each reply, from one asyncio loop.

    Protocol with the parent, one line each way: "ready" once every
    connection said hello; on "go", counting starts; on "stop", it prints the
    calls answered and failed since "go" as JSON and exits.
    """
    call = _frame(1, "call", {"slot": "spam", "symbol": "classify", "args": [MESSAGE]})
    hello = _frame(0, "hello", {"client": "livepatch-bench", "token": token})
    counts = {"calls": 0, "failed_calls": 0}
    counting = False
    stop = asyncio.Event()

    async def caller(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal counting
        while not stop.is_set():
            writer.write(call)
            line = await reader.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            if counting:
                counts["calls" if b'"result"' in line else "failed_calls"] += 1

    streams = []
    for _ in range(clients):
        reader, writer = await asyncio.open_unix_connection(address, limit=2**20)
        writer.write(hello)
        if b'"error"' in await reader.readline():
            raise RuntimeError("hello refused")
        streams.append((reader, writer))
    loop = asyncio.get_running_loop()
    control = await loop.run_in_executor(None, sys.stdin.readline)  # noqa: F841 - "go"
    tasks = [asyncio.create_task(caller(r, w)) for r, w in streams]
    await asyncio.sleep(0.2)  # let the callers get going
    counting = True
    print("counting", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    counting = False
    result = dict(counts)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _, writer in streams:
        writer.close()
    print(json.dumps(result), flush=True)


def drive(address: str, token: str, clients: int) -> None:
    """Entry point of the callers' process (see :func:`_drive`)."""
    asyncio.run(_drive(address, token or None, clients))


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds the process has used so far (Linux), else None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpus() -> list[int]:
    """The CPUs this process may run on (Linux), else none known."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return sorted(getaffinity(0)) if getaffinity is not None else []


def _pin(pid: int, cpus: set[int]) -> None:
    """Put every thread of process ``pid`` on ``cpus`` (the threads it starts
    later inherit that from their starter)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = [str(pid)]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def placement(server_pid: int | None, callers_pid: int) -> str | None:
    """The server on one CPU, the callers (and this timing thread) on another.

    Left to itself, the scheduler often puts the callers' process on the
    server's CPU, since each wakes the other (a woken task goes near its
    waker): measured, the engine then answered about 10,000 calls/s, and
    19,000 when the two ran apart, from one run to the next. Placing them
    makes the figure the server's own on a core of its own, the same for
    the engine and the reference. ``None`` (nothing placed) with fewer than
    two CPUs or no affinity calls.
    """
    cpus = _cpus()
    if server_pid is None or len(cpus) < 2:
        return None
    server_cpu, callers_cpu = cpus[0], cpus[1]
    _pin(server_pid, {server_cpu})
    _pin(callers_pid, {callers_cpu})
    os.sched_setaffinity(0, {callers_cpu})
    return f"server on CPU {server_cpu}, callers and the swap timer on CPU {callers_cpu}"


def _load(
    address: str,
    token: str | None,
    clients: int,
    duration_s: float,
    swap_frames: list[bytes],
    progress: ProgressFn,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """``clients`` callers flat out, and the swap frames timed meanwhile:
    the raw figures of one round (see :func:`_row`).

    The callers run in a process of their own (one asyncio loop, see
    :func:`_drive`), so that the swaps are timed from a process that does
    nothing else: timed from threads beside eight busy callers, a swap's
    time was mostly this process's own wait for its interpreter lock (the
    bare reference server measured 7-24 ms p99 that way).
    """
    code = "import sys; from livepatch.bench.control_plane import drive; "
    cmd = [sys.executable, "-c", code + "drive(sys.argv[1], sys.argv[2], int(sys.argv[3]))"]
    proc = subprocess.Popen(
        [*cmd, address, token or "", str(clients)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    allowed = _cpus()
    placed = placement(server_pid, proc.pid)
    control = _Line(address, token)
    # Timed from a thread the kernel wakes promptly (as the engine's control
    # threads are), so that what is measured is the server, not this
    # process's own wait for a CPU beside the busy callers.
    request_short_slice()
    swap_s: list[float] = []
    swap_errors = 0
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "counting":
            raise RuntimeError("the callers did not start")
        started = time.perf_counter()
        cpu_before = _cpu_s(server_pid)
        pause = duration_s / max(1, len(swap_frames))
        for i, frame in enumerate(swap_frames):
            t0 = time.perf_counter()
            reply = control.ask(frame)
            swap_s.append(time.perf_counter() - t0)
            swap_errors += "error" in reply
            progress((i + 1) / len(swap_frames))
            time.sleep(max(0.0, started + (i + 1) * pause - time.perf_counter()))
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_s(server_pid)
        counts = json.loads(proc.stdout.readline())
        proc.wait(60)
    finally:
        control.close()
        if placed is not None:
            os.sched_setaffinity(0, set(allowed))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cpu_s = None
    if cpu_before is not None and cpu_after is not None:
        cpu_s = cpu_after - cpu_before
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu_s,
        "calls": int(counts["calls"]),
        "failed_calls": int(counts["failed_calls"]),
        "swap_s": swap_s,
        "swap_errors": swap_errors,
        "placement": placed,
    }


def _row(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's figures over all its rounds."""
    elapsed = sum(p["elapsed_s"] for p in parts)
    calls = sum(p["calls"] for p in parts)
    swap_s = [t for p in parts for t in p["swap_s"]]
    cpu_us = None
    if calls and all(p["cpu_s"] is not None for p in parts):
        # What the server spent per call answered (the swaps' share is small).
        cpu_us = round(sum(p["cpu_s"] for p in parts) / calls * 1e6, 1)
    return {
        "server_cpu_us_per_call": cpu_us,
        "duration_s": round(elapsed, 3),
        "calls": calls,
        "calls_per_s": round(calls / elapsed) if elapsed > 0 else None,
        "failed_calls": sum(p["failed_calls"] for p in parts),
        "swaps": len(swap_s),
        "swap_errors": sum(p["swap_errors"] for p in parts),
        "swap_ms": _distribution(swap_s, 1e3, 4),
    }


def _rate(part: dict[str, Any]) -> float:
    return float(part["calls"]) / part["elapsed_s"] if part["elapsed_s"] > 0 else 0.0


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    result = {"version": "spam@1", "result": {"spam": True, "score": 0.9, "reasons": []}}
    while line := await reader.readline():
        request = json.loads(line)
        reply = {"jsonrpc": "2.0", "id": request.get("id"), "result": result}
        writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        await writer.drain()
    writer.close()


def serve_reference(path: str) -> None:
    """The reference server: every frame parsed and answered, no rule work."""

    async def main() -> None:
        server = await asyncio.start_unix_server(_answer, path=path)
        print("ready", flush=True)
        # The benchmark never writes to our stdin: it is readable once it is
        # closed, when the benchmark is done with us or died (even by -9).
        done = asyncio.Event()
        asyncio.get_running_loop().add_reader(0, done.set)
        async with server:
            await done.wait()

    asyncio.run(main())


@contextlib.contextmanager
def _reference_server(path: str) -> Iterator[int]:
    code = "import sys; from livepatch.bench.control_plane import serve_reference; "
    cmd = [sys.executable, "-c", code + "serve_reference(sys.argv[1])", path]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the reference server did not start")
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # its cue to stop
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_control_plane(
    settings: Settings, progress: ProgressFn = _no_progress
) -> dict[str, Any]:
    """Swap latency and call throughput under ``settings.control_clients`` callers,
    on the engine and on the reference server, in one run."""
    from ..client import Client  # the engine-only sections need no socket code
    from ..demo import start_engine
    from ..runtime import find_engine

    clients, duration = settings.control_clients, settings.control_duration_s
    name = f"bench-cp-{os.getpid()}"
    with _private_runtime_dir() as tmp, start_engine(name, 0) as ready:
        info = find_engine(name)
        with Client.connect(name, client_name="livepatch-bench") as client:
            versions = []
            for filename in ("spam_v1.py", "spam_v2.py"):
                version = client.load("spam", rule_source(filename) + "\n# cp\n", filename)
                if not client.check(version).ok:  # pragma: no cover - bundled rules pass
                    raise RuntimeError(f"{version} failed its check")
                versions.append(version)
            client.swap(versions[0])
        swaps = [
            _frame(100 + i, "swap", {"version": versions[(i + 1) % 2]})
            for i in range(settings.control_swaps)
        ]
        rounds = max(1, settings.control_rounds)
        reference_path = os.path.join(tmp, "ref.sock")
        with _reference_server(reference_path) as reference_pid:
            servers = {
                "engine": (info.address, info.token, ready.get("pid")),
                "reference": (reference_path, None, reference_pid),
            }
            parts: dict[str, list[dict[str, Any]]] = {"engine": [], "reference": []}
            # Short rounds, the two servers taking turns (and turns about who
            # goes first), so that a change in the machine's load during the
            # run falls on both alike rather than on whichever ran then.
            done = 0
            for r in range(rounds):
                order = ("engine", "reference") if r % 2 == 0 else ("reference", "engine")
                for key in order:
                    address, token, pid = servers[key]

                    def step(f: float, done: int = done) -> None:
                        progress((done + f) / (2 * rounds))

                    parts[key].append(
                        _load(
                            address,
                            token,
                            clients,
                            duration / rounds,
                            swaps[r::rounds],
                            step,
                            pid,
                        )
                    )
                    done += 1
    engine, reference = _row(parts["engine"]), _row(parts["reference"])
    ratio = None
    if engine["calls_per_s"] and reference["calls_per_s"]:
        ratio = round(engine["calls_per_s"] / reference["calls_per_s"], 3)
    round_ratios = [
        round(_rate(e) / _rate(f), 3) if _rate(f) else None
        for e, f in zip(parts["engine"], parts["reference"], strict=True)
    ]
    return {
        "clients": clients,
        "engine_pid": ready.get("pid"),
        "engine": engine,
        "reference": {
            "what": "asyncio JSON-lines server, canned replies, no rule work",
            **reference,
        },
        "throughput_ratio": ratio,
        "placement": parts["engine"][0]["placement"],
        "rounds": rounds,
        "round_ratios": round_ratios,
    }
