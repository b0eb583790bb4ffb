"""Save-to-live: load a rule file and keep loading it as it changes.

On every save: load the file as a new version, check it, diff it against
the slot's active version and, when asked and the check is clean, swap it
in (compare-and-swap against the version that was active, so a save never
overwrites another client's swap). A save that does not compile or fails
its check leaves the active version serving and says why. An engine that
goes away does not end the watch: the save is reported as not loaded, and
the next one reconnects to the engine of the same name (restarted, say, by
its supervisor) and loads there.

This is the client side only: it speaks the control protocol through a
:class:`~livepatch.client.Client`, so the same loop serves the CLI
(``livepatch load FILE --watch``), the shell and ``%hotswap load --watch``.
Changes are seen with ``watchfiles`` (inotify, debounced), on the file's
directory so that editors which save through a rename are followed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LivepatchError

if TYPE_CHECKING:
    from .client import Client
    from .resolve import ResolveReport
    from .symbols import SymbolDiff

__all__ = ["WatchStep", "describe_step", "load_once", "watch_file", "watch_until_interrupted"]

#: Milliseconds to gather the events of one save (an editor's write, rename
#: and chmod arrive together) before loading.
DEBOUNCE_MS = 100


@dataclass(frozen=True)
class WatchStep:
    """What one save did.

    ``version`` is the version the file now is (an existing one when the
    source did not change), ``None`` when the load failed (``error`` says
    why, in one line). ``diff`` compares it with the version active before
    the save. ``swapped`` is true when it went live; ``active`` is the slot's
    active version afterwards. ``seconds`` runs from the save being seen to
    the step's end (the swap, when there is one).
    """

    path: str
    slot: str
    version: str | None
    new: bool
    error: str | None
    report: ResolveReport | None
    diff: SymbolDiff | None
    swapped: bool
    active: str | None
    seconds: float
    #: The engine could not be reached for this save (``error`` says so).
    gone: bool = False
    #: Said once the engine is back: ``reconnected to engine 'e1'`` (and
    #: whether it was restarted), before this save's report.
    reconnected: str = ""

    @property
    def ok(self) -> bool:
        """True when the file loaded and passed its check."""
        return self.error is None and (self.report is None or self.report.ok)


def _active(client: Client, slot: str) -> str | None:
    for info in client.status()["slots"]:
        if info["name"] == slot:
            active = info.get("active")
            return str(active) if active else None
    return None


def load_once(client: Client, path: Path, slot: str, *, swap: bool = False) -> WatchStep:
    """Load, check, diff and (with ``swap``) swap ``path`` once."""
    from .client import file_load_params  # the client module imports this one lazily

    started = time.monotonic()
    before = _active(client, slot)

    def step(**fields: Any) -> WatchStep:
        base: dict[str, Any] = {
            "path": str(path),
            "slot": slot,
            "version": None,
            "new": False,
            "error": None,
            "report": None,
            "diff": None,
            "swapped": False,
            "active": before,
        }
        base.update(fields)
        return WatchStep(seconds=time.monotonic() - started, **base)

    try:
        params = {"slot": slot, **file_load_params(path)}
    except ValueError as exc:
        return step(error=str(exc))
    try:
        loaded = client.request("load", params)
    except LivepatchError as exc:
        return step(error=exc.message)
    version = str(loaded["version"])
    new = bool(loaded.get("new"))
    if version == before:
        return step(version=version, new=new)
    report = client.check(version)
    diff = client.diff(before, version) if before else None
    if not (swap and report.ok):
        return step(version=version, new=new, report=report, diff=diff)
    try:
        result = client.swap(version, expect=before)
    except LivepatchError as exc:
        return step(version=version, new=new, report=report, diff=diff, error=exc.message)
    return step(
        version=version,
        new=new,
        report=report,
        diff=diff,
        swapped=bool(result.get("changed")),
        active=str(result["active"]),
    )


def _load_reaching(
    client: Client, path: Path, slot: str, *, swap: bool, retry: bool = True
) -> WatchStep:
    """:func:`load_once`, reconnecting first if the engine went away (a lost
    reply is harmless: loading the same source again finds its version, and
    the swap is a compare-and-swap); a step marked ``gone`` while it is away."""
    from .client import ConnectionLost

    said = ""
    if not client.connected:
        try:
            said = _reconnect(client)
        except LivepatchError as exc:  # still away
            return _gone(path, slot, exc.message)
    try:
        step = load_once(client, path, slot, swap=swap)
    except ConnectionLost as exc:
        client.close()  # the next attempt (or save) reconnects
        if retry and not said:  # it went since the last save: once more, reconnected
            return _load_reaching(client, path, slot, swap=swap, retry=False)
        return _gone(path, slot, exc.message)
    return replace(step, reconnected=said) if said else step


def _reconnect(client: Client) -> str:
    """Reconnect to the engine of the same name; what to tell the user.
    :class:`LivepatchError` while it is still away."""
    pid = client.info.pid
    client.reconnect()
    name, now = client.info.name, client.info.pid
    if now != pid:
        return f"reconnected to engine {name!r}: it was restarted (pid {pid}, now {now})"
    return f"reconnected to engine {name!r}"


def _gone(path: Path, slot: str, why: str) -> WatchStep:
    return WatchStep(
        path=str(path),
        slot=slot,
        version=None,
        new=False,
        error=f"not loaded: {why}; the next save is loaded once the engine is back",
        report=None,
        diff=None,
        swapped=False,
        active=None,
        seconds=0.0,
        gone=True,
    )


def watch_file(
    client: Client,
    path: Path,
    slot: str,
    *,
    swap: bool = False,
    stop: threading.Event | None = None,
    debounce_ms: int = DEBOUNCE_MS,
) -> Iterator[WatchStep]:
    """Load ``path`` now and again after every save, until ``stop`` is set.

    Yields one :class:`WatchStep` per load. The file's directory is watched
    (not the file), so a save that writes a new file and renames it over the
    old one is seen like an in-place write; a deleted file is waited for.
    """
    import watchfiles  # imported on first use: only watching needs it

    path = path.absolute()
    stop = stop or threading.Event()
    # Taken before the first load: a save made before the watcher below is
    # set up (right after the first report) has no event, but changes this.
    seen = _stamp(path)
    yield _load_reaching(client, path, slot, swap=swap)

    def ours(change: watchfiles.Change, changed: str) -> bool:
        return change is not watchfiles.Change.deleted and Path(changed) == path

    for changes in watchfiles.watch(
        path.parent,
        watch_filter=ours,
        debounce=debounce_ms,
        step=min(50, debounce_ms),
        stop_event=stop,
        recursive=False,
        rust_timeout=500,
        # Every 0.5 s without an event too: the stamp check below.
        yield_on_timeout=True,
        # watchfiles turns whatever a signal handler raised into "signal":
        # a KeyboardInterrupt here, never its own warning line on stderr.
        raise_interrupt=True,
    ):
        if stop.is_set():
            return
        stamp = _stamp(path)
        if not changes and stamp == seen:
            continue
        seen = stamp
        if path.exists():
            yield _load_reaching(client, path, slot, swap=swap)


def _stamp(path: Path) -> tuple[int, int] | None:
    """The file's modification time and size (``None`` while it is missing)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def describe_step(step: WatchStep, *, color: bool = False) -> str:
    """What one save did, for a person: one line, then the check's problems
    or the diff's changed rows when there are any."""
    from .render import render_diff, render_report

    name = Path(step.path).name
    if step.gone:
        return f"{name}: {step.error}"
    if step.reconnected:
        return step.reconnected + "\n" + describe_step(replace(step, reconnected=""), color=color)
    if step.version is None:
        return f"{name}: {step.error}; {step.active or 'nothing'} keeps serving"
    if step.version == step.active and not step.swapped and step.report is None:
        return f"{name}: unchanged ({step.version} is active)"
    head = f"{name}: loaded {step.version}" if step.new else f"{name}: is {step.version}"
    parts = [head]
    if step.report is not None and not step.report.ok:
        parts.append(f"check failed; {step.active or 'nothing'} keeps serving")
        return "; ".join(parts) + "\n" + render_report(step.report, color=color)
    if step.error:
        parts.append(f"not swapped: {step.error}")
    elif step.swapped:
        parts.append(f"swapped in ({step.seconds * 1000:.0f} ms from the save)")
    else:
        parts.append(f"check ok; {step.active or 'nothing'} still active (add --swap to swap)")
    text = "; ".join(parts)
    if step.diff is not None:
        changed = tuple(r for r in step.diff.rows if r.marker != "=")
        if changed:
            text += "\n" + render_diff(replace(step.diff, rows=changed), color=color)
    return text


def watch_until_interrupted(
    client: Client,
    path: Path,
    slot: str,
    *,
    swap: bool,
    emit: Callable[[WatchStep], None],
) -> None:
    """Run :func:`watch_file` in the foreground until Ctrl-C (which ends it
    quietly), handing each step to ``emit``. A SIGTERM that arrived while
    watchfiles waited (it reports any signal as a KeyboardInterrupt) still
    ends the front end as SIGTERM (:mod:`livepatch.stopping`)."""
    from .stopping import raise_if_stopped

    stop = threading.Event()
    try:
        for step in watch_file(client, path, slot, swap=swap, stop=stop):
            emit(step)
    except KeyboardInterrupt:
        stop.set()
        raise_if_stopped()
