"""``livepatch bench``: the performance claims of DESIGN.md, measured in one run.

Every figure is measured side by side on the same machine in the same run,
as a ratio or a distribution (never a timed test):

Each section is a module of this package:

``hot_path`` (:mod:`.hot_path`)
    ``engine.call``, a call inside an open ``pin`` block and a whole ``pin``
    block against calling the function directly, on a trivial rule and on the
    bundled spam ``classify``.
``callgrind`` (:mod:`.hot_path_callgrind`)
    The same statements in instructions per call, counted by valgrind's
    callgrind: figures that hold still on a busy machine. Skipped by
    ``--quick`` unless asked for with ``--section callgrind``.
``shadow`` (:mod:`.shadow`)
    ``engine.call`` on ``classify`` with and without a shadow run at 10 %
    sampling: the p50 of each, and instructions per call (callgrind, the
    caller's thread only) between samples and with the sampled calls.
``swap_under_load``
    Caller threads run requests through ``pin`` (each request calls two
    functions and records the version marker each returned) while the main
    thread swaps back and forth between two versions: failed and
    mixed-version requests, request latency with and without swaps, swap
    latency in-process; then swaps over the control socket of a real engine
    process, request to reply (:mod:`.swap`).
``control_plane`` (:mod:`.control_plane`)
    8 clients calling rules over the socket flat out while another swaps:
    swap latency and call throughput, next to a bare asyncio JSON-lines
    server answering the same frames, in the same run.
``load_check`` (:mod:`.load_check`)
    ``load`` + ``check`` of generated modules of 100, 1,000 and 10,000
    functions, next to CPython's own ``compile`` + ``exec`` of the same source.
``memory`` (:mod:`.memory`)
    load/check/swap/purge/unload cycles: how many unloaded versions were
    freed, and the growth of resident memory.
``fleet`` (:mod:`.fleet`)
    A fleet push: real engines with traffic on the local registry (push
    time, commit skew, call p99 during pushes) and simulated members on a
    private ZooKeeper server (push time per fleet size). Without ZooKeeper
    that half is skipped and says so, except under CI.
``peers`` (:mod:`.peers`)
    ``importlib.reload``, IPython's ``%autoreload 2`` and jurigged on the
    same module under the same caller threads, next to livepatch: reload
    time, and how many requests saw a mix of old and new code.
``savelive`` (:mod:`.savelive`)
    From a file save to the new code serving, p50/p99 over N saves, for
    ``livepatch load --watch --swap``, jurigged's watcher and ``%autoreload
    2`` in a real kernel; then what each does with a save that has a syntax
    error and one with an unresolved name, as observed by probes that keep
    calling the code.

The results print as a table and, with ``--json FILE``, are written as JSON
of a stable shape (``schema`` 1): ``machine``, ``settings``, ``goals`` (each
with its limit, measured value and ``met``, :mod:`.goals`), and one block
per section; :mod:`.report` runs them and prints the table. ``--plot
FILE.svg`` draws the ``swap_under_load`` latency distributions with and
without swaps (:mod:`.plot`, SVG written by hand).

IPython and jurigged are imported only inside the peer and savelive measurements.
"""

from __future__ import annotations

from .common import (
    FULL,
    QUICK,
    SCHEMA,
    SECTIONS,
    Progress,
    Settings,
    machine_info,
    peer_module,
    percentile,
)
from .fleet import measure_fleet
from .goals import evaluate_goals
from .hot_path import measure_hot_path
from .load_check import generated_module, measure_load_check
from .memory import measure_memory
from .peers import measure_peers
from .report import render_table, run, run_bench
from .savelive import measure_savelive, saved_module
from .swap import measure_socket_swap, measure_swap_under_load

__all__ = [
    "FULL",
    "QUICK",
    "SCHEMA",
    "SECTIONS",
    "Progress",
    "Settings",
    "evaluate_goals",
    "generated_module",
    "machine_info",
    "measure_fleet",
    "measure_hot_path",
    "measure_load_check",
    "measure_memory",
    "measure_peers",
    "measure_savelive",
    "measure_socket_swap",
    "measure_swap_under_load",
    "peer_module",
    "percentile",
    "render_table",
    "run",
    "run_bench",
    "saved_module",
]
