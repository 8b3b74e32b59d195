"""Which models the broker serves: the configured ones, those registered, scaled and removed
at run time (kept on disk for a restarted broker), the catalog the frontends read, and the
per-model gauges."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mxserve.common import metrics
from mxserve.common.archive import load_archive
from mxserve.common.config import Config, batching_for, model_entries, service_for
from mxserve.common.errors import (
    Conflict,
    InvalidInput,
    ModelNotFound,
    MXServeError,
    ProtocolError,
)
from mxserve.common.protocol import ERROR, RESULT, Manage, read_fields, version_key
from mxserve.common.settings import MAX_BATCH_DELAY_MS, MAX_WORKERS_PER_MODEL
from mxserve.worker.broker.pool import WorkerPool, WorkerSpec, plan_workers
from mxserve.worker.broker.saved_models import SavedModels
from mxserve.worker.broker.scheduler import Scheduler
from mxserve.worker.broker.state import MALFORMED, ModelState

log = logging.getLogger("broker")


def load_configured(config: Config, extract_root: Path
                    ) -> tuple[dict[str, ModelState], dict[str, Path]]:
    """The models of `--models`, each archive extracted once here (workers read the
    folder), and their folders. A model that cannot load is kept, failed, with its reason."""
    models: dict[str, ModelState] = {}
    folders = {}
    for name, path in model_entries(config):
        try:
            archive = load_archive(path, extract_root, name=name)
        except MXServeError as exc:
            # named by its file name: a key is shown to anyone by /ping and 404 bodies
            label = name or Path(path).name or "unnamed"
            log.error("model %s cannot be served: %s", label, exc.message)
            models[label] = ModelState(archive=None, error=exc.message, name=label)
            continue
        if archive.name in models:
            raise InvalidInput(f"two models are named {archive.name!r} (register further "
                               "versions through the management API)")
        models[archive.name] = ModelState(archive=archive, source=path, name=archive.name,
                                          version=archive.version)
        folders[archive.name] = archive.root
    for name, model in models.items():
        batching = batching_for(config, name, bool(model.archive and model.archive.is_handler))
        model.max_batch_size = batching.max_batch_size
        model.max_batch_delay_s = batching.max_batch_delay_ms / 1000.0
    return models, folders


class ModelRegistry:
    def __init__(self, config: Config, scheduler: Scheduler, pool: WorkerPool,
                 run_dir: Path, extract_root: Path) -> None:
        self.config = config
        self.scheduler = scheduler
        self.models = scheduler.models
        self.pool = pool
        self.extract_root = extract_root
        self.saved = SavedModels(run_dir)
        self.configured = frozenset(self.models)  # loaded from `models` at start
        # what /readyz waits for: named ones, else every model given at start
        self.required = frozenset(config.required_models) or self.configured
        # each model name's default version (its key), which routes without a version reach
        self.defaults = {model.name: key for key, model in self.models.items()}

    def restore_saved(self) -> None:
        """Models a previous broker had registered at run time are registered again."""
        for key, entry in self.saved.load().items():
            name = entry.get("model_name", key)
            try:
                restored = self._add_model(read_fields(Manage, {
                    **entry, "op": "register", "name": name}))
            except (MXServeError, *MALFORMED) as exc:
                log.warning("not restoring registered model %s: %s", key,
                            getattr(exc, "message", exc))
                self.saved.drop(key)
                continue
            if restored["key"] != key:  # restored in another order: saved under its new key
                self.saved.drop(key)
                self._save(restored["key"])
            if entry.get("default"):
                self.defaults[name] = restored["key"]
            log.info("restored model %s, registered before this broker started", key)

    # -- management commands -----------------------------------------------------------

    def manage(self, fields: dict[str, Any]) -> dict[str, Any]:
        """register / unregister / scale; the reply item's fields: a result or an error."""
        try:
            command = read_fields(Manage, fields)
            if command.op == "register":
                result = self._register(command)
            elif command.op == "unregister":
                result = self._unregister(command.name)
            elif command.op == "scale":
                result = self._scale(command)
            elif command.op == "set_default":
                result = self._set_default(command.name)
            else:
                raise InvalidInput(f"unknown management operation {command.op!r}")
        except ProtocolError as exc:
            log.warning("refused a malformed management command: %s", exc.message)
            return {ERROR: InvalidInput("malformed management command").to_wire()}
        except MXServeError as exc:
            return {ERROR: exc.to_wire()}
        except MALFORMED as exc:
            log.warning("refused a malformed management command: %s", exc)
            return {ERROR: InvalidInput("malformed management command").to_wire()}
        return {RESULT: result}

    def _known(self, name: str) -> ModelState:
        model = self.models.get(name)
        if model is None or model.removing:
            raise ModelNotFound(f"model {name!r} is not registered")
        return model

    def _register(self, command: Manage) -> dict[str, Any]:
        """An archive the management listener has already extracted (the broker's loop
        never unzips): read its folder, then start its workers. A refused one's folder
        is removed."""
        try:
            result = self._add_model(command)
        except BaseException:
            self._discard_extraction(Path(command.folder))
            raise
        self._save(result["key"])
        return result

    def _key_for(self, name: str, version: str) -> str:
        """A new version's key: its name for the first, name@version for the others."""
        taken = {model.version: key for key, model in self.models.items()
                 if model.name == name}
        if version in taken or "" in taken:
            key = taken.get(version, taken.get("", name))
            raise Conflict(f"a model named {name!r} is already registered"
                           + (f" at version {version}" if version in taken else "")
                           + (" (still being removed)" if self.models[key].removing else ""))
        return version_key(name, version) if taken else name

    def _add_model(self, command: Manage) -> dict[str, Any]:
        archive = load_archive(Path(command.folder), name=command.name)
        name = archive.name
        key = self._key_for(name, archive.version)
        specs = self._plan(key, _worker_count(command.workers
                                              or self.config.workers_per_model))
        batching = batching_for(self.config, name, archive.is_handler)
        delay_ms = (batching.max_batch_delay_ms if command.max_batch_delay_ms is None
                    else command.max_batch_delay_ms)
        model = ModelState(archive=archive,
                           max_batch_size=_batch_size(command.max_batch_size
                                                      or batching.max_batch_size),
                           max_batch_delay_s=_batch_delay_ms(delay_ms) / 1000.0,
                           source=command.source or command.folder, name=name,
                           version=archive.version)
        self.models[key] = model
        self.defaults.setdefault(name, key)
        self.pool.add(key, specs, archive.root, model.max_batch_size,
                      service_for(self.config, name), name=name)
        log.info("registered model %s (version %s) from %s", name, archive.version,
                 archive.root)
        return {"key": key, **self.catalog()["models"][key]}

    def _plan(self, name: str, count: int) -> list[WorkerSpec]:
        """`count` more CPU workers for a model (with GPUs: one per GPU, as at start)."""
        if self.config.gpus or self.config.gpu >= 0:
            return plan_workers([name], self.config.gpus, self.config.gpu)
        threads = self.config.threads_per_worker or max(
            1, (os.cpu_count() or 1) // max(1, len(self.pool.workers) + count))
        return plan_workers([name], workers_per_model=count, threads_per_worker=threads)

    def _unregister(self, name: str) -> dict[str, Any]:
        """Refuse new requests (404), let queued and running ones finish, then stop its
        workers (finish_removals). A default version goes last: its routes would vanish."""
        model = self._known(name)
        others = [key for key, other in self.models.items() if key != name
                  and other.name == model.name and not other.removing]
        if others and self.defaults.get(model.name) == name:
            raise Conflict(f"version {model.version} is the default of model "
                           f"{model.name!r}: make another version the default first")
        model.removing = True
        log.info("unregistering model %s: %d queued, draining", name, len(model.queue))
        return {"name": name, "status": "removing"}

    def _set_default(self, key: str) -> dict[str, Any]:
        """Routes without a version reach this version of its model from now on."""
        model = self._known(key)
        previous = self.defaults.get(model.name)
        self.defaults[model.name] = key
        for saved in {previous, key} & set(self.saved.entries):
            self._save(saved)
        log.info("model %s: version %s is the default", model.name, model.version)
        return self.catalog()["models"][key]

    def _scale(self, command: Manage) -> dict[str, Any]:
        name = command.name
        model = self._known(name)
        workers = self.scheduler.workers
        if command.max_batch_size is not None:
            size = _batch_size(command.max_batch_size)
            # Running workers bound their executors up to their launch size: a larger size
            # applies to workers started from now on.
            model.max_batch_size = size
            self.pool.max_batch_size[name] = size
        if command.max_batch_delay_ms is not None:
            model.max_batch_delay_s = _batch_delay_ms(command.max_batch_delay_ms) / 1000.0
        if command.workers is not None:
            wanted, current = _worker_count(command.workers), self.pool.total(name)
            if wanted > current:
                self.pool.add(name, self._plan(name, wanted - current))
            elif wanted < current:
                idle = frozenset(workers[i].pid for i in model.idle if i in workers)
                for pid in self.pool.retire(name, current - wanted, prefer=idle):
                    for worker in workers.values():
                        if worker.pid == pid:
                            worker.retiring = True
                            if worker.identity in model.idle:
                                model.idle.remove(worker.identity)
        log.info("model %s: %d worker(s), batches of %d, delay %.1f ms", name,
                 self.pool.total(name), model.max_batch_size, model.max_batch_delay_s * 1000)
        if name in self.saved.entries:
            self._save(name)
        return self.catalog()["models"][name]

    def _save(self, name: str) -> None:
        """Save a run-time model's folder and settings for a broker that restarts."""
        model = self.models[name]
        if model.archive is not None:
            self.saved.put(name, {
                "folder": str(model.archive.root), "workers": self.pool.total(name),
                "max_batch_size": model.max_batch_size,
                "max_batch_delay_ms": model.max_batch_delay_s * 1000.0,
                "source": model.source, "model_name": model.name,
                "default": self.defaults.get(model.name) == name})

    # -- housekeeping ------------------------------------------------------------------

    def finish_removals(self) -> None:
        """Models being removed whose last request is answered: workers stopped, gone."""
        workers = self.scheduler.workers
        for name, model in list(self.models.items()):
            busy = any(workers[w].batch for w in model.workers if w in workers)
            if not model.removing or model.queue or busy:
                continue
            for identity in list(model.workers):
                workers.pop(identity, None)
            self.pool.retire(name)
            del self.models[name]
            self.saved.drop(name)
            if self.defaults.get(model.name) == name:
                remaining = [key for key, other in self.models.items()
                             if other.name == model.name]
                if remaining:
                    self.defaults[model.name] = remaining[0]
                else:
                    del self.defaults[model.name]
            if model.archive is not None:
                self._discard_extraction(model.archive.root)
            log.info("model %s removed", name)

    def _discard_extraction(self, folder: Path) -> None:
        """Remove an archive's extracted folder once no model serves from it (only ours:
        folders under the run directory; a model served from its own folder is kept)."""
        if folder.parent != self.extract_root:
            return
        if any(m.archive is not None and m.archive.root == folder
               for m in self.models.values()):
            return
        shutil.rmtree(folder, ignore_errors=True)

    def update_gauges(self) -> None:
        """Queue depths and ready workers, for /metrics (every housekeeping tick: cheap,
        and never on the per-request path)."""
        for name, model in self.models.items():
            metrics.QUEUE_DEPTH.labels(name).set(len(model.queue))
            metrics.WORKERS_READY.labels(name).set(len(model.workers))
            metrics.WORKERS_PLANNED.labels(name).set(self.pool.total(name) if model.archive
                                                     else 0)

    # -- what the frontends read -------------------------------------------------------

    def catalog(self) -> dict[str, Any]:
        workers = self.scheduler.workers
        models = {}
        for name, model in self.models.items():
            archive = model.archive
            models[name] = {
                "signature": archive.signature.to_dict() if archive and archive.signature
                else None,
                "handler": archive.mar.handler if archive and archive.mar else None,
                "ready": len(model.workers),
                "workers": self.pool.total(name) if archive else 0,
                "restarts": self.pool.restarts.get(name, 0),
                "devices": sorted({workers[w].device for w in model.workers}),
                "worker_list": [{"id": workers[w].name, "pid": workers[w].pid,
                                 "device": workers[w].device, "started": workers[w].started,
                                 "busy": bool(workers[w].batch)}
                                for w in sorted(model.workers)],
                "loaded_at_startup": name in self.configured,
                "required": name in self.required,
                "model_name": model.name,
                "version": model.version,
                "default": self.defaults.get(model.name) == name,
                "source": model.source,
                "threads_per_worker": next((s.threads for s in self.pool.specs
                                            if s.model == name), 0),
                "max_batch_size": model.max_batch_size,
                # what the ready workers take (each may cap it: batch_memory_mb)
                "worker_max_batch_size": min((workers[w].max_batch_size
                                              for w in model.workers), default=0),
                "max_batch_delay_ms": model.max_batch_delay_s * 1000.0,
                "batches": model.batches,
                "mean_batch_size": round(model.batched / model.batches, 3) if model.batches
                else 0.0,
                "queue": len(model.queue),
                "status": ("removing" if model.removing
                           else "failed" if model.error or archive is None
                           else "ready" if model.workers else "loading"),
                "error": model.error,
            }
        return {"models": models, "draining": self.scheduler.draining,
                "defaults": dict(self.defaults),
                "required_missing": sorted(self.required - set(self.models))}


def _worker_count(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= MAX_WORKERS_PER_MODEL:
        raise InvalidInput(f"workers must be an integer between 1 and {MAX_WORKERS_PER_MODEL}")
    return value


def _batch_size(value: Any) -> int:
    if type(value) is not int or value < 1:
        raise InvalidInput("max_batch_size must be an integer >= 1")
    return value


def _batch_delay_ms(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value <= MAX_BATCH_DELAY_MS:
        raise InvalidInput(f"max_batch_delay_ms must be between 0 and {MAX_BATCH_DELAY_MS:g}")
    return float(value)
