"""What the fleet's front ends call: push, rollback, the view, symbols.

The verbs themselves (``push``, ``status --fleet``, ``rollback --fleet``...)
are the command layer's (:mod:`livepatch.commands.spec`), run by
:class:`~livepatch.fleet.console.FleetRunner` on the functions here.
:func:`add_fleet_arguments` adds the ``--fleet``/``--registry`` options of
``engine`` and ``shell`` to the ``livepatch`` parser; :func:`start_member`
is the engine's one call at start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..runtime import ConnectionInfo
from .model import FleetError, PushRecord, Rule, short, validate_fleet_name

if TYPE_CHECKING:
    # argparse only where a parser is built: a one-shot fleet verb builds none.
    import argparse

__all__ = [
    "Member",
    "add_fleet_arguments",
    "fleet_history",
    "fleet_symbols",
    "fleet_view",
    "push_source",
    "read_rule",
    "rollback_fleet",
    "start_member",
]


class Member(Protocol):
    """A running member agent."""

    def stop(self) -> None:
        """Leave the fleet."""
        ...


def _is_zk(registry: str | None) -> bool:
    return registry is not None and registry not in ("", "local")


def _quiet_kazoo() -> None:
    """A one-shot command (or an engine's member) says itself what went
    wrong with ZooKeeper; kazoo's reconnect warnings would only bury that line."""
    import logging

    logging.getLogger("kazoo").setLevel(logging.CRITICAL)


def _fleet_name(text: str) -> str:
    try:
        return validate_fleet_name(text)
    except FleetError as exc:
        import argparse

        raise argparse.ArgumentTypeError(exc.message) from None


def start_member(args: argparse.Namespace, info: ConnectionInfo) -> Member | None:
    """Join ``args.fleet`` (if any) and converge before returning.

    The engine calls this after its server is up and before it prints its
    ready line: a member reports ready only once it runs the fleet's
    desired versions (or knows it cannot: *diverged*, said on stderr).
    """
    fleet = getattr(args, "fleet", None)
    if not fleet:
        return None
    validate_fleet_name(fleet)
    member: Any
    if _is_zk(args.registry):
        from ..client import Client
        from ..runtime import write_connection_file
        from .handle import ClientHandle
        from .zkmember import ZkMember
        from .zkurl import parse_zk_url

        address = parse_zk_url(args.registry)
        client = Client(info, client_name="livepatch-fleet", timeout=120.0)
        # The member says itself, once, that ZooKeeper went and came back:
        # kazoo would warn on every reconnect attempt meanwhile.
        _quiet_kazoo()

        def say(message: str) -> None:
            print(f"fleet {fleet}: {message}", file=sys.stderr, flush=True)

        member = ZkMember(address, fleet, ClientHandle(client), pid=info.pid, say=say)
        state = member.start()
        # Local tools (status, the demo) find ZooKeeper members here too.
        write_connection_file(info._replace(fleet=fleet))
    else:
        from .local import LocalMember

        member = LocalMember(fleet, info)
        state = member.start()
    for slot, why in state.diverged.items():
        print(f"fleet {fleet}: diverged on {slot}: {why}", file=sys.stderr, flush=True)
    active = ", ".join(f"{s}={a['version']} {short(a['sha256'])}" for s, a in state.active.items())
    print(
        f"fleet {fleet}: {state.state} ({active or 'nothing active'})", file=sys.stderr, flush=True
    )
    result: Member = member
    return result


# ---------------------------------------------------------------------------
# Verbs


def push_source(
    fleet: str,
    registry: str | None,
    slot: str,
    source: Rule,
    filename: str,
    *,
    expect: str | None = None,
    deadline_s: float = 60.0,
    rollback: bool = False,
) -> PushRecord:
    """Push a source (or a ready shared object's bytes) to a fleet through
    its registry; returns the record."""
    validate_fleet_name(fleet)
    if _is_zk(registry):
        from .zk import ZkRegistry, parse_zk_url

        assert registry is not None
        _quiet_kazoo()
        with ZkRegistry(parse_zk_url(registry), fleet, create=False) as reg:
            return reg.push(
                slot, source, filename, expect=expect, deadline_s=deadline_s, rollback=rollback
            )
    from .local import push_local

    return push_local(
        fleet, slot, source, filename, expect=expect, deadline_s=deadline_s, rollback=rollback
    )


def read_rule(path: Path) -> Rule:
    """What to push from a rule file: its text (a Python module, or C that a
    native slot compiles), or, for a ready shared object (``.so``, or any
    ELF file), its bytes, which members load from memory, so no member needs
    to see the file. :class:`FleetError` says what is wrong."""
    from ..client import MAX_SENT_OBJECT
    from ..filekind import is_elf

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if is_elf(data) or path.suffix == ".so" or ".so." in path.name:
        # A .so that is no ELF goes too: each member refuses it with its reason.
        if len(data) > MAX_SENT_OBJECT:
            raise FleetError(
                f"{path.name} is {len(data) / 2**20:.1f} MiB: an object pushed to a fleet may be "
                f"at most {MAX_SENT_OBJECT / 2**20:.1f} MiB; strip it (`strip --strip-debug`)"
            )
        return data
    from ..errors import LoadFailed
    from ..files import text_or_object

    try:
        # As `livepatch load` reads it: a Python module as python3 decodes it
        # (a BOM, a coding cookie), C as UTF-8.
        return text_or_object(data, path.name)
    except LoadFailed as exc:
        raise FleetError(
            f"{exc.message}: push a Python rule module, a C source or a shared object"
        ) from None


def rollback_fleet(
    fleet: str, registry: str | None, slot: str, deadline_s: float = 60.0
) -> PushRecord:
    """Push the version the fleet ran before its current desired one."""
    validate_fleet_name(fleet)
    if _is_zk(registry):
        from .zk import ZkRegistry, parse_zk_url

        assert registry is not None
        _quiet_kazoo()
        with ZkRegistry(parse_zk_url(registry), fleet, create=False) as reg:
            desired = reg.desired().get(slot)
            if desired is None or desired[0].previous is None:
                raise FleetError(f"fleet {fleet} has no previous version of {slot} to roll back to")
            source, filename = reg.get_source(desired[0].previous)
            return reg.push(
                slot,
                source,
                filename,
                expect=desired[0].sha256,
                deadline_s=deadline_s,
                rollback=True,
            )
    from .local import rollback_local

    return rollback_local(fleet, slot, deadline_s)


def fleet_view(fleet: str, registry: str | None, history: int = 10) -> dict[str, Any]:
    """The fleet's members side by side and its push history."""
    from .view import annotate

    validate_fleet_name(fleet)
    if _is_zk(registry):
        from .zk import ZkRegistry, parse_zk_url

        assert registry is not None
        _quiet_kazoo()
        with ZkRegistry(parse_zk_url(registry), fleet, create=False) as reg:
            return annotate(reg.view(history))
    from .view import local_view

    return annotate(local_view(fleet, history=history))


def fleet_history(fleet: str, registry: str | None, limit: int = 10) -> list[PushRecord]:
    """The fleet's last pushes, oldest first (no member is asked)."""
    validate_fleet_name(fleet)
    if _is_zk(registry):
        from .zk import ZkRegistry, parse_zk_url

        assert registry is not None
        _quiet_kazoo()
        with ZkRegistry(parse_zk_url(registry), fleet, create=False) as reg:
            return reg.history(limit)
    from .store import LocalStore

    return LocalStore.existing(fleet).read().pushes[-limit:]


def fleet_symbols(fleet: str, registry: str | None, shas: list[str]) -> tuple[Any, str]:
    """One sha's symbol table, or two shas' diff, once for the fleet (one sha
    is one source everywhere): built on this host from the source kept in
    the fleet's registry, so no member need run here
    (:mod:`livepatch.fleet.tables`). The
    :class:`~livepatch.symbols.SymbolTable` or ``SymbolDiff``, and a line
    saying where it was read."""
    from .tables import registry_source, table_of_source

    if _is_zk(registry):
        _quiet_kazoo()
    found = registry_source(fleet, registry, shas)
    tables = [table_of_source(short(sha), source, name) for sha, source, name in found]
    if len(tables) == 2:
        from ..symbols import diff_tables

        result: Any = diff_tables(tables[0], tables[1])
    else:
        result = tables[0]
    what = " vs ".join(f"{short(sha)} ({name})" for sha, _, name in found)
    return result, f"# {what}: from fleet {fleet}'s registry ({registry or 'local'})"


# ---------------------------------------------------------------------------
# Parser


def _registry_url(text: str) -> str:
    if text in ("", "local"):
        return text
    from .zkurl import parse_zk_url

    try:
        parse_zk_url(text)
    except FleetError as exc:
        import argparse

        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def _fleet_option(p: argparse.ArgumentParser, help: str) -> None:
    from ..commands.spec import FLEET_OPTION

    p.add_argument(FLEET_OPTION.flag, type=_fleet_name, metavar=FLEET_OPTION.metavar, help=help)


def _registry_option(p: argparse.ArgumentParser) -> None:
    # The command layer's option, so every front end describes it alike.
    from ..commands.spec import REGISTRY_OPTION

    p.add_argument(
        REGISTRY_OPTION.flag,
        type=_registry_url,
        metavar=REGISTRY_OPTION.metavar,
        help=REGISTRY_OPTION.help.replace("with --fleet: ", ""),
    )


def add_fleet_arguments(sub: Any) -> None:
    """Add the fleet options of ``engine``, ``shell`` and ``demo`` to the
    ``livepatch`` subcommand parsers ``sub`` (the verbs that act on a fleet,
    ``push``, ``status --fleet``..., are the command layer's)."""
    choices: dict[str, argparse.ArgumentParser] = sub.choices
    engine = choices["engine"]
    _fleet_option(
        engine, "join this fleet (`livepatch push FILE --slot S --fleet NAME` reaches it)"
    )
    _registry_option(engine)

    shell = choices["shell"]
    _fleet_option(shell, "attach to a whole fleet: its members side by side, push, rollback")
    _registry_option(shell)

    demo = choices["demo"]
    demo.add_argument(
        "--fleet", type=int, metavar="N", help="tour a fleet push on N engines instead"
    )
