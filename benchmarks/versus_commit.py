"""This checkout against an earlier commit on the noop model, side by side: a fresh server
of each in turn (the order alternating), wrk at 32 connections; prints each pair's
throughput and CPU-per-request ratios (this / earlier) and their medians. A whole-server
comparison that does not depend on the plain Flask baseline's drift.

    python benchmarks/versus_commit.py 140797c [--pairs 4] [--duration 8]

The earlier commit is checked out into a temporary git worktree and run from there; it
must predate the `mxserve` package layout (its CLI is `python -m common.cli`), because this
checkout's editable install would shadow a second `mxserve` package.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served import ROOT, Stack, free_port, run_wrk  # noqa: E402


class EarlierStack(Stack):
    """`python -m common.cli start` of an older worktree, noop only, on a free port, with
    the same flags as Stack (a management listener and its token file)."""

    def __init__(self, tree: Path, archive: Path) -> None:  # not super().__init__
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_dir = tempfile.mkdtemp(prefix="mxserve-bench-")
        token_file = Path(self.token_dir) / "token"
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "start", "--models", f"noop={archive}",
             "--port", str(self.port), "--log-level", "WARNING", "--workers-per-model", "1",
             "--management-port", str(free_port()), "--management-token-file",
             str(token_file)],
            cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(self.url + "/ping", "the earlier commit's server")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the earlier commit (it must have common/cli.py)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "sample-models")
    args = parser.parse_args()
    archive = args.models_dir / "noop.model"
    with tempfile.TemporaryDirectory(prefix="mxserve-versus-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                        args.commit], check=True, capture_output=True)
        try:
            if not (tree / "common" / "cli.py").is_file():
                sys.exit(f"{args.commit} has no common/cli.py: it is not the pre-package "
                         "layout this script runs")
            throughput, cpu = [], []
            for i in range(args.pairs):
                figures = {}
                for side in (("earlier", "this") if i % 2 == 0 else ("this", "earlier")):
                    stack = (EarlierStack(tree, archive) if side == "earlier" else
                             Stack("noop", archive, "--workers-per-model", "1"))
                    try:
                        figures[side] = run_wrk(stack, "noop", args.models_dir, 32,
                                                args.duration)
                    finally:
                        stack.stop()
                this, earlier = figures["this"], figures["earlier"]
                throughput.append(this["requests_per_s"] / earlier["requests_per_s"])
                cpu.append(this["server_cpu_ms_per_request"]
                           / earlier["server_cpu_ms_per_request"])
                print(f"pair {i + 1}: this {this['requests_per_s']:.0f} req/s "
                      f"{this['server_cpu_ms_per_request']:.3f} ms CPU/req, earlier "
                      f"{earlier['requests_per_s']:.0f} req/s "
                      f"{earlier['server_cpu_ms_per_request']:.3f} ms CPU/req", flush=True)
            print(f"this / {args.commit}, noop at 32 connections, {args.pairs} pairs: "
                  f"throughput median {statistics.median(throughput):.3f} "
                  f"({', '.join(f'{r:.3f}' for r in throughput)}); CPU per request median "
                  f"{statistics.median(cpu):.3f} ({', '.join(f'{r:.3f}' for r in cpu)})")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)


if __name__ == "__main__":
    main()
