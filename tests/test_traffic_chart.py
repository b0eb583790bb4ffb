"""``%hotswap watch`` in Jupyter (issue 18): a live calls/s chart per version,
updated in place, on a real kernel with a real engine and its demo traffic,
across a swap and a version that raises; then its colours measured in a real
headless browser in the light and dark themes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from test_frontends import wait_for
from test_notebook_frontends import CHROMIUM, CONTRAST_JS, THEMES, hs, run_in
from test_notebook_frontends import ip as ip  # fixtures, used by name
from test_notebook_frontends import kernel as kernel

from livepatch.examples.spam import rule_path

RAISING_RULE = """
from livepatch.examples.spam import Message, Verdict


def classify(msg: Message) -> Verdict:
    raise ValueError("a rule bug")
"""


class Display:
    """Follows one display (by its id) on the kernel's iopub channel."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc
        self.display_id: str | None = None
        self.updates: list[dict[str, Any]] = []

    def _take(self, msg: dict[str, Any]) -> None:
        content = msg["content"]
        display_id = content.get("transient", {}).get("display_id")
        if msg["msg_type"] == "display_data" and display_id and self.display_id is None:
            self.display_id = display_id
            self.updates.append(content["data"])
        elif msg["msg_type"] == "update_display_data" and display_id == self.display_id:
            self.updates.append(content["data"])

    def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell, keeping every update of the display meanwhile; its stdout."""
        msg_id = self.kc.execute(code)
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            self._take(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "error":
                pytest.fail(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)

    def wait_for(self, wanted: Any, what: str, timeout: float = 60) -> str:
        """Read updates until the newest HTML satisfies ``wanted``; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.updates and wanted(self.updates[-1]["text/html"]):
                return str(self.updates[-1]["text/html"])
            try:
                self._take(self.kc.get_iopub_msg(timeout=1))
            except Exception:  # noqa: BLE001 - queue.Empty: nothing new yet
                continue
        last = self.updates[-1]["text/plain"] if self.updates else "no display"
        pytest.fail(f"the chart never showed {what}; last:\n{last}")


def rates(page: str, version: str) -> list[float]:
    found = re.search(rf'data-version="{re.escape(version)}" data-rates="([^"]*)"', page)
    return [float(r) for r in found.group(1).split()] if found else []


def errors_drawn(page: str, version: str) -> int:
    return len(re.findall(rf'class="lp-error" data-version="{re.escape(version)}"', page))


def test_watch_chart_shows_traffic_moving_at_a_swap_and_errors_per_version(
    kernel: Any, tmp_path: Path
) -> None:
    _km, kc = kernel
    run_in(kc, "%load_ext livepatch\nr = %hotswap start --rate 40")
    display = Display(kc)
    assert display.run("%hotswap watch") == ""  # shown, not printed
    assert display.display_id is not None
    first = display.updates[0]
    assert "lp-chart" in first["text/html"] and "calls/s per version" in first["text/plain"]

    def serving(version: str) -> Any:
        return lambda page: (rates(page, version) or [0.0])[-1] > 0

    display.wait_for(serving("spam@1"), "traffic on spam@1")
    display.run(
        f"%hotswap load {rule_path('spam_v2.py')} --slot spam\n"
        "%hotswap check spam@2\n%hotswap swap spam@2 --expect spam@1"
    )

    def moved(page: str) -> bool:
        old, new = rates(page, "spam@1"), rates(page, "spam@2")
        return (
            'data-swap="spam@2"' in page
            and bool(old and new)
            and max(old) > 0
            and old[-1] == 0
            and new[-1] > 0
        )

    page = display.wait_for(moved, "the traffic moving from spam@1 to spam@2")
    assert errors_drawn(page, "spam@1") == errors_drawn(page, "spam@2") == 0

    display.run("%%hotswap load spam\n" + RAISING_RULE)
    display.run("%hotswap check spam@3\n%hotswap swap spam@3")

    def failing(page: str) -> bool:
        return errors_drawn(page, "spam@3") > 0 and 'class="lp-errors"' in page

    page = display.wait_for(failing, "spam@3's errors")
    legend = re.search(r'data-version="spam@3".*?</span></span>', page, re.S)
    assert legend and "errors" in legend.group(0)
    assert errors_drawn(page, "spam@2") == 0  # only the version that raised

    # (Read by the Display: the chart's last update comes while this cell runs.)
    stopped = display.run("r = %hotswap unwatch\nprint(r['stopped'])")
    assert "traffic of ipython-" in stopped
    final = display.wait_for(lambda page: "(stopped)" in page, "that it stopped", timeout=30)
    _colours_hold_in_both_themes(final, tmp_path)


#: For the chart's lines and error marks: their contrast against the
#: background (graphics need 3:1), written into #strokes.
STROKES_JS = """
const strokes = [];
for (const el of document.querySelectorAll('.theme .lp-series, .theme .lp-error')) {
  const style = getComputedStyle(el);
  const paint = el.classList.contains('lp-series') ? style.stroke : style.fill;
  const bg = background(el);
  const fg = over(rgba(paint), bg);
  const [a, b] = [lum(fg), lum(bg)];
  strokes.push([el.closest('.theme').id, el.getAttribute('data-version'), paint,
                (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
}
document.getElementById('strokes').textContent = JSON.stringify(strokes);
"""


def _colours_hold_in_both_themes(chart_html: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is needed for the HTML tests (.ci/run installs it)")
    themes = "".join(
        f'<div class="theme" id="{name}" data-jp-theme-light="{light}" '
        f'style="background:{bg};color:{fg};--jp-content-font-color2:{fg2};padding:8px">'
        f'<div class="case" id="chart-{name}">{chart_html}</div></div>'
        for name, (light, bg, fg, fg2) in THEMES.items()
    )
    page = tmp_path / "chart.html"
    page.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">'
        f'{themes}<pre id="out"></pre><pre id="strokes"></pre>'
        f"<script>{CONTRAST_JS}{STROKES_JS}</script></body></html>",
        encoding="utf-8",
    )
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=900,1200",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout

    def block(name: str) -> Any:
        found = re.search(rf'<pre id="{name}">(.*?)</pre>', dom, re.S)
        assert found, dom[-2000:]
        return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    text = block("out")
    assert text["checked"] > 20
    assert text["low"] == [], text["low"][:20]
    strokes = block("strokes")
    drawn = {(theme, version) for theme, version, _paint, _ratio in strokes}
    assert {("light", "spam@3"), ("dark", "spam@3"), ("dark", "spam@1")} <= drawn
    low = [s for s in strokes if s[3] < 3]
    assert low == [], low
    # The dark theme really switched colours (not the light ones on a dark page).
    paints = {theme: {paint for t, _v, paint, _r in strokes if t == theme} for theme in THEMES}
    assert paints["light"].isdisjoint(paints["dark"])


def test_watch_for_seconds_stops_by_itself_and_bad_options_are_one_line(
    ip: InteractiveShell, engine_proc: EngineProcess
) -> None:
    assert hs(ip, "watch --for 1") is None  # displayed, not returned
    (chart,) = ip.magics_manager.registry["HotswapMagics"].session.watches
    wait_for(lambda: not chart.running, timeout=30)
    assert chart.error is None and chart.wait_for(1, 0)
    assert "(stopped)" in chart.text() and "spam@1" in chart.text()
    assert hs(ip, "unwatch")["stopped"] == ["traffic of rules"]
    with pytest.raises(UsageError, match=r"unknown option '--for'"):
        hs(ip, "status --for 3")
    with pytest.raises(UsageError, match=r"--for 0: use 0\.5 or more"):
        hs(ip, "watch --for 0")
