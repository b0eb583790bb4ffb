"""Pins and swaps on both implementations: a call reads the active version
once; a pin holds one version for a whole request, per thread and per
asyncio task, nested and across ``await``; unload while pinned.
"""

from __future__ import annotations

import gc
import inspect
import sys
import threading
from collections.abc import Iterator

import pytest
from speedups_helpers import (
    RULES_V2,
    accelerate_params,
    counters,
    engine_on,
    make_engine,
    rule,
)

from livepatch import BadState, Engine, UnknownVersion
from livepatch import engine as engine_module


@pytest.fixture(params=accelerate_params)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    yield from engine_on(request.param)


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
