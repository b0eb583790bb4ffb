"""What a pin block counts, now that ``rules.f`` is the version's own function.

``rules.f`` hands out the function itself (no counting wrapper, so a pinned
call costs what a direct call costs). A call is counted when the name is
looked up; an error when an exception raised in the version's code leaves
the slot's outermost block, once, and not again when ``engine.call`` inside
the block counted it. A function kept after its block is the version's
function: not counted again, unpinned, yet in flight while it runs.
Every test runs on the C path and on the pure-Python fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from test_speedups import accelerate_params

from livepatch import Engine

RULES = """\
VERSION = 1


def which():
    return VERSION


class Boom(Exception):
    pass


def boom(*args):
    raise Boom(*args)


def reraise_other():
    try:
        boom()
    except Boom:
        raise KeyError("rule") from None


def through_engine(engine):
    return (VERSION, engine.call("rules", "which"))


def wait_for(started, go):
    started.set()
    assert go.wait(10)
    return VERSION
"""


@pytest.fixture(params=accelerate_params)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    e = Engine(name=f"pin-counts-{request.param}", accelerate=request.param)
    assert e.accelerated is request.param
    e.add_slot("rules")
    v = e.load("rules", RULES, "rules.py")
    assert e.check(v).ok
    e.swap(v)
    yield e
    e.close()


def counts(engine: Engine, version: str = "rules@1") -> tuple[int, int]:
    info = engine.info(version)
    return info.calls, info.errors


def boom_type(engine: Engine) -> type[BaseException]:
    return engine.function("rules@1", "boom").__globals__["Boom"]  # type: ignore[no-any-return]


def second_version(engine: Engine) -> str:
    v2 = engine.load("rules", RULES.replace("VERSION = 1", "VERSION = 2"), "rules.py")
    assert engine.check(v2).ok
    return v2


def test_rules_f_is_the_version_function_counted_per_lookup(engine: Engine) -> None:
    with engine.pin("rules") as rules:
        f = rules.which
        assert f is engine.function("rules@1", "which")
        assert counts(engine) == (1, 0)  # counted by the lookup, before any call
        assert f() == f() == 1
        assert counts(engine) == (1, 0)  # a kept reference is not counted again
        assert rules.which() == 1
        assert counts(engine) == (2, 0)


def test_an_error_leaving_the_block_counts_once(engine: Engine) -> None:
    with pytest.raises(boom_type(engine)), engine.pin("rules") as rules:
        rules.boom(1)
    assert counts(engine) == (1, 1)
    # through nested blocks of the slot, and a block of the same pin object
    pin = engine.pin("rules")
    with pytest.raises(boom_type(engine)), pin as outer, pin as inner:
        assert outer.version == inner.version
        inner.boom(2)
    assert counts(engine) == (2, 2)
    assert engine.info("rules@1").in_flight == 0


def test_an_error_caught_inside_the_block_is_not_a_failed_request(engine: Engine) -> None:
    with engine.pin("rules") as rules:
        with pytest.raises(boom_type(engine)):
            rules.boom()
        assert rules.which() == 1
    assert counts(engine) == (2, 0)


def test_errors_the_host_raises_are_not_the_versions(engine: Engine) -> None:
    with pytest.raises(ValueError, match="host"), engine.pin("rules") as rules:
        rules.which()
        raise ValueError("host")
    assert counts(engine) == (1, 0)
    # the version's code raised it, even as another exception: its error
    with pytest.raises(KeyError), engine.pin("rules") as rules:
        rules.reraise_other()
    assert counts(engine) == (2, 1)


def test_engine_call_inside_the_block_is_not_counted_twice(engine: Engine) -> None:
    with pytest.raises(boom_type(engine)), engine.pin("rules"):
        engine.call("rules", "boom")
    assert counts(engine) == (1, 1)
    # nested: counted once by the call, not again by either block
    with pytest.raises(boom_type(engine)), engine.pin("rules"), engine.pin("rules"):
        engine.call("rules", "boom")
    assert counts(engine) == (2, 2)
    # caught inside: engine.call counted it, as outside a pin
    with engine.pin("rules"), pytest.raises(boom_type(engine)):
        engine.call("rules", "boom")
    assert counts(engine) == (3, 3)
    # a later rules.f error in the same block is a new one, and counts
    with pytest.raises(boom_type(engine)), engine.pin("rules") as rules:
        with pytest.raises(boom_type(engine)):
            engine.call("rules", "boom")
        rules.boom()
    assert counts(engine) == (5, 5)


def test_an_exit_stack_counts_like_a_with_statement(engine: Engine) -> None:
    # ExitStack calls type(cm).__exit__(cm, type, value, traceback)
    with pytest.raises(boom_type(engine)), contextlib.ExitStack() as stack:
        rules = stack.enter_context(engine.pin("rules"))
        rules.boom()
    assert counts(engine) == (1, 1)
    assert engine.info("rules@1").in_flight == 0


def test_a_function_kept_after_the_block(engine: Engine) -> None:
    with engine.pin("rules") as rules:
        kept = rules.through_engine
        assert kept(engine) == (1, 1)  # inside: engine.call sees the pin
    v2 = second_version(engine)
    engine.swap(v2)
    # after: still the version's own code, but unpinned, and not counted
    assert kept(engine) == (1, 2)
    # one lookup and one pinned engine.call on rules@1; the call after, on v2
    assert counts(engine) == (2, 0)
    assert counts(engine, v2) == (1, 0)
    # while it runs, unload counts it in flight (from the thread's stack)
    started, go = threading.Event(), threading.Event()
    engine.swap("rules@1")
    with engine.pin("rules") as rules:
        old = rules.wait_for
    engine.swap(v2)
    seen: list[int] = []
    thread = threading.Thread(target=lambda fn: seen.append(fn(started, go)), args=(old,))
    thread.start()
    assert started.wait(10)
    result = engine.unload("rules@1")
    assert result.in_flight == 1 and not result.freed
    go.set()
    thread.join(10)
    assert seen == [1]
    assert engine.info("rules@1").in_flight == 0
    del old, rules, kept
    gc.collect()
    assert engine.info("rules@1").freed is True


def test_an_error_after_unload_counts_on_the_pinned_version(engine: Engine) -> None:
    v2 = second_version(engine)
    with pytest.raises(boom_type(engine)), engine.pin("rules") as rules:
        engine.swap(v2)
        assert engine.unload("rules@1").in_flight == 1
        rules.boom()
    assert counts(engine) == (1, 1)
    assert counts(engine, v2) == (0, 0)


def test_threads_count_their_own_blocks(engine: Engine) -> None:
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def request(n: int) -> None:
        barrier.wait(10)
        for _ in range(50):
            try:
                with engine.pin("rules") as rules:
                    rules.which()
                    if n % 2:
                        rules.boom()
            except Exception as exc:  # noqa: BLE001 - counted below
                failures.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(failures) == 100
    assert counts(engine) == (300, 100)
    assert engine.info("rules@1").in_flight == 0


def test_asyncio_tasks_count_their_own_blocks_across_await(engine: Engine) -> None:
    boom = boom_type(engine)

    async def request(fail: bool, go: asyncio.Event) -> int:
        with engine.pin("rules") as rules:
            await go.wait()
            if fail:
                rules.boom()
            return rules.which()  # type: ignore[no-any-return]

    async def main() -> list[Any]:
        go = asyncio.Event()
        tasks = [asyncio.ensure_future(request(n % 2 == 1, go)) for n in range(6)]
        await asyncio.sleep(0)
        in_flight = engine.info("rules@1").in_flight
        go.set()
        return [in_flight, *await asyncio.gather(*tasks, return_exceptions=True)]

    in_flight, *results = asyncio.run(main())
    assert in_flight == 6  # every task suspended inside its pin
    assert [type(r) for r in results] == [int, boom] * 3
    assert counts(engine) == (6, 3)
    assert engine.info("rules@1").in_flight == 0


def test_a_rebound_name_shows_on_the_next_lookup(engine: Engine) -> None:
    namespace = engine._version("rules@1").namespace
    assert namespace is not None
    with engine.pin("rules") as rules:
        assert rules.which() == 1
        namespace["which"] = lambda: "rebound"
        assert rules.which() == "rebound"
        del namespace["which"]
        with pytest.raises(AttributeError, match="rules@1 has no callable 'which'"):
            rules.which  # noqa: B018
        assert rules.version == "rules@1"  # the object's own attributes win
    assert counts(engine) == (2, 0)
