"""The ``shadow`` verb: run a checked version beside the active one on live calls.

Registered at import (see :mod:`livepatch.commands`), so the CLI
(``livepatch shadow``), the shell and ``%hotswap shadow`` all offer it:

    shadow spam@3 --sample 0.1 --for 10   # compare for 10 s, then the report
    shadow spam@3                         # start; it runs until stopped
    shadow report spam                    # the run so far (or the last one)
    shadow stop spam                      # end it: the final report

The engine does the work (:mod:`livepatch.shadow`); this module asks for it
over the protocol, waits when told to, and renders the report as text.
Nothing here imports the engine core.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..client import Client
from .runner import CommandResult, CommandRunner, register_handler
from .spec import VERSION_ID, Arg, ArgKind, CommandSpec, Option, ParsedCommand, ShellUsageError
from .spec import register as register_spec

__all__ = [
    "SHADOW",
    "default_slot",
    "render_shadow",
    "run_state",
    "shadow_params",
    "wait_for_end",
]

_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"
_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_RESET = "\x1b[0m"

#: How long past ``--for`` a client waits for the engine to end the run
#: before it stops the run itself.
_GRACE_S = 10.0

SHADOW = register_spec(
    CommandSpec(
        "shadow",
        "run a checked version beside the active one on live calls, and compare",
        "What would VERSION change? The engine runs VERSION (checked, not active)\n"
        "on a sample of its slot's live calls, after the active version has\n"
        "answered them, on a background queue: callers get the active version's\n"
        "results and never wait (a full queue drops samples, counted). The report:\n"
        "calls compared, how many differed, the first differing inputs with both\n"
        "outputs, errors only VERSION raised, and both versions' latency. With\n"
        "--for, waits and prints the report; without, the run goes on until\n"
        "`shadow stop SLOT` (`shadow report SLOT` shows it so far). It also ends\n"
        "when the slot's active version changes or VERSION is purged. One run per\n"
        "slot; each start and end is journaled.",
        args=(
            Arg("what", "VERSION|stop|report", ArgKind.VERSION),
            Arg("slot", "SLOT", ArgKind.SLOT, optional=True),
        ),
        options=(
            Option(
                "--sample",
                "sample",
                "FRACTION",
                ArgKind.FRACTION,
                "the fraction of the slot's calls compared (default: 0.1)",
            ),
            Option(
                "--for",
                "for",
                "SECONDS",
                ArgKind.SECONDS,
                "run for SECONDS, then print the report (default: until `shadow stop`)",
            ),
            Option(
                "--queue",
                "queue",
                "N",
                ArgKind.COUNT,
                "sampled calls that may wait for VERSION; more are dropped (default: 1000)",
            ),
        ),
        examples=(
            "shadow spam@2 --sample 0.1 --for 10",
            "shadow spam@2",
            "shadow report spam",
            "shadow stop spam",
        ),
    )
)


def shadow_params(what: str, slot: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The protocol params of ``shadow WHAT [SLOT]`` (``options``: sample,
    for, queue); :class:`ShellUsageError` for a line that cannot be meant."""
    if what in ("stop", "report"):
        if any(options.get(k) is not None for k in ("sample", "for", "queue")):
            raise ShellUsageError(f"shadow {what} takes only a slot: shadow {what} [SLOT]")
        return {"action": what, **({"slot": slot} if slot else {})}
    if not VERSION_ID.fullmatch(what):
        raise ShellUsageError(
            f"shadow: expected a version (spam@2), `stop` or `report`, got {what!r}; "
            f"usage: {SHADOW.usage()}"
        )
    if slot is not None:
        raise ShellUsageError(f"shadow {what}: the slot is the version's own; drop {slot!r}")
    params: dict[str, Any] = {"action": "start", "version": what}
    for option, param in (("sample", "sample"), ("for", "for_s"), ("queue", "queue")):
        value = options.get(option)
        if value is not None:
            params[param] = int(value) if option == "queue" else float(value)
    sample = params.get("sample")
    if sample is not None and not 0 < sample <= 1:  # the magics parse their own options
        raise ShellUsageError(
            f"--sample {sample:g}: expected a fraction above 0 and at most 1 (0.1 is 10 %)"
        )
    if params.get("for_s") == 0:
        raise ShellUsageError("--for 0: give a number of seconds above 0, or leave it out")
    _within_the_protocols_bounds(params)
    return params


#: What each bound param is called on the command line, and what it counts.
_FLAGS = {
    "sample": ("--sample", "a fraction"),
    "for_s": ("--for", "seconds"),
    "queue": ("--queue", "calls"),
}


def _within_the_protocols_bounds(params: dict[str, Any]) -> None:
    """The engine's own bounds (the protocol's schema), said as the flag the
    user typed and exit 2, instead of the engine's ``param 'for_s'`` (exit 1)."""
    from ..protocol.schema import METHODS

    for param, (flag, unit) in _FLAGS.items():
        value = params.get(param)
        if value is None:
            continue
        spec = METHODS["shadow"][param]
        low = spec.minimum if spec.minimum is not None else -math.inf
        high = spec.maximum if spec.maximum is not None else math.inf
        if not (math.isfinite(value) and low <= value <= high):
            raise ShellUsageError(
                f"{flag} {_shown(value)}: use {unit} from {_shown(low)} to {_shown(high)}"
            )


def _shown(x: float) -> str:
    """``1,000,000`` for a whole number, ``0.001`` otherwise."""
    return f"{int(x):,}" if math.isfinite(x) and x == int(x) and abs(x) >= 1 else f"{x:g}"


def default_slot(status: dict[str, Any], what: str) -> str:
    """The slot ``shadow stop``/``report`` mean without one: the only slot,
    or the only Python slot (the demo's ``spam`` next to ``spam_native``)."""
    slots = status["slots"]
    python = [s for s in slots if s.get("kind", "python") == "python"]
    for choice in (slots, python):
        if len(choice) == 1:
            return str(choice[0]["name"])
    names = ", ".join(str(s["name"]) for s in slots) or "none"
    raise ShellUsageError(f"which slot? the engine has {names}: shadow {what} SLOT")


def wait_for_end(
    client: Client,
    report: dict[str, Any],
    *,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait for a run started with ``for_s`` to end (the engine ends it),
    polling its report; Ctrl-C stops it. Returns the final report."""
    slot = str(report["slot"])
    deadline = time.monotonic() + float(report.get("for_s") or 0) + _GRACE_S
    period = min(1.0, max(0.1, float(report.get("for_s") or 1) / 20))
    try:
        while report.get("state") != "ended":
            if time.monotonic() > deadline:
                # The engine should have ended it: end it ourselves.
                return dict(client.request("shadow", {"action": "stop", "slot": slot}))
            time.sleep(period)  # a poll of the engine with a deadline
            report = dict(client.request("shadow", {"action": "report", "slot": slot}))
            if on_update is not None:
                on_update(report)
    except KeyboardInterrupt:
        return dict(client.request("shadow", {"action": "stop", "slot": slot}))
    return report


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} µs"


def _call_text(finding: dict[str, Any]) -> str:
    parts = [json.dumps(a, ensure_ascii=False) for a in finding.get("args") or []]
    parts += [
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (finding.get("kwargs") or {}).items()
    ]
    text = f"{finding.get('symbol')}({', '.join(parts)})"
    return text if len(text) <= 300 else text[:299] + "…"


def _times(finding: dict[str, Any]) -> str:
    times = int(finding.get("times") or 1)
    return f"  (x{times:,})" if times > 1 else ""


def _value_text(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"$error"}:
        return f"raised: {value['$error']}"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 300 else text[:299] + "…"


def run_state(report: Mapping[str, Any]) -> str:
    """Where a run is: ``running for 3.2 s of 10``, or how and when it ended."""
    if report["state"] == "running":
        state = f"running for {report['elapsed_s']:.1f} s"
        if report.get("for_s"):
            state += f" of {report['for_s']:g}"
        return state
    return f"ended after {report['elapsed_s']:.1f} s: {report.get('reason')}"


def render_shadow(report: dict[str, Any], *, color: bool = False) -> str:
    """A shadow run's report as text (what the CLI and the shell print)."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    cand, active = report["candidate"], report["active"]
    state = run_state(report)
    lines = [
        paint(
            f"shadow {cand} against {active} ({report['sample']:.0%} of "
            f"{report['slot']}'s calls), {state}",
            _BOLD,
        )
    ]
    differed = report["differed"]
    only = report["candidate_errors"]
    summary = (
        f"  {_count(report['compared'], 'call')} compared: "
        + paint(f"{differed:,} differed", _RED if differed else _GREEN)
        + ", "
        + paint(f"{only:,} raised only by {cand}", _RED if only else _GREEN)
        + f", {report['timeouts']:,} past the {report['timeout_s']:g} s deadline"
    )
    lines.append(summary)
    lines.append(
        f"  {_count(report['sampled'], 'call')} sampled, "
        f"{report['dropped']:,} dropped (the queue holds {report['queue']:,})"
        + (f", {report['pending']:,} waiting" if report["pending"] else "")
        + (f", {report['both_raised']:,} raised by both" if report.get("both_raised") else "")
    )
    latency = report.get("latency") or {}
    width = max(len(cand), len(active))
    lines.append(paint(f"  {'latency':<{width}}  {'p50':>11}  {'p99':>11}", _DIM))
    for vid in (active, cand):
        lat = latency.get(vid) or {}
        p50, p99 = _us(lat.get("p50_us")), _us(lat.get("p99_us"))
        lines.append(f"  {vid:<{width}}  {p50:>11}  {p99:>11}")
    differences = report.get("differences") or []
    if differences:
        lines.append(paint(f"first {len(differences)} differing calls:", _BOLD))
        for d in differences:
            lines.append(f"  {_call_text(d)}{_times(d)}")
            lines.append(f"    {active:<{width}}  {_value_text(d.get('active'))}")
            lines.append(f"    {cand:<{width}}  " + paint(_value_text(d.get("candidate")), _RED))
    errors = report.get("errors") or []
    if errors:
        lines.append(paint(f"errors only {cand} raised (first {len(errors)}):", _BOLD))
        for e in errors:
            lines.append(f"  {_call_text(e)}{_times(e)}")
            lines.append(f"    {active:<{width}}  {_value_text(e.get('active'))}")
            lines.append(f"    {cand:<{width}}  " + paint(str(e.get("error")), _RED))
    return "\n".join(lines)


def _shadow(runner: CommandRunner, parsed: ParsedCommand) -> CommandResult:
    what, slot = parsed.string("what"), parsed.optional("slot")
    params = shadow_params(
        what,
        slot,
        {k: parsed.values.get(k) for k in ("sample", "for", "queue")},
    )
    if params["action"] != "start" and "slot" not in params:
        params["slot"] = default_slot(runner.client.status(), what)
    report: dict[str, Any] = dict(runner.client.request("shadow", params))
    if params["action"] == "start":
        if params.get("for_s") is None:
            s = report["slot"]
            text = (
                f"shadowing {report['candidate']} against {report['active']} on "
                f"{report['sample']:.0%} of {s}'s calls; "
                f"{runner.hint(f'shadow report {s}')} shows it so far, "
                f"{runner.hint(f'shadow stop {s}')} ends it"
            )
            return CommandResult(parsed.text, True, text, data=report)
        report = wait_for_end(runner.client, report)
    return CommandResult(parsed.text, True, render_shadow(report, color=runner.color), data=report)


register_handler("shadow", _shadow)
