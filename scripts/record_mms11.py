#!/usr/bin/env python3
"""Records MMS 1.1.11's answers to the calls of scripts/mms11_cases.py, into
tests/data/mms11/recorded.json, for tests/integration/test_mms11_replay.py to replay
against mxserve (so CI needs no Java).

To re-record (Java 17 and the package registry needed; about two minutes):

    .venv/bin/python scripts/record_mms11.py

It makes a virtual environment under build/mms11 with multi-model-server==1.1.11,
model-archiver==1.0.3 and mxnet==1.9.1 (once), builds the two template-shaped archives of
tests/data/mms_template with that model-archiver, starts MMS 1.1 on free loopback ports
with one worker per model, makes every call in order, and stops it. Re-record whenever a
case, an archive or the digits weights change; the replay test says when the cases and the
recordings disagree.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mms11_cases
import requests

ROOT = Path(__file__).resolve().parent.parent
MMS_PACKAGES = ("multi-model-server==1.1.11", "model-archiver==1.0.3", "mxnet==1.9.1",
                "numpy<1.24")


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: MMS 1.1 refuses some
    higher port numbers as invalid."""
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", random.randrange(20000, 32000)))
            except OSError:
                continue
            return s.getsockname()[1]


def mms_environment(venv: Path) -> Path:
    """The bin folder of a virtual environment holding MMS 1.1.11, made when missing."""
    if not (venv / "bin" / "multi-model-server").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *MMS_PACKAGES],
                       check=True)
    return venv / "bin"


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"MMS exited with {process.returncode}:\n"
                             + log.read_text()[-3000:])
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"MMS was not ready within {timeout_s}s:\n" + log.read_text()[-3000:])


def models_ready(management: str, timeout_s: float) -> None:
    """Every model has its worker: MMS answers 503 until then."""
    deadline = time.monotonic() + timeout_s
    for name in mms11_cases.MODELS:
        while time.monotonic() < deadline:
            workers = requests.get(f"{management}/models/{name}", timeout=5).json()
            if isinstance(workers, dict) and any(w.get("status") == "READY"
                                                 for w in workers.get("workers", [])):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"{name} had no ready worker within {timeout_s}s")


def stop(process: subprocess.Popen) -> None:
    """MMS's Java server and its Python workers, all in the session it was started in."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def record(bin_dir: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "store"
        mms11_cases.build_store(store, bin_dir / "model-archiver")
        ports = {"inference": free_port(), "management": free_port()}
        config = Path(work) / "config.properties"
        config.write_text(f"inference_address=http://127.0.0.1:{ports['inference']}\n"
                          f"management_address=http://127.0.0.1:{ports['management']}\n"
                          f"model_store={store}\n"
                          "default_workers_per_model=1\n")
        log = Path(work) / "mms.log"
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        models = [f"{name}={file}" for name, file in mms11_cases.MODELS.items()]
        with open(log, "w") as output:
            process = subprocess.Popen(
                [str(bin_dir / "multi-model-server"), "--start", "--foreground",
                 "--mms-config", str(config), "--model-store", str(store),
                 "--models", *models], cwd=work, env=env, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            wait_for(urls["inference"] + "/ping", process, log, 180)
            models_ready(urls["management"], 180)
            answers = {case.name: mms11_cases.send(case, urls)
                       for case in mms11_cases.cases()}
        finally:
            stop(process)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "recorded_with": {"server": "multi-model-server 1.1.11",
                          "packages": list(MMS_PACKAGES),
                          "java": java.splitlines()[0] if java else "",
                          "python": platform.python_version(),
                          "date": datetime.datetime.now(datetime.UTC)
                          .strftime("%Y-%m-%dT%H:%M:%SZ")},
        "answers": answers}, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(answers)} answers into {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mms-venv", type=Path, default=ROOT / "build" / "mms11",
                        help="the virtual environment to run MMS 1.1.11 from (made when "
                             "missing)")
    parser.add_argument("--out", type=Path, default=mms11_cases.RECORDINGS)
    args = parser.parse_args()
    record(mms_environment(args.mms_venv), args.out)


if __name__ == "__main__":
    main()
