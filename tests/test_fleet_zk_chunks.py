"""A native object bigger than one ZooKeeper node travels in chunks (issue 15).

A ZooKeeper node holds at most about 1 MiB (``jute.maxbuffer``). A real
gcc-built object of a few MiB (the bundled ``spam_native_v2.c`` with 3 MiB
of random read-only data assembled in) is pushed through a real ZooKeeper
server to two real members: the registry keeps it as content-addressed
chunk nodes under a manifest, every member serves it, and a member
restarted after the file is deleted converges on it from the chunks alone.
A damaged chunk is refused on reassembly, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import EngineProcess, run_cli
from fleet_helpers import active_sha
from test_fleet_native import OFFER, classify, zk_native_members
from test_native_bytes import build

from livepatch.examples.spam_native import NATIVE_SLOT
from livepatch.fleet.model import FleetError
from livepatch.fleet.zk import ZkRegistry, parse_zk_url
from livepatch.fleet.zkserver import ZooKeeperServer
from livepatch.fleet.zksource import CHUNK, MAX_NODE, MAX_SOURCE
from livepatch.native import find_compiler

pytestmark = pytest.mark.skipif(
    find_compiler() is None and not os.environ.get("CI"),
    reason="no C compiler (cc, gcc, clang or $CC): the native rules are built with it",
)

FLEET = "big"

#: Read-only data assembled into the object from a file (a local label, so
#: not in ``.dynsym``), and a non-executable stack note.
PAD_ASM = """\
    .section .rodata
lp_pad:
    .incbin "{path}"
    .section .note.GNU-stack,"",@progbits
"""


def big_object(directory: Path, size: int) -> Path:
    """``spam_native_v2.c`` built with ``size`` random bytes of read-only data."""
    pad = directory / "pad.bin"
    pad.write_bytes(os.urandom(size))
    asm = directory / "pad.S"
    asm.write_text(PAD_ASM.format(path=pad), encoding="utf-8")
    return build(directory / "big.so", "spam_native_v2.c", str(asm))


def test_an_object_of_a_few_mib_is_pushed_in_chunks_and_restored_from_them(
    zk_server: ZooKeeperServer, engines: list[EngineProcess], tmp_path: Path
) -> None:
    url = zk_native_members(zk_server, engines, FLEET)
    obj = big_object(tmp_path, 3 * 2**20)
    data = obj.read_bytes()
    assert len(data) > 3 * MAX_NODE  # several nodes' worth
    sha = hashlib.sha256(data).hexdigest()
    result = run_cli(
        "push", str(obj), "--slot", NATIVE_SLOT, "--fleet", FLEET, "--registry", url, "--json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(json.loads(result.stdout)["acks"]) == ["a", "b"]
    for name in "ab":
        assert classify(name, OFFER) == (1, sha)

    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        # The source node is a manifest of content-addressed chunks, each
        # under one node's limit, that add up to the object.
        node, _ = reg.client.get(f"{reg.paths.sources}/{sha}")
        manifest = json.loads(node)
        assert manifest["kind"] == "object" and manifest["size"] == len(data)
        assert len(manifest["chunks"]) == -(-len(data) // CHUNK) >= 4
        pieces = [reg.client.get(f"{reg.paths.chunks}/{n}")[0] for n in manifest["chunks"]]
        assert all(len(p) <= CHUNK < MAX_NODE for p in pieces)
        assert [hashlib.sha256(p).hexdigest() for p in pieces] == manifest["chunks"]
        assert b"".join(pieces) == data
        assert reg.get_source(sha) == (data, "big.so")

    # The file is gone everywhere: a restarted member gets the object from
    # the chunks, by sha, before it reports ready.
    obj.unlink()
    engines[0].restart()
    assert active_sha("a", NATIVE_SLOT) == sha
    assert classify("a", OFFER) == (1, sha)

    with ZkRegistry(parse_zk_url(url), FLEET) as reg:
        # A chunk whose bytes do not match its name is refused on reassembly.
        bad = b"\x7fELF" + os.urandom(CHUNK + 100)
        bad_sha = hashlib.sha256(bad).hexdigest()
        first = hashlib.sha256(bad[:CHUNK]).hexdigest()
        last = hashlib.sha256(bad[CHUNK:]).hexdigest()
        reg.client.create(f"{reg.paths.chunks}/{first}", bad[:CHUNK])
        reg.client.create(f"{reg.paths.chunks}/{last}", b"tampered" + bad[CHUNK + 8 :])
        body = {"filename": "bad.so", "kind": "object", "size": len(bad), "chunks": [first, last]}
        reg.client.create(f"{reg.paths.sources}/{bad_sha}", json.dumps(body).encode())
        with pytest.raises(LookupError, match=r"damaged \(chunk .* sha differs\)"):
            reg.get_source(bad_sha)
        # One a member could not hand its engine is refused before anything is written.
        chunks_before = set(reg.client.get_children(reg.paths.chunks))
        huge = b"\x7fELF" + os.urandom(MAX_SOURCE)
        with pytest.raises(FleetError, match="one control-socket frame"):
            reg.put_source(huge, "huge.so")
        assert set(reg.client.get_children(reg.paths.chunks)) == chunks_before
        assert reg.client.exists(f"{reg.paths.sources}/{hashlib.sha256(huge).hexdigest()}") is None
    # The members still serve the big object.
    for name in "ab":
        assert classify(name, OFFER) == (1, sha)
