"""The prepared argument conversion of socket calls gives what the general one gives."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from livepatch.convert import CallPlan, ConversionError, arguments_from_json, to_json


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Box:
    corner: Point
    names: set[str] = dataclasses.field(default_factory=set)


def plain(a, b=2, /, c=3):  # type: ignore[no-untyped-def]
    return a


def typed(p: Point, box: Box | None = None, seq: list[tuple[int, int]] | None = None) -> Point:
    return p


def variadic(a: Point, *rest: Point, k: int = 1, **more: Any) -> None: ...


def keyword_needed(a: int, *, k: int) -> None: ...


FUNCTIONS = [plain, typed, variadic, keyword_needed]
CALLS: list[tuple[list[Any], dict[str, Any]]] = [
    ([], {}),
    ([1], {}),
    ([1, 2], {}),
    ([1, 2, 3], {}),
    ([1, 2, 3, 4], {}),
    ([{"x": 1}], {}),
    ([{"x": 1, "tags": ["a", "b"]}], {}),
    ([{"x": 1, "z": 2}], {}),
    ([{"y": 1}], {}),
    (["not an object"], {}),
    ([{"x": 1}, {"corner": {"x": 2}, "names": ["n"]}], {}),
    ([{"x": 1}, {"corner": 5}], {}),
    ([{"x": 1}, None, [[1, 2], [3, 4]]], {}),
    ([{"x": 1}, {"x": 2}, {"x": 3}], {}),
    ([1], {"k": 2}),
    ([], {"a": 1, "k": 2}),
]


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except ConversionError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_the_plan_gives_what_binding_gives(fn: Callable[..., Any]) -> None:
    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)
    plan = CallPlan(fn, hints, signature)
    for args, kwargs in CALLS:
        expected = outcome(
            functools.partial(arguments_from_json, fn, args, kwargs, hints, signature)
        )
        assert outcome(functools.partial(plan.arguments, args, kwargs)) == expected, (args, kwargs)


def test_results_of_known_dataclasses_stay_objects() -> None:
    point = Point(1, 2, ("a",))
    for _ in range(2):  # the second time from the cached field names
        assert to_json(Box(point, {"b", "a"})) == {
            "corner": {"x": 1, "y": 2, "tags": ["a"]},
            "names": ["a", "b"],
        }
