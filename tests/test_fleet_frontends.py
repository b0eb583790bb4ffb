"""The fleet through the interactive front ends: ``livepatch shell --fleet``
(script mode and the prompt on a pipe) and ``%hotswap connect --fleet`` in a
real IPython kernel, against real engine processes on the local registry.
(ZooKeeper through the shell: tests/test_fleet_zk.py.)"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, run_cli, start_engine
from fleet_helpers import SLOT_ARGS, active_sha, rule, wait_for
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from test_notebook_frontends import kernel, run_in  # noqa: F401 - the real-kernel fixture

from livepatch.fleet.console import FleetSession
from livepatch.fleet.local import push_local
from livepatch.fleet.model import sha_of
from livepatch.fleet.shell import FleetCompleter, FleetShell

FLEET = "ff"

pytestmark = pytest.mark.slow


@pytest.fixture
def members(fleet_env: Path) -> Iterator[list[EngineProcess]]:
    """Two members with traffic, running rule version 1."""
    started = [
        start_engine(*SLOT_ARGS, "--fleet", FLEET, "--traffic", "50", name=name)
        for name in ("a", "b")
    ]
    try:
        assert push_local(FLEET, "spam", rule(1), "rule_v1.py").ok
        yield started
    finally:
        for proc in started:
            proc.stop()


def write(path: Path, n: int, **kwargs: Any) -> Path:
    path.write_text(rule(n, **kwargs), encoding="utf-8")
    return path


def test_shell_script_status_push_symbols_diff_rollback(
    members: list[EngineProcess], tmp_path: Path
) -> None:
    two = write(tmp_path / "rule_v2.py", 2)
    one, new = sha_of(rule(1))[:12], sha_of(rule(2))[:12]
    script = f"push {two} --slot spam; status; symbols {new}; diff {one} {new}; history"
    result = run_cli("shell", "--fleet", FLEET, "-c", script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"push spam={new} (rule_v2.py): committed on 2 members" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("a ", "b "))]
    # member, state, converged, calls/s, then the active version and its sha.
    assert [r[:3] for r in rows] == [["a", "ready", "yes"], ["b", "ready", "yes"]]
    assert all(r[-1] == new and float(r[3]) >= 0 for r in rows)
    assert f"# {new} (rule_v2.py): from fleet {FLEET}'s registry (local)" in out
    assert f"# {one} (rule_v1.py) vs {new} (rule_v2.py)" in out and "classify" in out
    assert out.count("committed") >= 3  # the push, and the history twice over
    assert active_sha("a") == active_sha("b") == sha_of(rule(2))
    # Rollback from the shell: the previous desired version, on every member.
    back = run_cli("shell", "--fleet", FLEET, "-c", "rollback spam; status")
    assert back.returncode == 0, back.stderr
    assert f"rollback spam={one}" in back.stdout
    assert active_sha("a") == active_sha("b") == sha_of(rule(1))
    # An aborted push: every member's reason, one error line, exit 1; nobody swapped.
    bad = tmp_path / "bad.py"
    bad.write_text("def classify(:\n", encoding="utf-8")
    aborted = run_cli("shell", "--fleet", FLEET, "-c", f"push {bad} --slot spam; status")
    assert aborted.returncode == 1
    assert "a: refused: load failed" in aborted.stdout and "b: refused" in aborted.stdout
    assert "push aborted" in aborted.stderr and "nobody swapped" in aborted.stderr
    assert "converged" not in aborted.stdout  # the script stopped at the failure
    assert active_sha("a") == active_sha("b") == sha_of(rule(1))
    # Engine verbs and bad input: one line saying what to do, exit 2.
    for line, words in (
        ("load x.py", "push FILE --slot S"),
        (f"push {two}", "push needs --slot"),
        ("symbols 12", "sha256"),
    ):
        used = run_cli("shell", "--fleet", FLEET, "-c", line)
        assert used.returncode in (1, 2), (line, used.stderr)
        assert words in used.stderr and "Traceback" not in used.stderr, used.stderr


class Driver:
    """Runs :meth:`FleetShell.run` in a thread, typing into a pipe."""

    def __init__(self, shell: FleetShell, pipe: Any) -> None:
        self.shell, self.pipe = shell, pipe
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.shell.run()

    def type(self, text: str, results: int) -> list[Any]:
        self.pipe.send_text(text)
        wait_for(lambda: len(self.shell.transcript) >= results, what=f"{results} results")
        return self.shell.transcript


def test_shell_prompt_shows_members_pushes_and_completes_shas(
    members: list[EngineProcess], tmp_path: Path
) -> None:
    two = write(tmp_path / "rule_v2.py", 2)
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(create_pipe_input())
        shell = FleetShell(
            FleetSession(FLEET),
            input=pipe,
            output=DummyOutput(),
            history_file=tmp_path / "history",
            status_interval=0.2,
        )
        drv = Driver(shell, pipe)
        # The toolbar follows the fleet (sampled in the background).
        wait_for(lambda: "2 ready; 2 converged" in shell.toolbar(), what="the toolbar")
        assert f"spam={sha_of(rule(1))[:12]}" in shell.toolbar()
        transcript = drv.type("status\r", results=1)
        assert transcript[0].ok and {m["name"] for m in transcript[0].data["members"]} == {
            "a",
            "b",
        }
        transcript = drv.type(f"push {two} --slot spam\r", results=2)
        assert transcript[1].ok, transcript[1].error
        assert sorted(transcript[1].data["acks"]) == ["a", "b"]
        transcript = drv.type("swap spam@1\r", results=3)  # an engine verb: the shell goes on
        assert not transcript[2].ok and "push FILE --slot S" in (transcript[2].error or "")
        new = sha_of(rule(2))[:12]
        wait_for(lambda: f"desired spam={new}" in shell.toolbar(), what="the toolbar to follow")
        # Completion: commands, then shas and slots from the fleet's view.
        completer = FleetCompleter(shell._latest)
        event = CompleteEvent(completion_requested=True)

        def complete(text: str) -> list[str]:
            return [c.text for c in completer.get_completions(Document(text), event)]

        assert complete("pu") == ["push"]
        assert new in complete("symbols "), (complete("symbols "), shell._latest())
        assert complete("rollback ") == ["spam"]
        assert complete("push x.py --") == ["--slot", "--expect", "--deadline"]
        assert complete("push x.py --slot ") == ["spam"]
        pipe.send_text("\x04")  # Ctrl-D on an empty line
        drv.thread.join(20)
        assert drv.code == 0
    assert f"push {two} --slot spam" in (tmp_path / "history").read_text()
    assert active_sha("a") == active_sha("b") == sha_of(rule(2))


def test_hotswap_connect_fleet_in_a_real_kernel(
    members: list[EngineProcess],
    kernel: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    _km, kc = kernel
    two = write(tmp_path / "rule_v2.py", 2)
    one, new = sha_of(rule(1))[:12], sha_of(rule(2))[:12]
    run_in(kc, "%load_ext livepatch")
    shown = run_in(
        kc,
        f"v = %hotswap connect --fleet {FLEET}\n"
        "print(sorted(m['name'] for m in v.data['members']), v.member('a')['converged'])\n"
        "html = v._repr_html_()\n"
        "print('lp-member' in html, html.count('<tr class=\"lp-member\"'))",
    )
    assert shown.split() == ["['a',", "'b']", "True", "True", "2"]
    pushed = run_in(
        kc,
        f"p = %hotswap push {two} --slot spam\n"
        "print(p.ok, sorted(p.data['acks']))\n"
        "print('swapped to' in p._repr_html_())",
    )
    assert pushed.split() == ["True", "['a',", "'b']", "True"]
    assert active_sha("a") == active_sha("b") == sha_of(rule(2))
    table = run_in(
        kc,
        f"t = %hotswap symbols {new}\nprint(type(t).__name__, 'classify' in t._repr_html_())\n"
        f"d = %hotswap diff {one} {new}\nprint(type(d).__name__)",
    )
    assert f"from fleet {FLEET}'s registry (local)" in table
    lines = table.splitlines()  # each view's "where it was read" line, then its type
    assert lines[1] == "TableView True" and lines[3] == "DiffView", lines
    status = run_in(
        kc,
        "s = %hotswap status\n"
        "print([p['outcome'] for p in s.data['pushes']][-1], "
        "all(m['converged'] for m in s.data['members']))",
    )
    assert status.split() == ["committed", "True"]
    # An engine verb while attached: one line that says what to do.
    refused = run_in(
        kc,
        "from IPython.core.error import UsageError\n"
        "try:\n    get_ipython().run_line_magic('hotswap', 'swap spam@1')\n"
        "except UsageError as e:\n    print('usage:', e)",
    )
    assert "attached to fleet" in refused and "%hotswap push FILE --slot S" in refused
    back = run_in(kc, "r = %hotswap rollback spam\nprint(r.ok, r.data['sha256'][:12])")
    assert back.split() == ["True", one]
    assert active_sha("a") == active_sha("b") == sha_of(rule(1))
    # An aborted push: each member's reason is displayed, then one error line.
    bad = tmp_path / "bad.py"
    bad.write_text("def classify(:\n", encoding="utf-8")
    outputs: list[dict[str, Any]] = []
    kc.execute_interactive(
        f"%hotswap push {bad} --slot spam", output_hook=outputs.append, timeout=120
    )
    html = next(m for m in outputs if m["msg_type"] == "display_data")["content"]["data"]
    assert "refused: load failed" in html["text/html"]
    # IPython shows a UsageError as one line on stderr, without a traceback.
    err = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
    assert "UsageError" in err and "nobody swapped" in err and "Traceback" not in err
    # A connect that fails changes nothing: still attached to the fleet.
    tried = run_in(
        kc,
        "for line in ('connect nosuch', 'connect --fleet nosuch'):\n"
        "    try:\n        get_ipython().run_line_magic('hotswap', line)\n"
        "    except UsageError as e:\n        print('refused:', e)\n"
        "s = %hotswap status\nprint('status of', s.data['fleet'])",
    )
    assert tried.count("refused:") == 2 and f"status of {FLEET}" in tried, tried
    # Back to one engine.
    one_engine = run_in(kc, "r = %hotswap connect a\nprint(r.data['engine'])")
    assert one_engine.strip().endswith("a")
    assert run_in(kc, "s = %hotswap status\nprint(s['name'])").split()[-1] == "a"
    # ...and a fleet that cannot be shown leaves it on that engine.
    kept = run_in(
        kc,
        "try:\n    get_ipython().run_line_magic('hotswap', 'connect --fleet nosuch')\n"
        "except UsageError as e:\n    print('refused:', e)\n"
        "s = %hotswap status\nprint('engine', s['name'])",
    )
    assert "refused:" in kept and kept.split()[-1] == "a", kept
