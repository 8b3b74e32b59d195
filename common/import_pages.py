"""Unmap the read-only library pages a process touched only while importing.

A process that imports MXNet, OpenCV and numpy and then only forks (the worker fork server,
gunicorn's arbiter under --preload) keeps mapped every library page its imports touched:
libmxnet.so's static initialisers alone leave most of it mapped in the fork server, code
nothing runs again. How much depends on the page cache: for each page fault the kernel also
maps up to 16 neighbouring pages that are already cached, and right after `pip install` (or
on a busy host) every page of the libraries is, so idle memory would depend on the cache.

`release_import_pages()` drops those mappings with madvise(MADV_DONTNEED) (what it saves is
in docs/benchmarks.md). Only regions that cannot hold private data are touched: file-backed,
private, never writable, with no anonymous (copy-on-write) pages. For those the kernel only
clears page-table entries; the pages stay in the page cache, shared, and a later access
(this process's own or a child's) maps them back with a minor fault. Children forked
afterwards start with no entries for such regions either way (fork does not copy them), so
they map only the code they run. Unmapped page cache is also what the kernel reclaims first.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
from typing import Iterable

log = logging.getLogger(__name__)

_MADV_DONTNEED = 4


class Region:
    """One /proc/<pid>/smaps entry: address range, permissions, path and the counters."""

    def __init__(self, header: str) -> None:
        fields = header.split(None, 5)
        start, end = fields[0].split("-")
        self.start, self.end = int(start, 16), int(end, 16)
        self.perms = fields[1]
        self.path = fields[5].strip() if len(fields) > 5 else ""
        self.kib: dict[str, int] = {}

    @property
    def releasable(self) -> bool:
        return (self.path.startswith("/") and "w" not in self.perms and self.perms[3] == "p"
                and self.kib.get("Anonymous", 1) == 0 and self.kib.get("Rss", 0) > 0
                and self.kib.get("Locked", 0) == 0)


def parse_smaps(lines: Iterable[str]) -> list[Region]:
    regions: list[Region] = []
    for line in lines:
        key, _, rest = line.partition(":")
        if " " in key:  # "start-end perms offset dev inode path": a new region
            regions.append(Region(line))
        elif regions and rest.rstrip().endswith(" kB"):
            regions[-1].kib[key] = int(rest.split()[0])
    return regions


def read_regions(pid: int | str = "self") -> list[Region]:
    with open(f"/proc/{pid}/smaps") as smaps:
        return parse_smaps(smaps)


def release_import_pages() -> int:
    """Unmap this process's releasable library pages; return how many KiB were mapped."""
    try:
        regions = [r for r in read_regions() if r.releasable]
    except OSError:  # no /proc (not Linux): nothing to do
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for region in regions:
        if libc.madvise(region.start, region.end - region.start, _MADV_DONTNEED) == 0:
            released += region.kib["Rss"]
        else:
            log.debug("madvise %s: %s", region.path, os.strerror(ctypes.get_errno()))
    log.debug("released %d KiB of library pages mapped at import", released)
    return released


def settle_before_forking() -> None:
    """For a process whose children are forked from what it has built: keep the cyclic GC
    from touching (and so un-sharing) every object that exists now, and unmap the library
    pages only the imports ran."""
    gc.collect()
    gc.freeze()
    release_import_pages()
