"""The notebooks in notebooks/ run on a real ipykernel and still show what they were committed with.

The notebooks are committed *with* their outputs, so that they teach on GitHub
too. The tests re-execute each one top to bottom (no errors allowed; every
chapter checks its own claims with ``assert``) and compare the fresh outputs
with the committed ones, cell by cell, after :func:`normalise` has blanked
what legitimately differs between two runs: pids, addresses, temporary and
installation paths, dates and times, and, in the tour, the call counts of its
live traffic. A difference fails with a readable diff of the cells concerned.

When a change of output is intended, record the notebooks again::

    .venv/bin/python tests/test_notebooks.py            # all of them
    .venv/bin/python tests/test_notebooks.py 03-elf-in-depth

The kernel is this interpreter (``sys.executable``), whatever kernel specs the
machine or the user has installed: the tests write a private ``python3``
kernel spec into a temporary directory and hand nbclient a kernel manager
that looks only there. Each run gets a private ``LIVEPATCH_RUNTIME_DIR``
(inherited by the kernel and by any engine it starts).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from livepatch.native import find_compiler
from livepatch.runtime import list_engines, pid_alive

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "python3"  # the name the notebooks' metadata asks for

#: What each notebook must show (text outputs), so that a notebook recorded
#: from a run that silently did nothing cannot pass.
EXPECTED = {
    "01-hotswap-tour": [
        "started: engine 'ipython-",
        "loaded spam@2 from spam_v2.py",
        "spam@2: ok, no problems",
        "spam: spam@1 -> spam@2",
        "spam@3: 1 problem",
        "refused: spam@3 failed its check",
        "spam: spam@2 -> spam@1",
        "purged spam@2",
        "unloaded spam@2: freed",
        "stopped 'ipython-",
    ],
    "02-dynamic-linking": [
        "W last_sender",
        "U score_links  ?",
        "at call time: NameError",
        "CheckFailed",
        "type-mismatch",
        "isinstance(theirs, Message): False",
        "in sys.modules: False",
        "freed: False | held by: {",
        "version 1's classify freed: True",
        "the rejected Message class freed: True",
        # 6. real shared objects
        "interface: NativeInterface(int classify(const char *text))",
        " T classify",
        "dlopen(RTLD_NOW): ",
        "undefined symbol: link_score",
        "mapped: []",
        "is failed: a native object is mapped",
        "WIN a FREE cruise -> 1",
        "r-xp",
        "'maps: still mapped (function pointers still referenced)'",
        "mapped after the last reference went: []",
        "freed: True",
        "'maps: still mapped (DF_1_NODELETE)'",
    ],
    "03-elf-in-depth": [
        "call   1030 <keyword_hits@plt>",
        "R_X86_64_JUMP_SLOT",
        "R_X86_64_GLOB_DAT",
        "call   1120 <keyword_hits>",
        "v2's classify -> 0",
        "symbol lookup error",
        "exit status 127",
        "binding file",
        "version `FOO_2' not found",
        "calling init",
        "crash",
        "t keyword_hits",
        "recompile with -fPIC",
        "(RUNPATH)",
        "GNU_RELRO",
        "__ctype_tolower_loc",
    ],
}

#: Command-line tools the notebooks run (the native chapters compile C and
#: read ELF files). Missing, the test fails: CI (.ci/run) installs them.
TOOLS = ("nm", "objdump", "readelf", "strip")

#: Notebooks that drive an engine under live traffic: how many calls each
#: version has served depends on timing, so those counts are blanked.
LIVE_TRAFFIC = {"01-hotswap-tour"}


# ---------------------------------------------------------------------------
# Running a notebook
# ---------------------------------------------------------------------------


def kernel_manager(spec_root: Path) -> AsyncKernelManager:
    """A kernel manager whose only ``python3`` kernel is this interpreter's ipykernel."""
    spec_dir = spec_root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (livepatch tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(spec_root / "kernels")])
    return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def execute(nb: Any, spec_root: Path, *, allow_errors: bool = False) -> Any:
    """Run ``nb`` in place (cwd: notebooks/) and return it with its outputs."""
    km = kernel_manager(spec_root)
    assert km.kernel_spec is not None and km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        nb,
        km=km,
        timeout=60,
        startup_timeout=60,
        allow_errors=allow_errors,
        record_timing=False,  # no timestamps in the committed files
        coalesce_streams=True,  # how a print is split into messages is up to the kernel
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    # nbclient shuts down only kernels it made itself: ask it to shut this one
    # down too, gracefully, so the kernel runs its atexit hooks as it would in Jupyter.
    client.execute(cleanup_kc=True)
    return nb


def without_outputs(nb: Any) -> Any:
    """A copy of ``nb`` as a reader who presses "clear all outputs" would see it."""
    fresh = copy.deepcopy(nb)
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return fresh


def missing_tools() -> list[str]:
    """The tools the native chapters need that this machine lacks."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if find_compiler() is None:
        missing.append("a C compiler (cc/gcc/clang or $CC)")
    return missing


def errors(nb: Any) -> list[str]:
    """Every error output, and every stderr stream with a traceback in it."""
    found = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                found.append(f"cell {index}: {out['ename']}: {out['evalue']}")
            elif (
                out["output_type"] == "stream"
                and out["name"] == "stderr"
                and ("Traceback" in out["text"] or "Error" in out["text"])
            ):
                found.append(f"cell {index} stderr: {out['text'][:300]}")
    return found


# ---------------------------------------------------------------------------
# Normalising outputs
# ---------------------------------------------------------------------------


def _path_rules() -> list[tuple[str, str]]:
    """Installation paths of this machine, longest first."""
    paths = {
        str(REPO): "<repo>",
        sys.executable: "<python>",
        os.path.realpath(sys.executable): "<python>",
        sys.prefix: "<prefix>",
        sys.base_prefix: "<base-prefix>",
        os.path.realpath(sys.base_prefix): "<base-prefix>",
    }
    return sorted(paths.items(), key=lambda item: len(item[0]), reverse=True)


_TMP = re.escape(tempfile.gettempdir().rstrip("/"))

#: (pattern, replacement), applied in order to every text output.
_RULES: list[tuple[re.Pattern[str], str]] = [
    # /proc/PID/maps: keep permissions, offset and file; blank addresses, device, inode.
    (
        re.compile(
            r"^[0-9a-f]+-[0-9a-f]+ ([rwxsp-]{4}) ([0-9a-f]+) [0-9a-f]+:[0-9a-f]+ \d+ +", re.M
        ),
        r"ADDR-ADDR \1 \2 DEV INODE ",
    ),
    # tempfile.mkdtemp(prefix="name-"): eight random characters.
    (re.compile(_TMP + r"/([A-Za-z.]+(?:-[A-Za-z.]+)*-)[a-z0-9_]{8}(?![a-z0-9_])"), r"/tmp/\1*"),
    # gcc's own temporaries, named in linker errors.
    (re.compile(_TMP + r"/cc[A-Za-z0-9]{6}\.(o|s|res|ld|le)\b"), r"/tmp/ccXXXXXX.\1"),
    # LD_DEBUG prefixes its lines with the pid, right-aligned in ten columns
    # (objdump's "    1030:\tjmp", eight columns, is not one of them).
    (re.compile(r"^(?= {0,9}\d)[ \d]{10}:\t", re.M), "PID:\t"),
    # A rendered check report links problems to source lines through ids made per render.
    (re.compile(r"\blp-[0-9a-f]{8}(?=-L\d)"), "lp-ID"),
    (re.compile(r"\bpid \d+"), "pid N"),
    (re.compile(r"\b(ipython|python3?)([-\[])\d+"), r"\1\2N"),
    (re.compile(r"\b0x[0-9a-f]{8,}\b"), "0xADDR"),
    (re.compile(r"\b\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "DATE TIME"),
]

#: Extra rules for notebooks with live traffic: counts that depend on timing.
_LIVE_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(calls|in flight) +\d+"), r"\1 N"),
    (re.compile(r'(<td[^>]*text-align:right">)\d+(</td>)'), r"\1N\2"),
]


def normalise(text: str, *, live: bool = False) -> str:
    """``text`` with the parts that differ between two faithful runs blanked.

    Only what a rerun changes by itself is touched: pids, runtime addresses
    (``/proc/PID/maps``, ``0x7f…``), temporary directories, this checkout's
    and any interpreter's paths, dates and times, the anchor ids a check
    report makes per render; with ``live``, the call counts of live traffic.
    Everything a lesson claims (letters, states, ``freed``, permissions, file
    offsets, exit codes) is left as it is.
    """
    for path, name in _path_rules():
        text = text.replace(path, name)
    # The kernel runs this interpreter under whichever of its names started the
    # tests, and a notebook recorded in another checkout names that one's.
    text = re.sub(r"(?<![\w/.])/[^\s:'\"]*/bin/python[\d.]*(?![\w/])", "<python>", text)
    text = re.sub(r"<(?:base-)?prefix>/bin/python[\d.]*\b", "<python>", text)
    for pattern, replacement in _RULES + (_LIVE_RULES if live else []):
        text = pattern.sub(replacement, text)
    return text


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def transcript(cell: Any, *, live: bool = False) -> str:
    """One code cell's outputs as normalised text, one labelled block per output.

    Consecutive stream outputs of one stream are joined (how a ``print`` is
    split into messages is up to the kernel). HTML is broken at its tags so
    that a diff shows the line that changed.
    """
    blocks: list[tuple[str, str]] = []
    for out in cell.get("outputs", []):
        kind = out["output_type"]
        if kind == "stream":
            label = f"[{out['name']}]"
            if blocks and blocks[-1][0] == label:
                blocks[-1] = (label, blocks[-1][1] + _text(out["text"]))
            else:
                blocks.append((label, _text(out["text"])))
        elif kind == "error":
            blocks.append(("[error]", f"{out['ename']}: {out['evalue']}"))
        else:
            for mime, value in sorted(out.get("data", {}).items()):
                body = _text(value)
                if mime == "text/html":
                    body = re.sub(r">\s*<", ">\n<", body)
                blocks.append((f"[{kind} {mime}]", body))
    return "".join(f"{label}\n{normalise(body, live=live).rstrip()}\n" for label, body in blocks)


def output_differences(committed: Any, fresh: Any, *, live: bool = False) -> str:
    """A unified diff of every code cell whose outputs differ; empty when none do."""
    old = [c for c in committed.cells if c.cell_type == "code"]
    new = [c for c in fresh.cells if c.cell_type == "code"]
    assert [c.source for c in old] == [c.source for c in new], "the cells themselves differ"
    parts = []
    for number, (a, b) in enumerate(zip(old, new, strict=True), 1):
        before, after = transcript(a, live=live), transcript(b, live=live)
        if before != after:
            first = a.source.strip().splitlines()[0] if a.source.strip() else ""
            diff = difflib.unified_diff(
                before.splitlines(),
                after.splitlines(),
                f"code cell {number} as committed",
                f"code cell {number} now",
                n=2,
                lineterm="",
            )
            parts.append(f"--- code cell {number}: {first[:70]}\n" + "\n".join(diff))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


def test_there_are_notebooks() -> None:
    assert [p.name for p in ALL] == [
        "01-hotswap-tour.ipynb",
        "02-dynamic-linking.ipynb",
        "03-elf-in-depth.ipynb",
    ]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_is_stored_with_its_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    code = [c for c in nb.cells if c.cell_type == "code"]
    # Recorded top to bottom in one run: counts 1, 2, 3... and every cell shows something
    # (a notebook saved half-run, or run out of order, would not).
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert errors(nb) == []
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2
    for cell in code:
        assert "execution" not in cell.metadata, "record without timing metadata"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_reproduces_its_committed_outputs(
    path: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    missing = missing_tools()
    assert not missing, f"{path.name} needs {', '.join(missing)} (.ci/run installs them)"
    committed = nbformat.read(path, as_version=4)
    fresh = execute(without_outputs(committed), tmp_path)
    assert errors(fresh) == []
    code = [c for c in fresh.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    # Something was shown: the magics' and the engine's results render as HTML.
    assert any(
        o["output_type"] == "execute_result" and "text/html" in o.get("data", {})
        for c in code
        for o in c.outputs
    )
    text = "\n".join(
        _text(o.get("text", "")) + _text(o.get("data", {}).get("text/plain", ""))
        for c in code
        for o in c.outputs
    )
    for expected in EXPECTED[path.stem]:
        assert expected in text
    # Every engine the notebook started has been stopped.
    assert list_engines(runtime_dir) == []
    differences = output_differences(committed, fresh, live=path.stem in LIVE_TRAFFIC)
    assert not differences, (
        f"{path.name}: the outputs are no longer the committed ones. If the change is "
        f"intended, record them again: .venv/bin/python tests/test_notebooks.py {path.stem}"
        f"\n\n{differences}"
    )


def test_normalise_blanks_what_a_rerun_changes() -> None:
    first = (
        "engine lesson (pid 3968)\n"
        "7f146eda4000-7f146eda5000 r--p 00000000 fe:00 2146930                    "
        "/tmp/livepatch-native-2f78eswv/spam_native@1.so\n"
        "      5940:\tcalling init: /tmp/lesson-vulahpuz/ctor.so\n"
        f"{sys.executable}: symbol lookup error\n"
        "2026-12-01 21:35:44  ok  load  ipython[4087]  <Thing at 0x7f146eda4000>\n"
    )
    second = (
        "engine lesson (pid 12)\n"
        "55d0aa000000-55d0aa001000 r--p 00000000 08:01 77                    "
        "/tmp/livepatch-native-k_3zz0a1/spam_native@1.so\n"
        "        17:\tcalling init: /tmp/lesson-abcdefgh/ctor.so\n"
        f"{os.path.realpath(sys.executable)}: symbol lookup error\n"
        "2027-01-02 03:04:05  ok  load  ipython[5]  <Thing at 0x55d0aa000000>\n"
    )
    assert normalise(first) == normalise(second)
    assert "<python>: symbol lookup error" in normalise(first)
    # Recorded in one checkout, verified in another.
    assert normalise("/home/a/livepatch/.venv/bin/python: symbol lookup error") == normalise(
        "/ci/src/.venv/bin/python3.11: symbol lookup error"
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("spam@1  unloaded  freed", "spam@1  unloaded  NOT freed"),
        ("freed: True", "freed: False"),
        # permissions and file offsets of a mapping are the lesson, not noise
        (
            "7f14-7f15 r--p 00003000 fe:00 21 /tmp/x.so",
            "7f14-7f15 rw-p 00003000 fe:00 21 /tmp/x.so",
        ),
        ("7f14-7f15 r--p 00002000 fe:00 21 /x.so", "7f14-7f15 r--p 00003000 fe:00 21 /x.so"),
        ("exit status 127", "exit status 1"),
        ("    11df:\tcall   1030 <keyword_hits@plt>", "    11df:\tcall   1120 <keyword_hits>"),
        ("    1030:\tjmp    *0x2fca(%rip)", "    1040:\tjmp    *0x2fca(%rip)"),
        ("calls        8  errors 0", "calls        8  errors 1"),
    ],
)
def test_normalise_keeps_what_a_lesson_claims(before: str, after: str) -> None:
    assert normalise(before, live=True) != normalise(after, live=True)


def test_live_traffic_counts_are_blanked_only_in_live_notebooks() -> None:
    a, b = "spam@1  active  calls        1  in flight   0", "spam@1  active  calls  9  in flight 1"
    assert normalise(a, live=True) == normalise(b, live=True)
    assert normalise(a) != normalise(b)


def test_a_changed_output_is_shown_as_a_diff_of_its_cell() -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("print('same')"),
            nbformat.v4.new_code_cell("print(freed)"),
        ]
    )
    committed, fresh = copy.deepcopy(nb), copy.deepcopy(nb)
    for cell, text in zip(committed.cells, ["same\n", "freed: True\n"], strict=True):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    # The fresh run split its output differently and changed the second cell.
    fresh.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=part) for part in ("sa", "me\n")
    ]
    fresh.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="freed: 0\n")]
    diff = output_differences(committed, fresh)
    assert "code cell 1" not in diff
    assert "--- code cell 2: print(freed)" in diff
    assert "-freed: True" in diff and "+freed: 0" in diff


def test_kernel_exit_stops_the_engine_it_started(runtime_dir: Path, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("%load_ext livepatch"),
            nbformat.v4.new_code_cell("r = %hotswap start --rate 0\nprint(r['pid'])"),
        ],
        metadata={"kernelspec": {"name": KERNEL, "display_name": "Python 3", "language": "python"}},
    )
    execute(nb, tmp_path)  # shuts the kernel down gracefully at the end
    pid = int(nb.cells[1].outputs[0]["text"].strip())
    deadline = time.monotonic() + 15
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert list_engines(runtime_dir) == []


# ---------------------------------------------------------------------------
# Recording: python tests/test_notebooks.py [NAME...]
# ---------------------------------------------------------------------------


def record(path: Path, say: Callable[[str], None] = print) -> None:
    """Execute the notebook at ``path`` from scratch and save it with its outputs."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="lp-", dir="/tmp") as tmp:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = str(Path(tmp) / "run")
        started = time.monotonic()
        fresh = execute(without_outputs(nb), Path(tmp), allow_errors=True)
        took = time.monotonic() - started
    problems = errors(fresh)
    nbformat.validate(fresh)
    nbformat.write(fresh, path)
    say(f"{path.name}: recorded in {took:.1f} s" + "".join(f"\n  {p}" for p in problems))


def main(argv: list[str]) -> int:
    """Record the named notebooks (stems or file names), or all of them."""
    wanted = {Path(a).stem for a in argv}
    unknown = wanted - {p.stem for p in ALL}
    if unknown:
        print(f"no such notebook: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for path in ALL:
        if not wanted or path.stem in wanted:
            record(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
