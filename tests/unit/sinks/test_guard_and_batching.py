from __future__ import annotations

import pytest

from sinks.batching import Backoff, Batch, FlushPolicy, RowRejected, bisect_rejects
from sinks.queries import display_width, pad


def test_batches_flush_on_rows_or_time_and_track_next_offsets():
    b = Batch(started=0.0)
    assert not b.due(FlushPolicy(2, 1.0), now=5.0)  # nothing in it
    b.add("events", (1,))
    b.advance("intel.incident.unique", 3, 41)
    b.advance("intel.incident.unique", 3, 40)
    assert b.offsets == {("intel.incident.unique", 3): 42}
    assert not b.due(FlushPolicy(2, 1.0), now=0.5) and b.due(FlushPolicy(2, 1.0), now=1.0)
    b.add("events", (2,))
    assert b.due(FlushPolicy(2, 10.0), now=0.1)


def test_backoff_doubles_up_to_its_cap():
    assert [Backoff().delay(n) for n in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 30.0]


def test_bisect_finds_the_rows_clickhouse_refuses():
    stored = []

    def insert(rows):
        if any(r == "bad" for r in rows):
            raise RowRejected("Cannot parse")
        stored.extend(rows)

    ok, refused = bisect_rejects(["a", "b", "bad", "c", "bad"], insert)
    assert ok == 3 and sorted(stored) == ["a", "b", "c"] and [r for r, _ in refused] == ["bad", "bad"]


def test_chinese_text_aligns_by_display_width():
    assert display_width("蓟州区") == 6 and pad("蓟州区", 8) == "蓟州区  "


def test_a_record_refused_for_its_proof_is_stored_as_a_dead_letter_and_an_audit_row():
    from sinks.rows import AUDIT_COLUMNS, COLUMNS
    from sinks.sink import DLQ_TOPIC, RowBuilder

    class Msg:
        def __init__(self, stage):
            self.stage = stage

        def topic(self):
            return DLQ_TOPIC

        def value(self):
            return self.stage.encode()

    def decode(value):
        return {"dlq_id": "d1", "stage": value.decode(), "source": "intel.incident/3/41", "kind": "incident",
                "field": None, "reason": "UNSIGNED: the record carries no intelbus-key-id header", "raw": b"x",
                "source_region": "110105", "source_system": "kakou", "failed_at": 1_795_000_000_000}

    rows = RowBuilder(decode)(Msg("VERIFY"))
    assert [t for t, _ in rows] == ["dead_letters", "audit_log"]
    audit = dict(zip(AUDIT_COLUMNS, rows[1][1]))
    assert (audit["user"], audit["action"], audit["outcome"], audit["region"]) == (
        "(publisher) kakou", "verify", "refused", "110105")
    assert audit["reason"].startswith("UNSIGNED") and len(rows[1][1]) == len(COLUMNS["audit_log"])
    assert [t for t, _ in RowBuilder(decode)(Msg("DECODE"))] == ["dead_letters"]  # other refusals: no audit row


class _Consumer:
    """A consumer whose synchronous commit fails with the given errors first."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), 0

    def commit(self, offsets, asynchronous):
        from confluent_kafka import KafkaException

        assert asynchronous is False
        self.calls += 1
        if self.errors:
            raise KafkaException(self.errors.pop(0))


def test_a_commit_that_times_out_while_the_coordinator_s_broker_is_away_is_tried_again_not_the_end_of_the_sink():
    from confluent_kafka import KafkaError

    from sinks.sink import commit_with_retries

    timed_out = KafkaError(KafkaError.REQUEST_TIMED_OUT, "Broker: Request timed out", retriable=True)
    consumer, slept = _Consumer([timed_out, timed_out]), []
    commit_with_retries(consumer, ["tp"], Backoff(), sleep=slept.append)
    assert consumer.calls == 3 and slept == [0.5, 1.0]


def test_a_commit_refused_because_the_partitions_moved_or_after_the_retries_is_raised():
    from confluent_kafka import KafkaError, KafkaException

    from sinks.sink import COMMIT_ATTEMPTS, commit_with_retries

    moved = KafkaError(KafkaError.ILLEGAL_GENERATION, "Broker: Specified group generation id is not valid")
    with pytest.raises(KafkaException, match="generation"):
        commit_with_retries(_Consumer([moved]), ["tp"], Backoff(), sleep=lambda s: None)
    timed_out = KafkaError(KafkaError.REQUEST_TIMED_OUT, "Broker: Request timed out", retriable=True)
    consumer = _Consumer([timed_out] * 20)
    with pytest.raises(KafkaException, match="timed out"):
        commit_with_retries(consumer, ["tp"], Backoff(), sleep=lambda s: None)
    assert consumer.calls == COMMIT_ATTEMPTS


def test_the_sink_consumer_asks_the_broker_for_the_fetch_wait_of_its_settings():
    from ops.settings import load_settings
    from sinks.sink import consumer_config

    default = consumer_config(load_settings(environ={}))
    # 256 KiB or 250 ms: the sink flushes every second anyway (librdkafka's own is 1 byte, answered at once)
    assert (default["fetch.min.bytes"], default["fetch.wait.max.ms"]) == (262_144, 250)
    tuned = consumer_config(load_settings(environ={"INTELBUS_SINK_FETCH_MIN_BYTES": "1",
                                                   "INTELBUS_SINK_FETCH_MAX_WAIT_MS": "500"}))
    assert (tuned["fetch.min.bytes"], tuned["fetch.wait.max.ms"]) == (1, 500)
