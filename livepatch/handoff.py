"""State handed over at swap: Erlang's ``code_change`` for rule modules.

A version may define ``__livepatch_handoff__(previous)``. When it is swapped
in, the engine calls it with the namespace of the version it replaces (a
read-only view), before the new version is published, so caches, counters
or learned thresholds can be carried across. If it raises, the swap is
refused and the previous version keeps serving. Rollback hands back the
same way: the version swapped back in receives the namespace of the one
it replaces.

The hook is rule code and runs on the swapping thread under the slot's
lock: like any rule it is trusted, and a hook that never returns holds up
swaps of its slot (Python cannot stop it).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from typing import Any

from .errors import CallFailed
from .interrupt import Interrupted
from .resolve import Problem

__all__ = ["HANDOFF", "check_handoff", "hand_over"]

#: The hook's name in a rule module.
HANDOFF = "__livepatch_handoff__"


def check_handoff(namespace: Mapping[str, Any]) -> list[Problem]:
    """Problems with a version's hook: it must be callable with one
    positional argument (the previous namespace). No hook, no problems."""
    if HANDOFF not in namespace:
        return []
    hook = namespace[HANDOFF]
    line = getattr(getattr(hook, "__code__", None), "co_firstlineno", None)
    if not callable(hook):
        return [
            Problem(
                kind="not-callable",
                symbol=HANDOFF,
                line=line,
                message=f"{HANDOFF} is a {type(hook).__name__}, not a function of (previous)",
            )
        ]
    try:
        inspect.signature(hook).bind(None)
    except TypeError:
        return [
            Problem(
                kind="signature-mismatch",
                symbol=HANDOFF,
                line=line,
                message=f"{HANDOFF} must take exactly one argument, the previous namespace",
            )
        ]
    except ValueError:  # no signature to read (a builtin): trust the call
        return []
    return []


def hand_over(version: str, namespace: Mapping[str, Any], previous: dict[str, Any]) -> bool:
    """Run ``version``'s hook with ``previous``; False when it has none.

    The hook's exception becomes :class:`CallFailed` naming the rule's file
    and line; the caller refuses the swap.
    """
    hook = namespace.get(HANDOFF)
    if hook is None:
        return False
    try:
        hook(types.MappingProxyType(previous))
    except Interrupted:
        raise  # the engine's own deadline, not the hook's failure
    except BaseException as exc:  # noqa: BLE001 - the rule's hook failed: refuse the swap
        # sys.exit() and KeyboardInterrupt too: raised by rule code on a
        # worker thread, they are its failure, and before they ended the
        # connection's thread (the client was told the engine stopped).
        failed = CallFailed.from_exception(version, HANDOFF, exc)
        raise CallFailed(
            f"{failed.message}: the swap was refused and nothing changed", **failed.data
        ) from None
    return True
