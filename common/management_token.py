"""The management API's bearer token: where it comes from and how processes get it.

On by default (`management_auth`). The token is, in order: the contents of
`management_token_file`; `management_token` from the environment or the TOML file; the
`management.token` file a previous start left in a configured run directory (supervisord
restarts keep their token); or a new random one. Except in the first case it is written to
`<run_dir>/management.token`, mode 0600, and that path, never the token, is logged.
Children get only the file's path: no process's environment carries the token.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from mxserve.common.config import Config
from mxserve.common.errors import ConfigError
from mxserve.common.private_files import write_private
from mxserve.common.settings import MIN_TOKEN_CHARS

log = logging.getLogger("mxserve")

TOKEN_FILE = "management.token"


def read_token(path: str | Path) -> str:
    """The token in a file (surrounding whitespace ignored); ConfigError if unusable."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"management_token_file {path}: cannot read it") from exc
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"management_token_file {path}: the token is shorter than "
                          f"{MIN_TOKEN_CHARS} characters")
    return token


def resolve(config: Config, run_dir: Path) -> Config:
    """`config` with management_token_file naming the file every frontend reads the token
    from and management_token emptied (unchanged when there is no management listener)."""
    if not config.management_port:
        return config.replace(management_token="")
    if not config.management_auth:
        log.warning("the management API on %s:%d accepts requests without a token "
                    "(--no-management-auth): any local user can manage models",
                    config.management_host, config.management_port)
        return config.replace(management_token="", management_token_file="")
    if config.management_token_file:
        read_token(config.management_token_file)
        mode = os.stat(config.management_token_file).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("management_token_file %s can be read by other users (mode %o)",
                        config.management_token_file, stat.S_IMODE(mode))
        return config.replace(management_token="")
    path = run_dir / TOKEN_FILE
    token = config.management_token.strip()
    if not token and path.is_file() and not path.is_symlink():
        try:
            token = read_token(path)  # a supervisord restart keeps its clients' token
        except ConfigError:
            token = ""
    if not token:
        token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    log.info("management API token in %s (send it as Authorization: Bearer <token>)", path)
    return config.replace(management_token="", management_token_file=str(path))


def token_of(config: Config) -> str:
    """The token a frontend checks: from management_token_file, else management_token
    (embedding, tests); empty when there is none."""
    if config.management_token_file:
        return read_token(config.management_token_file)
    return config.management_token.strip()
