"""A fleet version's symbol table from its source in the registry.

One sha is one source on every member, so ``symbols SHA --fleet F`` needs no
member: the source (or a ready object's bytes) is read from the fleet's
registry by its sha (:func:`registry_source`) and its table built on this
host by :func:`table_of_source`, in a throwaway child process (a Python
rule's body runs to build its table, and must not run in the client, nor
leave anything behind), with the engine's own table builders:

- Python: the module body runs in the child as a load would run it; the
  table is the one a member shows, as long as the rule's imports resolve
  on this host (if not, the child's one-line error says which one failed).
- A ready object (``.so`` bytes): its ``.dynsym``, undefined symbols
  resolved as this host's dynamic linker would bind them.
- C source: compiled here first (a compiler needed; no member's slot flags).

Native entry points show no C declaration: that is the slot's interface,
which the registry does not hold.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any

from ..errors import LivepatchError
from ..symbols import SymbolTable
from .model import FleetError, Rule

__all__ = ["registry_source", "resolve_sha", "table_of_source"]

#: How long the child may take (a C source is compiled there).
CHILD_TIMEOUT_S = 120.0


def resolve_sha(prefix: str, known: list[str], where: str) -> str:
    """The one sha of ``known`` that starts with ``prefix`` (7+ hex digits)."""
    low = prefix.lower()
    if len(low) < 7 or any(c not in "0123456789abcdef" for c in low):
        raise FleetError(
            f"{prefix!r}: name a fleet version by its sha256 (7 or more hex digits), "
            "as `status --fleet` shows it"
        )
    matches = sorted({sha for sha in known if sha.startswith(low)})
    if not matches:
        raise FleetError(f"{where} has no version {prefix}: `history --fleet` lists the pushes")
    if len(matches) > 1:
        raise FleetError(f"sha prefix {prefix!r} is ambiguous in {where}: give more digits")
    return matches[0]


def registry_source(
    fleet: str, registry: str | None, prefixes: list[str]
) -> list[tuple[str, Rule, str]]:
    """``(sha, source, filename)`` of each sha (prefix), read from the
    fleet's registry (the local store, or ZooKeeper) by content address."""
    from .model import validate_fleet_name

    validate_fleet_name(fleet)
    found: list[tuple[str, Rule, str]] = []
    if registry not in (None, "", "local"):
        from .zk import ZkRegistry, parse_zk_url

        assert registry is not None
        with ZkRegistry(parse_zk_url(registry), fleet, create=False) as reg:
            known = reg.source_shas()
            for prefix in prefixes:
                sha = resolve_sha(prefix, known, f"fleet {fleet}'s registry")
                found.append((sha, *_read(reg.get_source, sha)))
        return found
    from .store import LocalStore

    store = LocalStore.existing(fleet)
    known = store.source_shas()
    for prefix in prefixes:
        sha = resolve_sha(prefix, known, f"fleet {fleet}'s store")
        found.append((sha, *_read(store.get_source, sha)))
    return found


def _read(get: Any, sha: str) -> tuple[Rule, str]:
    try:
        source, filename = get(sha)
    except LookupError as exc:
        raise FleetError(str(exc)) from None
    return source, filename


def table_of_source(label: str, source: Rule, filename: str) -> SymbolTable:
    """The symbol table of ``source``, built in a child process on this host
    and named ``label``; :class:`FleetError` with the child's one-line reason."""
    request: dict[str, Any] = {"label": label, "filename": filename}
    if isinstance(source, bytes):
        request["object"] = base64.b64encode(source).decode("ascii")
    else:
        request["source"] = source
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "livepatch.fleet.tables"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise FleetError(
            f"{filename}: building its symbol table took over {CHILD_TIMEOUT_S:g} s"
        ) from None
    try:
        reply = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FleetError(f"{filename}: its symbol table could not be built here: {tail}") from None
    if "error" in reply:
        raise FleetError(f"{filename}: its symbol table could not be built here: {reply['error']}")
    return SymbolTable.from_json(reply["table"])


def _build(request: dict[str, Any]) -> SymbolTable:
    """The child's half: the table, with the engine's builders."""
    import tempfile
    from pathlib import Path

    label, filename = str(request["label"]), str(request["filename"])
    if "object" in request or filename.endswith(".c"):
        from ..native import elf_symbol_table
        from ..native_build import cached_build, find_compiler
        from ..native_elf import read_elf
        from ..native_object import NativeObject

        source = request.get("source")
        with tempfile.TemporaryDirectory(prefix="livepatch-table-") as tmp:
            if source is None:
                data = base64.b64decode(request["object"])
                path = Path(tmp) / "object.so"
                path.write_bytes(data)
            else:
                compiler = find_compiler()
                if compiler is None:
                    raise RuntimeError("no C compiler found (install gcc or set CC)")
                path = cached_build(str(source), filename, Path(tmp), compiler=compiler)
            obj = NativeObject(path, read_elf(path, shown=filename), filename, None, source)
            table = elf_symbol_table(label, obj, {})
    else:
        from ..pyload import PythonBackend

        version = PythonBackend(None).load("fleet@1", str(request["source"]), filename)
        table = PythonBackend(None).table(version)
    return SymbolTable(label, table.rows)


#: The child's address-space limit, as an engine's quarantine has by default.
CHILD_MEMORY_BYTES = 1024 * 2**20


def _main() -> int:
    import resource

    # A body that runs away with memory fails here, not on the user's machine.
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    request = json.loads(sys.stdin.read())
    # The rule's own output must not mix with the reply on stdout.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        reply: dict[str, Any] = {"table": _build(request).to_json()}
    except LivepatchError as exc:
        reply = {"error": exc.message}
    except MemoryError:
        reply = {"error": f"its body needed more than {CHILD_MEMORY_BYTES // 2**20} MiB"}
    except Exception as exc:  # noqa: BLE001 - the one line the user sees; the child exits
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    with os.fdopen(reply_fd, "w") as out:
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
