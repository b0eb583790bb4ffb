"""Plain-text renderers for symbol tables, diffs and check reports.

One renderer per medium over one data model (see the design's "Symbol
tables"): these produce text for the terminal and the shell, optionally with
ANSI colour; Jupyter gets its own HTML renderer over the same objects. The
text is the same with and without colour except for escape codes, so tests
and logs can use ``color=False`` and people get colour.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # annotations only: `status` should not import the analysis modules
    from livepatch.resolve import Problem, ResolveReport
    from livepatch.symbols import SymbolDiff, SymbolRow, SymbolTable

__all__ = [
    "color_allowed",
    "printable",
    "render_diff",
    "render_diff_stacked",
    "render_diff_to_fit",
    "render_report",
    "render_row",
    "render_status",
    "render_table",
]


def printable(text: str) -> str:
    """``text`` safe to write to a terminal: control characters (ESC, CR,
    the C1 range, DEL...) shown as escapes, so a client name cannot move the
    cursor or recolour the screen."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_RESET: Final = "\x1b[0m"
_STYLES: Final = {
    "header": "\x1b[1m",
    "dim": "\x1b[2m",
    # letters
    "T": "\x1b[32m",
    "C": "\x1b[36m",
    "D": "\x1b[34m",
    "I": "\x1b[35m",
    "U": "\x1b[33m",
    "W": "\x1b[2;33m",
    "B": "\x1b[34m",  # native: zero-initialised data
    "R": "\x1b[34m",  # native: read-only data
    "unresolved": "\x1b[1;31m",  # a U row resolving to nothing
    # diff markers
    "=": "\x1b[2m",
    "~": "\x1b[33m",
    "+": "\x1b[32m",
    "-": "\x1b[31m",
    "!": "\x1b[1;31m",
    # report severities
    "error": "\x1b[31m",
    "warning": "\x1b[33m",
}

#: The longest a side-by-side cell may get before it is cut with "…".
DEFAULT_CELL_WIDTH: Final = 60


def _paint(text: str, style: str, color: bool) -> str:
    if not color or not text:
        return text
    return f"{_STYLES[style]}{text}{_RESET}"


def _line(line: int | None) -> str:
    return "-" if line is None else str(line)


def _info(row: SymbolRow) -> str:
    """What follows the name: the signature for T/C, the detail otherwise.
    (A native T row has both: its C declaration, if any, and its size.)"""
    if row.letter in ("T", "C"):
        return "  ".join(part for part in (row.signature, row.detail) if part)
    return row.detail


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _letter_counts(rows: Iterable[SymbolRow]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.letter] = counts.get(row.letter, 0) + 1
    order = "TCDBRIUW"
    letters = sorted(counts, key=lambda k: (order.find(k) if k in order else len(order), k))
    return ", ".join(f"{counts[k]} {k}" for k in letters)


def render_row(row: SymbolRow, *, name_width: int = 0, color: bool = False) -> str:
    """One table row: ``line letter name  signature-or-detail``."""
    known = row.letter in _STYLES
    name_style = "unresolved" if row.letter == "U" and row.detail == "?" else row.letter
    letter = _paint(row.letter, row.letter if known else "dim", color)
    name = _paint(row.name.ljust(name_width), name_style if known else "dim", color)
    info = _info(row)
    return f"{_line(row.line):>6} {letter} {name}  {info}".rstrip()


def render_table(table: SymbolTable, *, color: bool = False) -> str:
    """``nm``-like listing: line, letter, name, then the signature (T, C)
    or the detail (origin, resolution, type) of each row."""
    header = f"{table.version}: {_plural(len(table), 'symbol')}"
    if len(table):
        header += f" ({_letter_counts(table)})"
    lines = [_paint(header, "header", color)]
    width = max((len(row.name) for row in table), default=0)
    lines.extend(render_row(row, name_width=width, color=color) for row in table)
    return "\n".join(lines)


def _cell(row: SymbolRow | None, name_width: int) -> str:
    if row is None:
        return ""
    info = _info(row)
    text = f"{_line(row.line):>5} {row.letter} {row.name.ljust(name_width)}"
    return f"{text}  {info}".rstrip() if info else text.rstrip()


def render_diff(
    diff: SymbolDiff, *, color: bool = False, cell_width: int = DEFAULT_CELL_WIDTH
) -> str:
    """Two versions side by side: ``a``'s row, a marker column (``=`` same,
    ``~`` changed, ``+`` only in ``b``, ``-`` only in ``a``, followed by ``!``
    when an undefined or imported name resolves to something different), and
    ``b``'s row. Cells longer than ``cell_width`` are cut with "…"."""
    name_width = max((len(r.name) for r in diff.rows), default=0)
    cells = [
        (_cut(_cell(r.left, name_width), cell_width), _cut(_cell(r.right, name_width), cell_width))
        for r in diff.rows
    ]
    width = max([len(diff.a), *(len(left) for left, _right in cells)])
    right_width = max([len(diff.b), *(len(right) for _left, right in cells)])
    gap = "    "  # where the two-character marker sits, with a space each side
    out = [
        _paint(f"{diff.a.ljust(width)}{gap}{diff.b}".rstrip(), "header", color),
        _paint(f"{'-' * width}{gap}{'-' * right_width}", "dim", color),
    ]
    for row, (left, right) in zip(diff.rows, cells, strict=True):
        pad = " " * (width - len(left))  # measured before colour codes go in
        marker = _paint(row.marker, row.marker if row.marker in _STYLES else "dim", color)
        if row.resolves_differently:
            marker += _paint("!", "!", color)
            left, right = _paint(left, "!", color), _paint(right, "!", color)
        else:
            marker += " "
        out.append(f"{left}{pad} {marker} {right}".rstrip())
    counts = diff.counts()
    summary = "  ".join(f"{m} {counts[m]}" for m in ("=", "~", "+", "-"))
    flagged = sum(1 for r in diff.rows if r.resolves_differently)
    if flagged:
        summary += f"   ! {flagged} resolve{'s' if flagged == 1 else ''} differently"
    out.append(_paint(summary, "dim", color))
    return "\n".join(out)


def render_diff_stacked(diff: SymbolDiff, *, color: bool = False, width: int = 80) -> str:
    """Two versions' tables one above the other, for a narrow terminal: a
    line per row with its marker and name, then the row of each version
    that has it (both for ``~``), and the same summary as :func:`render_diff`."""
    name_width = max((len(r.name) for r in diff.rows), default=0)
    label = max(len(diff.a), len(diff.b))
    out = [_paint(f"{diff.a} -> {diff.b} (stacked: too wide side by side)", "header", color)]
    for row in diff.rows:
        marker = _paint(row.marker, row.marker if row.marker in _STYLES else "dim", color)
        flag = _paint("!", "!", color) if row.resolves_differently else " "
        sides = [(diff.a, row.left), (diff.b, row.right)]
        if row.marker == "=" and not row.resolves_differently:
            sides = [(diff.b, row.right)]
        cells = [
            f"{name.ljust(label)}{_cut(_cell(r, name_width), width - label - 4)}"
            for name, r in sides
            if r is not None
        ]
        if row.marker == "=":
            cells = [_paint(c, "dim", color) for c in cells]
        # The marker on the first version's line; the other one below it.
        out.append(f"{marker}{flag} {cells[0]}")
        out.extend(f"   {c}" for c in cells[1:])
    counts = diff.counts()
    out.append(_paint("  ".join(f"{m} {counts[m]}" for m in ("=", "~", "+", "-")), "dim", color))
    return "\n".join(out)


def render_diff_to_fit(diff: SymbolDiff, *, color: bool = False, width: int | None = None) -> str:
    """Side by side when it fits in ``width`` columns (or no width is known),
    else stacked, so a narrow terminal never wraps every line."""
    side = render_diff(diff, color=False)
    if width is None or max(map(len, side.splitlines()), default=0) <= width:
        return render_diff(diff, color=color) if color else side
    return render_diff_stacked(diff, color=color, width=width)


def _problem_line(problem: Problem, color: bool) -> str:
    kind = problem.kind if problem.severity == "error" else f"{problem.kind} ({problem.severity})"
    style = "warning" if problem.severity == "warning" else "error"
    shown = _paint(kind, style, color)
    return f"  line {_line(problem.line)}  {shown}  {problem.symbol}: {problem.message}"


def render_report(report: ResolveReport, *, color: bool = False) -> str:
    """``spam@3: 2 problems`` and then one line per problem:
    ``  line 12  unresolved  lenn: name 'lenn' used in ...``."""
    count = len(report.problems)
    if not count:
        header = f"{report.version}: ok, no problems"
    else:
        header = f"{report.version}: {_plural(count, 'problem')}"
        errors, warnings = len(report.errors), len(report.warnings)
        if warnings:
            header += f" ({_plural(errors, 'error')}, {_plural(warnings, 'warning')})"
    style = "header" if report.ok else "error"
    lines = [_paint(header, style, color)]
    lines.extend(_problem_line(p, color) for p in report.problems)
    return "\n".join(lines)


def render_status(status: Mapping[str, Any]) -> str:
    """Status as text: a header per slot, a row per version (``*`` marks the active one)."""
    lines = [f"engine {status['name']} (pid {status['pid']})"]
    # Ids as wide as the longest of every slot (spam_native@12), at least 10,
    # so the columns line up across slots.
    width = max([10, *(len(v["id"]) for slot in status["slots"] for v in slot["versions"])])
    for slot in status["slots"]:
        iface = f"  [{slot['interface']}]" if slot.get("interface") else ""
        lines.append(f"slot {slot['name']}: active {slot['active'] or '-'}{iface}")
        for v in slot["versions"]:
            mark = "*" if v["id"] == slot["active"] else " "
            freed = ""
            if v["state"] == "unloaded":
                freed = "  freed" if v.get("freed") else "  NOT freed"
            lines.append(
                f"  {mark} {v['id']:<{width}} {v['state']:<9} calls {v['calls']:>8}  "
                f"errors {v['errors']:>5}  in flight {v['in_flight']:>3}  "
                f"{v.get('filename') or ''}{freed}".rstrip()
            )
        if not slot["versions"]:
            lines.append("    (no versions)")
    # Only when there is something to see: calls past their deadline that
    # Python could not stop (blocked in C) and that still hold a worker.
    stuck = (status.get("calls") or {}).get("stuck") or []
    if stuck:
        lines.append(f"stuck calls: {len(stuck)} (past their deadline, still running)")
        lines.extend(
            f"  {c['version']} {c['symbol']}()  for {c['age_s']:.1f} s" for c in stuck[:10]
        )
        if len(stuck) > 10:
            lines.append(f"  ... and {len(stuck) - 10} more")
    return "\n".join(lines)


def color_allowed(stream: object | None = None) -> bool:
    """Whether to colour output: not when ``NO_COLOR`` is set or ``TERM`` is
    ``dumb``, nor when ``stream`` (if given) is not a terminal.

    The one rule for the CLI, the shell, the demo and the magics' text reprs.
    """
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if stream is None:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
