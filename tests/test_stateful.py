"""Random sequences of lifecycle commands against a real engine (hypothesis).

A model of the lifecycle runs beside a real ``livepatch engine`` process.
After every step the engine's ``status`` must agree with the model, a slot
that once had an active version must still have one, and the active version
is never purged or unloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EngineProcess, start_engine
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from livepatch import BadState, CheckFailed, LivepatchError
from livepatch.client import Client
from livepatch.examples.spam import rule_source

GOOD = rule_source("spam_v1.py")
BAD = rule_source("spam_unresolved.py")
#: (is the source good?, source) by a small key, so that sources repeat.
SOURCES = {
    key: (key % 3 != 2, (GOOD if key % 3 != 2 else BAD) + f"\n# {key}\n") for key in range(6)
}


class Lifecycle(RuleBasedStateMachine):
    """The model: version -> (state, source key); the slot's retired history."""

    client: Client
    #: Source key of every version ever loaded: the engine outlives examples.
    source_keys: dict[str, int] = {}

    @initialize()
    def read_engine(self) -> None:
        # Each example starts from whatever the engine holds now.
        slot = self.client.status()["slots"][0]
        self.states: dict[str, str] = {v["id"]: v["state"] for v in slot["versions"]}
        self.keys: dict[str, int | None] = {v: self.source_keys.get(v) for v in self.states}
        self.active: str | None = slot["active"]
        self.ever_active = self.active is not None
        self.next_number = max((int(v.split("@")[1]) for v in self.states), default=0) + 1
        # The engine's rollback order is not in status; start the model's
        # history empty and only count on versions retired in this example.
        self.history: list[str] = []
        self.stale_retired = {v for v, s in self.states.items() if s == "retired"}

    # -- helpers ------------------------------------------------------------------

    def pick(self, data: st.DataObject) -> str:
        # Draw an index, not a version: what hypothesis draws must not depend
        # on the engine's state, which differs between examples. Recent
        # versions are favoured; index 0 past the end names no version.
        index = data.draw(st.integers(min_value=0, max_value=8))
        recent = sorted(self.states, key=lambda v: int(v.split("@")[1]))[-8:]
        return recent[-index] if 0 < index <= len(recent) else "spam@9999"

    def expect_error(self, error: type[LivepatchError], call: object) -> None:
        assert callable(call)
        with pytest.raises(error):
            call()

    # -- rules ----------------------------------------------------------------------

    @rule(key=st.sampled_from(sorted(SOURCES)))
    def load(self, key: int) -> None:
        _, source = SOURCES[key]
        version = self.client.load("spam", source, f"k{key}.py")
        live = [
            v
            for v, k in self.keys.items()
            if k == key and self.states[v] not in ("purged", "unloaded")
        ]
        if live:
            assert version == live[0]
        else:
            assert version == f"spam@{self.next_number}"
            self.next_number += 1
            self.states[version] = "loaded"
            self.keys[version] = key
            self.source_keys[version] = key

    @rule(data=st.data())
    def check(self, data: st.DataObject) -> None:
        version = self.pick(data)
        state = self.states.get(version)
        if state in ("purged", "unloaded") or state is None:
            self.expect_error(LivepatchError, lambda: self.client.check(version))
            return
        report = self.client.check(version)
        if state == "active":
            return
        if report.ok:
            self.states[version] = "retired" if state == "retired" else "resolved"
        else:
            self.states[version] = "failed"
            if version in self.history:
                self.history.remove(version)

    @rule(data=st.data())
    def swap(self, data: st.DataObject) -> None:
        version = self.pick(data)
        state = self.states.get(version)
        if state == "active":
            assert self.client.swap(version)["changed"] is False
        elif state == "failed":
            self.expect_error(CheckFailed, lambda: self.client.swap(version))
        elif state in ("resolved", "retired"):
            result = self.client.swap(version)
            assert result["previous"] == self.active
            self.activate(version)
        else:
            self.expect_error(LivepatchError, lambda: self.client.swap(version))

    def activate(self, version: str) -> None:
        if self.active is not None:
            self.states[self.active] = "retired"
            self.history.append(self.active)
        if version in self.history:
            self.history.remove(version)
        self.stale_retired.discard(version)
        self.states[version] = "active"
        self.active = version
        self.ever_active = True

    @rule()
    def rollback(self) -> None:
        retired = [v for v in self.history if self.states[v] == "retired"]
        if not retired and not self.stale_retired:
            self.expect_error(BadState, lambda: self.client.rollback("spam"))
            return
        if self.stale_retired:
            # Rollback order among versions retired before this example is
            # unknown to the model: just check the engine picked a retired one.
            result = self.client.rollback("spam")
            target = result["active"]
            assert self.states.get(target) == "retired"
        else:
            target = self.client.rollback("spam")["active"]
            assert target == retired[-1]
        self.activate(target)

    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        version = self.pick(data)
        state = self.states.get(version)
        if state in ("loaded", "resolved", "failed", "retired"):
            self.client.purge(version)
            self.forget(version, "purged")
        else:
            self.expect_error(LivepatchError, lambda: self.client.purge(version))

    @rule(data=st.data())
    def unload(self, data: st.DataObject) -> None:
        version = self.pick(data)
        state = self.states.get(version)
        if state == "active" or state is None:
            self.expect_error(LivepatchError, lambda: self.client.unload(version))
            return
        result = self.client.unload(version)
        assert result["freed"] is True
        self.forget(version, "unloaded")

    def forget(self, version: str, state: str) -> None:
        self.states[version] = state
        if version in self.history:
            self.history.remove(version)
        self.stale_retired.discard(version)

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def status_agrees(self) -> None:
        slot = self.client.status()["slots"][0]
        assert {v["id"]: v["state"] for v in slot["versions"]} == self.states
        assert slot["active"] == self.active
        if self.ever_active:
            assert slot["active"] is not None
        if slot["active"] is not None:
            assert self.states[slot["active"]] == "active"
        assert list(self.states.values()).count("active") == (1 if self.active else 0)


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    import os

    run = Path("/tmp") / f"lp-stateful-{os.getpid()}"
    old = os.environ.get("LIVEPATCH_RUNTIME_DIR")
    os.environ["LIVEPATCH_RUNTIME_DIR"] = str(run)
    proc = start_engine("--no-quarantine", name="stateful")
    yield proc
    proc.stop()
    if old is None:
        os.environ.pop("LIVEPATCH_RUNTIME_DIR", None)
    else:
        os.environ["LIVEPATCH_RUNTIME_DIR"] = old
    import shutil

    shutil.rmtree(run, ignore_errors=True)


def test_random_lifecycles_agree_with_the_model(shared_engine: EngineProcess) -> None:
    with Client.connect("stateful") as client:
        Lifecycle.client = client
        run_state_machine_as_test(
            Lifecycle,
            settings=settings(
                max_examples=40,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
