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
from functools import cache
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).with_name("corpus_runner.py")

#: (module, kind, symbol) of the real run-time defects in the corpus, why each is one.
REAL_DEFECTS: dict[tuple[str, str, str], str] = {
    ("IPython.lib.demo", "missing-attribute", "pygments.formatters"): (
        "Demo() reads pygments.formatters after `import pygments` only: the submodule "
        "exists only if something else imported it (a plain `import IPython` does not)"
    ),
    ("IPython.lib.demo", "missing-attribute", "pygments.lexers"): ("the same for pygments.lexers"),
    ("IPython.testing.plugin.pytest_ipdoctest", "unresolved", "_ip"): (
        "IPDoctestItem.setup/teardown read `_ip`, a name only IPython's test harness "
        "injects into builtins (IPython.testing.globalipapp.start_ipython); the plugin "
        "never arranges for it, so setup() raises NameError anywhere else"
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
    expected = {key for key in REAL_DEFECTS if key[0] in checked}
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
