"""The call path on both implementations: the C dispatcher and pure Python.

``Engine.call`` in Python is the reference; ``livepatch._speedups`` must be
indistinguishable from it (results, exceptions and their messages, call and
error counters, pins). Every behaviour test runs on both.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import inspect
import os
import sys
import threading
import traceback
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import needs, require

from livepatch import BadState, Engine, UnknownSlot, UnknownVersion
from livepatch import engine as engine_module

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


@pytest.fixture(params=accelerate_params)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    e = make_engine(request.param)
    assert e.accelerated is request.param
    yield e
    e.close()


@pytest.fixture
def both() -> Iterator[tuple[Engine, Engine]]:
    """A C engine and a Python engine in the same state, to compare outcomes."""
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


# -- pins and swaps -------------------------------------------------------------------


def test_swap_is_visible_to_the_next_call(engine: Engine) -> None:
    assert engine.call("rules", "which") == 1
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    engine.swap(v2)
    assert engine.call("rules", "which") == 2
    engine.swap("rules@1")
    assert engine.call("rules", "which") == 1
    assert counters(engine, "rules@1") == (2, 0)
    assert counters(engine, "rules@2") == (1, 0)


def test_pinned_calls_use_the_pinned_version(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    with engine.pin("rules") as rules:
        assert rules.which() == 1
        engine.swap(v2)
        assert engine.call("rules", "which") == 1
        # nested: a rule that calls back into the engine stays on its version
        assert engine.call("rules", "nested", engine, "x") == (1, 1, "x")
        with engine.pin("rules"):
            assert engine.call("rules", "which") == 1
        assert engine.call("rules", "which") == 1
    assert engine.call("rules", "which") == 2
    assert engine.call("rules", "nested", engine, "y") == (2, 2, "y")
    # rules.which(), 3 calls and 2 nested ones on @1; 1 and 1 nested on @2
    assert counters(engine, "rules@1") == (6, 0)
    assert counters(engine, "rules@2") == (3, 0)


def test_a_pin_elsewhere_does_not_pin_this_call(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    entered, release = threading.Event(), threading.Event()

    def hold_a_pin() -> None:
        with engine.pin("rules"):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_pin)
    holder.start()
    try:
        assert entered.wait(10)
        engine.swap(v2)
        assert engine.call("rules", "which") == 2
        with engine.pin("rules"):
            assert engine.call("rules", "which") == 2
    finally:
        release.set()
        holder.join(10)


def test_a_pin_leaves_nothing_behind(engine: Engine) -> None:
    # No flag outlives a pin: once every block is closed the context holds no
    # pin, and engine.call runs exactly the unpinned path it ran before.
    # (None, an empty dict-less None, or the C stack of this context, empty)
    assert not engine._pins.get()
    with pytest.raises(BadState), engine.pin("empty"):
        pass
    assert not engine._pins.get()  # a pin that failed to open changes nothing
    with engine.pin("rules"):
        assert engine._pins.get()
        with engine.pin("rules"):
            assert engine.info("rules@1").in_flight == 2
    assert not engine._pins.get()
    with pytest.raises(ValueError, match="inside"), engine.pin("rules"):
        raise ValueError("inside")
    assert not engine._pins.get()
    assert engine.info("rules@1").in_flight == 0


def test_nested_pins_of_two_slots(engine: Engine) -> None:
    other = engine.load("empty", "def which():\n    return 'other'\n")
    engine.check(other)
    engine.swap(other)
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    with engine.pin("rules") as rules:
        with engine.pin("empty") as inner:
            engine.swap(v2)
            assert inner.which() == "other"
            assert engine.call("rules", "which") == 1  # the outer pin still holds
            with engine.pin("rules") as again:
                assert again.version == rules.version == "rules@1"
        assert engine.call("empty", "which") == "other"
        assert engine.call("rules", "which") == 1
    assert engine.call("rules", "which") == 2


def test_threads_each_see_their_own_pin(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    pinned, swapped = threading.Event(), threading.Event()
    seen: list[tuple[int, int]] = []

    def early() -> None:
        with engine.pin("rules") as rules:
            pinned.set()
            assert swapped.wait(10)
            seen.append((rules.which(), engine.call("rules", "which")))

    thread = threading.Thread(target=early)
    thread.start()
    assert pinned.wait(10)
    engine.swap(v2)
    with engine.pin("rules") as mine:
        assert (mine.which(), engine.call("rules", "which")) == (2, 2)
        assert engine.info("rules@1").in_flight == 1  # the other thread's pin
        assert engine.info(v2).in_flight == 1  # this one
        swapped.set()
        thread.join(10)
    assert seen == [(1, 1)]
    assert engine.info("rules@1").in_flight == 0


def test_asyncio_tasks_keep_their_pin_across_await(engine: Engine) -> None:
    import asyncio

    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)

    async def request(started: asyncio.Event, go: asyncio.Event) -> tuple[int, ...]:
        with engine.pin("rules") as rules:
            started.set()
            await go.wait()
            # engine.call inside the pin, after the await, and in a child
            # task created inside the block (it inherits the context)
            child = asyncio.ensure_future(asyncio.sleep(0, engine.call("rules", "which")))
            return rules.which(), engine.call("rules", "which"), await child

    async def main() -> tuple[tuple[int, ...], tuple[int, ...], int]:
        started1, started2, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(request(started1, go))
        await started1.wait()
        engine.swap(v2)
        second = asyncio.ensure_future(request(started2, go))
        await started2.wait()
        in_flight = engine.info("rules@1").in_flight + engine.info(v2).in_flight
        go.set()
        return await first, await second, in_flight

    first, second, in_flight = asyncio.run(main())
    assert first == (1, 1, 1)
    assert second == (2, 2, 2)
    assert in_flight == 2  # both tasks suspended inside their pin
    assert engine.info("rules@1").in_flight == engine.info(v2).in_flight == 0


def test_a_task_started_inside_a_pin_inherits_it(engine: Engine) -> None:
    import asyncio

    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)

    async def child(step: asyncio.Event, done: asyncio.Event) -> tuple[int, int, int]:
        first = engine.call("rules", "which")  # the creator's pin, still open
        step.set()
        await done.wait()  # meanwhile the creator closes its pin and swaps
        with engine.pin("rules") as rules:
            return first, engine.call("rules", "which"), rules.which()

    async def main() -> tuple[tuple[int, int, int], int]:
        step, done = asyncio.Event(), asyncio.Event()
        with engine.pin("rules"):
            task = asyncio.ensure_future(child(step, done))
            await step.wait()
        engine.swap(v2)
        outside = engine.call("rules", "which")
        done.set()
        return await task, outside

    seen, outside = asyncio.run(main())
    # the child keeps the version it started on, for calls and for its own pin
    assert seen == (1, 1, 1)
    assert outside == 2
    assert engine.info("rules@1").in_flight == 0


def test_a_thread_does_not_inherit_a_pin(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    seen: list[int] = []
    with engine.pin("rules"):
        engine.swap(v2)
        thread = threading.Thread(target=lambda: seen.append(engine.call("rules", "which")))
        thread.start()
        thread.join(10)
        assert engine.call("rules", "which") == 1
    assert seen == [2]


def test_unload_while_pinned(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    with engine.pin("rules") as rules:
        engine.swap(v2)
        result = engine.unload("rules@1")
        assert not result.freed
        assert result.in_flight == 1
        # the request that started on rules@1 finishes on it
        assert rules.which() == 1
        assert engine.call("rules", "which") == 1
        assert engine.call("rules", "nested", engine, "z") == (1, 1, "z")
        assert engine.info("rules@1").in_flight == 1
    assert engine.call("rules", "which") == 2
    assert engine.info("rules@1").in_flight == 0
    del rules  # the block's `as` target is the last holder
    gc.collect()
    assert engine.info("rules@1").freed is True


def test_a_pin_object_serves_nested_and_repeated_blocks(engine: Engine) -> None:
    pin = engine.pin("rules")
    with pin as a, pin as b:
        assert a.version == b.version == "rules@1"
        assert engine.info("rules@1").in_flight == 2
    with pin as c:
        assert c.which() == 1
    assert engine.info("rules@1").in_flight == 0


def test_a_pin_in_an_exit_stack(engine: Engine) -> None:
    import contextlib

    # ExitStack calls type(cm).__enter__(cm) and type(cm).__exit__(cm, ...)
    with contextlib.ExitStack() as stack:
        rules = stack.enter_context(engine.pin("rules"))
        assert rules.which() == 1
        assert engine.info("rules@1").in_flight == 1
    assert engine.info("rules@1").in_flight == 0
    assert isinstance(engine.pin("rules"), contextlib.AbstractContextManager)


def test_pinned_rules_attributes(engine: Engine) -> None:
    with engine.pin("rules") as rules:
        assert repr(rules) == "<PinnedRules rules@1>"
        assert rules.version == "rules@1"
        # the version's own function, no wrapper (each lookup counts a call)
        assert rules.ident is rule(engine, "ident")
        with pytest.raises(AttributeError, match="rules@1 has no callable 'NOT_CALLABLE'"):
            rules.NOT_CALLABLE  # noqa: B018
        with pytest.raises(AttributeError, match="no callable 'absent'"):
            rules.absent  # noqa: B018
        with pytest.raises(AttributeError):
            rules.__wrapped__  # noqa: B018
        with pytest.raises(rule(engine, "boom").__globals__["Boom"]):
            rules.boom(1)
        assert rules.mixed(1, d=4) == (1, 2, 3, (), 4, 5, {})
    # ident, boom and mixed were looked up; boom's error, caught inside the
    # block, never left it (see test_pin_counts.py for where errors count)
    assert counters(engine) == (3, 0)


def test_a_call_that_swaps_its_own_slot(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    # the record the call started from is replaced while the call runs
    assert engine.call("rules", "swap_during", engine, v2) == 1
    assert engine.call("rules", "which") == 2
    assert engine.call("rules", "swap_during", engine, "rules@1") == 2
    assert engine.call("rules", "which") == 1


def test_a_rebound_name_is_called_at_once(engine: Engine) -> None:
    # The C dispatcher caches its last lookups; any change to the namespace
    # (or to what is active) must show on the very next call.
    namespace = engine._version("rules@1").namespace
    assert namespace is not None
    assert engine.call("rules", "ident", 1) == 1
    namespace["ident"] = lambda x: ("rebound", x)
    assert engine.call("rules", "ident", 1) == ("rebound", 1)
    with engine.pin("rules") as rules:
        assert engine.call("rules", "ident", 2) == ("rebound", 2)
    del namespace["ident"]
    with pytest.raises(UnknownVersion, match="no callable 'ident'"):
        engine.call("rules", "ident", 1)
    namespace["ident"] = len
    assert engine.call("rules", "ident", "abc") == 3
    assert rules.version == "rules@1"


def test_two_engines_never_share_a_lookup(engine: Engine) -> None:
    other = make_engine(engine.accelerated, active=RULES_V2)
    try:
        for _ in range(3):
            assert engine.call("rules", "which") == 1
            assert other.call("rules", "which") == 2
            with engine.pin("rules") as mine, other.pin("rules") as theirs:
                assert (mine.which(), theirs.which()) == (1, 2)
                assert (engine.call("rules", "which"), other.call("rules", "which")) == (1, 2)
    finally:
        other.close()


def test_the_class_attribute_serves_both_paths(engine: Engine) -> None:
    # Engine.call and Engine.pin called through the class, as a bound value,
    # and on an engine built without the accelerator.
    assert Engine.call(engine, "rules", "ident", 5) == 5
    call = engine.call
    assert call("rules", "ident", 6) == 6
    with Engine.pin(engine, "rules") as rules:
        assert rules.ident(7) == 7
    pin = engine.pin
    with pin("rules") as rules:
        assert rules.version == "rules@1"
    assert inspect.signature(Engine.call) == inspect.signature(engine_module._python_call)
    assert counters(engine) == (3, 0)


def test_a_rule_that_deletes_itself_while_running(engine: Engine) -> None:
    assert engine.call("rules", "forget_myself") == "gone"
    with pytest.raises(UnknownVersion, match="no callable 'forget_myself'"):
        engine.call("rules", "forget_myself")


def test_runaway_recursion_through_the_engine_is_a_recursion_error(engine: Engine) -> None:
    assert engine.call("rules", "depth", engine, 50) == 50
    with pytest.raises(RecursionError):
        engine.call("rules", "depth", engine, sys.getrecursionlimit() * 2)
    calls, errors = counters(engine)
    # every level that raised counted its error; the 51 good calls did not
    assert calls - errors == 51
    assert engine.call("rules", "depth", engine, 5) == 5


def test_close_unpublishes(engine: Engine) -> None:
    engine.close()
    with pytest.raises(BadState, match="rules has no active version"):
        engine.call("rules", "ident", 1)
    if engine._dispatcher is not None:
        assert engine._dispatcher.fast == {}


def test_a_retired_version_is_freed_on_unload(engine: Engine) -> None:
    engine.call("rules", "ident", 1)
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    engine.swap(v2)
    engine.call("rules", "ident", 1)
    result = engine.unload("rules@1")
    assert result.freed, result.holders


def test_concurrent_calls_while_swapping(engine: Engine) -> None:
    v2 = engine.load("rules", RULES_V2)
    engine.check(v2)
    stop = threading.Event()
    seen: list[set[int]] = []
    failures: list[BaseException] = []

    def caller() -> None:
        mine: set[int] = set()
        try:
            while not stop.is_set():
                for _ in range(50):
                    mine.add(engine.call("rules", "which"))
                    with engine.pin("rules") as rules:
                        pinned = rules.which()
                        assert engine.call("rules", "which") == pinned
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        seen.append(mine)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            engine.swap(v2 if i % 2 == 0 else "rules@1")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures
    assert len(seen) == 8
    assert set().union(*seen) <= {1, 2}
    # every pin block closed: nothing is left in flight on either version
    assert engine.info("rules@1").in_flight == 0
    assert engine.info(v2).in_flight == 0


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
