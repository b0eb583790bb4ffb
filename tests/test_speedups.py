"""The call path on both implementations: the C dispatcher and pure Python.

``Engine.call`` in Python is the reference; ``livepatch._speedups`` must be
indistinguishable from it (results, exceptions and their messages, call and
error counters). Every behaviour test runs on both. Pins and swaps are in
``test_speedups_pins.py``.
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import sys
import traceback
import types
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import needs, require
from speedups_helpers import (
    HAVE_SPEEDUPS,
    NO_SPEEDUPS,
    RULES_V1,
    accelerate_params,
    both_engines,
    counters,
    engine_on,
    make_engine,
    outcome,
    rule,
)

from livepatch import BadState, Engine, UnknownSlot, UnknownVersion


@pytest.fixture(params=accelerate_params)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    yield from engine_on(request.param)


@pytest.fixture
def both() -> Iterator[tuple[Engine, Engine]]:
    yield from both_engines()


def test_the_accelerator_is_importable_where_a_compiler_exists() -> None:
    if os.environ.get("LIVEPATCH_REQUIRE_SPEEDUPS"):
        assert HAVE_SPEEDUPS, NO_SPEEDUPS
    require(None if HAVE_SPEEDUPS else NO_SPEEDUPS)
    for accelerate in (True, False):
        engine = make_engine(accelerate, active=None)
        assert engine.accelerated is accelerate
        assert isinstance(engine.call, types.MethodType) is not accelerate


def test_a_subclass_that_overrides_call_keeps_its_own() -> None:
    class Logged(Engine):
        def call(self, slot: str, symbol: str, /, *args: Any, **kwargs: Any) -> Any:
            return ("logged", super().call(slot, symbol, *args, **kwargs))

    engine = Logged(accelerate=True)
    engine.add_slot("rules")
    v = engine.load("rules", RULES_V1)
    engine.check(v)
    engine.swap(v)
    assert not engine.accelerated
    assert engine.call("rules", "ident", 1) == ("logged", 1)
    engine.close()


# -- results ------------------------------------------------------------------------


def test_results_and_arguments(engine: Engine) -> None:
    assert engine.call("rules", "ident", "x") == "x"
    assert engine.call("rules", "which") == 1
    assert engine.call("rules", "ident", x=7) == 7
    assert engine.call("rules", "mixed", 1, d=4) == (1, 2, 3, (), 4, 5, {})
    assert engine.call("rules", "mixed", 1, 20, 30, 40, 50, d=4, e=6, z=9) == (
        1,
        20,
        30,
        (40, 50),
        4,
        6,
        {"z": 9},
    )
    # slot and symbol are positional-only: the same names can reach the rule
    assert engine.call("rules", "mixed", 1, d=4, slot="s", symbol="y") == (
        1,
        2,
        3,
        (),
        4,
        5,
        {"slot": "s", "symbol": "y"},
    )
    args, kwargs = (1,), {"d": 0}
    assert engine.call("rules", "mixed", *args, **kwargs) == (1, 2, 3, (), 0, 5, {})
    assert counters(engine) == (7, 0)


def test_positional_only_and_keyword_only_rules(engine: Engine) -> None:
    assert engine.call("rules", "posonly", 1, 2) == (1, 2)
    assert engine.call("rules", "kwonly", key="k") == "k"
    with pytest.raises(TypeError, match="positional-only"):
        engine.call("rules", "posonly", 1, b=2)
    with pytest.raises(TypeError, match="positional argument"):
        engine.call("rules", "kwonly", "k")
    # a call that the rule refuses is still a call, and an error
    assert counters(engine) == (4, 2)


def test_the_same_outcomes_on_both(both: tuple[Engine, Engine]) -> None:
    class Sub(str):
        pass

    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("rules", "ident", 1), {}),
        (("rules", "mixed", 1, 2, 3, 4), {"d": 5, "q": 6}),
        (("rules", "posonly", 1, 2), {}),
        (("rules", "posonly", 1), {}),
        (("rules", "kwonly"), {}),
        (("rules", "boom", 1, 2), {}),
        (("rules", "fatal"), {}),
        (("rules", "nope"), {}),
        (("rules", "NOT_CALLABLE"), {}),
        (("rules", "__builtins__"), {}),
        (("rules", 3), {}),
        (("rules", None), {}),
        (("missing", "ident", 1), {}),
        (("empty", "ident", 1), {}),
        ((Sub("rules"), "ident", 2), {}),
        (("rules", Sub("ident"), 3), {}),
        ((["unhashable"], "ident"), {}),
        (("rules",), {}),
        ((), {}),
        (("rules", "ident"), {"x": 1}),
        (("rules", "ident"), {"slot": "rules", "x": 1}),
        (("rules", "ident", 1), {"slot": "rules"}),
        (("rules",), {"symbol": "ident"}),
    ]
    for args, kwargs in cases:
        results = [outcome(functools.partial(e.call, *args, **kwargs)) for e in both]
        assert results[0] == results[1], (args, kwargs)
    assert results[0][0] == "TypeError"
    assert counters(both[0]) == counters(both[1])


def test_lookup_errors_name_what_is_missing(engine: Engine) -> None:
    with pytest.raises(UnknownSlot, match="no slot named 'missing'; slots: rules, empty"):
        engine.call("missing", "ident", 1)
    with pytest.raises(BadState, match="empty has no active version"):
        engine.call("empty", "ident", 1)
    with pytest.raises(UnknownVersion, match="rules@1 has no callable 'nope'"):
        engine.call("rules", "nope")
    with pytest.raises(UnknownVersion, match="rules@1 has no callable 'NOT_CALLABLE'"):
        engine.call("rules", "NOT_CALLABLE")
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'symbol'"):
        engine.call("rules")  # type: ignore[call-arg]
    # lookups that fail are not calls
    assert counters(engine) == (0, 0)


# -- exceptions ---------------------------------------------------------------------


def test_exceptions_propagate_intact_and_are_counted(engine: Engine) -> None:
    boom = rule(engine, "boom")
    with pytest.raises(Exception) as info:
        engine.call("rules", "boom", 1, "two")
    exc = info.value
    assert type(exc).__name__ == "Boom"
    assert type(exc) is boom.__globals__["Boom"]
    assert exc.args == (1, "two")
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames[-1].name == "boom"
    assert frames[-1].filename.startswith("rules.py [rules@1]")
    assert frames[-1].line == "raise Boom(*args)"
    assert exc.__cause__ is None and exc.__context__ is None
    assert counters(engine) == (1, 1)


def test_base_exceptions_are_counted_too(engine: Engine) -> None:
    with pytest.raises(BaseException) as info:
        engine.call("rules", "fatal")
    assert type(info.value).__name__ == "Fatal"
    assert info.value.args == ("stop",)
    assert counters(engine) == (1, 1)


def test_an_exception_while_one_is_being_handled_keeps_its_context(engine: Engine) -> None:
    try:
        raise KeyError("outer")
    except KeyError as outer:
        with pytest.raises(Exception) as info:
            engine.call("rules", "boom")
        assert info.value.__context__ is outer


# -- references ---------------------------------------------------------------------


def test_no_reference_leaks(engine: Engine) -> None:
    ident, boom = rule(engine, "ident"), rule(engine, "boom")
    namespace = ident.__globals__
    arg = object()
    record = engine._fast.get("rules") or engine._active["rules"]

    def refs() -> tuple[int, ...]:
        return tuple(sys.getrefcount(o) for o in (ident, boom, namespace, arg, record))

    for _ in range(10):  # warm up caches and specializations
        engine.call("rules", "ident", arg)
    before = refs()
    for _ in range(100_000):
        engine.call("rules", "ident", arg)
    for _ in range(1_000):
        engine.call("rules", "ident", x=arg)
        with pytest.raises(boom.__globals__["Boom"]):
            engine.call("rules", "boom", arg)
        with pytest.raises(UnknownVersion):
            engine.call("rules", "nope", arg)
    with engine.pin("rules"):
        for _ in range(1_000):
            engine.call("rules", "ident", arg)
    gc.collect()
    assert refs() == before


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_million_calls_do_not_grow_memory(engine: Engine) -> None:
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    call, arg = engine.call, object()
    for _ in range(10_000):
        call("rules", "ident", arg)
    before = rss()
    for _ in range(1_000_000):
        call("rules", "ident", arg)
    # one leaked int or tuple per call would be tens of megabytes
    assert rss() - before < 4 * 1024 * 1024


def test_an_engine_is_collected(engine: Engine) -> None:
    # engine -> dispatcher -> bound Engine.call -> engine: a cycle for the GC
    probe = make_engine(engine.accelerated)
    probe.call("rules", "ident", 1)
    probe.close()
    ref = weakref.ref(probe)
    del probe
    gc.collect()
    assert ref() is None


# -- the C type itself --------------------------------------------------------------


@needs(None if HAVE_SPEEDUPS else NO_SPEEDUPS)
def test_dispatcher_construction_and_fields() -> None:
    import contextvars

    from livepatch._speedups import Dispatcher

    var: contextvars.ContextVar[Any] = contextvars.ContextVar("pins", default=None)
    fast: dict[str, Any] = {}
    d = Dispatcher(fast, var, print, KeyError)
    assert (d.fast, d.pins, d.fallback, d.__wrapped__) == (fast, var, print, print)
    with pytest.raises(AttributeError):
        d.fast = {}  # type: ignore[misc]
    with pytest.raises(TypeError, match="fast must be a dict"):
        Dispatcher([], var, print, KeyError)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ContextVar"):
        Dispatcher(fast, None, print, KeyError)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        Dispatcher(fast, var, None, KeyError)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        type("Sub", (Dispatcher,), {})
    assert "active_slots=0" in repr(d)
    # pin of a slot with nothing published: the engine's error, at once
    with pytest.raises(KeyError, match="nope"):
        d.pin("nope")


@needs(None if HAVE_SPEEDUPS else NO_SPEEDUPS)
def test_dispatcher_reads_only_well_formed_records() -> None:
    import contextvars
    import itertools

    from livepatch._speedups import Dispatcher, Rules

    var: contextvars.ContextVar[Any] = contextvars.ContextVar("pins", default=None)
    handed: list[tuple[Any, ...]] = []

    def fallback(*args: Any, **kwargs: Any) -> str:
        handed.append((args, kwargs))
        return "fallback"

    calls, errors = itertools.count(), itertools.count()
    namespace = {"f": lambda *a, **k: (a, k), "n": 1}
    fast: dict[str, Any] = {
        "ok": Rules(None, "ok@1", namespace, calls, errors),
        "tuple": (namespace, calls, errors),
    }
    d = Dispatcher(fast, var, fallback, KeyError)
    assert d("ok", "f", 1, k=2) == ((1,), {"k": 2})
    assert next(calls) == 1
    for slot in ("tuple", "absent"):
        assert d(slot, "f", 1, k=2) == "fallback"
        assert handed.pop() == ((slot, "f", 1), {"k": 2})
    assert d("ok", "n") == "fallback"
    assert d("ok") == "fallback"  # type: ignore[call-arg]
    assert handed == [(("ok", "n"), {}), (("ok",), {})]

    # a value of the variable the C pin did not store: Python decides. (The
    # dispatcher is the variable's only setter once made: it caches what it
    # read until the thread switches context, so the value comes with one.)
    def foreign() -> Any:
        var.set({"ok": object()})
        return d("ok", "f")

    assert contextvars.copy_context().run(foreign) == "fallback"
    # the C pin: pinned in this context, then not
    with d.pin("ok") as rules:
        assert len(var.get()) == 1 and var.get().get("ok") is rules
        assert var.get().get("other") is None
        fast["ok"] = Rules(None, "ok@2", {"f": lambda: "two"}, calls, errors)
        assert d("ok", "f") == ((), {})
    assert d("ok", "f") == "two"
    assert len(var.get()) == 0
    # through tp_call (PyVectorcall_Call) as well as vectorcall
    call_slot: Any = type(d).__call__
    assert call_slot(d, "ok", "f") == "two"
    assert next(calls) == 5 and next(errors) == 0


def test_the_signature_is_the_reference_one(engine: Engine) -> None:
    assert inspect.signature(engine.call) == inspect.signature(Engine(accelerate=False).call)
    assert Engine.call.__doc__ and "hot path" in Engine.call.__doc__


@needs(None if HAVE_SPEEDUPS else NO_SPEEDUPS)
def test_the_c_counter_counts_in_place_and_through_next() -> None:
    import contextvars

    from livepatch._speedups import Counter, Dispatcher, Rules

    counter = Counter()
    assert (next(counter), next(counter), counter.value) == (0, 1, 2)
    assert iter(counter) is counter and repr(counter) == "Counter(2)"
    with pytest.raises(TypeError):
        Counter(5)  # type: ignore[call-arg]
    calls, errors = Counter(), Counter()

    def boom() -> None:
        raise KeyError("x")

    fast = {"s": Rules(None, "s@1", {"f": lambda: "ok", "boom": boom}, calls, errors)}
    pins: contextvars.ContextVar[Any] = contextvars.ContextVar("pins", default=None)
    d = Dispatcher(fast, pins, lambda *a, **k: "fallback", KeyError)
    for _ in range(1000):
        assert d("s", "f") == "ok"
    with pytest.raises(KeyError, match="x"):
        d("s", "boom")
    # the dispatcher advanced them in place: no next() was called here
    assert (calls.value, errors.value) == (1001, 1)


@pytest.mark.parametrize("accelerate", [True, False], ids=["c", "python"])
def test_stats_read_the_same_whatever_the_counter(accelerate: bool) -> None:
    if accelerate:
        require(None if HAVE_SPEEDUPS else NO_SPEEDUPS)
    engine = make_engine(accelerate)
    for _ in range(7):
        engine.call("rules", "which")
    with engine.pin("rules") as rules:
        rules.which()
    info = engine.info("rules@1")
    engine.close()
    assert (info.calls, info.errors) == (8, 0)
