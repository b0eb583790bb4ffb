"""The native backend: real ELF shared objects, compiled by the system compiler.

In-process tests of the ELF reader, the interface and the lifecycle, and
tests against a real ``livepatch engine`` process (the demo, with its
``spam_native`` slot) over the wire and through the CLI. Everything here
compiles C, so without a C compiler the tests are skipped (and say why).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, needs, run_cli, start_engine
from test_protocol_doc import exchanges, replay

from livepatch import BadState, CheckFailed, Engine, LoadFailed
from livepatch.client import Client, default_slot
from livepatch.examples.spam import SpamRules, rule_path, rule_source
from livepatch.examples.spam_native import NATIVE_SLOT, SpamNativeRules
from livepatch.native import (
    NativeBackend,
    NativeInterface,
    NotSharedObject,
    find_compiler,
    mappings,
    read_elf,
)
from livepatch.quarantine import Quarantine
from livepatch.runtime import find_engine

COMPILER = find_compiler()
pytestmark = needs(
    None
    if COMPILER
    else "no C compiler (cc, gcc, clang or $CC): the native backend compiles C rules"
)
needs_nm = needs(None if shutil.which("nm") else "nm (binutils) is not installed")

CLASSIFY = NativeInterface({"classify": (ctypes.c_int, [("text", ctypes.c_char_p)])})

# Every letter nm -D prints for a gcc-built object, and a few things it does not list.
RICH_C = """\
#include <stdio.h>
#include <string.h>
int counter;                                    /* B: zero-initialised */
int initialised = 7;                            /* D */
const char banner[] = "hello";                  /* R */
const char *const names[] = {"a", "b"};         /* D: relocated, so .data.rel.ro */
__attribute__((weak)) int weak_fn(void) { return 1; }   /* W */
__attribute__((weak)) int weak_obj = 3;         /* V: a weak object */
extern int maybe(void) __attribute__((weak));   /* w: weak undefined */
static int hidden(int x) { return x * 2; }      /* static: not in .dynsym */
__attribute__((visibility("hidden"))) int internal(int x) { return x + 1; }
int classify(const char *text) {
    counter++;
    return (int)strlen(text) + hidden(1) + internal(2) + (maybe ? maybe() : 0);
}
void say(void) { puts(banner); }
"""

GOOD_C = "int classify(const char *text) { return text[0] == 'W'; }\n"


def build(tmp: Path, name: str, source: str, *flags: str) -> Path:
    """Compile ``source`` into ``tmp/name`` (a shared object) with the test's own cc call."""
    assert COMPILER is not None
    src = tmp / (name.removesuffix(".so") + ".c")
    src.write_text(source)
    out = tmp / name
    subprocess.run(
        [*COMPILER, "-shared", "-fPIC", "-O2", str(src), *flags, "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def nm_rows(path: Path, *flags: str) -> dict[str, str]:
    """name -> letter from ``nm -D``, symbol versions (``@GLIBC_2.2.5``) dropped."""
    out = subprocess.run(["nm", "-D", *flags, str(path)], check=True, capture_output=True)
    rows = {}
    for line in out.stdout.decode().splitlines():
        parts = line.split()
        letter, name = parts[-2], parts[-1]
        rows[name.split("@")[0]] = letter
    return rows


def mapped_file(engine: Engine, version: str) -> str:
    """The private file a native version is mapped from."""
    path = engine.object_path(version)
    assert path is not None
    return path


def engine_maps(pid: int, version: str) -> list[str]:
    """Lines of the engine's /proc/PID/maps mapping a version's private copy."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return [line for line in text.splitlines() if line.endswith(f"/{version}.so")]


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(name="native-test")
    e.add_slot("n", CLASSIFY)
    yield e
    e.close()


# ---------------------------------------------------------------------------
# The ELF reader and the interface, in-process


@needs_nm
def test_dynsym_matches_nm_letters_names_and_sizes(tmp_path: Path) -> None:
    so = build(tmp_path, "rich.so", RICH_C)
    info = read_elf(so)
    ours = {s.name: s for s in info.symbols if s.bind != "LOCAL"}
    # nm's own letters, exactly (our ElfSymbol.nm), for every symbol.
    assert {name: s.nm for name, s in ours.items()} == nm_rows(so)
    # Defined symbols: the same names as nm -D --defined-only.
    assert {n for n, s in ours.items() if s.defined} == set(nm_rows(so, "--defined-only"))
    # The table's letters are nm's, folded: every weak flavour is W.
    fold = {"V": "W", "v": "W", "w": "W", "i": "T"}
    assert {n: s.letter for n, s in ours.items()} == {
        n: fold.get(k, k) for n, k in nm_rows(so).items()
    }
    assert ours["counter"].letter == "B" and ours["banner"].letter == "R"
    assert ours["names"].letter == "D" and ours["names"].section == ".data.rel.ro"
    assert ours["weak_obj"].nm == "V" and ours["maybe"].nm == "w"
    assert "hidden" not in ours and "internal" not in ours
    assert ours["counter"].size == 4 and ours["banner"].size == 6
    assert ours["strlen"].version and ours["strlen"].version.startswith("GLIBC_")
    assert info.needed == ("libc.so.6",) and not info.nodelete


def test_symbol_table_rows(tmp_path: Path, engine: Engine) -> None:
    v = engine.load("n", RICH_C, "rich.c")
    table = engine.symbols(v)
    rows = {r.name: r for r in table}
    assert rows["classify"].letter == "T"
    assert rows["classify"].signature == "int classify(const char *text)"
    assert rows["classify"].line == 12 and rows["classify"].detail.startswith("size ")
    assert rows["say"].signature is None  # not part of the interface
    assert rows["counter"].detail == "size 4" and rows["counter"].line == 3
    assert rows["strlen"].letter == "U" and rows["strlen"].detail.startswith("libc.so.6")
    assert rows["weak_fn"].detail.startswith("weak, size ")
    assert rows["maybe"].detail == "weak undefined: absent (allowed)"
    # Loaded is not mapped: reading the table ran nothing of the object.
    assert mappings(mapped_file(engine, v)) == []


def test_interface_declarations_and_errors() -> None:
    iface = NativeInterface(
        {
            "classify": (ctypes.c_int, [("text", ctypes.c_char_p)]),
            "score": (ctypes.c_double, [ctypes.c_long, ("weights", ctypes.POINTER(ctypes.c_int))]),
            "reset": (None, []),
        },
        name="Rules",
    )
    assert iface.describe() == (
        "int classify(const char *text); double score(long arg1, int *weights); void reset(void)"
    )
    assert str(iface.functions["classify"].signature()) == "(text: str, /) -> int"
    with pytest.raises(TypeError, match="must be a ctypes type"):
        NativeInterface({"f": (int, [])})
    with pytest.raises(ValueError, match="not a C identifier"):
        NativeInterface({"no good": (None, [])})
    with pytest.raises(ValueError, match="at least one function"):
        NativeInterface({})


def test_read_elf_refuses_what_the_dynamic_linker_would(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotSharedObject, match="not an ELF file"):
        read_elf(text)
    src = tmp_path / "o.c"
    src.write_text(GOOD_C)
    assert COMPILER is not None
    subprocess.run([*COMPILER, "-c", "-fPIC", str(src), "-o", str(tmp_path / "o.o")], check=True)
    with pytest.raises(NotSharedObject, match=r"an object file \(\.o\), not a shared object"):
        read_elf(tmp_path / "o.o")
    main = tmp_path / "main.c"
    main.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "main"
    subprocess.run([*COMPILER, "-fPIE", "-pie", str(main), "-o", str(exe)], check=True)
    with pytest.raises(NotSharedObject, match="position-independent executable"):
        read_elf(exe)
    so = build(tmp_path, "whole.so", GOOD_C)
    (tmp_path / "cut.so").write_bytes(so.read_bytes()[:2000])
    with pytest.raises(NotSharedObject, match=r"cut\.so is a damaged ELF file"):
        read_elf(tmp_path / "cut.so")


def test_compiler_error_names_the_first_error(engine: Engine) -> None:
    source = "int classify(const char *text) {\n    return undeclared_name;\n}\n"
    with pytest.raises(LoadFailed) as caught:
        engine.load("n", source, "oops.c")
    error = caught.value
    assert error.message.startswith("oops.c:2:12: error: ")
    assert "undeclared_name" in error.message and "\n" not in error.message
    assert error.data["line"] == 2 and error.data["col"] == 12
    assert "oops.c:2:12" in error.data["diagnostics"]
    assert engine.versions("n") == []  # nothing left behind


# ---------------------------------------------------------------------------
# The lifecycle, in-process


def test_lifecycle_maps_only_after_check_and_unload_unmaps(engine: Engine) -> None:
    v1 = engine.load("n", GOOD_C, "good.c")
    path = mapped_file(engine, v1)
    assert engine.info(v1).state == "loaded" and mappings(path) == []
    with pytest.raises(BadState, match="only once its check passes"):
        engine.call_version(v1, "classify", "WIN")
    assert engine.check(v1).ok and mappings(path)  # mapped by the check
    engine.swap(v1)
    assert engine.call("n", "classify", "WIN") == 1  # str is encoded for const char *
    assert engine.call("n", "classify", b"lose") == 0
    with engine.pin("n") as rules:
        assert rules.classify("Wow") == 1
    del rules  # it holds v1's pointers: unload would (rightly) report it
    v2 = engine.load("n", GOOD_C.replace("'W'", "'L'"), "good2.c")
    assert engine.check(v2).ok
    engine.swap(v2, expect=v1)
    assert engine.call("n", "classify", "Lunch") == 1
    engine.purge(v1)
    result = engine.unload(v1)
    assert result.freed and result.holders == {} and mappings(path) == []
    assert engine.symbols(v1).get("classify") is not None  # kept after unload
    with pytest.raises(BadState):
        engine.check(v1)


def test_a_held_pointer_keeps_the_object_until_it_is_dropped(engine: Engine) -> None:
    v = engine.load("n", GOOD_C, "good.c")
    engine.check(v)
    path = mapped_file(engine, v)
    held = engine.function(v, "classify")
    result = engine.unload(v)
    assert not result.freed
    assert result.holders["maps: still mapped (function pointers still referenced)"] >= 1
    assert held("Wave") == 1  # still callable: dlclose waits for the last pointer
    del held
    # The last pointer gone, the object was closed; unloading again re-examines.
    assert mappings(path) == []
    again = engine.unload(v)
    assert again.freed and again.holders == {}


def test_unresolved_function_and_data_are_caught_before_mapping(engine: Engine) -> None:
    function = "int helper(int);\nint classify(const char *t) { return helper(t[0]); }\n"
    data = "extern int threshold;\nint classify(const char *t) { return t[0] > threshold; }\n"
    for name, source, symbol, consequence in (
        ("lazy.c", function, "helper", "its first call would kill the process"),
        ("data.c", data, "threshold", "dlopen would refuse the object"),
    ):
        v = engine.load("n", source, name)
        report = engine.check(v)
        (problem,) = report.errors
        # The line of the first use (declarations come first in C).
        assert (problem.kind, problem.symbol, problem.line) == ("unresolved", symbol, 2)
        assert consequence in problem.message
        assert engine.info(v).state == "failed"
        assert mappings(mapped_file(engine, v)) == []  # never mapped
        with pytest.raises(CheckFailed):
            engine.swap(v)


def test_entry_points_must_be_exported_functions(engine: Engine) -> None:
    cases = {
        "static.c": (
            "static int classify(const char *t) { return 1; }\nint x;\n",
            "missing-member",
        ),
        "data.c": ("int classify = 3;\n", "not-callable"),
    }
    for name, (source, kind) in cases.items():
        report = engine.check(engine.load("n", source, name))
        assert [p.kind for p in report.errors] == [kind]
        assert "classify" in report.errors[0].message


def test_needed_libraries_resolve_through_origin_runpath_or_are_reported(
    tmp_path: Path, engine: Engine
) -> None:
    dep = "int dep_score(const char *t) { return t[0] == 'W'; }\n"
    build(tmp_path, "libdep.so", dep, "-Wl,-soname,libdep.so")
    user = "int dep_score(const char *t);\nint classify(const char *t) { return dep_score(t); }\n"
    link = ("-L", str(tmp_path), "-ldep")
    # Without a RUNPATH the dynamic linker cannot find libdep.so: both are reported.
    lonely = build(tmp_path, "lonely.so", user, *link)
    report = engine.check(engine.load_path("n", lonely))
    assert [(p.kind, p.symbol) for p in report.errors] == [
        ("missing-library", "libdep.so"),
        ("unresolved", "dep_score"),
    ]
    assert "cannot open shared object file" in report.errors[0].message
    # With RUNPATH=$ORIGIN it can. The version is mapped from a private copy,
    # yet $ORIGIN means the directory the object came from.
    rules = build(tmp_path, "rules.so", user, *link, "-Wl,-rpath,$ORIGIN")
    v = engine.load_path("n", rules)
    assert engine.check(v).ok and engine.call_version(v, "classify", "Win") == 1
    assert engine.symbols(v)["dep_score"].detail == "libdep.so"


def test_default_slot_follows_the_kind_of_the_file() -> None:
    slots = [{"name": "spam", "kind": "python"}, {"name": "spam_native", "kind": "native"}]
    assert default_slot(slots, "spam_v2.py") == "spam"
    assert default_slot(slots, "rules.c") == "spam_native"
    assert default_slot(slots, "librules.so.1") == "spam_native"
    assert default_slot(slots[:1], "rules.c") == "spam"  # the only slot takes anything
    with pytest.raises(ValueError, match="several slots"):
        default_slot(slots)
    with pytest.raises(ValueError, match="several slots"):
        default_slot([*slots, {"name": "other"}], "x.py")


def test_nodelete_and_unique_objects_stay_mapped_with_the_reason(
    tmp_path: Path, engine: Engine
) -> None:
    # glibc pins the object once one of its unique symbols is bound: classify uses it.
    unique = (
        "int shared_counter = 1;\n"
        '__asm__(".type shared_counter, @gnu_unique_object");\n'
        "int classify(const char *text) { return text[0] == 'W' + 0 * shared_counter++; }\n"
    )
    objects = {
        "nodelete": (build(tmp_path, "nd.so", GOOD_C, "-Wl,-z,nodelete"), "DF_1_NODELETE"),
        "unique": (build(tmp_path, "uq.so", unique), "STB_GNU_UNIQUE symbols: shared_counter"),
    }
    for kind, (path, reason) in objects.items():
        v = engine.load_path("n", path)
        report = engine.check(v)
        assert report.ok and [p.kind for p in report.warnings] == [
            "nodelete" if kind == "nodelete" else "unique-symbols"
        ]
        result = engine.unload(v)
        assert not result.freed
        assert list(result.holders) == [f"maps: still mapped ({reason})"]


def test_a_crashing_constructor_fails_the_check_in_quarantine(engine: Engine) -> None:
    crash = GOOD_C + (
        "#include <signal.h>\n"
        "__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n"
    )
    engine.quarantine = Quarantine(timeout_s=20)
    v = engine.load("n", crash, "crash.c")
    report = engine.check(v)
    (problem,) = report.errors
    assert problem.kind == "crash" and "SIGSEGV" in problem.message
    # This process never mapped it, so it is still alive to say so.
    assert mappings(mapped_file(engine, v)) == []


def test_a_c_source_built_against_an_edited_header_is_a_new_version(
    tmp_path: Path, engine: Engine
) -> None:
    # The same .c text; what it exports depends on the header next to it.
    source = (
        '#include "rule_extra.h"\n'
        "int classify(const char *text) { return text[0] == 'W'; }\n"
        "#if EXTRA\nint extra(void) { return EXTRA; }\n#endif\n"
    )
    path = tmp_path / "rules.c"
    path.write_text(source)
    header = tmp_path / "rule_extra.h"
    header.write_text("#define EXTRA 0\n")
    v1 = engine.load_path("n", path)
    assert engine.load_path("n", path) == v1  # nothing changed: the same version
    header.write_text("#define EXTRA 7\n")
    v2 = engine.load_path("n", path)
    assert v2 != v1, "an edited header must give a new version"
    names = {v: {row.name for row in engine.symbols(v).rows} for v in (v1, v2)}
    assert "extra" not in names[v1] and "extra" in names[v2]
    # Both carry the source's own sha (what fleets and the store address it by).
    shas = {v.id: v.sha256 for v in engine.status().slots[0].versions}
    assert shas[v1] == shas[v2] == hashlib.sha256(source.encode()).hexdigest()
    assert engine.load_path("n", path) == v2  # the same headers again: v2 again
    header.write_text("#define EXTRA 0\n")
    assert engine.load_path("n", path) == v1  # back to the first headers: v1
    engine.check(v2)
    engine.swap(v2)
    assert engine.call_version(v2, "classify", "Win") == 1


def test_a_ready_object_is_copied_so_a_rebuilt_file_is_new_code(
    tmp_path: Path, engine: Engine
) -> None:
    path = build(tmp_path, "rules.so", GOOD_C)
    v1 = engine.load_path("n", path)
    engine.check(v1)
    engine.swap(v1)
    build(tmp_path, "rules.so", GOOD_C.replace("'W'", "'L'"))  # same path, new code
    v2 = engine.load_path("n", path)
    assert v2 != v1 and engine.check(v2).ok
    assert engine.call_version(v2, "classify", "Lunch") == 1  # not v1's code again
    assert engine.call_version(v1, "classify", "Lunch") == 0
    with pytest.raises(BadState, match="no source"):
        engine.source(v1)


def test_python_and_native_slots_side_by_side() -> None:
    engine = Engine(name="both")
    engine.add_slot("spam", SpamRules)
    engine.add_slot(NATIVE_SLOT, SpamNativeRules)
    try:
        py = engine.load("spam", rule_source("spam_v1.py"), "spam_v1.py")
        native = engine.load_path(NATIVE_SLOT, rule_path("spam_native_v1.c"))
        status = engine.status().to_json()
        assert [(s["name"], s["kind"]) for s in status["slots"]] == [
            ("spam", "python"),
            (NATIVE_SLOT, "native"),
        ]
        assert status["slots"][1]["interface"] == "int classify(const char *text)"
        rows = {r.name: r for r in engine.diff(py, native).rows}
        assert rows["classify"].marker == "~"
        assert rows["classify"].right is not None and rows["classify"].right.letter == "T"
        assert rows["len"].marker == "-" and rows["strstr"].marker == "+"
    finally:
        engine.close()


# ---------------------------------------------------------------------------
# Against a real engine process: the bundled demo with its native slot


@pytest.fixture(scope="module")
def demo() -> Iterator[EngineProcess]:
    """One demo engine for the wire tests of this module (each loads its own versions)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lp-", dir="/tmp"))
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv("LIVEPATCH_RUNTIME_DIR", str(Path(tmp) / "run"))
        proc = start_engine(name="native")
        stack.callback(proc.stop)
        yield proc


def test_demo_engine_serves_native_v1_over_the_wire(demo: EngineProcess) -> None:
    with Client.connect("native") as client:
        assert client.hello["slots"] == ["spam", NATIVE_SLOT]
        slot = client.status()["slots"][1]
        assert slot["kind"] == "native" and slot["active"] == f"{NATIVE_SLOT}@1"
        reply = client.call(NATIVE_SLOT, "classify", ["WIN a FREE cruise"])
        assert reply == {"version": f"{NATIVE_SLOT}@1", "result": 1}
        assert client.call(NATIVE_SLOT, "classify", ["Lunch at noon?"])["result"] == 0
        assert engine_maps(demo.ready["pid"], f"{NATIVE_SLOT}@1")


def test_lifecycle_over_the_wire_with_maps_evidence(demo: EngineProcess) -> None:
    pid = demo.ready["pid"]
    with Client.connect("native") as client:
        v = client.load(NATIVE_SLOT, rule_source("spam_native_v2.c"), "spam_native_v2.c")
        assert engine_maps(pid, v) == []  # loaded, not mapped
        assert client.check(v).ok
        assert len(engine_maps(pid, v)) >= 2  # code and data segments
        previous = client.swap(v)["previous"]
        assert client.call(NATIVE_SLOT, "classify", ["SHOUTING WINS"])["result"] == 1
        table = client.symbols(v)
        assert {r.name for r in table.by_letter("T")} >= {"classify", "keyword_hits", "shouting"}
        client.swap(previous)  # back, so v can go
        result = client.unload(v)
        assert result == {"version": v, "freed": True, "in_flight": 0, "holders": {}}
        assert engine_maps(pid, v) == []
        state = next(x for x in client.status()["slots"][1]["versions"] if x["id"] == v)
        assert state["state"] == "unloaded" and state["freed"] is True


def test_unresolved_symbol_is_caught_and_the_active_version_keeps_serving(
    demo: EngineProcess,
) -> None:
    pid = demo.ready["pid"]
    with Client.connect("native") as client:
        active = client.status()["slots"][1]["active"]
        bad = client.load(NATIVE_SLOT, rule_source("spam_native_undefined.c"), "undefined.c")
        report = client.check(bad)
        assert [(p.kind, p.symbol) for p in report.errors] == [("unresolved", "link_score")]
        assert report.errors[0].line == 14  # the call, not the declaration
        with pytest.raises(CheckFailed):
            client.swap(bad)
        with pytest.raises(BadState, match="only once its check passes"):
            client.call(bad, "classify", ["free"])
        assert engine_maps(pid, bad) == []  # not one byte of it was mapped
        reply = client.call(NATIVE_SLOT, "classify", ["WIN a FREE cruise"])
        assert reply == {"version": active, "result": 1}
        assert client.symbols(bad)["link_score"].detail == "?"
        assert client.unload(bad)["freed"] is True


def test_a_needed_librarys_constructor_runs_in_quarantine_before_the_engine(
    demo: EngineProcess, tmp_path: Path
) -> None:
    # A library the rule needs, whose constructor notes the pid it runs in,
    # and one whose constructor crashes. Sent as bytes (a memory file): the
    # absolute RUNPATH finds them.
    ctor = (
        "#include <stdio.h>\n#include <unistd.h>\n"
        "__attribute__((constructor)) static void note(void) {\n"
        f'  FILE *f = fopen("{tmp_path}/ran", "a"); fprintf(f, "%d\\n", getpid()); fclose(f);\n'
        "}\nint dep_score(const char *t) { return t[0] == 'W'; }\n"
    )
    crash = (
        "#include <signal.h>\n"
        "__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n"
        "int dep_score(const char *t) { return t[0] == 'W'; }\n"
    )
    user = "int dep_score(const char *t);\nint classify(const char *t) { return dep_score(t); }\n"
    rules = {}
    for name, source in (("noted", ctor), ("boom", crash)):
        lib = tmp_path / name
        lib.mkdir()
        build(lib, f"lib{name}.so", source, f"-Wl,-soname,lib{name}.so")
        link = ("-L", str(lib), f"-l{name}", f"-Wl,-rpath,{lib}")
        rules[name] = build(lib, "rules.so", user, *link)

    def check(name: str) -> subprocess.CompletedProcess[str]:
        loaded = run_cli(
            "load", str(rules[name]), "--slot", NATIVE_SLOT, "--json", "--existing", "native"
        )
        assert loaded.returncode == 0, loaded.stderr
        return run_cli("check", json.loads(loaded.stdout)["version"], "--existing", "native")

    crashed = check("boom")
    assert crashed.returncode == 1
    assert "DT_NEEDED libraries" in crashed.stdout + crashed.stderr
    assert "SIGSEGV" in crashed.stdout + crashed.stderr
    assert demo.proc.poll() is None  # the engine never opened libboom.so
    assert "libboom.so" not in Path(f"/proc/{demo.ready['pid']}/maps").read_text()
    # The good one: its constructor ran in a child first, then in the engine
    # (then once more in the child that maps the object itself).
    assert check("noted").returncode == 0
    pids = [int(line) for line in (tmp_path / "ran").read_text().split()]
    engine = demo.ready["pid"]
    assert len(pids) == 3 and pids[0] != engine and pids[1] == engine != pids[2]
    with Client.connect("native") as client:
        assert client.status()["name"] == "native"


def test_compiler_error_over_the_wire(demo: EngineProcess) -> None:
    with Client.connect("native") as client:
        with pytest.raises(LoadFailed) as caught:
            client.load(NATIVE_SLOT, "int classify(const char *t) {\n  return t[0] +;\n}\n", "x.c")
        assert caught.value.message.startswith("x.c:2:")
        assert ": error: " in caught.value.message
        assert caught.value.data["line"] == 2 and "x.c:2:" in caught.value.data["diagnostics"]


@needs_nm
def test_cli_loads_a_ready_object_and_its_table_matches_nm(
    demo: EngineProcess, tmp_path: Path
) -> None:
    so = build(tmp_path, "rich.so", RICH_C)
    loaded = run_cli("load", str(so), "--slot", NATIVE_SLOT, "--json", "--existing", "native")
    assert loaded.returncode == 0, loaded.stderr
    version = json.loads(loaded.stdout)["version"]
    checked = run_cli("check", version, "--existing", "native")
    assert checked.returncode == 0 and "ok, no problems" in checked.stdout
    table = run_cli("symbols", version, "--json", "--existing", "native")
    rows = {r["name"]: r["letter"] for r in json.loads(table.stdout)["rows"]}
    fold = {"V": "W", "v": "W", "w": "W"}
    assert rows == {name: fold.get(k, k) for name, k in nm_rows(so).items()}
    text = run_cli("symbols", version, "--existing", "native").stdout
    assert "T classify" in text and "int classify(const char *text)" in text
    unloaded = run_cli("unload", version, "--existing", "native")
    assert unloaded.returncode == 0 and f"unloaded {version}: freed" in unloaded.stdout


def test_cli_c_source_check_diff_and_unload(demo: EngineProcess, tmp_path: Path) -> None:
    src = tmp_path / "mine.c"
    src.write_text(rule_source("spam_native_undefined.c"))
    loaded = run_cli("load", str(src), "--slot", NATIVE_SLOT, "--existing", "native")
    assert loaded.returncode == 0, loaded.stderr
    version = loaded.stdout.split()[1].rstrip(";")
    checked = run_cli("check", version, "--existing", "native")
    assert checked.returncode == 1
    assert "unresolved  link_score" in checked.stdout and "failed its check" in checked.stderr
    diff = run_cli("diff", "spam@1", f"{NATIVE_SLOT}@1", "--existing", "native")
    assert diff.returncode == 0
    lines = diff.stdout.splitlines()
    assert any("T classify" in ln and " ~ " in ln and "int classify(" in ln for ln in lines)
    assert any("U len" in ln and ln.endswith(" -") for ln in lines)  # only in spam@1
    assert any("U strstr" in ln and " + " in ln for ln in lines)
    unloaded = run_cli("unload", version, "--existing", "native")
    assert unloaded.returncode == 0 and "freed" in unloaded.stdout


def test_nodelete_object_over_the_wire(demo: EngineProcess, tmp_path: Path) -> None:
    so = build(tmp_path, "nd.so", GOOD_C, "-Wl,-z,nodelete")
    with Client.connect("native") as client:
        v = client.request("load", {"slot": NATIVE_SLOT, "path": str(so)})["version"]
        report = client.check(v)
        assert report.ok and report.warnings[0].kind == "nodelete"
        result = client.unload(v)
        assert result["freed"] is False
        assert set(result["holders"]) == {"maps: still mapped (DF_1_NODELETE)"}
        assert result["holders"]["maps: still mapped (DF_1_NODELETE)"] == len(
            engine_maps(demo.ready["pid"], v)
        )


def test_documented_native_exchanges_replay(runtime_dir: Path) -> None:
    """docs/protocol.md's "Native slots" exchanges, against a fresh demo engine."""
    script = exchanges("==>", "<==")
    assert len(script) >= 10
    proc = start_engine()
    try:
        replay(find_engine().address, script, send="==>")
    finally:
        proc.stop()


def test_native_versions_come_back_after_a_restart(runtime_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_engine("--state-dir", str(state), "--no-quarantine", name="durable")
    try:
        with Client.connect("durable") as client:
            v2 = client.load(NATIVE_SLOT, rule_source("spam_native_v2.c"), "spam_native_v2.c")
            assert client.check(v2).ok and client.swap(v2)["changed"]
            so = build(tmp_path, "ready.so", GOOD_C)
            v3 = client.request("load", {"slot": NATIVE_SLOT, "path": str(so)})["version"]
            client.check(v3)
            with pytest.raises(BadState, match="no source"):
                client.request("source", {"version": v3})
    finally:
        first.stop()
    assert list((state / "native" / "cache").glob("*.so"))  # compiled objects kept
    second = start_engine("--state-dir", str(state), "--no-quarantine", name="durable")
    try:
        with Client.connect("durable") as client:
            slot = client.status()["slots"][1]
            assert slot["active"] == v2  # restored, re-checked, swapped in
            assert client.call(NATIVE_SLOT, "classify", ["WIN NOW"])["result"] == 1
    finally:
        second.stop()


def test_demo_without_a_compiler_starts_with_an_empty_native_slot(runtime_dir: Path) -> None:
    proc = start_engine(name="nocc", env={"CC": "/nonexistent/cc"})
    try:
        with Client.connect("nocc") as client:
            slots = {s["name"]: s for s in client.status()["slots"]}
            assert slots[NATIVE_SLOT]["active"] is None and slots["spam"]["active"] == "spam@1"
    finally:
        proc.stop()
    err = proc.log_text()
    assert "no C compiler found" in err and NATIVE_SLOT in err


# ---------------------------------------------------------------------------
# Symbol versions: .gnu.version_r against the library's .gnu.version_d

VERSIONED_USER = """\
int foo(void);
int classify(const char *text) {
    if (!text[0])
        return 0;
    return foo() == 3;
}
"""


def versioned_library(directory: Path, script: str, source: str) -> Path:
    """``directory/libver.so`` (soname libver.so) built with the linker version ``script``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ver.map").write_text(script)
    return build(
        directory,
        "libver.so",
        source,
        "-Wl,-soname,libver.so",
        f"-Wl,--version-script={directory / 'ver.map'}",
    )


@pytest.fixture
def versioned(tmp_path: Path) -> dict[str, Path]:
    """Libraries of one soname, libver.so, in three directories: ``v3`` defines
    foo at VER_3 (what the rules link against); ``v1`` defines only VER_1, as
    an older build of the library would; ``v3_elsewhere`` defines VER_3, but
    foo only at VER_1; ``plain`` has no symbol versions at all."""
    v3 = versioned_library(
        tmp_path / "v3",
        "VER_1 { global: foo_old; local: *; };\nVER_3 { global: foo; } VER_1;\n",
        "int foo(void) { return 3; }\nint foo_old(void) { return 1; }\n",
    )
    v1 = versioned_library(
        tmp_path / "v1",
        "VER_1 { global: foo; foo_old; local: *; };\n",
        "int foo(void) { return 1; }\nint foo_old(void) { return 1; }\n",
    )
    elsewhere = versioned_library(
        tmp_path / "v3_elsewhere",
        "VER_1 { global: foo; local: *; };\nVER_3 { global: bar; } VER_1;\n",
        "int foo(void) { return 1; }\nint bar(void) { return 3; }\n",
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    build(plain, "libver.so", "int foo(void) { return 7; }\n", "-Wl,-soname,libver.so")
    return {"v3": v3.parent, "v1": v1.parent, "v3_elsewhere": elsewhere.parent, "plain": plain}


def versioned_backend(link_dir: Path, run_dir: Path) -> NativeBackend:
    """A backend that links rules against ``link_dir``'s libver.so and runs
    them against ``run_dir``'s (RUNPATH)."""
    return NativeBackend(CLASSIFY, flags=("-L", str(link_dir), "-lver", f"-Wl,-rpath,{run_dir}"))


def test_a_needed_symbol_version_the_library_lacks_is_caught_before_mapping(
    versioned: dict[str, Path],
) -> None:
    backend = versioned_backend(versioned["v3"], versioned["v1"])
    obj = backend.load("n@1", VERSIONED_USER, "rules.c").obj
    assert obj is not None
    needed = {(s.name, s.version, s.version_library) for s in obj.info.symbols if not s.defined}
    assert ("foo", "VER_3", "libver.so") in needed
    assert ("libver.so", "VER_3") in obj.info.needed_versions
    try:
        report, functions = backend.resolve("n@1", obj)
        assert not report.ok and functions == {}
        (problem,) = report.errors
        assert (problem.kind, problem.symbol, problem.line) == ("missing-version", "foo@VER_3", 5)
        assert "VER_3" in problem.message and "defines only VER_1" in problem.message
        assert "\n" not in problem.message
        # Nothing was mapped, and glibc itself agrees it would refuse the object.
        assert obj.handle is None and mappings(obj.path) == []
        with pytest.raises(OSError, match="version `VER_3' not found"):
            ctypes.CDLL(str(obj.path))
        table = backend.object_table("n@1", obj)
        assert table["foo"].detail == "? (VER_3 not defined)"
    finally:
        obj.close()


def test_a_version_defined_without_the_symbol_is_unresolved(versioned: dict[str, Path]) -> None:
    backend = versioned_backend(versioned["v3"], versioned["v3_elsewhere"])
    obj = backend.load("n@1", VERSIONED_USER, "rules.c").obj
    assert obj is not None
    try:
        report, _functions = backend.resolve("n@1", obj)
        assert [(p.kind, p.symbol, p.line) for p in report.errors] == [
            ("unresolved", "foo@VER_3", 5)
        ]
        assert obj.handle is None and mappings(obj.path) == []
        with pytest.raises(OSError, match=r"foo.*VER_3"):
            ctypes.CDLL(str(obj.path), mode=os.RTLD_NOW)
    finally:
        obj.close()


def test_the_table_shows_the_version_bound(versioned: dict[str, Path]) -> None:
    backend = versioned_backend(versioned["v3"], versioned["v3"])
    obj = backend.load("n@1", VERSIONED_USER, "rules.c").obj
    assert obj is not None
    try:
        report, functions = backend.resolve("n@1", obj)
        assert report.ok, report.problems
        assert functions["classify"](b"x") == 1  # foo() of VER_3 returns 3
        table = backend.object_table("n@1", obj)
        assert table["foo"].detail == "libver.so (VER_3)"
    finally:
        obj.close()


def test_a_ready_object_needing_a_missing_version_fails_its_check_in_the_engine(
    tmp_path: Path, versioned: dict[str, Path], engine: Engine
) -> None:
    good = engine.load("n", GOOD_C, "good.c")
    assert engine.check(good).ok
    engine.swap(good)
    link = ("-L", str(versioned["v3"]), "-lver", f"-Wl,-rpath,{versioned['v1']}")
    rules = build(tmp_path, "rules.so", VERSIONED_USER, *link)
    v = engine.load_path("n", rules)
    report = engine.check(v)
    assert [(p.kind, p.symbol) for p in report.errors] == [("missing-version", "foo@VER_3")]
    assert mappings(mapped_file(engine, v)) == []
    assert engine.call("n", "classify", "Win") == 1  # the active version keeps serving


def test_an_unversioned_library_does_not_satisfy_a_version_need(
    tmp_path: Path, versioned: dict[str, Path]
) -> None:
    # glibc lets the version check pass here, then aborts the whole process
    # in an assertion when it binds foo@VER_3 (a child shows it); the check
    # refuses the object instead, without mapping it.
    backend = versioned_backend(versioned["v3"], versioned["plain"])
    obj = backend.load("n@1", VERSIONED_USER, "rules.c").obj
    assert obj is not None
    try:
        report, _functions = backend.resolve("n@1", obj)
        assert [(p.kind, p.symbol) for p in report.errors] == [("missing-version", "foo@VER_3")]
        assert "defines no symbol versions" in report.errors[0].message
        assert obj.handle is None and mappings(obj.path) == []
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import ctypes, os; ctypes.CDLL({str(obj.path)!r}, os.RTLD_NOW)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert child.returncode != 0 and "check_match" in child.stderr
    finally:
        obj.close()
