"""Instructions a real engine executes per socket ``call``, under callgrind.

Run: ``.venv/bin/python benchmarks/socket_call_instructions.py [--calls 2000]``

Starts ``livepatch engine --no-quarantine`` under ``valgrind
--tool=callgrind`` with collection on, connects one idle control client
(so that the data loop asks the control bell, as under the benchmark) and
one caller, warms up with 200 ``call`` round trips on ``classify``, zeroes
the counters (``callgrind_control -z``), makes ``--calls`` more, dumps
(``callgrind_control -d``) and prints the instructions per call. Counts,
not seconds: what one change to the per-call path saves, on a busy
machine too (runs agree within about 2 %; the engine's periodic threads
add a little that scales with the run's length).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from livepatch.bench.control_plane import MESSAGE, _frame, _Line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lpcg-", dir="/tmp") as tmp:
        runtime = os.path.join(tmp, "run")
        env = {**os.environ, "LIVEPATCH_RUNTIME_DIR": runtime, "PYTHONHASHSEED": "0"}
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/out.%p",
            sys.executable,
            "-m",
            "livepatch",
            "engine",
            "--name",
            "cg",
            "--no-quarantine",
        ]
        engine = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not glob.glob(os.path.join(runtime, "*.json")):
                if engine.poll() is not None or time.monotonic() > deadline:
                    print("the engine did not start under valgrind", file=sys.stderr)
                    return 1
                time.sleep(0.2)  # polling a file: there is no event to wait on
            with open(glob.glob(os.path.join(runtime, "*.json"))[0]) as f:
                info = json.load(f)
            # The benchmark's own connection (hello on connect, a frame out
            # and a reply line in).
            control = _Line(info["address"], info.get("token"))
            caller = _Line(info["address"], info.get("token"))
            call = _frame(1, "call", {"slot": "spam", "symbol": "classify", "args": [MESSAGE]})
            for _ in range(200):
                reply = caller.ask(call)
            if "result" not in reply:
                print(f"the call failed: {reply}", file=sys.stderr)
                return 1
            pid = str(engine.pid)
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)
            for _ in range(args.calls):
                caller.ask(call)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
            control.close()
            caller.close()
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(300)
        total = 0
        for path in glob.glob(os.path.join(tmp, f"out.{engine.pid}.*")):  # the dump, not the end
            with open(path) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        total = max(total, int(line.split()[1]))
    print(f"instructions per socket call: {total / args.calls:,.0f} ({args.calls:,} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
