"""The resolve-check on real-code patterns: guards decided at check time,
names defined only in a branch that did not run, attributes that exist only
at run time, liveness, class-body annotations, surviving generator
expressions and imports inside functions.

Each test is a small module of its own, loaded the way the engine loads a
version; the stdlib and dependency corpus is in ``tests/test_corpus.py``.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Protocol

import pytest
from stdlib_corpus import load_source

from livepatch import Engine
from livepatch.resolve import ResolveReport, check_module
from livepatch.symbols import build_symbol_table


def check(source: str) -> ResolveReport:
    loaded = load_source(textwrap.dedent(source))
    return check_module("t@1", loaded.module, loaded.code, None)


def found(report: ResolveReport) -> set[tuple[str, str, str]]:
    return {(p.severity, p.kind, p.symbol) for p in report.problems}


# --- guards decided at check time ----------------------------------------------

OTHER = "win32" if sys.platform != "win32" else "linux"
OTHER_OS = "nt" if sys.platform != "win32" else "posix"


@pytest.mark.parametrize(
    "guard",
    [
        f"sys.platform == {OTHER!r}",
        f"sys.platform.startswith({OTHER[:3]!r})",
        f"sys.platform[:3] == {OTHER[:3]!r}",
        f"os.name == {OTHER_OS!r}",
        f"_os.name == {OTHER_OS!r} and flag",  # the and short-circuits on the first test
        f"flag and os.name == {OTHER_OS!r}",
        "sys.version_info < (3, 0)",
        "sys.version_info.major == 2",
        "_ON_OTHER",  # a module-level flag computed from the platform
        "_setmode",  # None: an optional import that failed
        "not _HERE",
        "hasattr(os, 'no_such_function_anywhere')",
        f"sys.platform in ({OTHER!r}, 'cygwin')",
        "_ON_OTHER or (_setmode is not None)",
    ],
)
def test_reads_behind_a_guard_that_cannot_hold_here_are_skipped(guard: str) -> None:
    report = check(
        f"""\
        import os
        import os as _os
        import sys
        _ON_OTHER = sys.platform == {OTHER!r}
        _HERE = not _ON_OTHER
        _setmode = None
        def work(flag):
            if {guard}:
                return msvcrt.getwch() + os.O_TEMPORARY
            return 0
        def ternary(flag):
            return os.O_TEMPORARY if {guard} else 0
        """
    )
    assert report.problems == ()


@pytest.mark.parametrize(
    "guard",
    [
        f"sys.platform != {OTHER!r}",  # true here: the read runs
        "flag",  # a parameter: cannot be decided
        f"flag or sys.platform == {OTHER!r}",
        "_MODE == 'fast'",  # rebound through ``global``: not fixed
        "hasattr(sys, 'last_traceback')",  # set by the interpreter later
    ],
)
def test_reads_behind_a_guard_that_may_hold_are_still_checked(guard: str) -> None:
    report = check(
        f"""\
        import os
        import sys
        _MODE = "slow"
        def configure(mode):
            global _MODE
            _MODE = mode
        def work(flag):
            if {guard}:
                return not_defined_anywhere() + os.no_such_attribute
            return 0
        """
    )
    assert found(report) == {
        ("error", "unresolved", "not_defined_anywhere"),
        ("error", "missing-attribute", "os.no_such_attribute"),
    }


def test_the_reachable_side_of_a_decided_guard_is_checked() -> None:
    report = check(
        f"""\
        import sys
        def work():
            if sys.platform == {OTHER!r}:
                return windows_only()
            else:
                return typo_here()
        """
    )
    assert found(report) == {("error", "unresolved", "typo_here")}
    assert report.problems[0].line == 6


def test_a_private_helper_called_only_behind_a_false_guard_is_not_checked() -> None:
    report = check(
        f"""\
        import os
        import sys
        _HAS_FCOPYFILE = sys.platform == {OTHER!r}
        def _fastcopy_other(fd):
            return os.only_on_that_platform(fd)
        def _called_here(fd):
            return os.missing_here_too(fd)
        def _never_called_here(n):
            return os.nor_here() if n else _never_called_here(n - 1)
        def public_helper():
            return os.still_checked()
        def copy(fd):
            if _HAS_FCOPYFILE:
                return _fastcopy_other(fd)
            return _called_here(fd)
        """
    )
    # _called_here is reachable; _never_called_here has no caller in the
    # module but itself (another module may call it); public_helper is public.
    assert found(report) == {
        ("error", "missing-attribute", "os.missing_here_too"),
        ("error", "missing-attribute", "os.nor_here"),
        ("error", "missing-attribute", "os.still_checked"),
    }


# --- names bound only in a branch that did not run --------------------------------


class _Nothing(Protocol):
    pass


def test_names_bound_only_in_a_branch_that_did_not_run_are_warnings() -> None:
    # Through the engine: its check quotes the source lines of the guards.
    engine = Engine(name="guards-test")
    engine.add_slot("s", _Nothing)
    source = textwrap.dedent(
        f"""\
        import sys
        try:
            import no_such_module_for_livepatch as helper
            from no_such_module_for_livepatch import Image
            HAVE_IT = True
        except ImportError:
            HAVE_IT = False
        if sys.platform == {OTHER!r}:
            from _winapi import CreateFile
        def render(kind):
            if kind == "png":
                return Image.new() + helper.run()
            return CreateFile(kind)
        def typo():
            return never_bound_anywhere
        """
    )
    try:
        report = engine.check(engine.load("s", source, "optional.py"))
    finally:
        engine.close()
    assert found(report) == {
        ("warning", "conditional", "Image"),
        ("warning", "conditional", "helper"),
        ("warning", "conditional", "CreateFile"),
        ("error", "unresolved", "never_bound_anywhere"),
    }
    assert not report.ok  # the typo still fails the check
    messages = {p.symbol: p.message for p in report.problems}
    assert (
        "defined only if `from no_such_module_for_livepatch import Image` succeeds"
        in (messages["Image"])
    )
    assert f"defined only if `sys.platform == {OTHER!r}` holds (line 8)" in (messages["CreateFile"])
    assert all("\n" not in m for m in messages.values())


def test_warnings_alone_pass_the_check() -> None:
    report = check(
        """\
        try:
            from no_such_module_for_livepatch import fast
        except ImportError:
            fast = None
        try:
            from no_such_module_for_livepatch import Extra
        except ImportError:
            pass
        def run(x):
            return Extra(x)
        """
    )
    assert report.ok and [p.kind for p in report.warnings] == ["conditional"]


def test_a_name_the_body_deletes_is_still_an_error() -> None:
    report = check(
        """\
        import os as _os
        SEP = _os.sep
        def join(a, b):
            return a + _os.sep + b
        del _os
        """
    )
    assert found(report) == {("error", "unresolved", "_os")}


# --- attributes that exist only at run time ------------------------------------------


def test_interpreter_set_sys_attributes_are_weak_with_the_reason() -> None:
    source = """\
        import sys
        def pm():
            return sys.last_traceback, sys.last_value, sys.ps1
        def typo():
            return sys.last_tracebak
        """
    loaded = load_source(textwrap.dedent(source))
    report = check_module("t@1", loaded.module, loaded.code, None)
    assert found(report) == {("error", "missing-attribute", "sys.last_tracebak")}
    table = build_symbol_table("t@1", loaded.module, loaded.code, textwrap.dedent(source))
    if not hasattr(sys, "last_traceback"):
        row = table["sys.last_traceback"]
        assert (row.letter, row.line) == ("W", 3)
        assert row.detail == (
            "sys.last_traceback: set by the interpreter after an uncaught exception"
        )
    assert "sys.last_tracebak" not in table


def test_curses_constants_set_by_initscr_are_weak() -> None:
    curses = pytest.importorskip("curses")
    if hasattr(curses, "ACS_VLINE"):
        pytest.skip("curses.initscr() already ran in this process")
    report = check(
        """\
        import curses
        def box(win):
            win.vline(0, 0, curses.ACS_VLINE, 3)
            return curses.LINES, curses.COLS
        """
    )
    assert report.problems == ()


@pytest.fixture
def helper_module(tmp_path: Path) -> Iterator[str]:
    """An importable module that binds names from its functions with ``global``
    and one only on another platform."""
    name = "livepatch_test_helper_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""\
            import sys
            def init():
                global ready, config
                ready = True
                config = {{}}
            if sys.platform == {OTHER!r}:
                ONLY_THERE = 1
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module(name)
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_attributes_another_module_binds_through_global_are_weak(helper_module: str) -> None:
    source = f"""\
        import {helper_module} as helper
        def use(flag):
            if flag:
                return helper.ONLY_THERE
            return helper.ready, helper.config, helper.missing_for_real
        """
    loaded = load_source(textwrap.dedent(source))
    report = check_module("t@1", loaded.module, loaded.code, None)
    assert found(report) == {
        ("warning", "conditional", "helper.ONLY_THERE"),
        ("error", "missing-attribute", "helper.missing_for_real"),
    }
    table = build_symbol_table("t@1", loaded.module, loaded.code, textwrap.dedent(source))
    assert table["helper.ready"].letter == "W"
    assert table["helper.ready"].detail.endswith(
        f"bound by {helper_module}.init() through `global`"
    )


# --- liveness and class bodies -----------------------------------------------------------


def test_an_import_stored_through_store_global_keeps_its_origin() -> None:
    source = """\
        try:
            from os import getcwd as where
        except ImportError:
            def where():
                return fallback_that_does_not_exist()
        def set_where(func):
            global where
            where = func
        """
    loaded = load_source(textwrap.dedent(source))
    report = check_module("t@1", loaded.module, loaded.code, None)
    assert report.problems == ()  # the fallback def never ran
    table = build_symbol_table("t@1", loaded.module, loaded.code, textwrap.dedent(source))
    assert (table["where"].letter, table["where"].detail) == ("I", "os.getcwd")


def test_a_def_rebound_to_another_modules_function_is_not_checked() -> None:
    report = check(
        """\
        import json
        def dumps(obj):
            return slow_python_version(obj)
        dumps = json.dumps
        def loads(text):
            return still_checked(text)
        """
    )
    assert found(report) == {("error", "unresolved", "still_checked")}


def test_annotations_in_a_class_body_that_runs_later_resolve() -> None:
    report = check(
        """\
        def make():
            class Point:
                x: int
                y: "Point | None" = None
                z: int = undefined_default
            return Point
        """
    )
    # The body is checked (it runs when make() does), but it binds its own
    # ``__annotations__``.
    assert found(report) == {("error", "unresolved", "undefined_default")}


# --- code that used to be missed ------------------------------------------------------------


def test_a_surviving_module_level_generator_expression_is_checked() -> None:
    report = check(
        """\
        _raw = [1, 2]
        CONSUMED = list(x for x in _raw)
        PENDING = (missing_fn(x) for x in range(3))
        LATER = ((y, also_missing) for y in _raw)
        del _raw
        """
    )
    assert found(report) == {
        ("error", "unresolved", "missing_fn"),
        ("error", "unresolved", "also_missing"),
    }
    assert "a generator expression at module level" in report.problems[0].message


def test_attributes_of_modules_imported_inside_functions_are_checked() -> None:
    report = check(
        """\
        def f(text):
            import re
            import os.path
            from os import path as p
            from json import decoder
            return re.compil(text), os.path.joinn("a"), p.existz("b"), decoder.JSONDecodr
        def g():
            from re import compil
            return compil
        def fine():
            import re
            try:
                from re import NOFLAG_OLD
            except ImportError:
                NOFLAG_OLD = 0
            return re.compile("x"), NOFLAG_OLD
        def rebound(flag):
            import re
            if flag:
                re = object()
            return re.anything
        """
    )
    assert found(report) == {
        ("error", "missing-attribute", "re.compil"),
        ("error", "missing-attribute", "os.path.joinn"),
        ("error", "missing-attribute", "p.existz"),
        ("error", "missing-attribute", "decoder.JSONDecodr"),
    }
    lines = {(p.symbol, p.line) for p in report.problems}
    # once per function that reads it: f() reads it, g() imports it by name
    assert {line for symbol, line in lines if symbol == "re.compil"} == {6, 8}
    assert ("os.path.joinn", 6) in lines


def test_local_imports_of_modules_not_imported_yet_are_left_alone() -> None:
    report = check(
        """\
        def f():
            import livepatch_no_such_module_anywhere as gone
            return gone.anything
        """
    )
    assert report.problems == ()


def test_handlers_loops_and_nested_definitions_follow_the_guards() -> None:
    report = check(
        f"""\
        import sys
        def handler(x):
            try:
                return int(x)
            except ValueError:
                return missing_in_handler
        def loop(items):
            while items and sys.platform == {OTHER!r}:
                items = other_platform_only(items)
            for item in items:
                if sys.version_info < (3,):
                    return py2_only(item)
            return items
        def nested():
            if sys.platform == {OTHER!r}:
                def helper():
                    return windows_thing()
                return helper
            def here():
                return typo_in_nested()
            return here
        VALUE = _FLAG = sys.platform == {OTHER!r}
        def assigned(x):
            y = _FLAG and other_platform_only(x)
            z = _FLAG or runs_here(x)
            return y, z
        """
    )
    assert found(report) == {
        ("error", "unresolved", "missing_in_handler"),
        ("error", "unresolved", "typo_in_nested"),
        ("error", "unresolved", "runs_here"),
    }


def test_every_line_that_runs_is_reachable() -> None:
    # The pruning is sound: run the functions with several arguments and
    # trace the lines they execute; each must hold a reachable instruction.
    from livepatch.guards import Reachability

    source = textwrap.dedent(
        f"""\
        import os
        import sys
        _ON_OTHER = sys.platform == {OTHER!r}
        _setmode = None
        def work(flag, items):
            out = []
            if _ON_OTHER and flag:
                out.append(1)
            elif flag or os.name == {OTHER_OS!r}:
                out.append(2)
            for item in items:
                if sys.version_info >= (3, 0) and item:
                    out.append(item)
                else:
                    out.append(-1)
            try:
                out.append(int(flag))
            except (TypeError, ValueError):
                out.append(None)
            if _setmode is not None or hasattr(os, "getpid"):
                out.append(os.getpid() > 0)
            return out
        """
    )
    loaded = load_source(source)
    work = loaded.module.work
    ran: set[int] = set()

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        if frame.f_code is work.__code__ and event == "line":
            ran.add(frame.f_lineno)
        return tracer

    sys.settrace(tracer)
    try:
        for flag in (True, False, "x", 0):
            work(flag, [0, 1, 2])
            work(flag, [])
    finally:
        sys.settrace(None)
    ns = loaded.module.__dict__
    reach = Reachability(ns, vars(builtins), {}, set())
    reachable_lines = {
        line
        for start, end, line in work.__code__.co_lines()
        if line is not None and any(o in reach.offsets(work.__code__) for o in range(start, end, 2))
    }
    assert ran and ran <= reachable_lines
    assert 8 not in reachable_lines  # ``out.append(1)``: behind _ON_OTHER
