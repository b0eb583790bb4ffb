"""``livepatch bench --plot FILE``: request latency with and without swaps, as an SVG.

The ``swap_under_load`` section keeps a histogram of every request latency
it sampled, on log-spaced bins (:func:`latency_histogram`); this module
draws it, written by hand as SVG (no plotting library): on top the share of
requests per bin, below the tail (the share of requests slower than each
latency, on a log scale), each with the run's p50 and p99 marked. Every
series carries its counts in ``data-`` attributes, so what is drawn can be
checked against the JSON.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import percentile

__all__ = ["BINS", "SERIES", "latency_histogram", "render_svg", "write_plot"]

#: Log-spaced bins between the fastest and the slowest request (fine enough
#: that the body of the distribution, often under half a decade, spans many).
BINS = 200

#: The series drawn: key in the histogram, label, colour (legible on white).
SERIES: tuple[tuple[str, str, str], ...] = (
    ("without_swaps", "without swaps", "#2b6cb0"),
    ("with_swaps", "with swaps", "#c05621"),
)

_WIDTH = 760
_LEFT, _RIGHT = 70, 20
_PANEL_H = 190
_TOP1 = 50
_TOP2 = _TOP1 + _PANEL_H + 60
_HEIGHT = _TOP2 + _PANEL_H + 100
#: The top panel shows the bins up to where this share of all requests is
#: reached: the body; the bottom one the whole range.
BODY_SHARE = 0.999
_FONT = "font-family:DejaVu Sans,Helvetica,Arial,sans-serif"


def latency_histogram(samples_ns: Mapping[str, Sequence[int]], bins: int = BINS) -> dict[str, Any]:
    """Counts of each series' latencies on one set of log-spaced bins, in µs.

    ``edges_us`` has ``bins + 1`` edges from the fastest to the slowest
    sample of all series; each series has its ``counts`` per bin, its
    ``count`` and its p50/p99 (µs, from the samples themselves).
    """
    values = [n for series in samples_ns.values() for n in series if n > 0]
    series_out: dict[str, Any] = {}
    if not values:
        return {"unit": "us", "edges_us": [], "series": series_out}
    low, high = min(values) / 1e3, max(values) / 1e3
    if high <= low:
        high = low * 1.01
    ratio = math.log(high / low)
    edges = [low * math.exp(ratio * i / bins) for i in range(bins + 1)]
    for name, series in samples_ns.items():
        counts = [0] * bins
        for n in series:
            if n <= 0:
                continue
            i = int(math.log((n / 1e3) / low) / ratio * bins) if ratio else 0
            counts[min(bins - 1, max(0, i))] += 1
        series_out[name] = {
            "count": sum(counts),
            "counts": counts,
            "p50_us": round(percentile(series, 50) / 1e3, 3),
            "p99_us": round(percentile(series, 99) / 1e3, 3),
        }
    return {"unit": "us", "edges_us": [round(e, 4) for e in edges], "series": series_out}


def _ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks between ``low`` and ``high`` on a log axis (powers of ten
    alone past three decades, so the labels never overlap)."""
    out = []
    steps = (1,) if math.log10(high / low) > 3 else (1, 2, 5)
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for step in steps:
            tick = step * 10.0**exponent
            if low <= tick <= high:
                out.append(tick)
    return out


def _fmt_us(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g} ms"
    return f"{value:g} µs"


def _num(value: float) -> str:
    return f"{value:.1f}"


def render_svg(results: Mapping[str, Any]) -> str:
    """The SVG document for ``results`` (``livepatch bench`` JSON with ``swap_under_load``)."""
    swap = results["swap_under_load"]
    hist = swap["latency_histogram"]
    edges: list[float] = hist["edges_us"]
    if len(edges) < 2:
        raise ValueError("no latencies were measured: nothing to plot")
    low, high = edges[0], edges[-1]
    plot_w = _WIDTH - _LEFT - _RIGHT

    def scale(lo: float, hi: float) -> Callable[[float], float]:
        span = math.log(hi / lo)

        def x(us: float) -> float:
            return _LEFT + plot_w * math.log(max(lo, min(hi, us)) / lo) / span

        return x

    x = scale(low, high)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" style="{_FONT}">',
        f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="#ffffff"/>',
        f'<text x="{_LEFT}" y="24" font-size="15" font-weight="bold" fill="#1a202c">'
        f"Request latency through pin, with and without swaps</text>",
        f'<text x="{_LEFT}" y="42" font-size="11" fill="#4a5568">'
        f"{html.escape(str(swap['callers']))} caller threads, {swap['swaps']:,} swaps in "
        f"{swap['duration_s']:.1f} s; each request calls two functions of one version</text>",
    ]
    series = [(key, label, colour, hist["series"][key]) for key, label, colour in SERIES]
    shares = {
        key: [c / s["count"] if s["count"] else 0.0 for c in s["counts"]]
        for key, _l, _c, s in series
    }
    top_share = max((v for values in shares.values() for v in values), default=0.0) or 1.0

    def axis(
        top: int,
        x_range: tuple[float, float],
        y_labels: list[tuple[float, str]],
        title: str,
    ) -> None:
        bottom = top + _PANEL_H
        px = scale(*x_range)
        out.append(
            f'<rect x="{_LEFT}" y="{top}" width="{plot_w}" height="{_PANEL_H}" '
            'fill="none" stroke="#a0aec0"/>'
        )
        for tick in _ticks(*x_range):
            tx = _num(px(tick))
            out.append(
                f'<line x1="{tx}" y1="{top}" x2="{tx}" y2="{bottom}" stroke="#edf2f7"/>'
                f'<text x="{tx}" y="{bottom + 14}" font-size="10" text-anchor="middle" '
                f'fill="#4a5568">{_fmt_us(tick)}</text>'
            )
        for ty, text in y_labels:
            out.append(
                f'<line x1="{_LEFT}" y1="{_num(ty)}" x2="{_LEFT + plot_w}" y2="{_num(ty)}" '
                'stroke="#edf2f7"/>'
                f'<text x="{_LEFT - 6}" y="{_num(ty + 3)}" font-size="10" text-anchor="end" '
                f'fill="#4a5568">{text}</text>'
            )
        out.append(
            f'<text x="{_LEFT}" y="{top - 8}" font-size="12" fill="#1a202c">'
            f"{html.escape(title)}</text>"
        )

    # Top: share of requests per bin (linear).
    bottom1 = _TOP1 + 20 + _PANEL_H
    top1 = _TOP1 + 20

    def y1(share: float) -> float:
        return bottom1 - _PANEL_H * share / top_share

    # The body: bins up to where BODY_SHARE of all the requests are.
    union = [sum(s["counts"][i] for *_x, s in series) for i in range(len(edges) - 1)]
    running, shown = 0, len(union)
    for i, count in enumerate(union):
        running += count
        if running >= BODY_SHARE * sum(union):
            shown = min(len(union), i + 2)
            break
    x1 = scale(low, edges[shown])
    labels1 = [(y1(top_share * f), f"{top_share * f * 100:.1f}%") for f in (0, 0.25, 0.5, 0.75, 1)]
    axis(
        top1,
        (low, edges[shown]),
        labels1,
        f"share of requests per latency bin: the fastest {BODY_SHARE:.1%} (the tail below)",
    )
    for key, _label, colour, s in series:
        points = []
        for i, share in enumerate(shares[key][:shown]):
            points += [f"{_num(x1(edges[i]))},{_num(y1(share))}"]
            points += [f"{_num(x1(edges[i + 1]))},{_num(y1(share))}"]
        out.append(
            f'<polyline class="histogram" data-series="{key}" data-count="{s["count"]}" '
            f'data-counts="{" ".join(map(str, s["counts"][:shown]))}" '
            f'points="{" ".join(points)}" '
            f'fill="none" stroke="{colour}" stroke-width="1.8"/>'
        )
    # Bottom: the tail, share of requests slower than each bin's upper edge (log).
    top2 = _TOP2 + 20
    bottom2 = top2 + _PANEL_H
    total = max((s["count"] for *_x, s in series), default=1) or 1
    floor_share = 1 / total
    decades = max(1, math.ceil(-math.log10(floor_share)))

    def y2(share: float) -> float:
        share = max(share, 10.0**-decades)
        return top2 + _PANEL_H * (-math.log10(share)) / decades

    labels2 = [(y2(10.0**-d), f"{100 * 10.0**-d:g}%") for d in range(decades + 1)]
    axis(top2, (low, high), labels2, "share of requests slower than the latency (the tail)")
    for key, _label, colour, s in series:
        left = s["count"]
        points = [f"{_num(x(edges[0]))},{_num(y2(1.0))}"]
        for i, count in enumerate(s["counts"]):
            left -= count
            if left <= 0:
                points.append(f"{_num(x(edges[i + 1]))},{_num(y2(0.0))}")
                break
            points.append(f"{_num(x(edges[i + 1]))},{_num(y2(left / s['count']))}")
        out.append(
            f'<polyline class="tail" data-series="{key}" points="{" ".join(points)}" '
            f'fill="none" stroke="{colour}" stroke-width="1.8"/>'
        )
    # p50 and p99 of each series across both panels, and the legend.
    for n, (key, label, colour, s) in enumerate(series):
        for name, dash in (("p50", "2,3"), ("p99", "6,3")):
            for top, bottom, px in ((top1, bottom1, x1), (top2, bottom2, x)):
                at = _num(px(s[f"{name}_us"]))
                out.append(
                    f'<line class="{name}" data-series="{key}" x1="{at}" y1="{top}" x2="{at}" '
                    f'y2="{bottom}" stroke="{colour}" stroke-dasharray="{dash}"/>'
                )
        ly = bottom2 + 40 + 16 * n
        out.append(
            f'<line x1="{_LEFT}" y1="{ly - 4}" x2="{_LEFT + 24}" y2="{ly - 4}" stroke="{colour}" '
            'stroke-width="3"/>'
            f'<text x="{_LEFT + 30}" y="{ly}" font-size="11" fill="#1a202c">'
            f"{label}: {s['count']:,} requests sampled, p50 {_fmt_us(s['p50_us'])}, "
            f"p99 {_fmt_us(s['p99_us'])} (dashed: p50 short, p99 long)</text>"
        )
    machine = results.get("machine", {})
    out.append(
        f'<text x="{_WIDTH - _RIGHT}" y="{_HEIGHT - 8}" font-size="9" text-anchor="end" '
        f'fill="#4a5568">{html.escape(str(results.get("command", "livepatch bench")))}, '
        f"Python {html.escape(str(machine.get('python', '?')))}, "
        f"{machine.get('cpu_count', '?')} CPUs</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_plot(results: Mapping[str, Any], path: str | Path) -> None:
    """Write :func:`render_svg` of ``results`` to ``path``."""
    Path(path).write_text(render_svg(results), encoding="utf-8")
