"""Log rotation across processes: one rotator renames, every writer reopens by itself."""
from __future__ import annotations

import logging
import time

import pytest

from mxserve.common.config import load_config
from mxserve.common.errors import ConfigError
from mxserve.common.logs import LogRotator, parse_rotation, setup_logging


@pytest.mark.parametrize("text, parsed", [("1 H", (1, "H")), ("30 M", (30, "M")),
                                          ("midnight", (1, "MIDNIGHT")), ("1 w3", (1, "W3"))])
def test_mms04_rotation_times_parse(text, parsed):
    assert parse_rotation(text) == parsed


@pytest.mark.parametrize("text", ["", "H 1", "0 H", "1 Y", "1 2 H", "W7"])
def test_bad_rotation_times_are_config_errors(text):
    with pytest.raises(ConfigError, match="log rotation time"):
        parse_rotation(text)


def test_rotation_needs_a_log_file():
    with pytest.raises(ConfigError, match="needs log_file"):
        load_config({"log_rotation_time": "1 H"}, env={})


def test_the_rotator_renames_and_writers_reopen(tmp_path):
    path = tmp_path / "mxserve.log"
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("INFO", str(path), "test")  # what every process does
        rotator = LogRotator(str(path), "1 S")  # what the launcher does
        logging.getLogger("x").info("before the rotation")
        time.sleep(1.2)
        assert rotator.tick()
        logging.getLogger("x").info("after the rotation")
        rotated = [p for p in tmp_path.iterdir() if p.name != "mxserve.log"]
        assert len(rotated) == 1 and rotated[0].name.startswith("mxserve.log.")
        assert "before the rotation" in rotated[0].read_text()
        assert "after the rotation" in path.read_text()
        assert "before" not in path.read_text()
        assert not rotator.tick()  # next one is a second away
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
