"""Sending and receiving one multipart message on a ZeroMQ socket, for the per-request path.

pyzmq's send_multipart/recv_multipart combine `zmq.Flag` enum members for every frame
(`SNDMORE | flags`, `getsockopt(RCVMORE)`), and enum arithmetic is slow Python; these use
plain ints (docs/benchmarks.md has the figures). Frames below pyzmq's copy threshold are
copied on send either way; larger ones (image tensors) go zero-copy.
"""
from __future__ import annotations

from typing import Any, Sequence

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def has_message(socket: zmq.Socket) -> bool:
    """Whether a message can be received now. Receiving loops ask this instead of ending on
    a NOBLOCK receive's zmq.Again, which costs more to raise and catch."""
    events = socket.getsockopt(_EVENTS)
    return isinstance(events, int) and bool(events & _POLLIN)


def send_frames(socket: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """Send `frames` as one message (raises zmq.ZMQError like Socket.send)."""
    more = _SNDMORE | flags
    for frame in frames[:-1]:
        socket.send(frame, more, copy=False)
    socket.send(frames[-1], flags, copy=False)


def recv_frames(socket: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """Every frame of the next message (raises zmq.Again with NOBLOCK and none waiting)."""
    frame = socket.recv(flags, copy=False)
    frames = [frame]
    while frame.more:  # the rest of a message arrives with its first frame
        frame = socket.recv(0, copy=False)
        frames.append(frame)
    return frames
