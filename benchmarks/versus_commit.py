"""This checkout against an earlier commit on the noop model: both servers up side by side
(an idle one costs nothing), wrk at 32 connections on each in turn, the order alternating
per pair; prints each pair's throughput and CPU-per-request ratios (this / earlier), their
medians and a bootstrap 95 % interval of each median. A whole-server comparison that does
not depend on the plain Flask baseline's drift; many short pairs, because this VM's speed
drifts by more than the differences looked for.

    python benchmarks/versus_commit.py 140797c [--pairs 20] [--duration 6]

The earlier commit is checked out into a temporary git worktree and run from there; it
must predate the `mxserve` package layout (its CLI is `python -m common.cli`), because this
checkout's editable install would shadow a second `mxserve` package.
"""
from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served import ROOT, Stack, alternating, free_port, run_wrk  # noqa: E402


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


def median_interval(ratios: list[float], draws: int = 4000) -> tuple[float, float]:
    """A bootstrap 95 % interval of the median of per-pair ratios."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def summary(what: str, ratios: list[float]) -> str:
    low, high = median_interval(ratios)
    return (f"{what} median {statistics.median(ratios):.3f} (95 % interval {low:.3f}-"
            f"{high:.3f}; {sum(r > 1 for r in ratios)} of {len(ratios)} pairs above 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the earlier commit (it must have common/cli.py)")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "sample-models")
    args = parser.parse_args()
    archive = args.models_dir / "noop.model"
    with tempfile.TemporaryDirectory(prefix="mxserve-versus-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                        args.commit], check=True, capture_output=True)
        stacks: dict[str, Stack] = {}
        try:
            if not (tree / "common" / "cli.py").is_file():
                sys.exit(f"{args.commit} has no common/cli.py: it is not the pre-package "
                         "layout this script runs")
            stacks["earlier"] = EarlierStack(tree, archive)
            stacks["this"] = Stack("noop", archive, "--workers-per-model", "1")
            for stack in stacks.values():  # warm-up, not counted
                run_wrk(stack, "noop", args.models_dir, 32, 2)
            runs = alternating(stacks, "noop", args.models_dir, 32, args.pairs,
                               args.duration, rotate=True)
            throughput, cpu = [], []
            for i, (this, earlier) in enumerate(zip(runs["this"], runs["earlier"])):
                throughput.append(this["requests_per_s"] / earlier["requests_per_s"])
                cpu.append(this["server_cpu_ms_per_request"]
                           / earlier["server_cpu_ms_per_request"])
                print(f"pair {i + 1}: this {this['requests_per_s']:.0f} req/s "
                      f"{this['server_cpu_ms_per_request']:.3f} ms CPU/req, earlier "
                      f"{earlier['requests_per_s']:.0f} req/s "
                      f"{earlier['server_cpu_ms_per_request']:.3f} ms CPU/req")
            print(f"this / {args.commit}, noop at 32 connections, {args.pairs} pairs of "
                  f"{args.duration:g} s: {summary('throughput', throughput)}; "
                  f"{summary('CPU per request', cpu)}")
        finally:
            for stack in stacks.values():
                stack.stop()
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)


if __name__ == "__main__":
    main()
