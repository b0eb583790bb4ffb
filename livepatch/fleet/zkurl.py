"""Where a ZooKeeper registry is: ``zookeeper://HOST:PORT[,HOST:PORT]/PATH[?timeout=S]``
parsed, each part checked, with one line saying which part is wrong and
what to write instead (:func:`parse_zk_url`). No kazoo here: a mistyped URL
is refused before the client library is even imported.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from .model import FleetError

__all__ = ["TIMEOUT_RANGE", "URL_OPTIONS", "ZkAddress", "parse_zk_url"]


@dataclass(frozen=True, slots=True)
class ZkAddress:
    """A parsed ``zookeeper://HOST:PORT[,HOST:PORT]/PATH[?timeout=S]``."""

    hosts: str
    path: str
    timeout: float = 10.0


#: The session timeouts a registry URL may ask for (``?timeout=S``), seconds.
#: (A server also clamps it to its own range, by default 2 to 20 ticks.)
TIMEOUT_RANGE = (1.0, 3600.0)

#: The options a registry URL's query may give.
URL_OPTIONS = ("timeout",)

#: A host name (``_`` too: container names have it), an IPv4 address, or
#: an IPv6 one in brackets.
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\]")

# What ZooKeeper refuses in a path (its PathUtils.validatePath).
_BAD_PATH_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\uffff]")


def parse_zk_url(url: str) -> ZkAddress:
    """Parse a ZooKeeper registry URL; :class:`FleetError` says, in one line,
    which part is wrong and what to write instead."""
    usage = "zookeeper://HOST:PORT[,HOST:PORT...]/PATH[?timeout=SECONDS]"

    def bad(what: str) -> FleetError:
        return FleetError(f"--registry {url!r}: {what}")

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "zookeeper" or not parsed.netloc:
        raise bad("use zookeeper://HOST:PORT/PATH")
    if parsed.fragment or "#" in url:
        raise bad(f"a registry URL has no '#' part: write {usage}")
    for host_port in parsed.netloc.split(","):
        _check_host(host_port, bad)
    path = _check_path(parsed.path.rstrip("/") or "/livepatch", bad)
    timeout = 10.0
    seen: set[str] = set()
    for option in parsed.query.split("&") if parsed.query else []:
        name, eq, value = option.partition("=")
        if name not in URL_OPTIONS:
            raise bad(
                f"unknown option {name!r}: the only option is timeout=SECONDS (the "
                "session timeout, 10 by default): write ?timeout=SECONDS, or nothing"
            )
        if name in seen:
            raise bad(f"{name} is given twice: give it once")
        seen.add(name)
        timeout = _check_timeout(value if eq else "", bad)
    return ZkAddress(parsed.netloc, path, timeout)


def _check_host(host_port: str, bad: Callable[[str], FleetError]) -> None:
    """One ``HOST[:PORT]`` of a registry URL (kazoo's default port: 2181)."""
    if not host_port:
        raise bad("an empty host in the host list: write HOST:PORT,HOST:PORT")
    if "@" in host_port:
        raise bad(f"{host_port!r}: a registry URL has no user part: write HOST:PORT")
    host, colon, port = host_port.rpartition(":") if not host_port.endswith("]") else ("", "", "")
    if not colon or host.endswith(":") or (":" in host and not host.startswith("[")):
        host, colon, port = host_port, "", ""  # no port (or IPv6 without brackets)
    if not _HOSTNAME.fullmatch(host):
        raise bad(
            f"host {host!r} is not a host name or address: write HOST:PORT "
            "(e.g. 127.0.0.1:2181, zk1.example.org:2181, [::1]:2181)"
        )
    if colon and not (port.isascii() and port.isdigit()):
        raise bad(
            f"port {port!r} of {host_port!r} is not a number: write HOST:PORT, e.g. {host}:2181"
        )
    if colon and not 1 <= int(port) <= 65535:
        raise bad(
            f"port {port} of {host_port!r} is out of range: write a port from 1 to 65535, "
            f"e.g. {host}:2181"
        )


def _check_path(path: str, bad: Callable[[str], FleetError]) -> str:
    """The registry's ZooKeeper path: absolute, no empty, ``.`` or ``..`` part."""
    parts = path.split("/")[1:]
    if "" in parts:
        raise bad(f"path {path!r} has an empty part ('//'): write /PATH, e.g. /livepatch")
    if "." in parts or ".." in parts:
        raise bad(
            f"path {path!r} has a '.' or '..' part: ZooKeeper paths are absolute, "
            "write /PATH without them, e.g. /livepatch"
        )
    if parts[0] == "zookeeper":
        raise bad(
            f"path {path!r} is under /zookeeper, ZooKeeper's own: use another, e.g. /livepatch"
        )
    found = _BAD_PATH_CHAR.search(path)
    if found:
        raise bad(f"path {path!r} has a character ZooKeeper refuses ({found[0]!r}): write /PATH")
    return path


def _check_timeout(value: str, bad: Callable[[str], FleetError]) -> float:
    low, high = TIMEOUT_RANGE
    want = f"a number of seconds from {low:g} to {high:g}, e.g. ?timeout=10"
    try:
        timeout = float(value)
    except ValueError:
        raise bad(f"timeout must be a number of seconds: {value!r} is not; write {want}") from None
    if not math.isfinite(timeout):
        raise bad(f"timeout {value!r} is not a finite number: write {want}")
    if not low <= timeout <= high:
        raise bad(f"timeout {value} is out of range: write {want}")
    return timeout
