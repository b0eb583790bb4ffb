"""What the call-path tests share: the rules both implementations serve,
and engines on either (``test_speedups.py``, ``test_speedups_pins.py``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import needs, require

from livepatch import Engine

HAVE_SPEEDUPS = importlib.util.find_spec("livepatch._speedups") is not None
NO_SPEEDUPS = "livepatch._speedups was not built (no C compiler at install time?)"

RULES_V1 = """\
VERSION = 1
NOT_CALLABLE = 42


def ident(x):
    return x


def which():
    return VERSION


def mixed(a, b=2, /, c=3, *rest, d, e=5, **extra):
    return (a, b, c, rest, d, e, extra)


def posonly(a, b, /):
    return (a, b)


def kwonly(*, key):
    return key


class Boom(Exception):
    pass


def boom(*args):
    raise Boom(*args)


class Fatal(BaseException):
    pass


def fatal():
    raise Fatal("stop")


def nested(engine, x):
    return (VERSION, engine.call("rules", "which"), x)


def forget_myself():
    global forget_myself
    del forget_myself
    return "gone"


def swap_during(engine, target):
    engine.swap(target)
    return VERSION


def depth(engine, n):
    return 0 if n == 0 else 1 + engine.call("rules", "depth", engine, n - 1)
"""
RULES_V2 = RULES_V1.replace("VERSION = 1", "VERSION = 2")

accelerate_params = [
    pytest.param(True, id="c", marks=needs(None if HAVE_SPEEDUPS else NO_SPEEDUPS)),
    pytest.param(False, id="python"),
]


def make_engine(accelerate: bool, *, active: str | None = RULES_V1) -> Engine:
    engine = Engine(name=f"speedups-{accelerate}", accelerate=accelerate)
    engine.add_slot("rules")
    engine.add_slot("empty")
    if active is not None:
        version = engine.load("rules", active, "rules.py")
        assert engine.check(version).ok, engine.report(version)
        engine.swap(version)
    return engine


def engine_on(accelerate: bool) -> Iterator[Engine]:
    """The ``engine`` fixture's body: an engine on one implementation."""
    e = make_engine(accelerate)
    assert e.accelerated is accelerate
    yield e
    e.close()


def both_engines() -> Iterator[tuple[Engine, Engine]]:
    """The ``both`` fixture's body: a C engine and a Python engine in the same
    state, to compare outcomes."""
    require(None if HAVE_SPEEDUPS else NO_SPEEDUPS)
    fast, slow = make_engine(True), make_engine(False)
    assert fast.accelerated and not slow.accelerated
    yield fast, slow
    fast.close()
    slow.close()


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except BaseException as exc:  # noqa: BLE001 - the outcome is what we compare
        return (type(exc).__qualname__, (str(exc), getattr(exc, "data", None)))


def counters(engine: Engine, version: str = "rules@1") -> tuple[int, int]:
    info = engine.info(version)
    return info.calls, info.errors


def rule(engine: Engine, name: str, version: str = "rules@1") -> Any:
    return engine.function(version, name)


# -- the build ------------------------------------------------------------------
