"""Job and launcher ids: coordination-free, time-sortable, safe as file names.

A generated id is 26 lowercase Crockford-base32 characters: 10 for the creation time in
milliseconds, 16 for 80 random bits (the ULID layout).  Ids from any host sort by creation
time to the millisecond and collide with probability ~2**-80 within a millisecond.  Users
may also choose their own ids (``j1``, ``sim-042``) in dropped files; any id matching
``ID_RE`` is accepted and must be unique in the site.  Ids are opaque except for order.

The shard of an id (two hex digits from crc32) picks its bucket in the big state
directories, so every state uses the same bucket for a job and no directory holds more
than ~1/256 of the jobs.
"""
from __future__ import annotations

import base64
import os
import re
import time
import zlib

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
SHARDS = 256


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_B32[value & 31])
        value >>= 5
    return "".join(reversed(out))


_RFC_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _B32.encode())


def new_id(now_ms: int | None = None, seed: bytes | None = None) -> str:
    """A fresh id; with ``seed`` the 80 low bits come from it, so the same (time, seed) always
    gives the same id (the site names a dropped file that has no usable id this way, so a
    re-intake after a crash finds the job it already published)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = (seed or os.urandom(10))[:10].ljust(10, b"\0")
    # The 130 bits (50 of time, 80 random) as 26 base32 digits, most significant first:
    # RFC 4648 base32 of the value in 20 bytes (160 bits: 6 leading zero digits), with the
    # alphabet translated (the same digits as _b32(ms, 10) + _b32(rand, 16)).
    raw = (ms & ((1 << 50) - 1)).to_bytes(10, "big") + rand
    return base64.b32encode(raw).translate(_RFC_TO_CROCKFORD)[6:].decode()


def valid_id(job_id: object) -> bool:
    return isinstance(job_id, str) and bool(ID_RE.match(job_id)) and not job_id.endswith(".json")


def shard(job_id: str) -> str:
    return "%02x" % (zlib.crc32(job_id.encode()) % SHARDS)
