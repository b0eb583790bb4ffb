"""The vocabulary of a command: its arguments, options, fleet form and spec,
and a command line once parsed.

:mod:`.spec` holds the table of commands written in these terms, and the
parser; everything here is re-exported there, so front ends import from
:mod:`.spec` alone.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Mapping
from typing import Final

from ..record import Record, set_field

__all__ = [
    "DEADLINE_OPTION",
    "EXAMPLE_FLEET",
    "FLEET_OPTION",
    "REGISTRY_OPTION",
    "ROUTE_OPTIONS",
    "VERSION_ID",
    "Arg",
    "ArgKind",
    "CommandSpec",
    "FleetUse",
    "Option",
    "ParsedCommand",
    "ShellUsageError",
]

#: A version id as the engine writes it: ``slot@N``.
VERSION_ID: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*@[0-9]+")


class ShellUsageError(ValueError):
    """A command line that cannot be run; the message says how to fix it."""


class ArgKind(enum.Enum):
    """What an argument names; completion and highlighting follow from it."""

    COMMAND = "command"
    FILE = "file"
    SLOT = "slot"
    VERSION = "version"
    TARGET = "target"  # SLOT.SYMBOL or SLOT@N.SYMBOL
    JSON = "json"
    SECONDS = "seconds"
    NUMBER = "number"  # any number of 0 or more: a rate
    ENGINE = "engine"  # an engine's name
    COUNT = "count"
    SWITCH = "switch"  # an option that takes no value: ``--watch``
    FRACTION = "fraction"  # a number above 0 and at most 1: ``--sample 0.1``
    FLEET = "fleet"  # a fleet's name
    REGISTRY = "registry"  # a fleet registry: local, or zookeeper://HOST:PORT/PATH


class Arg(Record):
    """A positional argument."""

    __slots__ = ("dest", "kind", "metavar", "optional", "repeat")
    dest: str
    metavar: str
    kind: ArgKind
    optional: bool
    repeat: bool

    def __init__(
        self, dest: str, metavar: str, kind: ArgKind, optional: bool = False, repeat: bool = False
    ) -> None:
        set_field(self, "dest", dest)
        set_field(self, "metavar", metavar)
        set_field(self, "kind", kind)
        set_field(self, "optional", optional)
        set_field(self, "repeat", repeat)

    def usage(self) -> str:
        """How ``help`` shows it: ``VERSION``, ``[VERSION2]``, ``[JSON...]``."""
        text = self.metavar + ("..." if self.repeat else "")
        return f"[{text}]" if self.optional else text


class Option(Record):
    """An option that takes one value: ``--slot spam`` or ``--slot=spam``;
    of kind ``SWITCH``, one that takes none: ``--watch``.

    ``default`` (if not ``None``) is the value when the option is left out,
    and its help says so: the one place the default is written.
    """

    __slots__ = ("default", "dest", "flag", "help", "kind", "metavar")
    flag: str
    dest: str
    metavar: str
    kind: ArgKind
    help: str
    default: object

    def __init__(
        self,
        flag: str,
        dest: str,
        metavar: str,
        kind: ArgKind,
        help: str,
        default: object = None,
    ) -> None:
        set_field(self, "flag", flag)
        set_field(self, "dest", dest)
        set_field(self, "metavar", metavar)
        set_field(self, "kind", kind)
        if default is not None:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            help = f"{help} (default: {shown})"
        set_field(self, "help", help)
        set_field(self, "default", default)

    def usage(self) -> str:
        """How ``help`` shows it: ``[--slot SLOT]``, ``[--watch]``."""
        if self.kind is ArgKind.SWITCH:
            return f"[{self.flag}]"
        return f"[{self.flag} {self.metavar}]"


#: Where a fleet example runs, in the one-shot form of an example.
EXAMPLE_FLEET: Final = "prod"

#: ``VERB ... --fleet NAME``: the verb acts on every member of fleet NAME.
FLEET_OPTION: Final = Option(
    "--fleet",
    "fleet",
    "NAME",
    ArgKind.FLEET,
    "act on every member of fleet NAME",
)

#: Where the fleet's members, desired versions and sources are found.
REGISTRY_OPTION: Final = Option(
    "--registry",
    "registry",
    "URL",
    ArgKind.REGISTRY,
    "with --fleet: where the fleet is kept, local (this host) or zookeeper://HOST:PORT/PATH",
    default="local",
)

#: How long a push waits for every member's vote.
DEADLINE_OPTION: Final = Option(
    "--deadline",
    "deadline",
    "SECONDS",
    ArgKind.SECONDS,
    "members must vote within this",
    default=60.0,
)

#: The options that say which fleet a verb acts on.
ROUTE_OPTIONS: Final = (FLEET_OPTION, REGISTRY_OPTION)


class FleetUse(Record):
    """What a verb does for a whole fleet.

    Written ``VERB ... --fleet NAME`` in the CLI, the engine shell and
    ``%hotswap``, and plain ``VERB ...`` in the fleet shell. Empty
    ``summary``/``description`` and ``args=None`` mean the verb's own;
    ``options`` are those only the fleet form takes; ``examples`` are
    written as in the fleet shell (the CLI's help adds ``--fleet``).
    ``only``: the verb exists only for fleets (``push``, ``history``).
    """

    __slots__ = ("args", "description", "examples", "only", "options", "summary")
    summary: str
    description: str
    args: tuple[Arg, ...] | None
    options: tuple[Option, ...]
    examples: tuple[str, ...]
    only: bool

    def __init__(
        self,
        summary: str = "",
        description: str = "",
        args: tuple[Arg, ...] | None = None,
        options: tuple[Option, ...] = (),
        examples: tuple[str, ...] = (),
        only: bool = False,
    ) -> None:
        set_field(self, "summary", summary)
        set_field(self, "description", description)
        set_field(self, "args", args)
        set_field(self, "options", options)
        set_field(self, "examples", examples)
        set_field(self, "only", only)


class CommandSpec(Record):
    """One shell command: its name, arguments, options and help.

    ``cli``: whether ``livepatch VERB`` (and ``%hotswap VERB``) offers it as
    a one-shot verb (not help/quit). ``fleet``: what it does for a whole
    fleet, if anything; a one-shot verb with a fleet form takes ``--fleet``,
    ``--registry`` and the fleet form's options besides its own
    (``options`` holds them all; :meth:`for_fleet` is the fleet shell's form).
    """

    __slots__ = (
        "aliases",
        "args",
        "cli",
        "description",
        "examples",
        "fleet",
        "name",
        "options",
        "summary",
    )
    name: str
    summary: str
    description: str
    args: tuple[Arg, ...]
    options: tuple[Option, ...]
    aliases: tuple[str, ...]
    examples: tuple[str, ...]
    cli: bool
    fleet: FleetUse | None

    def __init__(
        self,
        name: str,
        summary: str,
        description: str,
        args: tuple[Arg, ...] = (),
        options: tuple[Option, ...] = (),
        aliases: tuple[str, ...] = (),
        examples: tuple[str, ...] = (),
        cli: bool = True,
        fleet: FleetUse | None = None,
    ) -> None:
        if fleet is not None and cli:
            # A fleet-only verb's own options first: push FILE --slot S --fleet F.
            order = (
                (*fleet.options, *ROUTE_OPTIONS) if fleet.only else (*ROUTE_OPTIONS, *fleet.options)
            )
            extra = [o for o in order if o not in options]
            options = (*options, *extra)
        set_field(self, "name", name)
        set_field(self, "summary", summary)
        set_field(self, "description", description)
        set_field(self, "args", args)
        set_field(self, "options", options)
        set_field(self, "aliases", aliases)
        set_field(self, "examples", examples)
        set_field(self, "cli", cli)
        set_field(self, "fleet", fleet)

    @property
    def fleet_only(self) -> bool:
        """Whether the verb acts on fleets only (``push``)."""
        return self.fleet is not None and self.fleet.only

    def for_fleet(self) -> CommandSpec:
        """The verb as the fleet shell has it: the fleet form's summary,
        description, arguments, options and examples, without ``--fleet``."""
        fleet = self.fleet
        if fleet is None:
            raise ValueError(f"{self.name} has no fleet form")
        return CommandSpec(
            self.name,
            fleet.summary or self.summary,
            fleet.description or self.description,
            args=self.args if fleet.args is None else fleet.args,
            options=fleet.options,
            aliases=self.aliases,
            examples=fleet.examples,
            cli=self.cli,
        )

    def full_description(self) -> str:
        """The description, and for a verb with a fleet form what it does
        with ``--fleet`` (a fleet-only verb's description is its fleet form's)."""
        fleet = self.fleet
        if fleet is None or not self.cli or fleet.only or not fleet.description:
            return self.description
        return (
            f"{self.description}\n\nWith --fleet NAME [--registry URL], on every member "
            f"of the fleet:\n{fleet.description}"
        )

    def all_examples(self) -> tuple[str, ...]:
        """The examples, the fleet form's with ``--fleet`` added."""
        if self.fleet is None or not self.cli:
            return self.examples
        return (*self.examples, *(f"{e} --fleet {EXAMPLE_FLEET}" for e in self.fleet.examples))

    def usage(self) -> str:
        """``load FILE [--slot SLOT]``."""
        parts = [self.name, *(a.usage() for a in self.args), *(o.usage() for o in self.options)]
        return " ".join(parts)

    def option(self, word: str) -> Option | None:
        """The option spelled ``word`` (``--slot`` or ``--slot=...``), if any."""
        flag = word.partition("=")[0]
        return next((o for o in self.options if o.flag == flag), None)

    def positional(self, index: int) -> Arg | None:
        """The spec of the ``index``-th positional word (repeats absorb the rest)."""
        if index < len(self.args):
            return self.args[index]
        if self.args and self.args[-1].repeat:
            return self.args[-1]
        return None

    def help_text(self, prefix: str = "") -> str:
        """The full help of the command, as ``help NAME`` prints it.

        ``prefix`` is the front end's way to write a command (``livepatch ``,
        ``%hotswap ``; nothing in the shell), used in the usage and examples.
        """
        lines = [f"usage: {prefix}{self.usage()}", "", self.full_description()]
        if self.options:
            lines.append("")
            width = max(len(f"{o.flag} {o.metavar}") for o in self.options)
            lines.extend(f"  {f'{o.flag} {o.metavar}':<{width}}  {o.help}" for o in self.options)
        if self.aliases:
            lines += ["", "also: " + ", ".join(self.aliases)]
        examples = self.all_examples()
        if examples:
            lines += ["", "examples:", *(f"  {prefix}{e}" for e in examples)]
        return "\n".join(lines)


class ParsedCommand(Record):
    """A command line after parsing: the spec, positional values and options.

    ``values`` maps each argument's ``dest`` to a string, a list of strings
    (repeated arguments) or ``None`` (an optional argument left out), and each
    option's ``dest`` to its value (``float``/``int`` for SECONDS/COUNT) or
    ``None``. ``help`` is true for ``COMMAND --help``.
    """

    __slots__ = ("help", "spec", "values", "words")
    spec: CommandSpec
    words: tuple[str, ...]
    values: Mapping[str, object]
    help: bool

    def __init__(
        self,
        spec: CommandSpec,
        words: tuple[str, ...],
        values: Mapping[str, object] | None = None,
        help: bool = False,
    ) -> None:
        set_field(self, "spec", spec)
        set_field(self, "words", words)
        set_field(self, "values", {} if values is None else values)
        set_field(self, "help", help)

    @property
    def text(self) -> str:
        """The command as the user could type it again."""
        return shlex.join(self.words)

    def string(self, dest: str) -> str:
        """A string value (``""`` when absent)."""
        value = self.values.get(dest)
        return value if isinstance(value, str) else ""

    def optional(self, dest: str) -> str | None:
        """A string value, or ``None`` when absent."""
        value = self.values.get(dest)
        return value if isinstance(value, str) else None

    def strings(self, dest: str) -> list[str]:
        """A repeated argument's values."""
        value = self.values.get(dest)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    def flag(self, dest: str) -> bool:
        """Whether a ``SWITCH`` option was given."""
        return self.values.get(dest) is True

    def number(self, dest: str) -> float | None:
        """A numeric option's value, or ``None``."""
        value = self.values.get(dest)
        return float(value) if isinstance(value, int | float) else None
