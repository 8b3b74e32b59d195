"""Folders and files only this server's user may use: the run directory (ipc sockets,
extracted archives, the management token) and the token file.

A run directory under a shared /tmp can be created first by another user, or be a symlink
to one; whoever owns it could then swap a socket or an archive under the server. So a run
directory is either made here (`mkdtemp`: a fresh name, mode 0700) or, when configured,
refused unless it is a real folder of ours that nobody else can enter.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from mxserve.common.errors import ConfigError, InvalidInput

SOCKET_PATH_MAX = 107  # sun_path's 108 bytes, less the terminating NUL
LONGEST_SOCKET_NAME = "/management.sock"  # of the sockets made in a run directory


def new_run_dir() -> Path:
    """A fresh private folder under $TMPDIR."""
    return Path(tempfile.mkdtemp(prefix="mxserve-"))


def check_socket_room(run_dir: Path) -> None:
    """A unix socket's path has a hard length limit: refuse a run directory too deep for
    one, before anything binds (a deep $TMPDIR would otherwise crash the broker)."""
    longest = len(os.fsencode(str(run_dir) + LONGEST_SOCKET_NAME))
    if longest > SOCKET_PATH_MAX:
        raise ConfigError(f"run directory {run_dir} is too long for its unix sockets "
                          f"({longest} bytes, at most {SOCKET_PATH_MAX}): set run_dir, or "
                          f"TMPDIR, to a shorter folder")


def private_dir(path: str | Path) -> Path:
    """`path` as a folder only we may use: created 0700 when missing; InvalidInput when it
    is a symlink, someone else's, or open to group or others."""
    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise InvalidInput(f"run directory {path}: cannot create it ({exc.strerror})") from exc
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"run directory {path} is a symlink or not a folder")
    if info.st_uid != os.geteuid():
        raise InvalidInput(f"run directory {path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        raise InvalidInput(f"run directory {path} is open to other users (mode "
                           f"{stat.S_IMODE(info.st_mode):o}; chmod 700 it)")
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file nobody else can read, replacing ours atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
