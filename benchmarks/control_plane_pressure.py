"""The control plane under pressure: swap latency with hung and busy rule calls.

Run: ``.venv/bin/python benchmarks/control_plane_pressure.py [--seconds S] [--callers N]
[--json FILE]``

Starts a real ``livepatch engine`` (the bundled demo) and measures, over its
Unix socket, the time from a ``swap`` request to its reply (swapping
``spam@1`` and ``spam@2`` back and forth):

1. idle;
2. while N caller *processes* call ``classify`` over the socket flat out
   (each: one connection, one request at a time), with their calls per
   second, next to the same callers against a bare asyncio JSON-lines server
   (parse a line, answer a line) started the same way in the same run;
3. with K calls stuck in C (``Event.wait``, past their deadline, shown as
   stuck in ``status``), K = 8 and 64;
4. with K calls spinning in Python within their deadline (they hold the GIL
   whenever they run), K = 2 and 8.

Design goals quoted in the README: swap p99 <= 2 ms under the callers' load,
and socket throughput >= half of the bare server's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from livepatch.client import Client
from livepatch.examples.spam import rule_source
from livepatch.runtime import find_engine

EXTRA = """

import threading

_never = threading.Event()


def hang() -> None:
    _never.wait()


def spin() -> int:
    n = 0
    while True:
        n += 1
"""
ENGINE_OPTIONS = ("--call-workers", "80", "--call-queue", "16", "--call-timeout", "60")
MSG = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "max": round(ordered[-1], 3),
    }


def swap_latencies(client: Client, a: str, b: str, seconds: float) -> dict[str, float]:
    """Swap a <-> b for ``seconds``, about every 2 ms; ms per request."""
    samples = []
    target = b
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        client.swap(target)
        samples.append((time.perf_counter() - start) * 1000)
        target = a if target == b else b
        time.sleep(0.002)
    return percentiles(samples)


def _caller(address: str, seconds: float, start: Any, counts: Any, index: int) -> None:
    """One caller process: hello, then call requests back to back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    reader = sock.makefile("rb")
    hello = {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"client": "bench"}}
    sock.sendall(json.dumps(hello).encode() + b"\n")
    reader.readline()
    params = {"slot": "spam", "symbol": "classify", "args": [MSG]}
    start.wait()
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = {"jsonrpc": "2.0", "id": done + 1, "method": "call", "params": params}
        sock.sendall(json.dumps(frame).encode() + b"\n")
        reply = json.loads(reader.readline())
        if "result" not in reply:
            raise SystemExit(f"call failed: {reply}")
        done += 1
    counts[index] = done
    sock.close()


def flat_out(address: str, callers: int, seconds: float, during: Any = None) -> tuple[float, Any]:
    """Calls per second of ``callers`` processes; runs ``during()`` meanwhile."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    counts = ctx.Array("q", callers)
    procs = [
        ctx.Process(target=_caller, args=(address, seconds, start, counts, i))
        for i in range(callers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # connected and said hello
    start.set()
    began = time.monotonic()
    result = during() if during else None
    for proc in procs:
        proc.join()
    elapsed = max(seconds, time.monotonic() - began)
    return sum(counts) / elapsed, result


BARE_SERVER = r"""
import asyncio, json, os, sys

async def serve(reader, writer):
    while line := await reader.readline():
        request = json.loads(line)
        reply = {"jsonrpc": "2.0", "id": request.get("id"), "result": {"ok": True}}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1])
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def bare_throughput(directory: Path, callers: int, seconds: float) -> float:
    path = str(directory / "bare.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_SERVER, path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        rate, _ = flat_out(path, callers, seconds)
        return rate
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    """Parse the arguments, measure, print a summary and write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--skip-hung", action="store_true", help="only the idle and callers phases")
    args = parser.parse_args()
    results = _Results(python=sys.version.split()[0], cpus=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="lp-cp-", dir="/tmp") as tmp:
        directory = Path(tmp)
        os.environ["LIVEPATCH_RUNTIME_DIR"] = str(directory / "run")
        engine = subprocess.Popen(
            [sys.executable, "-m", "livepatch", "engine", "--name", "cp", *ENGINE_OPTIONS],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert engine.stdout is not None
            engine.stdout.readline()
            address = find_engine("cp").address
            with Client.connect("cp") as client:
                v2 = client.load("spam", rule_source("spam_v2.py") + EXTRA, "spam_v2.py")
                client.check(v2)
                results["idle"] = swap_latencies(client, "spam@1", v2, args.seconds / 2)

                rate, under = flat_out(
                    address,
                    args.callers,
                    args.seconds,
                    lambda: swap_latencies(client, "spam@1", v2, args.seconds - 0.5),
                )
                results["callers"] = args.callers
                results["under_callers"] = under
                results["engine_calls_per_s"] = round(rate)
                bare = bare_throughput(directory, args.callers, args.seconds)
                results["bare_calls_per_s"] = round(bare)
                results["throughput_ratio"] = round(rate / bare, 3)

                def hung(count: int, symbol: str, timeout_s: float) -> None:
                    def one() -> None:
                        try:
                            with Client.connect("cp") as c:
                                c.call(v2, symbol, timeout_s=timeout_s)
                        except Exception:  # noqa: BLE001 - timeout is expected
                            pass

                    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
                    for thread in threads:
                        thread.start()
                        time.sleep(0.02)  # under the cap of connections before hello
                    if timeout_s < 5:
                        for thread in threads:
                            thread.join()

                if args.skip_hung:
                    return
                for count in (8, 64):
                    hung(count - len(client.status()["calls"]["stuck"]), "hang", 0.2)
                    stuck = len(client.status()["calls"]["stuck"])
                    results[f"stuck_{stuck}"] = swap_latencies(client, "spam@1", v2, args.seconds)
                for count in (2, 8):
                    hung(count if count == 2 else count - 2, "spin", 3600)
                    time.sleep(0.5)
                    running = client.status()["calls"]["running"] - stuck
                    results[f"spinning_{running}"] = swap_latencies(
                        client, "spam@1", v2, args.seconds
                    )
        finally:
            engine.kill()
            engine.wait()
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=2)


class _Results(dict[str, Any]):
    """Printed as they come in, so a slow or failed phase still shows the rest."""

    def __init__(self, **items: Any) -> None:
        super().__init__()
        for key, value in items.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        print(f"{key}: {value}", flush=True)
        super().__setitem__(key, value)


if __name__ == "__main__":
    main()
