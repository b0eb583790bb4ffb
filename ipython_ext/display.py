"""What ``%hotswap`` returns: result objects shown as HTML in Jupyter, text in a terminal.

One renderer per medium over one data model: every view wraps the object the
client returned (:class:`~livepatch.symbols.SymbolTable`,
:class:`~livepatch.symbols.SymbolDiff`,
:class:`~livepatch.resolve.ResolveReport`, or the status / journal JSON) and
keeps it as ``.data``, so ``r = %hotswap status`` is as useful in code as it
is on screen. The text side reuses :mod:`livepatch.render`; the HTML side is
here, with the colours, themes and legends in :mod:`ipython_ext.theme`.
Colours are inline styles (they survive notebook sanitisers) and every
element also carries an ``lp-*`` class for themes and tests.

Nothing here imports IPython: ``_repr_pretty_`` only uses the printer it is
handed.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from livepatch.render import (
    color_allowed,
    printable,
    render_diff,
    render_report,
    render_status,
    render_table,
)
from livepatch.resolve import Problem, ResolveReport
from livepatch.symbols import DiffRow, SymbolDiff, SymbolRow, SymbolTable

from .theme import (
    _BAD,
    _GOOD,
    _HEAD,
    _MONO,
    _TABLE,
    _TD,
    _TH,  # noqa: F401 - still importable from here
    LETTER_STYLE,
    MARKER_STYLE,
    NATIVE_MEANING,  # noqa: F401 - still importable from here
    PALETTE,  # noqa: F401 - still importable from here
    STATE_COLOR,
    _e,
    _is_native,
    _legend,
    _letter,
    _marker_legend,
    _meaning,  # noqa: F401 - still importable from here
    _td,
    _th,
    themed,
)

__all__ = [
    "DiffView",
    "JournalView",
    "LoadResult",
    "Outcome",
    "ReportView",
    "StatusView",
    "TableView",
    "View",
    "html_diff",
    "html_report",
    "html_table",
    "text_color_wanted",
    "themed",
    "view",
]

#: Above this many lines, a check report lists only the lines around problems.
FULL_LISTING_LINES: Final = 80
_CONTEXT: Final = 3


class _Printer(Protocol):
    """The part of IPython's pretty printer the views use."""

    def text(self, obj: str) -> None: ...


def _info(row: SymbolRow) -> str:
    """The signature of a T/C row, the detail (origin, resolution, type) otherwise.
    (A native T row has both: its C declaration, if any, and its size.)"""
    if row.letter in ("T", "C"):
        return "  ".join(part for part in (row.signature, row.detail) if part)
    return row.detail


def _unresolved(row: SymbolRow) -> bool:
    return row.letter == "U" and row.detail == "?"


def _row_cells(row: SymbolRow | None) -> str:
    """Four cells (line, letter, name, info) for one side of a table."""
    if row is None:
        return _td("") * 4
    name_style = f"color:{_BAD};font-weight:bold" if _unresolved(row) else ""
    info_style = f"color:{_BAD};font-weight:bold" if _unresolved(row) else "color:#555"
    return (
        _td(_e(row.line if row.line is not None else ""), "text-align:right;color:#888")
        + _td(_letter(row.letter))
        + _td(_e(row.name), name_style, "lp-name")
        # The detail column wraps (long C declarations, origins) rather
        # than push the table past a narrow output area, where it is clipped.
        + _td(
            _e(_info(row)), f"{info_style};white-space:pre-wrap;overflow-wrap:anywhere", "lp-info"
        )
    )


def _letter_counts(rows: Sequence[SymbolRow]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.letter] = counts.get(row.letter, 0) + 1
    order = [k for k in LETTER_STYLE if k in counts] + sorted(set(counts) - set(LETTER_STYLE))
    return ", ".join(f"{counts[k]} {k}" for k in order)


# --- HTML renderers over the data model --------------------------------------


def html_table(table: SymbolTable) -> str:
    """A version's symbol table as an HTML table (line, letter, name, detail)."""
    count = len(table)
    header = f"<b>{_e(table.version)}</b>: {count} symbol{'s' * (count != 1)}"
    if count:
        header += f" ({_e(_letter_counts(table.rows))})"
    body = "".join(
        f'<tr class="lp-row{" lp-unresolved" if _unresolved(r) else ""}">{_row_cells(r)}</tr>'
        for r in table
    )
    head = _th("line") + _th("") + _th("name") + _th("signature / detail")
    return (
        f'<div class="lp-symbols"><div style="{_HEAD}">{header}</div>'
        f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f"{_legend((r.letter for r in table), _is_native(table.rows))}</div>"
    )


def _marker_cell(row: DiffRow) -> str:
    cls, title, color, _bg = MARKER_STYLE.get(row.marker, ("other", "", "#718096", ""))
    text = _e(row.marker)
    if row.resolves_differently:
        title += "; resolves to something different"
        text += f'<span class="lp-resolves-differently" style="color:{_BAD}">!</span>'
    return _td(
        text,
        f"color:{color};font-weight:bold;text-align:center",
        f"lp-marker lp-marker-{cls}",
        title,
    )


def html_diff(diff: SymbolDiff) -> str:
    """Two versions' symbol tables side by side, each row marked ``= ~ + -`` in colour."""
    counts = diff.counts()
    summary = "  ".join(
        f'<span class="lp-count-{MARKER_STYLE[m][0]}" style="color:{MARKER_STYLE[m][2]}">'
        f"{_e(m)} {counts[m]}</span>"
        for m in ("=", "~", "+", "-")
    )
    rows = []
    for r in diff.rows:
        cls, _title, _color, bg = MARKER_STYLE.get(r.marker, ("other", "", "", "transparent"))
        rows.append(
            f'<tr class="lp-row lp-{cls}" style="background:{bg}">'
            f"{_row_cells(r.left)}{_marker_cell(r)}{_row_cells(r.right)}</tr>"
        )
    side = _th("line") + _th("") + _th("name") + _th("signature / detail")
    head = (
        f"<tr>{_th(_e(diff.a), 4)}{_th('')}{_th(_e(diff.b), 4)}</tr><tr>{side}{_th('')}{side}</tr>"
    )
    sides = [r for d in diff.rows for r in (d.left, d.right) if r is not None]
    letters = {r.letter for r in sides}
    flagged = any(d.resolves_differently for d in diff.rows)
    return (
        f'<div class="lp-diff"><div style="{_HEAD}"><b>{_e(diff.a)}</b> → <b>{_e(diff.b)}</b>'
        f"&nbsp;&nbsp; {summary}</div>"
        f'<table style="{_TABLE}"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        f"{_marker_legend(flagged)}{_legend(letters, _is_native(sides))}</div>"
    )


def _shown_lines(total: int, marked: Iterable[int]) -> list[int]:
    """Line numbers a listing shows: all of a short file, else context around marks."""
    if total <= FULL_LISTING_LINES:
        return list(range(1, total + 1))
    keep: set[int] = set()
    for line in marked:
        keep.update(range(max(1, line - _CONTEXT), min(total, line + _CONTEXT) + 1))
    return sorted(keep)


def html_report(
    report: ResolveReport,
    source: str | None = None,
    filename: str | None = None,
    anchor: str | None = None,
) -> str:
    """A check report: a row per problem, each linked to its line in a source listing.

    Without ``source`` the problems still show their line numbers. ``anchor``
    prefixes the element ids (one per listed line, ``<anchor>-L<n>``); it
    defaults to a fresh one so two reports in one notebook do not collide.
    """
    prefix = anchor or f"lp-{uuid.uuid4().hex[:8]}"
    lines = source.splitlines() if source is not None else []
    count = len(report.problems)
    if report.ok and not count:
        head = f'<b>{_e(report.version)}</b>: <span style="color:{_GOOD}">ok, no problems</span>'
    else:
        color = _GOOD if report.ok else _BAD
        head = (
            f'<b>{_e(report.version)}</b>: <span style="color:{color};font-weight:bold">'
            f"{count} problem{'s' * (count != 1)}</span>"
        )
    out = [f'<div class="lp-report"><div style="{_HEAD}">{head}</div>']
    if count:
        rows = [_problem_row(p, lines, prefix) for p in report.problems]
        th = _th("line") + _th("kind") + _th("symbol") + _th("problem")
        out.append(
            f'<table style="{_TABLE}"><thead><tr>{th}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    if lines and count:
        out.append(_listing(report.problems, lines, filename, prefix))
    out.append("</div>")
    return "".join(out)


def _problem_row(problem: Problem, lines: list[str], prefix: str) -> str:
    color = "#b7791f" if problem.severity == "warning" else _BAD
    if problem.line is None:
        where = "-"
    elif 1 <= problem.line <= len(lines):
        where = (
            f'<a class="lp-line-link" href="#{prefix}-L{problem.line}" '
            f'style="color:#2b6cb0">line {problem.line}</a>'
        )
    else:
        where = f"line {problem.line}"
    message = _e(problem.message)
    if problem.line is not None and 1 <= problem.line <= len(lines):
        code = lines[problem.line - 1].strip()
        message += (
            f'<br><code class="lp-source-line" style="color:#555">{problem.line}: {_e(code)}</code>'
        )
    kind = problem.kind if problem.severity == "error" else f"{problem.kind} ({problem.severity})"
    return (
        f'<tr class="lp-problem lp-{_e(problem.severity)}">'
        + _td(where, "white-space:nowrap")
        + _td(_e(kind), f"color:{color};font-weight:bold")
        + _td(_e(problem.symbol), "", "lp-name")
        + _td(message, "white-space:normal", "lp-message")
        + "</tr>"
    )


def _listing(
    problems: Sequence[Problem], lines: list[str], filename: str | None, prefix: str
) -> str:
    by_line: dict[int, list[Problem]] = {}
    for p in problems:
        if p.line is not None and 1 <= p.line <= len(lines):
            by_line.setdefault(p.line, []).append(p)
    shown = _shown_lines(len(lines), by_line)
    width = len(str(len(lines)))
    out: list[str] = []
    previous = 0
    for n in shown:
        if n != previous + 1:
            out.append('<span style="color:#aaa">  …</span>\n')
        previous = n
        text = f"{n:>{width}}  {_e(lines[n - 1])}"
        here = by_line.get(n)
        if here:
            notes = "; ".join(f"{p.kind}: {p.symbol}" for p in here)
            out.append(
                f'<span id="{prefix}-L{n}" class="lp-line lp-problem-line" '
                f'style="background:rgba(229, 62, 62, 0.15)">'
                f'{text}  <span style="color:{_BAD}">← {_e(notes)}</span></span>\n'
            )
        else:
            out.append(f'<span id="{prefix}-L{n}" class="lp-line">{text}</span>\n')
    title = f'<div style="{_HEAD};color:#666">{_e(filename)}</div>' if filename else ""
    return (
        f'{title}<pre class="lp-listing" style="font-family:{_MONO};font-size:12px;'
        f'line-height:1.35;padding:4px;margin:2px 0">{"".join(out)}</pre>'
    )


def _state(state: str) -> str:
    color = STATE_COLOR.get(state, "#718096")
    return (
        f'<span class="lp-state lp-state-{_e(state)}" style="color:{color};'
        f'font-weight:bold">{_e(state)}</span>'
    )


def html_status(status: Mapping[str, Any]) -> str:
    """Status as HTML: per slot, a row per version with state and call counts."""
    out = [
        f'<div class="lp-status"><div style="{_HEAD}">engine <b>{_e(status["name"])}</b> '
        f"(pid {_e(status['pid'])})</div>"
    ]
    head = "".join(
        _th(h, style="text-align:right" if h in ("calls", "errors", "in flight") else "")
        for h in ("", "version", "state", "calls", "errors", "in flight", "file", "freed")
    )
    for slot in status["slots"]:
        iface = f' <span style="color:#888">[{_e(slot["interface"])}]</span>'
        out.append(
            f'<div style="{_HEAD};margin-top:6px">slot <b>{_e(slot["name"])}</b>: active '
            f"<b>{_e(slot['active'] or '-')}</b>{iface if slot.get('interface') else ''}</div>"
        )
        rows = []
        for v in slot["versions"]:
            active = v["id"] == slot["active"]
            freed = ""
            if v["state"] == "unloaded":
                freed = (
                    f'<span style="color:{_GOOD}">yes</span>'
                    if v.get("freed")
                    else f'<span style="color:{_BAD}">NOT freed</span>'
                )
            style = "font-weight:bold;background:rgba(56, 161, 105, 0.10)" if active else ""
            num = "text-align:right"
            rows.append(
                f'<tr class="lp-version{" lp-active" if active else ""}" style="{style}">'
                + _td(f'<span style="color:{_GOOD}">●</span>' if active else "")
                + _td(_e(v["id"]))
                + _td(_state(v["state"]))
                + _td(_e(v["calls"]), num)
                + _td(_e(v["errors"]), num + (f";color:{_BAD}" if v["errors"] else ""))
                + _td(_e(v["in_flight"]), num)
                + _td(_e(v.get("filename") or ""))
                + _td(freed)
                + "</tr>"
            )
        if not rows:
            rows.append(f'<tr><td colspan="8" style="{_TD};color:#888">(no versions)</td></tr>')
        out.append(
            f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    out.append("</div>")
    return "".join(out)


def _stamp(t: object) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"


def _who(entry: Mapping[str, Any]) -> str:
    peer = entry.get("peer") or {}
    who = str(peer.get("client") or "-")
    pid = peer.get("pid")
    return f"{who}[{pid}]" if pid else who


# --- the views ---------------------------------------------------------------


def text_color_wanted() -> bool:
    """Colour in the text form: the terminal allows it (``NO_COLOR``, a tty)
    and IPython's colour scheme is not ``nocolor`` (``ipython --colors=nocolor``)."""
    if not color_allowed(sys.stdout):
        return False
    ipython = sys.modules.get("IPython")  # never imported here: only if running
    shell = ipython.get_ipython() if ipython is not None else None
    return str(getattr(shell, "colors", "")).lower() != "nocolor"


class View:
    """A ``%hotswap`` result: ``.data`` in code, HTML in Jupyter, text in a terminal."""

    data: Any

    def text(self, color: bool = False) -> str:
        """The plain (or ANSI-coloured) text form."""
        raise NotImplementedError

    def html(self) -> str:
        """The HTML form (what Jupyter shows)."""
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return themed(self.html())

    def _repr_pretty_(self, p: _Printer, cycle: bool) -> None:
        p.text(self.text(color=text_color_wanted()))

    def __repr__(self) -> str:
        return self.text()


class StatusView(View):
    """The engine's status: slots, versions, states and call counts.

    ``data`` is the status JSON; :meth:`version` and :meth:`active` read it.
    """

    def __init__(self, status: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = dict(status)

    @property
    def versions(self) -> list[dict[str, Any]]:
        """Every version of every slot, in status order."""
        return [v for slot in self.data["slots"] for v in slot["versions"]]

    def version(self, version: object) -> dict[str, Any]:
        """One version's row (``calls``, ``state``, ...); ``KeyError`` if absent."""
        wanted = str(version)
        for v in self.versions:
            if v["id"] == wanted:
                return v
        raise KeyError(wanted)

    def active(self, slot: str | None = None) -> str | None:
        """The active version of ``slot`` (or of the only slot, or of the only
        Python slot next to native ones, as in the demo engine)."""
        slots = self.data["slots"]
        if slot is None:
            python = [s for s in slots if s.get("kind", "python") == "python"]
            if len(slots) != 1 and len(python) == 1:
                return python[0]["active"]  # type: ignore[no-any-return]
            if len(slots) != 1:
                raise ValueError("several slots: name one")
            return slots[0]["active"]  # type: ignore[no-any-return]
        for s in slots:
            if s["name"] == slot:
                return s["active"]  # type: ignore[no-any-return]
        raise KeyError(slot)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def text(self, color: bool = False) -> str:
        """Same layout as ``livepatch status``."""
        return render_status(self.data)

    def html(self) -> str:
        """A table per slot, a row per version."""
        return html_status(self.data)


class TableView(View):
    """One version's symbol table (``data`` is the :class:`SymbolTable`)."""

    def __init__(self, table: SymbolTable) -> None:
        self.data: SymbolTable = table

    def text(self, color: bool = False) -> str:
        """``nm``-like listing."""
        return render_table(self.data, color=color)

    def html(self) -> str:
        """A table with coloured letters and a legend."""
        return html_table(self.data)


class DiffView(View):
    """Two versions side by side (``data`` is the :class:`SymbolDiff`)."""

    def __init__(self, diff: SymbolDiff) -> None:
        self.data: SymbolDiff = diff

    @property
    def counts(self) -> dict[str, int]:
        """Rows per marker: ``{"=": n, "~": n, "+": n, "-": n}``."""
        return self.data.counts()

    def text(self, color: bool = False) -> str:
        """Side-by-side text with a marker column."""
        return render_diff(self.data, color=color)

    def html(self) -> str:
        """Side-by-side tables, rows tinted and markers coloured."""
        return html_diff(self.data)


class ReportView(View):
    """A check report (``data`` is the :class:`ResolveReport`), with the source if known."""

    def __init__(
        self, report: ResolveReport, source: str | None = None, filename: str | None = None
    ) -> None:
        self.data: ResolveReport = report
        self.source = source
        self.filename = filename
        self._anchor = f"lp-{uuid.uuid4().hex[:8]}"

    @property
    def ok(self) -> bool:
        """True when no problem is an error."""
        return self.data.ok

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every finding, in file order."""
        return self.data.problems

    def __bool__(self) -> bool:
        return self.data.ok

    def text(self, color: bool = False) -> str:
        """The report, then each problem's source line."""
        out = render_report(self.data, color=color)
        if self.source is None:
            return out
        lines = self.source.splitlines()
        numbered = sorted(
            {p.line for p in self.data.problems if p.line is not None and 1 <= p.line <= len(lines)}
        )
        if numbered:
            width = len(str(numbered[-1]))
            excerpt = [f"  {n:>{width}} | {lines[n - 1]}" for n in numbered]
            out += "\n\n" + "\n".join(excerpt)
        return out

    def html(self) -> str:
        """Problems table linked to a source listing."""
        return html_report(self.data, self.source, self.filename, self._anchor)


class LoadResult(View):
    """A loaded version. ``str(r)`` is its id, so ``%hotswap check {r}`` works."""

    def __init__(self, data: Mapping[str, Any], filename: str | None = None) -> None:
        self.data: dict[str, Any] = dict(data)
        self.filename = filename

    @property
    def version(self) -> str:
        """The version id, ``slot@N``."""
        return str(self.data["version"])

    @property
    def new(self) -> bool:
        """False when the same source was already loaded (the old id came back)."""
        return bool(self.data.get("new", True))

    def __str__(self) -> str:
        return self.version

    def __format__(self, spec: str) -> str:
        return format(self.version, spec)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def text(self, color: bool = False) -> str:
        """``loaded spam@2 (...); next: %hotswap check spam@2``."""
        source = f" from {self.filename}" if self.filename else ""
        again = "" if self.new else " (same source as before)"
        return (
            f"loaded {self.version}{source}{again}, state {self.data.get('state', '?')}; "
            f"next: %hotswap check {self.version}"
        )

    def html(self) -> str:
        """One line, with the next step."""
        source = f" from <code>{_e(self.filename)}</code>" if self.filename else ""
        again = "" if self.new else " (same source as before)"
        return (
            f'<div class="lp-load" style="{_HEAD}">loaded <b>{_e(self.version)}</b>{source}'
            f"{_e(again)}, state {_state(str(self.data.get('state', '?')))}; next: "
            f"<code>%hotswap check {_e(self.version)}</code></div>"
        )


class Outcome(View):
    """The result of a verb that changes or asks something small (swap, unload, call...).

    ``data`` is the engine's JSON reply; ``summary`` the one line shown.
    """

    def __init__(
        self, verb: str, data: Any, summary: str, ok: bool = True, detail: str | None = None
    ) -> None:
        self.verb = verb
        self.data = data
        self.summary = summary
        self.ok = ok
        self.detail = detail

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def text(self, color: bool = False) -> str:
        """The summary line (and the detail, if any)."""
        line = self.summary
        if color and not self.ok:
            line = f"\x1b[31m{line}\x1b[0m"
        return f"{line}\n{self.detail}" if self.detail else line

    def html(self) -> str:
        """The summary line, red when something is not as hoped."""
        color = "inherit" if self.ok else _BAD
        detail = ""
        if self.detail:
            detail = (
                f'<pre style="font-family:{_MONO};font-size:12px;margin:2px 0">'
                f"{_e(self.detail)}</pre>"
            )
        return (
            f'<div class="lp-outcome lp-{_e(self.verb)}" style="{_HEAD};color:{color}">'
            f"{_e(self.summary)}</div>{detail}"
        )


class JournalView(View):
    """The engine's audit journal, oldest first (``data`` is the list of entries)."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.data: list[dict[str, Any]] = [dict(e) for e in entries]

    def __len__(self) -> int:
        return len(self.data)

    def text(self, color: bool = False) -> str:
        """One line per entry, as ``livepatch journal`` prints it."""
        if not self.data:
            return "(journal is empty)"
        return "\n".join(
            f"{_stamp(e.get('time'))}  {'ok ' if e.get('ok') else 'ERR'} "
            f"{e.get('op', '?'):<8} {e.get('version') or '-':<10} "
            f"{printable(_who(e))}: {printable(str(e.get('result', '')))}"
            for e in self.data
        )

    def html(self) -> str:
        """A table: time, ok, operation, version, client, result."""
        head = "".join(_th(h) for h in ("time", "", "op", "version", "client", "result"))
        rows = "".join(
            f'<tr class="lp-journal-{"ok" if e.get("ok") else "error"}">'
            + _td(_e(_stamp(e.get("time"))), "color:#888")
            + _td(
                "ok" if e.get("ok") else "ERR",
                f"color:{_GOOD if e.get('ok') else _BAD};font-weight:bold",
            )
            + _td(_e(e.get("op", "?")))
            + _td(_e(e.get("version") or "-"))
            + _td(_e(_who(e)), "color:#888")
            + _td(_e(e.get("result", "")), "white-space:normal")
            + "</tr>"
            for e in self.data
        )
        if not rows:
            rows = f'<tr><td colspan="6" style="{_TD};color:#888">(journal is empty)</td></tr>'
        return (
            f'<div class="lp-journal"><table style="{_TABLE}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )


def view(obj: object, source: str | None = None, filename: str | None = None) -> View:
    """The view of a livepatch data object (table, diff, report, status JSON).

    For code that uses the client or the in-process engine directly and wants
    the same display as ``%hotswap``.
    """
    if isinstance(obj, View):
        return obj
    if isinstance(obj, SymbolTable):
        return TableView(obj)
    if isinstance(obj, SymbolDiff):
        return DiffView(obj)
    if isinstance(obj, ResolveReport):
        return ReportView(obj, source, filename)
    to_json = getattr(obj, "to_json", None)
    data = to_json() if callable(to_json) else obj
    if isinstance(data, Mapping) and "slots" in data and "pid" in data:
        return StatusView(data)
    if isinstance(data, list) and all(isinstance(e, Mapping) and "op" in e for e in data):
        return JournalView(data)
    raise TypeError(f"no livepatch view for {type(obj).__name__}")
