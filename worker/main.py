"""The worker process: one model on one device, serving batches from a broker.

    python -m mxserve.worker --archive digits.model --broker ipc:///run/mxserve/workers [--gpu 0]

Lifecycle:
  1. Set the OpenMP thread count (before mxnet is imported), load and validate the
     archive, construct the ModelService, bind it for max_batch_size.
     Failure here exits with EXIT_MODEL_LOAD (3): the supervisor must not restart-loop it.
  2. Connect a DEALER socket to the broker and send READY {model, device, max_batch_size}.
  3. Loop: REQUEST -> run the batch -> REPLY (one reply per batch, an answer or an error per
     request; a REPLY also tells the broker this worker is idle again). HEARTBEAT every
     interval; if the broker is silent for `liveness` intervals, reconnect and say READY
     again (the broker may have restarted). DISCONNECT {reason: "unknown"} (a broker that
     does not know us) -> say READY again; any other DISCONNECT -> exit.
  4. SIGTERM/SIGINT: the handler only sets a flag and wakes the poller (self-pipe); the
     current batch finishes, DISCONNECT is sent, exit 0. An unexpected exception exits
     with EXIT_CRASH (1), which the supervisor restarts.

MXNet is only ever called from long-lived threads (short-lived ones leak): this process's
main thread, and the one per OpenMP width that runs forwards on cores the broker lends
(worker/lent_cores.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from mxserve.common.child_processes import die_with_parent
from mxserve.common.config import MIN_FRAME_BYTES
from mxserve.common.errors import (
    EXIT_CRASH,
    EXIT_MODEL_LOAD,
    EXIT_OK,
    MXServeError,
    ProtocolError,
    exception_text,
)
from mxserve.common.logs import setup_logging
from mxserve.common.protocol import (
    Disconnect,
    Kind,
    Message,
    Ready,
    Reply,
    Request,
    RequestItem,
    fields_of,
    from_frames,
    read_fields,
    to_frames,
)
from mxserve.common.settings import BY_NAME
from mxserve.worker.batch import (  # numpy only: safe before OMP_NUM_THREADS
    BatchTiming,
    ImageLimits,
    run_batch,
)
from mxserve.worker.handler_batch import run_handler_batch
from mxserve.worker.lent_cores import LentCores  # mxnet imported only when a batch runs wide

log = logging.getLogger("worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mxserve worker", description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True, help=".model zip or unpacked folder")
    parser.add_argument("--model-name", help="serve under this name instead of the manifest's")
    parser.add_argument("--served-as", default=None, help="the broker's key for this model "
                        "(name@version for a model's later versions; default: its name)")
    parser.add_argument("--broker", required=True, help="broker worker endpoint (ipc:// or tcp://)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU index; CPU when omitted")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads for this worker (default: inherited OMP_NUM_THREADS)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-memory-mb", type=float, default=0.0,
                        help="lower max-batch-size so that a batch's activations (estimated "
                        "from the symbol) fit in this many MiB; 0: no cap")
    parser.add_argument("--extract-dir", default=None, help="where zip archives are unpacked")
    parser.add_argument("--service-file", default=None,
                        help="custom service .py used instead of the archive's (MMS 0.4 --service)")
    parser.add_argument("--service-class", default=None,
                        help="which ModelService class of the service file to use")
    parser.add_argument("--worker-id", default=None, help="identity shown in the broker's logs")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--heartbeat-liveness", type=int, default=3,
                        help="missed heartbeats before the broker is presumed gone")
    parser.add_argument("--max-reply-bytes", type=int, default=BY_NAME["max_reply_bytes"].default,
                        help="largest JSON answer of one request; a larger one is that "
                        "request's error")
    parser.add_argument("--max-frame-bytes", type=int, default=MIN_FRAME_BYTES,
                        help="largest message frame accepted from the broker")
    parser.add_argument("--max-image-pixels", type=int,
                        default=BY_NAME["max_image_pixels"].default,
                        help="largest image (width x height) this worker decodes")
    parser.add_argument("--jpeg-draft", action=argparse.BooleanOptionalAction,
                        default=BY_NAME["jpeg_draft"].default,
                        help="decode JPEGs at a reduced size first (setting jpeg_draft)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, os.environ.get("MXSERVE_LOG_FILE", ""), "worker")
    if args.threads:
        # Must precede the mxnet import: its OpenMP pool is sized once, at load.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    lent = LentCores(own_share_of_cores(args.gpu))
    try:
        from mxserve.common.archive import load_archive
        from mxserve.worker.services.loader import load_service

        archive = load_archive(args.archive, args.extract_dir, name=args.model_name)
        args.max_batch_size = batch_size_within_memory(archive, args.max_batch_size,
                                                       args.batch_memory_mb)
        if archive.is_handler:
            from mxserve.worker.services.handler_service import HandlerService

            service: Any = HandlerService(archive, args.gpu, args.max_batch_size)
        else:
            service = load_service(archive, gpu=args.gpu, max_batch_size=args.max_batch_size,
                                   service_file=args.service_file,
                                   service_class=args.service_class, run_forward=lent.run)
    except MXServeError as exc:
        log.error("cannot load model from %s: %s", args.archive, exc.message)
        report_load_failure(args, exc.message)
        return EXIT_MODEL_LOAD
    except Exception as exc:
        log.exception("cannot load model from %s", args.archive)
        report_load_failure(args, exception_text(exc))
        return EXIT_MODEL_LOAD
    try:
        Worker(archive, service, args, lent).run()
    except Exception:
        log.exception("worker crashed")
        return EXIT_CRASH
    return EXIT_OK


def own_share_of_cores(gpu: int | None) -> int:
    """This worker's OpenMP threads, which the broker may widen when the other workers are
    idle (worker/lent_cores.py); 0 (lend it nothing) on a GPU, with the threaded engine
    and with MKLDNN subgraphs."""
    lendable = (gpu is None and os.environ.get("MXNET_ENGINE_TYPE") == "NaiveEngine"
                and os.environ.get("MXNET_SUBGRAPH_BACKEND") == "NONE")
    cores = os.cpu_count() or 1  # what the broker lends at most (worker/broker/state.py)
    return int(os.environ.get("OMP_NUM_THREADS") or cores) if lendable else 0


def batch_size_within_memory(archive: Any, requested: int, budget_mb: float) -> int:
    """The largest batch size up to `requested` whose activations fit in `budget_mb`: one
    default serves a do-nothing model (batches of 32) and resnet18 (8) alike. The worker
    reports the result in READY, and the broker never sends it more."""
    if budget_mb <= 0 or requested <= 1 or archive.signature is None:
        return requested  # an MMS 1.x handler's model is its own business
    from mxserve.worker.predictor import activation_bytes_per_sample

    shapes = {spec.name: (1, *[d or 1 for d in spec.shape[1:]])
              for spec in archive.signature.inputs}
    per_sample = activation_bytes_per_sample(archive.symbol_path, shapes)
    if not per_sample:
        return requested
    fits = max(1, int(budget_mb * 1024 * 1024 // per_sample))
    if fits < requested:
        log.info("max batch size %d -> %d: ~%.1f MiB of activations per sample, "
                 "batch_memory_mb %.0f", requested, fits, per_sample / 2**20, budget_mb)
    return min(requested, fits)


def report_load_failure(args: argparse.Namespace, reason: str) -> None:
    """Best effort: tell the broker why this model cannot load, so the catalog (and the
    operator) sees the reason, not just an exit code."""
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 1000)  # let it leave, but never hang the exit
    socket.connect(args.broker)
    socket.send_multipart(to_frames(Message(Kind.DISCONNECT, fields_of(Disconnect(
        model=args.served_as or args.model_name or "", load_error=reason)))), copy=False)
    socket.close()
    context.term()


class Worker:
    def __init__(self, archive: Any, service: Any, args: argparse.Namespace,
                 lent: LentCores) -> None:
        import zmq  # after any fork: nothing ZeroMQ exists before the process starts

        from mxserve.common import transport

        self.zmq, self.transport = zmq, transport
        self.archive = archive
        self.service = service
        self.args = args
        self.device = f"gpu:{args.gpu}" if args.gpu is not None else "cpu"
        self.served_as = args.served_as or archive.name  # what the broker knows it by
        self.identity = (args.worker_id or f"{self.served_as}-{os.getpid()}").encode()
        self.interval_s = args.heartbeat_interval
        self.stopping = False
        self.parent = os.getppid()
        self.context = zmq.Context()
        self.socket: Any = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.lent_cores = lent
        self.image_limits = ImageLimits(args.max_image_pixels, args.jpeg_draft)
        self.threads = lent.own_threads  # reported in READY: what the broker may widen
        if archive.signature is not None and archive.signature.is_image and args.gpu is None:
            from mxserve.common import images

            images.warm_up()  # CPU workers decode images (setting image_decode)
        predictor = getattr(service, "predictor", None)  # MXNet services' Predictor
        if predictor is not None and self.threads:
            self.lent_cores.warm_up(predictor.warm_up, os.cpu_count() or 1)

    def run(self) -> None:
        self._install_signals()
        self._connect()
        try:
            self._loop()
        finally:
            self._send(Message(Kind.DISCONNECT, fields_of(Disconnect(model=self.served_as))))
            self.socket.close(linger=500)  # let DISCONNECT leave, but never hang on exit
            self.context.term()

    def _install_signals(self) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            self.stopping = True  # no logging here: just queue the request

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.set_wakeup_fd(self.wake_w)

    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(self.zmq.DEALER)
        self.socket.setsockopt(self.zmq.IDENTITY, self.identity)
        self.socket.setsockopt(self.zmq.LINGER, 0)
        self.socket.setsockopt(self.zmq.MAXMSGSIZE, self.args.max_frame_bytes)
        self.socket.connect(self.args.broker)
        self.poller = self.zmq.Poller()
        self.poller.register(self.socket, self.zmq.POLLIN)
        self.poller.register(self.wake_r, self.zmq.POLLIN)
        self._send(Message(Kind.READY, fields_of(Ready(
            model=self.served_as, device=self.device, pid=os.getpid(),
            max_batch_size=self.args.max_batch_size, threads=self.threads))))
        self.last_heard = time.monotonic()
        self.next_heartbeat = self.last_heard + self.interval_s
        log.info("model %s on %s: READY to %s", self.served_as, self.device, self.args.broker)

    def _loop(self) -> None:
        liveness_s = self.interval_s * self.args.heartbeat_liveness
        while not self.stopping:
            timeout_ms = max(0.0, self.next_heartbeat - time.monotonic()) * 1000
            events = dict(self.poller.poll(timeout_ms))
            if self.wake_r in events:
                os.read(self.wake_r, 512)
            if self.socket in events:
                self._receive()
            now = time.monotonic()
            if now >= self.next_heartbeat:
                self._send(Message(Kind.HEARTBEAT))
                self.next_heartbeat = now + self.interval_s
                self._follow_parent()
            if now - self.last_heard > liveness_s and not self.stopping:
                log.warning("broker silent for %.1fs; reconnecting", now - self.last_heard)
                self._connect()

    def _follow_parent(self) -> None:
        """A forked worker's server died and the broker adopted it: die with the broker
        from now on. Adopted by no one (init), there is no broker left to serve."""
        parent = os.getppid()
        if parent == self.parent:
            return
        if parent == 1:
            log.warning("the broker is gone and nothing adopted this worker; exiting")
            self.stopping = True
            return
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:  # the new parent died before the signal was armed
            self.stopping = True
        self.parent = parent
        log.info("re-parented to pid %d (its fork server died); serving on", parent)

    def _receive(self) -> None:
        # Read everything queued: a broker restart can leave several messages waiting.
        while not self.stopping and self.transport.has_message(self.socket):
            try:
                frames = self.transport.recv_frames(self.socket, self.transport.NOBLOCK)
            except self.zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                message = from_frames(frames)
            except MXServeError as exc:
                log.warning("dropped a malformed message from the broker: %s", exc.message)
                continue
            try:
                if message.kind == Kind.REQUEST:
                    self._serve(message)
                elif message.kind == Kind.DISCONNECT:
                    reason = read_fields(Disconnect, message.fields).reason
                    if reason == "unknown":
                        log.info("the broker does not know this worker (it restarted?); "
                                 "re-registering")
                        self._connect()
                        return
                    log.info("broker asked this worker to stop (%s)", reason or "shutdown")
                    self.stopping = True
            except ProtocolError as exc:
                log.warning("dropped a malformed %s from the broker: %s", message.kind.name,
                            exc.message)

    def _serve(self, message: Message) -> None:
        request = read_fields(Request, message.fields)
        received = time.monotonic()
        deadlines = [received + read_fields(RequestItem, item.fields).budget_ms / 1000.0
                     for item in message.items]
        started = time.monotonic()
        timing = BatchTiming()
        recorded, dropped = None, 0
        with self.lent_cores.lending(request.threads):
            if self.archive.signature is None:
                outcomes = run_handler_batch(self.service, message.items, deadlines)
                recorded, dropped = self.service.take_metrics()
            else:
                outcomes = run_batch(self.service, self.archive.signature, message.items,
                                     deadlines, timing, self.image_limits)
        inference_ms = (time.monotonic() - started) * 1000.0 - timing.decode_ms
        self._send(Message(Kind.REPLY, fields_of(Reply(
            batch_size=len(message.items), decode_ms=round(timing.decode_ms, 3),
            inference_ms=round(inference_ms, 3), handler_metrics=recorded or None,
            handler_metrics_dropped=dropped)),
            [outcome.to_item(self.args.max_reply_bytes) for outcome in outcomes]))

    def _send(self, message: Message) -> None:
        try:
            self.transport.send_frames(self.socket, to_frames(message))
        except self.zmq.ZMQError as exc:
            log.warning("send to broker failed: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
