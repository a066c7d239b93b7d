"""What the ``hafen://`` transport puts on a TCP link: hellos, answers, records, messages.

Every link starts with the dialer's hello and the listener's answer::

    hello   magic "HFN1" | flags (1: fresh) | session id (16) | epoch (u32) | received (u64)
    answer  magic "HFN1" | status (0: accepted, else a Refusal) | received (u64)

then carries records, each a fixed header ``kind (u8) | seq (u64) | ack (u64) | size (u64)``:
``DATA`` (a numbered Dask message follows), ``ACK`` (an acknowledgement, also the heartbeat) and
``CLOSE`` (the session ends). Every record carries the sender's acknowledgement (``ack``).

A Dask message is framed as distributed's TCP comm frames it: the frames' prelude (their count
and sizes, ``distributed.protocol.utils.pack_frames_prelude``), then the frames. ``size`` is the
number of bytes the reader takes in one buffer (the prelude and the small frames before the first
large one); each large frame is read into a buffer of its own, so that the objects deserialized
from it can be released one by one, and large frames are sent from the sender's memory without a
copy. Small messages are joined into one buffer, as Dask's TCP comm does.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from distributed.protocol.utils import pack_frames_prelude
from distributed.utils import ensure_memoryview, nbytes

from hafen.cluster.comm._session import Hello, Refusal, SessionRefusedError

__all__ = [
    "ACK",
    "CLOSE",
    "DATA",
    "HELLO",
    "RECORD",
    "REPLY",
    "Encoded",
    "NotHafenError",
    "encode",
    "pack_hello",
    "pack_record",
    "pack_reply",
    "unpack_hello",
    "unpack_reply",
]

MAGIC = b"HFN1"
HELLO = struct.Struct("<4sB16sIQ")
REPLY = struct.Struct("<4sBQ")
RECORD = struct.Struct("<BQQQ")
ACCEPTED = 0
FRESH = 1

DATA = 1
ACK = 2
CLOSE = 3
KINDS = (DATA, ACK, CLOSE)

#: Largest piece handed to the socket at once (sockets take at most 2 GiB per call).
MAX_PIECE = 2**30
#: Messages smaller than this are sent as one buffer ...
JOIN_BELOW = 2**17
#: ... and so are messages below this whose frames are small on average.
JOIN_FRAGMENTED_BELOW = 2**25
JOIN_MEAN_FRAME_BELOW = 2**15


class NotHafenError(ConnectionError):
    """The other end does not speak the ``hafen://`` protocol (wrong magic)."""


def pack_hello(hello: Hello) -> bytes:
    return HELLO.pack(MAGIC, FRESH if hello.fresh else 0, hello.sid, hello.epoch, hello.received)


def unpack_hello(data: bytes) -> Hello:
    magic, flags, sid, epoch, received = HELLO.unpack(data)
    if magic != MAGIC:
        raise NotHafenError(f"not a hafen:// hello: {data[:4]!r}")
    return Hello(sid, epoch, received, fresh=bool(flags & FRESH))


def pack_reply(received: int, refusal: Refusal | None = None) -> bytes:
    return REPLY.pack(MAGIC, ACCEPTED if refusal is None else int(refusal), received)


def unpack_reply(data: bytes) -> int:
    """The listener's count of received messages; raises if it refused."""
    magic, status, received = REPLY.unpack(data)
    if magic != MAGIC:
        raise NotHafenError(f"not a hafen:// listener (answered {data[:4]!r})")
    if status != ACCEPTED:
        try:
            refusal = Refusal(status)
        except ValueError:
            refusal = Refusal.MALFORMED
        raise SessionRefusedError(refusal)
    return int(received)


def pack_record(kind: int, seq: int, ack: int, size: int = 0) -> bytes:
    return RECORD.pack(kind, seq, ack, size)


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """A Dask message ready for the link: ``pieces`` to write after the record header.

    ``nosplit`` is the record's ``size`` (bytes read into one buffer); ``nbytes`` the total.
    """

    pieces: tuple[Any, ...]
    nosplit: int
    nbytes: int


def encode(frames: list[Any]) -> Encoded:
    """Frame a Dask message (the frames of ``distributed.protocol.dumps``) for the link."""
    sizes = [nbytes(f) for f in frames]
    prelude = pack_frames_prelude(frames)
    total = len(prelude) + sum(sizes)
    # Which leading frames are read into the first buffer (as distributed's TCP comm decides):
    # small pickled or compressed bytes, and a first large buffer only while what precedes it
    # is negligible, so as not to tie the lifetime of much small data to that of a large array.
    nosplit = 0
    first_large: object = None
    for frame, size in zip(frames, sizes, strict=True):
        owner = frame.obj if isinstance(frame, memoryview) else frame
        if not isinstance(owner, bytes):
            if first_large is None:
                if nosplit > max(2048, size * 0.05):
                    break
                first_large = owner
            elif first_large is not owner:
                break
        nosplit += size
    nosplit += len(prelude)
    if total < JOIN_BELOW or (
        total < JOIN_FRAGMENTED_BELOW and total // (len(frames) + 1) < JOIN_MEAN_FRAME_BELOW
    ):
        return Encoded((b"".join([prelude, *frames]),), nosplit, total)
    pieces: list[Any] = [prelude]
    for frame, size in zip(frames, sizes, strict=True):
        if not size:
            continue
        view = ensure_memoryview(frame)
        if size <= MAX_PIECE:
            pieces.append(view)
        else:
            pieces.extend(view[i : i + MAX_PIECE] for i in range(0, size, MAX_PIECE))
    return Encoded(tuple(pieces), nosplit, total)
