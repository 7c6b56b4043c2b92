"""Rejections are counted by a bounded reason class, whatever integrators send."""
from __future__ import annotations

import pytest

from producers.metrics import REASONS, reason_class
from schemas.records import RecordError, validate_record

GOOD = {"source_region": "120119", "source_system": "kakou", "source_ref": "JQ1", "occurred_at": "2026-11-23T09:30:00+08:00",
        "incident_type": "CHECKPOINT_CHECK", "location": {"region": "120119"},
        "persons": [{"id_type": "RESIDENT_ID", "id_number": "130822850101123"}], "vehicles": [{"plate": "冀R8F3D6"}],
        "phones": ["13800138000"]}


@pytest.mark.parametrize("change, expected", [
    ({"source_ref": None}, "missing_field"),
    ({"colour": "red"}, "unknown_field"),
    ({"persons": [{"id_type": "RESIDENT_ID", "id_number": "130822198501011234"}]}, "bad_identifier"),
    ({"vehicles": [{"plate": "X"}]}, "bad_identifier"),
    ({"phones": ["12"]}, "bad_identifier"),
    ({"incident_type": "PICNIC"}, "not_in_enum"),
    ({"location": {"region": "999999"}}, "bad_region"),
    ({"occurred_at": "yesterday"}, "bad_time"),
    ({"persons": "王五"}, "wrong_type"),
    ({"revision": 0}, "invalid_value"),
])
def test_each_kind_of_bad_record_gets_its_reason_class(change, expected):
    with pytest.raises(RecordError) as exc:
        validate_record("incident", {**GOOD, **change})
    assert reason_class(exc.value.field, exc.value.reason) == expected
    assert expected in REASONS


def test_the_good_record_is_good():
    assert validate_record("incident", GOOD)["source_ref"] == "JQ1"


class FakeKafka:
    """librdkafka as RegionalProducer sees it: a queue, and error reports on poll."""

    def __init__(self, report):
        self.report = report  # the producer's on_delivery
        self.queue, self.failures = [], []

    def produce(self, topic, value, key, headers=None):
        self.queue.append((topic, key))

    def poll(self, timeout=0):
        for topic, key in self.failures:
            self.report(FakeError(), FakeMsg(topic, key))
        self.failures.clear()
        return 0

    def flush(self, timeout=0):
        self.poll()
        self.queue.clear()
        return 0

    def __len__(self):
        return len(self.queue)

    def settle(self, done: int, failed: int = 0):
        """`done` leave the queue; the first `failed` of them will be reported as errors."""
        gone, self.queue = self.queue[:done], self.queue[done:]
        self.failures += gone[:failed]


class FakeError:
    def str(self):
        return "Broker: Not enough in-sync replicas"


class FakeMsg:
    def __init__(self, topic, key):
        self._topic, self._key = topic, key

    def topic(self):
        return self._topic

    def key(self):
        return self._key


def published_metric(kind):
    from producers import metrics

    return metrics.RECORDS.labels(kind, "published")._value.get()


def test_delivered_counts_come_from_the_queue_and_error_reports_without_a_report_per_message():
    from ops.settings import Settings
    from producers.regional import RegionalProducer

    class Codec:
        def encode(self, topic, record):
            return b"avro"

    producer = RegionalProducer(settings=Settings(kafka_auth="none"), codec=Codec(), region="120119", system="kakou")
    kafka = producer._producer = FakeKafka(producer._delivered)
    before = published_metric("incident")
    for i in range(5):
        producer.publish("incident", {**GOOD, "source_ref": f"JQ{i}"})
    kafka.settle(done=3, failed=1)
    producer.poll(0)
    stats = producer.stats
    assert (stats.published, stats.delivered, stats.failed, stats.pending) == (5, 2, 1, 2)
    assert "Not enough in-sync replicas" in stats.errors[0]
    # never more than Kafka acknowledged: 5 sent - 1 failed - 2 still queued
    assert published_metric("incident") - before == 2
    producer.flush()
    assert (producer.stats.delivered, producer.stats.pending) == (4, 0)
    assert published_metric("incident") - before == 4
