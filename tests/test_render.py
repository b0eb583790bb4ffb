"""Plain-text renderers: tables, side-by-side diffs and check reports."""

from __future__ import annotations

import re
import textwrap

from stdlib_corpus import load_source

from livepatch.render import printable, render_diff, render_report, render_row, render_table
from livepatch.resolve import Problem, ResolveReport, check_module
from livepatch.symbols import SymbolRow, SymbolTable, build_symbol_table, diff_tables

ANSI = re.compile(r"\x1b\[[0-9;]*m")

V1 = """\
import re
from json import dumps

LIMIT = 3

def classify(msg: str) -> bool:
    return len(msg) > LIMIT and re.search("spam", msg) is not None

def helper(x):
    return sum(x)
"""

V2 = """\
import re
from pickle import dumps


LIMIT = 4

def classify(msg: str) -> bool:
    return len(msg) > LIMIT and re.search("spam", msg) is not None

def helper(x):
    return total(x) + lenn(x)

def total(x):
    return 0
"""


def table(source: str, version: str) -> SymbolTable:
    loaded = load_source(textwrap.dedent(source))
    return build_symbol_table(version, loaded.module, loaded.code, source)


def test_table_plain_has_no_escapes_and_one_line_per_row() -> None:
    t = table(V2, "spam@2")
    text = render_table(t)
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert lines[0] == "spam@2: 8 symbols (3 T, 1 D, 2 I, 2 U)"
    assert len(lines) == 1 + len(t)
    rows = {line.split()[2]: line.split() for line in lines[1:]}
    assert rows["classify"][:2] == ["7", "T"]
    assert " ".join(rows["classify"][3:]) == "(msg: str) -> bool"
    assert rows["lenn"][1:] == ["U", "lenn", "?"]
    assert rows["len"][1:] == ["U", "len", "builtins.len"]
    assert rows["dumps"][1:] == ["I", "dumps", "pickle.dumps"]
    assert rows["LIMIT"][1:] == ["D", "LIMIT", "int"]


def test_table_colour_is_the_plain_text_plus_escapes() -> None:
    t = table(V2, "spam@2")
    coloured = render_table(t, color=True)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == render_table(t)


def test_row_without_line_and_unknown_letter() -> None:
    row = SymbolRow("printf", "B", None, None, "libc.so.6", "000000000000")
    text = render_row(row)
    assert text.split() == ["-", "B", "printf", "libc.so.6"]
    assert not ANSI.search(text)
    assert ANSI.sub("", render_row(row, color=True)) == text


def test_empty_table() -> None:
    assert render_table(SymbolTable("x@1", ())) == "x@1: 0 symbols"


def test_side_by_side_diff() -> None:
    diff = diff_tables(table(V1, "spam@1"), table(V2, "spam@2"))
    text = render_diff(diff)
    assert not ANSI.search(text)
    lines = text.splitlines()
    header = lines[0]
    assert header.startswith("spam@1") and header.rstrip().endswith("spam@2")
    column = header.index("spam@2")
    by_name: dict[str, str] = {}
    for line in lines[2:-1]:
        name = (line[:column] + " " + line[column:]).split()
        by_name[next(w for w in name if w.isidentifier() and w not in "TCDIUW")] = line
    # The marker column sits between the two sides, at the same place on every line.
    marker_at = column - 3
    assert by_name["classify"][marker_at] == "="
    assert by_name["LIMIT"][marker_at] == "~"
    assert by_name["total"][marker_at] == "+"
    assert by_name["sum"][marker_at] == "-"
    assert by_name["dumps"][marker_at : marker_at + 2] == "~!"
    # Each side shows its own version's line numbers.
    assert by_name["LIMIT"][:marker_at].split()[0] == "4"
    assert by_name["LIMIT"][column:].split()[0] == "5"
    assert by_name["sum"][column:].strip() == ""
    assert by_name["total"][:marker_at].strip() == ""
    assert "json.dumps" in by_name["dumps"] and "pickle.dumps" in by_name["dumps"]
    footer = lines[-1]
    assert footer.startswith("= 3  ~ 3  + 2  - 1")
    assert "! 1 resolves differently" in footer


def test_diff_colour_is_the_plain_text_plus_escapes() -> None:
    diff = diff_tables(table(V1, "spam@1"), table(V2, "spam@2"))
    coloured = render_diff(diff, color=True)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == render_diff(diff)


def test_diff_long_cells_are_cut() -> None:
    long_sig = "(" + ", ".join(f"argument_{i}" for i in range(20)) + ")"
    left = SymbolTable("a@1", (SymbolRow("f", "T", 1, long_sig, "", "000000000001"),))
    right = SymbolTable("a@2", (SymbolRow("f", "T", 1, long_sig, "", "000000000002"),))
    text = render_diff(diff_tables(left, right), cell_width=40)
    row = text.splitlines()[2]
    assert "…" in row
    assert len(row) < 2 * 40 + 10


def test_report_format() -> None:
    loaded = load_source(V2)
    report = check_module("spam@3", loaded.module, loaded.code, None)
    text = render_report(report)
    assert not ANSI.search(text)
    assert text.splitlines() == [
        "spam@3: 1 problem",
        "  line 11  unresolved  lenn: name 'lenn' used in helper() is not defined at module level"
        " or in builtins",
    ]
    coloured = render_report(report, color=True)
    assert ANSI.search(coloured) and ANSI.sub("", coloured) == text


def test_report_counts_and_warnings() -> None:
    problems = (
        Problem("unresolved", "lenn", 12, "name 'lenn' ..."),
        Problem("missing-member", "explain", None, "SpamRules requires explain(msg)"),
        Problem("shadowed", "x", 3, "x hides a builtin", severity="warning"),
    )
    lines = render_report(ResolveReport("spam@3", problems)).splitlines()
    assert lines[0] == "spam@3: 3 problems (2 errors, 1 warning)"
    assert lines[1] == "  line 12  unresolved  lenn: name 'lenn' ..."
    assert lines[2] == "  line -  missing-member  explain: SpamRules requires explain(msg)"
    assert lines[3] == "  line 3  shadowed (warning)  x: x hides a builtin"
    assert render_report(ResolveReport("spam@4", ())) == "spam@4: ok, no problems"


def test_printable_escapes_terminal_controls() -> None:
    # A client name can carry ESC, BEL, CR or a C1 CSI: shown, never obeyed.
    assert printable("evil\x1b]2;x\x07\r\u009b2J") == "evil\\x1b]2;x\\x07\\r\\x9b2J"
    assert printable("évian 名前") == "évian 名前"
