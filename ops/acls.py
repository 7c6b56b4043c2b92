"""Kafka ACLs as data (ops/acls.yaml): the plan, creating what is missing, reporting drift.

`load_acls` turns the file into bindings (pure); `diff` compares them with the broker's
(pure); `apply_acls` does the I/O, like ops/topics.apply_plan: it creates what is missing
and reports the rules the file does not declare, removing them only when asked (`--prune`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ops.settings import REPO_ROOT

ACLS_FILE = REPO_ROOT / "ops" / "acls.yaml"
RESOURCES = {"topic": ("TOPIC", "LITERAL"), "topic_prefix": ("TOPIC", "PREFIXED"),
             "group": ("GROUP", "LITERAL"), "group_prefix": ("GROUP", "PREFIXED")}
OPERATIONS = ("ALL", "READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "CLUSTER_ACTION",
              "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "IDEMPOTENT_WRITE")


@dataclass(frozen=True, order=True)
class Binding:
    principal: str      # User:intelbus-jobs
    resource: str       # TOPIC | GROUP
    name: str
    pattern: str        # LITERAL | PREFIXED
    operation: str      # READ, WRITE, ...

    def line(self) -> str:
        star = "*" if self.pattern == "PREFIXED" else ""
        return f"{self.principal:<24} {self.operation:<16} {self.resource.lower()} {self.name}{star}"


@dataclass(frozen=True)
class AclPlan:
    principals: dict[str, list[str]]  # name -> roles
    bindings: frozenset[Binding]


class AclFileError(ValueError):
    """ops/acls.yaml says something that is not a rule; the message names the place."""


def load_acls(path: Path = ACLS_FILE, text: str | None = None) -> AclPlan:
    doc = yaml.safe_load(text if text is not None else path.read_text(encoding="utf-8")) or {}
    roles = doc.get("roles") or {}
    principals = doc.get("principals") or {}
    bindings = set()
    for role, rules in roles.items():
        for i, rule in enumerate(rules or []):
            _check_rule(path, role, i, rule)
    for name, their_roles in principals.items():
        if not isinstance(their_roles, list) or not their_roles:
            raise AclFileError(f"{path.name}: principals.{name}: give a list of roles, e.g. [publisher]")
        for role in their_roles:
            if role not in roles:
                raise AclFileError(f"{path.name}: principals.{name}: unknown role {role!r} (roles: {', '.join(roles)})")
            for rule in roles[role]:
                bindings.update(_expand(f"User:{name}", rule))
    return AclPlan({n: list(r) for n, r in principals.items()}, frozenset(bindings))


def _check_rule(path, role, i, rule) -> None:
    where = f"{path.name}: roles.{role}[{i}]"
    if not isinstance(rule, dict):
        raise AclFileError(f"{where}: a rule is a mapping like {{topic: intel.hit, operations: [READ]}}")
    kinds = [k for k in rule if k in RESOURCES]
    unknown = [k for k in rule if k not in RESOURCES and k != "operations"]
    if unknown:
        raise AclFileError(f"{where}: unknown key {unknown[0]!r} (use one of {', '.join(RESOURCES)} and operations)")
    if len(kinds) != 1:
        raise AclFileError(f"{where}: name exactly one resource ({', '.join(RESOURCES)}), found {len(kinds)}")
    ops = rule.get("operations")
    if not ops or not isinstance(ops, list):
        raise AclFileError(f"{where}: operations: give a list, e.g. [READ, DESCRIBE]")
    for op in ops:
        if str(op).upper() not in OPERATIONS:
            raise AclFileError(f"{where}: unknown operation {op!r} (Kafka's: {', '.join(OPERATIONS)})")


def _expand(principal: str, rule: dict) -> list[Binding]:
    (kind,) = [k for k in rule if k in RESOURCES]
    resource, pattern = RESOURCES[kind]
    names = rule[kind] if isinstance(rule[kind], list) else [rule[kind]]
    return [Binding(principal, resource, str(n), pattern, str(op).upper()) for n in names for op in rule["operations"]]


def diff(desired: frozenset[Binding], existing: set[Binding]) -> tuple[list[Binding], list[Binding]]:
    """(missing on the broker, on the broker but not declared), each sorted."""
    return sorted(desired - existing), sorted(existing - desired)


# -- I/O ---------------------------------------------------------------------------------

def broker_bindings(admin, *, timeout: float = 30.0) -> set[Binding]:
    """Every ALLOW rule of a topic or group on the broker."""
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)

    found = set()
    for rtype in (ResourceType.TOPIC, ResourceType.GROUP):
        flt = AclBindingFilter(rtype, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY)
        for b in admin.describe_acls(flt, request_timeout=timeout).result():
            if b.permission_type != AclPermissionType.ALLOW or b.host != "*":
                found.add(Binding(b.principal, b.restype.name, b.name, b.resource_pattern_type.name,
                                  f"{b.operation.name} ({b.permission_type.name} from {b.host})"))
                continue
            found.add(Binding(b.principal, b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name))
    return found


def _to_kafka(b: Binding):
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return AclBinding(ResourceType[b.resource], b.name, ResourcePatternType[b.pattern], b.principal, "*",
                      AclOperation[b.operation], AclPermissionType.ALLOW)


def _to_filter(b: Binding):
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)

    op = b.operation.split(" ")[0]
    return AclBindingFilter(ResourceType[b.resource], b.name, ResourcePatternType[b.pattern], b.principal, None,
                            AclOperation[op], AclPermissionType.ANY)


@dataclass
class AclReport:
    created: list[Binding]
    drift: list[Binding]
    pruned: list[Binding]
    credentials_created: list[str]
    credentials_missing: list[str]  # principals with neither a credential on the broker nor a password here


def apply_acls(admin, settings, plan: AclPlan, *, prune: bool = False, dry_run: bool = False,
               timeout: float = 30.0) -> AclReport:
    from ops.kafka_auth import existing_scram_users, upsert_scram
    from ops.secrets import MissingSecret, kafka_password

    missing, extra = diff(plan.bindings, broker_bindings(admin, timeout=timeout))
    created, pruned = (list(missing) if dry_run else []), []
    if missing and not dry_run:
        for binding, fut in zip(missing, admin.create_acls([_to_kafka(b) for b in missing],
                                                           request_timeout=timeout).values()):
            fut.result()
            created.append(binding)
    if prune and extra and not dry_run:
        for fut in admin.delete_acls([_to_filter(b) for b in extra], request_timeout=timeout).values():
            fut.result()
        pruned = list(extra)
    elif prune and dry_run:
        pruned = list(extra)
    creds_created, creds_missing = [], []
    if settings.kafka_auth != "none":
        have = existing_scram_users(admin, list(plan.principals), timeout=timeout)
        passwords = {}
        for name in plan.principals:
            if name in have:
                continue
            try:
                passwords[name] = kafka_password(settings, name)
            except MissingSecret:
                creds_missing.append(name)
        if passwords and not dry_run:
            creds_created = upsert_scram(admin, passwords, only_missing=False, timeout=timeout)
        elif dry_run:  # what apply would create: a password is here for each
            creds_created = sorted(passwords)
    return AclReport(created, [b for b in extra if b not in pruned], pruned, creds_created, sorted(creds_missing))


def add_acls(p):
    p.add_argument("action", choices=["apply", "list"],
                   help="apply: create the missing rules and SCRAM credentials, report drift; list: show the rules")
    p.add_argument("--prune", action="store_true", help="apply: also delete the broker's rules that the file does not declare")
    p.add_argument("--dry-run", action="store_true", help="apply: change nothing, say what apply would do")
    p.add_argument("--file", type=Path, default=ACLS_FILE, help="the ACL file (default ops/acls.yaml)")
    p.epilog = ("Rules are ALLOW only; the broker denies everything else. intelbus-admin (the super user) needs none.\n"
                "Exit code of `apply`: 0 when the broker matches the file, 1 when drift or a principal without\n"
                "credentials is left, 2 when the file is wrong.\n\n"
                "Examples:\n"
                "  intelbus acls list                     # who may do what, one rule per line\n"
                "  intelbus acls apply --dry-run          # what would change\n"
                "  INTELBUS_KAFKA_PASSWORD_HB_SYSTEM=... intelbus acls apply   # also creates hb-system's SCRAM credential")

    def run(args):
        from ops.settings import load_settings

        try:
            plan = load_acls(args.file)
        except (AclFileError, OSError, yaml.YAMLError) as exc:
            print(f"intelbus acls: {exc}", file=sys.stderr)
            return 2
        if args.action == "list":
            for b in sorted(plan.bindings):
                print(b.line())
            print(f"acls: {len(plan.bindings)} rules for {len(plan.principals)} principals ({args.file.name})")
            return 0
        from confluent_kafka.admin import AdminClient

        from ops.kafka_auth import ADMIN

        settings = load_settings()
        report = apply_acls(AdminClient(settings.kafka_config(ADMIN)), settings, plan, prune=args.prune,
                            dry_run=args.dry_run)
        verb = "would create" if args.dry_run else "created"
        for b in report.created:
            print(f"{verb} {b.line()}")
        for b in report.pruned:
            print(f"{'would remove' if args.dry_run else 'removed'} {b.line()}")
        for b in report.drift:
            print(f"drift: {b.line()} (on the broker, not in {args.file.name}; `--prune` removes it)", file=sys.stderr)
        for name in report.credentials_created:
            print(f"{verb} SCRAM-SHA-512 credential for {name}")
        for name in report.credentials_missing:
            from ops.secrets import kafka_password_env_var

            print(f"no credential: {name} has no SCRAM credential on the broker and no password here "
                  f"(set {kafka_password_env_var(name)} and run again)", file=sys.stderr)
        print(f"acls: {len(plan.bindings)} declared, {len(report.created)} created, {len(report.drift)} drifted, "
              f"{len(report.pruned)} removed; credentials: {len(report.credentials_created)} created, "
              f"{len(report.credentials_missing)} missing")
        return 1 if report.drift or report.credentials_missing else 0

    return run
