"""``%hotswap`` in a real IPython shell against a real engine process."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, needs
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.lib.pretty import pretty

from ipython_ext import (
    DiffView,
    JournalView,
    LoadResult,
    Outcome,
    ReportView,
    StatusView,
    TableView,
    view,
)
from ipython_ext.magics import verb_table
from livepatch.errors import LivepatchError
from livepatch.examples.spam import rule_path
from livepatch.native import find_compiler
from livepatch.runtime import list_engines, pid_alive

ROOT = Path(__file__).resolve().parent.parent
MSG = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}

CELL_WITH_TYPO = """\
from livepatch.examples.spam import Message, Verdict


def classify(msg: Message) -> Verdict:
    shouting = sum(c.isupper() for c in msg.text) > lenn(msg.text) / 2
    return Verdict(spam=shouting, score=1.0 if shouting else 0.0)
"""


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    """The IPython shell with the extension loaded; unloaded (engines stopped) after."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "livepatch")
    yield shell
    if (
        "livepatch" in shell.extension_manager.loaded
        or "ipython_ext" in shell.extension_manager.loaded
    ):
        shell.run_line_magic("hotswap", "stop")  # unloading leaves them running
    for name in ("livepatch", "ipython_ext"):
        if name in shell.extension_manager.loaded:
            shell.run_line_magic("unload_ext", name)


def hs(shell: InteractiveShell, line: str) -> Any:
    return shell.run_line_magic("hotswap", line)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def load_bundled(shell: InteractiveShell, name: str) -> LoadResult:
    result = hs(shell, f"load {rule_path(name)} --slot spam")
    assert isinstance(result, LoadResult)
    return result


# --- the extension ---------------------------------------------------------------


def test_ipython_ext_uses_the_client_not_the_engine() -> None:
    forbidden = {"livepatch.engine", "livepatch.cli", "livepatch.server", "livepatch.service"}
    for path in (ROOT / "ipython_ext").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                assert not names & forbidden, f"{path.name} imports {names & forbidden}"
                if node.module == "livepatch":
                    assert {a.name for a in node.names} <= {"errors"}, path.name
            elif isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & forbidden, path.name


def test_import_livepatch_pulls_in_no_ipython() -> None:
    code = (
        "import sys, livepatch; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipython_ext')]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import livepatch

    assert {"load_ipython_extension", "unload_ipython_extension"} <= set(livepatch.__all__)


def test_load_unload_reload_under_both_names(engine_proc: EngineProcess) -> None:
    shell = InteractiveShell.instance()
    for module in ("livepatch", "ipython_ext"):
        shell.run_line_magic("load_ext", module)
        assert "hotswap" in shell.magics_manager.magics["line"]
        assert "hotswap" in shell.magics_manager.magics["cell"]
        assert isinstance(hs(shell, "status"), StatusView)
        # %reload_ext reloads the magics' code, so its classes are new ones:
        # that half is tested on a real kernel (test_notebook_frontends.py).
        shell.run_line_magic("unload_ext", module)
        assert "hotswap" not in shell.magics_manager.magics["line"]
        assert "hotswap" not in shell.magics_manager.magics["cell"]
        assert module not in shell.extension_manager.loaded


def test_help_lists_every_verb_and_option(ip: InteractiveShell) -> None:
    doc = ip.magics_manager.magics["line"]["hotswap"].__doc__ or ""
    assert doc.startswith("::\n\n  %hotswap")  # the usage line magic_arguments builds
    for spec in verb_table().values():
        assert spec.usage() in doc
    for option in ("--slot", "--expect", "--wait", "--limit", "--rate"):
        assert option in doc
    assert "%%hotswap load SLOT" in doc


def test_data_models_display_as_html_while_loaded(engine_proc: EngineProcess) -> None:
    from livepatch.client import Client

    with Client.connect() as client:
        table = client.symbols("spam@1")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "livepatch")
    data, _ = shell.display_formatter.format(table)
    assert "lp-symbols" in data["text/html"]
    shell.run_line_magic("unload_ext", "livepatch")
    data, _ = shell.display_formatter.format(table)
    assert "text/html" not in data


# --- verbs ------------------------------------------------------------------------


def test_status_auto_connects_and_renders(ip: InteractiveShell, engine_proc: EngineProcess) -> None:
    status = hs(ip, "status")
    assert isinstance(status, StatusView)
    assert status["name"] == "rules" and status.active() == "spam@1"
    assert status.version("spam@1")["state"] == "active"
    text = repr(status)
    assert "engine rules" in text and re.search(r"\* spam@1\s+active", text)
    html = status._repr_html_()
    assert 'class="lp-version lp-active"' in html and "spam@1" in html
    assert "lp-state-active" in html
    assert pretty(status) == text  # the terminal form (no colour off a tty)


def test_connect_by_name_and_unknown_name(ip: InteractiveShell, engine_proc: EngineProcess) -> None:
    result = hs(ip, "connect rules")
    assert isinstance(result, Outcome) and result["engine"] == "rules"
    assert "connected to engine 'rules'" in repr(result)
    with pytest.raises(UsageError, match=r"no running engine named 'nope' \(running: rules\)"):
        hs(ip, "connect nope")


def test_load_check_diff_swap_call_rollback_purge_unload_journal(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    v2 = load_bundled(ip, "spam_v2.py")
    assert v2.version == "spam@2" and str(v2) == "spam@2" and v2.new
    assert "next: %hotswap check spam@2" in repr(v2)
    assert load_bundled(ip, "spam_v2.py").new is False  # same source: same version

    report = hs(ip, f"check {v2}")
    assert isinstance(report, ReportView) and report.ok and bool(report)
    assert "ok, no problems" in repr(report) and "ok, no problems" in report._repr_html_()

    diff = hs(ip, f"diff spam@1 {v2}")
    assert isinstance(diff, DiffView)
    assert diff.counts["~"] >= 1 and diff.counts["+"] >= 1 and diff.counts["="] >= 1
    assert isinstance(hs(ip, f"symbols spam@1 {v2}"), DiffView)

    swapped = hs(ip, f"swap {v2} --expect spam@1")
    assert swapped.data == {
        "slot": "spam",
        "active": "spam@2",
        "previous": "spam@1",
        "changed": True,
        "handed_over": False,
    }
    assert repr(swapped) == "spam: spam@1 -> spam@2"

    called = hs(ip, f"call spam.classify '{json.dumps(MSG)}'")
    assert called["version"] == "spam@2" and called["result"]["spam"] is True
    assert repr(called).startswith('spam@2: {"spam": true')
    assert hs(ip, f"call spam@1.classify '{json.dumps(MSG)}'")["version"] == "spam@1"

    assert repr(hs(ip, "rollback spam")) == "spam: spam@2 -> spam@1"
    purged = hs(ip, f"purge {v2}")
    assert purged["state"] == "purged" and "purged spam@2" in repr(purged)
    unloaded = hs(ip, f"unload {v2} --wait 2")
    assert unloaded.ok and unloaded["freed"] is True and repr(unloaded) == "unloaded spam@2: freed"

    status = hs(ip, "status")
    assert status.version("spam@2")["state"] == "unloaded" and status.version("spam@2")["freed"]
    assert "freed" in repr(status)

    journal = hs(ip, "journal --limit 4")
    assert isinstance(journal, JournalView) and len(journal) == 4
    assert [e["op"] for e in journal.data] == ["swap", "rollback", "purge", "unload"]
    assert "unload" in repr(journal) and "lp-journal-ok" in journal._repr_html_()


def test_symbols_table_letters_and_unresolved_row(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    table = hs(ip, "symbols spam@1")
    assert isinstance(table, TableView)
    names = {row.name: row.letter for row in table.data}
    assert names["classify"] == "T" and names["len"] == "U" and names["Message"] == "I"
    html = table._repr_html_()
    for letter in ("T", "D", "I", "U"):
        assert f"lp-letter-{letter}" in html
    assert "function defined in this version" in html  # the legend
    bad = load_bundled(ip, "spam_unresolved.py")
    html = hs(ip, f"symbols {bad}")._repr_html_()
    assert 'class="lp-row lp-unresolved"' in html and "score_links" in html
    assert re.search(r"U score_links\s+\?", repr(hs(ip, f"symbols {bad}")))


def test_diff_html_colours_every_marker(ip: InteractiveShell, engine_proc: EngineProcess) -> None:
    v2 = load_bundled(ip, "spam_v2.py")
    diff = hs(ip, f"diff spam@1 {v2}")
    html = diff._repr_html_()
    # Colours by role, themed (tests/test_notebook_frontends.py measures their contrast).
    for cls, colour in (
        ("same", r"var\(--lp-dim"),
        ("changed", r"var\(--lp-amber"),
        ("added", r"var\(--lp-green"),
    ):
        assert f'class="lp-marker lp-marker-{cls}"' in html
        assert re.search(rf'lp-marker-{cls}"[^>]*color:{colour}', html)
        assert f'class="lp-row lp-{cls}"' in html
    reverse = hs(ip, f"diff {v2} spam@1")._repr_html_()
    assert 'class="lp-marker lp-marker-removed"' in reverse and "color:var(--lp-red" in reverse
    text = repr(diff)
    assert re.search(r"classify .*~ .*classify", text)
    assert re.search(r"^\s+\+\s+\d+ T shouting", text, re.M)
    assert "spam@1" in html and "spam@2" in html


def test_check_report_links_each_problem_to_its_line(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    bad = load_bundled(ip, "spam_unresolved.py")
    report = hs(ip, f"check {bad}")
    assert isinstance(report, ReportView) and not report.ok
    (problem,) = report.problems
    assert (problem.kind, problem.symbol, problem.line) == ("unresolved", "score_links", 11)
    html = report._repr_html_()
    link = re.search(r'href="#(lp-[0-9a-f]+)-L11"', html)
    assert link, html
    assert f'<span id="{link.group(1)}-L11" class="lp-line lp-problem-line"' in html
    assert f'<span id="{link.group(1)}-L10" class="lp-line">' in html  # every line has an id
    assert "score = score_links(msg.links)" in html
    assert "11: score = score_links(msg.links)" in html  # the line shown with the problem
    text = repr(report)
    assert "line 11  unresolved  score_links" in text
    assert "11 |     score = score_links(msg.links)" in text


def test_check_report_boundary_type_mismatch(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    own = load_bundled(ip, "spam_own_message.py")
    report = hs(ip, f"check {own}")
    kinds = [p.kind for p in report.problems]
    assert kinds == ["type-mismatch", "type-mismatch"]
    html = report._repr_html_()
    for p in report.problems:
        assert f"-L{p.line}" in html
    assert html.count("lp-problem-line") == 2


def test_cell_magic_loads_the_cell(ip: InteractiveShell, engine_proc: EngineProcess) -> None:
    loaded = ip.run_cell_magic("hotswap", "load spam", CELL_WITH_TYPO)
    assert isinstance(loaded, LoadResult) and loaded.version == "spam@2"
    assert re.fullmatch(r"<cell-\d+>", loaded.filename or "")
    status = hs(ip, "status")
    assert status.version("spam@2")["filename"] == loaded.filename
    report = hs(ip, f"check {loaded}")
    # The cell's own line numbers: line 1 is the `%%hotswap load` line.
    assert [(p.symbol, p.line) for p in report.problems] == [("lenn", 6)]
    assert "lenn(msg.text)" in report._repr_html_()
    # the slot may be implied when the engine has only one
    again = ip.run_cell_magic("hotswap", "load", CELL_WITH_TYPO.replace("lenn", "len"))
    assert again.version == "spam@3"
    assert hs(ip, f"check {again}").ok


def test_magic_assignment_and_variable_expansion(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    ip.user_ns["v2_path"] = rule_path("spam_v2.py")
    ip.user_ns["msg"] = MSG
    result = ip.run_cell(
        "v2 = %hotswap load {v2_path} --slot spam\n"
        "report = %hotswap check {v2}\n"
        "swapped = %hotswap swap {v2} --expect spam@1\n"
        "answer = %hotswap call spam.classify msg\n"
    )
    result.raise_error()
    assert str(ip.user_ns["v2"]) == "spam@2"
    assert ip.user_ns["report"].ok
    assert ip.user_ns["swapped"]["active"] == "spam@2"
    assert ip.user_ns["answer"]["result"]["spam"] is True


def test_start_runs_an_engine_with_traffic_and_unload_hands_it_over(
    ip: InteractiveShell, runtime_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = hs(ip, "start lab --rate 200")
    assert isinstance(started, Outcome) and started["name"] == "lab"
    pid = int(started["pid"])
    assert [e.name for e in list_engines(runtime_dir)] == ["lab"]
    wait_for(lambda: hs(ip, "status").version("spam@1")["calls"] > 0)
    again = hs(ip, "start lab")
    assert again["pid"] == pid and "already running" in repr(again)
    capsys.readouterr()
    ip.run_line_magic("unload_ext", "livepatch")
    # Unloading says so and leaves the engine running (it stops with the
    # kernel); loading again takes it back, so `stop` still knows it.
    assert "keep running until the kernel exits: lab" in capsys.readouterr().out
    assert pid_alive(pid)
    ip.run_line_magic("load_ext", "livepatch")
    assert hs(ip, "status")["pid"] == pid
    assert repr(hs(ip, "stop")) == "stopped 'lab'"
    assert not pid_alive(pid)
    assert list_engines(runtime_dir) == []


def test_stop_verb(ip: InteractiveShell, runtime_dir: Path) -> None:
    pid = int(hs(ip, "start --rate 0")["pid"])
    with pytest.raises(UsageError, match="no engine named 'other' was started here"):
        hs(ip, "stop other")
    assert "stopped 'ipython-" in repr(hs(ip, "stop"))
    assert not pid_alive(pid)
    assert repr(hs(ip, "stop")) == "no engine started here"
    with pytest.raises(UsageError, match="no running engine found: `%hotswap start`"):
        hs(ip, "status")


def test_engine_started_by_a_shell_stops_when_it_exits(runtime_dir: Path) -> None:
    script = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'livepatch')\n"
        "print(ip.run_line_magic('hotswap', 'start atexit-test --rate 0')['pid'], flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pid = int(out.stdout.strip().splitlines()[-1])
    assert not pid_alive(pid)
    assert list_engines(runtime_dir) == []


# --- errors: one line, never a traceback -----------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", r"%hotswap needs a verb: connect, start"),
        ("swap", r"%hotswap swap needs VERSION: usage: %hotswap swap VERSION \[--expect VERSION\]"),
        ("diff spam@1", r"%hotswap diff needs B: usage: %hotswap diff A B"),
        ("status extra", r"%hotswap status: unexpected argument 'extra'; usage: %hotswap status"),
        ("check spam@1 --limit 3", r"%hotswap check: unknown option '--limit' \(options: none\)"),
        ("unload spam@1 --wait soon", r"--wait: expected a number of seconds, got 'soon'"),
        ("start --rate -5", r"--rate: expected a number of 0 or more, got '-5'"),
        ("frob", r"unknown verb 'frob'"),
        ("chek spam@1", r"did you mean `%hotswap check`\?"),
        ("check 'spam@1", r"cannot split"),
        ("journal --limit 0", r"--limit: expected a positive whole number, got '0'"),
        ("load", r"usage: %hotswap load FILE"),
        ("load --swap", r"%hotswap load needs FILE"),
        ("load /no/such/file.py", r"cannot read /no/such/file.py: No such file or directory"),
        ("call spam", r"is not SLOT.SYMBOL"),
        ("call spam.classify {oops", r"argument 1 is not JSON"),
        ("check spam@9", r"spam@9"),
        ("swap spam@1 --expect spam@7", r"spam@7"),
        ("purge spam@1", r"spam@1"),
        ("rollback spam", r"retired|roll"),
        ("call spam.nothing", r"nothing"),
    ],
)
def test_bad_input_is_one_usage_error_line(
    ip: InteractiveShell, engine_proc: EngineProcess, line: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        hs(ip, line)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None
    # a refusal from livepatch is re-raised without its chain (no traceback into livepatch)
    context = info.value.__context__
    assert not isinstance(context, LivepatchError) or info.value.__suppress_context__


def test_engine_refusals_become_usage_errors(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    v2 = load_bundled(ip, "spam_v2.py")
    with pytest.raises(UsageError, match=f"check {v2}"):
        hs(ip, f"swap {v2}")  # not checked yet
    hs(ip, f"check {v2}")
    with pytest.raises(UsageError, match="spam@1"):
        hs(ip, f"swap {v2} --expect spam@2")  # compare-and-swap lost
    with pytest.raises(UsageError, match=r"spam_syntax_error.py:\d+:\d+: SyntaxError"):
        load_bundled(ip, "spam_syntax_error.py")
    bad = load_bundled(ip, "spam_unresolved.py")
    assert not hs(ip, f"check {bad}").ok
    with pytest.raises(UsageError, match="failed its check"):
        hs(ip, f"swap {bad}")
    with pytest.raises(UsageError, match="NameError"):
        hs(ip, f"call {bad}.classify '{json.dumps(MSG)}'")


def test_a_cell_only_loads(ip: InteractiveShell, engine_proc: EngineProcess) -> None:
    with pytest.raises(UsageError, match="only `%%hotswap load SLOT` takes a cell"):
        ip.run_cell_magic("hotswap", "status", "x = 1")
    with pytest.raises(UsageError, match="the cell is empty"):
        ip.run_cell_magic("hotswap", "load spam", "\n\n")
    with pytest.raises(UsageError, match=r"<cell-\d+>:2:\d+: SyntaxError"):
        ip.run_cell_magic("hotswap", "load spam", "def classify(:\n")


def test_in_a_cell_the_error_is_one_line_without_traceback(
    ip: InteractiveShell, engine_proc: EngineProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    result = ip.run_cell("%hotswap check spam@9")
    assert isinstance(result.error_in_exec, UsageError)
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "UsageError: no version spam@9" in shown
    assert "Traceback" not in shown and "livepatch/" not in shown


SLEEPY_RULE = """
import time
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    time.sleep(60)
    return Verdict(spam=False, score=0.0)
"""


def test_lost_connection_says_what_to_do(ip: InteractiveShell, engine_proc: EngineProcess) -> None:
    hs(ip, "status")
    engine_proc.stop()
    # Seen before anything is sent (the engine closed the idle connection):
    # bound to that engine, never another one, and the message says so.
    for _ in range(2):
        with pytest.raises(UsageError, match=r"engine 'rules' \(pid \d+\) is gone; this session"):
            hs(ip, "status")


def test_a_connection_lost_during_a_command_says_what_to_do(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    import threading

    from livepatch.client import Client

    ip.run_cell_magic("hotswap", "load spam", SLEEPY_RULE)
    hs(ip, "check spam@2")
    hs(ip, "swap spam@2")
    failed: list[BaseException] = []

    def call() -> None:
        try:
            hs(ip, 'call spam.classify \'{"sender": "a", "text": "hi"}\'')
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failed.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    with Client.connect("rules") as watcher:  # kill it once the call is in flight

        def in_flight() -> int:
            slots = watcher.status()["slots"]
            return sum(v["in_flight"] for s in slots for v in s["versions"])

        deadline = time.monotonic() + 30
        while in_flight() == 0:
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.02)
    assert engine_proc.proc is not None
    engine_proc.proc.kill()
    caller.join(30)
    (error,) = failed
    assert isinstance(error, UsageError)
    assert "lost the connection to engine 'rules'" in str(error)
    assert re.search(r"`%hotswap connect \[NAME\]`.*`%hotswap start`", str(error))


def test_view_wraps_data_models(engine_proc: EngineProcess) -> None:
    from livepatch.client import Client

    with Client.connect() as client:
        assert isinstance(view(client.symbols("spam@1")), TableView)
        assert isinstance(view(client.diff("spam@1", "spam@1")), DiffView)
        assert isinstance(view(client.check("spam@1")), ReportView)
        assert isinstance(view(client.status()), StatusView)
        assert isinstance(view(client.journal()), JournalView)
    with pytest.raises(TypeError):
        view(42)


@needs(None if find_compiler() else "no C compiler: the native slot has no v1")
def test_load_picks_the_native_slot_for_a_c_file(ip: InteractiveShell, engine_proc: Any) -> None:
    version = hs(ip, f"load {rule_path('spam_native_v2.c')}")
    assert str(version) == "spam_native@2"
    report = hs(ip, "check spam_native@2")
    assert "ok" in repr(report)
    called = hs(ip, "call spam_native.classify '\"WIN a FREE cruise\"'")
    assert called.data["version"] == "spam_native@1" and called.data["result"] == 1


# --- one command layer: every verb of livepatch.commands is a %hotswap verb ---------


def test_every_command_layer_verb_is_a_hotswap_verb(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    from livepatch.commands.spec import COMMANDS, command_names

    table = verb_table()
    doc = ip.magics_manager.magics["line"]["hotswap"].__doc__ or ""
    shared = [COMMANDS[n] for n in command_names(aliases=False) if COMMANDS[n].cli]
    assert {"status", "load", "show", "watch"} <= {s.name for s in shared}
    for spec in shared:
        mine = table.get(spec.name)
        assert mine is not None, f"%hotswap has no {spec.name!r}"
        if mine is not spec:  # a magics-only verb of the same name must take all its options
            assert {o.flag for o in spec.options} <= {o.flag for o in mine.options}, spec.name
        assert mine.usage() in doc
        for option in mine.options:
            assert option.flag in doc
        # Parsed by the command layer's parser: its help, in %hotswap syntax.
        assert hs(ip, f"{spec.name} --help") is None
        shown = capsys.readouterr().out
        assert f"usage: %hotswap {mine.usage()}" in shown
        assert all(f"%hotswap {e}" in shown for e in mine.examples)
    # The magics' own verbs stay theirs: the CLI and the shell do not offer them.
    assert not {"connect", "start", "stop", "unwatch"} & set(COMMANDS)
    assert {"connect", "start", "stop", "unwatch"} <= set(table)
    assert "help" not in table and "quit" not in table


def test_show_runs_through_the_shared_handler(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    shown = hs(ip, "show spam@1")
    assert isinstance(shown, Outcome) and shown.ok
    assert repr(shown).startswith("spam@1  (spam_v1.py, ")
    assert "def classify" in shown["source"] and re.search(r"\n\s*1  ", repr(shown))


def test_a_verb_registered_in_the_command_layer_reaches_hotswap(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    from livepatch.commands import runner, spec
    from livepatch.commands.runner import CommandResult, register_handler
    from livepatch.commands.spec import ArgKind, CommandSpec, Option, ShellUsageError, register

    def slotnames(run: runner.CommandRunner, parsed: spec.ParsedCommand) -> CommandResult:
        names = [s["name"] for s in run.client.status()["slots"]]
        if parsed.flag("strict") and len(names) > 1:
            raise ShellUsageError("several slots: see `status`")
        shown = [n.upper() if parsed.flag("upper") else n for n in names]
        return CommandResult(parsed.text, True, "slots:\n" + "\n".join(shown), data=names)

    added = register(
        CommandSpec(
            "slotnames",
            "the engine's slot names",
            "List the slots of the engine.",
            options=(
                Option("--upper", "upper", "", ArgKind.SWITCH, "in capitals"),
                Option("--strict", "strict", "", ArgKind.SWITCH, "only one slot"),
            ),
            examples=("slotnames --upper",),
        )
    )
    register_handler("slotnames", slotnames)
    try:
        # No edit to the magics: in the help at once (before any %hotswap
        # line ran), parsed, run, shown, its hints localized.
        doc = ip.magics_manager.magics["line"]["hotswap"].__doc__ or ""
        assert "slotnames [--upper] [--strict]" in doc and "--upper" in doc
        result = hs(ip, "slotnames --upper")
        assert isinstance(result, Outcome) and result.data == ["spam", "spam_native"]
        assert repr(result) == "slots:\nSPAM\nSPAM_NATIVE"
        with pytest.raises(UsageError, match=r"several slots: see `%hotswap status`"):
            hs(ip, "slotnames --strict")
        with pytest.raises(UsageError, match=r"%hotswap slotnames: unknown option '--lower'"):
            hs(ip, "slotnames --lower")
    finally:
        spec._REGISTRY.pop("slotnames")
        spec._ORDER.remove(added)
        runner._EXTRA_HANDLERS.pop("slotnames")
    with pytest.raises(UsageError, match="unknown verb 'slotnames'"):
        hs(ip, "slotnames")
