"""One command layer for every front end: the CLI, the shell and ``%hotswap``.

- :mod:`.spec` the commands as data (:class:`~.spec.CommandSpec`: arguments,
  options, help with examples) and the parser; validation happens here once.
- :mod:`.runner` runs a parsed command against an engine and returns a
  :class:`~.runner.CommandResult` (text, the one-line error, structured
  ``data`` for ``--json``, the exit code: 0 ok, 1 refused, 2 usage), with
  hints written in the front end's own syntax (``prefix``).
- :mod:`.link` the connection bound to one engine, and its reconnect policy.

Adding a verb from another module (``livepatch.fleet``'s ``push``)::

    from livepatch.commands.spec import Arg, ArgKind, CommandSpec, register
    from livepatch.commands.runner import register_handler

    register(CommandSpec("push", "summary", "description", args=(...,), examples=(...,)))
    register_handler("push", lambda runner, parsed: ...)  # -> CommandResult

Do it at import of a module that ``livepatch.cli`` imports before
``build_parser`` runs; the CLI (``livepatch push``), the shell (parser, help,
completion) and ``%hotswap`` (parser, ``%hotswap?``, the handler's text as
the result) then offer it with no other edit. Verbs only the magics have
(``%hotswap start``) live in ``ipython_ext.magics.MAGIC_VERBS``, never here.

Nothing here imports the engine core, prompt-toolkit or IPython.
"""

from __future__ import annotations

# Verbs defined in modules of their own, registered at import so that every
# front end (the CLI, the shell, %hotswap) has them whatever it imports first.
from . import shadowcmd  # noqa: F401  (the shadow verb)
from .spec import COMMANDS, CommandSpec, ShellUsageError, parse, register

__all__ = ["COMMANDS", "CommandSpec", "ShellUsageError", "parse", "register"]
