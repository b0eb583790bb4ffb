"""Fleets: one push swaps a rule version on every engine, two-phase.

Engines started with ``--fleet NAME`` are members. The registry is *local*
(the engines of one host, found by their connection files; desired state in
a durable store under the user's state home) or *ZooKeeper*
(``--registry zookeeper://HOST:PORT/PATH``). The engine core imports
nothing of this package: a member agent drives its engine over the
engine's own control socket.

- :mod:`.model` the data (desired versions, votes, push records, member states)
- :mod:`.handle` a member's hands on its engine: prepare, release, converge
- :mod:`.store` and :mod:`.local` the local registry; :mod:`.zk` (pusher, reader),
  :mod:`.zkmember` (member agent) and :mod:`.zksource` (sources, in chunks when big)
  ZooKeeper; :mod:`.zkserver` a private server; :mod:`.zksim` the benchmark's
  simulated members
- :mod:`.view` the fleet side by side; :mod:`.cli` the verbs; :mod:`.demo` the tour
"""

from __future__ import annotations

from .model import Desired, FleetConflict, FleetError, MemberState, PushRecord, Vote

__all__ = ["Desired", "FleetConflict", "FleetError", "MemberState", "PushRecord", "Vote"]
