"""The fast path of ``validate_params`` (livepatch/protocol/schema.py,
``_surely_valid``) accepts only what the full checks accept: generated
params, valid and invalid alike, for every method of the table."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from livepatch.protocol.schema import METHODS, _surely_valid, validate_params

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.sampled_from(["spam", "spam@1", "spam@01", "spam@", "9lives", "a" * 70, "x\0y", ""]),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    method = draw(st.sampled_from(sorted(METHODS)))
    names = sorted(METHODS[method])
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    params = {name: draw(JSON_VALUES) for name in chosen}
    if draw(st.booleans()):
        params[draw(st.sampled_from(["bogus", "Slot", "args "]))] = 1
    return method, params


def _full_check_passes(method: str, params: dict[str, Any]) -> bool:
    try:
        validate_params(method, params)  # not json_clean: the fast path is not taken
    except (ValueError, TypeError):
        return False
    return True


@settings(max_examples=3000, deadline=None)
@given(requests())
def test_the_fast_path_accepts_nothing_the_full_checks_refuse(
    request: tuple[str, dict[str, Any]],
) -> None:
    method, params = request
    if _surely_valid(method, params):
        assert _full_check_passes(method, params)


def test_the_fast_path_takes_the_usual_rule_call_and_returns_a_copy() -> None:
    params = {"slot": "spam", "symbol": "classify", "args": [{"text": "hi"}], "timeout_s": 2}
    assert _surely_valid("call", params)
    checked = validate_params("call", params, json_clean=True)
    assert checked == params and checked is not params


def test_what_the_fast_path_declines_gets_the_full_checks_words() -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("call", {"symbol": "f"}, "needs exactly one of 'slot' or 'version'"),
        ("call", {"slot": "spam", "version": "spam@1", "symbol": "f"}, "exactly one of"),
        ("call", {"slot": "9lives", "symbol": "f"}, "is not a slot name"),
        ("call", {"slot": "spam", "symbol": "f", "timeout_s": 0}, "must be >= 0.001"),
        ("call", {"slot": "spam", "symbol": "f", "timeout_s": True}, "must be a number"),
        ("swap", {"version": "spam@01"}, "is not a version id"),
        ("call", {"slot": "spam", "symbol": "f", "bogus": 1}, "unknown param 'bogus'"),
    ]
    for method, params, words in cases:
        assert not _surely_valid(method, params)
        try:
            validate_params(method, params, json_clean=True)
        except (ValueError, TypeError) as exc:
            assert words in str(exc), (params, str(exc))
        else:
            raise AssertionError(f"{params} was accepted")
