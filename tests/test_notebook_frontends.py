"""The IPython and Jupyter front end as people find it (issue 13): ``%hotswap``
in a real IPython (in-process, a real ipykernel, terminal IPython in tmux) and
its HTML measured in a real headless browser (chromium) in two themes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, engine_pids, start_engine, wait_gone
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from terminal import open_terminal
from test_frontends import PRINTING_RULE, wait_for

from livepatch.client import Client
from livepatch.examples.spam import rule_path
from livepatch.native import find_compiler
from livepatch.runtime import list_engines, pid_alive

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "livepatch" / "examples" / "rules"
ESC = "\x1b"

# --- %hotswap -------------------------------------------------------------------------------


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "livepatch")
    yield shell
    if "livepatch" in shell.extension_manager.loaded:
        shell.run_line_magic("hotswap", "stop")
        shell.run_line_magic("unload_ext", "livepatch")


def hs(shell: InteractiveShell, line: str) -> Any:
    return shell.run_line_magic("hotswap", line)


def test_a_session_never_switches_engines_silently(
    ip: InteractiveShell, engine_proc: EngineProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    other = start_engine(name="other")
    try:
        hs(ip, "connect rules")
        assert hs(ip, "status")["name"] == "rules"
        assert "(engine 'rules')" in capsys.readouterr().out  # several run: named
        engine_proc.stop()
        with pytest.raises(UsageError):
            hs(ip, "status")  # the connection is lost
        with pytest.raises(UsageError, match=r"engine 'rules' .* is gone"):
            hs(ip, f"load {rule_path('spam_v2.py')} --slot spam")
        with Client.connect("other") as client:
            assert [v["id"] for v in client.status()["slots"][0]["versions"]] == ["spam@1"]
        # Restarted under the same name: reconnected, and it says so.
        again = start_engine(name="rules")
        try:
            capsys.readouterr()
            assert hs(ip, "status")["pid"] == again.pid
            assert "'rules' was restarted" in capsys.readouterr().out
        finally:
            again.stop()
    finally:
        other.stop()


def test_hints_use_hotswap_syntax_and_help_points_to_the_question_mark(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    with pytest.raises(UsageError, match=r"`%hotswap\?`"):
        hs(ip, "-h")
    v = hs(ip, f"load {rule_path('spam_unresolved.py')} --slot spam")
    with pytest.raises(UsageError, match=r"run `%hotswap check spam@2` first"):
        hs(ip, f"swap {v}")
    with pytest.raises(UsageError, match="takes Python sources"):
        hs(ip, f"load {RULES / 'spam_native_v1.c'} --slot spam")


def test_hotswap_stop_name_stops_an_engine_a_dead_kernel_left(
    ip: InteractiveShell, runtime_dir: Path
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    name = f"ipython-{int(gone.stdout)}"
    left = EngineProcess(name)  # as an earlier kernel would have, untied
    left.start()
    try:
        assert repr(hs(ip, f"stop {name}")) == f"stopped {name!r}"
        wait_for(lambda: not left.alive)
        assert list_engines(runtime_dir) == []
        with pytest.raises(UsageError, match="no engine named 'nope' was started here"):
            hs(ip, "stop nope")
    finally:
        left.stop()


def test_hotswap_log_shows_what_the_rules_print(ip: InteractiveShell, runtime_dir: Path) -> None:
    hs(ip, "start chatty --rate 0")
    ip.run_cell_magic("hotswap", "load spam", PRINTING_RULE)
    hs(ip, "check spam@2")
    hs(ip, "swap spam@2")
    msg = json.dumps({"sender": "a@b.c", "text": "hi", "links": []})
    for _ in range(40):  # 160 KiB: a pipe would have wedged the engine
        hs(ip, f"call spam.classify '{msg}'")
    assert hs(ip, "status").version("spam@2")["in_flight"] == 0
    shown = hs(ip, "log --lines 2")
    assert shown["lines"] and all("chatty rule" in line for line in shown["lines"])


# --- a real kernel ----------------------------------------------------------------------------


@pytest.fixture
def kernel(tmp_path: Path, runtime_dir: Path) -> Iterator[Any]:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (livepatch tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    km = KernelManager(
        kernel_name="python3",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
    )
    km.start_kernel(cwd=str(ROOT))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        yield km, kc
    finally:
        started = engine_pids(runtime_dir)  # read before the kernel goes, as they end
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
        wait_gone(started)


def run_in(kc: Any, code: str) -> str:
    """Run ``code`` in the kernel; its stdout (fails on an error)."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            out.append(content["text"])
        elif msg["msg_type"] == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    kc.execute_interactive(code, output_hook=hook, timeout=120)
    assert not errors, errors
    return "".join(out)


def test_reload_ext_keeps_the_engines_and_reloads_the_code(kernel: Any) -> None:
    _km, kc = kernel
    run_in(kc, "%load_ext livepatch")
    pid = int(run_in(kc, "r = %hotswap start --rate 0\nprint(r['pid'])"))
    before = run_in(kc, "import ipython_ext.magics as m; print(id(m.HotswapMagics))")
    for module in ("livepatch", "ipython_ext"):
        run_in(kc, f"%reload_ext {module}")
        assert pid_alive(pid)
        assert int(run_in(kc, "r = %hotswap status\nprint(r['pid'])")) == pid
    after = run_in(kc, "import ipython_ext.magics as m; print(id(m.HotswapMagics))")
    assert before != after  # the magics' code was reloaded
    assert "stopped" in run_in(kc, "r = %hotswap stop\nprint(repr(r))")
    assert not pid_alive(pid)


def test_a_killed_kernel_takes_its_engine_along(kernel: Any, runtime_dir: Path) -> None:
    km, kc = kernel
    run_in(kc, "%load_ext livepatch")
    pid = int(run_in(kc, "r = %hotswap start --rate 50\nprint(r['pid'])"))
    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid))
    wait_for(lambda: list_engines(runtime_dir) == [])


def test_cell_names_and_line_numbers_match_the_cell(kernel: Any) -> None:
    _km, kc = kernel
    run_in(kc, "%load_ext livepatch\nr = %hotswap start --rate 0")
    body = (
        "from livepatch.examples.spam import Message, Verdict\n\n\n"
        "def classify(msg: Message) -> Verdict:\n"
        "    return lenn(msg.text)\n"
    )
    reply = kc.execute_interactive("%%hotswap load spam\n" + body, timeout=120)
    assert reply["content"]["status"] == "ok"
    number = reply["content"]["execution_count"]  # In [number]
    shown = run_in(kc, "r = %hotswap status\nprint(r.version('spam@2')['filename'])")
    assert shown.strip() == f"<cell-{number}>"
    problems = run_in(
        kc, "r = %hotswap check spam@2\nprint([(p.symbol, p.line) for p in r.data.problems])"
    )
    # lenn is on the cell's line 6 (line 1 is `%%hotswap load spam`).
    assert "('lenn', 6)" in problems


# --- the HTML in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: JupyterLab's themes, as far as our HTML can see them: the page colours,
#: the font-colour variables and the attribute JupyterLab sets on <body>.
THEMES = {
    "light": ("true", "#ffffff", "rgba(0, 0, 0, 0.87)", "rgba(0, 0, 0, 0.54)"),
    "dark": ("false", "#111111", "rgba(255, 255, 255, 1)", "rgba(255, 255, 255, 0.7)"),
}

#: Computes, for every element with its own text, the contrast of its colour
#: against its effective background (rgba layers composited), and how wide
#: each table is against the 900 px page; writes JSON into #out.
CONTRAST_JS = """
function rgba(s) { const m = s.match(/[0-9.]+/g).map(Number);
  return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; }
function over(top, below) { const a = top[3];
  return [0, 1, 2].map(i => top[i] * a + below[i] * (1 - a)).concat([1]); }
function background(el) {
  const layers = [];
  for (let e = el; e; e = e.parentElement) {
    const c = rgba(getComputedStyle(e).backgroundColor);
    if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
  }
  let bg = [255, 255, 255, 1];
  for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
  return bg;
}
function lum(c) { const f = v => { v /= 255;
  return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); }
const out = {checked: 0, low: [], tables: []};
for (const el of document.querySelectorAll('.theme *')) {
  const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own) continue;
  const bg = background(el);
  const fg = over(rgba(getComputedStyle(el).color), bg);
  const [a, b] = [lum(fg), lum(bg)];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  out.checked++;
  if (ratio < 4.5) out.low.push([el.closest('.theme').id, el.textContent.trim().slice(0, 40),
                                 getComputedStyle(el).color, ratio.toFixed(2)]);
}
for (const t of document.querySelectorAll('table'))
  out.tables.push([t.closest('.case').id, Math.round(t.getBoundingClientRect().right)]);
out.width = document.documentElement.clientWidth;
document.getElementById('out').textContent = JSON.stringify(out);
"""


def test_html_is_readable_in_light_and_dark_themes_and_fits_900px(
    engine_proc: EngineProcess, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is needed for the HTML tests (.ci/run installs it)")
    from ipython_ext.display import DiffView, JournalView, ReportView, StatusView, TableView

    with Client.connect("rules") as client:
        bad = client.load("spam", (RULES / "spam_unresolved.py").read_text(), "bad.py")
        v2 = client.load_file(RULES / "spam_v2.py", "spam")
        report = client.check(bad)
        client.check(v2)
        views = {
            "status": StatusView(client.status()),
            "table": TableView(client.symbols("spam@1")),
            "diff": DiffView(client.diff("spam@1", v2)),
            "report": ReportView(report, (RULES / "spam_unresolved.py").read_text(), "bad.py"),
            "journal": JournalView(client.journal(20)),
        }
        if find_compiler() is not None:
            views["native"] = TableView(client.symbols("spam_native@1"))
            views["crosskind"] = DiffView(client.diff("spam@1", "spam_native@1"))
    # The legend explains every letter shown, and the markers.
    table_html = views["table"]._repr_html_()
    for meaning in ("function defined", "data defined", "imported name", "referenced but not"):
        assert meaning in table_html
    assert "only in the second version" in views["diff"]._repr_html_()
    if "native" in views:
        assert (
            "weak symbol" in views["native"]._repr_html_()
            or "code exported" in views["native"]._repr_html_()
        )
    cases = "".join(f'<div class="case" id="{k}">{v._repr_html_()}</div>' for k, v in views.items())
    themes = "".join(
        f'<div class="theme" id="{name}" data-jp-theme-light="{light}" '
        f'style="background:{bg};color:{fg};--jp-content-font-color2:{fg2};padding:8px">'
        f"{cases}</div>"
        for name, (light, bg, fg, fg2) in THEMES.items()
    )
    page = tmp_path / "page.html"
    page.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">'
        f'{themes}<pre id="out"></pre><script>{CONTRAST_JS}</script></body></html>',
        encoding="utf-8",
    )
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=900,3000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["checked"] > 200
    assert result["low"] == [], result["low"][:20]
    # Every table, the cross-kind diff too, fits the 900 px window (less its scrollbar).
    assert 850 <= result["width"] <= 900
    assert all(right <= result["width"] for _case, right in result["tables"]), result["tables"]


@pytest.mark.parametrize(("scheme", "coloured"), [("nocolor", False), ("linux", True)])
def test_terminal_ipython_colours_follow_its_scheme(
    engine_proc: EngineProcess, runtime_dir: Path, tmp_path: Path, scheme: str, coloured: bool
) -> None:
    env = {
        "LIVEPATCH_RUNTIME_DIR": str(runtime_dir),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "TERM": "xterm-256color",
    }
    argv = [sys.executable, "-m", "IPython", "--no-banner", f"--colors={scheme}"]
    with open_terminal(runtime_dir.parent, "ipy", argv, env, size=(160, 50)) as term:
        term.wait_for("In [1]", timeout=60)
        term.type("%load_ext livepatch", "Enter")
        term.wait_for("In [2]")
        term.type("%hotswap symbols spam@1", "Enter")
        term.wait_for("T classify")
        screen = term.screen(escapes=True)
        row = next(line for line in screen.splitlines() if "classify" in line and "T" in line)
        assert (ESC in row) is coloured, repr(row)


WATCHED_RULE = """
from livepatch.examples.spam import Message, Verdict

def classify(msg: Message) -> Verdict:
    return Verdict(spam={spam}, score=0.5)
"""


def test_load_watch_swaps_each_clean_save_until_unwatch(
    ip: InteractiveShell, runtime_dir: Path, tmp_path: Path
) -> None:
    hs(ip, "start watched --rate 0")
    rule = tmp_path / "rules.py"
    rule.write_text(WATCHED_RULE.format(spam=False))
    assert hs(ip, f"load {rule} --watch --swap") is None  # the report is displayed, in place
    (watch,) = ip.magics_manager.registry["HotswapMagics"].session.watches
    assert watch.wait_for(1, 30) and watch.steps[0].swapped
    rule.write_text("def classify(msg:\n")  # a broken save
    assert watch.wait_for(2, 30)
    assert watch.steps[1].version is None and "SyntaxError" in (watch.steps[1].error or "")
    rule.write_text(WATCHED_RULE.format(spam=True))
    assert watch.wait_for(3, 30) and watch.steps[2].swapped
    assert hs(ip, "status").data["slots"][0]["active"] == watch.steps[2].version
    assert "keeps serving" in watch.text() and "swapped in" in watch.text()
    stopped = hs(ip, "unwatch")
    assert stopped["stopped"] == ["rules.py"] and not watch.running
    with pytest.raises(UsageError, match="--swap goes with --watch"):
        hs(ip, f"load {rule} --swap")
    with pytest.raises(UsageError, match=r"status: unknown option '--watch'"):
        hs(ip, "status --watch")


def test_a_watch_follows_its_engine_through_a_restart(
    ip: InteractiveShell, engine_proc: EngineProcess, tmp_path: Path
) -> None:
    # `%hotswap load FILE --watch` against an engine run elsewhere, which is
    # restarted meanwhile: the save made while it is away is reported and the
    # watch goes on; the next one reconnects, says so, and swaps there.
    hs(ip, f"connect {engine_proc.name}")
    rule = tmp_path / "rules.py"
    rule.write_text(WATCHED_RULE.format(spam=False))
    assert hs(ip, f"load {rule} --watch --swap") is None
    (watch,) = ip.magics_manager.registry["HotswapMagics"].session.watches
    assert watch.wait_for(1, 30) and watch.steps[0].swapped
    old = engine_proc.pid
    engine_proc.stop()
    rule.write_text(WATCHED_RULE.format(spam=True))
    assert watch.wait_for(2, 30) and watch.steps[1].gone and watch.running
    assert "once the engine is back" in watch.text()
    new = engine_proc.restart()["pid"]
    rule.write_text(WATCHED_RULE.format(spam=True) + "# saved again\n")
    assert watch.wait_for(3, 30), watch.text()
    back = watch.steps[2]
    assert back.reconnected.endswith(f"it was restarted (pid {old}, now {new})")
    assert back.swapped and back.active == back.version, watch.text()
    assert f"now {new})" in watch.text() and watch.error is None
    assert hs(ip, "status")["pid"] == new  # the session follows too
    assert hs(ip, "unwatch")["stopped"] == ["rules.py"]
