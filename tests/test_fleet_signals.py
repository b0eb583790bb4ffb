"""Signal names (``livepatch.fleet.zksignal``): the news a node's name carries."""

from __future__ import annotations

import pytest

from livepatch.fleet.zksignal import parse_signal, signal_name


def test_a_signal_name_carries_any_body_and_is_one_node_name() -> None:
    body = {"slot": "spam", "filename": "a/b.c/../ünï code.py", "previous": None, "time": 1.5}
    name = signal_name("commit", body) + "0000000042"  # ZooKeeper's sequence suffix
    assert "/" not in name and name.count(".") == 2
    signal = parse_signal(name)
    assert signal is not None
    assert (signal.kind, signal.body, signal.name) == ("commit", body, name)


@pytest.mark.parametrize(
    "name",
    [
        "record",  # not a signal at all
        "launch.e30=.0000000001",  # a kind members do not know
        "prepare.not base64!.0000000001",
        "prepare.W10=.0000000001",  # a body that is not an object ([])
        "end.bm90IGpzb24=.0000000001",  # base64 of something that is not JSON
    ],
)
def test_a_name_that_is_not_a_signal_is_ignored(name: str) -> None:
    assert parse_signal(name) is None
