"""The quarantine sees what a module body changed, and dies with its engine:
against a real ``livepatch engine`` and its real quarantine children."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import start_engine

from livepatch.client import Client, ConnectionLost
from livepatch.errors import LivepatchError, LoadFailed
from livepatch.examples.spam import rule_source
from livepatch.processstate import descendants

MSG = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}
#: A marker in the command line of the processes the bodies leave behind.
SLEEPER = "3600.25"

SIDE_EFFECTS = {
    "detached grandchild": (
        "import os\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 256)\n"
        f"        os.execvp('sleep', ['sleep', '{SLEEPER}'])\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n",
        "left 1 process(es) running",
    ),
    "new session child": (
        "import subprocess\n"
        f"subprocess.Popen(['sleep', '{SLEEPER}'], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
        "                 stderr=subprocess.DEVNULL)\n",
        "left 1 process(es) running",
    ),
    "fds 0 and 1 closed": ("import os\nos.close(0)\nos.close(1)\n", "closed fd 0; closed fd 1"),
    "fd 2 replaced": ("import os\nos.dup2(os.pipe()[1], 2)\n", "replaced fd 2"),
    "builtins.min rebound": ("import builtins\nbuiltins.min = max\n", "rebound builtins.min"),
    "builtin added": ("import builtins\nbuiltins.helper = len\n", "added builtins.helper"),
    "host module replaced": (
        "import sys, types\nsys.modules['json'] = types.ModuleType('json')\n",
        "replaced sys.modules['json']",
    ),
    "host module removed": ("import sys\ndel sys.modules['json']\n", "removed sys.modules['json']"),
    "host attribute rebound": ("import inspect\ninspect.getdoc = repr\n", "rebound inspect.getdoc"),
    "recursion limit": (
        "import sys\nsys.setrecursionlimit(100_000)\n",
        "set the recursion limit 1000 -> 100000",
    ),
    "switch interval": ("import sys\nsys.setswitchinterval(0.5)\n", "set the switch interval"),
    "signal handler": (
        "import signal\nsignal.signal(signal.SIGUSR1, lambda *a: None)\n",
        "changed the SIGUSR1 handler",
    ),
}


def sleepers() -> list[int]:
    """Processes whose command line carries :data:`SLEEPER`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if SLEEPER.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_each_side_effect_of_a_body_fails_the_load(runtime_dir: Path) -> None:
    proc = start_engine("--load-timeout", "20")
    try:
        with Client.connect() as client:
            for name, (body, reason) in SIDE_EFFECTS.items():
                with pytest.raises(LoadFailed) as info:
                    client.load("spam", body + rule_source("spam_v2.py"), "effects.py")
                message = info.value.message
                assert reason in message and "changed the process" in message, (name, message)
                assert "\n" not in message
                assert info.value.data["reason"] == "side-effect"
            # Nothing was loaded, nothing was left running, and the engine
            # answers as before; a clean body still loads.
            assert not sleepers()
            slot = client.status()["slots"][0]
            assert [v["id"] for v in slot["versions"]] == ["spam@1"]
            assert client.call("spam", "classify", [MSG])["version"] == "spam@1"
            clean = client.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
            assert client.check(clean).ok
    finally:
        proc.stop()


def _quarantine_children(engine_pid: int) -> list[int]:
    found = []
    for pid in descendants(engine_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"livepatch.quarantine" in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def test_quarantine_child_dies_with_a_killed_engine(runtime_dir: Path) -> None:
    proc = start_engine("--load-timeout", "120")
    pid = proc.proc.pid
    errors: list[BaseException] = []

    def load_forever() -> None:
        try:
            with Client.connect() as client:
                client.load("spam", "while True:\n    pass\n", "spin.py")
        except (LivepatchError, ConnectionLost, OSError) as exc:
            errors.append(exc)

    loader = threading.Thread(target=load_forever, daemon=True)
    loader.start()
    try:
        deadline = time.monotonic() + 30
        children: list[int] = []
        while not children and time.monotonic() < deadline:
            children = _quarantine_children(pid)
            time.sleep(0.05)
        assert children, "no quarantine child appeared"
        os.kill(pid, signal.SIGKILL)
        proc.proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(child) for child in children), "the quarantine child outlived it"
        loader.join(20)
        assert errors  # the client saw its engine go, it was not left waiting
    finally:
        proc.stop()


def test_the_time_limit_is_the_bodys_not_the_childs_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting the child and importing the engine takes 0.1 - 0.3 s on a
    # quiet machine and far more on a loaded one; a 0.1 s limit on the body
    # must still pass a trivial body and fail one that loops. The child's
    # start-up is made surely longer than the limit: its interpreter sleeps
    # 0.3 s at start (a sitecustomize on its path), however fast the machine.
    from livepatch.quarantine import Quarantine

    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(0.3)\n")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), path])))
    quarantine = Quarantine(timeout_s=0.1, warm=False)  # each run starts its child
    started = time.monotonic()
    quarantine.run("def f(x):\n    return x\n", "quick.py", None)
    assert time.monotonic() - started > 0.1  # start-up really was longer than the limit
    with pytest.raises(LoadFailed) as info:
        quarantine.run("while True:\n    pass\n", "loop.py", None)
    assert info.value.data["reason"] == "timeout"
    assert "did not finish within 0.1 s" in info.value.message


def test_a_warm_spare_child_serves_the_next_load_and_dies_with_its_engine(
    runtime_dir: Path, tmp_path: Path
) -> None:
    from livepatch.quarantine import Quarantine, spare_pid

    quarantine = Quarantine(timeout_s=5)
    quarantine.run("X = 1\n", "first.py", None)
    deadline = time.monotonic() + 60
    while spare_pid() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    waiting = spare_pid()
    assert waiting is not None, "no spare child was started after a load"
    # The next load runs in that very child (the body says where it ran)...
    where = tmp_path / "pid"
    quarantine.run(f"import os\nopen({str(where)!r}, 'w').write(str(os.getpid()))\n", "b.py", None)
    assert int(where.read_text()) == waiting
    # ...with the limits of its own request, not of the load that ordered it.
    with pytest.raises(LoadFailed, match=r"did not finish within 0\.3 s"):
        Quarantine(timeout_s=0.3).run("while True:\n    pass\n", "loop.py", None)

    # An engine's spare dies with the engine, like any quarantine child.
    proc = start_engine()
    try:
        with Client.connect() as client:
            client.load("spam", rule_source("spam_v2.py"), "spam_v2.py")
        deadline = time.monotonic() + 60
        children: list[int] = []
        while not children and time.monotonic() < deadline:
            children = _quarantine_children(proc.proc.pid)
            time.sleep(0.05)
        assert children, "the engine kept no spare quarantine child"
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(child) for child in children), "the spare outlived its engine"
    finally:
        proc.stop()
