"""What the broker knows of each request, worker and model, and the core-lending rule."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from mxserve.common.archive import ModelArchive
from mxserve.common.errors import ProtocolError
from mxserve.common.protocol import Item, RequestItem

# What a well-framed message with a wrong field raises in its handler: that message is
# refused, never the broker's end.
MALFORMED = (ProtocolError, TypeError, ValueError, KeyError, AttributeError, OverflowError)


@dataclass
class Pending:
    """A request waiting for, or being served by, a worker."""

    frontend: bytes  # ROUTER identity of the frontend socket that sent it
    item: Item
    deadline: float  # time.monotonic()
    received: float
    attempts: int = 0
    asked: RequestItem = RequestItem()  # its fields as the frontend sent them


@dataclass
class WorkerState:
    identity: bytes
    model: str
    device: str
    pid: int
    max_batch_size: int
    last_seen: float
    batch: dict[str, Pending] = field(default_factory=dict)
    batch_started: float = 0.0
    batch_deadline: float = 0.0
    retiring: bool = False  # scaled down: finishes its batch, gets no other
    threads: int = 0  # its share of the cores (OpenMP threads); 0 on a GPU
    threads_in_use: int = 0  # for the batch it runs: its share, or more when cores are lent
    started: float = field(default_factory=time.time)  # wall clock, for the management API

    @property
    def name(self) -> str:
        return self.identity.decode(errors="replace")


@dataclass
class ModelState:
    archive: ModelArchive | None
    max_batch_size: int = 1
    max_batch_delay_s: float = 0.0
    batches: int = 0  # dispatched so far, with `batched` requests in them
    batched: int = 0
    queue: deque[Pending] = field(default_factory=deque)
    idle: deque[bytes] = field(default_factory=deque)
    workers: set[bytes] = field(default_factory=set)
    error: str = ""
    removing: bool = False  # unregistered: draining, then its workers stop and it is gone
    source: str = ""  # the archive path or URL it was loaded from
    name: str = ""  # the model's name; its key is the name, or name@version for a later version
    version: str = ""


def lendable_threads(worker: WorkerState, workers: Iterable[WorkerState], cores: int) -> int:
    """The OpenMP threads `worker` may use for the batch it is being given: its share, or
    the cores that other busy CPU workers do not use if that is more (worker/lent_cores.py).
    A worker lent cores keeps them for its batch; one dispatched meanwhile gets its share,
    so for the rest of that batch the cores are oversubscribed by that share at most."""
    if not 0 < worker.threads < cores:  # a GPU worker, or one that has every core already
        return worker.threads
    in_use = sum(other.threads_in_use for other in workers
                 if other.batch and other.threads and other is not worker)
    return max(worker.threads, cores - in_use)
