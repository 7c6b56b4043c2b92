"""What `intelbus up` does once the servers answer: topics, schemas, tables."""
from __future__ import annotations

from ops.settings import Settings


def bootstrap(settings: Settings, *, out=print) -> None:
    from confluent_kafka.admin import AdminClient

    from ops.topics import apply_plan, load_plan

    created, drift = apply_plan(AdminClient(settings.kafka_config()), load_plan(settings))
    out(f"topics      {len(created)} created" + (f", {len(drift)} drifted (see `intelbus topics apply`)" if drift else ", none drifted"))
