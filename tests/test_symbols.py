"""Symbol tables: letters, lines, details, hashes, diffs and JSON."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdlib_corpus import CORPUS, load_source, stdlib_source

from livepatch.bytecode import code_hash
from livepatch.symbols import (
    DiffRow,
    SymbolDiff,
    SymbolRow,
    SymbolTable,
    _plain_signature,
    build_symbol_table,
    diff_tables,
    format_signature,
)


def table_of(source: str, version: str = "t@1") -> SymbolTable:
    source = textwrap.dedent(source)
    loaded = load_source(source)
    return build_symbol_table(version, loaded.module, loaded.code, source)


def letters(table: SymbolTable) -> dict[str, str]:
    return {row.name: row.letter for row in table}


# --- letters -----------------------------------------------------------------

EVERY_LETTER = """\
    '''A rule module with one of everything.'''
    import re
    import os.path
    import os.path as osp
    from dataclasses import dataclass, field as dc_field
    from math import *

    __all__ = ["classify"]
    THRESHOLD = 0.5
    WORDS = [
        "spam",
        "eggs",
    ]
    shout = lambda text: text.upper()

    @dataclass
    class Verdict:
        spam: bool
        score: float = 0.0

    def classify(msg: str, *, strict: bool = False) -> Verdict:
        global last_seen
        last_seen = msg
        hits = [w for w in WORDS if re.search(w, msg)]
        return Verdict(len(hits) > 0, sqrt(len(hits)) + undefined_helper())
"""


def test_every_letter() -> None:
    table = table_of(EVERY_LETTER)
    got = letters(table)
    assert got["classify"] == "T"
    assert got["shout"] == "T"  # a lambda bound at top level is a function defined here
    assert got["Verdict"] == "C"
    assert got["THRESHOLD"] == "D"
    assert got["WORDS"] == "D"
    assert got["__all__"] == "D"  # a user dunder keeps its row
    assert got["re"] == "I"
    assert got["os"] == "I"
    assert got["osp"] == "I"
    assert got["dataclass"] == "I"
    assert got["dc_field"] == "I"
    assert got["sqrt"] == "I"  # from a star import
    assert got["len"] == "U"
    assert got["undefined_helper"] == "U"
    assert got["last_seen"] == "W"
    for dunder in ("__name__", "__doc__", "__builtins__", "__file__", "__spec__", "__loader__"):
        assert dunder not in table
    # The comprehension variable and locals are not module symbols.
    assert "w" not in table and "hits" not in table and "msg" not in table


def test_details() -> None:
    table = table_of(EVERY_LETTER)
    assert table["re"].detail == "re"
    assert table["os"].detail == "os"  # ``import os.path`` binds the package
    assert table["osp"].detail == "os.path"
    assert table["dataclass"].detail == "dataclasses.dataclass"
    assert table["dc_field"].detail == "dataclasses.field"
    assert table["sqrt"].detail == "math.sqrt"
    assert table["len"].detail == "builtins.len"
    assert table["undefined_helper"].detail == "?"
    assert table["THRESHOLD"].detail == "float"
    assert table["WORDS"].detail == "list"
    assert table["classify"].detail == "" and table["Verdict"].detail == ""
    assert table["last_seen"].detail == "bound by classify() through `global`"


def test_signatures_for_functions_and_classes_only() -> None:
    table = table_of(EVERY_LETTER)
    assert table["classify"].signature == "(msg: str, *, strict: bool = False) -> Verdict"
    assert table["Verdict"].signature == "(spam: bool, score: float = 0.0) -> None"
    assert table["shout"].signature == "(text)"
    for name in ("THRESHOLD", "re", "len", "last_seen", "dataclass"):
        assert table[name].signature is None


def test_string_annotations_are_shown_as_written() -> None:
    table = table_of(
        """\
        from __future__ import annotations
        def classify(msg: Message, extra: list[Message] | None = None) -> Verdict:
            return msg
        """
    )
    assert table["classify"].signature == (
        "(msg: Message, extra: list[Message] | None = None) -> Verdict"
    )
    assert table["annotations"].letter == "I"
    assert table["annotations"].detail == "__future__.annotations"


def test_signature_defaults_with_addresses_are_stable() -> None:
    # ``object()`` as a default would print a memory address, different in
    # every version: the row must not say "changed" because of it.
    source = """\
        _SENTINEL = object()
        def get(key, default=_SENTINEL):
            return default
        """
    a, b = table_of(source, "a@1"), table_of(source, "a@2")
    assert "0x" not in (a["get"].signature or "")
    assert diff_tables(a, b).counts()["~"] == 0


def test_lines() -> None:
    table = table_of(EVERY_LETTER)
    assert table["re"].line == 2
    assert table["THRESHOLD"].line == 9
    assert table["WORDS"].line == 10
    assert table["Verdict"].line == 16  # the decorator line, as co_firstlineno reports
    assert table["classify"].line == 21
    assert table["last_seen"].line == 23  # first line binding it through ``global``
    assert table["len"].line == 25  # first line reading it
    assert table["sqrt"].line == 6


def test_undefined_first_use_is_the_smallest_line_across_functions() -> None:
    table = table_of(
        """\
        def outer():
            def inner():
                return mystery()
            return mystery() + inner()

        def later():
            return mystery()
        """
    )
    assert table["mystery"].letter == "U"
    assert table["mystery"].line == 3  # inner() reads it before outer's own read


def test_decorated_functions_stay_T() -> None:
    table = table_of(
        """\
        import functools

        def logged(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return func(*args, **kwargs)
            return wrapper

        @logged
        def rule(msg):
            return msg

        @functools.lru_cache(maxsize=None)
        def cached(n):
            return n

        join = functools.partial(str.join, ",")
        """
    )
    assert table["logged"].letter == "T"
    assert table["rule"].letter == "T"
    assert table["rule"].signature == "(msg)"
    assert table["rule"].line == 9
    assert table["cached"].letter == "T"
    assert table["join"].letter == "D"
    assert table["functools"].letter == "I"


def test_objects_from_elsewhere_are_D_or_I() -> None:
    table = table_of(
        """\
        import os.path
        from collections import OrderedDict
        joiner = os.path.join
        Ordered = OrderedDict
        """
    )
    assert table["OrderedDict"].letter == "I"
    assert table["OrderedDict"].detail == "collections.OrderedDict"
    # Bound by assignment, not by an import statement: data of this module.
    assert table["joiner"].letter == "D"
    assert table["Ordered"].letter == "D"
    assert table["Ordered"].detail == "type"


def test_import_replaced_python_fallback_is_I() -> None:
    # The accelerator pattern: a Python definition, then an import that wins.
    table = table_of(
        """\
        def dumps(obj):
            return str(obj)
        try:
            from json import dumps
        except ImportError:
            pass
        """
    )
    assert table["dumps"].letter == "I"
    assert table["dumps"].detail == "json.dumps"


def test_class_body_names_are_not_module_symbols() -> None:
    table = table_of(
        """\
        class Rules:
            LIMIT = 3
            def check(self, n):
                return n > LIMIT
        """
    )
    assert "LIMIT" in table and table["LIMIT"].letter == "U"
    assert table["LIMIT"].detail == "?"
    assert table["Rules"].letter == "C"


def test_weak_name_bound_at_load_is_still_W() -> None:
    table = table_of(
        """\
        def init():
            global registry
            registry = {}
        init()
        def use():
            return registry
        """
    )
    assert table["registry"].letter == "W"


def test_dead_definitions_do_not_create_U_rows() -> None:
    table = table_of(
        """\
        import sys
        if sys.platform == "no-such-platform":
            def special():
                return only_there()
        def helper():
            return 1
        VALUE = helper()
        del helper
        """
    )
    assert "only_there" not in table
    assert "special" not in table and "helper" not in table


# --- hashes and diffs ----------------------------------------------------------

BASE = """\
import re

LIMIT = 3

def classify(msg):
    '''Spam or not.'''
    return len(msg) > LIMIT and re.search("spam", msg) is not None

def explain(msg):
    def reason():
        return "long" if len(msg) > LIMIT else "short"
    return reason()
"""


def test_moving_code_keeps_hashes_and_marks_equal() -> None:
    moved = "\n\n\n# a comment that moves everything down\n" + BASE.replace(
        "import re\n", "import re\n\n\n"
    )
    a, b = table_of(BASE, "spam@1"), table_of(moved, "spam@2")
    diff = diff_tables(a, b)
    assert a["classify"].line != b["classify"].line
    assert a["LIMIT"].line != b["LIMIT"].line
    assert {row.marker for row in diff.rows} == {"="}
    assert all(row.left == a[row.name] and row.right == b[row.name] for row in diff.rows)


def test_changed_body_nested_code_and_data_are_marked_changed() -> None:
    changed = BASE.replace('"short"', '"tiny"').replace("LIMIT = 3", "LIMIT = 4")
    diff = diff_tables(table_of(BASE, "spam@1"), table_of(changed, "spam@2"))
    by_name = {row.name: row for row in diff.rows}
    assert by_name["explain"].marker == "~"  # the change is in a nested function
    assert by_name["LIMIT"].marker == "~"
    assert by_name["classify"].marker == "="
    assert by_name["re"].marker == "="


def test_added_removed_and_counts() -> None:
    b_source = BASE.replace("def explain(msg):", "def describe(msg):") + "\nNEW = lenn\n"
    b_source = b_source.replace("NEW = lenn", "NEW = 1")
    diff = diff_tables(table_of(BASE, "spam@1"), table_of(b_source, "spam@2"))
    by_name = {row.name: row for row in diff.rows}
    assert by_name["describe"].marker == "+"
    assert by_name["describe"].left is None
    assert by_name["explain"].marker == "-"
    assert by_name["explain"].right is None
    assert by_name["NEW"].marker == "+"
    counts = diff.counts()
    assert counts == {"=": counts["="], "~": 0, "+": 2, "-": 1}
    assert sum(counts.values()) == len(diff.rows)
    assert [row.name for row in diff.rows] == sorted(row.name for row in diff.rows)
    assert (diff.a, diff.b) == ("spam@1", "spam@2")


def test_signature_and_letter_changes_are_changes() -> None:
    a = table_of("def rule(msg):\n    return msg\n", "r@1")
    b = table_of("def rule(msg, extra=None):\n    return msg\n", "r@2")
    assert diff_tables(a, b).rows[0].marker == "~"
    c = table_of("rule = 1\n", "r@3")
    assert diff_tables(a, c).rows[0].marker == "~"


def test_imports_that_resolve_differently_are_flagged() -> None:
    a = table_of("from json import dumps\ndef f():\n    return dumps(1)\n", "r@1")
    b = table_of("from pickle import dumps\ndef f():\n    return dumps(1)\n", "r@2")
    row = {r.name: r for r in diff_tables(a, b).rows}["dumps"]
    assert row.marker == "~"
    assert row.resolves_differently
    assert {r.name: r for r in diff_tables(a, b).rows}["f"].resolves_differently is False


def test_undefined_names_that_resolve_differently_are_flagged() -> None:
    # Only builtins can make one U name resolve differently in two versions;
    # build the tables directly, as a client receiving them would.
    u_builtin = SymbolRow("frob", "U", 3, None, "builtins.frob", "aaaaaaaaaaaa")
    u_missing = SymbolRow("frob", "U", 3, None, "?", "bbbbbbbbbbbb")
    same = SymbolRow("len", "U", 4, None, "builtins.len", "cccccccccccc")
    diff = diff_tables(SymbolTable("a@1", (u_builtin, same)), SymbolTable("a@2", (u_missing, same)))
    rows = {r.name: r for r in diff.rows}
    assert rows["frob"].marker == "~" and rows["frob"].resolves_differently
    assert rows["len"].marker == "=" and not rows["len"].resolves_differently


def test_letter_change_between_U_and_T_is_not_a_resolution_flag() -> None:
    a = table_of("def f():\n    return helper()\n", "r@1")
    b = table_of("def f():\n    return helper()\ndef helper():\n    return 1\n", "r@2")
    row = {r.name: r for r in diff_tables(a, b).rows}["helper"]
    assert row.marker == "~"
    assert not row.resolves_differently


def test_code_hash_ignores_lines_but_not_constants() -> None:
    one = compile("def f():\n    return {'a', 'b', 'c'}\n", "x", "exec")
    moved = compile("\n\n\ndef f():\n    return {'a', 'b', 'c'}\n", "y", "exec")
    other = compile("def f():\n    return {'a', 'b', 'd'}\n", "x", "exec")
    assert code_hash(one) == code_hash(moved)
    assert code_hash(one) != code_hash(other)
    assert len(code_hash(one)) == 12
    int(code_hash(one), 16)


def test_code_hash_is_the_same_in_another_process() -> None:
    # Frozenset constants iterate in string-hash order, which differs per
    # process; the hash must not.
    program = (
        "from livepatch.bytecode import code_hash\n"
        'print(code_hash(compile(\'x in {"alpha", "beta", "gamma", "delta"}\', \'s\', \'exec\')))\n'
    )
    results = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
        )
        results.add(done.stdout.strip())
    assert len(results) == 1


# --- data model ----------------------------------------------------------------


def test_table_mapping_api() -> None:
    rows = (
        SymbolRow("zeta", "D", 3, None, "int", "000000000001"),
        SymbolRow("alpha", "T", 1, "()", "", "000000000002"),
    )
    table = SymbolTable("x@1", rows)
    assert [r.name for r in table] == ["alpha", "zeta"]  # kept sorted by name
    assert table["zeta"].letter == "D"
    assert "alpha" in table and "missing" not in table and 3 not in table
    assert len(table) == 2
    assert table.by_letter("T") == [table["alpha"]]
    assert table.by_letter("U") == []
    with pytest.raises(KeyError):
        table["missing"]


def test_json_round_trip_of_real_tables_and_diff() -> None:
    a, b = table_of(BASE, "spam@1"), table_of(BASE.replace("3", "4"), "spam@2")
    for table in (a, b):
        data = json.loads(json.dumps(table.to_json()))
        assert SymbolTable.from_json(data) == table
    diff = diff_tables(a, b)
    data = json.loads(json.dumps(diff.to_json()))
    assert data["counts"] == diff.counts()
    assert SymbolDiff.from_json(data) == diff


_letters = st.sampled_from(["T", "C", "D", "I", "U", "W"])
_rows = st.builds(
    SymbolRow,
    name=st.text(alphabet="abcdefgh_", min_size=1, max_size=6),
    letter=_letters,
    line=st.none() | st.integers(min_value=1, max_value=5000),
    signature=st.none() | st.text(max_size=10),
    detail=st.text(max_size=10),
    code_hash=st.text(alphabet="0123456789abcdef", min_size=12, max_size=12),
)


def _table(version: str, rows: list[SymbolRow]) -> SymbolTable:
    unique = {row.name: row for row in rows}
    return SymbolTable(version, tuple(unique.values()))


@settings(max_examples=200, deadline=None)
@given(st.lists(_rows, max_size=12), st.lists(_rows, max_size=12))
def test_diff_properties(left: list[SymbolRow], right: list[SymbolRow]) -> None:
    a, b = _table("a@1", left), _table("b@1", right)
    diff = diff_tables(a, b)
    names = {r.name for r in a} | {r.name for r in b}
    assert [r.name for r in diff.rows] == sorted(names)
    assert sum(diff.counts().values()) == len(names)
    # A table against itself: nothing changed, nothing flagged.
    assert {r.marker for r in diff_tables(a, a).rows} <= {"="}
    # Swapping sides swaps + and -, and keeps = and ~.
    swapped = {r.name: r.marker for r in diff_tables(b, a).rows}
    flip = {"+": "-", "-": "+", "=": "=", "~": "~"}
    assert all(swapped[r.name] == flip[r.marker] for r in diff.rows)
    for row in diff.rows:
        if row.resolves_differently:
            assert row.left is not None and row.right is not None
            assert row.left.letter == row.right.letter and row.left.letter in ("U", "I")
        if row.marker == "=":
            assert row.left is not None and row.right is not None
            assert (row.left.letter, row.left.detail, row.left.code_hash) == (
                row.right.letter,
                row.right.detail,
                row.right.code_hash,
            )
    assert SymbolDiff.from_json(json.loads(json.dumps(diff.to_json()))) == diff
    assert DiffRow.from_json(diff.rows[0].to_json()) == diff.rows[0] if diff.rows else True


# --- real code -------------------------------------------------------------------


def test_stdlib_module_table() -> None:
    source, path = stdlib_source("textwrap")
    loaded = load_source(source, filename=path)
    table = build_symbol_table("textwrap@1", loaded.module, loaded.code, source)
    assert table["TextWrapper"].letter == "C"
    assert table["wrap"].letter == "T"
    assert table["wrap"].signature == "(text, width=70, **kwargs)"
    assert table["re"].letter == "I"
    assert table["__all__"].letter == "D"
    assert table["len"].detail == "builtins.len"
    assert not [row for row in table if row.letter == "U" and row.detail == "?"]


def test_plain_signature_matches_inspect_on_the_corpus() -> None:
    # The fast path must print exactly what inspect.signature would.
    functions: list[types.FunctionType] = []
    for name in CORPUS[:40]:
        source, path = stdlib_source(name)
        namespace = load_source(source, filename=path).module.__dict__
        for value in namespace.values():
            candidates = vars(value).values() if isinstance(value, type) else [value]
            functions.extend(
                f for f in candidates if isinstance(f, types.FunctionType) and not f.__dict__
            )
    assert len(functions) > 1000
    mismatches = [
        f.__qualname__
        for f in functions
        if _plain_signature(f) != format_signature(inspect.signature(f))
    ]
    assert mismatches == []
