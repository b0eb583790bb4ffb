"""The system C compiler, for native rule sources, and the cache of what it built.

A compiled object is cached by its content: the compiler, the flags and the
source, plus the content of every header the build read outside the system
directories (the compiler's own dependency list, ``-MMD``). Where the source
was loaded from (its origin, the ``-I`` directory for ``#include "x.h"``) is
not part of the key: the same source built against the same headers is the
same object wherever it came from, and a header edited since is a miss.
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = [
    "BASE_FLAGS",
    "COMPILE_TIMEOUT",
    "build_identity",
    "cached_build",
    "compile_c",
    "find_compiler",
]

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
) -> list[Path]:
    """Compile ``source`` into the shared object ``output``; the headers the
    build read outside the system directories (absolute paths).

    The source is compiled under its own file name so that diagnostics name
    it. A compiler error raises :class:`LoadFailed` whose message is the
    first error as ``file:line:col: error: ...`` and whose data carries
    ``filename``, ``line``, ``col`` and the full ``diagnostics``.
    """
    output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lp-cc-", dir=output.parent) as tmp:
        name = _safe_name(filename)
        (Path(tmp) / name).write_text(source, encoding="utf-8", errors="surrogateescape")
        command = [
            *compiler,
            *BASE_FLAGS,
            *("-MMD", "-MF", "deps.d"),
            *("-x", "c", name, "-x", "none"),
            *flags,
            *("-o", "out.so"),
        ]
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
        headers = _dependencies(Path(tmp))
        os.replace(Path(tmp) / "out.so", output)
    return headers


def _dependencies(build: Path) -> list[Path]:
    """The files a build read, from its make-style ``deps.d``, outside the
    build directory (that is the source itself)."""
    try:
        text = (build / "deps.d").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    _target, _, rest = text.replace("\\\n", " ").partition(": ")
    found = []
    for item in re.findall(r"(?:\\.|[^\s\\])+", rest):
        path = Path(re.sub(r"\\(.)", r"\1", item).replace("$$", "$"))
        path = path if path.is_absolute() else build / path
        if build not in path.parents:
            found.append(path)
    return found


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


#: How a manifest names a header found in the include directory (the
#: source's origin): relative to it, so a build from another origin checks
#: the header it would read there.
_IN_ORIGIN: Final = "origin:"


def _header_name(path: Path, include_dir: Path | None) -> str:
    if include_dir is not None and path.is_relative_to(include_dir):
        return _IN_ORIGIN + str(path.relative_to(include_dir))
    return str(path)


def _header_path(name: str, include_dir: Path | None) -> Path:
    if name.startswith(_IN_ORIGIN):
        relative = name[len(_IN_ORIGIN) :]
        # No origin now: nothing to read it from, so never a hit.
        return include_dir / relative if include_dir is not None else Path("/nonexistent")
    return Path(name)


def cached_build(
    source: str,
    filename: str,
    cache: Path,
    *,
    compiler: Sequence[str],
    flags: Sequence[str] = (),
    include_dir: Path | None = None,
) -> Path:
    """The object built from ``source``: from ``cache`` when the same compiler,
    flags and source were built before and every header that build read is
    unchanged (the module doc); else compiled now, and cached."""
    key = hashlib.sha256(
        "\0".join([*compiler, *BASE_FLAGS, *flags, source]).encode("utf-8", "surrogateescape")
    ).hexdigest()[:32]
    built, manifest = cache / f"{key}.so", cache / f"{key}.headers.json"
    try:
        headers = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        headers = None
    if (
        isinstance(headers, dict)
        and built.is_file()
        and all(
            _digest(_header_path(name, include_dir)) == digest for name, digest in headers.items()
        )
    ):
        return built
    read = compile_c(
        source, filename, built, compiler=compiler, flags=flags, include_dir=include_dir
    )
    # The object first, then what it depends on: a crash between the two
    # leaves no manifest, which is a miss, never a stale hit.
    record = {_header_name(path, include_dir): _digest(path) for path in read}
    tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, manifest)
    return built


def build_identity(built: Path) -> str:
    """What the object :func:`cached_build` returned was built from: its
    cache key (compiler, flags, source) and every header the build read
    with the digest it had, as one sha256. The same C source built against
    an edited header has another identity, so it is another version."""
    manifest = built.with_name(f"{built.stem}.headers.json")
    try:
        headers = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        headers = None
    record = json.dumps([built.stem, headers], sort_keys=True)
    return hashlib.sha256(record.encode("utf-8", "surrogateescape")).hexdigest()


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
