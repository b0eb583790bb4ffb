"""``fleet``: a push over the local registry and over ZooKeeper.

The measurements are :mod:`livepatch.fleet.bench`'s: ``local`` starts
``settings.fleet_engines`` real engines with traffic and pushes back and
forth (push time, commit skew from the members' journals, what a push costs
their calls); ``zookeeper`` starts a private ZooKeeper server and simulated
members (each with its own session and the real member protocol) and times
a push to each fleet size.

Without a ZooKeeper server (Debian's ``zookeeper`` package) the ZooKeeper
half is skipped and says so, except under CI (``CI`` set), where a missing
server is a missed goal: CI installs it.
"""

from __future__ import annotations

import os
from typing import Any

from .common import ProgressFn, Settings, _no_progress

__all__ = ["measure_fleet"]


def measure_fleet(settings: Settings, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Both registries with ``settings``' counts (see the module doc)."""
    # The fleet package imports kazoo: only when this section runs.
    from ..fleet.bench import measure_local, measure_zookeeper
    from ..fleet.zkserver import zookeeper_missing
    from ..fleet.zksim import gevent_missing

    local = measure_local(
        settings.fleet_engines, settings.fleet_pushes, quiet_s=settings.fleet_quiet_s
    )
    progress(0.5)
    missing = zookeeper_missing() or gevent_missing()
    zookeeper: dict[str, Any]
    if missing:
        required = bool(os.environ.get("CI"))
        zookeeper = {"skipped": missing, "required": required}
    else:
        zookeeper = measure_zookeeper(settings.fleet_zk_sizes, settings.fleet_zk_pushes)
        zookeeper["sizes"] = list(settings.fleet_zk_sizes)
    progress(1.0)
    return {"local": local, "zookeeper": zookeeper}
