"""The effective configuration: CLI > environment > config file > default.

Settings are declared in common/settings.py. `load_config(cli_values, config_file)` merges
the layers, validates the result (including the timeout ladder) and returns a frozen
`Config`.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mxserve.common.errors import ConfigError, InvalidInput
from mxserve.common.settings import (
    BY_NAME,
    MIB,
    MIN_TOKEN_CHARS,
    SECRET_ENV,
    SETTINGS,
    Setting,
    toml_value,
)
from mxserve.common.url_allowlist import parse_allowlist


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def replace(self, **changes: Any) -> Config:
        return Config({**self.values, **changes}, {**self.sources, **dict.fromkeys(changes,
                                                                                   "derived")})

    @property
    def images_decoded_by_workers(self) -> bool:
        """Whether frontends send JPEG/PNG inputs on encoded (setting image_decode)."""
        if self.values["image_decode"] == "auto":
            return self.values["gpus"] == 0 and self.values["gpu"] < 0
        return self.values["image_decode"] == "worker"

    def to_env(self) -> dict[str, str]:
        """The effective config as MXSERVE_* variables, for child processes; secrets are
        left out (a child reads the token from management_token_file)."""
        return {BY_NAME[k].env: " ".join(v) if isinstance(v, list) else str(v)
                for k, v in self.values.items() if not BY_NAME[k].secret}


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus every secret setting's variable, for a child process's environment."""
    return {key: value for key, value in env.items() if key not in SECRET_ENV}


def load_config(cli: Mapping[str, Any] | None = None, config_file: str | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Merge defaults < file < env < CLI (CLI holds only flags actually given)."""
    env = os.environ if env is None else env
    values = {s.name: s.default for s in SETTINGS}
    sources = dict.fromkeys(values, "default")
    config_file = config_file or env.get("MXSERVE_CONFIG") or None
    if config_file:
        for key, raw in _read_file(Path(config_file)).items():
            setting = BY_NAME.get(key)
            if setting is None:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = setting.parse(raw, config_file)
            sources[key] = config_file
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.name] = setting.parse(env[setting.env], setting.env)
            sources[setting.name] = "env"
    for key, raw in (cli or {}).items():
        values[key] = BY_NAME[key].parse(raw, BY_NAME[key].flag)
        sources[key] = "cli"
    config = Config(values, sources)
    validate(config)
    return config


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def broker_endpoints(config: Config, run_dir: Path) -> tuple[str, str, str]:
    """The broker's (frontend, worker, management) ZeroMQ endpoints: ipc sockets in the
    run directory unless configured."""
    frontend = config.broker_frontend or f"ipc://{run_dir}/frontends.sock"
    workers = config.broker_workers or f"ipc://{run_dir}/workers.sock"
    management = config.broker_management or f"ipc://{run_dir}/management.sock"
    return frontend, workers, management


MIN_FRAME_BYTES = 64 * MIB  # a request's decoded tensors may outgrow its body


def max_frame_bytes(config: Config) -> int:
    """ZMQ_MAXMSGSIZE of the sockets that carry requests: the largest frame a request's
    arrays can honestly need (a JSON tensor's float32s are at most 2x its body's bytes, a
    frontend-decoded image is at its signature's size); a larger one disconnects its
    sender before the broker buffers it."""
    return max(MIN_FRAME_BYTES, 8 * config.max_body_bytes)


def max_reply_frame_bytes(config: Config) -> int:
    """ZMQ_MAXMSGSIZE of the sockets that carry answers (plus room for the header)."""
    return config.max_reply_bytes + MIB


FRONTEND_WAIT_MARGIN_S = 2.0  # the frontend outwaits the broker's deadline by this much


def frontend_wait_s(config: Config) -> float:
    return config.request_timeout_s + FRONTEND_WAIT_MARGIN_S


def validate(config: Config) -> None:
    """Cross-setting rules; the timeout ladder keeps our JSON errors ahead of proxies'."""
    if config.gunicorn_timeout_s <= frontend_wait_s(config):
        raise ConfigError(
            f"timeout ladder broken: gunicorn_timeout_s ({config.gunicorn_timeout_s}) must "
            f"exceed request_timeout_s + {FRONTEND_WAIT_MARGIN_S} ({frontend_wait_s(config)})")
    if config.proxy_read_timeout_s <= config.gunicorn_timeout_s:
        raise ConfigError(
            f"timeout ladder broken: proxy_read_timeout_s ({config.proxy_read_timeout_s}) "
            f"must exceed gunicorn_timeout_s ({config.gunicorn_timeout_s})")
    if config.grpc_port and config.grpc_port in (config.port, config.management_port):
        raise ConfigError(f"grpc_port {config.grpc_port} is also the port or management_port")
    if config.management_port:
        if config.management_port == config.port:
            raise ConfigError(f"management_port and port are both {config.port}")
        if not _is_loopback(config.management_host) and not config.management_auth:
            raise ConfigError(f"management_host {config.management_host!r} is not loopback: "
                              "management_auth must stay on")
    if config.management_token and len(config.management_token.strip()) < MIN_TOKEN_CHARS:
        raise ConfigError(f"management_token is shorter than {MIN_TOKEN_CHARS} characters")
    if config.model_store and not os.path.isdir(config.model_store):
        raise ConfigError(f"model_store {config.model_store!r} is not a folder")
    try:
        parse_allowlist(config.model_url_allowlist)
    except InvalidInput as exc:
        raise ConfigError(exc.message) from exc
    if config.log_rotation_time:
        from mxserve.common.logs import parse_rotation

        if not config.log_file:
            raise ConfigError("log_rotation_time needs log_file")
        parse_rotation(config.log_rotation_time)
    model_entries(config)
    parse_batching(config.batching)
    parse_services(config.services)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_batch_delay_ms: float


def parse_batching(entries: list[str]) -> dict[str, Batching]:
    """'name=size[:delay_ms]' entries -> {name: Batching}."""
    result = {}
    for entry in entries:
        name, _, spec = entry.partition("=")
        size, _, delay = spec.partition(":")
        try:
            batching = Batching(int(size), float(delay or 0))
        except ValueError as exc:
            raise ConfigError(f"batching {entry!r}: expected name=size[:delay_ms]") from exc
        if not name or batching.max_batch_size < 1 or batching.max_batch_delay_ms < 0:
            raise ConfigError(f"batching {entry!r}: expected name=size[:delay_ms], size >= 1")
        result[name] = batching
    return result


def parse_services(entries: list[str]) -> dict[str, tuple[str, str]]:
    """'name=file.py[:ClassName]' entries -> {name: (file, class name or "")}."""
    result = {}
    for entry in entries:
        name, _, spec = entry.partition("=")
        path, _, class_name = spec.partition(":")
        if not name or not path.endswith(".py"):
            raise ConfigError(f"services {entry!r}: expected name=file.py[:ClassName]")
        result[name] = (path, class_name)
    return result


def service_for(config: Config, model: str) -> tuple[str, str]:
    """(service file, class name) for a model: its override, else --service, else none."""
    return parse_services(config.services).get(model, (config.service, ""))


def batching_for(config: Config, model: str, handler: bool = False) -> Batching:
    """`handler`: an MMS 1.x handler gets one request at a time unless its batching is set
    for it by name, as MMS 1.x's batch_size defaults to 1 (such services assume it)."""
    default = Batching(1 if handler else config.max_batch_size, config.max_batch_delay_ms)
    return parse_batching(config.batching).get(model, default)


ARCHIVE_SUFFIXES = (".mar", ".model")  # what `--models all` serves from the model store


def model_entries(config: Config) -> list[tuple[str | None, str]]:
    """`models` as (name or None, archive path). As in MMS 1.x, `all` is every archive in
    `model_store`, and a relative path not found from the working folder is looked up in
    `model_store`. A URL is refused: downloads go through the management API's allowlist."""
    entries: list[tuple[str | None, str]] = []
    for entry in config.models:
        if entry == "all":
            if not config.model_store:
                raise ConfigError("models = all needs model_store (--model-store DIR)")
            store = Path(config.model_store)
            entries += [(None, str(path)) for path in sorted(store.iterdir())
                        if path.suffix in ARCHIVE_SUFFIXES and path.is_file()]
            continue
        name, path = parse_model_spec(entry)
        if "://" in path:
            raise ConfigError(f"model {entry!r}: archives are loaded from local files at "
                              "start; register a URL with POST /models (model_url_allowlist)")
        if (config.model_store and not os.path.isabs(path) and not os.path.exists(path)
                and os.path.exists(os.path.join(config.model_store, path))):
            path = os.path.join(config.model_store, path)
        entries.append((name, path))
    return entries


def parse_model_spec(entry: str) -> tuple[str | None, str]:
    """'name=path' -> (name, path); a bare path -> (None, path), named by its manifest."""
    name, sep, path = entry.partition("=")
    if not sep:
        return None, entry
    if not name or not path:
        raise ConfigError(f"model {entry!r}: expected name=path")
    return name, path


def show(config: Config) -> str:
    """The effective configuration as a TOML file, each line saying where it came from."""
    width = max(len(s.name) for s in SETTINGS)
    return "".join(f"{s.name.ljust(width)} = {_shown(s, config.values[s.name])}"
                   f"  # {config.sources[s.name]}\n" for s in SETTINGS)


def _shown(setting: Setting, value: Any) -> str:
    return '"********"' if setting.secret and value else toml_value(value)


