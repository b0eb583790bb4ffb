"""Every notebook in notebooks/ runs top to bottom on a real ipykernel, without errors.

The kernel is this interpreter (``sys.executable``), whatever kernel specs the
machine or the user has installed: the tests write a private ``python3``
kernel spec into a temporary directory and hand nbclient a kernel manager
that looks only there. Each run gets a private ``LIVEPATCH_RUNTIME_DIR``
(inherited by the kernel and by any engine it starts).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from livepatch.native import find_compiler
from livepatch.runtime import list_engines, pid_alive

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "python3"  # the name the notebooks' metadata asks for

#: What each notebook must show (text outputs), so a silent no-op cannot pass.
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
}

#: Notebooks that compile C (the native half of the lesson).
NEEDS_COMPILER = {"02-dynamic-linking"}


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


def execute(nb: Any, spec_root: Path) -> Any:
    """Run ``nb`` in place (cwd: notebooks/) and return it with its outputs."""
    km = kernel_manager(spec_root)
    assert km.kernel_spec is not None and km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        nb,
        km=km,
        timeout=60,
        startup_timeout=60,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    # nbclient shuts down only kernels it made itself: ask it to shut this one
    # down too, gracefully, so the kernel runs its atexit hooks as it would in Jupyter.
    client.execute(cleanup_kc=True)
    return nb


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


def test_there_are_notebooks() -> None:
    assert [p.name for p in ALL] == ["01-hotswap-tour.ipynb", "02-dynamic-linking.ipynb"]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs_without_errors(path: Path, runtime_dir: Path, tmp_path: Path) -> None:
    if path.stem in NEEDS_COMPILER and (find_compiler() is None or shutil.which("nm") is None):
        pytest.skip(f"{path.name} compiles C: no C compiler (cc/gcc/clang or $CC) or no nm")
    nb = execute(nbformat.read(path, as_version=4), tmp_path)
    assert errors(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    # Something was shown: the magics' results render as HTML.
    html = [
        o["data"]["text/html"]
        for c in code
        for o in c.outputs
        if o["output_type"] == "execute_result" and "text/html" in o.get("data", {})
    ]
    assert html
    text = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") for c in code for o in c.outputs
    )
    for expected in EXPECTED[path.stem]:
        assert expected in text
    # Every engine the notebook started has been stopped.
    assert list_engines(runtime_dir) == []


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
