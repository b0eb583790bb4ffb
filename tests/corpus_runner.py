"""Check real modules as rule versions: the stdlib's pure-Python modules and
those of the installed dependencies, each under its real name and package.

Run as a script in a throwaway process (module bodies run a second time here
and may leave process-wide traces): ``python tests/corpus_runner.py [PREFIX
...]`` prints one JSON object: the modules checked, those that could not be
loaded (and why), and every problem the check reported.
``tests/test_corpus.py`` drives it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import sysconfig
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DEPENDENCIES", "corpus_modules", "main", "run"]

#: Installed packages whose pure-Python modules join the stdlib in the corpus.
DEPENDENCIES = (
    "IPython",
    "prompt_toolkit",
    "pygments",
    "jedi",
    "parso",
    "traitlets",
    "elftools",
)

# Parts of the stdlib that are not library code a rule module would be, or
# whose body does something visible when it runs (a window, a browser, text).
_STDLIB_SKIP = frozenset(
    {
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "turtle",
        "lib2to3",
        "ensurepip",
        "site-packages",
        "dist-packages",
        "antigravity",
        "this",
        "__phello__",
        "__hello__",
        "config-3.11-x86_64-linux-gnu",
    }
)


def _names_under(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        dirs = path.relative_to(root).parent.parts
        stem = path.stem
        if any(p in _STDLIB_SKIP or p == "__pycache__" for p in (*dirs, stem)):
            continue
        if stem == "__main__" or not all(p.isidentifier() for p in (*dirs, stem)):
            continue
        # Only directories with an __init__.py are packages of this tree.
        packages = (root.joinpath(*dirs[: n + 1]) for n in range(len(dirs)))
        if not all((package / "__init__.py").is_file() for package in packages):
            continue
        parts = [*dirs] if stem == "__init__" else [*dirs, stem]
        name = ".".join([prefix, *parts] if prefix else parts)
        if name and not (prefix and name == prefix):
            yield name, path


def corpus_modules(prefixes: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """(module name, source path) of every module of the corpus."""
    out: list[tuple[str, Path]] = []
    stdlib = Path(sysconfig.get_path("stdlib"))
    out.extend(_names_under(stdlib, ""))
    for dep in DEPENDENCIES:
        spec = importlib.util.find_spec(dep)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            out.append((dep, origin))
            out.extend(_names_under(origin.parent, dep))
        else:
            out.append((dep, origin))
    if prefixes:
        out = [(n, p) for n, p in out if any(n == x or n.startswith(x + ".") for x in prefixes)]
    return out


def _load(name: str, path: Path) -> tuple[types.ModuleType, types.CodeType]:
    """Run ``path`` as a fresh version of ``name``: its real name and package,
    a new namespace (the real module, imported first, stays in place so the
    body's own imports find their siblings)."""
    importlib.import_module(name)
    # The compiled code from the bytecode cache when it is fresh (the same
    # code compile() would make), so the corpus costs little more than its exec.
    code = importlib.machinery.SourceFileLoader(name, str(path)).get_code(name)
    if code is None:
        raise ImportError(f"no code for {name}")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    is_package = path.name == "__init__.py"
    module.__package__ = name if is_package else name.rpartition(".")[0]
    if is_package:
        module.__path__ = [str(path.parent)]
    module.__spec__ = importlib.util.spec_from_file_location(name, path)
    module.__loader__ = module.__spec__.loader if module.__spec__ else None
    # While the body runs it is the module of that name, as a version is
    # under its private name: ``enum._convert_`` and friends look it up there.
    real = sys.modules[name]
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    finally:
        sys.modules[name] = real
    return module, code


def run(prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load and check every corpus module; a JSON-able summary."""
    from livepatch.resolve import check_module

    checked: list[str] = []
    skipped: dict[str, str] = {}
    problems: list[dict[str, Any]] = []
    keep = []  # loaded versions stay alive: one may patch another's module
    for name, path in corpus_modules(prefixes):
        real_stdout, real_stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module, code = _load(name, path)
        except BaseException as exc:  # noqa: BLE001 - a module that cannot run here
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            continue
        finally:
            sys.stdout, sys.stderr = real_stdout, real_stderr
        keep.append(module)
        report = check_module(f"{name}@1", module, code, None)
        checked.append(name)
        for p in report.problems:
            problems.append({"module": name, **p.to_json()})
    return {"checked": checked, "skipped": skipped, "problems": problems}


def main() -> None:
    """Print :func:`run`'s summary for the prefixes given on the command line."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    result = run(tuple(sys.argv[1:]))
    out = sys.__stdout__ or sys.stdout
    out.write(json.dumps(result) + "\n")
    out.flush()
    os._exit(0)  # skip atexit hooks and thread joins the module bodies added


if __name__ == "__main__":
    main()
