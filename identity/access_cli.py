"""`intelbus access`: the operators' command for principals (persons and systems).

A local command, like `up` and `migrate`: it writes the principal store under the stack
directory (mode 0600), which only the operators' account can open. Every change is kept in
the store with the OS account that made it and written to the audit log (at once if
ClickHouse answers, else when the gateway next starts).
"""
from __future__ import annotations

import getpass
import json
import secrets
import sys
from pathlib import Path

import yaml

from identity.principals import CLEARANCES, KINDS, ROLES, IdentityError

EPILOG = """\
examples:
  intelbus access add hb-cc --region 130000 --branch COMMAND_CENTER --role command_center --name-zh 河北指挥中心
  intelbus access add xl-ztry --kind system --region 130822 --role integrator
  intelbus access grant js-analyst --role analyst --clearance SECRET
  intelbus access disable hb-cc            # its tokens stop working at once
  intelbus access reset hb-cc              # a new password, asked for (or --password-stdin)
  intelbus access list
  intelbus access seed ops/identity/demo-principals.yaml   # the demo's identities (idempotent)

Roles: """ + ", ".join(ROLES) + "; clearances: " + ", ".join(CLEARANCES) + """ (what each role may do:
ops/identity/roles.yaml). Branches: schemas/codes/branches.csv.
"""


def _store():
    from identity.store import PrincipalStore, store_path
    from ops.settings import load_settings

    return PrincipalStore(store_path(load_settings()))


def _actor() -> str:
    return getpass.getuser()


def _password(args, name: str) -> str:
    if getattr(args, "password_stdin", False):
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"new password for {name}: ")
    if first != getpass.getpass("again: "):
        raise IdentityError("the two passwords differ")
    return first


def flush_to_audit(store, out=print) -> None:
    """Tell the audit log about the changes it has not seen (ClickHouse may be down: then later)."""
    try:
        from gateway.audit import flush_access_changes
        from ops.secrets import clickhouse_url_as
        from ops.settings import load_settings
        from sinks.engine import DriverExecutor

        executor = DriverExecutor(clickhouse_url_as(load_settings(), "intelbus_gateway"))
        try:
            flush_access_changes(store, executor)
        finally:
            executor.close()
    except Exception as exc:  # recorded in the store; the gateway writes it at its next start
        out(f"(audit log not reachable: {str(exc).splitlines()[0][:120]}; the change is recorded and will be "
            "written when the gateway next starts)")


def add_access(p):
    sub = p.add_subparsers(dest="access_command", metavar="ACTION")
    p.epilog = EPILOG
    p.formatter_class = __import__("argparse").RawDescriptionHelpFormatter

    a = sub.add_parser("add", help="a new person or system")
    a.add_argument("name", help="login name: letters, digits, '-', '_', '.'")
    a.add_argument("--kind", choices=KINDS, default="person")
    a.add_argument("--region", required=True, help="the agency's region code (GB/T 2260)")
    a.add_argument("--branch", default="", help="the agency's branch (COMMAND_CENTER, CRIMINAL_INVESTIGATION, ...)")
    a.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    a.add_argument("--clearance", default="INTERNAL", help="highest classification it may read (default INTERNAL)")
    a.add_argument("--publish-region", action="append", default=[],
                   help="systems: a region it may publish for (default: its own region)")
    a.add_argument("--name-zh", default="", help="display name")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.add_argument("--no-password", action="store_true", help="no password (a system, or a person who logs in by OIDC)")

    for action, help_text in (("disable", "refuse its logins and tokens from now on"), ("enable", "allow it again")):
        d = sub.add_parser(action, help=help_text)
        d.add_argument("name")

    r = sub.add_parser("reset", help="set a new password")
    r.add_argument("name")
    r.add_argument("--password-stdin", action="store_true")

    for action, help_text in (("grant", "add roles, raise or lower the clearance, add publish regions"),
                              ("revoke", "remove roles or publish regions")):
        g = sub.add_parser(action, help=help_text)
        g.add_argument("name")
        g.add_argument("--role", action="append", default=[])
        g.add_argument("--publish-region", action="append", default=[])
        if action == "grant":
            g.add_argument("--clearance")

    sub.add_parser("list", help="every principal, its agency, roles, clearance and state").add_argument(
        "--json", action="store_true")

    rp = sub.add_parser("row-policies", help="print ClickHouse roles and row policies per agency (current ClickHouse; "
                                             "the server enforces the scope a second time)")
    rp.add_argument("--database", default="intelbus")
    rp.add_argument("--cluster", help="add ON CLUSTER NAME to every statement")
    rp.add_argument("--region", action="append", default=[],
                    help="an agency region to generate for (repeatable; default: every region of the principals "
                         "who read data)")
    rp.add_argument("--clearance", action="append", default=[], help="clearance levels (default: those the principals hold)")

    s = sub.add_parser("seed", help="add the principals of a YAML file that do not exist yet (idempotent)")
    s.add_argument("file", type=Path)
    s.add_argument("--passwords", type=Path, help="where generated passwords are kept (default: beside the store)")

    def run(args):
        if not args.access_command:
            p.print_help()
            return 2
        store = _store()
        try:
            return _run(args, store)
        except IdentityError as exc:
            print(f"intelbus access {args.access_command}: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:  # an unknown region code
            print(f"intelbus access {args.access_command}: {exc}", file=sys.stderr)
            return 2
        finally:
            store.close()

    return run


def _run(args, store) -> int:
    cmd, actor = args.access_command, _actor()
    if cmd == "list":
        rows = store.list()
        if args.json:
            for pr in rows:
                print(json.dumps({"name": pr.name, "kind": pr.kind, "region": pr.region, "branch": pr.branch,
                                  "roles": sorted(pr.roles), "clearance": pr.clearance, "disabled": pr.disabled,
                                  "publish_regions": sorted(pr.publish_regions)}, ensure_ascii=False))
            return 0
        from schemas.regions import load_regions

        regions = load_regions()
        for pr in rows:
            state = "disabled" if pr.disabled else ("no password" if not pr.has_password else "active")
            print(f"{pr.name:<16} {pr.kind:<7} {pr.region} {regions.name(pr.region):<8} {pr.branch or '-':<22} "
                  f"{','.join(sorted(pr.roles)) or '-':<26} {pr.clearance:<9} {state}")
        print(f"({len(rows)} principals)", file=sys.stderr)
        return 0
    if cmd == "row-policies":
        for statement in row_policies(store, regions=args.region, clearances=args.clearance, database=args.database,
                                      cluster=args.cluster):
            print(statement + ";")
        return 0
    if cmd == "add":
        password = None if args.no_password else _password(args, args.name)
        pr = store.add(actor=actor, name=args.name, kind=args.kind, region=args.region, branch=args.branch,
                       roles=args.role, clearance=args.clearance, display_name=args.name_zh, password=password,
                       publish_regions=args.publish_region)
        print(f"added {pr.name}: {pr.kind} of {pr.region}/{pr.branch or '-'}, roles {', '.join(sorted(pr.roles)) or '-'}, "
              f"cleared to {pr.clearance}")
    elif cmd in ("disable", "enable"):
        store.set_disabled(actor=actor, name=args.name, disabled=cmd == "disable")
        print(f"{args.name} {cmd}d")
    elif cmd == "reset":
        store.reset_password(actor=actor, name=args.name, password=_password(args, args.name))
        print(f"new password set for {args.name}")
    elif cmd == "grant":
        if not (args.role or args.publish_region or args.clearance):
            raise IdentityError("grant what? give --role, --clearance or --publish-region")
        pr = store.grant(actor=actor, name=args.name, roles=args.role, clearance=args.clearance,
                         publish_regions=args.publish_region)
        print(f"{pr.name}: roles {', '.join(sorted(pr.roles)) or '-'}, cleared to {pr.clearance}")
    elif cmd == "revoke":
        if not (args.role or args.publish_region):
            raise IdentityError("revoke what? give --role or --publish-region")
        pr = store.revoke(actor=actor, name=args.name, roles=args.role, publish_regions=args.publish_region)
        print(f"{pr.name}: roles {', '.join(sorted(pr.roles)) or '-'}")
    elif cmd == "seed":
        seed(store, args.file, args.passwords or store.path.parent / "demo-passwords.json", actor=actor)
    flush_to_audit(store)
    return 0


def agency_key(region: str, clearance: str) -> str:
    return f"{region}_{clearance.lower()}"


def row_policies(store, *, regions=(), clearances=(), database="intelbus", cluster=None) -> list[str]:
    """One ClickHouse role per agency region and clearance, with the row policies of identity.entitlement.

    The same `Entitlement.sql_scopes` that the gateway wraps analysts' SQL in, so the two
    enforcements cannot drift apart. Grant a role to the ClickHouse user the gateway uses for
    that agency (docs/deploy.md, "Row policies").
    """
    from identity.entitlement import Entitlement
    from identity.principals import Identity
    from identity.row_policies import row_policy_statements
    from schemas.regions import load_regions, validate_region_code

    table = load_regions()
    readers = [p for p in store.list() if not p.disabled and ({"analyst", "command_center"} & p.roles)]
    pairs = sorted({(r, c) for r in ([validate_region_code(x) for x in regions] or [p.region for p in readers])
                    for c in (clearances or sorted({p.clearance for p in readers}) or ["INTERNAL"])})
    scopes = {}
    for region, clearance in pairs:
        ent = Entitlement(Identity(name="policy", kind="person", region=region, branch="", roles=frozenset({"analyst"}),
                                   clearance=clearance), table)
        scopes[agency_key(region, clearance)] = ent.sql_scopes(region)
    return row_policy_statements(scopes, database, cluster=cluster)


def seed(store, file: Path, passwords_file: Path, *, actor: str, out=print) -> dict[str, str]:
    """Add the principals a YAML file lists that the store lacks; generated passwords kept in a 0600 file."""
    import os

    doc = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    known = json.loads(passwords_file.read_text()) if passwords_file.exists() else {}
    for entry in doc["principals"]:
        name = entry["name"]
        if store.find(name) is not None:
            continue
        password = None  # a system's password is its client secret: it logs in to publish, as a person does
        if not entry.get("no_password"):
            password = known.get(name) or secrets.token_urlsafe(12)
            known[name] = password
        store.add(actor=actor, name=name, kind=entry.get("kind", "person"), region=str(entry["region"]),
                  branch=entry.get("branch", ""), roles=entry.get("roles", []), clearance=entry.get("clearance", "INTERNAL"),
                  display_name=entry.get("display_name", ""), password=password,
                  publish_regions=[str(r) for r in entry.get("publish_regions", [])])
        out(f"added {name}")
    fd = os.open(passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(known, f, ensure_ascii=False, indent=1)
    return known
