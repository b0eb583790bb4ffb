"""The resolve-check: names, module attributes, interfaces, and the stdlib corpus."""

from __future__ import annotations

import builtins
import dis
import json
import re
import sys
import textwrap
import types
import warnings
from collections.abc import Iterator

import pytest
from stdlib_corpus import CORPUS, NOTHING_TO_BREAK, Loaded, load_source, stdlib_source

from livepatch.bytecode import CodeFacts, _exception_entries, iter_code_objects, module_facts
from livepatch.resolve import (
    Problem,
    ResolveReport,
    boundary_types,
    check_module,
    interface_members,
)


def check(source: str, interface: type | None = None) -> ResolveReport:
    loaded = load_source(textwrap.dedent(source))
    return check_module("t@1", loaded.module, loaded.code, interface)


def found(report: ResolveReport) -> set[tuple[str, str]]:
    return {(p.kind, p.symbol) for p in report.problems}


# --- names ---------------------------------------------------------------------


def test_unresolved_name_in_function_with_line_and_function() -> None:
    report = check(
        """\
        def classify(msg):
            n = len(msg)
            return lenn(msg) + n
        """
    )
    assert not report.ok
    (problem,) = report.problems
    assert (problem.kind, problem.symbol, problem.line) == ("unresolved", "lenn", 3)
    assert problem.severity == "error"
    assert "classify()" in problem.message and "'lenn'" in problem.message
    assert "\n" not in problem.message


def test_clean_module_is_ok() -> None:
    report = check(
        """\
        import re
        LIMIT = 3
        def classify(msg):
            return len(msg) > LIMIT and re.search("x", msg) is not None
        """
    )
    assert report.ok and report.problems == () and report.errors == ()


def test_nested_functions_lambdas_comprehensions_and_generators() -> None:
    report = check(
        """\
        def outer():
            def inner():
                return missing_in_inner
            key = lambda item: missing_in_lambda(item)
            squares = [missing_in_listcomp(x) for x in range(3)]
            total = sum(missing_in_genexpr(x) for x in range(3))
            table = {x: missing_in_dictcomp for x in range(3)}
            return inner, key, squares, total, table
        """
    )
    assert found(report) == {
        ("unresolved", "missing_in_inner"),
        ("unresolved", "missing_in_lambda"),
        ("unresolved", "missing_in_listcomp"),
        ("unresolved", "missing_in_genexpr"),
        ("unresolved", "missing_in_dictcomp"),
    }
    where = {p.symbol: p.message for p in report.problems}
    assert "outer.<locals>.inner()" in where["missing_in_inner"]
    assert "outer.<locals>.<lambda>()" in where["missing_in_lambda"]
    assert "a list comprehension in outer()" in where["missing_in_listcomp"]
    assert "a generator expression in outer()" in where["missing_in_genexpr"]
    lines = {p.symbol: p.line for p in report.problems}
    assert lines == {
        "missing_in_inner": 3,
        "missing_in_lambda": 4,
        "missing_in_listcomp": 5,
        "missing_in_genexpr": 6,
        "missing_in_dictcomp": 7,
    }


def test_methods_resolve_against_module_globals_not_the_class_body() -> None:
    report = check(
        """\
        class Rules:
            LIMIT = 3
            def check(self, n):
                return n > LIMIT
            def fine(self, n):
                return n > self.LIMIT
        """
    )
    assert found(report) == {("unresolved", "LIMIT")}
    assert "Rules.check()" in report.problems[0].message


def test_load_time_code_is_not_checked() -> None:
    # The module body, class bodies and comprehensions directly in them ran
    # at load, so their names existed then, even if deleted afterwards.
    report = check(
        """\
        _raw = [3, 1, 2]
        SORTED = [x for x in sorted(_raw)]
        GEN = list(y for y in _raw)
        class Table:
            ROWS = [r * 2 for r in _raw]
            TOTAL = sum(_raw)
        del _raw
        def rows():
            return Table.ROWS
        """
    )
    assert report.problems == ()


def test_names_deleted_after_load_are_reported_when_functions_need_them() -> None:
    report = check(
        """\
        import os as _os
        SEP = _os.sep
        def join(a, b):
            return a + _os.sep + b
        del _os
        """
    )
    assert found(report) == {("unresolved", "_os")}


def test_class_defined_in_a_function_checks_its_body_later() -> None:
    report = check(
        """\
        def make():
            class Local:
                own = 1
                doubled = own * 2
                other = not_defined_anywhere
            return Local
        """
    )
    assert found(report) == {("unresolved", "not_defined_anywhere")}
    assert "class make.<locals>.Local" in report.problems[0].message


def test_global_statement_names_are_weak_and_fine() -> None:
    report = check(
        """\
        def init():
            global cache
            cache = {}
        def use(key):
            return cache.get(key)
        def drop():
            global cache
            del cache
        """
    )
    assert report.problems == ()


def test_star_import_names_resolve() -> None:
    report = check(
        """\
        from math import *
        def hyp(a, b):
            return sqrt(a * a + b * b) + floor(pi)
        """
    )
    assert report.problems == ()


def test_builtins_resolve() -> None:
    assert check("def f(x):\n    return len(x) + max(x) + int(__debug__)\n").problems == ()


def test_decorators_and_their_wrappers_are_checked() -> None:
    report = check(
        """\
        import functools
        def traced(func):
            @functools.wraps(func)
            def wrapper(*args):
                log_call(func.__name__)
                return func(*args)
            return wrapper

        @traced
        def rule(msg):
            return undefined_in_rule(msg)
        """
    )
    assert found(report) == {("unresolved", "log_call"), ("unresolved", "undefined_in_rule")}
    where = {p.symbol: p.message for p in report.problems}
    assert "traced.<locals>.wrapper()" in where["log_call"]
    assert "rule()" in where["undefined_in_rule"]


def test_name_error_guard_is_respected_but_broad_except_is_not() -> None:
    report = check(
        """\
        def compat():
            try:
                return unicode
            except NameError:
                return str
        def swallowed(msg):
            try:
                return lenn(msg)
            except Exception:
                return 0
        """
    )
    # ``except Exception`` would hide the typo at run time: still an error.
    assert found(report) == {("unresolved", "lenn")}


def test_dead_definitions_are_not_checked() -> None:
    report = check(
        """\
        import sys
        if sys.platform == "no-such-platform":
            def special():
                return only_on_that_platform()
            class Native:
                def run(self):
                    return also_only_there()
        def helper():
            return uses_deleted_helper()
        VALUE = 1
        del helper

        def choose():
            return first_version_only()
        def choose():
            return 2

        class Popen:
            if sys.platform == "no-such-platform":
                def _spawn(self):
                    return winapi_thing()
            else:
                def _spawn(self):
                    return 0
        """
    )
    assert report.problems == ()


# --- module attributes -----------------------------------------------------------


def test_missing_module_attributes() -> None:
    report = check(
        """\
        import re
        import os
        import os.path as osp
        def f(p):
            pattern = re.compil("x")
            return os.path.joinn(p, "a"), osp.exists(p), os.path.join(p), re.compile("y")
        def g():
            return re.compil
        """
    )
    assert found(report) == {
        ("missing-attribute", "re.compil"),
        ("missing-attribute", "os.path.joinn"),
    }
    by_symbol = {p.symbol: p for p in report.problems if p.message.endswith("f()")}
    assert by_symbol["re.compil"].line == 5
    assert by_symbol["os.path.joinn"].line == 6
    assert "module 're' has no attribute 'compil'" in by_symbol["re.compil"].message
    # reported once per function that reads it
    assert sum(1 for p in report.problems if p.symbol == "re.compil") == 2


def test_attribute_stores_and_non_module_globals_are_not_checked() -> None:
    report = check(
        """\
        import types
        class Box:
            pass
        CONFIG = types.SimpleNamespace()
        def setup():
            types.custom_flag = True
            return Box.not_there, CONFIG.anything
        def later():
            return types.custom_flag
        """
    )
    assert report.problems == ()


def test_guarded_module_attributes_are_not_errors() -> None:
    report = check(
        """\
        import sys
        def last():
            if not hasattr(sys, "last_type"):
                raise ValueError("no last exception")
            return sys.last_type, sys.last_value
        def tb():
            try:
                return sys.last_traceback
            except AttributeError:
                return None
        def unguarded():
            return sys.last_exc_that_does_not_exist
        """
    )
    assert found(report) == {("missing-attribute", "sys.last_exc_that_does_not_exist")}


# --- interfaces ------------------------------------------------------------------

HOST_SOURCE = """\
from __future__ import annotations
from dataclasses import dataclass
from typing import Protocol

@dataclass
class Message:
    sender: str
    body: str

@dataclass
class Verdict:
    spam: bool
    score: float = 0.0

class BaseRules(Protocol):
    def explain(self, msg: Message) -> str: ...

class SpamRules(BaseRules, Protocol):
    def classify(self, msg: Message) -> Verdict: ...
    def batch(self, msgs: list[Message], *, limit: int = 10) -> list[Verdict | None]: ...

class Empty(Protocol):
    pass
"""

HOST_NAME = "livepatch_test_host"


@pytest.fixture(scope="module")
def host() -> Iterator[types.ModuleType]:
    """The host program's types and interfaces, importable by rule sources."""
    module = types.ModuleType(HOST_NAME)
    sys.modules[HOST_NAME] = module
    try:
        exec(compile(HOST_SOURCE, "host.py", "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(HOST_NAME, None)


GOOD_RULES = f"""\
from {HOST_NAME} import Message, Verdict

def classify(msg: Message) -> Verdict:
    return Verdict(spam="spam" in msg.body)

def explain(msg: Message) -> str:
    return "looks like spam" if classify(msg).spam else "fine"

def batch(msgs: list[Message], *, limit: int = 10) -> list[Verdict | None]:
    return [classify(m) for m in msgs[:limit]]
"""


def test_interface_members_and_boundary_types(host: types.ModuleType) -> None:
    members = interface_members(host.SpamRules)
    assert set(members) == {"explain", "classify", "batch"}  # inherited base included
    classify = members["classify"]
    assert list(classify.parameters) == ["msg"]  # no self
    assert classify.parameters["msg"].annotation is host.Message  # string resolved
    assert classify.return_annotation is host.Verdict
    assert list(members["batch"].parameters) == ["msgs", "limit"]
    assert boundary_types(host.SpamRules) == frozenset({host.Message, host.Verdict})
    assert interface_members(host.Empty) == {}
    assert boundary_types(host.Empty) == frozenset()


def rules(source: str, host: types.ModuleType, interface: str = "SpamRules") -> ResolveReport:
    return check(source, getattr(host, interface))


def test_good_implementations_pass(host: types.ModuleType) -> None:
    assert rules(GOOD_RULES, host).problems == ()
    stringly = "from __future__ import annotations\n" + GOOD_RULES
    assert rules(stringly, host).problems == ()
    optional = GOOD_RULES.replace("list[Verdict | None]", "list[Optional[Verdict]]").replace(
        "import Message, Verdict", "import Message, Verdict\nfrom typing import Optional, Any"
    )
    assert rules(optional, host).problems == ()
    untyped = re.sub(r": [\w\[\] |]+|-> [\w\[\] |]+", "", GOOD_RULES)
    assert "Message)" not in untyped
    assert rules(untyped, host).problems == ()


def test_missing_member(host: types.ModuleType) -> None:
    source = GOOD_RULES.replace("def explain(", "def explainn(")
    report = rules(source, host)
    assert found(report) == {("missing-member", "explain")}
    assert report.problems[0].line is None
    assert "SpamRules" in report.problems[0].message


def test_not_callable(host: types.ModuleType) -> None:
    source = GOOD_RULES.replace("def explain(msg: Message) -> str:", "explain = 'no'\ndef _x(msg):")
    report = rules(source, host)
    assert found(report) == {("not-callable", "explain")}
    assert report.problems[0].line == 6


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            "def classify(msg: Message) -> Verdict:",
            "def classify(message: Message) -> Verdict:\n    msg = message",
            "named",
        ),
        ("def classify(msg: Message)", "def classify(msg: Message, extra)", "parameter(s)"),
        ("def classify(msg: Message)", "def classify(*, msg: Message)", "keyword-only"),
        ("*, limit: int = 10)", "*, limit: int)", "needs a default"),
    ],
)
def test_signature_mismatch(host: types.ModuleType, old: str, new: str, reason: str) -> None:
    source = GOOD_RULES.replace(old, new)
    report = rules(source, host)
    kinds = found(report)
    assert len(kinds) == 1
    ((kind, symbol),) = kinds
    assert kind == "signature-mismatch"
    assert symbol in ("classify", "batch")
    assert reason in report.problems[0].message
    assert report.problems[0].line is not None


OWN_MESSAGE = f"""\
from dataclasses import dataclass
from {HOST_NAME} import Verdict

@dataclass
class Message:
    sender: str
    body: str

def classify(msg: Message) -> Verdict:
    return Verdict(spam=False)

def explain(msg) -> str:
    return ""

def batch(msgs, *, limit=10):
    return []
"""


def test_own_message_type_is_a_type_mismatch(host: types.ModuleType) -> None:
    report = rules(OWN_MESSAGE, host)
    assert found(report) == {("type-mismatch", "Message"), ("type-mismatch", "classify")}
    lines = {p.symbol: p.line for p in report.problems}
    assert lines == {"Message": 4, "classify": 9}
    shadow = next(p for p in report.problems if p.symbol == "Message")
    assert HOST_NAME in shadow.message


def test_own_message_only_defined_is_still_a_type_mismatch(host: types.ModuleType) -> None:
    source = OWN_MESSAGE.replace("def classify(msg: Message)", "def classify(msg)")
    assert found(rules(source, host)) == {("type-mismatch", "Message")}


def test_own_message_in_string_annotations_and_generics(host: types.ModuleType) -> None:
    source = "from __future__ import annotations\n" + OWN_MESSAGE.replace(
        "def batch(msgs, *, limit=10):", "def batch(msgs: list[Message], *, limit: int = 10):"
    )
    assert found(rules(source, host)) == {
        ("type-mismatch", "Message"),
        ("type-mismatch", "classify"),
        ("type-mismatch", "batch"),
    }


def test_wrong_host_type_in_annotation(host: types.ModuleType) -> None:
    source = GOOD_RULES.replace(
        "def classify(msg: Message) -> Verdict:", "def classify(msg: Message) -> dict:"
    )
    report = rules(source, host)
    assert found(report) == {("type-mismatch", "classify")}
    assert "return value" in report.problems[0].message


def test_unresolvable_string_annotation(host: types.ModuleType) -> None:
    source = "from __future__ import annotations\n" + GOOD_RULES.replace(
        "def explain(msg: Message)", "def explain(msg: Mesage)"
    )
    report = rules(source, host)
    assert found(report) == {("unresolved", "Mesage")}


def test_empty_protocol_checks_names_only(host: types.ModuleType) -> None:
    assert rules("def f():\n    return 1\n", host, "Empty").problems == ()
    assert found(rules("def f():\n    return g()\n", host, "Empty")) == {("unresolved", "g")}


# --- reports ---------------------------------------------------------------------


def test_report_api_and_json() -> None:
    problems = (
        Problem("unresolved", "lenn", 3, "name 'lenn' ..."),
        Problem("unused", "x", 1, "x is never read", severity="warning"),
    )
    report = ResolveReport("spam@3", problems)
    assert not report.ok
    assert report.errors == problems[:1] and report.warnings == problems[1:]
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False
    assert ResolveReport.from_json(data) == report
    assert ResolveReport("spam@4", problems[1:]).ok  # warnings alone do not fail
    assert Problem.from_json(problems[0].to_json()) == problems[0]


def test_problems_come_in_line_order() -> None:
    report = check(
        """\
        def b():
            return zz()
        def a():
            return yy()
        """
    )
    assert [p.line for p in report.problems] == [2, 4]


# --- the reader agrees with dis ----------------------------------------------------


def _dis_facts(code: types.CodeType) -> tuple[set[str], set[tuple[str, ...]]]:
    """Global reads and attribute chains of one code object, the slow way."""
    reads: set[str] = set()
    chains: set[tuple[str, ...]] = set()
    instructions = [i for i in dis.get_instructions(code) if i.opname != "EXTENDED_ARG"]
    for index, instr in enumerate(instructions):
        if instr.opname != "LOAD_GLOBAL":
            continue
        reads.add(instr.argval)
        chain = [instr.argval]
        for follower in instructions[index + 1 :]:
            if follower.opname not in ("LOAD_ATTR", "LOAD_METHOD"):
                break
            chain.append(follower.argval)
        if len(chain) > 1:
            chains.add(tuple(chain))
    return reads, chains


def test_fast_reader_matches_dis_on_the_corpus() -> None:
    compared = 0
    for name in CORPUS[::3]:
        source, path = stdlib_source(name)
        code = compile(source, path, "exec")
        facts = module_facts(code)
        every = {id(f.code): f for f in _walk(facts.top)}
        for sub in iter_code_objects(code):
            if not sub.co_flags & 0x1:  # class bodies read through LOAD_NAME
                continue
            mine = every[id(sub)]
            reads, chains = _dis_facts(sub)
            assert set(mine.reads) == reads, sub
            got = {(c.base, *(a for a, _off in c.attrs)) for c in mine.chains}
            # dis sees LOAD_NAME-free function code; chains must agree too
            assert {c for c in got if c[0] in reads} == chains, sub
            for chain in mine.chains:
                for _attr, offset in chain.attrs:
                    lines = [
                        i.positions.lineno if i.positions else None
                        for i in dis.get_instructions(sub)
                        if i.offset == offset
                    ]
                    assert lines == [mine.line_at(offset)]
            compared += 1
    assert compared > 1000


def _walk(facts: CodeFacts) -> Iterator[CodeFacts]:
    yield facts
    for child in facts.children:
        yield from _walk(child)


def test_exception_table_parser_matches_dis() -> None:
    source, path = stdlib_source("zipfile")
    code = compile(source, path, "exec")
    for sub in iter_code_objects(code):
        entries = dis.Bytecode(sub).exception_entries  # type: ignore[attr-defined]
        expected = [(e.start, e.end, e.target) for e in entries]
        assert _exception_entries(sub) == expected


# --- the stdlib corpus -----------------------------------------------------------


def _load_stdlib(name: str, source: str | None = None) -> Loaded:
    text, path = stdlib_source(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_source(text if source is None else source, filename=path, stem="corpus")


@pytest.mark.parametrize("name", CORPUS)
def test_stdlib_module_resolves_cleanly(name: str) -> None:
    loaded = _load_stdlib(name)
    report = check_module(f"{name}@1", loaded.module, loaded.code, None)
    assert report.problems == (), "\n".join(p.message for p in report.problems)


def _live_codes(namespace: dict[str, object]) -> set[int]:
    """ids of the code objects reachable from live functions and methods,
    found independently of livepatch's own liveness rules."""
    roots: list[types.CodeType] = []
    module_name = namespace["__name__"]
    for value in namespace.values():
        members = [value]
        if isinstance(value, type) and value.__dict__.get("__module__") == module_name:
            members = list(vars(value).values())
        for member in members:
            member = getattr(member, "__func__", member)
            member = getattr(member, "fget", member)
            if isinstance(member, types.FunctionType) and member.__globals__ is namespace:
                roots.append(member.__code__)
    seen: set[int] = set()
    while roots:
        code = roots.pop()
        if id(code) not in seen:
            seen.add(id(code))
            roots.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return seen


def _break_one(name: str) -> tuple[str, Loaded] | None:
    """Rename one top-level def/class that live code refers to, so the
    module still loads but exactly that name no longer exists."""
    source, _path = stdlib_source(name)
    loaded = _load_stdlib(name)
    namespace = loaded.module.__dict__
    live = _live_codes(namespace)
    referenced: set[str] = set()
    for code in iter_code_objects(loaded.code):
        if id(code) in live:
            referenced.update(
                i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"
            )
    candidates: list[tuple[int, str, str, str]] = []
    for symbol in sorted(referenced):
        value = namespace.get(symbol)
        if symbol in vars(builtins):
            continue  # renaming it would only unmask the builtin
        if isinstance(value, types.FunctionType) and value.__globals__ is namespace:
            pattern, keyword, rank = rf"^def {re.escape(symbol)}\(", "def", 0
        elif isinstance(value, type) and value.__dict__.get("__module__") == namespace["__name__"]:
            pattern, keyword, rank = rf"^class {re.escape(symbol)}\b", "class", 1
        else:
            continue
        if len(re.findall(pattern, source, flags=re.M)) == 1:
            candidates.append((rank, symbol, pattern, keyword))
    for _rank, symbol, pattern, keyword in sorted(candidates):
        broken = re.sub(
            pattern,
            f"{keyword} {symbol}_broken" + ("(" if keyword == "def" else ""),
            source,
            count=1,
            flags=re.M,
        )
        try:
            result = _load_stdlib(name, broken)
        except Exception:  # noqa: BLE001 - the body itself needed it: try another
            continue
        if symbol not in result.module.__dict__:
            return symbol, result
    return None


@pytest.mark.parametrize("name", CORPUS)
def test_breaking_one_stdlib_definition_reports_exactly_it(name: str) -> None:
    picked = _break_one(name)
    if name in NOTHING_TO_BREAK:
        assert picked is None, f"{name} has something to break now: update NOTHING_TO_BREAK"
        return
    assert picked is not None, f"no definition of {name} could be broken"
    symbol, loaded = picked
    report = check_module(f"{name}@2", loaded.module, loaded.code, None)
    assert report.problems, f"renaming {symbol} went unnoticed"
    assert {(p.kind, p.symbol) for p in report.problems} == {("unresolved", symbol)}


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40
    assert len(set(CORPUS) - NOTHING_TO_BREAK) >= 40


def test_protocol_attributes_and_static_members() -> None:
    from typing import Protocol

    class Tunable(Protocol):
        threshold: float

        @staticmethod
        def score(text: str) -> float: ...

        @classmethod
        def build(cls, name: str) -> str: ...

    members = interface_members(Tunable)
    assert list(members["score"].parameters) == ["text"]  # static: nothing dropped
    assert list(members["build"].parameters) == ["name"]  # class method: cls dropped
    ok = "threshold = 0.5\ndef score(text):\n    return 1.0\ndef build(name):\n    return name\n"
    assert check(ok, Tunable).problems == ()
    missing = ok.replace("threshold = 0.5\n", "")
    assert found(check(missing, Tunable)) == {("missing-member", "threshold")}
