"""The runtime directory and connection files: how clients find engines.

Like Jupyter's kernel connection files: each running engine writes
``<runtime dir>/<name>.json`` (mode 0600) with its name, pid, transport,
address, token and protocol version. Clients read these to find engines
(``--existing NAME``, or the only one running) and remove the files of
engines whose process is gone.

The runtime directory is private (0700). It is ``$LIVEPATCH_RUNTIME_DIR``,
else ``$XDG_RUNTIME_DIR/livepatch``, else ``~/.livepatch/runtime``. We never
follow a symlink there and refuse a directory that someone else owns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any, NamedTuple

from .errors import LivepatchError

__all__ = [
    "ConnectionInfo",
    "EngineNotFound",
    "NameClaim",
    "RuntimeDirError",
    "claim_name",
    "find_engine",
    "list_engines",
    "pid_alive",
    "remove_connection_file",
    "runtime_dir",
    "socket_path",
    "state_home",
    "validate_name",
    "write_connection_file",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RuntimeDirError(LivepatchError, PermissionError):
    """The runtime directory or a file in it is not safe to use."""

    kind = "runtime-dir"


class EngineNotFound(LivepatchError, LookupError):
    """No running engine matches (or several do and none was named)."""

    kind = "engine-not-found"


class ConnectionInfo(NamedTuple):
    """The contents of a connection file (``info._replace(fleet=...)`` for a
    changed copy; a NamedTuple, not a dataclass: every client reads one)."""

    name: str
    pid: int
    transport: str  # "unix" or "tcp"
    address: str  # a socket path, or "host:port"
    token: str
    protocol: int
    path: Path | None = None  # where the file was read from
    fleet: str | None = None  # the fleet this engine is a member of (livepatch.fleet)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (without ``path``; ``fleet`` only when set)."""
        data: dict[str, Any] = {
            "name": self.name,
            "pid": self.pid,
            "transport": self.transport,
            "address": self.address,
            "token": self.token,
            "protocol": self.protocol,
        }
        if self.fleet is not None:
            data["fleet"] = self.fleet
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> ConnectionInfo:
        """Parse a connection file's object; ``ValueError`` if malformed."""
        try:
            info = cls(
                name=str(data["name"]),
                pid=int(data["pid"]),
                transport=str(data["transport"]),
                address=str(data["address"]),
                token=str(data["token"]),
                protocol=int(data["protocol"]),
                path=path,
                fleet=str(data["fleet"]) if data.get("fleet") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed connection file: {exc}") from None
        if info.transport not in ("unix", "tcp"):
            raise ValueError(f"unknown transport {info.transport!r}")
        return info


def validate_name(name: str) -> str:
    """An engine name must be safe as a file name: letters, digits, ``_.-``."""
    if not _NAME.match(name):
        raise ValueError(
            f"engine name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def state_home() -> Path:
    """Where livepatch keeps per-user state (the shell's history, the local
    fleets' store): ``$LIVEPATCH_STATE_HOME``, else ``$XDG_STATE_HOME/livepatch``,
    else ``~/.local/state/livepatch``.

    A relative ``$XDG_STATE_HOME`` is ignored, as the XDG base directory
    specification asks: it would put state wherever the command happened to
    run.
    """
    explicit = os.environ.get("LIVEPATCH_STATE_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "livepatch"


def runtime_dir(create: bool = True) -> Path:
    """The private runtime directory, created 0700 if needed and checked."""
    env = os.environ.get("LIVEPATCH_RUNTIME_DIR")
    if env:
        path = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "livepatch"
    else:
        path = Path.home() / ".livepatch" / "runtime"
    if create:
        _check_private_dir(path)  # a symlink or a file: say so, make nothing
        old = os.umask(0o077)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way, no such place, read-only
            raise RuntimeDirError(
                f"cannot create runtime directory {path}: {exc.strerror or exc}; "
                "set LIVEPATCH_RUNTIME_DIR to a directory of your own"
            ) from None
        finally:
            os.umask(old)
    _check_private_dir(path)
    return path


def _check_private_dir(path: Path) -> None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return  # not there (yet): making it says what is in the way
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(
            f"runtime directory {path} is a symlink: refusing to follow it; "
            "remove it or set LIVEPATCH_RUNTIME_DIR"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(
            f"runtime directory {path} is not a directory: remove it or set LIVEPATCH_RUNTIME_DIR"
        )
    if st.st_uid != os.getuid():
        raise RuntimeDirError(
            f"runtime directory {path} belongs to uid {st.st_uid}, not you: "
            "set LIVEPATCH_RUNTIME_DIR to a directory of your own"
        )
    if st.st_mode & 0o077:
        # Ours but too open (e.g. made by hand): tighten it rather than refuse.
        os.chmod(path, 0o700)


#: The longest path a Unix socket can be bound at (``sun_path`` less its NUL).
MAX_SOCKET_PATH = 107


def socket_path(name: str, directory: Path | None = None) -> Path:
    """Where the engine ``name`` puts its Unix socket; :class:`RuntimeDirError`
    when that path is longer than a Unix socket's address can hold."""
    path = (directory or runtime_dir()) / f"{validate_name(name)}.sock"
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise RuntimeDirError(
            f"the engine's socket would be {path} ({size} bytes), longer than the "
            f"{MAX_SOCKET_PATH} bytes a Unix socket's address holds: use a shorter --name "
            "or LIVEPATCH_RUNTIME_DIR"
        )
    return path


class NameClaim:
    """An engine name held in the runtime directory: an exclusive flock on
    ``<name>.lock``, whatever the transport, until :meth:`release` or the
    process's death (the kernel drops it however the process dies)."""

    def __init__(self, name: str, fd: int, path: Path) -> None:
        self.name = name
        self._fd = fd
        self._path = path

    def release(self) -> None:
        """Give the name back and remove the lock file (idempotent).

        Removed while still locked, so a claim racing this one either locks
        this file and then finds it unlinked (and tries again on the new
        one: :func:`claim_name`), or creates the next; a name is never held
        twice, and the runtime directory keeps no file per engine that ran.
        """
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if os.stat(self._path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self._path)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def claim_name(name: str, directory: Path | None = None) -> NameClaim:
    """Take the engine name ``name`` in the runtime directory, or raise
    :class:`RuntimeDirError` naming the engine that has it."""
    directory = directory or runtime_dir()
    path = directory / f"{validate_name(name)}.lock"
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            info = _read(_connection_path(name, directory))
            where = (
                f"pid {info.pid}, on {info.transport}:{info.address}" if info else f"pid {holder}"
            )
            raise RuntimeDirError(
                f"an engine named {name!r} is already running ({where}): "
                "pick another --name or stop it"
            ) from None
        # Locked, but is it still the file at that path? Its holder may have
        # released (unlinked) it between our open and our lock.
        try:
            current = os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return NameClaim(name, fd, path)


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RuntimeDirError(
                f"{path} is a symlink: refusing to follow it; remove it"
            ) from None
        raise RuntimeDirError(f"cannot create {path}: {exc.strerror}") from None


def _connection_path(name: str, directory: Path) -> Path:
    return directory / f"{validate_name(name)}.json"


def write_connection_file(info: ConnectionInfo, directory: Path | None = None) -> Path:
    """Write ``<name>.json`` atomically with mode 0600; returns its path."""
    directory = directory or runtime_dir()
    final = _connection_path(info.name, directory)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info.to_json(), f, indent=1)
        f.write("\n")
    os.replace(tmp, final)
    return final


def remove_connection_file(
    name: str, directory: Path | None = None, pid: int | None = None
) -> None:
    """Remove an engine's connection file (only if it is ``pid``'s, when given)."""
    directory = directory or runtime_dir(create=False)
    path = _connection_path(name, directory)
    if pid is not None:
        info = _read(path)
        if info is None or info.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _read(path: Path) -> ConnectionInfo | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise RuntimeDirError(
                f"connection file {path} is not private (mode {oct(st.st_mode & 0o777)}, "
                f"uid {st.st_uid}): remove it"
            )
        try:
            return ConnectionInfo.from_json(json.load(f), path)
        except (ValueError, json.JSONDecodeError):
            return None


def list_engines(directory: Path | None = None, clean: bool = True) -> list[ConnectionInfo]:
    """Connection files of running engines, by name; stale ones are removed."""
    directory = directory or runtime_dir()
    found = []
    for path in sorted(directory.glob("*.json")):
        info = _read(path)
        if info is None:
            continue
        if not pid_alive(info.pid):
            if clean:
                _remove_stale(info, directory)
            continue
        found.append(info)
    return found


def _remove_stale(info: ConnectionInfo, directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_connection_path(info.name, directory))
    if info.transport == "unix":
        sock = Path(info.address)
        with contextlib.suppress(OSError):
            if sock.parent == directory and stat.S_ISSOCK(os.lstat(sock).st_mode):
                sock.unlink()


def find_engine(name: str | None = None, directory: Path | None = None) -> ConnectionInfo:
    """The engine called ``name``, or the only one running."""
    engines = list_engines(directory)
    if name is not None:
        for info in engines:
            if info.name == name:
                return info
        running = ", ".join(e.name for e in engines) or "none"
        raise EngineNotFound(
            f"no running engine named {name!r} (running: {running}); "
            "start one with `livepatch engine --name NAME`"
        )
    if not engines:
        raise EngineNotFound("no running engine found: start one with `livepatch engine`")
    if len(engines) > 1:
        raise EngineNotFound(
            "several engines are running ("
            + ", ".join(e.name for e in engines)
            + "): pick one with --existing NAME"
        )
    return engines[0]


def socket_in_use(path: Path) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
