"""The signing keys of the systems that publish: one SQLite file, `<stack>/identity/keys.db`.

Each key belongs to a system and names the regions that system may publish for; its secret
is 32 random bytes (HMAC-SHA256, schemas/proof.py says why). A rotation adds a key and
leaves the old one active, so both verify until the old one is revoked; a revoked key stays
in the keyring so that its records are refused as REVOKED_KEY rather than UNKNOWN_KEY.

Every change is kept in the `changes` table with the OS account that made it (never a
secret), so the audit log can be told (`pending_changes`, `mark_sent`) even when ClickHouse
was down at the time, as identity/store.py does for principals. The directory is 0700 and
the file 0600: the bus holds every system's secret, so only the operators' account and the
stream jobs read it.
"""
from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from identity.changes import ChangeLog
from schemas.proof import ACTIVE, ANY_REGION, REVOKED, Keyring, SigningKey, key_file_document

__all__ = ["KeyStore", "KeyInfo", "KeyStoreError", "keys_path", "default_key_file", "export_key_file", "ensure_local_key",
           "LOCAL_SYSTEM", "SECRET_BYTES"]

SECRET_BYTES = 32
LOCAL_SYSTEM = "local"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signing_keys (
    key_id      TEXT PRIMARY KEY,
    system      TEXT NOT NULL,
    regions     TEXT NOT NULL,
    secret_hex  TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'active',
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
CREATE INDEX IF NOT EXISTS signing_keys_system ON signing_keys (system);
CREATE TABLE IF NOT EXISTS changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    sent       INTEGER NOT NULL DEFAULT 0
);
"""

_SYSTEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class KeyStoreError(ValueError):
    """A key operation that cannot be done; str() says why in one line."""


@dataclass(frozen=True)
class KeyInfo:
    """What `list` shows of a key: everything but the secret."""

    key_id: str
    system: str
    regions: frozenset[str]
    state: str
    created_ms: int
    revoked_ms: int | None = None


def keys_path(settings) -> Path:
    return settings.stack_path / "identity" / "keys.db"


def default_key_file(settings) -> Path:
    """Where the local stack's own key file goes (the default of INTELBUS_SIGNING_KEY_FILE)."""
    return settings.stack_path / "identity" / "keys" / "local.json"


def _check_system(system: str) -> str:
    if not _SYSTEM_NAME.fullmatch(system or ""):
        raise KeyStoreError(f"system {system!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
    return system


def _check_regions(regions) -> list[str]:
    from schemas.regions import validate_region_code

    regions = list(regions)
    if not regions:
        raise KeyStoreError("a key needs at least one region it may publish for (--region)")
    if ANY_REGION in regions:
        return [ANY_REGION]
    try:
        return sorted({validate_region_code(r) for r in regions})
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from None


class KeyStore(ChangeLog):
    """Create, rotate, revoke and list signing keys; the verifier's keyring.

    `read_only=True` (verifying, reading) opens an existing file with SQLite's `mode=ro` and touches
    neither the file nor its directory, so a read-only mount or a file the process may only read
    serves; a change through such a store is refused (KeyStoreError).
    """

    SUBJECT = "key_id"

    def __init__(self, path: Path | str, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise KeyStoreError(f"no key store at {self.path} (`intelbus keys create` makes it)")
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10,
                                      check_same_thread=False)
            if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'signing_keys'").fetchone():
                # a file `intelbus keys` has just made and not yet given its tables: no keys yet
                self.db.close()
                self.db = sqlite3.connect(":memory:", check_same_thread=False)
                self.db.executescript(_SCHEMA)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        new = not self.path.exists()
        if new:  # created 0600 before SQLite writes a byte into it
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        os.chmod(self.path, 0o600)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def list(self, system: str | None = None) -> list[KeyInfo]:
        sql = "SELECT key_id, system, regions, state, created_ms, revoked_ms FROM signing_keys"
        rows = self.db.execute(sql + (" WHERE system = ?" if system else "") + " ORDER BY system, created_ms, key_id",
                               (system,) if system else ()).fetchall()
        return [KeyInfo(k, s, frozenset(json.loads(r)), st, c, rv) for k, s, r, st, c, rv in rows]

    def get(self, key_id: str) -> SigningKey:
        row = self.db.execute("SELECT key_id, system, secret_hex, regions, state FROM signing_keys WHERE key_id = ?",
                              (key_id,)).fetchone()
        if row is None:
            raise KeyStoreError(f"no key {key_id!r} (`intelbus keys list` shows them)")
        return _key(row)

    def active(self, system: str) -> list[SigningKey]:
        """The system's active keys, newest first."""
        rows = self.db.execute("SELECT key_id, system, secret_hex, regions, state FROM signing_keys WHERE system = ? "
                               "AND state = 'active' ORDER BY created_ms DESC, key_id DESC", (system,)).fetchall()
        return [_key(r) for r in rows]

    def keyring(self) -> Keyring:
        """Every key, revoked ones included (so that their records are refused as REVOKED_KEY, not UNKNOWN_KEY)."""
        rows = self.db.execute("SELECT key_id, system, secret_hex, regions, state FROM signing_keys").fetchall()
        return Keyring(_key(r) for r in rows)

    # --- changing (each change recorded) --------------------------------------------

    def create(self, system: str, regions, *, actor: str | None = None) -> SigningKey:
        """The first key of a system, allowed to publish for `regions` ('*': every region)."""
        self._writable("create")
        _check_system(system)
        regions = _check_regions(regions)
        if self.active(system):
            raise KeyStoreError(f"system {system} has an active key already: `intelbus keys rotate {system}` makes a new one")
        return self._insert(system, regions, actor=actor, action="create")

    def rotate(self, system: str, *, actor: str | None = None) -> SigningKey:
        """A new key for the system with its newest key's regions; the old keys stay active (revoke them later)."""
        self._writable("rotate")
        row = self.db.execute("SELECT regions FROM signing_keys WHERE system = ? ORDER BY created_ms DESC, key_id DESC "
                              "LIMIT 1", (system,)).fetchone()
        if row is None:
            raise KeyStoreError(f"system {system} has no key yet: `intelbus keys create {system} --region CODE` first")
        return self._insert(system, json.loads(row[0]), actor=actor, action="rotate")

    def revoke(self, key_id: str, *, actor: str | None = None) -> SigningKey:
        self._writable("revoke")
        key = self.get(key_id)
        if key.state == REVOKED:
            raise KeyStoreError(f"key {key_id} is revoked already")
        now = _now_ms()
        self.db.execute("UPDATE signing_keys SET state = ?, revoked_ms = ? WHERE key_id = ?", (REVOKED, now, key_id))
        self._record(actor, "revoke", key_id, {"system": key.system, "still_active": [k.key_id for k in self.active(key.system)
                                                                                    if k.key_id != key_id]})
        return self.get(key_id)

    def mark_sent(self, seqs) -> None:
        self._writable("mark changes sent")
        super().mark_sent(seqs)

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise KeyStoreError(f"cannot {action}: the key store {self.path} is open read-only (for verifying); "
                                "`intelbus keys` changes it where it is writable")

    def _insert(self, system: str, regions: list[str], *, actor: str | None, action: str) -> SigningKey:
        n = 1 + max((_serial(k, system) for (k,) in
                     self.db.execute("SELECT key_id FROM signing_keys WHERE system = ?", (system,))), default=0)
        key_id = f"{system}-{n}"
        secret = secrets.token_bytes(SECRET_BYTES)
        self.db.execute("INSERT INTO signing_keys (key_id, system, regions, secret_hex, state, created_ms) "
                        "VALUES (?,?,?,?,?,?)", (key_id, system, json.dumps(regions), secret.hex(), ACTIVE, _now_ms()))
        self._record(actor, action, key_id, {"system": system, "regions": regions})
        return self.get(key_id)

    def _record(self, actor: str | None, action: str, key_id: str, detail: dict) -> None:
        self.db.execute("INSERT INTO changes (at_ms, actor, action, key_id, detail) VALUES (?,?,?,?,?)",
                        (_now_ms(), actor or getpass.getuser(), f"keys.{action}", key_id,
                         json.dumps(detail, ensure_ascii=False)))
        self.db.commit()



def export_key_file(key: SigningKey, path: Path | str) -> Path:
    """Write the key file a system is handed, mode 0600 (written whole, then renamed into place).

    Format (docs/integrators.md, "The key file"), UTF-8 JSON:
        {"key_id": "xl-ztry-2", "system": "xl-ztry", "secret_hex": "<64 hex digits>", "regions": ["130822"]}
    secret_hex is the HMAC key: the 32 bytes it encodes, not the hex text, key the HMAC.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(key_file_document(key), f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def ensure_local_key(settings, *, actor: str | None = None) -> Path:
    """The local stack's own key (system 'local', every region '*'), exported to the default key file.

    Idempotent: an active key of system 'local' is reused (and re-exported if its file is
    missing or holds another key). For the local stack only, called from `intelbus up`: it lets
    `publish`, `simulate` and RegionalProducer sign with no set-up. A production bus never
    has a '*' key: there each system gets a key for its own regions (`intelbus keys create`).
    """
    from schemas.proof import KeyFileError, load_key_file

    target = default_key_file(settings)  # never INTELBUS_SIGNING_KEY_FILE: that may name a real system's key
    with KeyStore(keys_path(settings)) as store:
        active = store.active(LOCAL_SYSTEM)
        key = active[0] if active else (store.rotate(LOCAL_SYSTEM, actor=actor) if store.list(LOCAL_SYSTEM)
                                        else store.create(LOCAL_SYSTEM, [ANY_REGION], actor=actor))
    try:
        current = load_key_file(target)
        if current.key_id == key.key_id and current.secret == key.secret:
            return target
    except KeyFileError:
        pass
    return export_key_file(key, target)


def _serial(key_id: str, system: str) -> int:
    tail = key_id[len(system) + 1:]
    return int(tail) if tail.isdigit() else 0


def _key(row) -> SigningKey:
    key_id, system, secret_hex, regions, state = row
    return SigningKey(key_id=key_id, system=system, secret=bytes.fromhex(secret_hex), regions=frozenset(json.loads(regions)),
                      state=state)


def _now_ms() -> int:
    return int(time.time() * 1000)
