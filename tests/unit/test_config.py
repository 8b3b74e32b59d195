"""Settings: precedence CLI > env > file > defaults, validation, the timeout ladder."""
from __future__ import annotations

import re

import pytest

from mxserve.common.config import load_config
from mxserve.common.errors import ConfigError


def test_defaults():
    config = load_config({}, env={})
    assert (config.port, config.host, config.max_queue_size) == (8080, "127.0.0.1", 100)
    assert config.sources["port"] == "default"


def test_precedence_cli_over_env_over_file(tmp_path):
    path = tmp_path / "mxserve.toml"
    path.write_text('port = 9000\nmax_batch_size = 4\nlog_level = "DEBUG"\n'
                    'models = ["a=a.model"]\n')
    env = {"MXSERVE_PORT": "9100", "MXSERVE_MAX_BATCH_SIZE": "16"}
    config = load_config({"port": 9200}, str(path), env=env)
    assert config.port == 9200 and config.sources["port"] == "cli"
    assert config.max_batch_size == 16 and config.sources["max_batch_size"] == "env"
    assert config.log_level == "DEBUG" and config.sources["log_level"] == str(path)
    assert config.models == ["a=a.model"]


def test_config_file_from_env(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("port = 9999\n")
    assert load_config({}, env={"MXSERVE_CONFIG": str(path)}).port == 9999


def test_child_env_roundtrip():
    config = load_config({"models": ["a=x.model", "b=y.model"], "port": 1234}, env={})
    again = load_config({}, env=config.to_env())
    assert again.values == config.values


@pytest.mark.parametrize("cli, env, file_text, match", [
    ({"port": 0}, {}, None, "port .* out of range"),
    ({}, {"MXSERVE_PORT": "eighty"}, None, "MXSERVE_PORT: 'eighty' is not a valid int"),
    ({}, {}, "nope = 1\n", "unknown setting 'nope'"),
    ({}, {}, "port = \n", "not valid TOML"),
    ({"log_level": "LOUD"}, {}, None, "log_level"),
    ({"request_timeout_s": 60.0, "gunicorn_timeout_s": 61.0}, {}, None, "timeout ladder"),
    ({"models": ["=x.model"]}, {}, None, "expected name=path"),
    ({"image_decode": "gpu"}, {}, None, "image_decode"),
])
def test_bad_settings_are_refused_with_the_reason(tmp_path, cli, env, file_text, match):
    path = None
    if file_text is not None:
        path = tmp_path / "c.toml"
        path.write_text(file_text)
    with pytest.raises(ConfigError, match=match):
        load_config(cli, str(path) if path else None, env=env)


@pytest.mark.parametrize("cli, workers_decode", [
    ({}, True),  # auto, CPU workers
    ({"gpus": 2}, False),  # auto: a GPU worker's thread must keep feeding its GPU
    ({"gpu": 0}, False),
    ({"image_decode": "frontend"}, False),
    ({"image_decode": "worker", "gpus": 1}, True),
])
def test_where_images_are_decoded(cli, workers_decode):
    assert load_config(cli, env={}).images_decoded_by_workers is workers_decode


def test_per_model_batching_overrides():
    from mxserve.common.config import batching_for

    config = load_config({"batching": ["resnet18=16:2.5", "digits=4"], "max_batch_size": 8},
                         env={})
    assert batching_for(config, "resnet18").max_batch_size == 16
    assert batching_for(config, "resnet18").max_batch_delay_ms == 2.5
    assert batching_for(config, "digits").max_batch_delay_ms == 0
    assert batching_for(config, "other").max_batch_size == 8
    for bad in (["x"], ["x=0"], ["x=4:-1"], ["=4"], ["x=four"]):
        with pytest.raises(ConfigError, match="batching"):
            load_config({"batching": bad}, env={})


def test_per_model_service_overrides():
    from mxserve.common.config import service_for

    config = load_config({"services": ["digits=/srv/digit_service.py:DigitService"],
                          "service": "/srv/all.py"}, env={})
    assert service_for(config, "digits") == ("/srv/digit_service.py", "DigitService")
    assert service_for(config, "other") == ("/srv/all.py", "")
    with pytest.raises(ConfigError, match="services"):
        load_config({"services": ["digits=service.txt"]}, env={})


def test_docs_configuration_table_is_generated_from_the_settings():
    from pathlib import Path

    from mxserve.common.settings import markdown_table

    text = (Path(__file__).resolve().parent.parent.parent / "docs" / "configuration.md").read_text()
    table = text.split("<!-- settings: begin -->\n")[1].split("<!-- settings: end -->")[0]
    assert table == markdown_table(), "regenerate it: mxserve config --markdown"


def test_show_is_a_toml_file_that_loads_back_to_the_same_config(tmp_path):
    import tomllib

    from mxserve.common.config import load_config, show

    config = load_config({"max_batch_size": 4, "models": ["a=b.model"], "jpeg_draft": True},
                         env={"MXSERVE_HOST": "::1"})
    text = show(config)
    assert re.search(r'^host +=  ?"::1"  # env$', text, re.M), text
    assert re.search(r"^max_batch_size += 4  # cli$", text, re.M), text
    (tmp_path / "c.toml").write_text(text)
    assert load_config({}, str(tmp_path / "c.toml"), env={}).values == config.values
    assert tomllib.loads(text)["models"] == ["a=b.model"]
