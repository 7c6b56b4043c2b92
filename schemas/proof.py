"""Proof of publisher on the wire: HMAC-SHA256 over the exact Kafka message value, in headers.

The contract (docs/integrators.md tells it to other languages):

    intelbus-key-id         the key's id, ASCII, e.g. b"xl-ztry-2"
    intelbus-signature      lowercase hex of HMAC-SHA256(secret, value), 64 characters
    intelbus-signature-alg  b"HMAC-SHA256"

The signed bytes are EXACTLY the Kafka message value: the Confluent wire format (magic
byte 0, 4-byte big-endian schema id, Avro body), nothing before or after it, no key, no
topic, no timestamp. A verifier therefore checks the bytes it received before decoding
anything, and a record re-encoded by anyone (even to the same field values) needs a new MAC.

Keys belong to systems (a regional system's publisher, e.g. "xl-ztry"), one secret of 32
random bytes per key, and name the regions that system may publish for ('*': every region,
only the local stack's own key). During a rotation two keys of one system are active at
once; a revoked key stays in the keyring so that its records are refused as REVOKED_KEY,
not UNKNOWN_KEY. `verify` returns the key id or a `Refusal` with a stable `code`.

Why HMAC-SHA256 and not Ed25519 (measured on this machine, 2 cores, CPython 3.11, with
`python -m timeit`, best of 5, one random 185-byte value, the size of a typical incident):

    HMAC-SHA256 of the value, hmac.new(k, v, hashlib.sha256).hexdigest()   1.9 µs
    `verify` below, valid record, key for the record's own region         3.1 µs
    `verify`, a region inside the key's region, another header present    4.0 µs
    `sign_headers`                                                        2.3 µs
    Ed25519 verify (cryptography 50.0.2, pk.verify(sig, v))         108-113 µs
    Ed25519 sign                                                           35 µs

One stream-job worker handles about 5,000 events/s, 200 µs an event; the budget for proof
is 10 % of that, 20 µs. An Ed25519 verification (108-113 µs here; 60-160 µs on the
machines the issue names) would take 30-80 % of a worker, more than half as many workers
again for the same traffic; HMAC verification takes 2 % and fits the budget five times
over. What it costs: the bus holds each system's secret (the key store, identity/keys.py,
0600 under the stack directory), so a MAC proves "a holder of this key", i.e. the system or
the bus's operators, not the system alone: no non-repudiation against the operators. That
is the trust the broker's SASL credentials already imply. Signatures (Ed25519) stay
possible later as another value of intelbus-signature-alg, with the same header names.

This module is pure: the standard library and nothing of ours outside `schemas`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Iterator

__all__ = [
    "HEADER_KEY_ID", "HEADER_SIGNATURE", "HEADER_ALG", "ALGORITHM", "STAGE",
    "UNSIGNED", "BAD_SIGNATURE", "UNKNOWN_KEY", "REVOKED_KEY", "REGION_NOT_ALLOWED", "BAD_HEADER", "CODES",
    "ACTIVE", "REVOKED", "ANY_REGION",
    "SigningKey", "Keyring", "Refusal", "KeyId", "KeyFileError",
    "mac_hex", "sign_headers", "verify", "load_key_file", "key_file_document",
]

HEADER_KEY_ID = "intelbus-key-id"
HEADER_SIGNATURE = "intelbus-signature"
HEADER_ALG = "intelbus-signature-alg"
ALGORITHM = "HMAC-SHA256"
_ALG_BYTES = ALGORITHM.encode()
STAGE = "VERIFY"  # the dead letter's stage for a refused proof

# Refusal codes (stable: dashboards, tests and integrators' runbooks use them)
UNSIGNED = "UNSIGNED"                      # no proof headers at all
BAD_HEADER = "BAD_HEADER"                  # proof headers present but malformed (missing one, non-hex, repeated, other alg)
UNKNOWN_KEY = "UNKNOWN_KEY"                # the key id is not in the keyring
BAD_SIGNATURE = "BAD_SIGNATURE"            # the MAC does not match the value bytes
REVOKED_KEY = "REVOKED_KEY"                # a correct MAC, by a key that was revoked
REGION_NOT_ALLOWED = "REGION_NOT_ALLOWED"  # a correct MAC, for a source_region its system may not publish for
CODES = (UNSIGNED, BAD_HEADER, UNKNOWN_KEY, BAD_SIGNATURE, REVOKED_KEY, REGION_NOT_ALLOWED)

ACTIVE, REVOKED = "active", "revoked"
ANY_REGION = "*"

KeyId = str
_PROOF_HEADERS = frozenset((HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_ALG))
_sha256 = hashlib.sha256
_hmac_digest = hmac.digest
_compare = hmac.compare_digest
_BLOCK = 64  # SHA-256's block size, bytes (RFC 2104: keys are padded or hashed to it)
_IPAD, _OPAD = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))


def hmac_pads(secret: bytes) -> tuple:
    """The hash states of RFC 2104's inner and outer pads of `secret` (SHA-256), to copy per message."""
    key = _sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    return _sha256(key.translate(_IPAD)), _sha256(key.translate(_OPAD))


@dataclass(frozen=True)
class SigningKey:
    """One key of one system. `secret` never appears in repr()."""

    key_id: str
    system: str
    secret: bytes = field(repr=False)
    regions: frozenset[str] = frozenset()
    state: str = ACTIVE
    # HMAC-SHA256's inner and outer hash states after the key's pads, made once: hmac.digest
    # sets them up again for every record (4.1 us a 200-byte record here, 1.1 us from the pads)
    _pads: tuple = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self):
        if not self.key_id or not self.key_id.isascii() or not self.key_id.isprintable():
            raise ValueError(f"key id {self.key_id!r}: printable ASCII required")
        if len(self.secret) < 16:
            raise ValueError(f"key {self.key_id}: secret of {len(self.secret)} bytes, at least 16 required")
        if self.state not in (ACTIVE, REVOKED):
            raise ValueError(f"key {self.key_id}: state {self.state!r}, expected {ACTIVE} or {REVOKED}")
        object.__setattr__(self, "regions", frozenset(self.regions))
        object.__setattr__(self, "_pads", hmac_pads(self.secret))

    def mac(self, value: bytes) -> bytes:
        """HMAC-SHA256(secret, value): the same 32 bytes as hmac.digest, from the pads made once."""
        inner, outer = self._pads
        inner = inner.copy()
        inner.update(value)
        outer = outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    @property
    def every_region(self) -> bool:
        return ANY_REGION in self.regions

    def may_publish_for(self, region: str, is_within: Callable[[str, str], bool]) -> bool:
        """region is one of the key's regions or inside one (is_within(code, other): code inside other)."""
        regions = self.regions
        if region in regions or ANY_REGION in regions:
            return True
        return any(is_within(region, r) for r in regions)

    def regions_text(self) -> str:
        return "every region" if self.every_region else ", ".join(sorted(self.regions)) or "no region"


class Keyring(Mapping):
    """An immutable mapping key id -> SigningKey: every key the verifier knows, revoked ones included."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[SigningKey] = ()):
        by_id: dict[str, SigningKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise ValueError(f"key id {key.key_id} twice in one keyring")
            by_id[key.key_id] = key
        self._keys = MappingProxyType(by_id)

    def __getitem__(self, key_id: str) -> SigningKey:
        return self._keys[key_id]

    def get(self, key_id, default=None):
        return self._keys.get(key_id, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring({', '.join(f'{k.key_id}:{k.state}' for k in self._keys.values())})"

    def active(self, system: str) -> list[SigningKey]:
        return [k for k in self._keys.values() if k.system == system and k.state == ACTIVE]


@dataclass(frozen=True)
class Refusal:
    """Why a record's proof was refused: `code` (one of CODES) and a reason a person can act on."""

    code: str
    reason: str
    key_id: str | None = None
    system: str | None = None

    stage = STAGE

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


def mac_hex(secret: bytes, value: bytes) -> str:
    """Lowercase hex of HMAC-SHA256(secret, value)."""
    return _hmac_digest(secret, value, "sha256").hex()


def sign_headers(value: bytes, key: SigningKey) -> list[tuple[str, bytes]]:
    """The three Kafka headers proving that `key` published exactly these value bytes."""
    return [(HEADER_KEY_ID, key.key_id.encode()),
            (HEADER_SIGNATURE, key.mac(value).hex().encode()),
            (HEADER_ALG, _ALG_BYTES)]


def verify(value: bytes, headers, keyring: Keyring, source_region: str,
           is_within: Callable[[str, str], bool]) -> Refusal | KeyId:
    """The key id that proves `value`, or the Refusal.

    headers: what confluent_kafka's Message.headers() returns (a list of (str, bytes|None),
    or None), or a dict. source_region: the record's, from the caller's decode of the
    envelope (only a valid proof is checked against it). is_within(code, other): code is
    other or inside it (schemas.regions.RegionTable.is_within). Checks, in order: headers
    well formed, key known, MAC over the exact value bytes, key not revoked, region allowed.
    """
    key_id = sig = alg = None
    if headers:
        items = headers.items() if isinstance(headers, dict) else headers
        for name, raw in items:
            if name not in _PROOF_HEADERS:
                continue
            if name == HEADER_SIGNATURE:
                if sig is not None:
                    return Refusal(BAD_HEADER, f"header {HEADER_SIGNATURE} appears twice; send it once")
                sig = raw if raw is not None else b""
            elif name == HEADER_KEY_ID:
                if key_id is not None:
                    return Refusal(BAD_HEADER, f"header {HEADER_KEY_ID} appears twice; send it once")
                key_id = raw if raw is not None else b""
            else:
                if alg is not None:
                    return Refusal(BAD_HEADER, f"header {HEADER_ALG} appears twice; send it once")
                alg = raw if raw is not None else b""
    if key_id is None and sig is None:
        return Refusal(UNSIGNED, f"no proof of publisher: headers {HEADER_KEY_ID} and {HEADER_SIGNATURE} are "
                                 f"missing; sign every record with the key `intelbus keys` handed to your system "
                                 f"(docs/integrators.md)")
    if key_id is None or sig is None:
        missing = HEADER_KEY_ID if key_id is None else HEADER_SIGNATURE
        return Refusal(BAD_HEADER, f"header {missing} is missing; a signed record carries {HEADER_KEY_ID}, "
                                   f"{HEADER_SIGNATURE} and {HEADER_ALG}")
    if alg != _ALG_BYTES:
        shown = "missing" if alg is None else repr(bytes(alg)[:40].decode("ascii", "replace"))
        return Refusal(BAD_HEADER, f"header {HEADER_ALG} is {shown}; only {ALGORITHM} is accepted")
    try:
        kid = key_id.decode("ascii") if isinstance(key_id, bytes) else str(key_id)
    except UnicodeDecodeError:
        return Refusal(BAD_HEADER, f"header {HEADER_KEY_ID} is not ASCII: {bytes(key_id)[:40]!r}")
    key = keyring.get(kid)
    if key is None:
        return Refusal(UNKNOWN_KEY, f"key {kid!r} is not known to this bus (never created here, or the verifier's "
                                    f"keyring is older than the key); ask the operators for `intelbus keys list`",
                       key_id=kid)
    try:
        given = bytes.fromhex(sig.decode("ascii") if isinstance(sig, bytes) else sig)
    except (ValueError, UnicodeDecodeError):
        return Refusal(BAD_HEADER, f"header {HEADER_SIGNATURE} is not hex: {bytes(sig)[:24]!r}; send the 64 lowercase "
                                   f"hex digits of the HMAC-SHA256", key_id=kid, system=key.system)
    if len(given) != 32:
        return Refusal(BAD_HEADER, f"header {HEADER_SIGNATURE} holds {len(given)} bytes, an HMAC-SHA256 is 32 "
                                   f"(64 hex digits)", key_id=kid, system=key.system)
    if not _compare(key.mac(value), given):
        revoked = " (the key is also revoked)" if key.state != ACTIVE else ""
        return Refusal(BAD_SIGNATURE, f"the MAC does not match the value bytes for key {kid} of system "
                                      f"{key.system}{revoked}: the value was changed after signing, or signed with "
                                      f"another secret, or something other than the exact message value was signed",
                       key_id=kid, system=key.system)
    if key.state != ACTIVE:
        return Refusal(REVOKED_KEY, f"signed with key {kid} of system {key.system}, which was revoked; publish with "
                                    f"the system's current key (`intelbus keys list`)", key_id=kid, system=key.system)
    if not key.may_publish_for(source_region, is_within):
        return Refusal(REGION_NOT_ALLOWED, f"signed with key {kid} of system {key.system}, which may publish for "
                                           f"{key.regions_text()}, not for {source_region}",
                       key_id=kid, system=key.system)
    return kid


# --- the key file a regional system is handed -----------------------------------------------

class KeyFileError(ValueError):
    """A key file that cannot be used; str() names the file and what is wrong."""


def key_file_document(key: SigningKey) -> dict:
    """The JSON a key file holds: {"key_id", "system", "secret_hex", "regions"}."""
    return {"key_id": key.key_id, "system": key.system, "secret_hex": key.secret.hex(),
            "regions": sorted(key.regions)}


def load_key_file(path: str | Path) -> SigningKey:
    """The SigningKey in a key file (docs/integrators.md, "The key file")."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyFileError(f"key file {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"key file {path}: expected a JSON object")
    missing = [k for k in ("key_id", "system", "secret_hex", "regions") if k not in doc]
    if missing:
        raise KeyFileError(f"key file {path}: missing {', '.join(missing)}")
    try:
        secret = bytes.fromhex(doc["secret_hex"])
        return SigningKey(key_id=str(doc["key_id"]), system=str(doc["system"]), secret=secret,
                          regions=frozenset(str(r) for r in doc["regions"]))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None
