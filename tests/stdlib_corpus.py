"""Test helpers: load a source the way the engine does, real-world sources to
check (pure-Python stdlib modules) and a generated module for timing.

Not a test module itself; ``tests/test_resolve.py`` and
``tests/test_symbols.py`` import it.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import sysconfig
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CORPUS",
    "NOTHING_TO_BREAK",
    "Loaded",
    "generated_rule_source",
    "load_source",
    "loaded",
    "stdlib_source",
]

_counter = itertools.count(1)


@dataclass(frozen=True)
class Loaded:
    """A source compiled and executed into a fresh module, as the engine loads it."""

    module: types.ModuleType
    code: types.CodeType
    source: str


@contextmanager
def loaded(source: str, *, filename: str = "<rules>", stem: str = "t") -> Iterator[Loaded]:
    """Compile and run ``source`` in a new module registered under a private
    name in ``sys.modules`` while its body runs (as the engine does), then
    removed again on exit."""
    name = f"livepatch.loaded._test_{stem}_{next(_counter)}"
    code = compile(source, filename, "exec", dont_inherit=True)  # as pyload does
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
        yield Loaded(module, code, source)
    finally:
        sys.modules.pop(name, None)


def load_source(source: str, *, filename: str = "<rules>", stem: str = "t") -> Loaded:
    """:func:`loaded` for tests that do not care about ``sys.modules`` cleanup
    timing: the module is registered only while its body runs."""
    with loaded(source, filename=filename, stem=stem) as result:
        return result


def stdlib_source(name: str) -> tuple[str, str]:
    """(source text, file path) of a pure-Python stdlib module."""
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    if origin == "frozen":
        # Some stdlib modules (abc, stat, genericpath ...) are frozen into the
        # interpreter; their source still ships in the stdlib directory.
        origin = str(Path(sysconfig.get_path("stdlib"), *name.split(".")).with_suffix(".py"))
    if origin is None or not origin.endswith(".py") or not Path(origin).is_file():
        raise LookupError(f"{name} is not a pure-Python module here")
    path = Path(origin)
    return path.read_text(encoding="utf-8"), str(path)


# Pure-Python stdlib modules whose body runs fine when executed a second time
# under a private module name, with no process-wide side effects, and whose
# code can all be resolved on this platform. The check must find nothing in
# any of them.
#
# Left out on purpose, with the reason:
# - random, threading, logging, warnings, rlcompleter, atexit users: running
#   the body again registers process-wide hooks (at-fork handlers, warning
#   filters, completers, exit handlers) that a test must not leave behind.
# - this, antigravity, turtle: print, open a browser or a window when run.
# - getpass: ``win_getpass`` needs ``msvcrt``, which the body imports only
#   when ``termios`` is missing: a warning ("defined only if"), not nothing.
#   (shutil, subprocess, tempfile, sysconfig, _pyio and pdb are in: their
#   platform guards are decided at check time, ``sys.last_traceback`` is weak.)
# - packages whose ``__init__`` uses relative imports (json, email, html,
#   asyncio, ...): ``from .x import y`` needs the real package, not a private
#   name. Their submodules that import absolutely are in the corpus.
CORPUS: tuple[str, ...] = (
    "_collections_abc",
    "_pyio",
    "_strptime",
    "abc",
    "argparse",
    "ast",
    "base64",
    "bdb",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "codeop",
    "colorsys",
    "compileall",
    "configparser",
    "contextlib",
    "copy",
    "copyreg",
    "csv",
    "dataclasses",
    "datetime",
    "difflib",
    "dis",
    "email._parseaddr",
    "email.utils",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "genericpath",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "http.client",
    "http.cookiejar",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "json.decoder",
    "json.encoder",
    "json.scanner",
    "keyword",
    "linecache",
    "locale",
    "lzma",
    "mailbox",
    "mimetypes",
    "netrc",
    "ntpath",
    "numbers",
    "opcode",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "platform",
    "plistlib",
    "posixpath",
    "pprint",
    "pstats",
    "py_compile",
    "queue",
    "quopri",
    "reprlib",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "socket",
    "stat",
    "statistics",
    "string",
    "stringprep",
    "struct",
    "subprocess",
    "symtable",
    "sysconfig",
    "tabnanny",
    "tarfile",
    "tempfile",
    "textwrap",
    "timeit",
    "token",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "weakref",
    "xml.dom.minidom",
    "zipapp",
    "zipfile",
)

# Corpus modules in which no live function or method refers (by a global
# lookup) to a top-level ``def`` or ``class`` of the same module that could
# be renamed without breaking the module body itself (or whose Python
# definitions are all replaced by a C accelerator, as in bisect and
# datetime): the "break one name" test has nothing to break there.
NOTHING_TO_BREAK: frozenset[str] = frozenset(
    {
        "abc",
        "bisect",
        "cmd",
        "csv",
        "datetime",
        "hashlib",
        "io",
        "json.scanner",
        "keyword",
        "numbers",
        "opcode",
        "operator",
        "sched",
        "stat",
        "string",
        "struct",
        "token",
    }
)


def generated_rule_source(functions: int) -> str:
    """A rule module with ``functions`` functions that call builtins, an
    imported module's attributes, module data and each other, for timing."""
    parts = [
        '"""Generated rules."""',
        "import math",
        "import re",
        "from dataclasses import dataclass",
        "",
        "LIMIT = 10",
        "",
        "@dataclass",
        "class Hit:",
        "    rule: int",
        "    score: float",
        "",
    ]
    for i in range(functions):
        call = f"rule_{i - 1}(msg, score)" if i else "Hit(0, score).score"
        parts.append(
            f"def rule_{i}(msg: str, score: float = 0.0) -> float:\n"
            f'    """Rule {i}."""\n'
            f"    words = [w for w in msg.split() if len(w) > {i % 7}]\n"
            f'    if re.search(r"spam{i}", msg):\n'
            f"        score += math.sqrt(len(words)) * LIMIT\n"
            f"    return {call}\n"
        )
    return "\n".join(parts)


def time_load_and_check(functions: int, repeat: int = 5) -> dict[str, float]:
    """Median milliseconds to load (compile + run the body) a generated
    module of ``functions`` functions, resolve-check it, and build its
    symbol table. Each repeat starts from a fresh compile, so no cache helps."""
    import statistics
    import time

    from livepatch.resolve import check_module
    from livepatch.symbols import build_symbol_table

    source = generated_rule_source(functions)
    samples: dict[str, list[float]] = {"load": [], "check": [], "table": []}
    for _ in range(repeat):
        start = time.perf_counter()
        with loaded(source, filename=f"generated_{functions}.py", stem="bench") as result:
            loaded_at = time.perf_counter()
            report = check_module("bench@1", result.module, result.code, None)
            checked_at = time.perf_counter()
            build_symbol_table("bench@1", result.module, result.code, source)
            done_at = time.perf_counter()
        if not report.ok:
            raise AssertionError(report.problems[:3])
        samples["load"].append((loaded_at - start) * 1e3)
        samples["check"].append((checked_at - loaded_at) * 1e3)
        samples["table"].append((done_at - checked_at) * 1e3)
    out = {key: statistics.median(values) for key, values in samples.items()}
    out["load+check"] = statistics.median(
        a + b for a, b in zip(samples["load"], samples["check"], strict=True)
    )
    return out


if __name__ == "__main__":
    # python tests/stdlib_corpus.py [N ...]: load + check timings, and the
    # ratio of the largest to the smallest size.
    sizes = [int(arg) for arg in sys.argv[1:]] or [1000, 10000]
    results = {n: time_load_and_check(n) for n in sizes}
    for n, r in results.items():
        print(
            f"{n:>6} functions: load {r['load']:7.1f} ms  check {r['check']:6.1f} ms  "
            f"load+check {r['load+check']:7.1f} ms  (table {r['table']:6.1f} ms)"
        )
    if len(sizes) > 1:
        small, large = results[min(sizes)], results[max(sizes)]
        ratio = large["load+check"] / small["load+check"]
        print(f"ratio load+check {max(sizes)}/{min(sizes)}: {ratio:.1f}x")
