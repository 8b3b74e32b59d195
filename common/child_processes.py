"""Starting child processes, and who notices when a process's parent dies (Linux prctl).

- `spawn(argv, env)`: the one way every mxserve process starts a child: in a process
  group of its own, and (unless told otherwise) dying with its parent.
- `die_with_parent(sig)`: this process gets `sig` when its parent exits (children of the
  launcher and the broker die with them instead of lingering as orphans).
- `become_subreaper()`: orphans below this process are re-parented to it instead of to
  init. The broker is one, so the CPU workers of a fork server that died become its
  children: it keeps managing them, and they keep serving.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def die_with_parent(signum: int) -> None:
    _prctl(PR_SET_PDEATHSIG, int(signum))


def become_subreaper() -> None:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _own_group() -> None:
    """Child-side, before exec: a process group of its own, so a terminal's Ctrl-C reaches
    only the parent, which then stops the children in order (frontends drain before the
    broker goes)."""
    os.setpgid(0, 0)


def prepare_child() -> None:
    """Child-side, before exec: SIGTERM if the parent dies (no orphans), and its own group."""
    die_with_parent(signal.SIGTERM)
    _own_group()


def spawn(argv: list[str], env: dict[str, str], dies_with_parent: bool = True,
          **kwargs) -> subprocess.Popen:
    """Start a child that dies with us (Linux), unless it is one that must outlive a crash
    of ours (the fork server: it then stops itself)."""
    preexec = None
    if sys.platform.startswith("linux"):
        preexec = prepare_child if dies_with_parent else _own_group
    return subprocess.Popen(argv, env=env, preexec_fn=preexec, **kwargs)
