"""The growth figure in instructions (``livepatch bench --section load_check``).

The valgrind runs themselves take minutes, so they stay in the benchmark;
here: every step its child runs works as the benchmark starts it, and the
parser's token array is counted as CPython grows it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from livepatch.bench.load_check import generated_module
from livepatch.bench.load_check_callgrind import MODES, parser_token_slots


@pytest.mark.parametrize("mode", MODES)
def test_every_step_of_the_child_runs(mode: str) -> None:
    # padded as the benchmark pads it, so the command lines have one length
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from livepatch.bench.load_check_callgrind import _child; "
            "_child(int(sys.argv[1]), sys.argv[2].strip())",
            "00050",
            mode.ljust(max(map(len, MODES))),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_parser_keeps_tokens_in_a_doubling_array() -> None:
    # NAME OP NUMBER NEWLINE ENDMARKER: five tokens, eight records
    assert parser_token_slots("x = 1\n") == (5, 8)
    tokens, slots = parser_token_slots(generated_module(1_000))
    assert slots // 2 < tokens <= slots
    more, more_slots = parser_token_slots(generated_module(10_000))
    # ten times the functions, ten times the tokens, sixteen times the records
    assert 9.9 < more / tokens < 10.1
    assert more_slots == 16 * slots
