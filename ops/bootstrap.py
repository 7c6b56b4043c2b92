"""What `intelbus up` does once the servers answer: topics, schemas, tables."""
from __future__ import annotations

from ops.settings import Settings


def bootstrap(settings: Settings, *, out=print) -> None:
    from confluent_kafka.admin import AdminClient

    from ops.acls import apply_acls, load_acls
    from ops.kafka_auth import ADMIN
    from ops.topics import apply_plan, load_plan

    admin = AdminClient(settings.kafka_config(ADMIN))
    acl_plan = load_acls()
    from ops.secrets import ensure_kafka_passwords

    # a principal added to ops/acls.yaml since the broker was formatted gets its password here
    # and its SCRAM credential from apply_acls (the local stack's passwords live in <secrets dir>/kafka)
    ensure_kafka_passwords(settings, sorted(acl_plan.principals))
    report = apply_acls(admin, settings, acl_plan)
    out(f"acls        {len(acl_plan.bindings)} rules for {len(acl_plan.principals)} principals (ops/acls.yaml), "
        f"{len(report.created)} created, {len(report.credentials_created)} credentials created"
        + (f", {len(report.drift)} drifted (see `intelbus acls apply`)" if report.drift else ", none drifted"))
    created, drift = apply_plan(admin, load_plan(settings))
    out(f"topics      {len(created)} created" + (f", {len(drift)} drifted (see `intelbus topics apply`)" if drift else ", none drifted"))

    from schemas.wire import SchemaCodec, register_all

    ids = register_all(SchemaCodec(url=settings.registry_url))
    out(f"schemas     {len(ids)} subjects registered (ids {', '.join(str(i) for i in sorted(set(ids.values())))})")

    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor
    from sinks.migrate import apply_migrations

    executor = DriverExecutor(clickhouse_url_as(settings, "default"))  # the admin: DDL
    try:
        applied = apply_migrations(executor, cluster=settings.clickhouse_cluster)
    finally:
        executor.close()
    out(f"migrations  {len(applied)} applied, database {executor.database} is current")

    from identity.keys import ensure_local_key

    key_file = ensure_local_key(settings)
    out(f"signing     the local stack's key for publishing tools is {key_file} (system `local`, every region; "
        "production creates one per system: `intelbus keys create`)")
