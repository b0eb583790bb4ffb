"""Native objects travel as bytes (issue 15): ``load {"object": base64}``.

Real engine processes and real gcc-built objects of the bundled
``spam_native_*.c`` rules. An object sent as bytes is mapped from memory
(``memfd_create``, ``dlopen`` of ``/proc/self/fd/N``), stored
content-addressed in the state dir like a source, and restored after a
restart, as a ready object loaded by path now is too; restoring a compiled
C version hits the compile cache.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli, start_engine
from test_durability import fill, make_room, small_disk  # noqa: F401 - the fixture

from livepatch import LivepatchError
from livepatch.client import MAX_SENT_OBJECT, Client
from livepatch.errors import TooLarge
from livepatch.examples.spam import rule_path
from livepatch.examples.spam_native import NATIVE_SLOT
from livepatch.native import find_compiler
from livepatch.native_build import cached_build
from livepatch.protocol import InvalidParams, decode_object

COMPILER = find_compiler()
pytestmark = pytest.mark.skipif(
    COMPILER is None and not os.environ.get("CI"),
    reason="no C compiler (cc, gcc, clang or $CC): the native rules are built with it",
)
#: The native demo slot alone, no Python slot work, no quarantine: quick starts.
NATIVE_ONLY = (
    "--slot",
    f"{NATIVE_SLOT}=livepatch.examples.spam_native:SpamNativeRules",
    "--no-quarantine",
)
SPAM = "WIN a FREE cruise, click now!!!"


def build(out: Path, rule: str = "spam_native_v2.c", *flags: str) -> Path:
    """A bundled C rule built into ``out`` with the test's own compiler call."""
    assert COMPILER is not None, "CI needs a C compiler"
    subprocess.run(
        [*COMPILER, "-shared", "-fPIC", "-O2", rule_path(rule), *flags, "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def memfd_maps(pid: int, version: str) -> list[str]:
    """The engine's mappings of a version's memory file."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return [ln for ln in text.splitlines() if ln.endswith(f"/memfd:{version}.so (deleted)")]


def memory_files(pid: int) -> list[str]:
    """The memory files the engine has open (its fds that are memfds)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("/memfd:"):
                found.append(target)
    return found


def native_slot(client: Client) -> dict[str, object]:
    return next(s for s in client.status()["slots"] if s["name"] == NATIVE_SLOT)


def version_ids(client: Client) -> list[str]:
    return [str(v["id"]) for v in native_slot(client)["versions"]]  # type: ignore[attr-defined]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def demo(runtime_dir: Path) -> Iterator[EngineProcess]:
    """The bundled demo engine, its quarantine on (as `livepatch engine` starts it)."""
    proc = start_engine(name="bytes")
    yield proc
    proc.stop()


def test_cli_sends_the_bytes_and_the_engine_serves_them_from_memory(
    demo: EngineProcess, tmp_path: Path
) -> None:
    pid = demo.ready["pid"]
    so = build(tmp_path / "v2.so")
    loaded = run_cli("load", str(so), "--json", "--existing", "bytes")
    assert loaded.returncode == 0, loaded.stderr
    version = json.loads(loaded.stdout)["version"]
    so.unlink()  # the engine never needed the file: it has the bytes
    assert memfd_maps(pid, version) == []  # loaded, not mapped
    with Client.connect("bytes") as client:
        # The check maps it (after the quarantine mapped it in a child, from
        # the same memory file) from /proc/self/fd/N: maps show the memfd.
        assert client.check(version).ok
        assert len(memfd_maps(pid, version)) >= 2
        previous = client.swap(version)["previous"]
        assert client.call(NATIVE_SLOT, "classify", [SPAM]) == {"version": version, "result": 1}
        assert client.call(NATIVE_SLOT, "classify", ["Lunch at noon?"])["result"] == 0
        table = client.symbols(version)
        assert {r.name for r in table.by_letter("T")} >= {"classify", "keyword_hits", "shouting"}
        # The same bytes again are the same version, whichever way they come.
        again = base64.b64encode(build(tmp_path / "again.so").read_bytes()).decode()
        reply = client.request("load", {"slot": NATIVE_SLOT, "object": again})
        assert (reply["version"], reply["new"]) == (version, False)
        # Back, then unload: the memory file leaves the process.
        client.swap(previous)
        assert client.unload(version)["freed"] is True
        assert memfd_maps(pid, version) == []
    assert memory_files(pid) == []


def test_bad_objects_get_one_line_errors_and_change_nothing(
    demo: EngineProcess, tmp_path: Path
) -> None:
    good = base64.b64encode(build(tmp_path / "v2.so").read_bytes()).decode()
    with Client.connect("bytes") as client:
        before = client.status()
        journal = len(client.request("journal", {})["entries"])
        cases = [
            ({"slot": NATIVE_SLOT, "object": "not base64!"}, "bad-params", "is not base64"),
            ({"slot": NATIVE_SLOT, "object": good[:-3]}, "bad-params", "is not base64"),
            (
                {"slot": NATIVE_SLOT, "object": base64.b64encode(b"#!/bin/sh\n").decode()},
                "load-failed",
                "x.so is not an ELF file",
            ),
            (
                {"slot": NATIVE_SLOT, "object": base64.b64encode(b"\x7fELF" + b"\0" * 60).decode()},
                "load-failed",
                "x.so is a damaged ELF file",
            ),
            ({"slot": "spam", "object": good}, "load-failed", "but slot spam takes Python source"),
            (
                {"slot": NATIVE_SLOT, "object": good, "path": "/x.so"},
                "bad-params",
                "exactly one of",
            ),
        ]
        for params, kind, needle in cases:
            with pytest.raises(LivepatchError) as caught:
                client.request("load", {**params, "filename": "x.so"})
            assert caught.value.to_data()["kind"] == kind, params
            assert needle in one_line(caught.value.message), caught.value.message
        assert client.status()["slots"] == before["slots"]
        # Nothing was journaled as a change (refusals are audit records, ok: false).
        entries = client.request("journal", {})["entries"][journal:]
        assert all(not e["ok"] for e in entries if e["op"] == "load")
    # An object too large for one frame is refused by the front end, in one line.
    big = tmp_path / "big.so"
    with big.open("wb") as f:
        f.write(b"\x7fELF")
        f.truncate(MAX_SENT_OBJECT + 1)
    refused = run_cli("load", str(big), "--existing", "bytes")
    assert refused.returncode != 0
    assert "big.so is 12.0 MiB" in one_line(refused.stderr) and "at most" in refused.stderr
    with Client.connect("bytes") as client:
        assert client.status()["slots"] == before["slots"]


def test_the_object_param_is_checked_before_the_engine_sees_it() -> None:
    data = bytes(range(256)) * 3
    text = base64.b64encode(data).decode()
    assert decode_object(text, len(data)) == data
    # The size cap (MAX_OBJECT on the wire): by the text's length, and decoded.
    with pytest.raises(TooLarge, match="over the 100-byte limit"):
        decode_object(text, 100)
    with pytest.raises(TooLarge, match="768 bytes, over the 767-byte limit"):
        decode_object(text, len(data) - 1)
    for bad in ("abc", "ab\ncd==", "ab=c", "-_-_"):
        with pytest.raises(InvalidParams, match="is not base64"):
            decode_object(bad, 100)


def logging_compiler(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """``CC`` that records each run, then runs the real compiler."""
    assert COMPILER is not None, "CI needs a C compiler"
    log = tmp_path / "cc.log"
    cc = tmp_path / "logging-cc"
    cc.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {" ".join(COMPILER)} "$@"\n')
    cc.chmod(0o755)
    return {"CC": str(cc)}, log


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_restart_restores_objects_sent_as_bytes_and_by_path_without_compiling(
    runtime_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env, log = logging_compiler(tmp_path)
    v1_c = f"{NATIVE_SLOT}={rule_path('spam_native_v1.c')}"
    first = start_engine(
        "--state-dir", str(state), *NATIVE_ONLY, "--load", v1_c, name="durable", env=env
    )
    assert runs(log) == 1  # v1, compiled from C at start-up
    sent = build(tmp_path / "sent.so")
    by_path = build(tmp_path / "by_path.so", "spam_native_v1.c")
    with Client.connect("durable") as client:
        v1 = native_slot(client)["active"]
        v2 = client.load_object(NATIVE_SLOT, sent.read_bytes(), "sent.so")
        assert client.check(v2).ok and client.swap(v2)["changed"]
        v3 = client.load_path(NATIVE_SLOT, by_path)
        assert client.check(v3).ok and client.swap(v3)["changed"]
    first.proc.send_signal(signal.SIGKILL)  # acknowledged means durable: no clean stop
    first.proc.wait(10)
    sent.unlink()
    by_path.unlink()
    stored = {p.suffix for p in (state / "sources").iterdir()}
    assert {".so", ".py", ".json"} <= stored

    # No --load this time: everything comes from the state dir.
    second = start_engine("--state-dir", str(state), *NATIVE_ONLY, name="durable", env=env)
    try:
        for version in (v1, v2, v3):
            assert f"restored {version}: re-checked" in second.output()
        assert runs(log) == 1  # v1 came from the compile cache
        with Client.connect("durable") as client:
            assert native_slot(client)["active"] == v3
            assert client.call(NATIVE_SLOT, "classify", [SPAM])["version"] == v3
            assert client.request("rollback", {"slot": NATIVE_SLOT})["active"] == v2
            assert client.call(NATIVE_SLOT, "classify", [SPAM]) == {"version": v2, "result": 1}
            assert memfd_maps(second.ready["pid"], v2)  # restored from the store's bytes
            assert client.swap(v1)["active"] == v1  # restored as retired, so swappable
            assert client.call(NATIVE_SLOT, "classify", [SPAM]) == {"version": v1, "result": 1}
    finally:
        second.stop()


def test_a_full_disk_refuses_an_object_and_leaves_nothing(
    small_disk: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    runtime_dir: Path,
) -> None:
    state = small_disk / "state"
    proc = start_engine("--state-dir", str(state), *NATIVE_ONLY, name="full")
    try:
        pid = proc.ready["pid"]
        data = build(tmp_path / "v2.so").read_bytes()
        with Client.connect("full") as client:
            before = version_ids(client)
            filler = fill(small_disk)
            with pytest.raises(LivepatchError) as caught:
                client.load_object(NATIVE_SLOT, data, "v2.so")
            assert caught.value.to_data()["kind"] == "storage"
            assert "No space left on device" in one_line(caught.value.message)
            assert version_ids(client) == before
            assert not [n for n in os.listdir(state / "sources") if n.endswith((".so", ".tmp"))]
            # No memory file left open for it either.
            assert memory_files(pid) == []
            # With room again the same bytes load, are stored, and serve.
            make_room(filler, 256 * 1024)
            version = client.load_object(NATIVE_SLOT, data, "v2.so")
            assert version not in before
            assert client.check(version).ok and client.swap(version)["changed"]
            assert client.call(NATIVE_SLOT, "classify", [SPAM]) == {"version": version, "result": 1}
            stored = [n for n in os.listdir(state / "sources") if n.endswith(".so")]
            assert stored == [f"{hashlib.sha256(data).hexdigest()}.so"]
    finally:
        proc.stop()


def test_the_compile_cache_is_keyed_by_content_not_by_origin(tmp_path: Path) -> None:
    env, log = logging_compiler(tmp_path)
    compiler = [env["CC"]]
    source = '#include "rule_limits.h"\nint classify(const char *t) { return t[0] > LIMIT; }\n'
    here, there = tmp_path / "here", tmp_path / "there"
    for directory in (here, there):
        directory.mkdir()
        (directory / "rule_limits.h").write_text("#define LIMIT 'V'\n")
    cache = tmp_path / "cache"
    first = cached_build(source, "r.c", cache, compiler=compiler, include_dir=here)
    # The same source and the same header content from elsewhere: the same object.
    assert cached_build(source, "r.c", cache, compiler=compiler, include_dir=there) == first
    assert runs(log) == 1
    # A header that differs there, or was edited since, is a miss, never a stale object.
    (there / "rule_limits.h").write_text("#define LIMIT 'A'\n")
    cached_build(source, "r.c", cache, compiler=compiler, include_dir=there)
    assert runs(log) == 2
    (here / "rule_limits.h").write_text("#define LIMIT 'A'\n")
    shutil.rmtree(there)
    assert cached_build(source, "r.c", cache, compiler=compiler, include_dir=here) == first
    assert runs(log) == 2
    # Without its origin the header cannot be read: a miss (and here, a compile error).
    with pytest.raises(LivepatchError, match=r"limits\.h"):
        cached_build(source, "r.c", cache, compiler=compiler)
