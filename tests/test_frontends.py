"""The front ends as people find them (issue 13), each through the real thing:
the launcher, the CLI as a subprocess, the demo and the shell in tmux, the
README's commands as written. (``%hotswap`` and the HTML: test_notebook_frontends.py.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, needs, run_cli
from terminal import Terminal, open_terminal
from test_shell_tmux import terminal as terminal  # a fixture, used by name

from livepatch.client import Client
from livepatch.examples.spam import rule_path
from livepatch.native import find_compiler
from livepatch.runtime import list_engines, pid_alive

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "livepatch" / "examples" / "rules"
ESC = "\x1b"

#: A rule whose every call prints 4 KiB: a pipe nobody drains fills in 16 calls.
PRINTING_RULE = """\
from livepatch.examples.spam import Message, Verdict


def classify(msg: Message) -> Verdict:
    print("chatty rule " + "x" * 4096, flush=True)
    return Verdict(spam=False, score=0.0)
"""


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.05)


# --- the launcher -----------------------------------------------------------------------


def test_an_engine_whose_rule_prints_never_wedges(runtime_dir: Path) -> None:
    engine = EngineProcess("chatty", ["--no-quarantine"])
    engine.start()
    try:
        with Client.connect("chatty") as client:
            v = client.load("spam", PRINTING_RULE, "chatty.py")
            assert client.check(v).ok
            client.swap(v)
            msg = {"sender": "a@b.c", "text": "hi", "links": []}
            for _ in range(64):  # 256 KiB of output: four pipes' worth
                client.call("spam", "classify", [msg])
            version = next(x for x in client.status()["slots"][0]["versions"] if x["id"] == v)
            assert version["calls"] == 64 and version["in_flight"] == 0
        # The output went to the log, and `livepatch log` shows its end.
        shown = run_cli("log", "--lines", "3", "--existing", "chatty")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.count("chatty rule xxxx") == 3
    finally:
        started = time.monotonic()
        assert engine.stop(timeout=30) == 0  # SIGTERM was enough
        assert time.monotonic() - started < 30
    assert list_engines(runtime_dir) == []


def test_restart_on_the_same_state_dir(runtime_dir: Path, tmp_path: Path) -> None:
    engine = EngineProcess("durable", ["--state-dir", str(tmp_path / "state")])
    first = engine.start()["pid"]
    try:
        with Client.connect("durable") as client:
            v = client.load_file(RULES / "spam_v2.py", "spam")
            assert client.check(v).ok
            client.swap(v)
        second = engine.restart()["pid"]
        assert second != first and engine.alive
        with Client.connect("durable") as client:
            assert client.status()["slots"][0]["active"] == v
    finally:
        engine.stop()


def test_an_engine_that_cannot_start_says_why(runtime_dir: Path) -> None:
    engine = EngineProcess("broken", ["--slot", "spam=no.such.module:X"])
    with pytest.raises(RuntimeError, match=r"exited with status 2 .*no.such.module"):
        engine.start()
    assert not engine.alive


def test_an_engine_tied_to_its_parent_stops_with_it(runtime_dir: Path) -> None:
    # A parent that starts a tied engine and is then killed with -9.
    script = (
        "from livepatch.launcher import EngineProcess\n"
        "e = EngineProcess('orphan', tie_to_parent=True)\n"
        "print(e.start()['pid'], flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert pid_alive(pid)
    parent.kill()
    parent.wait()
    wait_for(lambda: not pid_alive(pid))
    wait_for(lambda: list_engines(runtime_dir) == [])  # it cleaned up as on SIGTERM


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--traffic", "-5"], "--traffic -5: use 0"),
        (["--load-timeout", "-1"], "--load-timeout -1: use more than 0"),
        (["--name", "bad name"], "--name: engine name 'bad name' must be"),
    ],
)
def test_engine_options_are_validated_before_anything_is_built(
    runtime_dir: Path, args: list[str], message: str
) -> None:
    done = run_cli("engine", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "bug" not in done.stderr
    assert done.stdout == ""  # never got as far as a ready line


def test_cli_verbs_as_the_readme_says(engine_proc: EngineProcess) -> None:
    # The slot by the file's kind, as in the shell and the magics.
    loaded = run_cli("load", str(RULES / "spam_v2.py"))
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded spam@2" in loaded.stdout and "`livepatch check spam@2`" in loaded.stdout
    # The wrong kind of file for the slot named: which kind the slot takes.
    wrong = run_cli("load", str(RULES / "spam_native_v1.c"), "--slot", "spam")
    assert wrong.returncode == 2
    assert "slot 'spam' is a python slot and takes Python sources" in wrong.stderr
    assert "--slot spam_native" in wrong.stderr
    # --expect naming no version says so, not "another client swapped first".
    typo = run_cli("swap", "spam@2", "--expect", "spam@77")
    assert typo.returncode == 1 and "no version spam@77" in typo.stderr
    assert "another client" not in typo.stderr
    # --json: errors as JSON too.
    as_json = run_cli("check", "spam@99", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["kind"] == "unknown-version" and error["exit_code"] == 1
    missing = run_cli("check", "--json")  # argparse's own usage errors too
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert json.loads(missing.stdout)["error"]["kind"] == "usage"
    # A failed check is journaled as failed.
    bad = run_cli("load", str(RULES / "spam_unresolved.py"))
    assert bad.returncode == 0
    assert run_cli("check", "spam@3").returncode == 1
    journal = json.loads(run_cli("journal", "--json").stdout)
    assert [(e["op"], e["version"], e["ok"]) for e in journal[-1:]] == [("check", "spam@3", False)]


def test_load_of_a_fifo_is_refused_by_the_client_without_waiting(
    engine_proc: EngineProcess, tmp_path: Path
) -> None:
    # The client reads the file to send it; a FIFO with no writer must not
    # hang it (run_cli's timeout would fail the test).
    fifo = tmp_path / "rules.py"
    os.mkfifo(fifo)
    done = run_cli("load", str(fifo), "--slot", "spam", timeout=30)
    assert done.returncode == 1, done.stderr
    assert "is a FIFO, not a regular file" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_reader_that_goes_away_stops_the_output_quietly(engine_proc: EngineProcess) -> None:
    # `livepatch status --json | head -1`, made deterministic: the pipe's
    # reading end is closed before the verb writes anything.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "livepatch", "status", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_exit_codes_are_the_same_for_the_cli_and_shell_c(engine_proc: EngineProcess) -> None:
    for command, code in [
        ("check spam@99", 1),  # refused
        ("status --bogus x", 2),  # usage
        ("unload spam@1 --wait soon", 2),  # usage: not a number
        ("status", 0),
    ]:
        cli = run_cli(*shlex.split(command))
        shell = run_cli("shell", "-c", command)
        assert (cli.returncode, shell.returncode) == (code, code), (command, cli.stderr)


def test_did_you_mean_and_help(runtime_dir: Path) -> None:
    typo = run_cli("stauts")
    assert typo.returncode == 2
    assert "did you mean `livepatch status`?" in typo.stderr
    top = run_cli("--help").stdout
    assert "exit status:" in top and "LIVEPATCH_RUNTIME_DIR" in top and "NO_COLOR" in top
    for verb in ("load", "check", "swap", "unload", "journal", "call", "symbols"):
        text = run_cli(verb, "--help").stdout
        assert re.search(rf"\nexamples?:\n  livepatch {verb} ", text), verb  # an example
    assert "(default: 20)" in run_cli("journal", "--help").stdout


def test_the_journal_escapes_client_names(engine_proc: EngineProcess) -> None:
    with Client.connect("rules", client_name="evil\x1b[2J\x1b]0;owned\x07") as client:
        client.check("spam@1")
    for out in (run_cli("journal").stdout, run_cli("shell", "-c", "journal").stdout):
        assert ESC not in out and "\x07" not in out
        assert "evil\\x1b[2J" in out


@needs(None if find_compiler() else "no C compiler: no native version")
def test_long_ids_keep_the_columns(engine_proc: EngineProcess) -> None:
    run_cli("load", str(RULES / "spam_native_v2.c"))
    watch = run_cli("shell", "-c", "watch --for 0.2").stdout.splitlines()
    rows = [line for line in watch if re.match(r"[* ] \S+@\d+ ", line)]
    assert len(rows) >= 3
    assert (
        len({line.index(" active ") if " active " in line else None for line in rows} - {None}) == 1
    )
    assert len({re.search(r"\S+@\d+ +(\S)", r).end(0) for r in rows}) == 1, watch
    journal = run_cli("journal").stdout.splitlines()
    assert len({line.index(": ") for line in journal}) >= 1
    columns = {re.search(r"(?:ok |ERR) \S+ +\S+ +", line).end(0) for line in journal}  # type: ignore[union-attr]
    assert len(columns) == 1, journal


# --- the README ---------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """The lines of the README's shell blocks under "Using it"."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_readme_command_runs_as_written(runtime_dir: Path) -> None:
    commands = readme_commands()
    engine_line = commands.pop(0)
    assert engine_line.startswith("livepatch engine ")
    words = shlex.split(engine_line.split("#", 1)[0])
    state = ROOT / "state"
    made_state = not state.exists()
    engine = EngineProcess(words[words.index("--name") + 1], words[4:])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        # The README runs it from the repository root, as a user would.
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            engine.start()
        finally:
            os.chdir(cwd)
        for command in commands:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr
    finally:
        engine.stop()
        if made_state:
            shutil.rmtree(state, ignore_errors=True)


# --- the demo and the shell in a real terminal ------------------------------------------------


@pytest.fixture
def demo_terminal(runtime_dir: Path, tmp_path: Path) -> Iterator[Terminal]:
    env = {
        "LIVEPATCH_RUNTIME_DIR": str(runtime_dir),
        "LIVEPATCH_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
    }
    argv = [sys.executable, "-m", "livepatch", "demo", "--rate", "20"]
    with open_terminal(runtime_dir.parent, "demo", argv, env, cwd=tmp_path) as term:
        yield term


def _demo_engine(runtime_dir: Path) -> int:
    wait_for(lambda: len(list_engines(runtime_dir)) == 1)
    return list_engines(runtime_dir)[0].pid


def test_ctrl_c_in_the_demo_interrupts_the_command_only(
    demo_terminal: Terminal, runtime_dir: Path, tmp_path: Path
) -> None:
    demo_terminal.wait_for("quit (or Ctrl-D) leaves the demo and stops its engine", "demo-")
    pid = _demo_engine(runtime_dir)
    # A relative path is read from the working directory first.
    (tmp_path / "mine.py").write_text((RULES / "spam_v2.py").read_text() + "\n# mine\n")
    demo_terminal.type("load mine.py", "Enter")
    demo_terminal.wait_for("loaded spam@2 from mine.py")
    demo_terminal.type("watch --for 30", "Enter")
    time.sleep(0.5)  # let the command start; there is no event to wait on in tmux
    demo_terminal.tmux("send-keys", "-t", "demo", "C-c")
    demo_terminal.wait_for("interrupted")
    assert pid_alive(pid)
    demo_terminal.type("status", "Enter")
    demo_terminal.wait_for("reconnected to engine", "slot spam: active spam@1")
    demo_terminal.type("quit", "Enter")
    assert demo_terminal.exit_status(timeout=30) == 0
    assert not pid_alive(pid)


@needs(None if find_compiler() else "no C compiler: no native copies to clean")
def test_closing_the_terminal_cleans_up_the_demo(
    demo_terminal: Terminal, runtime_dir: Path
) -> None:
    demo_terminal.wait_for("quit (or Ctrl-D) leaves the demo", "demo-")
    pid = _demo_engine(runtime_dir)
    maps = Path(f"/proc/{pid}/maps").read_text()
    copies = {Path(m).parent for m in re.findall(r"(/\S*/livepatch-native-[^/\s]+/\S+)", maps)}
    assert copies and all(c.exists() for c in copies)
    info = list_engines(runtime_dir)[0]
    # The terminal goes away: tmux sends SIGHUP to the pane's processes.
    demo_terminal.tmux("kill-server")
    wait_for(lambda: not pid_alive(pid))
    assert not Path(info.address).exists()
    assert list(runtime_dir.glob("*.json")) == []
    assert not any(c.exists() for c in copies)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP"])
def test_a_signal_at_the_demo_prompt_unwinds_it_and_stops_its_engine(
    demo_terminal: Terminal, runtime_dir: Path, how: str
) -> None:
    """At the prompt the signal asks prompt_toolkit to exit in its own loop
    (raised in the middle of it, a ``SystemExit`` could leave asyncio waiting
    on a cut-off task for good); the demo then stops its engine and exits
    with 128 + the signal's number."""
    demo_terminal.wait_for("quit (or Ctrl-D) leaves the demo", "demo-")
    pid = _demo_engine(runtime_dir)
    demo = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "livepatch" in Path(f"/proc/{demo}/cmdline").read_text()  # the engine's parent
    signum = getattr(signal, how)
    os.kill(demo, signum)
    assert demo_terminal.exit_status(timeout=30) == 128 + signum
    # It unwound (it was not just killed): it says so, and its engine is gone.
    assert f"livepatch: stopped by {how}" in demo_terminal.screen()
    assert not pid_alive(pid) and list_engines(runtime_dir) == []


def test_the_demo_shows_why_the_native_slot_is_empty(runtime_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "livepatch", "demo", "--rate", "0"],
        env={**os.environ, "CC": "/nonexistent/cc"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert "engine: no C compiler found" in done.stdout


def test_the_tour_prints_real_commands_and_purges(runtime_dir: Path) -> None:
    from livepatch.cli import build_parser

    done = run_cli("demo", "--rate", "0", timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    commands = [
        line[len("$ livepatch ") :] for line in done.stdout.splitlines() if line.startswith("$ ")
    ]
    assert "purge spam@2" in commands and "purged spam@2" in done.stdout
    # Step 7: spam@6 counted two messages; spam@7's hook carried them across the swap
    # (no demo traffic here, so the counts are exactly the tour's two calls).
    stats = re.findall(r"^(spam@\d+): (\{\"messages\".*\})$", done.stdout, re.M)
    counts = [(version, json.loads(seen)["messages"]) for version, seen in stats]
    assert counts == [("spam@6", 2), ("spam@7", 2)]
    assert re.search(r"\+ +\d+ T __livepatch_handoff__ +\(previous\)$", done.stdout, re.M)
    assert "spam: spam@6 -> spam@7 (spam@7's __livepatch_handoff__ took over" in done.stdout
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command))  # each one runs as printed (exits 2 if not)


def test_a_one_shot_verb_imports_no_engine_core(engine_proc: EngineProcess) -> None:
    code = (
        "import sys\n"
        "from livepatch.cli import main\n"
        "assert main(['swap', 'spam@1']) == 0\n"
        "assert main(['status']) == 0\n"
        "print(sorted(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(eval(done.stdout.strip().splitlines()[-1]))  # a printed list of names
    heavy = {"engine", "native", "resolve", "bytecode", "symbols", "pyload", "quarantine", "state"}
    assert not {f"livepatch.{m}" for m in heavy} & loaded, loaded
    assert not any(m.startswith(("IPython", "prompt_toolkit")) for m in loaded), loaded
    # What start-up was trimmed of (issue 13): the engine's dataclass models,
    # the fleet, and the argparse parser of every verb.
    cut = {"livepatch.model", "livepatch.jsonable", "livepatch.fleet", "livepatch.fleet.model"}
    assert not cut & loaded, cut & loaded
    # Stdlib modules a bare interpreter here does not import (site may, with
    # other .pth files): dataclasses (and inspect), argparse, OpenSSL's hashlib.
    bare = subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    stdlib = {"dataclasses", "inspect", "argparse", "hashlib", "hmac", "uuid", "shutil"}
    stdlib -= set(eval(bare.stdout))
    assert not stdlib & loaded, stdlib & loaded


def test_the_log_is_bounded_at_start_and_while_running(
    runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 64 * 1024
    monkeypatch.setenv("LIVEPATCH_LOG_MAX_BYTES", str(limit))
    log = runtime_dir / "bounded.log"
    older = runtime_dir / "bounded.log.1"
    runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log.write_text("an earlier run\n" * 10_000)  # 150 KiB left by earlier starts
    engine = EngineProcess("bounded", ["--no-quarantine"])
    engine.start()
    try:
        # At start: the full log moved to .1, this run's log begins afresh.
        assert older.read_text().startswith("an earlier run")
        assert "an earlier run" not in log.read_text() and '{"ready"' in log.read_text()
        with Client.connect("bounded") as client:
            v = client.load("spam", PRINTING_RULE, "chatty.py")
            assert client.check(v).ok
            client.swap(v)
            msg = {"sender": "a@b.c", "text": "hi", "links": []}
            for _ in range(64):  # 256 KiB: four times the limit
                client.call("spam", "classify", [msg])
        # While running: copied to .1 and emptied, and the engine writes on.
        wait_for(lambda: log.stat().st_size < limit and "chatty rule" in older.read_text())
        assert engine.alive
        with Client.connect("bounded") as client:
            client.call("spam", "classify", [msg])
        wait_for(lambda: "chatty rule" in log.read_text())
        assert log.read_bytes()[:1] != b"\0"  # O_APPEND: no hole before the new line
        shown = run_cli("log", "--lines", "3", "--existing", "bounded")
        assert shown.returncode == 0 and shown.stdout.count("chatty rule xxxx") == 3
    finally:
        engine.stop()
    # One older generation only: this run's rotation replaced the earlier run's.
    assert "an earlier run" not in older.read_text()
    assert sorted(p.name for p in runtime_dir.glob("bounded.log*")) == ["bounded.log", older.name]


def test_a_bad_log_limit_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEPATCH_LOG_MAX_BYTES", "10MB")
    with pytest.raises(ValueError, match=r"LIVEPATCH_LOG_MAX_BYTES='10MB': use a positive"):
        EngineProcess("x")


def test_shell_keys_in_a_real_terminal(terminal: Terminal) -> None:
    terminal.wait_for("rules>")
    # "sy" and Tab in one burst (a paste, a laggy ssh) still completes.
    terminal.type("sy\t")
    terminal.wait_for("rules> symbols")
    terminal.type("", "C-u")
    terminal.type(
        f"load {rule_path('spam_v2.py')}; check spam@2; "
        f"load {rule_path('spam_unresolved.py')}; check spam@3",
        "Enter",
    )
    terminal.wait_for("spam@3 failed its check")
    # Only spam@2 can be swapped in (spam@1 is active, spam@3 failed): Tab
    # inserts it rather than offering every version.
    terminal.type("swap ", "Tab")
    terminal.wait_for("rules> swap spam@2")
    # F1 shows the help and keeps the half-typed line.
    terminal.type("", "F1")
    terminal.wait_for("usage: swap VERSION")

    def redrawn() -> bool:  # the prompt comes back below the help, line intact
        screen = terminal.screen()
        after = screen[screen.index("usage: swap VERSION") :].splitlines()
        return any(line.rstrip() == "rules> swap spam@2" for line in after)

    wait_for(redrawn)
    terminal.type("", "Enter")
    terminal.wait_for("spam: spam@1 -> spam@2")


def test_side_by_side_falls_back_to_stacked_at_80_columns(
    engine_proc: EngineProcess, runtime_dir: Path, tmp_path: Path
) -> None:
    env = {
        "LIVEPATCH_RUNTIME_DIR": str(runtime_dir),
        "LIVEPATCH_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm-256color",
    }
    argv = [sys.executable, "-m", "livepatch", "shell"]
    with open_terminal(runtime_dir.parent, "narrow", argv, env, size=(80, 60)) as term:
        term.wait_for("rules>")
        term.type(f"load {rule_path('spam_v2.py')}", "Enter")
        term.wait_for("loaded spam@2")
        term.type("symbols spam@1 spam@2", "Enter")
        screen = term.wait_for("spam@1 -> spam@2 (stacked", "= 8  ~ 2  + 6  - 0")
        # ~ classify: each version's row on its own line, none wrapped.
        lines = screen.splitlines()
        at = next(i for i, line in enumerate(lines) if "T classify" in line)
        assert lines[at].split()[:4] == ["~", "spam@1", "14", "T"]
        assert lines[at + 1].split()[:3] == ["spam@2", "32", "T"]
        start = next(i for i, line in enumerate(lines) if "(stacked" in line)
        end = next(i for i, line in enumerate(lines) if line.startswith("= 8  ~ 2"))
        assert all(len(line) < 80 for line in lines[start : end + 1]), screen


def test_the_shell_watches_a_file_until_ctrl_c(terminal: Terminal, tmp_path: Path) -> None:
    rule = tmp_path / "watched.py"
    rule.write_text(PRINTLESS_RULE.format(spam=False))
    terminal.wait_for("rules>")
    terminal.type(f"load {rule} --watch --swap", "Enter")
    terminal.wait_for("watched.py: loaded spam@2; swapped in")
    rule.write_text("def classify(msg:\n")
    terminal.wait_for("SyntaxError")
    terminal.wait_for("spam@2 keeps serving")
    rule.write_text(PRINTLESS_RULE.format(spam=True))
    terminal.wait_for("watched.py: loaded spam@3; swapped in")
    terminal.type("", "C-c")  # stops the watch, not the shell
    terminal.wait_for("stopped watching")
    terminal.type("status", "Enter")
    terminal.wait_for("* spam@3")


def test_the_shells_watch_follows_its_engine_through_a_restart(
    terminal: Terminal, engine_proc: EngineProcess, tmp_path: Path
) -> None:
    # The engine restarted (by its supervisor, a deploy) while the shell
    # watches a file: the save made while it is away says so and the watch
    # goes on; the next one reconnects, says so, and loads there; after
    # Ctrl-C the shell itself talks to the new process.
    rule = tmp_path / "watched.py"
    rule.write_text(PRINTLESS_RULE.format(spam=False))
    terminal.wait_for("rules>")
    terminal.type(f"load {rule} --watch --swap", "Enter")
    terminal.wait_for("watched.py: loaded spam@2; swapped in")
    old = engine_proc.pid
    engine_proc.stop()
    rule.write_text(PRINTLESS_RULE.format(spam=True))
    terminal.wait_for("the next save is loaded once the engine is back")
    new = engine_proc.restart()["pid"]
    rule.write_text(PRINTLESS_RULE.format(spam=True) + "# saved again\n")
    terminal.wait_for(f"'rules': it was restarted (pid {old}, now {new})")
    # The new process restored nothing (no state directory): the save is its spam@2.
    wait_for(lambda: "swapped in" in terminal.screen().split(f"now {new})", 1)[-1])
    terminal.type("", "C-c")
    terminal.wait_for("stopped watching")
    terminal.type("status", "Enter")
    screen = terminal.wait_for(f"pid {new}", "* spam@2")
    assert "Traceback" not in screen


PRINTLESS_RULE = """
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    return Verdict(spam={spam}, score=0.5)
"""


def test_odd_input_and_odd_places_are_one_line_errors(
    engine_proc: EngineProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each was "internal error" (exit 70, or 1 from the command layer) before.
    cases = [
        (["call", "spam.classify", "[" * 100_000], 2, "argument 1 nests too deeply"),
        (["call", "spam.classify", "NaN"], 2, "argument 1 holds NaN, which JSON"),
        (["watch", "--for", "1e12"], 2, "watch --for 1e+12: use a number of seconds above 0"),
        (["watch", "--for", "0"], 2, "watch --for 0: use a number of seconds above 0"),
    ]
    for args, code, said in cases:
        done = run_cli(*args, input="")
        assert (done.returncode, done.stderr.count("\n")) == (code, 1), (args, done.stderr)
        assert said in done.stderr, (args, done.stderr)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    places = [
        (a_file, "is not a directory: remove it or set LIVEPATCH_RUNTIME_DIR"),
        (a_file / "sub", "cannot create runtime directory"),
        (Path("/proc/self/nope"), "cannot create runtime directory"),
    ]
    for place, said in places:
        monkeypatch.setenv("LIVEPATCH_RUNTIME_DIR", str(place))
        for args in (["status"], ["engine", "--name", "x1"]):
            done = run_cli(*args)
            assert (done.returncode, done.stderr.count("\n")) == (1, 1), (place, done.stderr)
            assert said in done.stderr, (place, args, done.stderr)
    # A valid name in a deep runtime directory: too long for a Unix socket's
    # address. Said before anything is made, and nothing is left there.
    deep = Path("/tmp") / f"lp-{os.getpid()}-{'r' * 36}"
    monkeypatch.setenv("LIVEPATCH_RUNTIME_DIR", str(deep))
    try:
        done = run_cli("engine", "--name", "n" * 64)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert "use a shorter --name or LIVEPATCH_RUNTIME_DIR" in done.stderr
        assert list(deep.iterdir()) == []
    finally:
        shutil.rmtree(deep, ignore_errors=True)


def test_a_bug_in_the_command_layer_exits_70_as_the_help_says() -> None:
    from livepatch.commands.runner import CommandResult

    internal = CommandResult(ok=False, command="x", error="internal error: E", kind="internal")
    assert internal.exit_code == 70
    assert CommandResult(ok=False, command="x", error="no", kind="conflict").exit_code == 1
    assert CommandResult(ok=False, command="x", error="no", usage=True).exit_code == 2


def test_what_the_engine_refuses_as_written_exits_2(engine_proc: EngineProcess) -> None:
    # A malformed version id and the shadow's bounds: usage errors, naming the
    # flag the user typed (it said "param 'for_s' of 'shadow'", exit 1).
    assert run_cli("load", str(rule_path("spam_v2.py"))).returncode == 0
    assert run_cli("check", "spam@2").returncode == 0
    cases = [
        (["check", "spam@"], "'spam@' is not a version id: use SLOT@N"),
        (["shadow", "spam@2", "--for", "inf"], "--for inf: use seconds from 0.001 to 86,400"),
        (["shadow", "spam@2", "--for", "1e-9"], "--for 1e-09: use seconds from 0.001 to"),
        (["shadow", "spam@2", "--sample", "1e-300"], "--sample 1e-300: use a fraction from"),
        (["shadow", "spam@2", "--queue", "99999999999"], "use calls from 1 to 1,000,000"),
    ]
    for args, said in cases:
        done = run_cli(*args)
        assert (done.returncode, done.stderr.count("\n")) == (2, 1), (args, done.stderr)
        assert said in done.stderr, (args, done.stderr)


def test_ctrl_c_of_a_verb_says_the_engine_may_still_complete_it(
    engine_proc: EngineProcess, tmp_path: Path
) -> None:
    # The engine does not know the client gave up: the load runs to its end.
    slow, mark = tmp_path / "slow.py", tmp_path / "started"
    body = f"import pathlib, time\npathlib.Path({str(mark)!r}).touch()\ntime.sleep(1.5)\n"
    slow.write_text(body + Path(rule_path("spam_v2.py")).read_text(), encoding="utf-8")
    cli = subprocess.Popen(
        [sys.executable, "-m", "livepatch", "load", str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(mark.exists)  # its body runs (in the quarantine): the load is under way
    cli.send_signal(signal.SIGINT)
    _out, err = cli.communicate(timeout=30)
    assert cli.returncode == 130, err
    assert err == (
        "livepatch: interrupted; a request already sent may still complete in the engine "
        "(`livepatch journal` shows what it did)\n"
    )
    wait_for(lambda: "slow.py" in run_cli("status").stdout)  # it did: spam@2, from slow.py
