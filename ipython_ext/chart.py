"""``%hotswap watch`` in Jupyter: a live chart of calls per second per version.

A thread of its own, with its own connection to the session's engine,
samples ``status`` every ``interval`` seconds; calls and errors per second
of each version come from the difference between two samples (the engine
only counts). After each sample the chart is redrawn in place through the
display handle of the cell that started it: an inline SVG (no front-end
dependency), one line per version over the last ``window`` seconds, a
dashed mark where a slot's active version changed (a swap: the traffic
moves from one line to the next), and errors as red marks on the line of
the version that raised them, counted in red in the legend.

Colours follow the notebook's theme like the other views (CSS variables
with a dark set under JupyterLab's ``data-jp-theme-light="false"`` and VS
Code's dark classes; inline fallbacks keep the light set where styles are
stripped). The text form (a terminal IPython) is a table of the latest
rates.
"""

from __future__ import annotations

import collections
import html
import itertools
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from livepatch.client import Client

__all__ = ["CHART_COLORS", "TrafficChart", "TrafficSample"]

#: Series colours by index: (light theme, dark theme). Each keeps 3:1 against
#: its theme's background, the contrast graphics need (WCAG 1.4.11);
#: tests/test_traffic_chart.py measures them in a real browser.
CHART_COLORS: Final = (
    ("#2b6cb0", "#63b3ed"),
    ("#c05621", "#f6ad55"),
    ("#2f855a", "#68d391"),
    ("#6b46c1", "#b794f4"),
    ("#086f83", "#4fd1c5"),
    ("#b83280", "#f687b3"),
)
#: Errors, text, dimmed text and the grid: (light, dark).
_ROLES: Final = {
    "err": ("#c53030", "#fc8181"),
    "text": ("#1a202c", "#e2e8f0"),
    "dim": ("#4a5568", "#a0aec0"),
    "grid": ("#cbd5e0", "#4a5568"),
}

_STYLE: Final = (
    "<style>.lp-chart {"
    + "".join(f"--lp-c{i}:{light};" for i, (light, _d) in enumerate(CHART_COLORS))
    + "".join(f"--lp-chart-{k}:{light};" for k, (light, _d) in _ROLES.items())
    + "}"
    + '[data-jp-theme-light="false"] .lp-chart, .vscode-dark .lp-chart, '
    + ".vscode-high-contrast .lp-chart {"
    + "".join(f"--lp-c{i}:{dark};" for i, (_l, dark) in enumerate(CHART_COLORS))
    + "".join(f"--lp-chart-{k}:{dark};" for k, (_l, dark) in _ROLES.items())
    + "}</style>"
)

_W, _H = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 14, 14, 26
_MONO: Final = "var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace)"


def _var(role: str) -> str:
    """A colour as a CSS variable with the light value as the inline fallback."""
    if role.startswith("c"):
        return f"var(--lp-{role}, {CHART_COLORS[int(role[1:])][0]})"
    light = _ROLES[role][0]
    if role in ("text", "dim"):  # no <style>: follow the page's text colour
        light = f"var(--jp-content-font-color1, {light})"
    return f"var(--lp-chart-{role}, {light})"


@dataclass(frozen=True)
class TrafficSample:
    """One sample: when (``time.monotonic()``), each slot's active version,
    and each version's calls and errors per second since the previous
    sample, with its totals so far."""

    at: float
    active: Mapping[str, str | None]
    rates: Mapping[str, float]
    error_rates: Mapping[str, float]
    calls: Mapping[str, int]
    errors: Mapping[str, int]


def _nice_ceiling(value: float) -> float:
    """The next 1-2-5 step at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)  # pragma: no cover - the loop always returns


class TrafficChart:
    """The live traffic view of one engine; ``samples`` holds the window so far.

    ``duration`` (seconds) stops it by itself; otherwise :meth:`stop` (what
    ``%hotswap unwatch`` calls) does, or a lost engine.
    """

    def __init__(
        self,
        client: Client,
        *,
        interval: float = 0.5,
        window: float = 60.0,
        duration: float | None = None,
    ) -> None:
        self.interval = interval
        self.window = window
        self.duration = duration
        self.error: str | None = None
        self.engine = str(client.info.name)
        self._client = client
        self._samples: collections.deque[TrafficSample] = collections.deque()
        self._colors: dict[str, int] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._changed = threading.Condition()
        self._handle: Any = None
        self._taken = 0
        self._thread = threading.Thread(target=self._run, name="livepatch-traffic", daemon=True)

    # -- lifetime ---------------------------------------------------------------------

    @property
    def label(self) -> str:
        """What ``%hotswap unwatch`` names when it stops this view."""
        return f"traffic of {self.engine}"

    def start(self, handle: Any = None) -> None:
        """Start sampling; ``handle`` (an IPython display handle) is updated per sample."""
        self._handle = handle
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling (the chart stays as last drawn) and close the connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._done.set()
        self._client.close()

    @property
    def running(self) -> bool:
        """True until :meth:`stop`, the duration or a lost engine ends it."""
        return not self._done.is_set()

    @property
    def samples(self) -> list[TrafficSample]:
        """The samples in the window, oldest first."""
        with self._changed:
            return list(self._samples)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` samples have been taken since the start (scripts, tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._taken >= count, timeout)

    def _run(self) -> None:
        started = time.monotonic()
        previous: tuple[float, dict[str, int], dict[str, int]] | None = None
        try:
            while not self._stop.is_set():
                status = self._client.status()
                now = time.monotonic()
                calls = {v["id"]: int(v["calls"]) for s in status["slots"] for v in s["versions"]}
                errors = {v["id"]: int(v["errors"]) for s in status["slots"] for v in s["versions"]}
                active = {s["name"]: s.get("active") for s in status["slots"]}
                if previous is not None:
                    then, calls_before, errors_before = previous
                    seconds = max(now - then, 1e-9)
                    # A version new since the last sample started from zero.
                    rates = {
                        v: max(0, n - calls_before.get(v, 0)) / seconds for v, n in calls.items()
                    }
                    error_rates = {
                        v: max(0, n - errors_before.get(v, 0)) / seconds for v, n in errors.items()
                    }
                    self._add(TrafficSample(now, active, rates, error_rates, calls, errors))
                previous = (now, calls, errors)
                if self.duration is not None and now - started >= self.duration:
                    break
                self._stop.wait(self.interval)
        except Exception as exc:  # noqa: BLE001 - the view ends; the cell says why
            self.error = f"stopped: {getattr(exc, 'message', None) or exc}"
        self._done.set()
        with self._changed:
            self._changed.notify_all()
        self._show()

    def _add(self, sample: TrafficSample) -> None:
        with self._changed:
            self._samples.append(sample)
            while self._samples and sample.at - self._samples[0].at > self.window:
                self._samples.popleft()
            for version in sorted(sample.rates):
                self._colors.setdefault(version, len(self._colors) % len(CHART_COLORS))
            self._taken += 1
            self._changed.notify_all()
        self._show()

    def _show(self) -> None:
        if self._handle is not None:
            self._handle.update(self)

    # -- what is drawn ----------------------------------------------------------------

    def _shown_versions(self, samples: list[TrafficSample]) -> list[str]:
        """Versions with traffic or errors in the window, and the active ones."""
        last = samples[-1]
        busy = {v for s in samples for v, r in s.rates.items() if r > 0}
        busy |= {v for s in samples for v, r in s.error_rates.items() if r > 0}
        busy |= {v for v in last.active.values() if v}
        return sorted(busy, key=lambda v: (v.partition("@")[0], int(v.rpartition("@")[2] or 0)))

    def _head(self) -> str:
        state = "" if self.running else " (stopped)"
        if self.error:
            state = f" ({self.error})"
        return (
            f"calls/s per version on {self.engine!r}, up to the last {self.window:g} s, "
            f"every {self.interval:g} s{state}; `%hotswap unwatch` stops it"
        )

    def text(self) -> str:
        """The latest rates as a table (the terminal's form)."""
        samples = self.samples
        lines = [self._head()]
        if not samples:
            return "\n".join([*lines, "  (no sample yet)"])
        last = samples[-1]
        active = {v for v in last.active.values() if v}
        lines.append(f"  {'version':<16}{'calls/s':>9}{'errors/s':>10}{'calls':>9}{'errors':>8}")
        for v in self._shown_versions(samples):
            mark = "*" if v in active else " "
            lines.append(
                f"{mark} {v:<16}{last.rates.get(v, 0.0):>9.1f}{last.error_rates.get(v, 0.0):>10.1f}"
                f"{last.calls.get(v, 0):>9}{last.errors.get(v, 0):>8}"
            )
        return "\n".join(lines)

    def svg(self) -> str:
        """The chart as an inline SVG element."""
        samples = self.samples
        plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
        out = [
            f'<svg class="lp-chart-svg" xmlns="http://www.w3.org/2000/svg" width="{_W}" '
            f'height="{_H}" viewBox="0 0 {_W} {_H}" role="img" '
            f'style="font-family:{_MONO};font-size:11px;max-width:100%">',
            f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
            f'style="stroke:{_var("grid")}"/>',
        ]
        versions = self._shown_versions(samples) if samples else []
        top = _nice_ceiling(
            max([r for s in samples for v, r in s.rates.items() if v in versions] or [0.0])
        )
        now = samples[-1].at if samples else 0.0

        # The window once it is full; until then the time since the first
        # sample (at least 5 s), so a young chart is not squeezed to the right.
        span = min(self.window, max(5.0, now - samples[0].at)) if samples else self.window

        def x(at: float) -> float:
            return _LEFT + plot_w * (1 - (now - at) / span)

        def y(rate: float) -> float:
            return _TOP + plot_h * (1 - rate / top)

        for fraction in (0.0, 0.5, 1.0):
            gy = y(top * fraction)
            out.append(
                f'<line x1="{_LEFT}" y1="{gy:.1f}" x2="{_LEFT + plot_w}" y2="{gy:.1f}" '
                f'style="stroke:{_var("grid")}" stroke-width="0.5"/>'
                f'<text x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" '
                f'style="fill:currentColor;color:{_var("dim")}">{top * fraction:g}</text>'
            )
        for label, at in ((f"-{span:.0f} s", now - span), ("now", now)):
            anchor = "start" if label != "now" else "end"
            out.append(
                f'<text x="{x(at):.1f}" y="{_H - 8}" text-anchor="{anchor}" '
                f'style="fill:currentColor;color:{_var("dim")}">{label}</text>'
            )
        out.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 8}" text-anchor="middle" '
            f'style="fill:currentColor;color:{_var("dim")}">calls/s per version</text>'
        )
        # Swaps: where a slot's active version changed between two samples.
        swaps = 0
        for before, after in itertools.pairwise(samples):
            for slot, version in after.active.items():
                if version and before.active.get(slot) != version:
                    # Labels of swaps close together are stacked, not overprinted.
                    label_y = _TOP + 11 + 12 * (swaps % 4)
                    swaps += 1
                    # Near the right edge the label goes to the left of its line.
                    near_edge = x(after.at) > _LEFT + plot_w - 70
                    lx = x(after.at) + (-3 if near_edge else 3)
                    anchor = "end" if near_edge else "start"
                    sx = f"{x(after.at):.1f}"
                    out.append(
                        f'<line class="lp-swap" data-swap="{html.escape(version)}" x1="{sx}" '
                        f'y1="{_TOP}" x2="{sx}" y2="{_TOP + plot_h}" '
                        f'style="stroke:{_var("dim")}" stroke-dasharray="4,3"/>'
                        f'<text x="{lx:.1f}" y="{label_y}" text-anchor="{anchor}" '
                        f'style="fill:currentColor;color:{_var("text")}">'
                        f"{html.escape(version)}</text>"
                    )
        for version in versions:
            role = f"c{self._colors.get(version, 0)}"
            rates = [s.rates.get(version, 0.0) for s in samples]
            points = " ".join(
                f"{x(s.at):.1f},{y(r):.1f}" for s, r in zip(samples, rates, strict=True)
            )
            out.append(
                f'<polyline class="lp-series" data-version="{html.escape(version)}" '
                f'data-rates="{" ".join(f"{r:.2f}" for r in rates)}" points="{points}" '
                f'fill="none" style="stroke:{_var(role)}" stroke-width="2"/>'
            )
            for s, r in zip(samples, rates, strict=True):
                errs = s.error_rates.get(version, 0.0)
                if errs > 0:
                    out.append(
                        f'<circle class="lp-error" data-version="{html.escape(version)}" '
                        f'data-errors-per-s="{errs:.2f}" cx="{x(s.at):.1f}" cy="{y(r):.1f}" '
                        f'r="{3 + min(4.0, errs / max(r, 1.0) * 4):.1f}" '
                        f'style="fill:{_var("err")};stroke:{_var("err")}"/>'
                    )
        if not samples:
            out.append(
                f'<text x="{_LEFT + 8}" y="{_TOP + 20}" style="fill:currentColor;'
                f'color:{_var("dim")}">waiting for the first two samples…</text>'
            )
        out.append("</svg>")
        return "".join(out)

    def legend(self) -> str:
        """One entry per version drawn: its colour, id, calls/s now and errors."""
        samples = self.samples
        if not samples:
            return ""
        last = samples[-1]
        active = {v for v in last.active.values() if v}
        items = []
        for version in self._shown_versions(samples):
            role = f"c{self._colors.get(version, 0)}"
            errors = last.errors.get(version, 0)
            err = (
                f' <b class="lp-errors" style="color:{_var("err")}">{errors} errors '
                f"({last.error_rates.get(version, 0.0):.1f}/s)</b>"
                if errors
                else f' <span style="color:{_var("dim")}">0 errors</span>'
            )
            items.append(
                f'<span class="lp-legend" data-version="{html.escape(version)}" '
                'style="margin-right:14px;white-space:nowrap">'
                f'<span style="display:inline-block;width:14px;height:3px;vertical-align:middle;'
                f'background:{_var(role)}"></span> '
                f'<span style="color:{_var("text")}">{html.escape(version)}'
                f"{' (active)' if version in active else ''}: "
                f"{last.rates.get(version, 0.0):.1f} calls/s</span>{err}</span>"
            )
        return f'<div style="margin:2px 0 0 {_LEFT}px">{"".join(items)}</div>'

    def _repr_html_(self) -> str:
        return (
            f'{_STYLE}<div class="lp-chart" style="font-family:{_MONO};font-size:12px;'
            f'margin:4px 0"><div style="color:{_var("dim")}">{html.escape(self._head())}</div>'
            f"{self.svg()}{self.legend()}</div>"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def __repr__(self) -> str:
        return f"<TrafficChart {self.engine}: {len(self.samples)} samples>"
