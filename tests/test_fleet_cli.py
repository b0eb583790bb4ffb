"""The fleet's verbs on the one command table (issue 15): ``livepatch push``,
``status/rollback/symbols/diff --fleet`` and ``history`` are entries of
:mod:`livepatch.commands.spec` like every verb, so the one-shot CLI, the
fleet shell (``livepatch shell --fleet F``), the engine shell and
``%hotswap`` parse, describe and run them alike. Plus the piece of the fleet
view that needs no process (the calls/s of ``status --fleet``)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, run_cli, start_engine
from fleet_helpers import SLOT_ARGS, rule
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from ipython_ext.fleetview import html_push
from livepatch.commands.spec import (
    COMMANDS,
    DEADLINE_OPTION,
    FLEET_COMMANDS,
    FLEET_OPTION,
    REGISTRY_OPTION,
    fleet_command_names,
    localize,
    parse,
)
from livepatch.engine import Engine
from livepatch.examples.spam import SpamRules
from livepatch.fleet.console import FleetRunner, FleetSession
from livepatch.fleet.local import push_local
from livepatch.fleet.model import MemberState, PushRecord, Vote, sha_of
from livepatch.fleet.store import LocalStore
from livepatch.fleet.view import MIN_WINDOW_S, member_rate, render_push
from livepatch.runtime import list_engines
from livepatch.symbols import SymbolTable

FLEET = "fc"

#: The verbs that act on a fleet from the CLI (help and quit are the shells').
FLEET_VERBS = [n for n in fleet_command_names() if FLEET_COMMANDS[n].cli]


def _words(text: str) -> str:
    """Whitespace folded (argparse wraps help to the terminal)."""
    return " ".join(text.split())


def test_every_fleet_verb_is_one_entry_of_the_command_table() -> None:
    assert {"status", "push", "rollback", "symbols", "diff", "history"} <= set(FLEET_VERBS)
    for name in FLEET_VERBS:
        spec = COMMANDS[name]
        form = FLEET_COMMANDS[name]
        # The fleet shell's form is derived from the entry, not written again.
        assert form == spec.for_fleet()
        assert spec.fleet is not None and form.options == spec.fleet.options
        # The CLI form takes every option of the fleet form (the same objects)
        # and says which fleet; the fleet form never does (its session says).
        assert set(form.options) | {FLEET_OPTION, REGISTRY_OPTION} <= set(spec.options), name
        assert not {FLEET_OPTION, REGISTRY_OPTION} & set(form.options), name
        assert form.examples and all(
            f"{e} --fleet" in " ".join(spec.all_examples()) for e in form.examples
        )
    # Defaults are written once, on the option, and parsed the same everywhere.
    for table in (COMMANDS, FLEET_COMMANDS):
        assert parse(["push", "x.py", "--slot", "s"], table).number("deadline") == 60.0
        assert parse(["rollback", "s"], table).number("deadline") == DEADLINE_OPTION.default
        assert parse(["history"], table).number("limit") == 10
    assert "(default: 60)" in DEADLINE_OPTION.help


@pytest.mark.parametrize("name", FLEET_VERBS)
def test_cli_help_and_fleet_shell_help_are_the_one_definition(name: str) -> None:
    spec, form = COMMANDS[name], FLEET_COMMANDS[name]
    cli = run_cli(name, "--help")
    assert cli.returncode == 0, cli.stderr
    shown = _words(cli.stdout)
    assert _words(spec.full_description()) in shown
    assert _words(form.description) in shown  # what it does for a fleet
    for option in spec.options:
        assert option.flag in shown and _words(option.help) in shown, option.flag
    for example in spec.all_examples():
        assert f"livepatch {example}" in cli.stdout
    # The fleet shell's `help VERB` and `VERB --help`: the fleet form's text.
    runner = FleetRunner(FleetSession(FLEET))
    for line in (f"help {name}", f"{name} --help"):
        result = runner.run_line(line)[-1]
        assert result.ok and result.text == form.help_text(""), line
    assert all(_words(o.help) in shown for o in form.options)


def test_hotswap_help_of_a_fleet_verb_is_the_same_definition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "livepatch")
    try:
        doc = _words(ip.magics_manager.magics["line"]["hotswap"].__doc__ or "")
        for name in FLEET_VERBS:
            spec = COMMANDS[name]
            assert ip.run_line_magic("hotswap", f"{name} --help") is None
            shown = capsys.readouterr().out
            assert f"usage: %hotswap {spec.usage()}" in shown, name
            # The one description, fleet form included, in the magic's syntax.
            assert _words(localize(spec.full_description(), "%hotswap ")) in _words(shown)
            assert all(f"%hotswap {e}" in shown for e in spec.all_examples()), name
            assert spec.usage() in doc  # `%hotswap?` lists it, options and all
            assert all(o.flag in doc for o in spec.options), name
    finally:
        ip.run_line_magic("unload_ext", "livepatch")


def test_usage_errors_are_the_same_line_and_exit_2_in_the_cli_and_the_fleet_shell(
    fleet_env: Path,
) -> None:
    for line, says in (
        ("push x.py", "push needs --slot SLOT"),
        ("rollback spam --deadline soon", "--deadline: expected a number of seconds"),
        ("history --limit 0", "--limit: expected a positive whole number"),
    ):
        cli = run_cli(*shlex.split(line), "--fleet", FLEET)
        shell = run_cli("shell", "--fleet", FLEET, "-c", line)
        assert cli.returncode == shell.returncode == 2, (line, cli.stderr, shell.stderr)
        assert says in cli.stderr and says in shell.stderr, (line, cli.stderr, shell.stderr)
        assert "Traceback" not in cli.stderr + shell.stderr
    # Fleet-only verbs and fleet options need --fleet; --existing names one engine.
    for args, says in (
        (("push", "x.py", "--slot", "spam"), "push acts on a fleet: give --fleet NAME"),
        (("history",), "history acts on a fleet"),
        (("rollback", "spam", "--deadline", "5"), "--deadline goes with --fleet NAME"),
        (("status", "--registry", "zookeeper://h:1/x"), "--registry goes with --fleet NAME"),
        (("status", "--fleet", "a b"), "fleet name 'a b' must be"),
        (("status", "--fleet", FLEET, "--registry", "http://x"), "use zookeeper://HOST:PORT"),
        (("status", "--fleet", FLEET, "--existing", "a"), "--existing names one engine"),
    ):
        used = run_cli(*args)
        assert used.returncode == 2 and says in used.stderr, (args, used.stderr)


def test_status_rate_comes_from_one_sample_and_the_members_last_report() -> None:
    def status(pid: int, *calls: int) -> dict[str, Any]:
        versions = [{"id": f"spam@{i}", "calls": n} for i, n in enumerate(calls, 1)]
        return {"pid": pid, "slots": [{"name": "spam", "versions": versions}]}

    said = MemberState("a", 42, "ready", calls=100, time=1000.0, rate=7.5)
    # Calls since the member's report, over the time since it.
    assert member_rate(said, status(42, 80, 40), 1002.0) == 10.0
    # A report too recent to measure over: the rate the member measured itself.
    assert member_rate(said, status(42, 150), 1000.0 + MIN_WINDOW_S / 2) == 7.5
    # Calls dropped (a version unloaded since): never a negative rate.
    assert member_rate(said, status(42, 10), 1004.0) == 0.0
    # Another process under that name (restarted), or no report yet: unknown.
    assert member_rate(said, status(43, 500), 1002.0) is None
    assert member_rate(None, status(42, 500), 1002.0) is None


@pytest.fixture
def members(engines: list[EngineProcess]) -> Iterator[list[EngineProcess]]:
    """Two members that ran rule versions 1 then 2."""
    for name in ("a", "b"):
        engines.append(start_engine(*SLOT_ARGS, "--fleet", FLEET, name=name))
    assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
    assert push_local(FLEET, "spam", rule(2), "rule_v2.py").ok
    yield engines


def _error(stderr: str) -> str:
    """The one error line, without the CLI's prefix or the usage (the shells
    write ``livepatch: COMMAND: ERROR``, the CLI ``livepatch: error: ERROR``)."""
    line = stderr.strip().splitlines()[-1]
    return line.rpartition(": error: ")[2].partition("usage:")[0]


@pytest.mark.slow
def test_one_fleet_command_reads_the_same_in_every_front_end(
    members: list[EngineProcess], tmp_path: Path
) -> None:
    one, two = sha_of(rule(1))[:12], sha_of(rule(2))[:12]
    bad = tmp_path / "bad.py"
    bad.write_text("def classify(:\n", encoding="utf-8")
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "livepatch")
    try:
        for line in (
            "history --limit 5",
            f"symbols {one}",
            f"diff {one} {two}",
            f"push {bad} --slot spam",
            "push nothere.py --slot spam",
        ):
            cli = run_cli(*shlex.split(line), "--fleet", FLEET)
            fleet_shell = run_cli("shell", "--fleet", FLEET, "-c", line)
            engine_shell = run_cli("shell", "--existing", "a", "-c", f"{line} --fleet {FLEET}")
            codes = {cli.returncode, fleet_shell.returncode, engine_shell.returncode}
            assert len(codes) == 1, (line, cli.stderr, fleet_shell.stderr, engine_shell.stderr)
            assert cli.stdout == fleet_shell.stdout == engine_shell.stdout, line
            if cli.returncode:
                said = _error(cli.stderr)
                assert said and _error(fleet_shell.stderr).endswith(said), line
                assert _error(engine_shell.stderr).endswith(said), line
                assert "Traceback" not in cli.stderr + fleet_shell.stderr
            # %hotswap VERB ... --fleet F, without connecting: the same result.
            if cli.returncode == 0:
                view = ip.run_line_magic("hotswap", f"{line} --fleet {FLEET}")
                text = view.text() if hasattr(view, "text") else repr(view)
                # Every row the CLI printed (the "where it was read" line is
                # printed by the magic itself, before its view).
                rows = [r for r in cli.stdout.splitlines() if not r.startswith("# ")]
                assert rows and all(r.rstrip() in text for r in rows), (line, text)
            else:
                with pytest.raises(UsageError):
                    ip.run_line_magic("hotswap", f"{line} --fleet {FLEET}")
    finally:
        ip.run_line_magic("unload_ext", "livepatch")


def engine_rows(source: str) -> list[dict[str, Any]]:
    """The rows an engine shows for ``source`` (the table a member would show)."""
    engine = Engine(name="reference")
    engine.add_slot("spam", SpamRules)
    version = engine.load("spam", source, filename="rule.py")
    return [row.to_json() for row in engine.symbols(version).rows]


def test_symbols_and_diff_by_sha_come_from_the_local_store_with_no_member_running(
    fleet_env: Path,
) -> None:
    # The store holds what pushes put there; no engine runs on this host.
    store = LocalStore(FLEET)
    one = store.put_source(rule(1), "rule_v1.py")
    two = store.put_source(rule(2, slow=0.5), "rule_v2.py")
    assert list_engines() == []
    shown = run_cli("symbols", one[:12], "--fleet", FLEET, "--json")
    assert shown.returncode == 0, shown.stderr
    table = SymbolTable.from_json(__import__("json").loads(shown.stdout))
    assert table.version == one[:12]
    assert [row.to_json() for row in table.rows] == engine_rows(rule(1))
    text = run_cli("symbols", one[:9], "--fleet", FLEET)
    assert text.returncode == 0, text.stderr
    assert f"# {one[:12]} (rule_v1.py): from fleet {FLEET}'s registry (local)" in text.stdout
    assert "classify" in text.stdout
    # diff: the rows the second version changed (its slow branch reads time.sleep).
    for diff in (
        run_cli("diff", one[:12], two[:12], "--fleet", FLEET),
        run_cli("shell", "--fleet", FLEET, "-c", f"diff {one[:12]} {two[:12]}"),
    ):
        assert diff.returncode == 0, diff.stderr
        assert f"{one[:12]} (rule_v1.py) vs {two[:12]} (rule_v2.py)" in diff.stdout
        assert "~" in diff.stdout and "TAG" in diff.stdout
    # A sha the store does not hold, or not a sha: one line, exit 1 / 2.
    missing = run_cli("symbols", "0" * 12, "--fleet", FLEET)
    assert missing.returncode == 1 and "has no version 000000000000" in missing.stderr
    assert "Traceback" not in missing.stderr
    short = run_cli("symbols", "12", "--fleet", FLEET)
    assert short.returncode == 1 and "7 or more hex digits" in short.stderr
    # A body that fails here says so in one line, and nothing is left running.
    broken = store.put_source("import not_a_module_here\n", "broken.py")
    failed = run_cli("symbols", broken[:12], "--fleet", FLEET)
    assert failed.returncode == 1, failed.stderr
    assert "could not be built here" in failed.stderr and "not_a_module_here" in failed.stderr


def test_a_one_shot_fleet_verb_imports_no_engine_core_and_builds_no_parser(
    fleet_env: Path,
) -> None:
    LocalStore(FLEET)  # a fleet that exists, with nothing pushed yet
    code = (
        "import sys\n"
        "from livepatch.cli import main\n"
        f"assert main(['status', '--fleet', '{FLEET}']) == 0\n"
        f"assert main(['history', '--fleet', '{FLEET}']) == 0\n"
        "print(sorted(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"fleet {FLEET} (local): 0 members" in done.stdout and "no pushes yet" in done.stdout
    loaded = set(eval(done.stdout.strip().splitlines()[-1]))  # a printed list of names
    heavy = {"engine", "native", "resolve", "bytecode", "symbols", "pyload", "quarantine"}
    assert not {f"livepatch.{m}" for m in heavy} & loaded, loaded
    assert "livepatch.fleet.zk" not in loaded and "kazoo" not in loaded
    assert not any(m.startswith(("IPython", "prompt_toolkit")) for m in loaded), loaded
    # The command layer parsed it: no argparse parser of every verb was built.
    assert "argparse" not in loaded or _bare_has("argparse")


def _bare_has(module: str) -> bool:
    """Whether a bare interpreter here imports ``module`` at start-up (site may)."""
    bare = subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return module in set(eval(bare.stdout))


def test_a_member_that_gave_no_vote_is_not_said_to_have_refused() -> None:
    record = PushRecord("p1", "spam", "ab" * 32, "v2.py", 0.0, outcome="aborted")
    record.votes = {
        "a": Vote("a", False, reason="check: 1 problem"),
        "b": Vote.missing("b", "no vote within 2 s"),
    }
    # Kept through the record's JSON (a push history read back later).
    record = PushRecord.from_json(record.to_json())
    text = render_push(record)
    assert "  a: refused: check: 1 problem" in text and "  b: no vote within 2 s" in text
    html = html_push(record)
    assert "refused: check: 1 problem" in html and ">no vote within 2 s<" in html
    assert html.count("refused") == 1
