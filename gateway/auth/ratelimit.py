"""Rate limits: token buckets (``rps`` tokens a second, at most ``burst``), one per tenant, per tenant and model, and
per model, shared by every worker of the gateway process and divided among the replicas.

Workers: the buckets live in one table of fixed slots. With one worker it is a bytearray; with several
(``gateway serve`` creates the file before forking and names it in GATEWAY_RATELIMIT_FILE) it is that file, mmap'd
by every worker, and each request's read-modify-write of its buckets runs under one ``fcntl`` lock on the file
(two system calls, held for microseconds; the kernel drops it if its holder dies). The clock is CLOCK_MONOTONIC,
which every process on the host shares. A slot is (fingerprint of the bucket's key, tokens, last refill); a key
takes the first free slot from its hash on (linear probing) and keeps it. So the workers of one host share one
bucket exactly.

Replicas (the etcd store): no shared state between hosts. Each replica takes ``rate / replicas`` and
``burst / replicas`` (at least 1), ``replicas`` being the live hosts the store's presence keys name, re-read every
few seconds. That is exact when the load balancer spreads each tenant's requests evenly over the replicas (the
usual round robin) and errs on the strict side otherwise: a tenant whose traffic all lands on one replica gets
1/replicas of its rate. A replica that joins or leaves changes every share within the refresh and the lease TTL.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth.tenants import Rate

log = logging.getLogger("gateway.auth")

SLOTS = 16_384  # 512 KiB; a policy's buckets are a few hundred at most
_SLOT = struct.Struct("<Qdd")  # fingerprint (0: free), tokens, last refill (monotonic seconds)


def live_hosts(replicas: Sequence[Mapping[str, Any]]) -> int:
    """How many replicas share the rates: the distinct hosts among the live processes' presence records (the
    workers of one host share one bucket table, so they count once)."""
    return max(1, len({str(r.get("host") or r.get("id")) for r in replicas}))


@dataclass(frozen=True, slots=True)
class Refusal:
    """The bucket that refused: which one (its index in the request's list), its limit, and when to come back."""

    index: int
    retry_after_s: float  # until one token is there again
    limit: int  # the bucket's size (RateLimit-Limit)
    reset_s: float  # until the bucket is full again (RateLimit-Reset)


def create_table(path: Path) -> None:
    """An empty table for the workers of one gateway process (made before they start)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, SLOTS * _SLOT.size)
    finally:
        os.close(fd)


class Buckets:
    """The bucket table: process-local (``path`` None) or shared through a file."""

    def __init__(self, path: Path | None = None) -> None:
        self._fd: int | None = None
        self._table: bytearray | mmap.mmap
        if path is None:
            self._table = bytearray(SLOTS * _SLOT.size)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            self._table = mmap.mmap(self._fd, SLOTS * _SLOT.size)
        self._slots: dict[str, tuple[int, int]] = {}  # key -> (fingerprint, slot): slots are never given back
        self.share = 1.0  # this replica's part of every rate (1 / live replicas)
        self._full_logged = False

    def close(self) -> None:
        if isinstance(self._table, mmap.mmap):
            self._table.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def set_replicas(self, replicas: int) -> None:
        share = 1.0 / max(1, replicas)
        if share != self.share:
            log.info("rate limits: %d live replica(s), this one takes %.3g of every rate", max(1, replicas), share)
        self.share = share

    def take(self, wanted: Sequence[tuple[str, Rate]]) -> Refusal | None:
        """One token from every bucket named, or from none (the first that has none refuses)."""
        share = self.share
        limits = [(key, rate.rps * share, max(1.0, rate.burst * share)) for key, rate in wanted]
        fd = self._fd
        if fd is not None:  # one lock around the whole read-modify-write of this request's buckets
            fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic()
            table = self._table
            slots: list[tuple[int, int, float]] = []
            for i, (key, rps, burst) in enumerate(limits):
                found = self._slot(key)
                if found is None:
                    continue  # the table is full: this bucket is not enforced (logged once)
                fingerprint, slot = found
                _, tokens, last = _SLOT.unpack_from(table, slot)
                tokens = min(burst, tokens + max(0.0, now - last) * rps)
                if tokens < 1.0:
                    _SLOT.pack_into(table, slot, fingerprint, tokens, now)
                    return Refusal(index=i, retry_after_s=(1.0 - tokens) / rps, limit=math.floor(burst),
                                   reset_s=(burst - tokens) / rps)
                slots.append((fingerprint, slot, tokens))
            for fingerprint, slot, tokens in slots:
                _SLOT.pack_into(table, slot, fingerprint, tokens - 1.0, now)
        finally:
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        return None

    def _slot(self, key: str) -> tuple[int, int] | None:
        """(fingerprint, byte offset) of the key's slot; claimed on first use (under the lock)."""
        known = self._slots.get(key)
        if known is not None:
            return known
        fingerprint = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1
        table = self._table
        start = fingerprint % SLOTS
        for probe in range(SLOTS):
            slot = ((start + probe) % SLOTS) * _SLOT.size
            seen = _SLOT.unpack_from(table, slot)[0]
            if seen == 0:
                _SLOT.pack_into(table, slot, fingerprint, 0.0, -math.inf)  # claimed: full at its first refill
                seen = fingerprint
            if seen == fingerprint:
                self._slots[key] = (fingerprint, slot)
                return fingerprint, slot
        if not self._full_logged:
            self._full_logged = True
            log.error("rate limits: the bucket table is full (%d slots); new buckets are not enforced", SLOTS)
        return None
