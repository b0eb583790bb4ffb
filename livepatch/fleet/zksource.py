"""Sources in the ZooKeeper registry: one node, or chunks under a manifest.

A ZooKeeper request holds at most ``jute.maxbuffer`` (1 MiB less a byte by
default), so a node cannot hold a native object much over 765 KiB (its
bytes go in base64 in the JSON). A source or object too big for one node
is split into content-addressed chunk nodes of raw bytes::

    PATH/fleets/<fleet>/chunks/<sha256 of the chunk>   up to CHUNK bytes
    PATH/fleets/<fleet>/sources/<sha256>   {"filename", "kind", "size", "chunks": [...]}

The chunks are written first and the manifest (the source node) last, each
node created once and never changed: a reader that finds the manifest
finds every chunk, and never sees a half-written source. On reassembly each
chunk's sha256 is checked against its name and the whole against the
source's; a mismatch is "damaged", never a wrong load. Chunks are shared by
every source that has the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from ..client import MAX_SENT_OBJECT
from .model import FleetError, Rule, sha_of

__all__ = [
    "CHUNK",
    "MAX_NODE",
    "MAX_SOURCE",
    "read_source",
    "source_from_node",
    "source_node",
    "write_source",
]

#: Largest source node written: ZooKeeper refuses a request over its
#: ``jute.maxbuffer`` (1 MiB less one byte by default), path and header included.
MAX_NODE = 1024 * 1024 - 4096

#: Bytes per chunk node (raw, not base64), well under one node's limit.
CHUNK = 768 * 1024

#: Largest source or object a fleet takes: a member hands it to its engine
#: in one control-socket frame (an object in base64).
MAX_SOURCE = MAX_SENT_OBJECT


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def source_node(source: Rule, filename: str) -> bytes:
    """A single source node's data: the text, or a ready object's bytes in
    base64. :class:`FleetError` when it would not fit in one znode (then
    :func:`write_source` splits it)."""
    if isinstance(source, bytes):
        data = _dumps({"filename": filename, "object": base64.b64encode(source).decode("ascii")})
    else:
        data = _dumps({"filename": filename, "source": source})
    if len(data) > MAX_NODE:
        raise FleetError(
            f"{filename} is {len(data) / 1024:.0f} KiB in its registry node: a ZooKeeper node "
            f"holds at most {MAX_NODE // 1024} KiB (jute.maxbuffer)"
        )
    return data


def _raw(source: Rule) -> bytes:
    return source if isinstance(source, bytes) else source.encode("utf-8")


def write_source(client: Any, sources: str, chunks: str, source: Rule, filename: str) -> str:
    """Store ``source`` content-addressed under ``sources`` (one node, or
    chunks under ``chunks`` and then its manifest); idempotent. Returns its
    sha256. :class:`FleetError` (nothing written) when it is over
    :data:`MAX_SOURCE`."""
    sha = sha_of(source)
    raw = _raw(source)
    if len(raw) > MAX_SOURCE:
        raise FleetError(
            f"{filename} is {len(raw) / 2**20:.1f} MiB: a fleet member hands a rule to its engine "
            f"in one control-socket frame, so at most {MAX_SOURCE / 2**20:.1f} MiB; strip it "
            "(`strip --strip-debug`) or split it"
        )
    path = f"{sources}/{sha}"
    try:
        data = source_node(source, filename)
    except FleetError:
        data = b""
    if not data:
        names = []
        for start in range(0, len(raw), CHUNK):
            piece = raw[start : start + CHUNK]
            name = hashlib.sha256(piece).hexdigest()
            names.append(name)
            with contextlib.suppress(NodeExistsError):
                client.retry(client.create, f"{chunks}/{name}", piece, makepath=True)
        kind = "object" if isinstance(source, bytes) else "source"
        data = _dumps({"filename": filename, "kind": kind, "size": len(raw), "chunks": names})
    with contextlib.suppress(NodeExistsError):
        client.retry(client.create, path, data)
    return sha


def read_source(client: Any, sources: str, chunks: str, sha: str) -> tuple[Rule, str]:
    """``(source, filename)`` (``bytes`` for an object) of source ``sha``;
    ``LookupError`` when the registry has none or it is damaged."""
    try:
        data, _ = client.retry(client.get, f"{sources}/{sha}")
    except NoNodeError:
        raise LookupError(f"the registry has no source {sha[:12]}") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
        names = manifest.get("chunks") if isinstance(manifest, dict) else None
    except ValueError:
        names = None
    if names is None:
        return source_from_node(data, sha)
    damaged = f"the registry's source {sha[:12]} is damaged"
    try:
        results = [client.get_async(f"{chunks}/{name}") for name in names]
        pieces = []
        for name, result in zip(names, results, strict=True):
            piece, _ = result.get(60)
            if hashlib.sha256(piece).hexdigest() != name:
                raise LookupError(f"{damaged} (chunk {name[:12]}'s sha differs): push it again")
            pieces.append(piece)
        raw = b"".join(pieces)
        filename = str(manifest["filename"])
        source: Rule = raw if manifest.get("kind") == "object" else raw.decode("utf-8")
    except NoNodeError:
        raise LookupError(f"{damaged} (a chunk is missing): push it again") from None
    except (KeyError, TypeError, UnicodeDecodeError):
        raise LookupError(f"{damaged}: push it again") from None
    if len(raw) != manifest.get("size") or sha_of(source) != sha:
        raise LookupError(f"{damaged} (its sha differs)")
    return source, filename


def source_from_node(data: bytes, sha: str) -> tuple[Rule, str]:
    """``(source, filename)`` from a single source node (``bytes`` for an
    object); ``LookupError`` when it is damaged."""
    try:
        value = json.loads(data.decode("utf-8"))
        filename = str(value["filename"])
        source: Rule = (
            base64.b64decode(value["object"], validate=True)
            if "object" in value
            else str(value["source"])
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise LookupError(f"the registry's source {sha[:12]} is damaged: push it again") from None
    if sha_of(source) != sha:
        raise LookupError(f"the registry's source {sha[:12]} is damaged (its sha differs)")
    return source, filename
