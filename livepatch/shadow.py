"""Shadow runs: what would this version change, on the slot's live calls?

A shadow run puts a *candidate* (a checked version of a slot that is not
active) next to the slot's active version. A sample of the calls that
``engine.call`` makes on the active version is handed, after the active
call has returned, to a bounded queue; one background thread per run calls
the candidate's function of the same name with the same arguments and
compares the results. The caller never waits for the candidate and never
sees what it does: the hand-over only appends to the queue (a full queue
counts a drop), the candidate's exceptions stay on the shadow thread, and a
candidate call that overruns its deadline is interrupted there.

Sampling is on the hot path, so it is in C when ``livepatch._speedups`` is
built (a :class:`~livepatch._speedups.Sampler` on the active version's
Rules: a countdown, one compare per call when no run is on) and in
:class:`PySampler` on the Python path (``Engine.call``). Gaps between
samples are drawn at random (geometric, mean ``1 / sample``), so a traffic
pattern that repeats cannot line up with the sampling.

Choices (docs: the README's "Shadow runs"):

- One run per slot at a time; the last finished run of a slot stays
  readable (``shadow report``) until the next one starts.
- A run ends on its own, with its reason, when its time is up, when the
  slot's active version changes (a swap or rollback, the candidate's
  included: the comparison would no longer be against what callers get),
  and when the candidate is purged or unloaded (its code is going).
- The start and the end are journaled (op ``shadow``). A start is answered
  only once its record is written; a ``stop`` whose record cannot be
  written leaves the run going and answers ``storage``. A run that ends on
  its own cannot be kept going: its record is written, or deferred to the
  next record if the disk refuses it now.
- Calls made through ``engine.call`` are sampled: the traffic of the host,
  nested rule calls, and the control socket's ``call`` (which runs through
  ``engine.call`` inside its pin). Calls on a pinned rules object
  (``rules.f(...)``) are not: that path has no sampler. A
  candidate's own nested ``engine.call`` runs on the active version, as
  any caller's would.
- Shadow calls are not counted in the candidate's call statistics: they
  are not traffic.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .convert import to_json
from .errors import BadState, CallFailed, LivepatchError
from .interrupt import ThreadDeadline, absorb_interrupt
from .journal import Journal, Peer
from .model import Event, parse_version_id
from .states import VersionState
from .versions import Version

if typing.TYPE_CHECKING:
    from ._speedups import Rules, Sampler
    from ._speedups import Sampler as _CSampler_t
    from .engine import Engine

_CRules: type[Rules] | None
_CSampler: type[Sampler] | None
try:
    from ._speedups import Rules as _CRules
    from ._speedups import Sampler as _CSampler
except ImportError:  # the Python path samples in PySampler
    _CRules = _CSampler = None

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_SAMPLE",
    "DEFAULT_TIMEOUT_S",
    "MAX_SHOWN",
    "PySampler",
    "ShadowRun",
    "Shadows",
]

#: The fraction of the active version's calls a run samples by default.
DEFAULT_SAMPLE = 0.1
#: Sampled calls waiting for the candidate, at most; beyond, drops.
DEFAULT_QUEUE = 1000
#: A candidate call's deadline: past it, it is interrupted and counted.
DEFAULT_TIMEOUT_S = 1.0
#: How many differing calls (and candidate-only errors) a report lists.
MAX_SHOWN = 10
#: Latency samples kept per side (a reservoir beyond that).
_LATENCIES = 20_000
#: How long the shadow thread sleeps when its queue is empty.
_IDLE_S = 0.005

#: Who the journal names for a run that ended on its own.
_ENGINE_PEER = Peer(client="livepatch-engine")

#: One sampled call, as the samplers queue it:
#: (symbol, args, kwargs or None, result or None, error or None, elapsed_ns).
Item = tuple[str, tuple[Any, ...], "dict[str, Any] | None", Any, "BaseException | None", int]


class PySampler:
    """The sampler of the Python path, called by ``Engine.call`` with the
    version's function: what the C ``Sampler`` does, in Python."""

    __slots__ = ("_log_keep", "capacity", "countdown", "dropped", "queue", "sampled")

    def __init__(self, queue: collections.deque[Item], capacity: int, sample: float) -> None:
        self.queue = queue
        self.capacity = capacity
        self._log_keep = math.log1p(-sample) if sample < 1 else 0.0
        self.sampled = 0
        self.dropped = 0
        self.countdown = self._gap()

    def _gap(self) -> int:
        """Calls until the next sample: geometric with mean ``1 / sample``."""
        if self._log_keep == 0.0:
            return 1
        return 1 + int(math.log(1.0 - random.random()) / self._log_keep)

    def call(
        self,
        version: Version,
        fn: Callable[..., Any],
        symbol: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """``fn(*args, **kwargs)``, counted on ``version``; sampled when the
        countdown runs out. The caller gets exactly what ``fn`` gave."""
        self.countdown -= 1
        if self.countdown > 0:
            next(version.calls)
            try:
                return fn(*args, **kwargs)
            except BaseException:
                next(version.errors)
                raise
        self.countdown = self._gap()
        next(version.calls)
        started = time.monotonic_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            elapsed = time.monotonic_ns() - started
            next(version.errors)
            self._queue((symbol, args, kwargs or None, None, exc, elapsed))
            raise
        self._queue((symbol, args, kwargs or None, result, None, time.monotonic_ns() - started))
        return result

    def _queue(self, item: Item) -> None:
        # Counted from several caller threads: += is not atomic, but these are
        # figures for a report, and the C path (the one that matters) is exact.
        self.sampled += 1
        if len(self.queue) >= self.capacity:
            self.dropped += 1
        else:
            self.queue.append(item)


class _Reservoir:
    """Up to ``size`` latency samples, a uniform sample of all seen."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: list[int] = []
        self.seen = 0

    def add(self, value: int) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < self.size:
                self.values[slot] = value

    def summary(self) -> dict[str, Any]:
        values = sorted(self.values)
        if not values:
            return {"n": 0, "p50_us": None, "p99_us": None}

        def at(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))] / 1000, 3)

        return {"n": self.seen, "p50_us": at(0.5), "p99_us": at(0.99)}


def _describe_error(version: str, symbol: str, exc: BaseException) -> str:
    if isinstance(exc, Exception):
        return CallFailed.from_exception(version, symbol, exc).message
    return f"{version} {symbol}() raised {type(exc).__name__}"


def _same(a: Any, b: Any) -> bool:
    """Whether two results are the same, by ``==``; by their JSON form when
    ``==`` cannot say (it raised, or returned something that is not a bool)."""
    try:
        equal = a == b
        if isinstance(equal, bool):
            return equal
    except Exception:  # noqa: BLE001 - the rule's own __eq__
        pass
    try:
        return bool(to_json(a) == to_json(b))
    except Exception:  # noqa: BLE001 - no comparable form: count it as differing
        return False


def _keep(found: list[dict[str, Any]], finding: dict[str, Any] | None) -> None:
    """Keep the first :data:`MAX_SHOWN` distinct findings; a finding seen
    again (the same call, the same outcome) counts on the first one."""
    if finding is None:
        return
    for kept in found:
        if all(kept.get(k) == v for k, v in finding.items() if k != "times"):
            kept["times"] += 1
            return
    if len(found) < MAX_SHOWN:
        found.append(finding)


def _shown(value: Any) -> Any:
    try:
        return to_json(value)
    except Exception:  # noqa: BLE001 - a value that cannot be shown still differs
        return {"$repr": f"<{type(value).__name__}>"}


@dataclass
class _Stats:
    """What the shadow thread found; read under the run's lock."""

    compared: int = 0
    differed: int = 0
    candidate_errors: int = 0
    both_raised: int = 0
    timeouts: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    active_ns: _Reservoir = field(default_factory=lambda: _Reservoir(_LATENCIES))
    candidate_ns: _Reservoir = field(default_factory=lambda: _Reservoir(_LATENCIES))


class ShadowRun:
    """One shadow run of ``candidate`` against the active version ``active``."""

    def __init__(
        self,
        engine: Engine,
        candidate: Version,
        active: Version,
        *,
        sample: float,
        for_s: float | None,
        queue: int,
        timeout_s: float,
        peer: Peer,
    ) -> None:
        self.engine = engine
        self.slot = candidate.slot
        self.candidate = candidate.id
        self.active = active.id
        self.sample = sample
        self.for_s = for_s
        self.capacity = queue
        self.timeout_s = timeout_s
        self.peer = peer
        self.started = time.time()
        self.ended: float | None = None
        self.reason: str | None = None
        self._candidate = candidate
        self._active = active
        self._queue: collections.deque[Item] = collections.deque()
        self._lock = threading.Lock()
        self._stats = _Stats()
        # open: calls are sampled; frozen (a stop being journaled) or ended:
        # they are not, and findings are no longer recorded.
        self._open = False
        self._ending = False
        self._current: tuple[float, ThreadDeadline] | None = None
        self._sampler: _CSampler_t | PySampler | None = None
        self._worker = threading.Thread(
            target=self._work, name=f"livepatch-shadow-{self.slot}", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._watch, name=f"livepatch-shadow-{self.slot}-deadline", daemon=True
        )

    # -- lifecycle ----------------------------------------------------------------

    def attach(self) -> None:
        """Start sampling the active version's calls (under the slot's lock)."""
        c_rules = _CRules is not None and isinstance(self._active.rules, _CRules)
        if self.engine.accelerated and _CSampler is not None and c_rules:
            seed = random.getrandbits(64) | 1
            self._sampler = _CSampler(self._queue, self.capacity, self.sample, seed)
        if self._sampler is None:
            self._sampler = PySampler(self._queue, self.capacity, self.sample)
        self._open = True
        self._plug()
        self._worker.start()
        self._watchdog.start()

    def _plug(self) -> None:
        if isinstance(self._sampler, PySampler):
            self._active.sampler = self._sampler
        elif isinstance(self._active.rules, _CRules):  # type: ignore[arg-type]
            self._active.rules._sampler = self._sampler

    def detach(self) -> None:
        """Stop sampling; calls already queued are dropped, not compared."""
        rules = self._active.rules
        if _CRules is not None and isinstance(rules, _CRules) and rules._sampler is self._sampler:
            rules._sampler = None
        if self._active.sampler is self._sampler:
            self._active.sampler = None

    def freeze(self) -> None:
        """No new samples and no new findings (a stop is being journaled)."""
        with self._lock:
            self._open = False
        self.detach()

    def thaw(self) -> None:
        """Back to running after a stop that could not be journaled."""
        with self._lock:
            if self.ended is None and not self._ending:
                self._open = True
                self._plug()

    def finish(self, reason: str) -> None:
        """The end: no more sampling, the threads told to go."""
        with self._lock:
            self._open = False
            self.reason = reason
            self.ended = time.time()
        self.detach()
        self._queue.clear()

    @property
    def running(self) -> bool:
        """Whether the run has not ended."""
        return self.ended is None

    # -- the shadow thread -----------------------------------------------------------

    def _work(self) -> None:
        # A poll of the queue, every few milliseconds while it is empty: a
        # wake-up per sample would cost each sampled caller a notification.
        while self.ended is None:
            try:
                item = self._queue.popleft()
            except IndexError:
                time.sleep(_IDLE_S)
                continue
            self._compare(item)

    def _run_candidate(self, item: Item) -> tuple[Any, BaseException | None, int, bool]:
        symbol, args, kwargs = item[0], item[1], item[2]
        namespace = self._candidate.namespace
        fn = namespace.get(symbol) if namespace is not None else None
        error: BaseException | None = None
        if not callable(fn):
            error = LookupError(f"{self.candidate} has no callable {symbol!r}")
            return None, error, 0, False
        watch = ThreadDeadline(threading.get_ident())
        started = time.monotonic_ns()
        self._current = (time.monotonic() + self.timeout_s, watch)
        try:
            result = fn(*args, **(kwargs or {}))
        except BaseException as exc:  # noqa: BLE001 - the candidate's failure is a finding
            # Its deadline (Interrupted), and sys.exit() or KeyboardInterrupt
            # as well: before, those ended the worker and the report read clean.
            result, error = None, exc
        finally:
            elapsed = time.monotonic_ns() - started
            self._current = None
            fired = watch.finish()
        if fired:
            absorb_interrupt()
        return result, error, elapsed, fired

    def _compare(self, item: Item) -> None:
        symbol, args, kwargs, active_result, active_error, active_ns = item
        result, error, elapsed, timed_out = self._run_candidate(item)
        finding: dict[str, Any] | None = None
        kind = "same"
        if timed_out:
            kind = "timeout"
        elif error is not None and active_error is None:
            kind = "candidate-error"
        elif error is not None and active_error is not None:
            kind = "same" if type(error) is type(active_error) else "differed"
        elif active_error is not None or not _same(active_result, result):
            kind = "differed"
        if kind != "same":
            finding = {
                "symbol": symbol,
                "args": _shown(list(args)),
                "kwargs": _shown(kwargs or {}),
                "times": 1,
            }
            if kind == "differed":
                finding["active"] = (
                    _shown(active_result)
                    if active_error is None
                    else {"$error": _describe_error(self.active, symbol, active_error)}
                )
                finding["candidate"] = (
                    _shown(result)
                    if error is None
                    else {"$error": _describe_error(self.candidate, symbol, error)}
                )
            else:
                finding["active"] = _shown(active_result)
                finding["error"] = (
                    f"{self.candidate} {symbol}() did not return within "
                    f"{self.timeout_s:g} s: interrupted"
                    if kind == "timeout"
                    else _describe_error(self.candidate, symbol, error or Exception())
                )
        with self._lock:
            if not self._open:
                return  # stopped (or stopping) meanwhile: the report is final
            s = self._stats
            s.compared += 1
            s.active_ns.add(active_ns)
            if not timed_out:
                s.candidate_ns.add(elapsed)
            if kind == "differed":
                s.differed += 1
                _keep(s.differences, finding)
            elif kind in ("candidate-error", "timeout"):
                if kind == "timeout":
                    s.timeouts += 1
                else:
                    s.candidate_errors += 1
                _keep(s.errors, finding)
            elif error is not None:
                s.both_raised += 1

    def _watch(self) -> None:
        """Interrupt a candidate call past its deadline. A poll (at most ten
        a second) rather than a notification per call, which would wake this
        thread for every sampled call."""
        period = min(0.1, max(0.01, self.timeout_s / 10))
        while self.ended is None:
            current = self._current
            if current is not None and time.monotonic() > current[0]:
                current[1].fire()
            time.sleep(period)  # a poll: the worker must not pay for waking us

    # -- reading --------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The run so far (or, once ended, its final figures) as JSON data."""
        with self._lock:
            s = self._stats
            state = "ended" if self.ended is not None else "running"
            return {
                "slot": self.slot,
                "candidate": self.candidate,
                "active": self.active,
                "state": state,
                "reason": self.reason,
                "sample": self.sample,
                "for_s": self.for_s,
                "queue": self.capacity,
                "timeout_s": self.timeout_s,
                "started": self.started,
                "ended": self.ended,
                "elapsed_s": round((self.ended or time.time()) - self.started, 3),
                "sampled": self._sampler.sampled if self._sampler is not None else 0,
                "compared": s.compared,
                "differed": s.differed,
                "candidate_errors": s.candidate_errors,
                "both_raised": s.both_raised,
                "timeouts": s.timeouts,
                "dropped": self._sampler.dropped if self._sampler is not None else 0,
                "pending": len(self._queue),
                "latency": {
                    self.active: s.active_ns.summary(),
                    self.candidate: s.candidate_ns.summary(),
                },
                "differences": [dict(d) for d in s.differences],
                "errors": [dict(e) for e in s.errors],
            }

    def summary(self) -> str:
        """One line for the journal."""
        r = self.report()
        return (
            f"{r['candidate']} vs {r['active']}: {r['compared']} compared, "
            f"{r['differed']} differed, {r['candidate_errors']} candidate errors, "
            f"{r['timeouts']} timeouts, {r['dropped']} dropped"
        )


_RUNNABLE = (VersionState.RESOLVED, VersionState.RETIRED)


class Shadows:
    """The shadow runs of one engine: at most one per slot."""

    def __init__(self, engine: Engine, journal: Journal) -> None:
        self.engine = engine
        self.journal = journal
        self._lock = threading.Lock()
        #: slot -> its running run, or the last one that ended.
        self._runs: dict[str, ShadowRun] = {}
        self._timers: dict[str, threading.Timer] = {}
        engine.subscribe(self._on_event)

    def start(
        self,
        version: str,
        *,
        peer: Peer,
        sample: float = DEFAULT_SAMPLE,
        for_s: float | None = None,
        queue: int = DEFAULT_QUEUE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Start shadowing ``version`` on its slot's live calls; journaled
        before it starts. Returns the run's first report."""
        if not 0 < sample <= 1:
            raise BadState(f"--sample {sample:g}: use a fraction above 0 and at most 1, e.g. 0.1")
        candidate = self.engine._version(version)
        slot = self.engine._slots[candidate.slot]
        with self._lock, slot.lock:
            current = self._runs.get(candidate.slot)
            if current is not None and current.running:
                raise BadState(
                    f"{candidate.slot} already has a shadow run ({current.candidate}, "
                    f"{time.time() - current.started:.0f} s so far): one per slot; "
                    f"`shadow stop {candidate.slot}` ends it",
                    slot=candidate.slot,
                )
            active = slot.active
            if active is None:
                raise BadState(
                    f"{candidate.slot} has no active version to compare {version} with",
                    slot=candidate.slot,
                )
            if candidate is active:
                raise BadState(
                    f"{version} is the active version: shadow a checked version that is not "
                    f"(`load` a new one, `check` it, then `shadow` it)",
                    version=version,
                )
            if candidate.state not in _RUNNABLE:
                hint = (
                    f"`check {version}` first"
                    if candidate.state is VersionState.LOADED
                    else "load and check a new version"
                )
                raise BadState(
                    f"{version} is {candidate.state.value}: only a checked version that is not "
                    f"active can be shadowed; {hint}",
                    version=version,
                )
            run = ShadowRun(
                self.engine,
                candidate,
                active,
                sample=sample,
                for_s=for_s,
                queue=queue,
                timeout_s=timeout_s,
                peer=peer,
            )
            # Write-ahead: durable before it starts and is answered.
            self.journal.record(
                "shadow",
                version,
                peer=peer,
                result=f"started against {active.id}, {sample:.0%} of calls"
                + (f" for {for_s:g} s" if for_s else ""),
                sha256=candidate.sha256,
                extra={"action": "start", "active": active.id, "sample": sample},
            )
            run.attach()
            self._runs[candidate.slot] = run
            if for_s is not None:
                timer = threading.Timer(for_s, self._end_on_its_own, (run, "time is up"))
                timer.daemon = True
                self._timers[candidate.slot] = timer
                timer.start()
        return run.report()

    def stop(self, target: str, *, peer: Peer) -> dict[str, Any]:
        """End the slot's run (``target``: a slot, or its candidate's id) and
        return its final report; journaled before it is answered."""
        run = self._run_of(target)
        with self._lock:
            if not run.running:
                return run.report()  # already over: its report, unchanged
            run.freeze()
            try:
                self.journal.record(
                    "shadow",
                    run.candidate,
                    peer=peer,
                    result=f"stopped: {run.summary()}",
                    sha256=self._candidate_sha(run),
                    extra={"action": "stop", "reason": "stopped"},
                )
            except LivepatchError:
                run.thaw()
                raise
            self._end(run, "stopped")
        return run.report()

    def report(self, target: str) -> dict[str, Any]:
        """The slot's running run, or its last one, as JSON data."""
        return self._run_of(target).report()

    def _run_of(self, target: str) -> ShadowRun:
        slot = target.partition("@")[0] if "@" in target else target
        if "@" in target:
            parse_version_id(target)  # a clear error for a malformed id
        self.engine._slot(slot)  # UnknownSlot, with the list
        run = self._runs.get(slot)
        if run is None:
            raise BadState(f"{slot} has had no shadow run: `shadow VERSION` starts one", slot=slot)
        return run

    def _candidate_sha(self, run: ShadowRun) -> str | None:
        try:
            return self.engine.info(run.candidate).sha256
        except LivepatchError:
            return None

    def _end(self, run: ShadowRun, reason: str) -> None:
        run.finish(reason)
        timer = self._timers.pop(run.slot, None)
        if timer is not None:
            timer.cancel()

    def _end_on_its_own(self, run: ShadowRun, reason: str) -> None:
        """A run that ends without a client asking: ended at once, then
        journaled (or deferred to the next record if the disk refuses)."""
        with self._lock:
            if not run.running or run._ending:
                return
            run._ending = True
            run.freeze()
            summary = run.summary()
            self._end(run, reason)
        self.journal.record_or_defer(
            "shadow",
            run.candidate,
            peer=_ENGINE_PEER,
            result=f"ended ({reason}): {summary}",
            extra={"action": "end", "reason": reason},
        )

    def _on_event(self, event: Event) -> None:
        # Under the slot's lock: decide here, journal on another thread.
        run = self._runs.get(event.slot)
        if run is None or not run.running:
            return
        reason = None
        if event.version == run.candidate and event.op in ("purge", "unload"):
            reason = f"{run.candidate} was {event.state}"
        elif event.state == VersionState.ACTIVE.value and event.version != run.active:
            reason = f"{event.version} was swapped in"
        if reason is not None:
            # The sampler comes off at once, before the swap is visible.
            run.detach()
            threading.Thread(target=self._end_on_its_own, args=(run, reason), daemon=True).start()

    def close(self) -> None:
        """End every run (the engine is stopping)."""
        for run in list(self._runs.values()):
            if run.running:
                self._end_on_its_own(run, "the engine stopped")
