"""Bounded state on the real bus: a deleted dedupe entry is a tombstone in the table's changelog,
and a worker that recovers its table from the changelog does not bring the entry back.

A private worker (bench/private_jobs.py: its own topics, group, tables and datadir; the
stack's jobs-0 untouched) runs with a dedupe window of 3 seconds. Record A is read, then,
more than a window later, record B on the same partition: B's batch sweeps A's entry away.
The worker is stopped and started again with an empty datadir (so it recovers the table from
the changelog alone) and a window of an hour: A sent again is new (its entry was not
recovered), B sent again is a duplicate (its entry was)."""
from __future__ import annotations

import socket
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.private_jobs import PrivateJobs

PARTITION = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def incident(tag: str, ref: str, now_ms: int) -> dict:
    from schemas.records import validate_record

    return validate_record("incident", {
        "source_region": "120119", "source_system": "jzga", "source_ref": f"{tag}-{ref}", "occurred_at": now_ms,
        "incident_type": "CHECKPOINT_CHECK", "location": {"region": "120119"}}, now_ms=now_ms)


def read_all(settings, topic: str, partitions, timeout: float = 15.0) -> list:
    """Every message of the topic's partitions up to their end offsets now."""
    consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        got, deadline = [], time.monotonic() + timeout
        remaining = {p for p in partitions if ends[p] > 0}
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    continue
                got.append(msg)
                if msg.offset() >= ends[msg.partition()] - 1:
                    remaining.discard(msg.partition())
        return got
    finally:
        consumer.close()


def wait_for(predicate, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def test_an_expired_entry_is_a_changelog_tombstone_and_is_not_recovered(stack, settings, codec, tmp_path):
    tag = f"t{uuid.uuid4().hex[:8]}"
    window_s = 3
    worker = PrivateJobs(settings, tmp_path / "first", tag, inputs=f"intelbus-jobs-{tag}-in", metrics_port=free_port(),
                         stages={"dedupe": {"window_ms": window_s * 1000}})
    producer = Producer(settings.kafka_config("intelbus-admin"))
    topic = worker.topics["intel.incident"]

    def send(record):
        key = f"{record['source_region']}/{record['source_system']}/{record['source_ref']}".encode()
        producer.produce(topic, codec.encode("intel.incident", record), key=key, partition=PARTITION)
        producer.flush(10)
        return key

    def unique_keys():
        return [m.key() for m in read_all(settings, worker.topics["intel.incident.unique"], [PARTITION])]

    try:
        worker.start()
        a = send(incident(tag, "A", int(time.time() * 1000)))
        wait_for(lambda: a in unique_keys(), what="A forwarded")
        time.sleep(window_s + 1)
        b = send(incident(tag, "B", int(time.time() * 1000)))
        wait_for(lambda: b in unique_keys(), what="B forwarded")
        wait_for(lambda: (worker.metric("intelbus_jobs_state_expired_total", table="records") or 0) >= 1,
                 what="A's entry expired")

        changelog = [(m.key(), m.value()) for m in read_all(settings, worker.changelog("records"), [PARTITION])]
        a_writes = [v for k, v in changelog if k == a]
        assert len(a_writes) == 2 and a_writes[0] is not None and a_writes[1] is None  # written, then a tombstone
        assert [v is None for k, v in changelog if k == b] == [False]  # B is inside the window: kept
        worker.stop()

        # the same app id (group, changelogs), an empty datadir: the table comes from the changelog alone
        again = PrivateJobs(settings, tmp_path / "second", tag, inputs=f"intelbus-jobs-{tag}-in",
                            metrics_port=free_port(), stages={"dedupe": {"window_ms": 3_600_000, "expire": False}})
        again.start()
        worker = again
        now = int(time.time() * 1000)
        send(incident(tag, "A", now))  # the same event id (same record, same revision)
        send(incident(tag, "B", now))
        wait_for(lambda: unique_keys().count(a) == 2, what="A forwarded again, as new")
        duplicates = wait_for(lambda: [m.key() for m in read_all(settings, worker.topics["intel.duplicates"],
                                                                 [PARTITION])], what="B dropped as a duplicate")
        assert duplicates == [b]
        assert unique_keys().count(b) == 1
    finally:
        worker.stop()
        worker.delete_topics()
