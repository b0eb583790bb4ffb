"""``%hotswap`` on a whole fleet: ``%hotswap connect --fleet F [--registry URL]``.

After that, ``status``, ``push FILE --slot S``, ``rollback S``, ``symbols SHA
[SHA2]``, ``diff A B`` and ``history`` act on the fleet (the commands and
their parser are :mod:`livepatch.fleet.console`'s, as in ``livepatch shell
--fleet``); ``%hotswap connect [NAME]`` goes back to one engine. Any of those
verbs also works once with ``--fleet F`` without connecting. The views here
render the fleet as HTML (members side by side, the push history, a push
member by member); symbol tables reuse :mod:`.display`'s.
"""

from __future__ import annotations

import time
from typing import Any, Final

from IPython.core.error import UsageError
from IPython.utils.process import arg_split  # type: ignore[attr-defined]

from livepatch.commands.spec import (
    COMMANDS,
    FLEET_COMMANDS,
    FLEET_OPTION,
    ShellUsageError,
    fleet_route,
    localize,
    parse,
    strip_route,
)
from livepatch.errors import LivepatchError
from livepatch.fleet.console import FleetRunner, FleetSession, not_in_fleet
from livepatch.fleet.model import PushRecord, short
from livepatch.fleet.view import render_push, render_push_line, render_view
from livepatch.symbols import SymbolDiff, SymbolTable

from .display import _BAD, _GOOD, _HEAD, _TABLE, DiffView, Outcome, TableView, View, _e, _td, _th

__all__ = ["FleetView", "PushView", "detach_fleet", "fleet_line", "html_fleet", "html_push"]

PREFIX: Final = "%hotswap "

#: The attribute of the magics object that holds the fleet runner while connected.
_ATTR: Final = "_livepatch_fleet_runner"

#: Verbs that keep their engine meaning even while attached to a fleet.
_ENGINE_ONLY: Final = frozenset({"start", "stop", "unwatch"})

_STATE_COLOR: Final = {
    "ready": _GOOD,
    "diverged": _BAD,
    "down": "#718096",
    "unreachable": _BAD,
    "converging": "#b7791f",
}


def _span(text: str, color: str, bold: bool = False) -> str:
    weight = ";font-weight:bold" if bold else ""
    return f'<span style="color:{color}{weight}">{_e(text)}</span>'


def _history_rows(pushes: list[dict[str, Any]]) -> str:
    rows = []
    for p in pushes:
        record = PushRecord.from_json(p)
        color = {"committed": _GOOD, "aborted": _BAD, "abandoned": _BAD}.get(
            record.outcome, "#b7791f"
        )
        took = f"{record.finished - record.started:.2f} s" if record.finished else ""
        rows.append(
            "<tr>"
            + _td(_e(time.strftime("%H:%M:%S", time.localtime(record.started))))
            + _td(_e("rollback" if record.rollback else "push"))
            + _td(_e(f"{record.slot}={short(record.sha256)}"), title=record.sha256)
            + _td(_e(record.filename))
            + _td(_span(record.outcome, color, bold=True))
            + _td(_e(took), "text-align:right")
            + _td(_e(len(record.acks)), "text-align:right")
            + _td(_e(record.reason))
            + "</tr>"
        )
    head = "".join(
        _th(h) for h in ("time", "", "version", "file", "outcome", "took", "swapped", "why")
    )
    return f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(rows)}</table>'


def html_fleet(view: dict[str, Any]) -> str:
    """The fleet as HTML: the desired versions, a row per member, the pushes."""
    desired = view["desired"]
    slots = sorted(set(desired) | {s for m in view["members"] for s in m.get("active", {})})
    wanted = ", ".join(
        f"{_e(slot)}=<b>{_e(short(d['sha256']))}</b> ({_e(d['filename'])})"
        for slot, d in desired.items()
    )
    out = [
        f'<div class="lp-fleet"><div style="{_HEAD}">fleet <b>{_e(view["fleet"])}</b> '
        f"({_e(view['registry'])}): {len(view['members'])} members; desired: "
        f"{wanted or 'nothing pushed yet'}</div>"
    ]
    head = "".join(
        _th(h, style="text-align:right" if h == "calls/s" else "")
        for h in ("member", "state", "converged", "calls/s", *slots)
    )
    rows = []
    for m in view["members"]:
        converged = {True: _span("yes", _GOOD), False: _span("no", _BAD), None: "-"}[
            m.get("converged")
        ]
        cells = [
            _td(_e(m["name"])),
            _td(_span(m["state"], _STATE_COLOR.get(m["state"], "#718096"), bold=True)),
            _td(converged),
            _td(_e(f"{m['calls_per_s']:g}" if "calls_per_s" in m else "-"), "text-align:right"),
        ]
        for slot in slots:
            active = (m.get("active") or {}).get(slot)
            if not active:
                cells.append(_td("-"))
                continue
            off = slot in desired and active.get("sha256") != desired[slot]["sha256"]
            text = f"{active['version']} {short(active.get('sha256'))}"
            cells.append(
                _td(_span(text, _BAD, bold=True) if off else _e(text), title=active.get("sha256"))
            )
        rows.append(f'<tr class="lp-member">{"".join(cells)}</tr>')
    out.append(f'<table style="{_TABLE}"><tr>{head}</tr>{"".join(rows)}</table>')
    notes = [
        f"{m['name']} diverged on {slot}: {why}"
        for m in view["members"]
        for slot, why in (m.get("diverged") or {}).items()
    ]
    notes += [f"{m['name']}: {m['error']}" for m in view["members"] if m.get("error")]
    out += [f'<div style="{_HEAD};color:{_BAD}">{_e(n)}</div>' for n in notes]
    if view["pushes"]:
        out.append(f'<div style="{_HEAD};margin-top:6px">pushes</div>')
        out.append(_history_rows(view["pushes"]))
    out.append("</div>")
    return "".join(out)


def html_push(record: PushRecord) -> str:
    """A push as HTML: the outcome, then each member's vote and swap."""
    color = _GOOD if record.ok else _BAD
    kind = "rollback" if record.rollback else "push"
    head = (
        f'<div style="{_HEAD}">{_e(kind)} {_e(record.slot)}=<b>{_e(short(record.sha256))}</b> '
        f"({_e(record.filename)}): {_span(record.outcome, color, bold=True)}"
        f"{_e(f' ({record.reason})') if record.reason else ''}</div>"
    )
    rows = []
    for name in sorted(set(record.votes) | set(record.down) | set(record.acks)):
        vote = record.votes.get(name)
        if name in record.acks:
            what = _span(f"swapped to {record.acks[name]}", _GOOD)
        elif vote is not None and not vote.ok:
            what = _span(vote.says(), _BAD)
        elif name in record.down:
            what = _e("down, converges when it is back")
        elif vote is not None and record.outcome == "aborted":
            what = _e(f"voted ok, released {vote.version or ''}".rstrip())
        else:
            what = _e("voted ok")
        rows.append(f"<tr>{_td(_e(name))}{_td(what)}</tr>")
    table = f'<table style="{_TABLE}"><tr>{_th("member")}{_th("")}</tr>{"".join(rows)}</table>'
    return f'<div class="lp-push">{head}{table}</div>'


class FleetView(View):
    """The fleet side by side (``data`` is the view JSON, as ``status --fleet --json``)."""

    def __init__(self, view: dict[str, Any]) -> None:
        self.data = view

    def member(self, name: str) -> dict[str, Any]:
        """One member's row; ``KeyError`` if it is not in the fleet."""
        for m in self.data["members"]:
            if m["name"] == name:
                return dict(m)
        raise KeyError(name)

    def text(self, color: bool = False) -> str:
        """Same layout as ``livepatch status --fleet``."""
        return render_view(self.data)

    def html(self) -> str:
        """A row per member, then the push history."""
        return html_fleet(self.data)


class PushView(View):
    """What a push did (``data`` is the push record JSON)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.data = record
        self.record = PushRecord.from_json(record)

    @property
    def ok(self) -> bool:
        """Whether it committed."""
        return self.record.ok

    def text(self, color: bool = False) -> str:
        """Member by member, as ``livepatch push`` prints it."""
        return render_push(self.record)

    def html(self) -> str:
        """The outcome and each member's vote and swap."""
        return html_push(self.record)


def _take(words: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` (or ``flag=VALUE``) from ``words``; its value."""
    for i, word in enumerate(words):
        if word == flag:
            if i + 1 >= len(words):
                raise UsageError(f"{flag} needs a value")
            value = words[i + 1]
            del words[i : i + 2]
            return value
        if word.startswith(flag + "="):
            del words[i]
            return word.partition("=")[2]
    return None


def detach_fleet(magics: Any) -> None:
    """Back to one engine: what a ``connect NAME`` or ``start`` that worked does."""
    setattr(magics, _ATTR, None)


def _runner(magics: Any) -> FleetRunner | None:
    runner: FleetRunner | None = getattr(magics, _ATTR, None)
    return runner


def _view_of(result: Any, verb: str, words: list[str]) -> View:
    data = result.data
    if verb == "status":
        return FleetView(data)
    if verb in ("push", "rollback"):
        return PushView(data)
    if verb in ("symbols", "diff"):
        note = result.text.partition("\n")[0]
        print(note)
        positionals = [w for w in words[1:] if not w.startswith("--")]
        if len(positionals) == 2:
            return DiffView(SymbolDiff.from_json(data))
        return TableView(SymbolTable.from_json(data))
    lines = [render_push_line(PushRecord.from_json(p)) for p in data]
    return Outcome(verb, data, f"{len(data)} pushes", detail="\n".join(lines) or None)


def _routed(words: list[str]) -> tuple[FleetRunner, list[str]] | None:
    """A verb of the one table given with ``--fleet`` (``status --fleet F``):
    a runner for that fleet and the command in its form; ``None`` for an
    engine's command. A fleet-only verb without ``--fleet`` is a usage error."""
    spec = COMMANDS.get(words[0]) if words else None
    if spec is None or spec.fleet is None:
        return None
    try:
        parsed = parse(words)
    except ShellUsageError:
        return None  # the magic's own parser says what is wrong, in its words
    if parsed.help:
        return None  # the verb's one help, with its fleet form: the magic shows it
    try:
        route = fleet_route(parsed)
        if route is None:
            return None
        session = FleetSession(*route)
    except ShellUsageError as exc:
        raise UsageError(_in_magic_syntax(str(exc))) from None
    except LivepatchError as exc:
        raise UsageError(exc.message) from None
    return FleetRunner(session, prefix=PREFIX), strip_route(parsed)


def _is_fleet(word: str) -> bool:
    return word.partition("=")[0] == FLEET_OPTION.flag


def _in_magic_syntax(message: str) -> str:
    return localize(message, PREFIX).replace("usage: ", f"usage: {PREFIX}")


def fleet_line(magics: Any, line: str, cell: str | None) -> View | None:
    """Handle ``line`` if it is about a fleet; ``None`` lets the engine verbs run.

    ``connect --fleet F [--registry URL]`` attaches the kernel to a fleet
    (and shows it), ``connect`` without ``--fleet`` and ``start`` detach it.
    Any verb with a fleet form given ``--fleet F`` runs once on that fleet
    (the one table's :func:`~livepatch.commands.spec.fleet_route`, as in the
    CLI and the shell); while attached, the fleet's verbs run on it.
    """
    try:
        words = arg_split(line, posix=True, strict=True)
    except ValueError:
        return None  # the magic's own parser says what is wrong
    verb = words[0] if words else None
    attached = _runner(magics)
    if verb == "connect" or verb == "start":
        fleet = _take(words, "--fleet")
        registry = _take(words, "--registry")
        if fleet is None:
            if registry is not None:
                raise UsageError("--registry goes with --fleet F")
            # The engine verb runs, and detaches the fleet once it worked
            # (detach_fleet): a mistyped name keeps the fleet attached.
            return None
        if verb == "start" or len(words) > 1:
            raise UsageError("usage: %hotswap connect --fleet F [--registry zookeeper://H:P/PATH]")
        try:
            session = FleetSession(fleet, registry)
        except LivepatchError as exc:
            raise UsageError(exc.message) from None
        # Attached once its status answers: a fleet that cannot be shown
        # (no such fleet, its registry unreachable) changes nothing.
        first = FleetRunner(session, prefix=PREFIX)
        result = first.execute(["status"])
        if not result.ok:
            raise UsageError(localize(result.error or "failed", PREFIX))
        setattr(magics, _ATTR, first)
        return _view_of(result, "status", ["status"])
    elif verb not in _ENGINE_ONLY and (attached is None or any(_is_fleet(w) for w in words)):
        routed = _routed(words)
        if routed is not None:
            attached, words = routed
    if attached is None or verb is None or verb in _ENGINE_ONLY:
        return None
    if verb not in FLEET_COMMANDS or verb in ("help", "quit", "?", "exit"):
        raise UsageError(
            not_in_fleet(verb, attached.session, PREFIX) + "; `%hotswap connect NAME`"
            " drives one engine"
        )
    if cell is not None:
        raise UsageError(f"%%hotswap {verb}: a fleet verb takes no cell")
    result = attached.execute(words)
    if result.usage:
        raise UsageError(_in_magic_syntax(result.error or "usage"))
    if not result.ok and result.data is None:
        raise UsageError(localize(result.error or "failed", PREFIX))
    view = _view_of(result, verb, words)
    if not result.ok:
        from IPython.display import display

        display(view)  # type: ignore[no-untyped-call]  # every reason, then one line
        raise UsageError(result.error or "failed")
    return view
