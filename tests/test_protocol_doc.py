"""docs/protocol.md's example exchanges, replayed against a real engine."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from conftest import EngineProcess

from livepatch.runtime import find_engine

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
ANY = "…"


def exchanges(send: str = "-->", receive: str = "<--") -> list[tuple[str, str]]:
    """Every ``send`` / ``receive`` line of the document, in order."""
    out = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith((f"{send} ", f"{receive} ")):
            out.append((line[:3], line[4:]))
    return out


def replay(address: str, script: list[tuple[str, str]], send: str = "-->") -> None:
    """Send each ``send`` line in order on one connection; every other line
    is the documented reply, which the real one must match."""
    buffer = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(address)
        for direction, text in script:
            if direction == send:
                sock.sendall(text.encode("utf-8") + b"\n")
                continue
            while b"\n" not in buffer:
                buffer += sock.recv(65536)
            line, buffer = buffer.split(b"\n", 1)
            problems = matches(json.loads(text), json.loads(line))
            assert not problems, f"{text}\n  got {line.decode()}\n  " + "\n  ".join(problems)


def matches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Differences between a documented value (with ``…`` wildcards) and a real one."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        open_ended = expected.get(ANY) == ANY
        keys = set(expected) - {ANY}
        problems = []
        if not open_ended and set(actual) != keys:
            problems.append(f"{path}: members {sorted(actual)} != documented {sorted(keys)}")
        for key in keys:
            if key not in actual:
                problems.append(f"{path}.{key}: missing")
            else:
                problems += matches(expected[key], actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        open_ended = bool(expected) and expected[-1] == ANY
        items = expected[:-1] if open_ended else expected
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return [f"{path}: {len(actual)} items, documented {len(items)}"]
        problems = []
        for i, item in enumerate(items):
            problems += matches(item, actual[i], f"{path}[{i}]")
        return problems
    if expected != actual:
        return [f"{path}: {actual!r} != documented {expected!r}"]
    return []


def test_documented_exchanges_replay(engine_proc: EngineProcess) -> None:
    script = exchanges()
    assert sum(1 for d, _ in script if d == "-->") >= 20
    documented_methods = {json.loads(t)["method"] for d, t in script if d == "-->"}
    assert documented_methods >= {
        "hello",
        "status",
        "load",
        "check",
        "swap",
        "rollback",
        "purge",
        "unload",
        "symbols",
        "diff",
        "call",
        "subscribe",
        "journal",
        "source",
    }
    replay(find_engine().address, script)
