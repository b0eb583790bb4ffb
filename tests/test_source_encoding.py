"""Python sources are decoded as Python decodes them (PEP 263).

A UTF-8 byte order mark is honoured and dropped, a coding cookie in the first
two lines names the encoding; what ``python3 FILE`` refuses is a one-line
:class:`LoadFailed` naming the file and what is wrong. The engine gets (and
stores, and hashes) the decoded text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineProcess, run_cli

from livepatch import Engine, LoadFailed
from livepatch.client import Client, file_load_params
from livepatch.examples.spam import SpamRules, rule_source
from livepatch.files import python_source_text, text_or_object

BOM = b"\xef\xbb\xbf"
LATIN = b'# -*- coding: latin-1 -*-\nx = "\xe9"\n'
MSG = {"sender": "promo@deals.biz", "text": "WIN a FREE cruise!!! Click now", "links": []}


def python_namespace(code: bytes | str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(code, "f.py", "exec", dont_inherit=True), namespace)
    namespace.pop("__builtins__")
    return namespace


def refused(data: bytes, name: str = "f.py") -> str:
    with pytest.raises(LoadFailed) as caught:
        python_source_text(data, name)
    message = caught.value.message
    assert "\n" not in message and name in message
    return message


def test_a_bom_is_honoured_and_dropped() -> None:
    assert python_source_text(BOM + b"x = 1\n", "bom.py") == "x = 1\n"
    assert (
        python_source_text(BOM + b"# coding: utf-8\nx = 1\n", "b.py") == "# coding: utf-8\nx = 1\n"
    )
    assert python_source_text(BOM + 'x = "é"\n'.encode(), "b.py") == 'x = "é"\n'


def test_a_coding_cookie_names_the_encoding() -> None:
    assert python_source_text(LATIN, "latin.py") == '# -*- coding: latin-1 -*-\nx = "é"\n'
    # Line 2 after a shebang, as PEP 263 allows; any codec Python knows.
    sjis = b'#!/usr/bin/env python3\n# vim: set fileencoding=shift_jis :\nx = "\x82\xa0"\n'
    assert python_source_text(sjis, "j.py").endswith('x = "あ"\n')
    # A cookie on line 3, or after code on line 1, is no cookie: UTF-8.
    assert python_source_text(b'x = 1\n# coding: latin-1\ny = "\xc3\xa9"\n', "u.py").endswith(
        '"é"\n'
    )


@pytest.mark.parametrize(
    "data",
    [
        BOM + b"x = 1\n",
        LATIN,
        b'# coding: latin-1 \xe9\ny = "\xe9"\n',  # the cookie line itself in latin-1
        b'#!/usr/bin/env python3\n# coding: cp1252\nz = "\x80"\n',
        b'x = "\xc3\xa9"\n',
    ],
)
def test_the_text_runs_as_python_runs_the_bytes(data: bytes) -> None:
    text = python_source_text(data, "f.py")
    assert python_namespace(text) == python_namespace(data)
    # What the engine hashes and stores.
    text.encode("utf-8", "surrogatepass")


def test_an_unknown_encoding_in_the_cookie() -> None:
    message = refused(b"# coding: nosuch\nx = 1\n", "latin.py")
    assert message == "latin.py: unknown encoding 'nosuch' in its coding cookie"
    assert "unknown encoding 'nosuch'" in refused(BOM + b"# coding: nosuch\n")


def test_bytes_invalid_for_the_declared_encoding() -> None:
    message = refused(b'# coding: ascii\nx = "\xe9"\n', "a.py")
    assert message.startswith("a.py is not valid ascii text (bad byte at offset 21)")
    assert "coding cookie" in message
    message = refused(b'# coding: utf-8\nx = "\xff"\n', "u.py")
    assert message.startswith("u.py is not valid utf-8 text (bad byte at offset 21)")
    # Without a cookie: not UTF-8, and how to say what it is.
    message = refused(b'x = "\xe9"\n', "latin.py")
    assert "latin.py is neither UTF-8 text (bad byte at offset 5)" in message
    assert "coding cookie" in message
    message = refused(BOM + b'x = "\xe9"\n', "b.py")
    assert "bad byte at offset 8" in message  # offsets count the BOM


def test_what_python_refuses_is_refused() -> None:
    message = refused(BOM + b"# coding: latin-1\nx = 1\n", "b.py")
    assert "byte order mark" in message and "'latin-1'" in message
    for cookie in ("utf-16", "rot13", "cp500"):
        data = f"# coding: {cookie}\nx = 1\n".encode()
        assert f"'{cookie}' in its coding cookie is not an encoding" in refused(data)
        with pytest.raises(SyntaxError):
            compile(data, "f.py", "exec")


def test_c_sources_stay_utf8_and_objects_bytes() -> None:
    # No coding cookies in C: the text is exactly the file's UTF-8.
    assert text_or_object(b"# coding: latin-1\nint x;\n", "r.c") == "# coding: latin-1\nint x;\n"
    assert text_or_object(b"\x7fELF\x02", "r.so") == b"\x7fELF\x02"
    with pytest.raises(LoadFailed, match=r"r\.c is neither UTF-8 text \(bad byte at offset 0\)"):
        text_or_object(b"\xe9", "r.c")


def test_file_load_params_and_load_path_send_the_decoded_text(tmp_path: Path) -> None:
    path = tmp_path / "latin.py"
    path.write_bytes(
        b"# -*- coding: latin-1 -*-\n" + rule_source("spam_v2.py").encode() + b'NOTE = "\xe9"\n'
    )
    params = file_load_params(path)
    assert params["filename"] == "latin.py" and 'NOTE = "é"' in params["source"]
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"# coding: nosuch\n")
    with pytest.raises(
        ValueError, match=r"^bad\.py: unknown encoding 'nosuch' in its coding cookie$"
    ):
        file_load_params(bad)
    engine = Engine(name="encodings")
    engine.add_slot("spam", SpamRules)
    try:
        version = engine.load_path("spam", path)
        assert engine.check(version).ok
        assert 'NOTE = "é"' in engine.source(version)
        with pytest.raises(LoadFailed, match="unknown encoding 'nosuch'"):
            engine.load_path("spam", bad)
    finally:
        engine.close()


def test_cli_loads_a_bom_source_and_its_check_runs(
    engine_proc: EngineProcess, tmp_path: Path
) -> None:
    bom = tmp_path / "bom.py"
    bom.write_bytes(BOM + rule_source("spam_v2.py").encode())
    loaded = run_cli("load", str(bom), "--slot", "spam", "--json")
    assert loaded.returncode == 0, loaded.stderr
    version = json.loads(loaded.stdout)["version"]
    checked = run_cli("check", version)
    assert checked.returncode == 0 and "ok, no problems" in checked.stdout, checked.stderr
    assert run_cli("swap", version).returncode == 0
    called = run_cli("call", "spam.classify", json.dumps(MSG), "--json")
    assert called.returncode == 0 and json.loads(called.stdout)["version"] == version
    with Client.connect("rules") as client:
        assert client.source(version) == rule_source("spam_v2.py")  # no U+FEFF
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# coding: nosuch\n" + rule_source("spam_v2.py").encode())
    refused_load = run_cli("load", str(latin), "--slot", "spam")
    assert refused_load.returncode == 1
    assert refused_load.stderr == (
        "livepatch: error: latin.py: unknown encoding 'nosuch' in its coding cookie\n"
    )


def test_an_engine_started_with_load_reads_the_file_as_load_does(
    runtime_dir: Path, tmp_path: Path
) -> None:
    # `livepatch engine --load SLOT=FILE` had its own read_text: a BOM was a
    # SyntaxError and a latin-1 module "internal error: UnicodeDecodeError".
    from conftest import start_engine

    latin = tmp_path / "latin.py"
    head = b"# -*- coding: latin-1 -*-\n# caf\xe9\n"
    latin.write_bytes(head + rule_source("spam_v2.py").encode())
    engine = start_engine("--load", f"spam={latin}")
    try:
        with Client.connect("rules") as client:
            [slot] = [s for s in client.status()["slots"] if s["name"] == "spam"]
            active = slot["active"]
            assert next(v for v in slot["versions"] if v["id"] == active)["filename"] == "latin.py"
            assert "# café" in client.source(active)
    finally:
        engine.stop()
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"# coding: nosuch\nx = 1\n")
    refused = run_cli("engine", "--name", "refuses", "--load", f"spam={bad}")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "unknown encoding 'nosuch' in its coding cookie" in refused.stderr
