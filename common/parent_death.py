"""Who notices when a process's parent dies (Linux prctl).

- `die_with_parent(sig)`: this process gets `sig` when its parent exits (children of the
  launcher and the broker die with them instead of lingering as orphans).
- `become_subreaper()`: orphans below this process are re-parented to it instead of to
  init. The broker is one, so the CPU workers of a fork server that died become its
  children: it keeps managing them, and they keep serving.
"""
from __future__ import annotations

import ctypes
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
