"""The `mxserve` command: subcommands dispatch lazily so `export` never imports mxnet.

    mxserve export --model-name NAME --model-path DIR [--service-file-path F]
                   [--export-path D] [--force]
    mxserve worker --archive A --broker ENDPOINT [--gpu N] ...
    mxserve nginx-conf [--listen 80] [--config FILE]
    mxserve probe livez|readyz               (a container's HEALTHCHECK)
    mxserve check-manifests FILE|- [--adapter-rules FILE]   (rendered Kubernetes YAML)
    mxserve config --show [any `mxserve start` flag ...] | --markdown
    mxserve broker | mxserve frontend     (the two programs of supervisord.conf)
"""
from __future__ import annotations

import argparse
import sys

from mxserve.common.errors import EXIT_BAD_CONFIG, EXIT_OK, ArchiveError
from mxserve.common.version import installed_version


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        from mxserve.worker.main import main as worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "start":
        from mxserve.instance.launcher import main as start_main

        return start_main(argv[1:])
    if argv and argv[0] == "broker":
        argparse.ArgumentParser(
            prog="mxserve broker", description="The broker and its workers alone, as "
            "supervisord.conf runs them. Configured only by MXSERVE_* variables (every "
            "setting of `mxserve start -h`); MXSERVE_RUN_DIR names its private run "
            "directory.").parse_args(argv[1:])
        from mxserve.worker.broker.loop import main as broker_main

        return broker_main()
    if argv and argv[0] == "frontend":
        from mxserve.instance.gunicorn_wiring import frontend_main

        return frontend_main(argv[1:])
    if argv and argv[0] == "config":
        return _config(argv[1:])
    parser = argparse.ArgumentParser(prog="mxserve", description="MXNet model server")
    parser.add_argument("--version", action="version", version=f"mxserve {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="serve models (see `mxserve start -h`)")
    commands.add_parser("worker", help="run one worker process (see `mxserve worker -h`)")
    commands.add_parser("broker", help="the broker and its workers alone, configured by "
                        "MXSERVE_* variables (supervisord.conf)")
    commands.add_parser("frontend", help="gunicorn alone (see `mxserve frontend -h`)")
    commands.add_parser("config", help="print the effective configuration (see `mxserve "
                        "config -h`)")
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
    probe = commands.add_parser("probe", help="ask this instance's /livez or /readyz, as its "
                                "settings place it; exit 0 on 200 (a container HEALTHCHECK)")
    probe.add_argument("endpoint", choices=("livez", "readyz"))
    probe.add_argument("--timeout-s", type=float, default=3.0, help="answer within this")
    manifests = commands.add_parser(
        "check-manifests", help="check rendered Kubernetes manifests (kubectl kustomize ...) "
        "against mxserve's settings: ports, probes, grace period, GPUs, autoscaling metrics")
    manifests.add_argument("file", help="the rendered YAML, or - for standard input")
    manifests.add_argument("--adapter-rules", default=None,
                           help="the Prometheus adapter's rules file the HPA relies on")
    args = parser.parse_args(argv)
    if args.command == "check-manifests":
        return _check_manifests(args)
    if args.command == "probe":
        return _probe(args)
    if args.command == "export":
        return _export(args)
    if args.command == "nginx-conf":
        return _nginx_conf(args)
    return EXIT_OK


def _config(argv: list[str]) -> int:
    """`mxserve config --show [start's flags]`: what `mxserve start` with the same flags,
    environment and --config file would run with, as TOML, each value's source beside it.
    `--markdown`: the table of every setting (docs/configuration.md)."""
    from mxserve.common.config import load_config, show
    from mxserve.common.errors import ConfigError
    from mxserve.common.settings import add_arguments, markdown_table

    parser = argparse.ArgumentParser(prog="mxserve config", description=_config.__doc__,
                                     argument_default=argparse.SUPPRESS)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--show", action="store_true", help="print the effective settings")
    action.add_argument("--markdown", action="store_true", help="print the settings table")
    add_arguments(parser)
    values = vars(parser.parse_args(argv))
    if values.pop("markdown", False):
        print(markdown_table(), end="")
        return EXIT_OK
    values.pop("show", None)
    config_file = values.pop("config", None)
    try:
        config = load_config(values, config_file)
    except ConfigError as exc:
        print(f"mxserve config: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(show(config), end="")
    return EXIT_OK


def _nginx_conf(args: argparse.Namespace) -> int:
    from mxserve.common.config import load_config
    from mxserve.common.errors import ConfigError
    from mxserve.instance.nginx import render

    try:
        config = load_config({}, args.config)
    except ConfigError as exc:
        print(f"mxserve nginx-conf: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(render(config, args.listen), end="")
    return EXIT_OK


def _probe(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from mxserve.common.config import load_config
    from mxserve.common.errors import ConfigError

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"mxserve probe: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    host = "127.0.0.1" if config.host in ("", "0.0.0.0", "::") else config.host
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{config.port}/{args.endpoint}",
                                    timeout=args.timeout_s) as answer:
            print(answer.read().decode(errors="replace"))
            return EXIT_OK
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"))
    except OSError as exc:
        print(f"mxserve probe: {exc}", file=sys.stderr)
    return 1  # what a HEALTHCHECK reads as unhealthy


def _check_manifests(args: argparse.Namespace) -> int:
    import yaml

    from mxserve.instance.manifest_check import check, load_documents

    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file).read()
        documents = load_documents(text)
        rules = yaml.safe_load(open(args.adapter_rules)) if args.adapter_rules else None
    except (OSError, yaml.YAMLError) as exc:
        print(f"mxserve check-manifests: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    problems = check(documents, rules)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(documents)} manifests agree with mxserve's settings")
    return 1 if problems else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from mxserve.instance.export import export_model

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
