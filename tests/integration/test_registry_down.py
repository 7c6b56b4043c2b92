"""A jobs worker meeting a writer schema it has not cached while the schema registry is down.
Until 2026-12-02 the registry's silence read as "no such schema": the record was dead-lettered
as undecodable (DECODE) and a hit whose schema the worker had not registered yet as "hit does
not encode", so a registry outage lost hits for good (unless the dead letter's own schema was
not cached either: then the worker crashed and read the records again). Now a registry that
does not answer ends the worker (status 70, restarted by the supervisor) and the records are
read again later; nothing is dead-lettered for it, and the hit arrives once the registry is back.

What a person could do: upgrade the registry while the jobs run. The control in the same test:
a record of a schema id no registry has (999999) is dead-lettered as DECODE, before the outage
(which also gives the worker the dead letters' schema), and the hit arrives after it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.test_hits_end_to_end import check, hits_of, listing, publish_all, record_key, ref

pytestmark = pytest.mark.integration

UNKNOWN_ID = b"\x00\x00\x0f\x42\x3f"  # magic byte, schema id 999999


def test_a_registry_outage_loses_no_hit_and_an_unknown_schema_is_still_a_dead_letter(
        stack, settings, producer, codec, reader, ids):
    from confluent_kafka import Producer

    from ops.kafka_auth import ADMIN
    from ops.services import full_stack

    hits_topic, dlq = reader("intel.hit"), reader("intel.dlq")
    for topic in ("intel.wanted", "intel.incident"):
        codec.register(topic)  # the publisher's ids cached: it goes on publishing while the registry is away
    services = full_stack(settings, out=lambda m: None)
    log = Path(settings.stack_dir) / "logs" / "jobs-0.log"

    # a fresh worker (nothing cached) meets a record of an unknown schema id: the control's dead letter
    services.down(only={"jobs-0"})
    services.start(next(c for c in services.components if c.name == "jobs-0"))
    raw = Producer(settings.kafka_config(ADMIN))
    raw.produce("intel.incident", key=b"120119/kakou/unknown-schema", value=UNKNOWN_ID + b"\x02")
    assert raw.flush(30) == 0
    dead = dlq.read(until=lambda got: any(b"999999" in (m.value() or b"") for m in got), timeout=60)
    refused = [codec.decode(m.value()) for m in dead if b"999999" in (m.value() or b"")]
    assert refused and refused[0]["stage"] == "DECODE" and "unknown to the registry" in refused[0]["reason"]

    id18 = ids.new("130822")
    wanted, sighting = listing("130822", ref("W"), id18), check("120119", id18)

    def said(what: str) -> int:
        return log.read_text(errors="replace").count(what)

    silent, exits = said("the schema registry did not answer for schema id"), said("the worker exits so that it is restarted")
    try:
        services.down(only={"registry"})  # the worker has only the dead letters' schema cached
        publish_all(producer, "wanted", [wanted])
        publish_all(producer, "incident", [sighting])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and said("the schema registry did not answer for schema id") == silent:
            time.sleep(1)
    finally:
        services.up()  # the registry back; the supervisor brings the worker back after its backoff
    assert said("the schema registry did not answer for schema id") > silent  # the worker met the outage
    assert said("the worker exits so that it is restarted") > exits

    rkey = record_key(wanted)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=180, settle=3)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1, f"the hit was lost: {hits}"
    (copies,) = hits.values()
    assert sorted(k for k, _ in copies) == ["120000", "130000"]  # both command centers, once each
    later = dlq.read(until=lambda got: False, timeout=3, settle=0)
    ours = [m for m in dead + later if any(r["source_ref"].encode() in (m.value() or b"") for r in (wanted, sighting))]
    assert ours == [], "a record was dead-lettered because the registry was down"
