"""The goals every figure is reported against, each with ``met``."""

from __future__ import annotations

from typing import Any

# Goals


def _goal(
    description: str, value: float | int | None, limit: float, unit: str, compare: str = "<="
) -> dict[str, Any]:
    if value is None:
        met = False
    elif compare == "==":
        met = value == limit
    elif compare == ">=":
        met = value >= limit
    else:
        met = value <= limit
    return {
        "goal": description,
        "limit": limit,
        "compare": compare,
        "unit": unit,
        "value": value,
        "met": met,
    }


def evaluate_goals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The DESIGN.md goals of the sections in ``results``, each with ``met``."""
    goals: dict[str, dict[str, Any]] = {}
    hot = results.get("hot_path")
    if hot:
        rules = hot["rules"]
        goals["hot_path_trivial_extra_ns"] = _goal(
            "engine.call on a trivial rule: extra time over a direct call",
            rules["trivial"]["call_extra_ns"],
            60,
            "ns",
        )
        goals["hot_path_classify_overhead_pct"] = _goal(
            "engine.call on the bundled classify: overhead over a direct call",
            rules["classify"]["call_overhead_pct"],
            1,
            "%",
        )
        goals["hot_path_pin_block_extra_ns"] = _goal(
            "a whole `with engine.pin(slot) as rules: rules.f(x)` block on a trivial rule: "
            "extra time over calling f(x)",
            rules["trivial"]["pin_block_extra_ns"],
            150,
            "ns",
        )
        goals["hot_path_pin_block_classify_pct"] = _goal(
            "a whole pin block around the bundled classify: overhead over a direct call",
            rules["classify"]["pin_block_overhead_pct"],
            2,
            "%",
        )
    grind = results.get("callgrind")
    if grind and grind.get("available"):
        row = grind["rules"]["trivial"]
        before, after = row["call_extra_instructions"], row["call_after_pins_extra_instructions"]
        classify = grind["rules"]["classify"]
        goals["callgrind_call_classify"] = _goal(
            "engine.call on classify, extra instructions over a direct call",
            classify["call_overhead_pct"],
            1,
            "%",
        )
        goals["callgrind_pin_block_classify"] = _goal(
            "whole pin block on classify, extra instructions over a direct call "
            "(for scale, `with` a C lock around rules.f: "
            f"{classify.get('lock_block_overhead_pct')} %)",
            classify["pin_block_overhead_pct"],
            2,
            "%",
        )
        goals["callgrind_call_after_pins"] = _goal(
            "engine.call after pins were used: extra instructions / before any pin",
            round(after / before, 3) if before else None,
            # An empty pin stack is read where None was: about a dozen
            # instructions, well under a nanosecond; a sticky flag was +700.
            1.02,
            "x",
        )
    swap = results.get("swap_under_load")
    if swap:
        goals["swap_failed_calls"] = _goal(
            "requests that failed while swapping", swap["failed"], 0, "requests", "=="
        )
        goals["swap_mixed_calls"] = _goal(
            "requests that saw two versions while swapping", swap["mixed"], 0, "requests", "=="
        )
        goals["swap_p99_ratio"] = _goal(
            "request latency p99 during swaps / p99 without swaps", swap["p99_ratio"], 1.5, "x"
        )
        goals["socket_swap_p99_ms"] = _goal(
            "swap over the control socket, request to reply, p99",
            swap["socket"]["swap_ms"]["p99"],
            2,
            "ms",
        )
    control = results.get("control_plane")
    if control:
        goals["control_swap_p99_ms"] = _goal(
            f"swap over the socket while {control['clients']} clients call flat out: "
            "request to reply, p99",
            control["engine"]["swap_ms"]["p99"],
            2,
            "ms",
        )
        goals["control_call_throughput_ratio"] = _goal(
            f"socket calls/s under {control['clients']} clients / a bare asyncio "
            "JSON-lines server's",
            control["throughput_ratio"],
            0.5,
            "x",
            ">=",
        )
        goals["control_failed_calls"] = _goal(
            "socket calls that failed under load",
            control["engine"]["failed_calls"] + control["engine"]["swap_errors"],
            0,
            "requests",
            "==",
        )
    load = results.get("load_check")
    if load:
        by_size = {row["functions"]: row["total_ms"] for row in load["sizes"]}
        if 1_000 in by_size:
            goals["load_check_1000_ms"] = _goal(
                "load + check of a 1,000-function module", by_size[1_000], 100, "ms"
            )
        if load["growth_10000_vs_1000"] is not None:
            goals["load_check_growth"] = _goal(
                "load + check of 10,000 functions / of 1,000 functions",
                load["growth_10000_vs_1000"],
                10,
                "x",
            )
        grind = load.get("instructions")
        if grind and grind.get("available"):
            goals["load_check_growth_instructions"] = _goal(
                "load + check of 10,000 functions / of 1,000 functions, in instructions "
                f"(CPython's compile alone: {grind['compile_growth']:.3f}x)",
                grind["growth"],
                10,
                "x",
            )
    memory = results.get("memory")
    if memory:
        goals["memory_not_freed"] = _goal(
            "unloaded versions not freed", memory["not_freed"], 0, "versions", "=="
        )
        goals["memory_rss_growth_mb"] = _goal(
            f"resident memory growth over {memory['cycles']} cycles",
            memory["rss_growth_mb"],
            10,
            "MB",
        )
    peers = results.get("peers")
    if peers:
        own = peers["tools"]["livepatch"]
        goals["peers_livepatch_mixed"] = _goal(
            "livepatch requests that saw two versions next to the peers",
            own["mixed"],
            0,
            "requests",
            "==",
        )
        goals["peers_livepatch_failed"] = _goal(
            "livepatch requests that failed next to the peers",
            own["failed"],
            0,
            "requests",
            "==",
        )
    fleet = results.get("fleet")
    if fleet:
        _fleet_goals(goals, fleet)
    from .shadow import shadow_goals  # the section's own goal, next to its measurement

    goals.update(shadow_goals(results))
    return goals


def _fleet_goals(goals: dict[str, dict[str, Any]], fleet: dict[str, Any]) -> None:
    local, zk = fleet["local"], fleet["zookeeper"]
    goals["fleet_commit_skew_p99_ms"] = _goal(
        f"commit skew over {local['engines']} local engines (first to last member's swap), p99",
        local["commit_skew_ms"]["p99"] if local["skews_measured"] else None,
        20,
        "ms",
    )
    goals["fleet_failed_calls"] = _goal(
        "calls that failed on fleet members during pushes",
        local["failed_calls"],
        0,
        "requests",
        "==",
    )
    if zk.get("required"):
        goals["fleet_zookeeper_available"] = _goal(
            f"a ZooKeeper server to measure (CI installs it): {zk['skipped']}", 0, 1, "", ">="
        )
    small, large = zk.get("10"), zk.get("1000")
    if large:
        goals["fleet_zk_1000_push_s"] = _goal(
            "a push to 1,000 simulated ZooKeeper members, median",
            large["push_s_median"],
            5,
            "s",
        )
    if small and large:
        goals["fleet_zk_1000_vs_10"] = _goal(
            "a push to 1,000 ZooKeeper members / a push to 10",
            round(large["push_s_median"] / small["push_s_median"], 2),
            10,
            "x",
        )


#: Goals about correctness, not speed: a miss makes ``livepatch bench`` exit 1.
CORRECTNESS_GOALS = frozenset(
    {
        "swap_failed_calls",
        "swap_mixed_calls",
        "control_failed_calls",
        "memory_not_freed",
        "peers_livepatch_mixed",
        "peers_livepatch_failed",
        "fleet_failed_calls",
        "fleet_zookeeper_available",
    }
)
