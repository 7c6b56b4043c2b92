"""The principals intelbus manages itself: persons and systems, in one SQLite file.

Passwords are stored as argon2id hashes (argon2-cffi's defaults: RFC 9106 low-memory
profile). Every change is kept in the `changes` table with who made it, so the audit log
can be told (`pending_changes`, `mark_sent`) even when ClickHouse was down at the time.
The file lives under the stack directory, mode 0600: only the operator's account and the
gateway read it; people reach it only through the gateway's login.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from identity.changes import ChangeLog
from identity.principals import KINDS, Identity, IdentityError, check_clearance, check_role
from schemas.regions import load_branches, validate_region_code

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    display_name    TEXT NOT NULL DEFAULT '',
    region          TEXT NOT NULL,
    branch          TEXT NOT NULL DEFAULT '',
    roles           TEXT NOT NULL DEFAULT '[]',
    clearance       TEXT NOT NULL DEFAULT 'INTERNAL',
    publish_regions TEXT NOT NULL DEFAULT '[]',
    password_hash   TEXT NOT NULL DEFAULT '',
    disabled        INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    changed_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    principal  TEXT NOT NULL,
    detail     TEXT NOT NULL,
    sent       INTEGER NOT NULL DEFAULT 0
);
"""

_hasher = PasswordHasher()
MIN_PASSWORD = 10


class UnknownPrincipal(IdentityError):
    pass


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str
    region: str
    branch: str = ""
    roles: frozenset[str] = frozenset()
    clearance: str = "INTERNAL"
    display_name: str = ""
    publish_regions: frozenset[str] = field(default_factory=frozenset)
    disabled: bool = False
    has_password: bool = False

    def identity(self, *, token_id: str = "") -> Identity:
        return Identity(name=self.name, kind=self.kind, region=self.region, branch=self.branch, roles=self.roles,
                        clearance=self.clearance, display_name=self.display_name, issuer="intelbus",
                        token_id=token_id, publish_regions=self.publish_regions)


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise IdentityError(f"name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    return name


def check_branch(branch: str) -> str:
    if branch and branch not in load_branches():
        raise IdentityError(f"unknown branch {branch!r} (known: {', '.join(load_branches())})")
    return branch


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise IdentityError(f"password too short: at least {MIN_PASSWORD} characters")
    return password


class PrincipalStore(ChangeLog):
    """Add, change and look up principals; verify passwords. Safe to share across threads
    only through separate instances (one SQLite connection each)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        new = not self.path.exists()
        self.db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        if new:
            os.chmod(self.path, 0o600)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- reading ---------------------------------------------------------------------

    def get(self, name: str) -> Principal:
        row = self.db.execute("SELECT name, kind, display_name, region, branch, roles, clearance, publish_regions, "
                              "disabled, password_hash != '' FROM principals WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownPrincipal(f"no principal named {name!r}")
        return _principal(row)

    def find(self, name: str) -> Principal | None:
        try:
            return self.get(name)
        except UnknownPrincipal:
            return None

    def list(self) -> list[Principal]:
        rows = self.db.execute("SELECT name, kind, display_name, region, branch, roles, clearance, publish_regions, "
                               "disabled, password_hash != '' FROM principals ORDER BY region, name").fetchall()
        return [_principal(r) for r in rows]

    def authenticate(self, name: str, password: str) -> Principal:
        """The principal if the password is right and the account enabled; IdentityError otherwise.

        The message does not say whether the name exists (a wrong name and a wrong password
        read the same), but does say 'disabled': a disabled person should call the operator.
        """
        row = self.db.execute("SELECT password_hash, disabled FROM principals WHERE name = ?", (name,)).fetchone()
        if row is None or not row[0]:
            _hasher.hash("equalise the time of an unknown name")  # no timing hint that the name is unknown
            raise IdentityError("wrong name or password")
        try:
            _hasher.verify(row[0], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            raise IdentityError("wrong name or password") from None
        if row[1]:
            raise IdentityError(f"account {name} is disabled (ask an operator)")
        if _hasher.check_needs_rehash(row[0]):
            self.db.execute("UPDATE principals SET password_hash = ? WHERE name = ?", (_hasher.hash(password), name))
            self.db.commit()
        return self.get(name)

    # --- changing (each change recorded) --------------------------------------------

    def add(self, *, actor: str, name: str, kind: str, region: str, branch: str = "", roles=(), clearance: str = "INTERNAL",
            display_name: str = "", password: str | None = None, publish_regions=()) -> Principal:
        check_name(name)
        if kind not in KINDS:
            raise IdentityError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        validate_region_code(region)
        check_branch(branch)
        roles = sorted({check_role(r) for r in roles})
        check_clearance(clearance)
        publish = sorted({validate_region_code(r) for r in publish_regions} or ({region} if "integrator" in roles else set()))
        if self.find(name) is not None:
            raise IdentityError(f"principal {name} exists already (use grant, revoke, reset or enable)")
        now = _now_ms()
        self.db.execute(
            "INSERT INTO principals (name, kind, display_name, region, branch, roles, clearance, publish_regions, "
            "password_hash, created_ms, changed_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (name, kind, display_name, region, branch, json.dumps(roles), clearance, json.dumps(publish),
             _hasher.hash(check_password(password)) if password else "", now, now))
        self._record(actor, "add", name, {"kind": kind, "region": region, "branch": branch, "roles": roles,
                                          "clearance": clearance, "publish_regions": publish, "password_set": bool(password)})
        return self.get(name)

    def set_disabled(self, *, actor: str, name: str, disabled: bool) -> Principal:
        self.get(name)
        self.db.execute("UPDATE principals SET disabled = ?, changed_ms = ? WHERE name = ?", (int(disabled), _now_ms(), name))
        self._record(actor, "disable" if disabled else "enable", name, {})
        return self.get(name)

    def reset_password(self, *, actor: str, name: str, password: str) -> Principal:
        self.get(name)
        self.db.execute("UPDATE principals SET password_hash = ?, changed_ms = ? WHERE name = ?",
                        (_hasher.hash(check_password(password)), _now_ms(), name))
        self._record(actor, "reset", name, {})
        return self.get(name)

    def grant(self, *, actor: str, name: str, roles=(), clearance: str | None = None, publish_regions=()) -> Principal:
        p = self.get(name)
        new_roles = sorted(p.roles | {check_role(r) for r in roles})
        new_publish = sorted(p.publish_regions | {validate_region_code(r) for r in publish_regions})
        new_clearance = check_clearance(clearance) if clearance else p.clearance
        self.db.execute("UPDATE principals SET roles = ?, clearance = ?, publish_regions = ?, changed_ms = ? WHERE name = ?",
                        (json.dumps(new_roles), new_clearance, json.dumps(new_publish), _now_ms(), name))
        self._record(actor, "grant", name, {"roles": sorted(roles), "clearance": clearance, "publish_regions": sorted(publish_regions)})
        return self.get(name)

    def revoke(self, *, actor: str, name: str, roles=(), publish_regions=()) -> Principal:
        p = self.get(name)
        missing = [r for r in roles if r not in p.roles]
        if missing:
            raise IdentityError(f"{name} does not hold role {', '.join(missing)}")
        new_roles = sorted(p.roles - set(roles))
        new_publish = sorted(p.publish_regions - set(publish_regions))
        self.db.execute("UPDATE principals SET roles = ?, publish_regions = ?, changed_ms = ? WHERE name = ?",
                        (json.dumps(new_roles), json.dumps(new_publish), _now_ms(), name))
        self._record(actor, "revoke", name, {"roles": sorted(roles), "publish_regions": sorted(publish_regions)})
        return self.get(name)

    def _record(self, actor: str, action: str, principal: str, detail: dict) -> None:
        self.db.execute("INSERT INTO changes (at_ms, actor, action, principal, detail) VALUES (?,?,?,?,?)",
                        (_now_ms(), actor, action, principal, json.dumps(detail, ensure_ascii=False)))
        self.db.commit()



def _principal(row) -> Principal:
    name, kind, display, region, branch, roles, clearance, publish, disabled, has_password = row
    return Principal(name=name, kind=kind, display_name=display, region=region, branch=branch,
                     roles=frozenset(json.loads(roles)), clearance=clearance,
                     publish_regions=frozenset(json.loads(publish)), disabled=bool(disabled),
                     has_password=bool(has_password))


def _now_ms() -> int:
    return int(time.time() * 1000)


def store_path(settings) -> Path:
    return settings.stack_path / "identity" / "principals.db"
