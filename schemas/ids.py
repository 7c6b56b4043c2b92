"""Record keys, event ids and hit ids: deterministic, so a resend or replay gets the same id."""
from __future__ import annotations

import hashlib
import uuid

# Fixed forever: changing it changes every derived id.
NAMESPACE = uuid.UUID("6f1c3e0a-8a4b-5d2e-9c71-1b2a3c4d5e6f")
_NAMESPACE_BYTES = NAMESPACE.bytes


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant bits 10xx
_sha1 = hashlib.sha1


def _uuid5(name: str) -> str:
    """str(uuid.uuid5(NAMESPACE, name)), without building UUID objects (the producer's hot path):
    the first 16 bytes of the SHA-1, version nibble 5, variant bits 10."""
    x = _sha1(_NAMESPACE_BYTES + name.encode()).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def record_key(source_region: str, source_system: str, source_ref: str) -> str:
    """'REGION/SYSTEM/REF': all revisions of one record share it (Kafka key, dedupe, state)."""
    return f"{source_region}/{source_system}/{source_ref}"


def derive_event_id(source_region: str, source_system: str, source_ref: str, revision: int) -> str:
    """UUIDv5 of the record key and revision (DOMAIN.md: a resend gets the same id)."""
    return _uuid5(f"{source_region}/{source_system}/{source_ref}#{revision}")


def hit_id(record_key_: str, trigger_event_id: str, hit_type: str) -> str:
    """UUIDv5 of the matched record, the triggering event and the hit type."""
    return _uuid5(f"hit|{record_key_}|{trigger_event_id}|{hit_type}")
