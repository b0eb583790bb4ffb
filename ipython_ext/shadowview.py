# IPython's display helpers are untyped; the rest of the module is checked strictly.
# mypy: disable-error-code="no-untyped-call"

"""``%hotswap shadow``: a shadow run's report as HTML (and as text).

The engine does the run (:mod:`livepatch.shadow`); the command layer
(:mod:`livepatch.commands.shadowcmd`) knows its parameters and its text.
Here: the HTML view, with both outputs of each differing call side by side,
and the magic's verb, which with ``--for`` shows the run live in the cell
(a display handle updated in place) until the engine ends it.

Colours are the renderers' usual ones, which :func:`~ipython_ext.display.themed`
turns into theme-following variables, so the report reads in dark themes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from IPython.core.error import UsageError

from livepatch.client import Client
from livepatch.commands.shadowcmd import (
    default_slot,
    render_shadow,
    run_state,
    shadow_params,
    wait_for_end,
)
from livepatch.commands.spec import ShellUsageError

from .display import View, themed

__all__ = ["ShadowView", "html_shadow", "shadow_verb"]

_MONO: Final = "var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace)"
_TABLE: Final = f"border-collapse:collapse;font-family:{_MONO};font-size:12px;margin:4px 0"
_TD: Final = (
    "padding:2px 8px;text-align:left;vertical-align:top;white-space:pre-wrap;"
    "border-bottom:1px solid rgba(128,128,128,0.35);max-width:420px;word-break:break-word"
)
_TH: Final = _TD + ";font-weight:bold"
_HEAD: Final = f"font-family:{_MONO};font-size:12px;margin:2px 0"
# The renderers' colours (display.themed maps each to its theme-following role).
_RED: Final = "#c53030"
_GREEN: Final = "#2f855a"
_DIM: Final = "#8a8a8a"
_BLUE: Final = "#2b6cb0"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _json(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"$error"}:
        return f"raised: {value['$error']}"
    text = json.dumps(value, ensure_ascii=False, indent=1)
    return text if len(text) <= 2000 else text[:1999] + "…"


def _call(finding: Mapping[str, Any]) -> str:
    parts = [json.dumps(a, ensure_ascii=False) for a in finding.get("args") or []]
    parts += [
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (finding.get("kwargs") or {}).items()
    ]
    times = int(finding.get("times") or 1)
    more = f"\n(x{times:,})" if times > 1 else ""
    return f"{finding.get('symbol')}({', '.join(parts)}){more}"


def _count(n: int, good_when_zero: bool = True) -> str:
    color = (_GREEN if n == 0 else _RED) if good_when_zero else "inherit"
    return f'<b style="color:{color}">{n:,}</b>'


def _rows(findings: Sequence[Mapping[str, Any]], active: str, candidate: str, kind: str) -> str:
    head = (
        f'<tr><th style="{_TH}">input</th><th style="{_TH}">{_e(active)}</th>'
        f'<th style="{_TH};color:{_RED}">{_e(candidate)}</th></tr>'
    )
    body = []
    for f in findings:
        theirs = f.get("candidate") if kind == "differed" else f.get("error")
        shown = _json(theirs) if kind == "differed" else str(theirs)
        body.append(
            f'<tr><td style="{_TD}">{_e(_call(f))}</td>'
            f'<td style="{_TD}">{_e(_json(f.get("active")))}</td>'
            f'<td style="{_TD};color:{_RED}">{_e(shown)}</td></tr>'
        )
    return f'<table class="lp-shadow-{kind}" style="{_TABLE}">{head}{"".join(body)}</table>'


def html_shadow(report: Mapping[str, Any]) -> str:
    """A shadow run's report as an HTML fragment (wrap it with ``themed``)."""
    cand, active = report["candidate"], report["active"]
    state = run_state(report)
    parts = [
        f'<div class="lp-shadow" style="{_HEAD}"><b>shadow {_e(cand)}</b> against '
        f"<b>{_e(active)}</b> ({report['sample']:.0%} of {_e(report['slot'])}'s calls), "
        f'<span style="color:{_BLUE}">{_e(state)}</span></div>',
        f'<div style="{_HEAD}">{_count(report["compared"], False)} compared: '
        f"{_count(report['differed'])} differed, "
        f"{_count(report['candidate_errors'])} raised only by {_e(cand)}, "
        f"{_count(report['timeouts'])} past the {report['timeout_s']:g} s deadline</div>",
        f'<div style="{_HEAD};color:{_DIM}">{report["sampled"]:,} sampled, '
        f"{report['dropped']:,} dropped (the queue holds {report['queue']:,})"
        + (f", {report['pending']:,} waiting" if report.get("pending") else "")
        + "</div>",
    ]
    latency = report.get("latency") or {}
    rows = "".join(
        f'<tr><td style="{_TD}">{_e(vid)}</td>'
        f'<td style="{_TD};text-align:right">{_us((latency.get(vid) or {}).get("p50_us"))}</td>'
        f'<td style="{_TD};text-align:right">{_us((latency.get(vid) or {}).get("p99_us"))}</td>'
        "</tr>"
        for vid in (active, cand)
    )
    parts.append(
        f'<table class="lp-shadow-latency" style="{_TABLE}"><tr><th style="{_TH}">latency</th>'
        f'<th style="{_TH};text-align:right">p50</th><th style="{_TH};text-align:right">p99</th>'
        f"</tr>{rows}</table>"
    )
    if report.get("differences"):
        parts.append(f'<div style="{_HEAD}"><b>first differing calls</b></div>')
        parts.append(_rows(report["differences"], active, cand, "differed"))
    if report.get("errors"):
        parts.append(f'<div style="{_HEAD}"><b>errors only {_e(cand)} raised</b></div>')
        parts.append(_rows(report["errors"], active, cand, "errors"))
    return "".join(parts)


def localize_usage(message: str) -> str:
    """A command-layer message in ``%hotswap`` syntax."""
    return message.replace("usage: shadow", "usage: %hotswap shadow").replace(
        ": shadow ", ": %hotswap shadow "
    )


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} µs"


class ShadowView(View):
    """A shadow run's report; ``data`` is the engine's JSON (``compared``,
    ``differed``, ``differences``, ``errors``, ``latency``...)."""

    def __init__(self, report: Mapping[str, Any], summary: str | None = None) -> None:
        self.data: dict[str, Any] = dict(report)
        #: A one-line answer instead of the report (a run just started).
        self.summary = summary

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def text(self, color: bool = False) -> str:
        """The report as the CLI prints it."""
        return self.summary or render_shadow(self.data, color=color)

    def html(self) -> str:
        """The report, both outputs of each differing call side by side."""
        if self.summary:
            return f'<div class="lp-outcome lp-shadow" style="{_HEAD}">{_e(self.summary)}</div>'
        return html_shadow(self.data)


def shadow_verb(
    client: Client,
    words: Sequence[str],
    *,
    sample: float | None,
    for_s: float | None,
    queue: int | None,
) -> ShadowView:
    """``%hotswap shadow VERSION|stop|report [SLOT] [--sample F] [--for S] [--queue N]``."""
    what, slot = words[0], (words[1] if len(words) > 1 else None)
    try:
        params = shadow_params(what, slot, {"sample": sample, "for": for_s, "queue": queue})
        if params["action"] != "start" and "slot" not in params:
            params["slot"] = default_slot(client.status(), what)
    except ShellUsageError as exc:
        raise UsageError(localize_usage(str(exc))) from None
    report: dict[str, Any] = dict(client.request("shadow", params))
    if params["action"] != "start":
        return ShadowView(report)
    if params.get("for_s") is None:
        s = report["slot"]
        return ShadowView(
            report,
            f"shadowing {report['candidate']} against {report['active']} on "
            f"{report['sample']:.0%} of {s}'s calls; `%hotswap shadow report {s}` shows it "
            f"so far, `%hotswap shadow stop {s}` ends it",
        )
    # Live in the cell while it runs; the final report is the verb's result.
    from IPython.display import HTML, display

    handle = display(HTML(themed(html_shadow(report))), display_id=True)

    def update(now: dict[str, Any]) -> None:
        if handle is not None:
            handle.update(HTML(themed(html_shadow(now))))

    final = wait_for_end(client, report, on_update=update)
    if handle is not None:
        handle.update(HTML(""))  # the result below takes its place
    return ShadowView(final)
