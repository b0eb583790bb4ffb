"""The ELF reader on objects linked with packed relative relocations (RELR).

``-z pack-relative-relocs`` (binutils 2.38 and later) puts relative
relocations in a ``DT_RELR`` table: addresses only, no symbol. Debian's own
glibc (``libc.so.6``, ``libm.so.6``) is linked that way. The reader must read
such objects (their symbols, which are lazy) like any other, and the engine
load, check and call them.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import pytest
from conftest import EngineProcess, needs, run_cli
from elftools.elf.elffile import ELFFile

from livepatch import Engine
from livepatch.examples.spam import rule_path
from livepatch.examples.spam_native import NATIVE_SLOT, SpamNativeRules
from livepatch.native import find_compiler, read_elf
from livepatch.native_link import loaded_path

COMPILER = find_compiler()
pytestmark = needs(
    None
    if COMPILER
    else "no C compiler (cc, gcc, clang or $CC): the native backend compiles C rules"
)


def dynamic_tags(path: Path) -> set[str]:
    with path.open("rb") as stream:
        dynamic = ELFFile(stream).get_section_by_name(".dynamic")
        assert dynamic is not None
        return {str(tag.entry.d_tag) for tag in dynamic.iter_tags()}


def build_example(tmp: Path, name: str, *flags: str) -> Path:
    """The bundled native example, built by the test's own cc call."""
    assert COMPILER is not None
    out = tmp / name
    source = str(rule_path("spam_native_v1.c"))
    subprocess.run(
        [*COMPILER, "-shared", "-fPIC", "-O2", *flags, "-o", str(out), source],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def relr_so(tmp_path: Path) -> Path:
    """spam_native_v1.c linked with RELR relocations.

    Never skipped: CI's image (Debian 12, binutils 2.40) supports the flag,
    so a linker that does not is a failure. An old ld only warns about an
    unknown ``-z`` option, hence the check that the table is really there.
    """
    so = build_example(tmp_path, "v1rr.so", "-Wl,-z,pack-relative-relocs")
    assert "DT_RELR" in dynamic_tags(so), "the linker ignored -z pack-relative-relocs"
    return so


def test_relr_object_reads_like_the_same_object_without_relr(relr_so: Path, tmp_path: Path) -> None:
    plain = build_example(tmp_path, "v1.so")
    assert "DT_RELR" not in dynamic_tags(plain)
    info = read_elf(relr_so)

    def rows(path: Path) -> set[tuple[str, str, bool, str | None]]:
        return {(s.name, s.letter, s.lazy, s.version) for s in read_elf(path).symbols}

    assert rows(relr_so) == rows(plain)
    classify = info.symbol("classify")
    assert classify is not None and classify.letter == "T"
    # Symbols used only through the PLT stay lazy: RELR holds no symbol.
    strstr = info.symbol("strstr")
    assert strstr is not None and strstr.lazy and not strstr.defined


def test_relr_object_loads_checks_and_serves_in_process(relr_so: Path) -> None:
    engine = Engine(name="relr")
    engine.add_slot(NATIVE_SLOT, SpamNativeRules)
    try:
        version = engine.load_path(NATIVE_SLOT, relr_so)
        assert engine.check(version).ok
        engine.swap(version)
        assert engine.call(NATIVE_SLOT, "classify", "WIN a FREE cruise") == 1
        assert engine.call(NATIVE_SLOT, "classify", "Lunch at noon?") == 0
        assert engine.symbols(version).get("classify") is not None
    finally:
        engine.close()


def test_cli_loads_checks_and_lists_a_relr_object(
    engine_proc: EngineProcess, relr_so: Path
) -> None:
    loaded = run_cli("load", str(relr_so), "--slot", NATIVE_SLOT, "--json", "--existing", "rules")
    assert loaded.returncode == 0, loaded.stderr
    version = json.loads(loaded.stdout)["version"]
    checked = run_cli("check", version, "--existing", "rules")
    assert checked.returncode == 0 and "ok, no problems" in checked.stdout, checked.stderr
    table = run_cli("symbols", version, "--json", "--existing", "rules")
    assert table.returncode == 0, table.stderr
    rows = {r["name"]: r["letter"] for r in json.loads(table.stdout)["rows"]}
    assert rows["classify"] == "T" and rows["strstr"] == "U"
    text = run_cli("symbols", version, "--existing", "rules").stdout
    assert "T classify" in text and "int classify(const char *text)" in text


@pytest.mark.parametrize("library", ["libm.so.6", "libc.so.6"])
def test_the_system_c_library_reads(library: str) -> None:
    path = loaded_path(ctypes.CDLL(library)._handle)
    assert path is not None
    info = read_elf(path)
    assert info.soname == library
    wanted = "cos" if library == "libm.so.6" else "printf"
    found = info.symbol(wanted)
    assert found is not None and found.defined and found.is_function
