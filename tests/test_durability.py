"""Durable state an operator can trust (issue 11), against real engine processes.

Write-ahead on a real full disk (a small tmpfs), verified journal records,
recovery, one engine per state dir and per name, a state dir trusted only when
it is the engine user's own, and requests that can never break a restart.
Each test backs a row of the README's "What livepatch promises".
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, require, run_cli, start_engine

from livepatch import LivepatchError
from livepatch.client import Client
from livepatch.examples.spam import rule_source
from livepatch.journal import read_journal, write_all

V1, V2 = rule_source("spam_v1.py"), rule_source("spam_v2.py")
#: One Python slot, no native demo (no compiler run), no quarantine: quick starts.
FAST = ("--slot", "spam=livepatch.examples.spam:SpamRules", "--no-quarantine")


def engine(state: Path, *args: str, name: str = "rules") -> EngineProcess:
    return start_engine("--state-dir", str(state), *FAST, *args, name=name)


def stop(proc: EngineProcess, kill: bool = False) -> str:
    """Stop an engine; its whole stderr."""
    if kill:
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
    else:
        proc.stop()
    return proc.output()


def refused(*args: str) -> subprocess.CompletedProcess[str]:
    """``livepatch engine ARGS`` that must exit at once; its result."""
    result = run_cli("engine", *args, timeout=60)
    assert result.returncode == 1, result
    assert result.stdout == ""  # never got as far as being ready
    return result


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def active(client: Client) -> str | None:
    slot = client.status()["slots"][0]
    assert slot["name"] == "spam"
    return str(slot["active"]) if slot["active"] else None


def versions(client: Client) -> list[str]:
    return [v["id"] for v in client.status()["slots"][0]["versions"]]


def deploy(client: Client, source: str, filename: str = "v.py") -> str:
    version = client.load("spam", source, filename)
    assert client.check(version).ok
    client.swap(version)
    return version


def snapshot(state: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``state`` with its mode and bytes."""
    out = {}
    for path in sorted(state.rglob("*")):
        st = path.lstat()
        out[str(path)] = (st.st_mode, path.read_bytes() if path.is_file() else b"")
    return out


# -- a real full disk ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own: a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir(mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        require(f"cannot mount a small tmpfs here ({done.stderr.strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last page; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def make_room(filler: Path, size: int) -> None:
    os.truncate(filler, max(0, filler.stat().st_size - size))


def assert_storage(exc: pytest.ExceptionInfo[LivepatchError]) -> None:
    error = exc.value
    assert error.to_data()["kind"] == "storage"
    assert "\n" not in error.message
    assert "No space left on device" in error.message and "free space in" in error.message


def test_full_disk_changes_nothing_answers_storage_and_restarts(small_disk: Path) -> None:
    state = small_disk / "state"
    first = engine(state)
    with Client.connect() as client:
        v1 = deploy(client, V1, "spam_v1.py")
        v2 = deploy(client, V2, "spam_v2.py")
        filler = fill(small_disk)
        # A new source needs a new file: refused, and nothing is left of it.
        with pytest.raises(LivepatchError) as exc:
            client.load("spam", V1 + "\n# three\n", "three.py")
        assert_storage(exc)
        assert versions(client) == [v1, v2]
        # Swaps journal into the last page's slack until it runs out; each
        # acknowledged one is real, the refused one is not applied.
        target = v1
        for _ in range(40):
            try:
                client.swap(target)
            except LivepatchError as error:
                assert error.to_data()["kind"] == "storage"
                break
            target = v2 if target == v1 else v1
        else:
            raise AssertionError("the journal never ran out of space")
        acknowledged = v2 if target == v1 else v1
        assert active(client) == acknowledged
        assert client.call("spam", "classify", [{"sender": "a@b", "text": "hi"}])["version"] == (
            acknowledged
        )
        # A short write (room for part of a large source) is cut off, and
        # its temporary file removed.
        make_room(filler, 8192)
        big = V1 + "\n" + "# padding\n" * 20_000
        with pytest.raises(LivepatchError) as exc:
            client.load("spam", big, "big.py")
        assert_storage(exc)
        assert [n for n in os.listdir(state / "sources") if n.endswith(".tmp")] == []
        fill(small_disk)
    stop(first, kill=True)

    # Restarted on the full disk: it starts; once the journal has no room
    # for its start record it says it serves read-only.
    for _ in range(3):
        proc = engine(state)
        with Client.connect() as client:
            assert active(client) == acknowledged
            read_only = False
            try:
                client.swap(target)
            except LivepatchError as error:
                assert error.to_data()["kind"] == "storage"
                read_only = True
            assert active(client) == acknowledged
        err = stop(proc)
        if read_only and "serving read-only" in err:
            break
    else:
        raise AssertionError("a restart on the full disk never had to serve read-only")
    assert one_line(next(x for x in err.splitlines() if "read-only" in x))

    # Space freed: the engine writes again, and nothing acknowledged was lost.
    proc = engine(state)
    filler.unlink()
    with Client.connect() as client:
        client.swap(target)
        assert active(client) == target
        assert client.load("spam", V1 + "\n# three\n", "three.py") == "spam@3"
    err = stop(proc)
    # Started read-only (most likely: the slack is gone), it says when that ends.
    assert ("serving read-only" in err) == ("writable again" in err), err
    proc = engine(state)
    try:
        with Client.connect() as client:
            assert active(client) == target
            # spam@3 (loaded, never active) is not restored, and its number is kept
            assert client.load("spam", V2 + "\n# four\n", "four.py") == "spam@4"
    finally:
        err = stop(proc)
    assert "torn last record" not in err and "is damaged" not in err


def test_short_writes_are_continued_to_the_end() -> None:
    # A non-blocking pipe takes at most its capacity per write: the first
    # os.write is certainly short, and write_all must deliver every byte.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    payload = os.urandom(1 << 20)
    received = bytearray()

    def reader() -> None:
        while chunk := os.read(read_end, 1 << 16):
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        write_all(write_end, payload)
    finally:
        os.close(write_end)
        thread.join(30)
        os.close(read_end)
    assert bytes(received) == payload


# -- verifiable records ------------------------------------------------------------------


def two_swaps(state: Path) -> None:
    proc = engine(state)
    with Client.connect() as client:
        deploy(client, V1, "spam_v1.py")
        deploy(client, V2, "spam_v2.py")
        deploy(client, V1 + "\n# three\n", "three.py")  # spam@3
    stop(proc, kill=True)


def test_torn_last_record_is_ignored_with_one_line(runtime_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    two_swaps(state)
    journal = state / "journal.jsonl"
    good = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(b'{"crc":"0badf00d","seq":15,"time":1.0,"op":"sw')  # a crash mid-write
    stray = state / "sources" / f".{'0' * 64}.py.4242.tmp"  # and mid-store
    stray.write_bytes(b"half a source")
    stray.chmod(0o600)
    proc = engine(state)
    with Client.connect() as client:
        assert active(client) == "spam@3"
    err = stop(proc)
    torn = [line for line in err.splitlines() if "torn last record" in line]
    assert len(torn) == 1 and "never acknowledged" in torn[0]
    assert not stray.exists() and "removed 1 temporary file" in err
    assert journal.read_bytes().startswith(good)  # cut off, then appended after
    assert len(read_journal(journal)) == len(good.splitlines()) + 1


@pytest.mark.parametrize("damage", ["flipped byte", "missing record", "bad last record"])
def test_damaged_journal_stops_start_and_recover_sets_the_rest_aside(
    runtime_dir: Path, tmp_path: Path, damage: str
) -> None:
    state = tmp_path / "state"
    two_swaps(state)
    journal = state / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    # The record that swapped spam@2 in: damaged, spam@2 must not be believed.
    at = next(i for i, r in enumerate(records) if r["op"] == "swap" and r["version"] == "spam@2")
    if damage == "flipped byte":
        lines[at] = lines[at].replace(b"spam@2", b"spam@7")
    elif damage == "missing record":
        del lines[at]
    else:
        at = len(lines) - 1  # complete (newline-terminated) but wrong: not torn
        lines[at] = lines[at].replace(b'"ok":true', b'"ok":fals')
    journal.write_bytes(b"".join(lines))
    before = snapshot(state)

    result = refused("--name", "rules", "--state-dir", str(state), *FAST)
    message = one_line(result.stderr)
    assert f"record {at + 1}" in message and "--recover" in message, message
    assert snapshot(state) == before  # refusing touched nothing

    proc = engine(state, "--recover")
    with Client.connect() as client:
        # Everything from the damage on is set aside: the swap it held, and
        # (for the last record, spam@3's swap) only that.
        expected = "spam@1" if damage != "bad last record" else "spam@2"
        assert active(client) == expected
        # Numbers of versions set aside are never given again.
        assert client.load("spam", V2 + "\n# new\n", "new.py") == "spam@4"
    err = stop(proc)
    assert "--recover kept records" in err
    (aside,) = state.glob("journal.set-aside-*.jsonl")
    assert aside.read_bytes() == b"".join(lines[at:])
    assert aside.stat().st_mode & 0o777 == 0o600
    again = engine(state)  # recovered for good: a plain start works
    stop(again)


def test_a_store_without_its_journal_is_refused_and_ids_are_never_reused(
    runtime_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    two_swaps(state)
    (state / "journal.jsonl").unlink()
    result = refused("--name", "rules", "--state-dir", str(state), *FAST)
    message = one_line(result.stderr)
    assert "no journal" in message and "--recover" in message
    proc = engine(state, "--recover")
    try:
        with Client.connect() as client:
            assert active(client) is None  # nothing to restore from
            # spam@1..3 were given to other code: a new load never reuses them
            assert client.load("spam", V2 + "\n# other\n", "other.py") == "spam@4"
    finally:
        stop(proc)


def test_the_old_journal_format_is_refused_with_the_reason(
    runtime_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "journal.jsonl").write_text(
        '{"time": 1.0, "op": "swap", "version": "spam@1", "sha256": null, "peer": {}, '
        '"ok": true, "result": ""}\n'
    )
    result = refused("--name", "rules", "--state-dir", str(state), *FAST)
    message = one_line(result.stderr)
    assert "old journal format" in message and "cannot be verified" in message


def test_a_restart_adds_one_record(runtime_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    two_swaps(state)
    journal = state / "journal.jsonl"
    counts = [len(read_journal(journal))]
    for _ in range(3):
        stop(engine(state))
        counts.append(len(read_journal(journal)))
    assert [b - a for a, b in itertools.pairwise(counts)] == [1, 1, 1]
    assert {e.op for e in read_journal(journal)[-3:]} == {"start"}


# -- validate before journaling ------------------------------------------------------------


NASTY = [
    ("rollback", {"slot": "x@²"}),
    ("rollback", {"slot": "spam\u0661"}),
    ("check", {"version": "spam@" + "9" * 5000}),
    ("check", {"version": "spam@01"}),
    ("check", {"version": "spam@\u0661"}),
    ("swap", {"version": "spam@1", "expect": "spam@²"}),
    ("load", {"slot": "spam", "source": "x = 1\n", "filename": "\ud800.py"}),
    ("load", {"slot": "spam", "source": "x = '\ud800'\n"}),
    ("load", {"slot": "spam", "source": "x = 1\n", "filename": "a\0b.py"}),
    ("load", {"slot": "spam", "path": "/etc/\0passwd"}),
    ("call", {"slot": "spam", "symbol": "classify", "args": [{"text": "\udfff"}]}),
]


def test_nasty_requests_are_refused_and_never_break_a_restart(
    runtime_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    proc = engine(state)
    with Client.connect() as client:
        deploy(client, V1, "spam_v1.py")
        for method, params in NASTY:
            with pytest.raises(LivepatchError) as exc:
                client.request(method, params)
            assert exc.value.to_data()["kind"] == "bad-params", (method, params, exc.value)
        # Well-formed but unknown: refused by the engine, reserves nothing.
        with pytest.raises(LivepatchError):
            client.check("spam@99")
    # A client whose name cannot be encoded is refused at hello (raw frames:
    # our own client would refuse to send it).
    import socket

    info = json.loads((runtime_dir / "rules.json").read_text())
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(info["address"])
        sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"client":"\\ud800"}}\n')
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["error"]["data"]["kind"] == "bad-params"
    # Odd but valid text is accepted, journaled escaped, and restored.
    with Client.connect(client_name="c\x1b[31m\u2028" + "x" * 3000) as client:
        odd = deploy(client, V2, "we\x1bird\nname\u202e.py")
    stop(proc, kill=True)
    restarted = engine(state)  # it starts
    try:
        with Client.connect() as client:
            assert active(client) == odd == "spam@2"
            assert client.load("spam", V2 + "\n# 3\n", "v3.py") == "spam@3"  # not spam@100
    finally:
        stop(restarted)


def test_journal_output_escapes_terminal_controls(runtime_dir: Path, tmp_path: Path) -> None:
    proc = engine(tmp_path / "state")
    try:
        with Client.connect(client_name="evil\x1b]2;pwned\x07\x1b[2J") as client:
            deploy(client, V1, "spam_v1.py")
        result = run_cli("journal")
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "evil\\x1b]2;pwned\\x07\\x1b[2J" in result.stdout
    finally:
        stop(proc)


# -- ownership ----------------------------------------------------------------------------


def test_a_second_engine_on_a_state_dir_exits_at_once_and_touches_nothing(
    runtime_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = engine(state)
    try:
        with Client.connect() as client:
            deploy(client, V1, "spam_v1.py")
        before = snapshot(state)
        for name in ("other", "rules"):
            result = refused("--name", name, "--state-dir", str(state), *FAST)
            message = one_line(result.stderr)
            if name == "other":
                pid = first.ready["pid"]
                assert message.endswith(f"state dir {state} is in use by engine rules (pid {pid})")
            else:
                assert "already running" in message
            assert snapshot(state) == before
        with Client.connect() as client:
            assert active(client) == "spam@1"
    finally:
        stop(first)


TRANSPORTS = {"unix": (), "tcp": ("--listen", "tcp://127.0.0.1:0")}


@pytest.mark.parametrize(
    ("first", "second"), [("tcp", "tcp"), ("tcp", "unix"), ("unix", "tcp"), ("unix", "unix")]
)
def test_an_engine_name_is_unique_whatever_the_transport(
    runtime_dir: Path, first: str, second: str
) -> None:
    running = start_engine(*FAST, *TRANSPORTS[first])
    try:
        before = (runtime_dir / "rules.json").read_bytes()
        result = refused("--name", "rules", *FAST, *TRANSPORTS[second])
        message = one_line(result.stderr)
        assert "an engine named 'rules' is already running" in message
        assert f"pid {running.ready['pid']}" in message
        assert (runtime_dir / "rules.json").read_bytes() == before  # clients still find it
        with Client.connect("rules") as client:
            assert client.status()["pid"] == running.ready["pid"]
    finally:
        running.stop()


# -- trust ---------------------------------------------------------------------------------


@pytest.fixture
def stranger() -> Iterator[int]:
    """The uid of a throwaway local user (``nobody`` if useradd is not there)."""
    require(None if os.geteuid() == 0 else "a foreign-owned directory needs root (chown) here")
    name = f"lp{uuid.uuid4().hex[:8]}"
    made = shutil.which("useradd") is not None and (
        subprocess.run(["useradd", "--no-create-home", name], capture_output=True).returncode == 0
    )
    try:
        # /etc/passwd may be locked by someone else's useradd: nobody will do.
        yield pwd.getpwnam(name if made else "nobody").pw_uid
    finally:
        if made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def test_a_state_dir_of_another_user_is_refused(
    runtime_dir: Path, tmp_path: Path, stranger: int
) -> None:
    # Another user prepares a state dir with a planted journal and source.
    state = tmp_path / "planted"
    two_swaps(state)
    for path in [state, *state.rglob("*")]:
        os.chown(path, stranger, stranger, follow_symlinks=False)
    result = refused("--name", "rules", "--state-dir", str(state), *FAST)
    message = one_line(result.stderr)
    assert f"belongs to uid {stranger}" in message and "use a state dir of your own" in message


def test_symlinks_and_open_permissions_in_a_state_dir_are_refused(
    runtime_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    two_swaps(state)
    journal = state / "journal.jsonl"
    elsewhere = tmp_path / "elsewhere.jsonl"
    journal.rename(elsewhere)
    journal.symlink_to(elsewhere)
    message = one_line(refused("--name", "rules", "--state-dir", str(state), *FAST).stderr)
    assert "journal.jsonl is a symlink" in message
    journal.unlink()
    elsewhere.rename(journal)
    source = next((state / "sources").glob("*.py"))
    source.chmod(0o666)
    message = one_line(refused("--name", "rules", "--state-dir", str(state), *FAST).stderr)
    assert f"{source.name} is writable by others" in message
    source.chmod(0o600)
    linked = tmp_path / "linked-state"
    linked.symlink_to(state)
    message = one_line(refused("--name", "rules", "--state-dir", str(linked), *FAST).stderr)
    assert "is a symlink" in message
    stop(engine(state))  # all put right: it starts


def test_a_new_state_dir_is_created_private(runtime_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    proc = engine(state)
    try:
        with Client.connect() as client:
            deploy(client, V1, "spam_v1.py")
        for path in [state, *state.rglob("*")]:
            mode = path.lstat().st_mode & 0o777
            assert mode & 0o077 == 0, (path, oct(mode))
        assert state.stat().st_mode & 0o777 == 0o700
    finally:
        stop(proc)


# -- restores ------------------------------------------------------------------------------


def test_retired_versions_are_restored_in_quarantine(runtime_dir: Path, tmp_path: Path) -> None:
    # spam@1's body kills whatever process runs it when the variable is set:
    # restored in-process it would take the engine down with it.
    fragile = "import os\nif os.environ.get('LP_FRAGILE'):\n    os._exit(3)\n" + V1
    state = tmp_path / "state"
    slot = ("--slot", "spam=livepatch.examples.spam:SpamRules")
    proc = start_engine("--state-dir", str(state), *slot)
    with Client.connect() as client:
        deploy(client, fragile, "fragile.py")
        deploy(client, V2, "spam_v2.py")  # spam@1 is retired now
    stop(proc, kill=True)
    env = {"LP_FRAGILE": "1"}
    restarted = start_engine("--state-dir", str(state), *slot, env=env)
    try:
        with Client.connect() as client:
            assert active(client) == "spam@2"
            assert "spam@1" not in versions(client)
    finally:
        err = stop(restarted)
    assert "could not restore spam@1" in err and "quarantine" in err


def test_a_fleet_push_on_a_full_disk_is_refused_in_one_line_and_changes_nothing(
    small_disk: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(small_disk))  # the local fleet's store
    member = start_engine(
        "--slot", "spam=livepatch.examples.spam:SpamRules", "--fleet", "df", name="dm"
    )
    try:
        rule = small_disk.parent / "spam_v2.py"
        rule.write_text(rule_source("spam_v2.py"))
        state = small_disk / "livepatch" / "fleets" / "df" / "state.json"
        filler = fill(small_disk)
        refused = run_cli("push", str(rule), "--slot", "spam", "--fleet", "df")
        assert refused.returncode == 1, refused.stderr
        [line] = refused.stderr.splitlines()  # one line, no traceback, not "internal"
        assert "No space left on device" in line and "free some space" in line, line
        assert "internal" not in line
        assert not state.exists()  # nothing was pushed
        with Client.connect("dm") as client:  # the member is up, and unchanged
            assert [s["versions"] for s in client.status()["slots"]] == [[]]
        filler.unlink()
        pushed = run_cli("push", str(rule), "--slot", "spam", "--fleet", "df")
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(state.read_text())["desired"]["spam"]["filename"] == "spam_v2.py"
    finally:
        member.stop()
