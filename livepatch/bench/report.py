"""Running the sections, the text table and the ``livepatch bench`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import (
    FULL,
    QUICK,
    SCHEMA,
    SECTIONS,
    Progress,
    ProgressFn,
    Settings,
    _load_average,
    machine_info,
)
from .control_plane import measure_control_plane
from .fleet import measure_fleet
from .goals import CORRECTNESS_GOALS, evaluate_goals
from .hot_path import measure_hot_path
from .hot_path_callgrind import measure_callgrind
from .load_check import measure_load_check
from .memory import measure_memory
from .peers import measure_peers
from .savelive import measure_savelive
from .shadow import measure_shadow, shadow_lines
from .swap import measure_swap_under_load

# Running and reporting


def run(
    settings: Settings,
    sections: Sequence[str] = SECTIONS,
    progress: Progress | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Measure ``sections`` with ``settings``; returns the JSON-able results."""
    progress = progress or Progress(sections, enabled=False)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": "livepatch bench" + (" --quick" if quick else ""),
        "quick": quick,
        "machine": machine_info(),
        "settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
        },
    }
    asked_for_grind = 4_000 if tuple(sections) != SECTIONS and "callgrind" in sections else 0
    asked_for_shadow_grind = 8_000 if tuple(sections) != SECTIONS and "shadow" in sections else 0
    measures: dict[str, Callable[[ProgressFn], dict[str, Any]]] = {
        "hot_path": lambda p: measure_hot_path(settings.hot_number, settings.hot_repeat, p),
        # Slow (a valgrind run per figure): skipped by --quick unless asked for.
        "callgrind": lambda p: measure_callgrind(settings.callgrind_calls or asked_for_grind, p),
        # Its callgrind figures follow the callgrind section's setting.
        "shadow": lambda p: measure_shadow(
            settings.shadow_calls,
            settings.shadow_rounds,
            (settings.callgrind_calls or (asked_for_shadow_grind)) // 4,
            p,
        ),
        "swap_under_load": lambda p: measure_swap_under_load(settings, p),
        "control_plane": lambda p: measure_control_plane(settings, p),
        # In instructions too (valgrind, minutes) in a full run or when asked for.
        "load_check": lambda p: measure_load_check(
            settings.load_sizes,
            settings.load_repeat,
            p,
            instructions=bool(settings.callgrind_calls) or tuple(sections) != SECTIONS,
        ),
        "memory": lambda p: measure_memory(settings.memory_cycles, settings.memory_warmup, p),
        "fleet": lambda p: measure_fleet(settings, p),
        "peers": lambda p: measure_peers(settings, p),
        "savelive": lambda p: measure_savelive(settings, p),
    }
    for name in SECTIONS:
        if name in sections:
            section_started = time.perf_counter()
            results[name] = measures[name](progress.section(name))
            results[name]["elapsed_s"] = round(time.perf_counter() - section_started, 2)
    progress.close()
    results["goals"] = evaluate_goals(results)
    results["machine"]["load_average_end"] = _load_average()
    results["elapsed_s"] = round(time.perf_counter() - started, 2)
    return results


def _fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:{spec}}{unit}"
    return str(value)


def render_table(results: dict[str, Any]) -> str:
    """The results as the text table ``livepatch bench`` prints."""
    m = results["machine"]
    out = [
        f"{results['command']}: Python {m['python']} on {m['platform']}, "
        f"{m['cpu_count']} CPUs ({m['cpu_model'] or m['machine']}), "
        f"load average {m['load_average'][0] if m['load_average'] else '-'}; "
        f"engine.call accelerated: {'yes' if m['accelerated'] else 'no'}",
    ]
    hot = results.get("hot_path")
    if hot:
        out += [
            "",
            f"Hot path (ns per call, best of {hot['repeat']})",
            f"  {'rule':<10}{'direct':>10}{'engine.call':>13}{'extra':>9}{'overhead':>10}"
            f"{'pin call':>10}{'pin block':>11}{'pin extra':>11}",
        ]
        for name, row in hot["rules"].items():
            out.append(
                f"  {name:<10}{row['direct_ns']:>10.1f}{row['call_ns']:>13.1f}"
                f"{row['call_extra_ns']:>9.1f}{row['call_overhead_pct']:>9.1f}%"
                f"{row['pin_call_ns']:>10.1f}{row['pin_block_ns']:>11.1f}"
                f"{row['pin_block_extra_ns']:>11.1f}"
            )
    grind = results.get("callgrind")
    if grind:
        if not grind.get("available"):
            out += ["", f"Hot path in instructions (callgrind): {grind.get('reason')}"]
        else:
            out += [
                "",
                "Hot path in instructions per call (callgrind, PYTHONHASHSEED=0; "
                "extra over direct)",
                f"  {'rule':<10}{'direct':>9}{'call':>9}{'after pins':>12}{'rules.f':>9}"
                f"{'pin block':>11}{'C lock':>9}"
                "   (C lock: rules.f inside `with` a threading.Lock)",
            ]
            for name, row in grind["rules"].items():
                out.append(
                    f"  {name:<10}{row['direct_instructions']:>9,}"
                    f"{row['call_extra_instructions']:>+9,}"
                    f"{row['call_after_pins_extra_instructions']:>+12,}"
                    f"{row['pin_call_extra_instructions']:>+9,}"
                    f"{row['pin_block_extra_instructions']:>+11,}"
                    f"{row.get('lock_block_extra_instructions', 0):>+9,}"
                )
                out.append(
                    f"  {'':<10}{'':>9}{row['call_overhead_pct']:>+8.2f}%{'':>12}{'':>9}"
                    f"{row['pin_block_overhead_pct']:>+10.2f}%"
                    f"{row.get('lock_block_overhead_pct', 0):>+8.2f}%"
                )
    out += shadow_lines(results)
    swap = results.get("swap_under_load")
    if swap:
        lat = swap["latency_us"]
        seen = ", ".join(f"{k} {v:,}" for k, v in swap["seen"].items())
        out += [
            "",
            f"Swap under load ({swap['callers']} callers through pin, {swap['swaps']:,} swaps "
            f"in {swap['duration_s']:.1f} s)",
            f"  requests {swap['requests']:,} ({seen}); failed {swap['failed']}, "
            f"mixed versions {swap['mixed']}",
            f"  {'request latency':<24}{'p50':>10}{'p99':>10}{'max':>11}",
        ]
        for label, key in (("without swaps", "without_swaps"), ("with swaps", "with_swaps")):
            d = lat[key]
            out.append(
                f"  {label:<24}{_fmt(d['p50'], '.2f', ' us'):>10}{_fmt(d['p99'], '.2f', ' us'):>10}"
                f"{_fmt(d['max'], '.0f', ' us'):>11}"
            )
        out.append(f"  p99 ratio with/without swaps: {_fmt(swap['p99_ratio'], '.2f')}")
        s, k = swap["swap_ms"], swap["socket"]["swap_ms"]
        out += [
            f"  {'swap latency':<24}{'p50':>10}{'p99':>10}{'max':>11}",
            f"  {'in-process':<24}{_fmt(s['p50'], '.3f', ' ms'):>10}"
            f"{_fmt(s['p99'], '.3f', ' ms'):>10}{_fmt(s['max'], '.3f', ' ms'):>11}",
            f"  {'over the socket':<24}{_fmt(k['p50'], '.3f', ' ms'):>10}"
            f"{_fmt(k['p99'], '.3f', ' ms'):>10}{_fmt(k['max'], '.3f', ' ms'):>11}"
            f"   ({swap['socket']['swaps']:,} swaps, "
            f"{swap['socket']['traffic_per_s']:g} calls/s of traffic)",
        ]
    control = results.get("control_plane")
    if control:
        out += [
            "",
            f"Control plane under load ({control['clients']} clients calling classify flat out "
            "over the socket, swaps meanwhile)",
            f"  {'server':<34}{'calls/s':>10}{'swap p50':>11}{'p99':>10}{'max':>10}"
            f"{'CPU/call':>11}",
        ]
        for label, key in (
            ("livepatch engine", "engine"),
            ("bare asyncio JSON-lines", "reference"),
        ):
            row = control[key]
            d = row["swap_ms"]
            out.append(
                f"  {label:<34}{_fmt(row['calls_per_s'], ',d'):>10}"
                f"{_fmt(d['p50'], '.2f', ' ms'):>11}{_fmt(d['p99'], '.2f', ' ms'):>10}"
                f"{_fmt(d['max'], '.1f', ' ms'):>10}"
                f"{_fmt(row.get('server_cpu_us_per_call'), '.0f', ' us'):>11}"
            )
        rounds = control.get("round_ratios") or []
        if rounds:
            shown = ", ".join(_fmt(r, ".2f") for r in rounds)
            out.append(f"  ratio in each of the {len(rounds)} rounds (taking turns): {shown}")
        out.append(
            f"  throughput ratio engine / reference: {_fmt(control['throughput_ratio'], '.3f')}"
            "  (CPU/call: the server process's user + system time per call answered, which"
            " the rest of a busy machine moves less than calls/s)"
        )
    load = results.get("load_check")
    if load:
        out += [
            "",
            f"Load + check (ms, median of {load['repeat']})",
            f"  {'functions':>10}{'load':>10}{'check':>10}{'total':>10}{'compile+exec':>14}",
        ]
        for row in load["sizes"]:
            out.append(
                f"  {row['functions']:>10,}{row['load_ms']:>10.1f}{row['check_ms']:>10.1f}"
                f"{row['total_ms']:>10.1f}{row['python_compile_exec_ms']:>14.1f}"
            )
        out.append(
            f"  10,000 / 1,000: {_fmt(load['growth_10000_vs_1000'], '.2f', 'x')}; "
            f"CPython's compile + exec alone "
            f"{_fmt(load.get('python_compile_exec_growth'), '.2f', 'x')}, "
            f"the source's bytes {_fmt(load.get('source_growth'), '.2f', 'x')} (the floor)"
        )
        grind = load.get("instructions")
        if grind and grind.get("available"):
            first, last = grind["sizes"][0], grind["sizes"][-1]
            out += [
                "  in instructions (callgrind, PYTHONHASHSEED=0): "
                f"{first['load_check']:,} / {last['load_check']:,}, "
                f"growth {grind['growth']:.3f}x; CPython's compile alone "
                f"{grind['compile_growth']:.3f}x, our own passes and the module body "
                f"{grind['ours_growth']:.3f}x",
                f"  the parser's token array: {first['tokens']:,} tokens in "
                f"{first['parser_token_slots']:,} records / {last['tokens']:,} in "
                f"{last['parser_token_slots']:,} (it doubles): "
                f"{grind['token_slot_growth']:.1f}x the records for "
                f"{grind['token_growth']:.1f}x the tokens",
            ]
        elif grind:
            out.append(f"  in instructions: {grind.get('reason')}")
    memory = results.get("memory")
    if memory:
        out += [
            "",
            f"Memory ({memory['cycles']:,} load/check/swap/purge/unload cycles, "
            f"{memory['ms_per_cycle']:.1f} ms each)",
            f"  unloaded {memory['unloaded']:,}, freed {memory['freed']:,}; RSS "
            f"{memory['rss_start_mb']:.1f} MB -> {memory['rss_end_mb']:.1f} MB "
            f"({memory['rss_growth_mb']:+.2f} MB)",
        ]
    out += _fleet_lines(results.get("fleet"))
    peers = results.get("peers")
    if peers:
        out += [
            "",
            f"Peers (same {peers['module']['lines']}-line module; reload ms idle, then under "
            f"{peers['callers']} callers running requests of first() + second())",
            f"  {'tool':<20}{'idle p50':>10}{'loaded p50':>12}{'p99':>10}{'requests':>12}"
            f"{'mixed':>9}{'failed':>8}{'reloads that mixed':>20}",
        ]
        for row in peers["tools"].values():
            if not row.get("available"):
                out.append(f"  {row['tool']:<20}  ({row.get('reason', 'not available')})")
                continue
            r, idle = row["reload_ms"], row["reload_idle_ms"]
            out.append(
                f"  {row['tool']:<20}{_fmt(idle['p50'], '.2f'):>10}{_fmt(r['p50'], '.2f'):>12}"
                f"{_fmt(r['p99'], '.2f'):>10}{row['requests']:>12,}{row['mixed']:>9,}"
                f"{row['failed']:>8,}{row['reloads_with_mixed']:>13,} of {row['reloads']:<4,}"
            )
        own = peers["tools"]["livepatch"]
        if own.get("available"):
            sw = own["swap_ms"]
            out.append(
                f"  livepatch reload = load + check + swap; the swap alone: "
                f"p50 {_fmt(sw['p50'], '.3f', ' ms')}, p99 {_fmt(sw['p99'], '.3f', ' ms')}"
            )
    savelive = results.get("savelive")
    if savelive:
        out += ["", *render_savelive(savelive)]
    goals = results.get("goals", {})
    if goals:
        met = sum(g["met"] for g in goals.values())
        out += ["", f"Goals ({met}/{len(goals)} met)"]
        for g in goals.values():
            value = _fmt(g["value"], ".2f" if isinstance(g["value"], float) else "")
            out.append(
                f"  [{'ok' if g['met'] else 'MISS'}] {g['goal']}: {value} {g['unit']} "
                f"(goal {g['compare']} {g['limit']:g})"
            )
    out.append(f"\nelapsed {results['elapsed_s']:.1f} s")
    return "\n".join(out)


def _fleet_lines(fleet: dict[str, Any] | None) -> list[str]:
    if not fleet:
        return []
    local, zk = fleet["local"], fleet["zookeeper"]
    p, s = local["push_ms"], local["commit_skew_ms"]
    out = [
        "",
        f"Fleet push, local registry ({local['engines']} engines with traffic, "
        f"{local['pushes']} pushes, {local['aborted']} aborted)",
        f"  push (prepare + commit) p50 {_fmt(p['p50'], '.1f', ' ms')}, "
        f"p99 {_fmt(p['p99'], '.1f', ' ms')}; commit skew p50 {_fmt(s['p50'], '.2f', ' ms')}, "
        f"p99 {_fmt(s['p99'], '.2f', ' ms')} ({local['skews_measured']} pushes)",
        f"  call p99 over the socket: {_fmt(local['call_p99_ms_during'], '.2f', ' ms')} during "
        f"pushes, {_fmt(local['call_p99_ms_without'], '.2f', ' ms')} without "
        f"({_fmt(local['call_p99_ratio'], '.2f', 'x')}); {local['failed_calls']} failed calls",
    ]
    if "skipped" in zk:
        what = "a missed goal under CI" if zk.get("required") else "skipped"
        out.append(f"Fleet push, ZooKeeper: {what}: {zk['skipped']}")
        return out
    out.append("Fleet push, ZooKeeper (simulated members, each with its own session)")
    for size in zk["sizes"]:
        row = zk[str(size)]
        out.append(
            f"  {size:>6,} members: push median {row['push_s_median']:.3f} s, "
            f"max {row['push_s_max']:.3f} s, every push acked by >= {row['acks_min']:,}"
        )
    if 1_000 not in zk["sizes"]:
        out.append("  (the 1,000-member goals need the full run: livepatch bench --section fleet)")
    return out


def render_savelive(section: dict[str, Any]) -> list[str]:
    """The ``savelive`` block of the table: save-to-serving, then the broken saves."""
    out = [
        f"Save to serving ({section['saves']} saves per tool; ms from the write to the first "
        "call that ran the new code)",
        f"  method: {section['method']}",
        f"  {'tool':<26}{'p50':>10}{'p99':>10}{'max':>10}{'missed':>8}  how",
    ]
    tools = section["tools"].values()
    for row in tools:
        if not row.get("available"):
            out.append(f"  {row['tool']:<26}  ({row.get('reason', 'not available')})")
            continue
        d = row["save_to_serving_ms"]
        out.append(
            f"  {row['tool']:<26}{_fmt(d['p50'], '.1f'):>10}{_fmt(d['p99'], '.1f'):>10}"
            f"{_fmt(d['max'], '.1f'):>10}{row['missed']:>8}  {row['how']}"
        )
        step = row.get("watch_step_ms")
        if step and step["count"]:
            out.append(
                f"  {'':<26}  of which the watch's load + check + diff + swap: "
                f"p50 {_fmt(step['p50'], '.1f')}, p99 {_fmt(step['p99'], '.1f')} "
                "(the rest: watchfiles' debounce, and the event reaching it)"
            )
    out += [
        "  Broken saves, as observed (probes kept calling first() and second()):",
        f"  {'tool':<26}{'save':<17}{'old kept':>9}{'failed':>8}  {'applied':<24}"
        f"{'recovers':<9} what the tool said",
    ]
    for row in tools:
        if not row.get("available"):
            continue
        for broken in row["broken"].values():
            said = broken["tool_said"] or "(nothing)"
            if broken["errors"]:
                said += "; calls raised " + ", ".join(
                    f"{kind} x{n}" for kind, n in broken["errors"].items()
                )
            after = broken["after"] or {}
            applied = f"{broken['applied'] or '-'} ({after.get('first')}/{after.get('second')})"
            recovered = "no" if broken["recovered_ms"] is None else "yes"
            out.append(
                f"  {row['tool']:<26}{broken['save']:<17}"
                f"{'yes' if broken['old_code_kept_serving'] else 'no':>9}"
                f"{broken['failed_probes']:>8}  {applied:<24}{recovered:<9} {said}"
            )
    out.append(
        "  applied: what served after the save, first()/second(): old, new or the "
        "exception a call raised"
    )
    return out


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written (the results would be lost), or None."""
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        return "is a directory: name a file"
    if not parent.is_dir():
        return f"{parent} does not exist: create it or name a file elsewhere"
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return "cannot be written here: name a file you can write"
    # What access() cannot tell (/proc, /sys, a read-only mount, root's
    # bypass): open it as the end of the run will, keeping what it holds.
    existed = target.exists()
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc}): name a file you can write"
    if not existed:
        target.unlink(missing_ok=True)
    return None


def run_bench(args: argparse.Namespace) -> int:
    """The ``livepatch bench`` command: measure, print the table, write the JSON.

    Exit status 1 when a correctness goal (failed or mixed-version requests,
    unloaded versions not freed) is missed; timing goals never fail the run.
    """
    quick = bool(getattr(args, "quick", False))
    sections = tuple(getattr(args, "section", None) or SECTIONS)
    plot = getattr(args, "plot", None)
    if plot and "swap_under_load" not in sections:
        print(
            "livepatch: error: --plot draws the swap_under_load latencies: add "
            "--section swap_under_load (or leave --section out)",
            file=sys.stderr,
        )
        return 2
    if plot and not str(plot).lower().endswith(".svg"):
        print(f"livepatch: error: --plot {plot}: it writes SVG; name a .svg file", file=sys.stderr)
        return 2
    path = getattr(args, "json", None)
    for flag, target in (("--json", path), ("--plot", plot)):
        # Said now, not after minutes of measuring.
        problem = _unwritable(str(target)) if target else None
        if problem:
            print(f"livepatch: error: {flag} {target}: {problem}", file=sys.stderr)
            return 2
    settings = QUICK if quick else FULL
    progress = Progress(sections)
    results = run(settings, sections, progress, quick=quick)
    print(render_table(results))
    try:
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
                f.write("\n")
            print(f"wrote {path}")
        if plot:
            from .plot import write_plot

            write_plot(results, plot)
            print(f"wrote {plot}")
    except OSError as exc:  # it became unwritable during the run
        print(f"livepatch: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    missed = [k for k, g in results["goals"].items() if k in CORRECTNESS_GOALS and not g["met"]]
    return 1 if missed else 0
