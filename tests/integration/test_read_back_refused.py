"""The jobs' read-backs (look-back, emitted hits, emitted workflow events) as a principal that may
not read the topic: refused at once, not after the read's timeout, during which the workflow job
would hold its lock (commands and timers waiting). Control: the jobs' principal reads the same."""
from __future__ import annotations

import io
import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from fastavro import parse_schema, schemaless_writer

from ops.kafka_auth import ADMIN, GATEWAY, JOBS
from stream_jobs.lookback import read_first_strings_since

SCHEMA = parse_schema({"type": "record", "name": "e", "fields": [{"name": "event_id", "type": "string"}]})


def framed(event_id: str) -> bytes:
    body = io.BytesIO()
    schemaless_writer(body, SCHEMA, {"event_id": event_id})
    return b"\x00\x00\x00\x00\x01" + body.getvalue()


def test_a_read_back_the_broker_refuses_fails_at_once_and_the_allowed_one_reads(stack, settings):
    admin = AdminClient(settings.kafka_config(ADMIN))
    topic = f"intelbus-jobs-readback-test-{uuid.uuid4().hex[:8]}"  # the jobs' own prefix: the gateway may not read it
    for f in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        f.result(30)
    try:
        since_ms = int((time.time() - 120) * 1000)
        producer = Producer({**settings.kafka_config(JOBS), "acks": "all"})
        ids = [str(uuid.uuid4()) for _ in range(5)]
        for i, event_id in enumerate(ids):
            producer.produce(topic, value=framed(event_id), key=b"k", partition=i % 2)
        assert producer.flush(30) == 0

        started = time.monotonic()
        with pytest.raises(KafkaException, match="AUTHORIZATION"):
            read_first_strings_since(settings.kafka_config(GATEWAY), topic, since_ms, timeout=60.0,
                                     group="intelbus-gateway-readback-test", short="test")
        assert time.monotonic() - started < 15, "the refusal waited for the read's timeout"

        found = read_first_strings_since(settings.kafka_config(JOBS), topic, since_ms, timeout=60.0,
                                         group="intelbus-jobs-readback-test", short="test")
        assert found == set(ids)
    finally:
        for f in admin.delete_topics([topic]).values():
            f.result(30)
