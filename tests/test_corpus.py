"""The check on real code nobody here wrote: every pure-Python module of the
stdlib and of the installed dependencies (IPython, prompt_toolkit, pygments,
jedi, parso, traitlets, pyelftools), each loaded as a rule version under its
real name and package, in a throwaway process (``tests/corpus_runner.py``).

Zero false alarms: every error is one of the real defects below, each
verified by hand, and each of those is still reported. Code for other
platforms and optional dependencies shows up as warnings only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from corpus_runner import corpus_modules

RUNNER = Path(__file__).with_name("corpus_runner.py")


@dataclass(frozen=True)
class Defect:
    """A real run-time defect of a corpus module, verified by hand.

    ``needle`` is source text that makes the defect and ``cure`` text whose
    presence would fix it: the dependencies are not pinned, so a release
    that fixed it upstream stops the defect from being expected.
    """

    why: str
    needle: str
    cure: str | None = None

    def present_in(self, source: str) -> bool:
        """Whether this module's source still has the defect."""
        return self.needle in source and (self.cure is None or self.cure not in source)


#: (module, kind, symbol) of the real run-time defects in the corpus.
REAL_DEFECTS: dict[tuple[str, str, str], Defect] = {
    ("IPython.lib.demo", "missing-attribute", "pygments.formatters"): Defect(
        "Demo() reads pygments.formatters after `import pygments` only: the submodule "
        "exists only if something else imported it (a plain `import IPython` does not)",
        "pygments.formatters.get_formatter_by_name",
        "import pygments.formatters",
    ),
    ("IPython.lib.demo", "missing-attribute", "pygments.lexers"): Defect(
        "the same for pygments.lexers",
        "pygments.lexers.get_lexer_by_name",
        "import pygments.lexers",
    ),
    ("IPython.testing.plugin.pytest_ipdoctest", "unresolved", "_ip"): Defect(
        "IPDoctestItem.setup/teardown read `_ip`, a name only IPython's test harness "
        "injects into builtins (IPython.testing.globalipapp.start_ipython); the plugin "
        "never arranges for it, so setup() raises NameError anywhere else",
        "_ip.user_ns",
        "_ip = ",
    ),
}


@cache
def corpus() -> dict[str, Any]:
    """Run the corpus once per test session, in its own process."""
    env = {
        **os.environ,
        # The stdlib's own distutils, not setuptools' copy that the venv's
        # _distutils_hack would put in its place under the same name.
        "SETUPTOOLS_USE_DISTUTILS": "stdlib",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, str(RUNNER)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_the_corpus_is_the_stdlib_and_the_dependencies() -> None:
    checked = set(corpus()["checked"])
    assert len(checked) > 1000
    for package in ("json", "email", "asyncio.events", "IPython", "prompt_toolkit", "pygments"):
        assert any(m == package or m.startswith(package + ".") for m in checked), package
    for package in ("jedi", "parso", "traitlets", "elftools"):
        assert any(m == package or m.startswith(package + ".") for m in checked), package


@pytest.mark.slow
def test_no_false_alarms_and_the_real_defects_are_reported() -> None:
    result = corpus()
    checked = set(result["checked"])
    errors = {
        (p["module"], p["kind"], p["symbol"]): p["message"]
        for p in result["problems"]
        if p["severity"] == "error"
    }
    false_alarms = {key: msg for key, msg in errors.items() if key not in REAL_DEFECTS}
    assert not false_alarms, "\n".join(f"{k[0]}: {m}" for k, m in false_alarms.items())
    paths = dict(corpus_modules())
    expected = {
        key
        for key, defect in REAL_DEFECTS.items()
        if key[0] in checked and defect.present_in(paths[key[0]].read_text(encoding="utf-8"))
    }
    assert expected, "none of the modules with known defects was checked"
    assert set(errors) >= expected


@pytest.mark.slow
def test_code_for_other_platforms_is_only_a_warning() -> None:
    warnings = [p for p in corpus()["problems"] if p["severity"] == "warning"]
    assert warnings, "the corpus has optional imports and platform code: expected warnings"
    assert {p["kind"] for p in warnings} == {"conditional"}
    for p in warnings:
        assert "only" in p["message"] and "\n" not in p["message"], p
    by_module = {p["module"] for p in warnings}
    # Optional dependencies and Windows-only names, as the modules mean them.
    assert {"getpass", "pygments.formatters.img"} <= by_module
