"""`intelbus keys`: the operators' command for the systems' signing keys.

A local command, like `access`: it writes the key store under the stack directory
(identity/keys.db, 0600). Secrets are printed nowhere; they leave the store only in the
0600 key file written by --out, which is what a regional system is handed. Every change is
kept in the store with the OS account that made it, for the audit log.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import datetime, timedelta, timezone

EPILOG = """\
Every record on the bus carries proof of its publisher: the id of its system's key and an
HMAC-SHA256 of the message bytes (docs/integrators.md). The stream jobs refuse a record
that is unsigned, badly signed, signed with an unknown or revoked key, or whose
source_region the key may not publish for: it goes to intel.dlq (stage VERIFY) instead.

examples:
  intelbus keys create xl-ztry --region 130822 --out xl-ztry.key.json
        a key for system xl-ztry, allowed for Xinglong county; hand the file over securely
  intelbus keys create hb-xczx --region 130000 --out hb-xczx.key.json
        a province code covers every region inside it
  intelbus keys rotate xl-ztry --out xl-ztry.key.json
        a new key with the same regions; the old one keeps verifying until revoked
  intelbus keys revoke xl-ztry-1
        once the system publishes with the new key: records signed with xl-ztry-1 are refused
  intelbus keys export xl-ztry-2 --out xl-ztry.key.json
        write an existing active key's file again (a lost copy)
  intelbus keys list
  intelbus keys list --json

The key file is JSON {"key_id", "system", "secret_hex", "regions"}, mode 0600; publishers
name it with INTELBUS_SIGNING_KEY_FILE or `intelbus publish --key-file`.
"""

CST = timezone(timedelta(hours=8))


def _store():
    from identity.keys import KeyStore, keys_path
    from ops.settings import load_settings

    return KeyStore(keys_path(load_settings()))


def add_keys(p):
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")

    c = sub.add_parser("create", help="the first key of a system, for the regions it may publish for",
                       description="Create the first signing key of a system. Its id is SYSTEM-1.")
    c.add_argument("system", help="the publishing system's name, as in `intelbus access` (e.g. xl-ztry)")
    c.add_argument("--region", action="append", default=[], required=True, metavar="CODE",
                   help="a region the system may publish for, or inside which (repeatable; GB/T 2260 code)")
    c.add_argument("--out", metavar="FILE", help="write the key file (0600) to hand to the system")

    r = sub.add_parser("rotate", help="a new key for a system, same regions; the old one stays valid until revoked",
                       description="Add a key to a system (SYSTEM-<n+1>) with the regions of its newest key. Both "
                                   "keys verify until you revoke the old one.")
    r.add_argument("system")
    r.add_argument("--out", metavar="FILE", help="write the new key file (0600) to hand to the system")

    v = sub.add_parser("revoke", help="refuse records signed with a key from now on",
                       description="Revoke a key: the stream jobs refuse its records (REVOKED_KEY) once they reload "
                                   "their keyring.")
    v.add_argument("key_id", help="e.g. xl-ztry-1 (`intelbus keys list`)")

    e = sub.add_parser("export", help="write an active key's file again (0600)",
                       description="Write the key file of an active key, e.g. when the system lost its copy.")
    e.add_argument("key_id")
    e.add_argument("--out", metavar="FILE", required=True)

    lst = sub.add_parser("list", help="every key: system, regions, state, created, revoked (never the secret)")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.add_argument("--system", help="only this system's keys")

    def run(args):
        if not args.keys_command:
            p.print_help()
            return 2
        from identity.keys import KeyStoreError
        from schemas.proof import KeyFileError

        try:
            store = _store()
        except OSError as exc:
            print(f"intelbus keys {args.keys_command}: cannot open the key store: {exc}", file=sys.stderr)
            return 2
        try:
            return _run(args, store)
        except (KeyStoreError, KeyFileError) as exc:
            print(f"intelbus keys {args.keys_command}: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"intelbus keys {args.keys_command}: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
            return 2
        finally:
            store.close()

    return run


def _flush(store) -> None:
    """Tell the audit log now if ClickHouse answers (the change is in the store either way)."""
    from identity.access_cli import flush_to_audit

    flush_to_audit(store)


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=CST).strftime("%Y-%m-%d %H:%M") if ms else "-"


def _regions(regions) -> str:
    return ",".join(sorted(regions)) or "-"


def _run(args, store) -> int:
    from identity.keys import KeyStoreError, export_key_file

    cmd, actor = args.keys_command, getpass.getuser()
    if cmd == "list":
        rows = store.list(args.system)
        for k in rows:
            if args.json:
                print(json.dumps({"key_id": k.key_id, "system": k.system, "regions": sorted(k.regions), "state": k.state,
                                  "created_ms": k.created_ms, "revoked_ms": k.revoked_ms}, ensure_ascii=False))
            else:
                print(f"{k.key_id:<20} {k.system:<16} {k.state:<8} {_regions(k.regions):<24} created {_when(k.created_ms)}"
                      f"  revoked {_when(k.revoked_ms)}")
        if not args.json:
            print(f"({len(rows)} keys, {sum(k.state == 'active' for k in rows)} active)", file=sys.stderr)
        return 0
    if cmd == "export":
        key = store.get(args.key_id)
        if key.state != "active":
            raise KeyStoreError(f"key {key.key_id} is {key.state}: a revoked key is not handed out")
        print(f"key file {export_key_file(key, args.out)} for {key.key_id} of {key.system} (0600: hand it over "
              f"securely, then delete this copy)")
        return 0
    if cmd == "create":
        key = store.create(args.system, args.region, actor=actor)
    elif cmd == "rotate":
        key = store.rotate(args.system, actor=actor)
    else:  # revoke
        key = store.revoke(args.key_id, actor=actor)
        left = [k.key_id for k in store.active(key.system)]
        print(f"revoked {key.key_id} of {key.system}; still active: {', '.join(left) or 'none (it cannot publish now)'}")
        _flush(store)
        return 0
    where = ""
    if args.out:
        where = f"; key file {export_key_file(key, args.out)} (0600: hand it over securely, then delete this copy)"
    else:
        where = f"; no --out given: the secret stays in the store (`intelbus keys export {key.key_id} --out FILE`)"
    others = [k.key_id for k in store.active(key.system) if k.key_id != key.key_id]
    also = f"; still active too: {', '.join(others)} (revoke once the system uses {key.key_id})" if others else ""
    print(f"{'created' if cmd == 'create' else 'rotated:'} {key.key_id} for {key.system}, may publish for "
          f"{key.regions_text()}{also}{where}")
    _flush(store)
    return 0
