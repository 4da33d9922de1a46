"""API keys: the keys file (GATEWAY_AUTH_KEYS_FILE, e.g. a mounted Kubernetes Secret) holds no key, only each key's
HMAC-SHA256 under the file's own random salt, and the tenant it belongs to.

    salt: 9c0f...                       # 32 hex digits or more; `gateway auth add-key` makes one
    keys:
      - {id: team-a-ci, tenant: team-a, hash: 5e88...}   # hex HMAC-SHA256(salt, key); id: for people only

A presented key is hashed the same way and looked up by its digest, then the digests are compared with
``hmac.compare_digest``: the comparison takes the same time whatever matched, and the lookup works on digests of
the caller's guess, which tell nothing about a stored key. Verified keys are remembered per process (the presented
bytes -> their entry; at most one entry per valid key, cleared whenever the file changes), so a known key costs a
dict lookup; an unknown one costs one HMAC every time and is never remembered.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.routes.schema import read_yaml

_HEX = re.compile(r"^[0-9a-f]+$")


def key_digest(salt: bytes, key: bytes) -> bytes:
    return hmac.digest(salt, key, "sha256")


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe, with a prefix that tells people (and secret scanners) what it is."""
    return "mgw_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: str
    tenant: str
    digest: bytes = field(repr=False)


class KeyRing:
    """One keys file, parsed: immutable but for its cache of verified keys."""

    def __init__(self, salt: bytes, entries: tuple[KeyEntry, ...], source: str = "<memory>") -> None:
        self.salt = salt
        self.source = source
        self.entries = entries
        self._by_digest = {e.digest: e for e in entries}
        self._verified: dict[bytes, KeyEntry] = {}

    def lookup(self, presented: bytes) -> KeyEntry | None:
        entry = self._verified.get(presented)
        if entry is not None:
            return entry
        digest = key_digest(self.salt, presented)
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        self._verified[presented] = entry  # bounded: one per valid key
        return entry


EMPTY = KeyRing(b"", ())


def parse_keys(raw: Any, source: str, tenants: Mapping[str, object]) -> KeyRing:
    """The keys file's content; every key must name a tenant of the policy (ConfigError with the field path)."""
    def fail(path: str, what: str) -> ConfigError:
        return ConfigError(f"{source}: {path}: {what}")

    if not isinstance(raw, dict):
        raise fail("<top level>", "must be a mapping with salt and keys")
    unknown = sorted(set(raw) - {"salt", "keys"})
    if unknown:
        raise fail(unknown[0], "unknown field (allowed: keys, salt)")
    salt = raw.get("salt")
    if not isinstance(salt, str) or len(salt) < 32 or len(salt) % 2 or not _HEX.match(salt):
        raise fail("salt", "must be at least 32 hex digits (`gateway auth add-key` writes one)")
    items = raw.get("keys")
    items = [] if items is None else items
    if not isinstance(items, list):
        raise fail("keys", "must be a list of {id, tenant, hash}")
    entries: list[KeyEntry] = []
    for i, item in enumerate(items):
        path = f"keys[{i}]"
        if not isinstance(item, dict) or set(item) - {"id", "tenant", "hash"} or not {"tenant", "hash"} <= set(item):
            raise fail(path, "must be {id, tenant, hash}")
        tenant, digest = str(item["tenant"]), item["hash"]
        if tenant not in tenants:
            raise fail(f"{path}.tenant", f"unknown tenant {tenant!r} (the policy defines: {', '.join(tenants)})")
        if not isinstance(digest, str) or len(digest) != 64 or not _HEX.match(digest):
            raise fail(f"{path}.hash", "must be 64 hex digits: HMAC-SHA256(salt, key)")
        entries.append(KeyEntry(id=str(item.get("id", f"key-{i}")), tenant=tenant, digest=bytes.fromhex(digest)))
    if len({e.digest for e in entries}) != len(entries):
        raise fail("keys", "the same key is listed twice")
    return KeyRing(bytes.fromhex(salt), tuple(entries), source)


def load_keys(path: Path, tenants: Mapping[str, object]) -> KeyRing:
    return parse_keys(read_yaml(path, "the API keys file"), str(path), tenants)


def add_key(path: Path, tenant: str, key_id: str | None = None) -> str:
    """Append a new key's hash for ``tenant`` to the keys file (made, with a fresh salt, when missing); the key."""
    raw: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} is not a keys file (a mapping with salt and keys)")
        raw = loaded
    salt = raw.setdefault("salt", secrets.token_hex(16))
    key = new_key()
    keys = raw.setdefault("keys", [])
    keys.append({"id": key_id or f"{tenant}-{len(keys) + 1}", "tenant": tenant,
                                       "hash": key_digest(bytes.fromhex(salt), key.encode()).hex()})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a new file readable by its owner only
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(raw, sort_keys=False))
    return key
