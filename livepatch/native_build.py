"""The system C compiler, for native rule sources."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .errors import LoadFailed

__all__ = ["BASE_FLAGS", "COMPILE_TIMEOUT", "compile_c", "find_compiler"]

#: The compiler flags every C source is built with (the design's command).
BASE_FLAGS: Final = ("-shared", "-fPIC", "-O2")

#: Time limit for one compiler run, in seconds.
COMPILE_TIMEOUT: Final = 120.0

# ---------------------------------------------------------------------------
# The compiler
# ---------------------------------------------------------------------------


def find_compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` if set (and found), else ``cc``,
    ``gcc`` or ``clang`` on ``PATH``; ``None`` when there is none."""
    configured = os.environ.get("CC", "").strip()
    if configured:
        parts = shlex.split(configured)
        found = shutil.which(parts[0]) if parts else None
        return [found, *parts[1:]] if found else None
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


# file:line:col: [fatal ]error: message  (gcc's and clang's format)
_DIAGNOSTIC: Final = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?:fatal )?error: (?P<msg>.*)$"
)
_MAX_DIAGNOSTICS: Final = 64 * 1024


def _safe_name(filename: str) -> str:
    name = re.sub(r"[^\w.+-]", "_", Path(filename).name).lstrip(".") or "rule.c"
    return name


def compile_c(
    source: str,
    filename: str,
    output: Path,
    *,
    compiler: Sequence[str],
    flags: Sequence[str] = (),
    include_dir: Path | None = None,
    timeout: float = COMPILE_TIMEOUT,
) -> None:
    """Compile ``source`` into the shared object ``output``.

    The source is compiled under its own file name so that diagnostics name
    it. A compiler error raises :class:`LoadFailed` whose message is the
    first error as ``file:line:col: error: ...`` and whose data carries
    ``filename``, ``line``, ``col`` and the full ``diagnostics``.
    """
    output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lp-cc-", dir=output.parent) as tmp:
        name = _safe_name(filename)
        (Path(tmp) / name).write_text(source, encoding="utf-8", errors="surrogateescape")
        command = [*compiler, *BASE_FLAGS, "-x", "c", name, "-x", "none", *flags, "-o", "out.so"]
        if include_dir is not None:
            command[len(compiler) : len(compiler)] = ["-I", str(include_dir)]
        try:
            proc = subprocess.run(
                command,
                cwd=tmp,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                # C locale: plain quotes in messages, the same text everywhere.
                env={**os.environ, "LC_ALL": "C"},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LoadFailed(
                f"{filename}: the compiler did not finish within {timeout:g} s; nothing was loaded",
                filename=filename,
                reason="timeout",
            ) from None
        except OSError as exc:
            raise LoadFailed(
                f"{filename}: cannot run the C compiler {compiler[0]}: {exc.strerror or exc}",
                filename=filename,
                reason="no-compiler",
            ) from None
        if proc.returncode != 0:
            raise _compile_error(filename, name, proc.stderr or proc.stdout)
        os.replace(Path(tmp) / "out.so", output)


def _compile_error(filename: str, compiled_as: str, diagnostics: str) -> LoadFailed:
    # Diagnostics name the file as compiled; show the name the user gave.
    text = diagnostics.replace(compiled_as, filename)[:_MAX_DIAGNOSTICS]
    for line in text.splitlines():
        match = _DIAGNOSTIC.match(line)
        if match:
            lineno, col = int(match["line"]), int(match["col"])
            return LoadFailed(
                f"{filename}:{lineno}:{col}: error: {match['msg']}",
                filename=filename,
                line=lineno,
                col=col,
                diagnostics=text,
            )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error" in ln), lines[0] if lines else "compiler failed")
    return LoadFailed(f"{filename}: {first}", filename=filename, diagnostics=text)
