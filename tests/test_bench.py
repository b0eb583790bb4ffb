"""``livepatch bench --quick`` as CI runs it: the JSON's shape and the correctness counts.

No timing is asserted anywhere here: the figures depend on the machine. What
is checked is that every section and goal is there with numbers where
numbers belong, and that livepatch never failed a request, never let one see
two versions, and freed every version it unloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from livepatch.bench import SECTIONS, Progress, peer_module, percentile, saved_module
from livepatch.bench.plot import BINS

PEERS = ("livepatch", "importlib_reload", "ipython_autoreload", "jurigged")
SAVELIVE = ("livepatch", "livepatch_no_quarantine", "jurigged", "ipython_autoreload")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _assert_numbers(block: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert _is_number(block[key]), f"{key} = {block[key]!r} is not a number"


def _assert_distribution(block: dict[str, Any]) -> None:
    assert block["count"] > 0
    _assert_numbers(block, "p50", "p99", "max", "mean")
    assert block["p50"] <= block["p99"] <= block["max"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    """One real ``livepatch bench --quick --json FILE`` run, shared by the tests."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "LIVEPATCH_RUNTIME_DIR"}
    plot = out.with_suffix(".svg")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "livepatch",
            "bench",
            "--quick",
            "--json",
            str(out),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout
    return json.loads(Path(out).read_text("utf-8")), proc.stdout, proc.stderr


pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


def test_top_level_shape(bench_run: tuple[dict[str, Any], str, str]) -> None:
    results, _, _ = bench_run
    assert results["schema"] == 1
    assert results["quick"] is True
    assert results["command"] == "livepatch bench --quick"
    for section in SECTIONS:
        assert isinstance(results[section], dict), section
        assert _is_number(results[section]["elapsed_s"])
    machine = results["machine"]
    assert isinstance(machine["python"], str) and machine["python"].startswith("3.")
    assert isinstance(machine["platform"], str)
    assert isinstance(machine["cpu_count"], int)
    assert isinstance(machine["accelerated"], bool)
    assert _is_number(results["elapsed_s"])


def test_goals_have_met_booleans(bench_run: tuple[dict[str, Any], str, str]) -> None:
    goals = bench_run[0]["goals"]
    expected = {
        "hot_path_trivial_extra_ns",
        "hot_path_classify_overhead_pct",
        "hot_path_pin_block_extra_ns",
        "hot_path_pin_block_classify_pct",
        "swap_failed_calls",
        "swap_mixed_calls",
        "swap_p99_ratio",
        "socket_swap_p99_ms",
        "control_swap_p99_ms",
        "control_call_throughput_ratio",
        "control_failed_calls",
        "load_check_1000_ms",
        "load_check_growth",
        "memory_not_freed",
        "memory_rss_growth_mb",
        "peers_livepatch_mixed",
        "peers_livepatch_failed",
        "fleet_commit_skew_p99_ms",
        "fleet_failed_calls",
        "shadow_p50_overhead_pct",
    }
    assert expected <= goals.keys()
    for name, goal in goals.items():
        assert isinstance(goal["met"], bool), name
        assert isinstance(goal["goal"], str) and goal["goal"], name
        _assert_numbers(goal, "value", "limit")
        assert goal["compare"] in ("<=", "==", ">=")


def test_sections_hold_numbers(bench_run: tuple[dict[str, Any], str, str]) -> None:
    results = bench_run[0]
    hot = results["hot_path"]
    assert isinstance(hot["accelerated"], bool)
    for rule in ("trivial", "classify"):
        _assert_numbers(
            hot["rules"][rule],
            "direct_ns",
            "call_ns",
            "pin_call_ns",
            "pin_block_ns",
            "call_extra_ns",
            "call_ratio",
            "call_overhead_pct",
            "pin_block_extra_ns",
            "pin_block_overhead_pct",
        )
    # --quick skips the valgrind runs, and says so
    grind = results["callgrind"]
    assert grind["available"] is False and "--section callgrind" in grind["reason"]
    shadow = results["shadow"]
    _assert_numbers(shadow, "p50_overhead_pct", "sampled", "compared")
    assert shadow["sampled"] > 0 and shadow["compared"] > 0
    assert shadow["p50_ns"]["without"] > 0 and shadow["p50_ns"]["with"] > 0
    assert shadow["callgrind"]["available"] is False
    swap = results["swap_under_load"]
    assert swap["callers"] == 8
    _assert_numbers(swap, "swaps", "requests", "p99_ratio", "duration_s")
    assert swap["requests"] > 0
    _assert_distribution(swap["latency_us"]["with_swaps"])
    _assert_distribution(swap["latency_us"]["without_swaps"])
    _assert_distribution(swap["swap_ms"])
    assert swap["swap_ms"]["count"] == swap["swaps"]
    _assert_distribution(swap["socket"]["swap_ms"])
    # Both versions served requests while the swaps went back and forth.
    assert set(swap["seen"]) <= {"rules@1", "rules@2"} and swap["seen"]

    control = results["control_plane"]
    assert control["clients"] == 8
    for server in ("engine", "reference"):
        row = control[server]
        _assert_numbers(row, "calls", "calls_per_s", "duration_s")
        assert row["calls"] > 0
        assert row["swaps"] == row["swap_ms"]["count"] > 0
        _assert_distribution(row["swap_ms"])
    _assert_numbers(control, "throughput_ratio")
    # The two servers took turns, a round each at a time, with every swap sent.
    assert control["rounds"] == len(control["round_ratios"]) == 3
    assert all(r is not None and r > 0 for r in control["round_ratios"])
    assert control["engine"]["swaps"] == control["reference"]["swaps"] == 50

    load = results["load_check"]
    assert [row["functions"] for row in load["sizes"]] == [100, 1_000, 10_000]
    for row in load["sizes"]:
        _assert_numbers(row, "load_ms", "check_ms", "total_ms", "python_compile_exec_ms")
    _assert_numbers(load, "growth_10000_vs_1000")

    memory = results["memory"]
    _assert_numbers(memory, "cycles", "rss_start_mb", "rss_end_mb", "rss_growth_mb")


def test_fleet_on_both_registries(bench_run: tuple[dict[str, Any], str, str]) -> None:
    results, stdout, _ = bench_run
    local, zk = results["fleet"]["local"], results["fleet"]["zookeeper"]
    assert local["aborted"] == 0 and local["failed_calls"] == 0
    assert local["skews_measured"] > 0
    _assert_numbers(local["push_ms"], "p50", "p99")
    _assert_numbers(local["commit_skew_ms"], "p50", "p99")
    assert "Fleet push, local registry" in stdout
    if "skipped" in zk:  # only off CI: .ci/run installs ZooKeeper
        assert not os.environ.get("CI") and zk["required"] is False
        assert "Fleet push, ZooKeeper: skipped" in stdout
        return
    for size in zk["sizes"]:
        assert zk[str(size)]["acks_min"] == size  # every simulated member acked
        _assert_numbers(zk[str(size)], "push_s_median", "push_s_max")
    assert "1,000-member goals need the full run" in stdout


def test_peers_side_by_side(bench_run: tuple[dict[str, Any], str, str]) -> None:
    peers = bench_run[0]["peers"]
    assert tuple(peers["tools"]) == PEERS
    jurigged_installed = importlib.util.find_spec("jurigged") is not None
    for key, row in peers["tools"].items():
        if key == "jurigged" and not jurigged_installed:
            assert row == {"tool": "jurigged", "available": False, "reason": "not installed"}
            continue
        assert row["available"] is True, row
        assert row["reloads"] >= 1
        assert row["not_applied"] == 0, f"{key}: a reload did not take"
        _assert_distribution(row["reload_ms"])
        _assert_distribution(row["reload_idle_ms"])
        _assert_numbers(row, "requests", "mixed", "failed", "duration_s", "reloads_with_mixed")
        assert row["requests"] > 0
        assert 0 <= row["reloads_with_mixed"] <= row["reloads"]
    own = peers["tools"]["livepatch"]
    _assert_distribution(own["swap_ms"])
    assert own["retired_freed"] == own["retired"]


def test_savelive_side_by_side_and_broken_saves_observed(
    bench_run: tuple[dict[str, Any], str, str],
) -> None:
    section = bench_run[0]["savelive"]
    assert tuple(section["tools"]) == SAVELIVE
    assert "autoreload reloads before each cell" in section["tools"]["ipython_autoreload"]["how"]
    for key, row in section["tools"].items():
        # jurigged is in the test extra: CI measures it, never "not installed".
        assert row["available"] is True, row
        assert row["missed"] == 0, (key, row["missed_saves"])
        _assert_distribution(row["save_to_serving_ms"])
        assert row["save_to_serving_ms"]["count"] == section["saves"]
        assert row["probe_error"] is None
        assert tuple(row["broken"]) == ("syntax_error", "unresolved_name")
        for name, broken in row["broken"].items():
            where = f"{key} {name}"
            seen = broken["seen"]
            # The row is what the probes saw after the save, nothing else.
            assert broken["reacted"] is True, where
            assert broken["probes"] == sum(seen.values()) > 0, where
            assert broken["old_code_kept_serving"] is (set(seen) == {"old/old"}), where
            raised = sum(n for pair, n in seen.items() if set(pair.split("/")) - {"old", "new"})
            assert broken["failed_probes"] == raised, where
            after = broken["after"]
            assert f"{after['first']}/{after['second']}" in seen, where
            assert broken["error_shown"] is (broken["tool_said"] is not None), where
            assert broken["recovered_ms"] is not None, f"{where}: the next good save never served"
    for key in ("livepatch", "livepatch_no_quarantine"):
        own = section["tools"][key]["broken"]
        assert all(b["old_code_kept_serving"] and b["applied"] == "none" for b in own.values())
        assert "SyntaxError" in own["syntax_error"]["tool_said"]
        assert "undefined_offset" in own["unresolved_name"]["tool_said"]
    # The peers patch the unresolved name in; it fails only when called, as observed.
    failing = [
        key
        for key in ("jurigged", "ipython_autoreload")
        if "NameError" in section["tools"][key]["broken"]["unresolved_name"]["errors"]
    ]
    assert failing, "no peer was seen raising NameError after the unresolved save"
    livepatch_row = section["tools"]["livepatch"]
    _assert_distribution(livepatch_row["watch_step_ms"])


SVG = "{http://www.w3.org/2000/svg}"


def test_plot_draws_the_measured_latencies(bench_run: tuple[dict[str, Any], str, str]) -> None:
    results, stdout, _ = bench_run
    found = re.search(r"^wrote (.+\.svg)$", stdout, re.M)
    assert found, stdout[-500:]
    root = ElementTree.parse(found.group(1)).getroot()  # well-formed XML, an <svg>
    assert root.tag == f"{SVG}svg"
    swap = results["swap_under_load"]
    hist = swap["latency_histogram"]
    assert len(hist["edges_us"]) == BINS + 1
    assert hist["edges_us"] == sorted(hist["edges_us"])
    drawn = {
        p.get("data-series"): p
        for p in root.iter(f"{SVG}polyline")
        if p.get("class") == "histogram"
    }
    assert set(drawn) == {"with_swaps", "without_swaps"}
    for key, poly in drawn.items():
        series = hist["series"][key]
        # The histogram holds the very samples the section's distribution came from.
        assert series["count"] == sum(series["counts"]) == swap["latency_us"][key]["count"] > 0
        assert series["p50_us"] == swap["latency_us"][key]["p50"]
        assert series["p99_us"] == swap["latency_us"][key]["p99"]
        counts = [int(c) for c in (poly.get("data-counts") or "").split()]
        assert counts and counts == series["counts"][: len(counts)]
        # Two points per bin (a step), each as high as the bin's share of the requests.
        ys = [float(point.split(",")[1]) for point in (poly.get("points") or "").split()][::2]
        assert len(ys) == len(counts)
        tallest = max(range(len(counts)), key=counts.__getitem__)
        lowest = min(range(len(counts)), key=counts.__getitem__)
        assert counts[tallest] > counts[lowest]
        per_count = (ys[lowest] - ys[tallest]) / (counts[tallest] - counts[lowest])
        assert per_count > 0  # more requests, higher up
        bottom = ys[tallest] + per_count * counts[tallest]
        for y, count in zip(ys, counts, strict=True):
            assert abs((bottom - y) - per_count * count) < 0.3, (key, y, count)
        tail = [
            p
            for p in root.iter(f"{SVG}polyline")
            if p.get("class") == "tail" and p.get("data-series") == key
        ]
        assert len(tail) == 1


def test_plot_needs_the_swap_section_and_an_svg_name(tmp_path: Path) -> None:
    for args, message in (
        (["--section", "memory", "--plot", str(tmp_path / "a.svg")], "--section swap_under_load"),
        (["--section", "swap_under_load", "--plot", str(tmp_path / "a.png")], "name a .svg"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "livepatch", "bench", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not list(tmp_path.iterdir())


def test_an_output_file_that_cannot_be_written_is_said_before_measuring(tmp_path: Path) -> None:
    # Before: the whole run, then "internal error: FileNotFoundError".
    missing = tmp_path / "no-such-dir"
    for args, message in (
        (["--json", str(missing / "r.json")], f"{missing} does not exist"),
        (["--json", str(tmp_path)], "is a directory"),
        (["--plot", str(missing / "p.svg")], f"{missing} does not exist"),
        # Its directory exists and access() says yes (root), yet nothing can
        # be created there: it was found out after the whole run.
        (["--json", "/proc/livepatch-bench.json"], "cannot be written (No such file"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "livepatch", "bench", "--section", "swap_under_load", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert done.stdout == ""  # nothing was measured
    kept = tmp_path / "kept.json"
    kept.write_text("earlier results\n")
    from livepatch.bench.report import _unwritable

    assert _unwritable(str(kept)) is None and kept.read_text() == "earlier results\n"
    assert _unwritable(str(tmp_path / "new.json")) is None
    assert not (tmp_path / "new.json").exists()  # the check leaves nothing behind


def test_saved_module_versions() -> None:
    good: dict[str, Any] = {}
    exec(compile(saved_module(4), "saved.py", "exec"), good)
    assert (good["first"](), good["second"]()) == (4, 4)
    with pytest.raises(SyntaxError):
        compile(saved_module(5, "syntax_error"), "saved.py", "exec")
    unresolved: dict[str, Any] = {}
    exec(compile(saved_module(6, "unresolved_name"), "saved.py", "exec"), unresolved)
    assert unresolved["first"]() == 6
    with pytest.raises(NameError, match="undefined_offset"):
        unresolved["second"]()


def test_livepatch_never_fails_or_mixes(bench_run: tuple[dict[str, Any], str, str]) -> None:
    results = bench_run[0]
    swap = results["swap_under_load"]
    assert swap["failed"] == 0, swap["errors"]
    assert swap["mixed"] == 0
    own = results["peers"]["tools"]["livepatch"]
    assert own["failed"] == 0, own["errors"]
    assert own["mixed"] == 0
    assert own["reloads_with_mixed"] == 0
    control = results["control_plane"]["engine"]
    assert control["failed_calls"] == 0 and control["swap_errors"] == 0
    memory = results["memory"]
    assert memory["unloaded"] == memory["cycles"]
    assert memory["freed"] == memory["unloaded"]


def test_table_and_no_progress_bar_off_a_terminal(
    bench_run: tuple[dict[str, Any], str, str],
) -> None:
    _, stdout, stderr = bench_run
    for title in (
        "Hot path",
        "Swap under load",
        "Control plane under load",
        "Load + check",
        "Memory",
        "Peers",
        "Save to serving",
        "Broken saves, as observed",
        "Goals",
    ):
        assert title in stdout
    assert "\r" not in stderr  # stderr is a pipe here: no progress bar


def test_bench_module_does_not_import_ipython() -> None:
    code = "import sys, livepatch.bench, livepatch.cli; print('IPython' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "False"


def test_helpers() -> None:
    assert percentile([], 99) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    namespace: dict[str, Any] = {}
    exec(compile(peer_module(7, helpers=8), "peer.py", "exec"), namespace)
    assert namespace["first"](1)[0] == 7
    assert namespace["second"](1)[0] == 7
    progress = Progress(["a"], enabled=False)
    progress.section("a")(0.5)
    progress.close()
