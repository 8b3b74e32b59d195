"""The `mxserve` command: subcommands dispatch lazily so `export` never imports mxnet.

    mxserve export --model-name NAME --model-path DIR [--service-file-path F]
                   [--export-path D] [--force]
    mxserve worker --archive A --broker ENDPOINT [--gpu N] ...
    mxserve nginx-conf [--listen 80] [--config FILE]
"""
from __future__ import annotations

import argparse
import sys

from common.errors import EXIT_BAD_CONFIG, EXIT_OK, ArchiveError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        from worker.main import main as worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "start":
        from worker.launcher import main as start_main

        return start_main(argv[1:])
    parser = argparse.ArgumentParser(prog="mxserve", description="MXNet model server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="serve models (see `mxserve start -h`)")
    commands.add_parser("worker", help="run one worker process (see `mxserve worker -h`)")
    export = commands.add_parser("export", help="build a .model archive (MMS 0.4 compatible)")
    export.add_argument("--model-name", required=True)
    export.add_argument("--model-path", required=True,
                        help="folder with *-symbol.json, *.params, signature.json [synset.txt]")
    export.add_argument("--service-file-path", default=None, help="custom service .py")
    export.add_argument("--export-path", default=".", help="output folder (default: .)")
    export.add_argument("--force", action="store_true", help="overwrite an existing archive")
    nginx = commands.add_parser("nginx-conf", help="print an nginx.conf for gunicorn behind "
                                "nginx, consistent with this configuration")
    nginx.add_argument("--listen", default="80", help="nginx's listen directive (default: 80)")
    nginx.add_argument("--config", default=None, help="mxserve TOML settings file")
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "nginx-conf":
        return _nginx_conf(args)
    return EXIT_OK


def _nginx_conf(args: argparse.Namespace) -> int:
    from common.config import ConfigError, load_config
    from common.nginx import render

    try:
        config = load_config({}, args.config)
    except ConfigError as exc:
        print(f"mxserve nginx-conf: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(render(config, args.listen), end="")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from common.export import export_model

    try:
        path = export_model(args.model_name, args.model_path, args.service_file_path,
                            args.export_path, args.force)
    except ArchiveError as exc:
        print(f"mxserve export: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
