"""Prometheus metrics, correct across processes.

Every mxserve process (gunicorn frontends, broker) records into the instance's
PROMETHEUS_MULTIPROC_DIR (`<run_dir>/metrics`, created empty and exported by the launcher
or scripts/start_cluster.sh before any process starts, because prometheus_client reads it
at import). A scrape (`render()`, served as GET /metrics on the management listener) sums
every process's files with prometheus_client's MultiProcessCollector and adds the host's
CPU and memory, read from /proc at scrape time. Without the variable (one process alone,
the unit tests) the same metrics are simply in-process.

Label values are bounded: `model` is a served model's name (a request for an unknown one
is counted under "-"), `type` an error type of common/errors.py's table, all of which
exist from the start at 0.
"""
from __future__ import annotations

import glob
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mxserve.common.errors import HTTP_STATUS
from mxserve.common.proctree import alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PREDICTIONS = Counter(
    "mxserve_predictions", "Inference requests by model, status class and protocol "
    "(predict: MMS 0.4's route, v2-rest: KServe v2); the sum over classes of predict is MMS "
    "0.4's PredictionTotal, 4xx its Prediction4XX, 5xx its Prediction5XX",
    ["model", "status_class", "protocol"])
ERRORS = Counter("mxserve_errors", "Error answers by error type", ["type"])
REQUEST_SECONDS = Histogram("mxserve_request_seconds", "Inference latency in the frontend, "
                            "from the request's first byte handled to the answer",
                            ["model", "protocol"], buckets=SECONDS)
QUEUE_SECONDS = Histogram("mxserve_queue_seconds", "Time a request waited in the broker's "
                          "queue", ["model"], buckets=SECONDS)
INFERENCE_SECONDS = Histogram("mxserve_inference_seconds", "Time the worker took for the "
                              "batch a request ran in", ["model"], buckets=SECONDS)
BATCH_SIZE = Histogram("mxserve_batch_size", "Requests per batch sent to a worker", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
QUEUE_DEPTH = Gauge("mxserve_queue_depth", "Requests waiting in the broker's queue", ["model"],
                    multiprocess_mode="livemax")
WORKERS_READY = Gauge("mxserve_workers_ready", "Workers ready for the model", ["model"],
                      multiprocess_mode="livemax")
WORKERS_PLANNED = Gauge("mxserve_workers", "Workers the model should have", ["model"],
                        multiprocess_mode="livemax")
HANDLER_METRICS_DROPPED = Counter(
    "mxserve_dropped_handler_metrics", "Metrics an MMS 1.x handler recorded through "
    "context.metrics that were not kept: past the model's bound on distinct series, not a "
    "finite number, or a name already used with another kind", ["model"])
WORKER_RESTARTS = Counter("mxserve_worker_restarts", "Worker processes restarted after "
                          "exiting", ["model"])

for _type in HTTP_STATUS:
    ERRORS.labels(_type)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def forget_dead_processes() -> None:
    """Drop live-gauge files of processes that are gone (a killed broker's queue depths)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(name.rsplit("_", 1)[1].split(".")[0])
        if not alive(pid):
            multiprocess.mark_process_dead(pid, path)


class HostCollector:
    """The host's CPU seconds by mode and memory, from /proc, at scrape time."""

    def collect(self):  # type: ignore[no-untyped-def]
        cpu = CounterMetricFamily("mxserve_host_cpu_seconds", "Host CPU time by mode",
                                  labels=["mode"])
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
        for mode, value in zip(("user", "nice", "system", "idle", "iowait", "irq",
                                "softirq", "steal"), fields):
            cpu.add_metric([mode], int(value) / ticks)
        yield cpu
        meminfo = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                meminfo[key] = int(value.split()[0]) * 1024
        memory = GaugeMetricFamily("mxserve_host_memory_bytes", "Host memory",
                                   labels=["kind"])
        memory.add_metric(["total"], meminfo.get("MemTotal", 0))
        memory.add_metric(["available"], meminfo.get("MemAvailable", 0))
        yield memory


def render() -> bytes:
    """The scrape: every process's metrics (or this one's) plus the host's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry  # type: ignore[no-redef]
    output = generate_latest(registry)
    host = CollectorRegistry()
    host.register(HostCollector())  # type: ignore[arg-type]
    return output + generate_latest(host)
