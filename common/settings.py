"""Every setting declared once: its name, type, default, help and validator.

A `Setting`'s environment variable is `MXSERVE_<NAME>`, its flag `--<name>` and its TOML
key `<name>`; common/config.py merges them into a Config. The same table renders the CLI's
flags and docs/configuration.md.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable

from mxserve.common.errors import ConfigError


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str
    valid: Callable[[Any], bool] | None = None
    cli: bool = True  # False: no flag, since a value on the command line is visible in `ps`
    secret: bool = False  # masked by `config --show`, never exported to child processes

    @property
    def env(self) -> str:
        return "MXSERVE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, raw: Any, source: str) -> Any:
        try:
            if self.type is bool and isinstance(raw, str):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("1", "true", "yes", "on")
            elif self.type is list:
                value = raw.split() if isinstance(raw, str) else list(raw)
            elif self.type in (int, float) and isinstance(raw, bool):
                raise ValueError(raw)
            else:
                value = self.type(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.name} from {source}: {raw!r} is not a valid "
                              f"{self.type.__name__}") from exc
        if self.valid is not None and value is not None and not self.valid(value):
            raise ConfigError(f"{self.name} from {source}: {value!r} is out of range")
        return value


MIB = 1024 * 1024
MAX_WORKERS_PER_MODEL = 64  # what the management API may ask for one model
MAX_BATCH_DELAY_MS = 10_000.0  # longer than any sane batching window: a typo otherwise
MIN_TOKEN_CHARS = 16  # a shorter secret can be guessed; 16 random characters cannot

SETTINGS: tuple[Setting, ...] = (
    Setting("models", list, [], "models to serve, as name=archive (a .model or .mar zip or "
            "folder; a relative path is also looked for in model_store), or all: every "
            "archive in model_store"),
    Setting("required_models", list, [], "the models /readyz waits for (empty: those given "
            "at start); a model registered later, or one not named here, never makes the "
            "instance unready"),
    Setting("livez_broker_grace_s", float, 30.0, "how long /livez stays true while the "
            "broker cannot be reached (its restarts take seconds)", _positive),
    Setting("host", str, "127.0.0.1", "inference listener address"),
    Setting("port", int, 8080, "inference listener port", _positive),
    Setting("grpc_port", int, 0, "KServe v2 gRPC listener port, on host (0: no gRPC "
            "listener)", _non_negative),
    Setting("management_host", str, "127.0.0.1", "management listener address (/models, "
            "/metrics); anything but loopback requires management_auth"),
    Setting("management_port", int, 8081, "management listener port (0: no management "
            "listener)", _non_negative),
    Setting("management_auth", bool, True, "require a bearer token on every management "
            "route (--no-management-auth: none, loopback listeners only, logged as a "
            "warning)"),
    Setting("management_token_file", str, "", "file holding the management token (at least "
            f"{MIN_TOKEN_CHARS} characters); default: a random one written at start to "
            "management.token (mode 0600) in the run directory, whose path is logged"),
    Setting("management_token", str, "", "the management token itself (environment or TOML "
            "file only: on a command line it would show in `ps`); prefer "
            "management_token_file", cli=False, secret=True),
    Setting("management_allowed_hosts", list, [], "Host header names the management "
            "listener answers besides loopback names and management_host (a browser page "
            "on another name is refused: DNS rebinding)"),
    Setting("enable_model_api", bool, False, "allow POST /models and DELETE /models/<name> "
            "(an archive's service file is Python that runs as this server's user)"),
    Setting("model_store", str, "", "the folder of archives: --models all and name=file "
            "at start, and the only folder POST /models may load local archives from "
            "(resolved path, symlinks included, must stay inside); empty: no local paths"),
    Setting("model_url_allowlist", list, [], "URL prefixes POST /models may download "
            "archives from, as scheme://host[:port]/path/ (exact scheme, host and port; the "
            "path on segment boundaries); empty: no downloads"),
    Setting("max_archive_bytes", int, 2 * 1024**3, "largest archive POST /models downloads, "
            "and largest total an archive may expand to", _positive),
    Setting("model_download_timeout_s", float, 60.0, "the whole of an archive download, "
            "connection to last byte", _positive),
    Setting("unix_socket", str, "", "also serve HTTP on this unix socket (nginx's upstream, "
            "see `mxserve nginx-conf`)"),
    Setting("gpus", int, 0, "number of GPUs: one worker per GPU per model (0: CPU workers)",
            _non_negative),
    Setting("gpu", int, -1, "MMS 0.4's --gpu: pin every model's single worker to this GPU id "
            "(-1: unset)"),
    Setting("workers_per_model", int, 1, "CPU workers per model (when no GPUs)", _positive),
    Setting("threads_per_worker", int, 0, "OpenMP threads per CPU worker (0: cores / CPU "
            "workers, at least 1)", _non_negative),
    Setting("lend_idle_cores", bool, True, "a CPU worker busy while every other CPU worker "
            "is idle runs its batch on all the cores, not its share (lower latency at low load)"),
    Setting("fork_workers", bool, True, "start CPU workers by forking a process that has "
            "imported MXNet once, so they share its memory (off: each is a fresh process)"),
    Setting("frontend_workers", int, 2, "gunicorn frontend processes", _positive),
    Setting("frontend_threads", int, 32, "threads per gunicorn process (gthread)", _positive),
    Setting("max_connections", int, 1000, "open client connections per frontend process; "
            "one more is answered 503 and closed", _positive),
    Setting("client_header_timeout_s", float, 10.0, "a client must send a request's line "
            "and headers within this many seconds (else 408, closed)", _positive),
    Setting("client_body_timeout_s", float, 10.0, "a request body may take this many "
            "seconds, plus its length at client_min_body_rate", _positive),
    Setting("client_min_body_rate", int, 65536, "slowest accepted body upload, bytes per "
            "second, beyond client_body_timeout_s", _positive),
    Setting("max_batch_size", int, 32, "most requests sent to a worker in one batch (each "
            "worker may take fewer: batch_memory_mb)", _positive),
    Setting("batch_memory_mb", float, 144.0, "a worker lowers its max_batch_size so that a "
            "batch's activations, estimated from the model's symbol, fit in this (small models "
            "keep large batches, large ones get the sizes fastest on CPU; raise it for GPUs); "
            "0: no cap", _non_negative),
    Setting("max_batch_delay_ms", float, 0.0, "how long the broker may hold a partial batch",
            _non_negative),
    Setting("batching", list, [], "per-model batching overrides, as name=max_batch_size[:"
            "max_batch_delay_ms] (e.g. resnet18=16:2)"),
    Setting("jpeg_draft", bool, False, "decode JPEGs at least twice the input size at a "
            "reduced scale (Pillow draft): much faster on large photos, but the pixels differ "
            "from MMS 0.4's full decode + bicubic decimation, so answers can move"),
    Setting("image_decode", str, "auto", "where JPEG/PNG inputs are decoded: 'frontend', "
            "'worker' (the CPU worker that runs the model, before its forward, so no frontend "
            "thread preempts a forward to decode) or 'auto' (worker with CPU workers, "
            "frontend with GPUs, whose worker thread must keep feeding the GPU)",
            lambda v: v in ("auto", "frontend", "worker")),
    Setting("max_queue_size", int, 100, "queued requests per model before 503", _positive),
    Setting("request_timeout_s", float, 30.0, "inference deadline per request", _positive),
    Setting("frontend_queue_timeout_s", float, 5.0, "a predict request that waited this long "
            "for a frontend thread (the frontends are saturated) is answered 503 at once",
            _positive),
    Setting("gunicorn_timeout_s", float, 60.0, "gunicorn worker timeout (> request timeout)",
            _positive),
    Setting("proxy_read_timeout_s", float, 90.0, "read timeout of the proxy in front "
            "(nginx's proxy_read_timeout, as `mxserve nginx-conf` writes it); must exceed "
            "gunicorn_timeout_s so clients get our JSON 504, not the proxy's", _positive),
    Setting("drain_timeout_s", float, 20.0, "on SIGTERM, how long in-flight requests may "
            "finish", _non_negative),
    Setting("model_load_timeout_s", float, 300.0, "a worker not READY this long after it "
            "started is killed; the model is marked failed if none of its workers is ready",
            _positive),
    Setting("heartbeat_interval_s", float, 1.0, "broker <-> worker heartbeat period",
            _positive),
    Setting("max_body_bytes", int, int(6.25 * MIB), "largest request body", _positive),
    Setting("max_reply_bytes", int, 16 * MIB, "largest JSON answer of one request; a "
            "larger one fails that request alone (500) and never the batch", _positive),
    Setting("max_form_parts", int, 16, "most multipart form parts per request", _positive),
    Setting("max_image_pixels", int, 16_000_000, "largest image (width x height), judged "
            "from its header before decoding", _positive),
    Setting("max_json_depth", int, 32, "deepest nesting of a JSON tensor", _positive),
    Setting("max_json_elements", int, 500_000, "most values (numbers and lists) in one "
            "JSON tensor, counted before it is parsed", _positive),
    Setting("service", str, "", "MMS 0.4's --service: a custom service file used for every "
            "model instead of the archive's"),
    Setting("services", list, [], "per-model service overrides, as name=file.py[:ClassName] "
            "(what ServingFrontend.load_models passes)"),
    Setting("run_dir", str, "", "folder for ipc sockets and extracted archives (default: a "
            "new folder under $TMPDIR)"),
    Setting("broker_frontend", str, "", "broker endpoint for frontends (default: ipc in "
            "run_dir)"),
    Setting("broker_workers", str, "", "broker endpoint for workers (default: ipc in "
            "run_dir)"),
    Setting("broker_management", str, "", "broker endpoint for management commands, which "
            "only the management routes send (default: ipc in run_dir)"),
    Setting("log_file", str, "", "log to this file instead of stderr"),
    Setting("log_rotation_time", str, "", "MMS 0.4's --log-rotation-time: rotate log_file "
            "every 'interval when' (e.g. '1 H', '1 D', 'midnight'); empty: never"),
    Setting("access_log", bool, True, "one access-log line per request (request id, model, "
            "status, bytes, batch size, queue/inference/total ms; never payloads)"),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR",
            lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
)
BY_NAME = {s.name: s for s in SETTINGS}

SECRET_ENV = tuple(s.env for s in SETTINGS if s.secret)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (`--max-batch-size`), plus `--config FILE`; flags not given
    are absent from the parsed namespace (argument_default=SUPPRESS on the parser)."""
    parser.add_argument("--config", help="TOML file of settings (docs/configuration.md)")
    for setting in SETTINGS:
        if not setting.cli:
            continue
        kwargs: dict[str, Any] = {"help": f"{setting.help} (default: {setting.default!r}; "
                                          f"env {setting.env})".replace("%", "%%"),
                                  "dest": setting.name}
        if setting.type is list:
            kwargs["nargs"] = "+"
        elif setting.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = setting.type
        parser.add_argument(setting.flag, **kwargs)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings: JSON's syntax is TOML's here


def markdown_table() -> str:
    """docs/configuration.md's table: every setting, its flag, variable and default."""
    rows = ["| setting (TOML key) | flag | environment | default | meaning |",
            "|---|---|---|---|---|"]
    for s in SETTINGS:
        meaning = s.help.replace("|", r"\|")
        flag = f"`{s.flag}`" if s.cli else "(none)"
        rows.append(f"| `{s.name}` | {flag} | `{s.env}` | `{toml_value(s.default)}` | "
                    f"{meaning} |")
    return "\n".join(rows) + "\n"
