"""What a module body may have changed in its process, captured and compared.

The quarantine child (:mod:`livepatch.quarantine`) takes a
:class:`ProcessState` before it runs a new module body and compares after:
a body that leaves processes behind, closes or replaces fds 0-2, rebinds
``builtins``, replaces or removes a host module in ``sys.modules``, rebinds
an attribute of a host module, or changes the recursion limit, the switch
interval or a signal handler would do the same in the engine, where unload
and rollback cannot undo it. Each change is named in one short phrase.

Also here: the Linux process controls the child needs (``prctl`` through
ctypes: die with the parent, adopt orphaned grandchildren) and the ``/proc``
scan that finds every descendant, detached ones included.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ProcessState",
    "become_subreaper",
    "descendants",
    "die_with_parent",
    "kill_descendants",
]

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36
#: Rule modules are versions, not host modules: they come and go.
_VERSION_MODULES: Final = "livepatch.loaded."
#: Module attributes the interpreter itself rebinds as a matter of course.
_VOLATILE: Final = frozenset({"__warningregistry__", "__loader__", "__spec__"})


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux: the time limits still apply
        return False


def die_with_parent(parent: int) -> None:
    """Get SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); exit now if
    it already has (we were re-parented before the call)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def become_subreaper() -> None:
    """Adopt orphaned descendants (``PR_SET_CHILD_SUBREAPER``), so a body that
    double-forks and ``setsid``\\ s still leaves its processes under us."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _parents() -> dict[int, int]:
    """pid -> ppid of every process we can see in /proc."""
    table: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # it exited meanwhile
            # The command name is in parentheses and may hold spaces and ")".
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 1:
                table[int(entry.name)] = int(fields[1])
    return table


def _has_no_children() -> bool:
    """True when /proc says this process has no children at all (cheap: no
    scan of every process), False when it has some or cannot tell."""
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                if f.read().strip():
                    return False
    except OSError:
        return False
    return True


def descendants(pid: int | None = None) -> list[int]:
    """Every live (or zombie) descendant of ``pid`` (default: this process)."""
    if pid is None and _has_no_children():
        return []
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(root, ()))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode("utf-8", "replace") for w in words if w)[:60] or "?"


def kill_descendants(timeout_s: float = 2.0) -> None:
    """SIGKILL every descendant and reap the ones that become our children."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = descendants()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        time.sleep(0.01)  # orphans are re-parented to us asynchronously


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _signal_handlers() -> dict[int, Any]:
    handlers: dict[int, Any] = {}
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            handlers[int(sig)] = signal.getsignal(sig)
    return handlers


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class ProcessState:
    """The parts of the process and interpreter a module body must not change."""

    fds: tuple[tuple[int, int] | None, ...]
    builtins: dict[str, Any]
    modules: dict[str, Any]
    module_attrs: dict[str, dict[str, Any]]
    recursion_limit: int
    switch_interval: float
    signals: dict[int, Any]

    @classmethod
    def capture(cls) -> ProcessState:
        """The state now (shallow: identities of values, not their contents)."""
        modules = {
            name: mod
            for name, mod in list(sys.modules.items())
            if mod is not None and not name.startswith(_VERSION_MODULES)
        }
        attrs: dict[str, dict[str, Any]] = {}
        for name, mod in modules.items():
            namespace = getattr(mod, "__dict__", None)
            if isinstance(namespace, dict):
                attrs[name] = dict(namespace)
        return cls(
            fds=tuple(_fd_identity(fd) for fd in range(3)),
            builtins=dict(vars(builtins)),
            modules=modules,
            module_attrs=attrs,
            recursion_limit=sys.getrecursionlimit(),
            switch_interval=sys.getswitchinterval(),
            signals=_signal_handlers(),
        )

    def changes(self, children: list[int] | None = None) -> list[str]:
        """What differs now from this state, one short phrase each; with the
        processes left behind (``children``) first."""
        found: list[str] = []
        if children:
            shown = ", ".join(f"{pid} ({_command(pid)})" for pid in children[:3])
            more = f" and {len(children) - 3} more" if len(children) > 3 else ""
            found.append(f"left {len(children)} process(es) running: {shown}{more}")
        for fd, before in enumerate(self.fds):
            now = _fd_identity(fd)
            if before is not None and now is None:
                found.append(f"closed fd {fd}")
            elif now != before:
                found.append(f"replaced fd {fd}")
        found += _dict_changes("builtins", self.builtins, vars(builtins), added=True)
        for name, mod in self.modules.items():
            now_mod = sys.modules.get(name)
            if now_mod is None:
                found.append(f"removed sys.modules[{name!r}]")
            elif now_mod is not mod:
                found.append(f"replaced sys.modules[{name!r}]")
        for name, before_attrs in self.module_attrs.items():
            namespace = getattr(self.modules[name], "__dict__", None)
            if isinstance(namespace, dict) and name != "builtins":
                found += _dict_changes(name, before_attrs, namespace, added=False)
        if sys.getrecursionlimit() != self.recursion_limit:
            found.append(
                f"set the recursion limit {self.recursion_limit} -> {sys.getrecursionlimit()}"
            )
        if sys.getswitchinterval() != self.switch_interval:
            found.append(
                f"set the switch interval {self.switch_interval:g} -> {sys.getswitchinterval():g}"
            )
        now_signals = _signal_handlers()
        for number, handler in self.signals.items():
            if now_signals.get(number) is not handler and now_signals.get(number) != handler:
                found.append(f"changed the {_signal_name(number)} handler")
        return found


def _dict_changes(
    where: str, before: dict[str, Any], now: dict[str, Any], *, added: bool
) -> list[str]:
    found: list[str] = []
    for key, value in before.items():
        if key in _VOLATILE:
            continue
        if key not in now:
            found.append(f"removed {where}.{key}")
        elif now[key] is not value:
            found.append(f"rebound {where}.{key}")
    if added:
        found += [f"added {where}.{key}" for key in now if key not in before]
    return found
