"""An outage longer than a topic's retention: the range Kafka deleted before a group read it is
counted (intelbus_records_lost_to_retention_total), logged with its offsets, never skipped in
silence. The deletion is made as retention makes it, by moving the partition's first offset
(the admin's DeleteRecords); the check runs as the jobs' principal, as the workers run it."""
from __future__ import annotations

import logging
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ops.kafka_auth import ADMIN, JOBS
from ops.retention import RECORDS_LOST, check_group


@pytest.fixture
def topic(stack, settings):
    admin = AdminClient(settings.kafka_config(ADMIN))
    name = f"intelbus-jobs-retention-test-{uuid.uuid4().hex[:8]}"
    for f in admin.create_topics([NewTopic(name, 1, 1)]).values():
        f.result(30)
    yield name
    for f in admin.delete_topics([name]).values():
        f.result(30)


def commit(settings, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({**settings.kafka_config(JOBS), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_a_range_deleted_by_retention_during_an_outage_is_counted_and_named(stack, settings, topic, caplog):
    jobs = settings.kafka_config(JOBS)
    producer = Producer({**jobs, "acks": "all"})
    for i in range(30):
        producer.produce(topic, value=f"record {i}".encode(), partition=0)
    assert producer.flush(30) == 0
    down = f"intelbus-jobs-test-down-{uuid.uuid4().hex[:6]}"   # read 5 records, then an outage
    kept = f"intelbus-jobs-test-kept-{uuid.uuid4().hex[:6]}"   # read 25: past what retention deleted
    commit(settings, down, topic, 5)
    commit(settings, kept, topic, 25)
    # retention deletes the first 20 records while `down` is away
    admin = AdminClient(settings.kafka_config(ADMIN))
    for f in admin.delete_records([TopicPartition(topic, 0, 20)]).values():
        assert f.result(30).low_watermark == 20

    before = RECORDS_LOST.labels(down, topic)._value.get()
    with caplog.at_level(logging.ERROR, logger="intelbus.retention"):
        lost = check_group(jobs, down, [(topic, 0)])
    assert [(r.partition, r.first, r.last, r.count) for r in lost] == [(0, 5, 19, 15)]
    assert RECORDS_LOST.labels(down, topic)._value.get() == before + 15
    assert f"{topic}[0]: offsets 5-19 (15) were deleted by retention before group {down} read them" in caplog.text

    # controls in the same test: a group past the deletion, and a new group, lost nothing
    assert check_group(jobs, kept, [(topic, 0)]) == []
    assert check_group(jobs, f"intelbus-jobs-test-new-{uuid.uuid4().hex[:6]}", [(topic, 0)]) == []
    assert RECORDS_LOST.labels(kept, topic)._value.get() == 0
