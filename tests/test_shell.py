"""The shell against a real engine process: commands, completion, errors,
scripts, the prompt loop (pipe input, dummy output) and reconnecting."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, needs, run_cli, start_engine
from prompt_toolkit.completion import CompleteEvent, ThreadedCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput
from prompt_toolkit.output.plain_text import PlainTextOutput

from livepatch.client import Client
from livepatch.examples.spam import rule_path
from livepatch.native import find_compiler
from livepatch.runtime import list_engines
from livepatch.shell import Shell, color_allowed, history_path, state_home
from livepatch.shell.commands import ShellUsageError, parse, split_commands
from livepatch.shell.completer import ShellCompleter, split_partial
from livepatch.shell.keys import describe_bindings, prompt_key_bindings
from livepatch.shell.lexer import classify_words
from livepatch.shell.link import EngineLink
from livepatch.shell.monitor import EngineMonitor, Snapshot
from livepatch.shell.runner import CommandResult, CommandRunner
from livepatch.shell.toolbar import toolbar_fragments

RULES = Path(rule_path("spam_v1.py")).parent
MSG = '{"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!!", "links": []}'
ESC = "\x1b"


def poll(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        threading.Event().wait(0.01)


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """History never lands in the real user's state directory."""
    monkeypatch.setenv("LIVEPATCH_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def client(engine_proc: EngineProcess) -> Iterator[Client]:
    with Client.connect(client_name="test-shell") as c:
        yield c


@pytest.fixture
def runner(client: Client) -> CommandRunner:
    return CommandRunner(EngineLink(client), color=False, base_dir=RULES)


def run(runner: CommandRunner, line: str) -> CommandResult:
    """Run a line that must succeed; returns its last result."""
    results = runner.run_line(line)
    assert results, line
    for result in results:
        assert result.ok, f"{result.command}: {result.error}\n{result.text}"
    return results[-1]


def fail(runner: CommandRunner, line: str) -> CommandResult:
    """Run a line whose last command must fail with one clear line."""
    result = runner.run_line(line)[-1]
    assert not result.ok, result
    assert result.error and "\n" not in result.error, result.error
    assert "Traceback" not in result.error + result.text
    return result


# -- commands ---------------------------------------------------------------------


def test_every_command_against_a_real_engine(runner: CommandRunner) -> None:
    status = run(runner, "status").text
    assert "slot spam: active spam@1" in status and "* spam@1" in status

    loaded = run(runner, "load spam_v2.py").text  # the only slot is the default
    assert loaded.startswith("loaded spam@2 from spam_v2.py")
    again = run(runner, f"load {RULES / 'spam_v2.py'} --slot spam").text
    assert "already loaded as spam@2" in again

    assert "spam@2: ok, no problems" in run(runner, "check spam@2").text

    table = run(runner, "symbols spam@2").text
    assert table.startswith("spam@2:") and "T shouting" in table

    side = run(runner, "symbols spam@1 spam@2").text.splitlines()
    assert side[0].split() == ["spam@1", "spam@2"]
    assert any(" ~ " in line and "classify" in line for line in side)
    assert any(" + " in line and "shouting" in line for line in side)
    assert any(" = " in line and "keyword_hits" in line for line in side)

    # diff means what it means in the CLI and %hotswap: the side-by-side view,
    # whose summary counts exactly the rows it shows.
    diff = run(runner, "diff spam@1 spam@2").text
    assert diff.splitlines() == side
    rows = side[2:-1]
    summary = dict(zip(side[-1].split()[::2], map(int, side[-1].split()[1::2]), strict=True))
    for marker in "=~+-":
        assert summary[marker] == sum(1 for r in rows if f" {marker} " in r), marker

    swapped = run(runner, "swap spam@2 --expect spam@1").text
    assert swapped == "spam: spam@1 -> spam@2"
    assert run(runner, "swap spam@2").text == "spam: spam@2 is already active"

    answer = run(runner, f"call spam.classify '{MSG}'").text
    assert answer.startswith("spam@2: {") and '"shouting"' in answer
    old = run(runner, f"call spam@1.classify '{MSG}'").text
    assert old.startswith("spam@1: ") and "shouting" not in old

    shown = run(runner, "show spam@2").text
    assert shown.splitlines()[0] == "spam@2  (spam_v2.py, 40 lines)"
    assert "18  def shouting(text: str) -> bool:" in shown.splitlines()
    assert " 2" in shown.splitlines()  # no trailing blanks on empty lines

    journal = run(runner, "journal --limit 3").text.splitlines()
    assert len(journal) == 3 and " swap " in journal[-1] and "test-shell" in journal[-1]

    assert run(runner, "rollback spam").text == "spam: spam@2 -> spam@1"
    assert run(runner, "purge spam@2").text.startswith("purged spam@2")
    assert run(runner, "unload spam@2 --wait 1").text.startswith("unloaded spam@2: freed")
    gone = fail(runner, f"call spam@2.classify '{MSG}'").error or ""
    assert "spam@2 is unloaded: its code is gone" in gone, gone  # not "has no callable"
    # Checking the version that serves: nothing to do next (it said "swap spam@1").
    assert "next:" not in run(runner, "check spam@1").text
    status_lines = run(runner, "status").text.splitlines()
    assert any(line.split()[:2] == ["spam@2", "unloaded"] for line in status_lines)
    # One id column for every slot: spam_native@1 does not push its row out.
    states = [line.index(" active ") for line in status_lines if line.startswith("  * ")]
    assert len(states) == 2 and len(set(states)) == 1, status_lines

    listing = run(runner, "help").text
    for name in ("status", "load FILE [--slot SLOT]", "watch", "quit"):
        assert name in listing
    # Fits a 120-column terminal: a long usage gets a line of its own (the
    # usage column was as wide as the longest one, and every line wrapped).
    assert max(map(len, listing.splitlines())) <= 120, listing
    assert "  check VERSION   " in listing  # short ones still share their line
    # What the user typed is quoted back shortened (a paste of 5,000 characters).
    echoed = fail(runner, "status " + "x" * 5000).error or ""
    assert len(echoed) < 200 and "(5,000 characters)" in echoed, echoed
    assert run(runner, "help swap").text.startswith("usage: swap VERSION [--expect VERSION]")
    assert run(runner, "swap --help").text == run(runner, "? swap").text
    assert run(runner, "quit").action == "quit"
    assert run(runner, "exit").action == "quit"


def test_watch_in_a_script_measures_a_window(runner: CommandRunner) -> None:
    for _ in range(3):
        run(runner, f"call spam.classify '{MSG}'")
    table = run(runner, "watch --for 0.2").text
    assert "calls over" in table and "calls/s" in table
    assert "* spam@1" in table
    no_terminal = fail(runner, "watch")
    assert no_terminal.usage and "watch --for SECONDS" in (no_terminal.error or "")


def test_a_line_runs_in_order_and_stops_at_the_first_failure(runner: CommandRunner) -> None:
    results = runner.run_line("load spam_unresolved.py; check spam@2; swap spam@2; status")
    assert [r.ok for r in results] == [True, False]  # swap and status never ran
    report = results[1]
    assert report.text.splitlines()[0] == "spam@2: 1 problem"
    assert "line 11  unresolved  score_links:" in report.text
    assert report.error and "failed its check (1 problem)" in report.error
    assert report.exit_code == 1
    assert "active spam@1" in run(runner, "status").text


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "usage", "expected"),
    [
        ("bogus", True, "unknown command 'bogus'"),
        ("stauts", True, "did you mean `status`?"),
        ("check", True, "check needs VERSION: usage: check VERSION"),
        ("swap spam@1 --expcet spam@1", True, "unknown option '--expcet'"),
        ("unload spam@1 --wait soon", True, "--wait: expected a number of seconds"),
        ("symbols spam@1 spam@1 spam@1", True, "unexpected argument 'spam@1'"),
        ("call spam.classify {sender}", True, "argument 1 is not JSON"),
        ("call classify '{}'", True, "is not SLOT.SYMBOL"),
        ("status 'unclosed", True, "cannot split the line"),
        ("check spam@9", False, "spam@9"),
        ("show spam@9", False, "spam@9"),
        ("symbols nope@1", False, "nope"),
        ("load no_such_file.py", False, "cannot read"),
        ("load spam_syntax_error.py", False, "spam_syntax_error.py:6:"),
        ("swap spam@1 --expect spam@7", False, "spam@"),
        ("purge spam@1", False, "is active"),
        ("rollback spam", False, "spam"),
        # arguments the rule's types refuse: the engine's bad-params, as written
        ('call spam.classify \'{"sender": "a"}\'', True, "text"),
    ],
)
def test_errors_are_one_clear_line(
    runner: CommandRunner, line: str, usage: bool, expected: str
) -> None:
    result = fail(runner, line)
    assert result.usage is usage
    assert result.exit_code == (2 if usage else 1)
    assert expected in (result.error or "")
    # The shell goes on.
    assert run(runner, "status").ok


def test_a_failed_version_cannot_be_swapped_in(runner: CommandRunner) -> None:
    run(runner, "load spam_attr_typo.py")
    checked = fail(runner, "check spam@2")
    assert "re.compil" in checked.text or "compil" in checked.text
    refused = fail(runner, "swap spam@2")
    assert "spam@2" in (refused.error or "")


def test_parser_and_splitter() -> None:
    assert split_commands("load a.py --slot spam; check spam@2;swap spam@2") == [
        ["load", "a.py", "--slot", "spam"],
        ["check", "spam@2"],
        ["swap", "spam@2"],
    ]
    assert split_commands('call s.f \'{"a": "x; y"}\'') == [["call", "s.f", '{"a": "x; y"}']]
    assert split_commands("  # a comment; status") == []
    parsed = parse(["unload", "spam@2", "--wait=1.5"])
    assert parsed.number("wait") == 1.5 and parsed.string("version") == "spam@2"
    assert parse(["call", "spam.f", "1", "-2"]).strings("args") == ["1", "-2"]
    with pytest.raises(ShellUsageError, match="--slot needs a value"):
        parse(["load", "x.py", "--slot"])


# -- colour -----------------------------------------------------------------------


def test_colour_only_where_wanted(
    client: Client, runner: CommandRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    coloured = CommandRunner(EngineLink(client), color=True, base_dir=RULES)
    assert ESC in run(coloured, "symbols spam@1").text
    assert ESC in run(coloured, "show spam@1").text
    for line in ("symbols spam@1", "show spam@1", "status", "diff spam@1 spam@1", "help"):
        assert ESC not in run(runner, line).text

    monkeypatch.setenv("NO_COLOR", "1")
    assert color_allowed() is False
    shell = Shell(client, output=DummyOutput(), history_file=Path(os.devnull))
    assert shell.color is False
    assert ESC not in run(shell.runner, "symbols spam@1 spam@1").text
    assert ESC not in (fail(shell.runner, "check spam@9").error or "")

    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert color_allowed() is False
    assert Shell(client, output=DummyOutput()).color is False
    monkeypatch.setenv("TERM", "xterm-256color")
    assert Shell(client, output=DummyOutput()).color is True


# -- completion -------------------------------------------------------------------


def python_only(words: list[str]) -> list[str]:
    """Leave out the demo's native slot (its v1 is there only with a C compiler)."""
    return [w for w in words if not w.startswith("spam_native")]


def complete(completer: ShellCompleter, text: str) -> list[str]:
    """The full words each completion would produce at the end of ``text``."""
    words = []
    for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True)):
        completed = text[: len(text) + c.start_position] + c.text
        words.append(completed.split()[-1])
    return words


def test_completion_offers_commands_slots_versions_and_files(
    client: Client, runner: CommandRunner, tmp_path: Path
) -> None:
    monitor = EngineMonitor(EngineLink(client))
    completer = ShellCompleter(monitor, base_dir=lambda: RULES)
    assert "status" in complete(completer, "") and "quit" in complete(completer, "")
    assert complete(completer, "sw") == ["swap"]
    assert complete(completer, "status; che") == ["check"]
    assert complete(completer, "help sy") == ["symbols"]
    assert complete(completer, "bogus ") == []

    # The demo engine has a Python slot and a native one.
    assert complete(completer, "rollback ") == ["spam", "spam_native"]
    assert complete(completer, "load x.py --slot ") == ["spam", "spam_native"]
    # swap offers only what can become active: not spam@1, active already.
    assert python_only(complete(completer, "swap ")) == []
    run(runner, "load spam_v2.py")
    # A version loaded a moment ago is offered (the cache is short-lived).
    monitor.refresh()
    assert complete(completer, "check spam") == ["spam@1", "spam@2", "spam_native@1"]
    assert python_only(complete(completer, "swap ")) == []  # not checked yet
    run(runner, "check spam@2")
    monitor.refresh()
    assert python_only(complete(completer, "swap ")) == ["spam@2"]
    assert complete(completer, "symbols spam@1 spam@") == ["spam@1", "spam@2"]
    assert complete(completer, "swap spam@2 --e") == ["--expect"]
    assert complete(completer, "swap spam@2 --expect spam@") == ["spam@1"]
    assert python_only(complete(completer, "call ")) == ["spam.classify"]
    assert complete(completer, "call spam@2.") == ["spam@2.classify"]

    files = complete(completer, "load spam_v")
    assert files == ["spam_v1.py", "spam_v2.py", "spam_v3.py", "spam_v4.py"]

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "mine.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / ".hidden.py").write_text("")
    here = ShellCompleter(monitor, base_dir=lambda: tmp_path)
    assert complete(here, "load ") == ["rules"]  # not notes.txt, not dot files
    assert complete(here, "load .") == [".hidden.py"]
    assert complete(here, "load rules/") == ["rules/mine.py"]
    assert complete(here, f"load {tmp_path}/rules/m") == [f"{tmp_path}/rules/mine.py"]


def test_split_partial() -> None:
    assert split_partial("") == ([], "")
    assert split_partial("swap sp") == (["swap"], "sp")
    assert split_partial("swap ") == (["swap"], "")
    assert split_partial('call s.f \'{"a": ') == (["call", "s.f"], '{"a": ')
    assert split_partial("status; load a b") == (["load", "a"], "b")


def test_command_line_highlighting() -> None:
    styles = [
        (style, text)
        for style, text, *_ in classify_words(
            "swap spam@2 --expect spam@1; bogus 'x' 12 a/b.py; help swap", {"spam"}
        )
        if text.strip()
    ]
    assert styles == [
        ("class:cmd", "swap"),
        ("class:version", "spam@2"),
        ("class:option", "--expect"),
        ("class:version", "spam@1"),
        ("class:separator", ";"),
        ("class:cmd.unknown", "bogus"),
        ("class:json", "'x'"),
        ("class:number", "12"),
        ("class:path", "a/b.py"),
        ("class:separator", ";"),
        ("class:cmd", "help"),
        ("class:cmd", "swap"),
    ]
    assert [s for s, _t, *_ in classify_words("rollback spam", {"spam"})][-1] == "class:slot"
    assert "".join(t for _s, t, *_ in classify_words('call s.f \'{"a": 1')) == (
        'call s.f \'{"a": 1'
    )


# -- toolbar, monitor, keys ---------------------------------------------------------


def test_toolbar_shows_engine_active_versions_and_calls_per_second(client: Client) -> None:
    now = [100.0]
    monitor = EngineMonitor(EngineLink(client), clock=lambda: now[0])
    assert "connecting" in "".join(t for _s, t, *_ in toolbar_fragments("rules", monitor.latest()))
    monitor.refresh()
    for _ in range(5):
        client.call("spam", "classify", [{"sender": "a", "text": "hi"}])
    now[0] += 2.0
    snapshot = monitor.refresh()
    assert {v: r for v, r in snapshot.rates.items() if v.startswith("spam@")} == {"spam@1": 2.5}
    text = "".join(t for _s, t, *_ in toolbar_fragments("rules", snapshot))
    assert text.startswith(" rules ") and "spam: spam@1 2.5 calls/s" in text

    lost = Snapshot(time=0.0, status=snapshot.status, connected=False, error="gone")
    assert "disconnected" in "".join(t for _s, t, *_ in toolbar_fragments("rules", lost))


def test_key_bindings_come_with_docstrings() -> None:
    described = dict(describe_bindings(prompt_key_bindings(refresh=lambda: None)))
    assert set(described) == {"Ctrl-D on an empty line", "F1", "F5", "Ctrl-Space", "Tab"}
    assert all(described.values())


def test_history_lives_in_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert history_path() == tmp_path / "state" / "history"
    monkeypatch.delenv("LIVEPATCH_STATE_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_home() == tmp_path / "xdg" / "livepatch"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert history_path() == tmp_path / "home" / ".local" / "state" / "livepatch" / "history"


def test_the_shell_and_the_local_fleets_share_one_state_home_and_ignore_a_relative_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from livepatch.fleet.store import fleet_root

    assert fleet_root() == tmp_path / "state" / "fleets"  # $LIVEPATCH_STATE_HOME for both
    monkeypatch.delenv("LIVEPATCH_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", "state")  # relative: the spec says ignore it
    monkeypatch.chdir(tmp_path)
    home_state = tmp_path / "home" / ".local" / "state" / "livepatch"
    assert fleet_root() == home_state / "fleets"
    assert history_path() == home_state / "history"


# -- the prompt loop (pipe input, dummy output) ---------------------------------------


class Driver:
    """Runs :meth:`Shell.run` in a thread, typing into a pipe."""

    def __init__(self, shell: Shell, pipe: PipeInput) -> None:
        self.shell = shell
        self.pipe = pipe
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.shell.run()

    def type(self, text: str, results: int | None = None) -> list[CommandResult]:
        """Send keys; wait until the transcript holds ``results`` entries."""
        self.pipe.send_text(text)
        if results is not None:
            poll(lambda: len(self.shell.transcript) >= results, what=f"{results} results")
        return self.shell.transcript

    def toolbar(self) -> str:
        """The bottom toolbar as plain text, as it would be drawn now."""
        toolbar = self.shell.session.bottom_toolbar
        assert callable(toolbar)
        return "".join(t for _s, t, *_ in toolbar())

    def finish(self) -> int:
        self.thread.join(10)
        assert not self.thread.is_alive(), "the shell did not exit"
        assert self.code is not None
        return self.code


@pytest.fixture
def driven(client: Client, tmp_path: Path) -> Iterator[Callable[..., Driver]]:
    """Makes shells on pipe input; the pipes close when the test ends."""
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> Driver:
            pipe = stack.enter_context(create_pipe_input())
            shell = Shell(
                client,
                input=pipe,
                output=DummyOutput(),
                history_file=tmp_path / "history",
                base_dir=RULES,
                status_interval=0.1,
                **kwargs,
            )
            return Driver(shell, pipe)

        yield make


def test_prompt_loop_runs_commands_and_keeps_history(
    driven: Callable[..., Driver], tmp_path: Path
) -> None:
    drv = driven(greeting="hello")
    assert isinstance(drv.shell.session.completer, ThreadedCompleter)
    drv.type("status\r", results=1)
    drv.type("load spam_v2.py; check spam@2; swap spam@2\r", results=4)
    drv.type("check spam@9\r", results=5)  # an error: the shell goes on
    drv.type("stauts\r", results=6)
    # The toolbar follows the engine (sampled in the background).
    poll(lambda: "spam: spam@2" in drv.toolbar(), what="the toolbar to show spam@2")
    assert drv.toolbar().startswith(" rules ")
    drv.type("\x04")  # Ctrl-D on an empty line
    assert drv.finish() == 0
    *results, last = drv.shell.transcript
    assert last.action == "quit"
    assert [r.command for r in results] == [
        "status",
        "load spam_v2.py",
        "check spam@2",
        "swap spam@2",
        "check spam@9",
        "stauts",
    ]
    assert [r.ok for r in results] == [True, True, True, True, False, False]
    assert results[3].text == "spam: spam@1 -> spam@2"
    history = (tmp_path / "history").read_text()
    assert "+status" in history and "+load spam_v2.py; check spam@2; swap spam@2" in history


def test_a_history_file_that_cannot_be_written_is_said_once_and_the_shell_goes_on(
    client: Client, tmp_path: Path
) -> None:
    # A directory where the file should be: it can be neither read nor
    # appended to (as a full disk cannot), and prompt_toolkit's own file
    # history showed a traceback on every line.
    (tmp_path / "history").mkdir()
    screen = io.StringIO()
    with create_pipe_input() as pipe:
        shell = Shell(
            client,
            input=pipe,
            output=PlainTextOutput(screen),
            history_file=tmp_path / "history",
            base_dir=RULES,
            color=False,
        )
        drv = Driver(shell, pipe)
        drv.type("status\r", results=1)
        drv.type("status\r", results=2)
        drv.type("quit\r")
        assert drv.finish() == 0
    said = f"note: history is no longer saved ({tmp_path / 'history'}: Is a directory)"
    assert screen.getvalue().count(said) == 1, screen.getvalue()
    assert "Traceback" not in screen.getvalue() and "Exception" not in screen.getvalue()
    assert [r.ok for r in shell.transcript[:2]] == [True, True]


def test_f1_help_keeps_the_line(
    driven: Callable[..., Driver], capsys: pytest.CaptureFixture[str]
) -> None:
    drv = driven()
    drv.type("swap\x1bOP")  # F1 while typing "swap": help on swap, printed above
    poll(lambda: "usage: swap VERSION" in capsys.readouterr().out, what="the help")
    drv.type(" spam@1\r", results=1)  # the half-typed line was kept
    assert drv.shell.transcript[0].command == "swap spam@1"
    drv.type("quit\r")
    assert drv.finish() == 0


def test_watch_is_live_until_a_key_is_pressed(
    driven: Callable[..., Driver], client: Client
) -> None:
    drv = driven()
    drv.type("watch\r")
    poll(drv.shell.watching.is_set, what="the watch view")
    client.call("spam", "classify", [{"sender": "a", "text": "hi"}])
    drv.type("x")
    poll(lambda: not drv.shell.watching.is_set(), what="the watch view to close")
    drv.type("status\r", results=2)
    drv.type("quit\r")
    assert drv.finish() == 0
    assert drv.shell.transcript[0].action == "watch"
    assert drv.shell.transcript[1].command == "status"


# -- losing the engine ----------------------------------------------------------------


def test_lost_connection_then_reconnect(runtime_dir: Path) -> None:
    first = start_engine(name="lp")
    try:
        with Client.connect("lp") as c:
            link = EngineLink(c)
            monitor = EngineMonitor(link)
            shell_runner = CommandRunner(link, monitor=monitor)
            with Client.connect("lp") as c2:
                # A one-shot verb's runner: nothing will reconnect it.
                cli_runner = CommandRunner(EngineLink(c2), prefix="livepatch ")
                assert run(shell_runner, "status").ok and run(cli_runner, "status").ok
                first.stop()
                # Seen before anything is sent: the engine closed the idle
                # connection, and no engine of that name runs.
                lost = fail(shell_runner, "status")
                assert "not connected: engine 'lp' is still gone" in (lost.error or "")
                assert "the shell reconnects" in (lost.error or "")
                once = fail(cli_runner, "status").error or ""
                assert once.startswith("connection lost: engine 'lp' stopped answering")
                assert "`livepatch log`" in once and "shell" not in once
            still = fail(shell_runner, "swap spam@1")
            assert "still gone" in (still.error or "")
            assert monitor.refresh().connected is False
            second = start_engine(name="lp")
            try:
                back = run(shell_runner, "status")
                assert back.text.startswith("reconnected to engine 'lp'")
                assert f"(pid {second.proc.pid})" in back.text
                assert "reconnected" not in run(shell_runner, "status").text  # said once
                assert monitor.refresh().connected is True
            finally:
                second.stop()
    finally:
        first.stop()


def test_an_interrupted_request_gets_a_new_connection(client: Client, tmp_path: Path) -> None:
    shell = Shell(client, output=DummyOutput(), history_file=tmp_path / "history")
    shell._interrupted()  # what Ctrl-C during a command does
    result = shell.runner.run_line("status")[0]
    assert result.ok and result.text.startswith("reconnected to engine 'rules'")


# -- scripts: -c and stdin ---------------------------------------------------------------


def test_script_with_dash_c(engine_proc: EngineProcess) -> None:
    v2 = rule_path("spam_v2.py")
    done = run_cli("shell", "-c", f"load {v2} --slot spam; check spam@2; swap spam@2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "spam: spam@1 -> spam@2"
    assert ESC not in done.stdout and done.stderr == ""

    bad = rule_path("spam_unresolved.py")
    failed = run_cli("shell", "-c", f"load {bad}; check spam@3\nswap spam@3; status")
    assert failed.returncode == 1
    assert "line 11  unresolved  score_links" in failed.stdout
    assert "engine rules" not in failed.stdout  # stopped before status
    assert failed.stderr.count("\n") == 1 and "failed its check" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_script_on_stdin(engine_proc: EngineProcess) -> None:
    piped = run_cli("shell", input="status\n# a comment\nbogus\nstatus\n")
    assert piped.returncode == 2
    assert piped.stdout.count("engine rules") == 1
    assert piped.stderr.strip() == (
        "livepatch: bogus: unknown command 'bogus': `help` lists the commands"
    )
    ok = run_cli("shell", "--existing", "rules", input="status; journal\n")
    assert ok.returncode == 0 and "the journal is empty" in ok.stdout
    missing = run_cli("shell", "--existing", "nope", "-c", "status")
    assert missing.returncode == 1 and "no running engine named 'nope'" in missing.stderr


# -- livepatch demo ----------------------------------------------------------------------


def test_demo_without_a_terminal_runs_the_tour(runtime_dir: Path) -> None:
    done = run_cli("demo", "--rate", "100", input="")
    assert done.returncode == 0, done.stderr
    assert "## 1." in done.stdout and "## 8." in done.stdout
    assert "stopped" in done.stdout
    assert list_engines(runtime_dir) == []  # the demo's engine is gone


def test_demo_on_a_terminal_attaches_the_shell(
    runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    import sys

    import livepatch.shell
    from livepatch.demo import run_demo

    class FakeTty:
        def isatty(self) -> bool:
            return True

    shells: list[Shell] = []

    with create_pipe_input() as pipe:

        class TestShell(Shell):
            def __init__(self, client: Client, **kwargs: Any) -> None:
                super().__init__(client, input=pipe, output=DummyOutput(), **kwargs)
                shells.append(self)

        monkeypatch.setattr(sys, "stdin", FakeTty())
        monkeypatch.setattr(livepatch.shell, "Shell", TestShell)
        pipe.send_text("load spam_v2.py; check spam@2; swap spam@2\rquit\r")
        assert run_demo(argparse.Namespace(rate=50.0)) == 0
    (shell,) = shells
    assert shell.greeting and "load spam_v2.py" in shell.greeting
    assert [r.ok for r in shell.transcript] == [True, True, True, True]
    assert shell.transcript[2].text == "spam: spam@1 -> spam@2"
    assert list_engines(runtime_dir) == []
    assert "stopped" in capsys.readouterr().out


@needs(None if find_compiler() else "no C compiler: the native slot has no v1")
def test_load_picks_the_slot_by_the_files_kind(runner: CommandRunner) -> None:
    # Two slots: a .c file goes to the native one, a .py file to the Python one.
    native = run(runner, "load spam_native_v2.c").text
    assert native.startswith("loaded spam_native@2 from spam_native_v2.c")
    assert "ok, no problems" in run(runner, "check spam_native@2").text
    python = run(runner, "load spam_v2.py").text
    assert python.startswith("loaded spam@2 from spam_v2.py")
    side = run(runner, "symbols spam@2 spam_native@2").text.splitlines()
    assert side[0].split() == ["spam@2", "spam_native@2"]
    assert any("classify" in line and " ~ " in line for line in side)
