"""The command language of every front end: the commands as data, and the parser.

The CLI (``livepatch VERB``), the shell and the ``%hotswap`` magics all take
their verbs, options, help and examples from this one table. (The classes
it is written in are :mod:`.grammar`'s, re-exported here.)

Every command is a :class:`CommandSpec` in :data:`COMMANDS`: its positional
arguments and options each carry an :class:`ArgKind`, so one table drives
parsing, ``help``, completion (a ``VERSION`` argument completes version ids,
a ``FILE`` argument file paths) and the command-line lexer.

A line holds one or more commands separated by ``;``; words are split the way
a POSIX shell splits them, so JSON arguments are written in single quotes::

    load spam_v2.py --slot spam; check spam@2; swap spam@2 --expect spam@1
    call spam.classify '{"sender": "a@b.c", "text": "WIN NOW"}'

A verb that also acts on a whole fleet carries a :class:`FleetUse`: what it
does for a fleet, and the options only that form takes. ``VERB ... --fleet
NAME [--registry URL]`` (the CLI, the engine shell, ``%hotswap``) then runs
the verb on the fleet (:func:`fleet_route`), and :data:`FLEET_COMMANDS`, the
fleet shell's table (``livepatch shell --fleet NAME``, ``%hotswap connect
--fleet NAME``), is derived from the same entries, so both forms share one
definition of every verb and option.

Nothing here does I/O: the runner executes what the parser returns.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Final

from .grammar import (
    DEADLINE_OPTION,
    FLEET_OPTION,
    REGISTRY_OPTION,
    ROUTE_OPTIONS,
    VERSION_ID,
    Arg,
    ArgKind,
    CommandSpec,
    FleetUse,
    Option,
    ParsedCommand,
    ShellUsageError,
)

__all__ = [
    "COMMANDS",
    "DEADLINE_OPTION",
    "FLEET_COMMANDS",
    "FLEET_OPTION",
    "REGISTRY_OPTION",
    "VERSION_ID",
    "Arg",
    "ArgKind",
    "CommandSpec",
    "FleetUse",
    "Option",
    "ParsedCommand",
    "ShellUsageError",
    "command_names",
    "fleet_command_names",
    "fleet_route",
    "localize",
    "lookup",
    "on_register",
    "parse",
    "register",
    "split_commands",
    "split_script",
    "strip_route",
]

_VERSION = Arg("version", "VERSION", ArgKind.VERSION)
_SHA = Arg("version", "SHA", ArgKind.VERSION)

_SPECS: Final = (
    CommandSpec(
        "status",
        "the engine's slots, versions, states and call counts",
        "Show every slot with its active version (marked *) and every version\n"
        "with its state, call and error counts, calls in flight and source file.",
        examples=("status",),
        fleet=FleetUse(
            "every member side by side, and the push history",
            "One row per member: its state (ready, converging, diverged, down),\n"
            "whether it runs every desired version (converged), its calls per second\n"
            "and the active version of each slot (its own id and the sha; ! marks one\n"
            "that is not the desired version). Then the fleet's last pushes.",
            examples=("status",),
        ),
    ),
    CommandSpec(
        "load",
        "load a file as a new version of a slot",
        "Compile FILE and run its top level in a fresh module of the engine, as a\n"
        "new version of SLOT. Without --slot: the engine's only slot, or the only\n"
        "slot of the file's kind (.c/.so: native, else Python). Nothing calls it\n"
        "until it has passed `check` and been swapped in. Loading the same source\n"
        "again returns the existing version. A ready .so is sent as its bytes (the\n"
        "engine maps it from memory), so FILE need not be on the engine's machine.\n"
        "With --watch, FILE is loaded again on every save and each version checked\n"
        "and diffed against the active one (--swap: swapped in when clean); a broken\n"
        "save leaves the active version serving. Ctrl-C stops watching.",
        args=(Arg("file", "FILE", ArgKind.FILE),),
        options=(
            Option(
                "--slot",
                "slot",
                "SLOT",
                ArgKind.SLOT,
                "the slot to load into (default: picked by the file's kind)",
            ),
            Option(
                "--watch",
                "watch",
                "",
                ArgKind.SWITCH,
                "keep loading FILE on every save (check, diff against the active "
                "version) until Ctrl-C",
            ),
            Option(
                "--swap",
                "swap",
                "",
                ArgKind.SWITCH,
                "with --watch: swap each save in when its check is clean",
            ),
        ),
        examples=(
            "load livepatch/examples/rules/spam_v2.py --slot spam",
            "load livepatch/examples/rules/spam_v2.py --watch --swap",
        ),
    ),
    CommandSpec(
        "check",
        "resolve-check a version (every name it uses must resolve)",
        "The linker's job: every global name the version uses must be defined or\n"
        "be a builtin, attributes read off imported modules must exist, and the\n"
        "slot's interface must be implemented with the host's own types. Prints\n"
        "the problems with their lines; a failed version stays loaded to inspect.\n"
        "Exit status 1 when it finds problems.",
        args=(_VERSION,),
        examples=("check spam@2",),
    ),
    CommandSpec(
        "swap",
        "make a checked version active, atomically",
        "New calls run on VERSION from now on; calls in flight finish on the code\n"
        "they started with. With --expect, the swap is refused if another client\n"
        "changed the active version first (compare-and-swap).",
        args=(_VERSION,),
        options=(
            Option(
                "--expect",
                "expect",
                "VERSION",
                ArgKind.VERSION,
                "only if VERSION is active now (default: whatever is active)",
            ),
        ),
        examples=("swap spam@2 --expect spam@1",),
    ),
    CommandSpec(
        "rollback",
        "swap back to the version that was active before",
        "Make the most recently retired version of SLOT active again.",
        args=(Arg("slot", "SLOT", ArgKind.SLOT),),
        examples=("rollback spam",),
        fleet=FleetUse(
            "push the version the fleet ran before",
            "A push (two-phase, as `push`) of the slot's previous desired version;\n"
            "exit status 1 when it aborts, with each member's reason.",
            options=(DEADLINE_OPTION,),
            examples=("rollback spam",),
        ),
    ),
    CommandSpec(
        "purge",
        "forget a version's symbols (calls in flight finish)",
        "Drop VERSION from the engine's index and from sys.modules, so nothing new\n"
        "can find it (GHC's purgeObj). The active version cannot be purged.",
        args=(_VERSION,),
        examples=("purge spam@2",),
    ),
    CommandSpec(
        "unload",
        "drop the engine's references and report whether the code was freed",
        "Purge VERSION if needed, drop the engine's last references to it, and\n"
        "prove with a weak reference whether its code left memory; if not, say\n"
        "what still holds it (GHC's unloadObj).",
        args=(_VERSION,),
        options=(
            Option(
                "--wait",
                "wait",
                "SECONDS",
                ArgKind.SECONDS,
                "wait up to SECONDS for calls in flight first (default: 0)",
            ),
        ),
        examples=("unload spam@2 --wait 2",),
    ),
    CommandSpec(
        "symbols",
        "a version's symbol table, or two versions side by side",
        "nm for Python: one row per name with a letter (T function, C class,\n"
        "D data, I imported, U undefined and what it resolves to, W bound only\n"
        "through `global`; native versions: nm -D's letters, W weak). With two\n"
        "versions, every row side by side, marked = same, ~ changed, + added,\n"
        "- removed, and ! where a name resolves differently.",
        args=(_VERSION, Arg("other", "VERSION2", ArgKind.VERSION, optional=True)),
        examples=("symbols spam@2", "symbols spam@1 spam@2"),
        fleet=FleetUse(
            "a version's symbol table by sha, once for the fleet",
            "Versions are named by their sha256 (7 or more hex digits, as `status`\n"
            "shows them). One sha is one source on every member, so its table is the\n"
            "fleet's: it is built from the source kept in the fleet's registry, and no\n"
            "member need run on this host. With two shas, both side by side (= ~ + -).",
            args=(_SHA, Arg("other", "SHA2", ArgKind.VERSION, optional=True)),
            examples=("symbols 3f2a9c1b7d4e", "symbols 3f2a9c1b7d4e 91c0e2aa5b77"),
        ),
    ),
    CommandSpec(
        "diff",
        "two versions' symbol tables side by side (= ~ + -)",
        "The same view as `symbols A B`: every row of both versions side by side,\n"
        "marked = same, ~ changed, + added, - removed (! resolves differently),\n"
        "and a summary that counts the rows shown.",
        args=(Arg("a", "A", ArgKind.VERSION), Arg("b", "B", ArgKind.VERSION)),
        examples=("diff spam@1 spam@2",),
        fleet=FleetUse(
            "two versions' symbol tables side by side, by sha",
            "The same view as `symbols A B`, for versions named by their sha, read\n"
            "from the fleet's registry.",
            examples=("diff 3f2a9c1b7d4e 91c0e2aa5b77",),
        ),
    ),
    CommandSpec(
        "show",
        "a version's source, highlighted",
        "Print the source VERSION was loaded from, with line numbers.",
        args=(_VERSION,),
        examples=("show spam@1",),
    ),
    CommandSpec(
        "call",
        "call a rule with JSON arguments",
        "Call SYMBOL on the active version of SLOT (SLOT.SYMBOL) or on one\n"
        "version (SLOT@N.SYMBOL). Each argument is a JSON value; put it in single\n"
        "quotes. Dataclass parameters are built from JSON objects.",
        args=(
            Arg("target", "SLOT.SYMBOL", ArgKind.TARGET),
            Arg("args", "JSON", ArgKind.JSON, optional=True, repeat=True),
        ),
        examples=(
            'call spam.classify \'{"sender": "a@deals.biz", "text": "WIN!!!", "links": []}\'',
        ),
    ),
    CommandSpec(
        "journal",
        "the audit log of loads, checks, swaps, purges and unloads",
        "The engine's journal, oldest first: time, ok/ERR, operation, version,\nclient and result.",
        options=(
            Option("--limit", "limit", "N", ArgKind.COUNT, "only the last N entries (default: 20)"),
        ),
        examples=("journal --limit 5",),
    ),
    CommandSpec(
        "log",
        "the end of the engine's output (engines a front end started)",
        "The last lines an engine started by `livepatch demo` or `%hotswap start`\n"
        "wrote (rules' print output, warnings), from its log file in the runtime\n"
        "directory. An engine started by hand writes to its own terminal.",
        options=(Option("--lines", "lines", "N", ArgKind.COUNT, "the last N lines (default: 20)"),),
        examples=("log --lines 50",),
    ),
    CommandSpec(
        "watch",
        "live calls per second of every version, until a key is pressed",
        "A live table of every version's calls, calls per second, errors and calls\n"
        "in flight, refreshed until a key is pressed. In a script, give --for:\n"
        "the table is measured over that many seconds and printed once.",
        options=(
            Option(
                "--for",
                "for",
                "SECONDS",
                ArgKind.SECONDS,
                "measure for SECONDS, then print (default: live, on a terminal)",
            ),
        ),
        examples=("watch --for 2",),
    ),
    CommandSpec(
        "push",
        "two-phase push of a rule file to every member of a fleet",
        "Prepare: every member loads and checks the same source (same sha) and\n"
        "votes. Commit: only if every member voted ok before the deadline, the\n"
        "fleet's desired version flips (compare-and-set: concurrent pushes conflict\n"
        "cleanly) and every member swaps. Otherwise nobody swaps, the prepared\n"
        "versions are unloaded, each member's reason is shown and the exit status\n"
        "is 1. FILE is a Python rule module, a C source (every member compiles it)\n"
        "or a ready .so (sent as its bytes, so no member needs to see the file).",
        args=(Arg("file", "FILE", ArgKind.FILE),),
        fleet=FleetUse(
            options=(
                Option("--slot", "slot", "SLOT", ArgKind.SLOT, "the slot to push to (required)"),
                Option(
                    "--expect",
                    "expect",
                    "SHA",
                    ArgKind.VERSION,
                    "only if the fleet's desired version is SHA (a prefix) now",
                ),
                DEADLINE_OPTION,
            ),
            examples=("push livepatch/examples/rules/spam_v2.py --slot spam",),
            only=True,
        ),
    ),
    CommandSpec(
        "history",
        "a fleet's last pushes (no member is asked)",
        "The push history, oldest first: what was pushed, the outcome, how long\n"
        "it took and how many members swapped.",
        fleet=FleetUse(
            options=(
                Option(
                    "--limit", "limit", "N", ArgKind.COUNT, "only the last N pushes", default=10
                ),
            ),
            examples=("history --limit 5",),
            only=True,
        ),
    ),
    CommandSpec(
        "help",
        "the list of commands, or one command's help",
        "Without an argument, list the commands; with one, show its usage.",
        args=(Arg("command", "COMMAND", ArgKind.COMMAND, optional=True),),
        aliases=("?",),
        examples=("help swap",),
        cli=False,
        fleet=FleetUse(examples=("help push",)),
    ),
    CommandSpec(
        "quit",
        "leave the shell (an engine the demo started stops with it)",
        "Leave the shell. Ctrl-D on an empty line does the same. An engine you\n"
        "attached to keeps running; the demo's own engine stops with the demo.",
        aliases=("exit",),
        cli=False,
        fleet=FleetUse(
            "leave the shell (the fleet keeps running)",
            "Leave the shell. Ctrl-D on an empty line does the same.",
        ),
    ),
)

#: Every command by name and by alias; :func:`register` adds to it.
_REGISTRY: dict[str, CommandSpec] = {
    name: spec for spec in _SPECS for name in (spec.name, *spec.aliases)
}
_ORDER: list[CommandSpec] = list(_SPECS)

#: The fleet shell's commands (each a verb's :meth:`~CommandSpec.for_fleet`).
_FLEET_REGISTRY: dict[str, CommandSpec] = {}
_FLEET_ORDER: list[CommandSpec] = []


def _add_fleet_form(spec: CommandSpec) -> None:
    if spec.fleet is None:
        return
    form = spec.for_fleet()
    _FLEET_ORDER.append(form)
    _FLEET_REGISTRY.update(dict.fromkeys((form.name, *form.aliases), form))


for _spec in _SPECS:
    _add_fleet_form(_spec)


#: Called with each command :func:`register` adds (see :func:`on_register`).
_LISTENERS: list[Callable[[CommandSpec], None]] = []


def on_register(listener: Callable[[CommandSpec], None]) -> None:
    """Call ``listener(spec)`` for every command registered from now on: a
    front end whose help is built once (``%hotswap?``) rebuilds it."""
    _LISTENERS.append(listener)


def register(spec: CommandSpec) -> CommandSpec:
    """Add a command from another module (its handler: ``runner.register_handler``).

    Every front end picks it up: the shell's parser, help and completion, and
    ``livepatch VERB`` (when ``spec.cli``). Refuses a name already taken.
    """
    for name in (spec.name, *spec.aliases):
        if name in _REGISTRY:
            raise ValueError(f"command {name!r} is already defined")
    for name in (spec.name, *spec.aliases):
        _REGISTRY[name] = spec
    _ORDER.append(spec)
    _add_fleet_form(spec)
    for listener in list(_LISTENERS):
        listener(spec)
    return spec


#: Every command by name and by alias.
COMMANDS: Final[Mapping[str, CommandSpec]] = MappingProxyType(_REGISTRY)

#: The fleet shell's commands by name and alias: the verbs with a fleet
#: form, as that form (``livepatch shell --fleet F``, ``%hotswap connect --fleet F``).
FLEET_COMMANDS: Final[Mapping[str, CommandSpec]] = MappingProxyType(_FLEET_REGISTRY)


def fleet_command_names() -> list[str]:
    """The fleet shell's command names in the order its ``help`` lists them."""
    return [spec.name for spec in _FLEET_ORDER]


def fleet_route(parsed: ParsedCommand) -> tuple[str, str | None] | None:
    """``(fleet, registry)`` when ``parsed`` (a command of :data:`COMMANDS`)
    acts on a fleet (``--fleet NAME``); ``None`` when it acts on one engine
    (registry ``None``: the local one). :class:`ShellUsageError` for a
    fleet-only verb without ``--fleet``, or a fleet option without it."""
    spec = parsed.spec
    if spec.fleet is None or not spec.cli:
        return None
    fleet = parsed.optional("fleet")
    if fleet is not None:
        registry = parsed.optional("registry")
        return fleet, None if registry in (None, "", "local") else registry
    if spec.fleet_only:
        raise ShellUsageError(
            f"{spec.name} acts on a fleet: give --fleet NAME (or attach to one: "
            f"livepatch shell --fleet NAME, %hotswap connect --fleet NAME); usage: {spec.usage()}"
        )
    own = {o.flag for o in (*ROUTE_OPTIONS, *spec.fleet.options)}
    for word in parsed.words[1:]:
        flag = word.partition("=")[0]
        if flag in own:
            raise ShellUsageError(f"{flag} goes with --fleet NAME: usage: {spec.usage()}")
    return None


def strip_route(parsed: ParsedCommand) -> list[str]:
    """``parsed``'s words without ``--fleet``/``--registry``: the command as
    the fleet shell writes it (its form parses them)."""
    words: list[str] = []
    rest = iter(parsed.words)
    for word in rest:
        flag, eq, _ = word.partition("=")
        if flag in (FLEET_OPTION.flag, REGISTRY_OPTION.flag) and word.startswith("--"):
            if not eq:
                next(rest, None)
            continue
        words.append(word)
    return words


def command_names(*, aliases: bool = True) -> list[str]:
    """Command names in the order ``help`` lists them (aliases after)."""
    names = [spec.name for spec in _ORDER]
    if aliases:
        names += [a for spec in _ORDER for a in spec.aliases]
    return names


_QUOTED_COMMAND: Final = re.compile(r"`([a-z]+)(?=[ `])")


def localize(message: str, prefix: str) -> str:
    """A message naming commands in shell syntax (`` `check spam@2` ``, as the
    engine writes them), in a front end's own (`` `%hotswap check spam@2` ``)."""
    if not prefix:
        return message

    def sub(match: re.Match[str]) -> str:
        word = match.group(1)
        return f"`{prefix}{word}" if word in _REGISTRY else match.group(0)

    return _QUOTED_COMMAND.sub(sub, message)


#: How much of a word the user typed an error quotes back.
_SAID_MAX = 60


def _said(word: str) -> str:
    """``word`` quoted for an error line: whole when short, else its start and
    its length (a 5,000-character paste is not echoed back whole)."""
    if len(word) <= _SAID_MAX:
        return repr(word)
    return f"{word[:_SAID_MAX]!r}... ({len(word):,} characters)"


def lookup(name: str, commands: Mapping[str, CommandSpec] | None = None) -> CommandSpec:
    """The command called ``name`` (in ``commands``, default :data:`COMMANDS`);
    the error suggests the closest one."""
    table = COMMANDS if commands is None else commands
    spec = table.get(name)
    if spec is not None:
        return spec
    import difflib

    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise ShellUsageError(f"unknown command {_said(name)}: {hint}`help` lists the commands")


def _convert(option: Option, raw: str) -> object:
    if option.kind is ArgKind.NUMBER:
        try:
            number = float(raw)
        except ValueError:
            number = -1.0
        if not number >= 0:
            raise ShellUsageError(
                f"{option.flag}: expected a number of 0 or more, got {_said(raw)}"
            )
        return number
    if option.kind is ArgKind.SECONDS:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0:  # also refuses nan
            raise ShellUsageError(f"{option.flag}: expected a number of seconds, got {_said(raw)}")
        return value
    if option.kind is ArgKind.FRACTION:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value <= 1:  # also refuses nan
            raise ShellUsageError(
                f"{option.flag}: expected a fraction above 0 and at most 1 (0.1 is 10 %), "
                f"got {_said(raw)}"
            )
        return value
    if option.kind is ArgKind.COUNT:
        if not raw.isdigit() or int(raw) < 1:
            raise ShellUsageError(
                f"{option.flag}: expected a positive whole number, got {_said(raw)}"
            )
        return int(raw)
    return raw


def parse(words: Iterable[str], commands: Mapping[str, CommandSpec] | None = None) -> ParsedCommand:
    """Parse one command's words (already split) against its spec.

    ``commands`` is the table to find the command in: :data:`COMMANDS`, or a
    front end's own that adds verbs of its own to it (``%hotswap start``, the fleet console's).
    """
    words = tuple(words)
    if not words:
        raise ShellUsageError("empty command")
    spec = lookup(words[0], commands)
    values: dict[str, object] = {o.dest: o.default for o in spec.options}
    positionals: list[str] = []
    rest = iter(words[1:])
    for word in rest:
        if word in ("-h", "--help"):
            return ParsedCommand(spec, words, values, help=True)
        # Only "--" words are options, so JSON such as -1 stays a value.
        if word.startswith("--"):
            option = spec.option(word)
            if option is None:
                known = ", ".join(o.flag for o in spec.options) or "none"
                raise ShellUsageError(
                    f"{spec.name}: unknown option {_said(word.partition('=')[0])} "
                    f"(options: {known}); usage: {spec.usage()}"
                )
            _, eq, raw = word.partition("=")
            if option.kind is ArgKind.SWITCH:
                if eq:
                    raise ShellUsageError(f"{option.flag} takes no value: usage: {spec.usage()}")
                values[option.dest] = True
                continue
            if not eq:
                raw_next = next(rest, None)
                if raw_next is None:
                    raise ShellUsageError(f"{option.flag} needs a value: usage: {spec.usage()}")
                raw = raw_next
            values[option.dest] = _convert(option, raw)
        else:
            positionals.append(word)
    for i, arg in enumerate(spec.args):
        if arg.repeat:
            values[arg.dest] = positionals[i:]
            positionals = positionals[:i]
            break
        if i < len(positionals):
            values[arg.dest] = positionals[i]
        elif arg.optional:
            values[arg.dest] = None
        else:
            raise ShellUsageError(f"{spec.name} needs {arg.metavar}: usage: {spec.usage()}")
    extra = positionals[len([a for a in spec.args if not a.repeat]) :]
    if extra:
        raise ShellUsageError(
            f"{spec.name}: unexpected argument {_said(extra[0])}; usage: {spec.usage()}"
        )
    return ParsedCommand(spec, words, values)


def split_commands(line: str) -> list[list[str]]:
    """Split one line into commands (``;``-separated) and each into words.

    Quotes work as in a POSIX shell; a line starting with ``#`` is a comment.
    """
    if line.lstrip().startswith("#"):
        return []
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    # No comments inside a line: "#" is a valid character in paths and JSON.
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    try:
        for token in lexer:
            if token and set(token) == {";"}:
                commands.append([])
            else:
                commands[-1].append(token)
    except ValueError as exc:
        raise ShellUsageError(f"cannot split the line: {exc} (quote JSON in '...')") from None
    return [c for c in commands if c]


def split_script(lines: Iterable[str]) -> list[list[str]]:
    """Every command of a script: one or more per line, in order."""
    commands: list[list[str]] = []
    for line in lines:
        commands.extend(split_commands(line))
    return commands
