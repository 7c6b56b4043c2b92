"""Handlers of the stack commands: up, down, status, config, install, topics."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ops.settings import load_settings


def _stack(args=None):
    from ops.services import full_stack

    profile = getattr(args, "profile", None)
    settings = load_settings(**({"stack_profile": profile} if profile else {}))
    return full_stack(settings, include_services=not getattr(args, "infra_only", False))


def _add_profile(p):
    p.add_argument("--profile", choices=["single", "cluster"], default=None,
                   help="single: one broker, one ClickHouse; cluster: three brokers, ZooKeeper, two ClickHouse "
                        "replicas (docs/deploy.md). Default: INTELBUS_STACK_PROFILE, else what the last `up` chose, else single")


def add_up(p):
    p.add_argument("--infra-only", action="store_true", help="start only Kafka, the registry and ClickHouse (no jobs, no sink)")
    _add_profile(p)
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for each component to be healthy (default: per component, 60-120)")
    p.add_argument("--tls", action="store_true",
                   help="also serve Kafka over TLS (SASL_SSL on the Kafka port + 2) with a CA made under .stack/tls; "
                        "kept by later `up`s until `down --purge`")
    p.epilog = ("Starts each component that is not running, waits until it is healthy, then creates\n"
                "the broker's credentials and ACLs (ops/acls.yaml), missing topics, registers schemas\n"
                "and applies ClickHouse migrations. Safe to repeat. Then a supervisor (`intelbus supervise`)\n"
                "restarts any component that crashes (at once, then 1 s, 2 s, 4 s ... 30 s apart) until `intelbus down`.\n\n"
                "With --tls, a client reaches the TLS listener with\n"
                "  INTELBUS_KAFKA=127.0.0.1:9094 INTELBUS_KAFKA_SECURITY=security.protocol=SASL_SSL,ssl.ca.location=.stack/tls/ca.pem")

    def run(args):
        from ops.bootstrap import bootstrap

        if args.tls:
            from ops.tls import ensure_tls

            settings = load_settings()
            if (args.profile or settings.stack_profile) == "cluster":
                print("intelbus up: --tls is not served by the cluster profile yet (docs/deploy.md)", file=sys.stderr)
                return 2
            folder = ensure_tls(settings)
            print(f"tls         CA and broker certificate in {folder} (clients trust {folder / 'ca.pem'}); "
                  "a broker already running picks the listener up at its next start")
        stack = _stack(args)
        if args.profile:  # later commands in this stack dir (status, down, the clients) follow it
            from ops.cluster import remember_profile

            remember_profile(stack.settings.stack_path, args.profile)
        statuses = stack.up(timeout=args.timeout, on_infra_ready=lambda: bootstrap(stack.settings, out=print))
        print()
        for s in statuses:
            print(s.line())
        from ops.supervise import supervisor_line, supervisor_status

        print(supervisor_line(supervisor_status(stack.settings)))
        return 0 if all(s.healthy for s in statuses) else 1

    return run


def add_down(p):
    p.add_argument("--purge", action="store_true", help="also delete .stack/ (all topics, schemas, tables and logs)")
    p.add_argument("names", nargs="*", metavar="NAME", help="stop only these components (e.g. jobs-0 sink)")
    _add_profile(p)

    def run(args):
        stack = _stack(args)
        if args.names:
            if args.purge:
                print("intelbus down: --purge stops everything; give no names with it", file=sys.stderr)
                return 2
            unknown = set(args.names) - {c.name for c in stack.components}
            if unknown:
                print(f"intelbus down: unknown component(s) {', '.join(sorted(unknown))} "
                      f"(known: {', '.join(c.name for c in stack.components)})", file=sys.stderr)
                return 2
        stack.down(purge=args.purge, only=set(args.names) or None)
        return 0

    return run


def add_status(p):
    p.add_argument("--json", action="store_true", help="print the status as one JSON document")
    _add_profile(p)

    def run(args):
        from ops.stack import status_json
        from ops.supervise import supervisor_line, supervisor_status

        settings = load_settings()
        statuses = _stack(args).status()
        supervisor = supervisor_status(settings)
        if args.json:
            print(status_json(statuses, supervisor))
        else:
            for s in statuses:
                print(s.line())
            print(supervisor_line(supervisor))
            base = load_settings().metrics_port_base
            print(f"(while they run: `intelbus simulate` serves metrics on http://127.0.0.1:{base + 30}/metrics, "
                  f"`intelbus publish` on :{base + 31}; Prometheus config: ops/prometheus/)")
        return 0 if all(s.healthy for s in statuses) else 1

    return run


def add_config(p):
    p.add_argument("--json", action="store_true", help="print the settings as JSON")

    def run(args):
        settings = load_settings()
        rows = settings.describe()
        if args.json:
            print(json.dumps({name: value for name, _, value, _ in rows}, ensure_ascii=False, indent=2))
            return 0
        width = max(len(env) for _, env, _, _ in rows)
        for name, env, value, doc in rows:
            print(f"{env:<{width}}  {value!s:<45}  {doc}")
        return 0

    return run


def add_install(p):
    def run(args):
        from ops.install import install_all

        settings = load_settings()
        install_all(Path(settings.dist_dir), log=lambda m: print(m, file=sys.stderr))
        print("intelbus install: everything the local stack needs is installed")
        return 0

    return run


def add_schemas(p):
    p.add_argument("action", choices=["check", "register"],
                   help="check: every .avsc against git's previous version and the registry; register: register them")
    p.add_argument("--ref", default="HEAD", help="git revision to compare with (default HEAD)")
    p.add_argument("--no-registry", action="store_true", help="compare with git only")
    p.epilog = ("`check` exits 1 and names the field that breaks when a schema is not BACKWARD_TRANSITIVE\n"
                "compatible (new readers must read all old data): e.g. a new field without a default.")

    def run(args):
        from schemas.compat import check_working_tree

        settings = load_settings()
        registry = None
        if not args.no_registry:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            registry = SchemaRegistryClient({"url": settings.registry_url})
        if args.action == "register":
            from schemas.wire import SchemaCodec, register_all

            for topic, schema_id in register_all(SchemaCodec(registry=registry)).items():
                print(f"{topic}-value: id {schema_id}")
            return 0
        try:
            problems = check_working_tree(registry=registry, ref=args.ref)
        except Exception as exc:
            print(f"intelbus schemas check: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        for line in problems:
            print(line, file=sys.stderr)
        print(f"schemas check: {'OK, all compatible' if not problems else f'{len(problems)} incompatibilities'}")
        return 1 if problems else 0

    return run


def add_topics(p):
    p.add_argument("action", choices=["apply", "list"], help="apply: create missing topics, report drift; list: show the plan")
    p.epilog = "Exit code of `apply`: 0 when the broker matches ops/topics.yaml, 1 when drift was found."

    def run(args):
        from ops.topics import apply_plan, load_plan

        settings = load_settings()
        plan = load_plan(settings)
        if args.action == "list":
            for t in plan:
                cfg = ", ".join(f"{k}={v}" for k, v in t.config.items())
                print(f"{t.name:<24} partitions={t.partitions} rf={t.replication_factor} {cfg}  # {t.doc}")
            return 0
        from confluent_kafka.admin import AdminClient

        from ops.kafka_auth import ADMIN

        created, drift = apply_plan(AdminClient(settings.kafka_config(ADMIN)), plan)
        for name in created:
            print(f"created {name}")
        for line in drift:
            print(f"drift: {line} (not changed; fix the topic or ops/topics.yaml)", file=sys.stderr)
        print(f"topics: {len(plan)} declared, {len(created)} created, {len(drift)} drifted")
        return 1 if drift else 0

    return run
