"""Logins for the benchmarks: the principals they act as, and `intelbus login` for them.

Since the identity change, `intelbus publish` needs a login as an integrator whose publish
regions cover the records' source regions, and `intelbus query` / `feed` and the gateway's
API need a login as someone entitled to read. The benchmarks add their own principals to
the stack's principal store (idempotently, as `intelbus access add` / `grant` would; every
change is recorded in the store and told to the audit log), give them a fresh random
password on each run, and log them in through the real CLI into a credentials file of
their own (`INTELBUS_CREDENTIALS`), never the user's.

- `bench-integrator`: a system of 110000 with the integrator role, publishing for the
  provinces it is asked to cover (`integrator_env`);
- `bench-analyst-<region>`: an analyst person of that region (`analyst_env`).
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

INTEGRATOR = "bench-integrator"
ACTOR = "bench"


def analyst_name(region: str, clearance: str = "INTERNAL") -> str:
    return f"bench-analyst-{region}" + ("" if clearance == "INTERNAL" else f"-{clearance.lower()}")


def covering_provinces(regions, table=None) -> list[str]:
    """The provinces the given region codes lie in (publish regions that cover them all)."""
    if table is None:
        from schemas.regions import load_regions

        table = load_regions()
    return sorted({table.province_of(str(r)) for r in regions})


def ensure_principal(store, name: str, *, kind: str, region: str, roles, clearance: str = "INTERNAL",
                     branch: str = "", publish_regions=(), display_name: str = "") -> str:
    """Make `name` exist, enabled, holding at least these roles and publish regions at this
    clearance, with a new random password; returns the password. Idempotent."""
    password = secrets.token_urlsafe(18)
    existing = store.find(name)
    if existing is None:
        store.add(actor=ACTOR, name=name, kind=kind, region=region, branch=branch, roles=list(roles),
                  clearance=clearance, display_name=display_name, password=password,
                  publish_regions=list(publish_regions))
        return password
    if existing.kind != kind or existing.region != region:
        raise RuntimeError(f"principal {name} exists as a {existing.kind} of {existing.region}, not a {kind} of {region}: "
                           f"remove or rename it (`intelbus access list`)")
    if existing.disabled:
        store.set_disabled(actor=ACTOR, name=name, disabled=False)
    missing_roles = sorted(set(roles) - existing.roles)
    missing_publish = sorted(set(publish_regions) - existing.publish_regions)
    if missing_roles or missing_publish or existing.clearance != clearance:
        store.grant(actor=ACTOR, name=name, roles=missing_roles, clearance=clearance, publish_regions=missing_publish)
    store.reset_password(actor=ACTOR, name=name, password=password)
    return password


def _store(settings):
    from identity.store import PrincipalStore, store_path

    return PrincipalStore(store_path(settings))


def _tell_audit_log(store) -> None:
    """As `intelbus access` does: the changes go to the audit log now, or when the gateway next starts."""
    from identity.access_cli import flush_to_audit

    flush_to_audit(store, out=lambda message: print(f"[bench logins] {message}", file=sys.stderr))


def login(settings, name: str, password: str, folder: Path) -> dict:
    """Log `name` in with `intelbus login NAME --password-stdin` into FOLDER/NAME.json; the
    environment (a copy of os.environ) for subprocesses acting as `name`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("INTELBUS_TOKEN", "INTELBUS_OPERATOR")}
    env["INTELBUS_CREDENTIALS"] = str(folder / f"{name}.json")
    r = subprocess.run([sys.executable, "-m", "ops.cli", "login", name, "--password-stdin"], input=password + "\n",
                       capture_output=True, text=True, timeout=60, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"intelbus login {name} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    return env


def token_of(env: dict) -> str:
    """The bearer token a `login` saved (for HTTP clients)."""
    from gateway.client import load_login

    saved = load_login(Path(env["INTELBUS_CREDENTIALS"]))
    if saved is None:
        raise RuntimeError(f"no saved login in {env['INTELBUS_CREDENTIALS']}")
    return saved.token


def integrator_env(settings, regions, folder: Path) -> dict:
    """Environment of `bench-integrator`, logged in, entitled to publish for the provinces of `regions`."""
    publish = covering_provinces(regions)
    store = _store(settings)
    try:
        password = ensure_principal(store, INTEGRATOR, kind="system", region="110000", roles=["integrator"],
                                    publish_regions=publish, display_name="benchmarks (publish)")
        _tell_audit_log(store)
    finally:
        store.close()
    return login(settings, INTEGRATOR, password, folder)


def analyst_env(settings, region: str, folder: Path, clearance: str = "INTERNAL") -> dict:
    """Environment of `bench-analyst-<region>` (an analyst of the intelligence branch), logged in."""
    name = analyst_name(region, clearance)
    store = _store(settings)
    try:
        password = ensure_principal(store, name, kind="person", region=region, branch="INTELLIGENCE", roles=["analyst"],
                                    clearance=clearance, display_name="benchmarks (read)")
        _tell_audit_log(store)
    finally:
        store.close()
    return login(settings, name, password, folder)
