"""The matcher's look-back: per partition, once per event, forgotten with its partition,
and rebuilt from the match requests read back when a worker gets a partition."""
from __future__ import annotations

import asyncio
import json

from stream_jobs import metrics
from stream_jobs.lookback import Lookback, LookbackRestorer
from stream_jobs.stages import Incoming, MATCH_TOPIC


def ev(event_id):
    return {"event_id": event_id, "region": "120119"}


def request(*lookups, other_ops=()):
    """A match request as the dedupe stage writes it: event summaries and operations."""
    return json.dumps({"events": {e: ev(e) for e, _ in lookups},
                       "ops": [{"op": "lookup", "id": i, "event": e, "case": False} for e, i in lookups] + list(other_ops)}).encode()


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_an_event_is_remembered_once_per_identifier_however_often_it_is_read():
    lb = Lookback(clock=Clock())
    for _ in range(3):
        lb.remember(0, "RESIDENT_ID:1", ev("a"))
    lb.remember(0, "RESIDENT_ID:1", ev("b"))
    assert [e["event_id"] for e in lb.recent(0, "RESIDENT_ID:1")] == ["a", "b"]


def test_lookups_are_kept_per_partition_and_forgotten_with_it():
    lb = Lookback(clock=Clock())
    lb.remember(0, "PLATE:京A12345", ev("a"))
    lb.remember(1, "PLATE:京A12345", ev("b"))
    lb.forget(0)
    assert lb.recent(0, "PLATE:京A12345") == []
    assert [e["event_id"] for e in lb.recent(1, "PLATE:京A12345")] == ["b"]


def test_only_the_newest_lookups_of_an_identifier_and_of_the_last_minutes_count():
    clock = Clock()
    lb = Lookback(seconds=600, per_identifier=2, clock=clock)
    for i, e in enumerate("abc"):
        lb.remember(0, "PHONE:1", ev(e), at=clock.now + i)
    assert [e["event_id"] for e in lb.recent(0, "PHONE:1")] == ["b", "c"]
    clock.now += 601.5  # b (at now + 1) is now older than the look-back, c (at now + 2) is not
    assert [e["event_id"] for e in lb.recent(0, "PHONE:1")] == ["c"]


def test_a_lookup_read_again_after_its_time_is_remembered_anew():
    clock = Clock()
    lb = Lookback(seconds=60, clock=clock)
    for e in "abc":
        lb.remember(0, "PHONE:1", ev(e))
    clock.now += 61
    lb.remember(0, "PHONE:1", ev("a"))  # its request read again (a restore), at a new time
    assert [e["event_id"] for e in lb.recent(0, "PHONE:1")] == ["a"]


def test_every_lookup_of_the_last_minutes_is_kept_not_only_the_newest_few():
    lb = Lookback(clock=Clock())
    for i in range(50):
        lb.remember(0, "RESIDENT_ID:1", ev(f"e{i}"))
    assert len(lb.recent(0, "RESIDENT_ID:1")) == 50


def test_restore_remembers_the_lookups_of_requests_read_back_and_skips_the_rest():
    clock = Clock()
    lb = Lookback(seconds=600, clock=clock)
    n = lb.restore(3, [
        (clock.now - 700, request(("old", "RESIDENT_ID:1"))),  # older than the look-back
        (clock.now - 10, request(("a", "RESIDENT_ID:1"), ("a", "PHONE:2"),
                                 other_ops=[{"op": "add", "id": "PLATE:x", "event": "a"}])),
        (clock.now - 5, b"not json"),  # dead-lettered when it was first read
        (clock.now - 1, request(("b", "RESIDENT_ID:1"))),
    ])
    assert n == 3
    assert [e["event_id"] for e in lb.recent(3, "RESIDENT_ID:1")] == ["a", "b"]
    assert [e["event_id"] for e in lb.recent(3, "PHONE:2")] == ["a"]
    assert lb.recent(3, "PLATE:x") == []


class Reads:
    def __init__(self, data):
        self.data = data  # partition -> [(ts, offset, value)]
        self.calls = []

    def __call__(self, stops, since_ms):
        self.calls.append((dict(stops), since_ms))
        return {p: [(ts, v) for ts, off, v in self.data.get(p, []) if ts * 1000 >= since_ms and off < stop]
                for p, stop in stops.items()}


def batch(*partition_offsets):
    return [Incoming(MATCH_TOPIC, p, o, None, b"") for p, o in partition_offsets]


def test_a_partition_gained_is_read_back_up_to_its_first_offset_in_the_batch_once():
    clock = Clock()
    lb = Lookback(seconds=600, clock=clock)
    reads = Reads({2: [(clock.now - 30, 10, request(("a", "PHONE:1"))), (clock.now - 20, 11, request(("b", "PHONE:1"))),
                       (clock.now - 10, 12, request(("c", "PHONE:1")))]})
    restorer = LookbackRestorer(lb, reads, topic=MATCH_TOPIC)
    restorer.on_assigned([1, 2])
    restored_before = metrics.LOOKBACK_RESTORED._value.get()
    asyncio.run(restorer.before(batch((2, 12), (2, 13))))
    # offset 12 is about to be processed: only what came before it is read back
    assert reads.calls == [({2: 12}, int((clock.now - 600) * 1000))]
    assert [e["event_id"] for e in lb.recent(2, "PHONE:1")] == ["a", "b"]
    assert metrics.LOOKBACK_RESTORED._value.get() - restored_before == 2  # what an operator sees of a restart's cost
    asyncio.run(restorer.before(batch((2, 14))))  # restored already: not read again
    assert len(reads.calls) == 1
    asyncio.run(restorer.before(batch((1, 0))))  # partition 1's turn when it has traffic
    assert len(reads.calls) == 2 and restorer.pending == set()


def test_a_partition_lost_is_forgotten_and_one_kept_through_a_rebalance_is_not_read_again():
    clock = Clock()
    lb = Lookback(clock=clock)
    reads = Reads({})
    restorer = LookbackRestorer(lb, reads, topic=MATCH_TOPIC)
    restorer.on_assigned([0, 1])
    asyncio.run(restorer.before(batch((0, 5), (1, 5))))
    lb.remember(0, "PHONE:1", ev("a"))
    lb.remember(1, "PHONE:1", ev("b"))
    restorer.on_assigned([1])  # partition 0 went to another worker
    assert lb.recent(0, "PHONE:1") == [] and restorer.pending == set()
    assert [e["event_id"] for e in lb.recent(1, "PHONE:1")] == ["b"]
    restorer.on_assigned([0, 1])  # and came back: what it saw meanwhile is read back
    assert restorer.pending == {0}


def test_a_look_back_that_cannot_be_read_leaves_the_worker_running_with_it_empty():
    def broken(stops, since_ms):
        raise RuntimeError("broker away")

    lb = Lookback(clock=Clock())
    restorer = LookbackRestorer(lb, broken, topic=MATCH_TOPIC)
    restorer.on_assigned([0])
    asyncio.run(restorer.before(batch((0, 7))))  # no exception: the batch runs
    assert restorer.pending == set() and lb.recent(0, "PHONE:1") == []


def test_remembered_events_come_back_as_they_went_in_and_nothing_is_left_to_the_collector():
    import gc

    clock = Clock()
    lb = Lookback(clock=clock)
    event = {"event_id": "a", "region": "120119", "rev": 2, "occurred": 5, "until": None, "scope": ["110000", "Z:JJJ"],
             "avro": "AAEC"}
    for i in range(1000):
        lb.remember(i % 3, f"PHONE:{i % 7}", {**event, "event_id": f"e{i}"})
        clock.now += 0.1
    lb.remember(0, "PHONE:x", event)
    assert lb.recent(0, "PHONE:x") == [event]
    # a young collection walks every tracked object made since the last one: the look-back's
    # lookups, one per identifier of every event, must not be among them
    slices = [sl for per_partition in lb._by_partition.values() for sl in per_partition.values()]
    assert len(slices) >= 6 and not any(gc.is_tracked(sl) for sl in slices)
    assert lb.entries == 1001


def test_when_full_the_oldest_lookups_are_forgotten_first(caplog):
    clock = Clock()
    lb = Lookback(seconds=120, max_entries=100, clock=clock)
    for i in range(150):
        lb.remember(0, f"PHONE:{i}", ev(f"e{i}"))
        clock.now += 0.5
    assert lb.entries <= 100
    assert lb.recent(0, "PHONE:149") and not lb.recent(0, "PHONE:0")
    assert "look-back full" in caplog.text


class FakeError:
    def __init__(self, code, text):
        self._code, self.text = code, text

    def code(self):
        return self._code

    def __str__(self):
        return self.text


class OffsetsAnswers:
    """offsets_for_times answering from a script: one {partition: offset or FakeError} per call."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked = []

    def offsets_for_times(self, tps, timeout):
        from types import SimpleNamespace

        self.asked.append(sorted(tp.partition for tp in tps))
        answer = self.answers.pop(0)
        # a TopicPartition's fields as librdkafka sets them: an error on a partition it could not answer
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition,
                                offset=-1 if isinstance(answer[tp.partition], FakeError) else answer[tp.partition],
                                error=answer[tp.partition] if isinstance(answer[tp.partition], FakeError) else None)
                for tp in tps]


def test_a_partition_whose_leader_is_moving_is_asked_again_not_left_with_an_empty_look_back():
    from stream_jobs.lookback import where_since_begins

    moving = FakeError(6, "NOT_LEADER_OR_FOLLOWER")
    consumer = OffsetsAnswers({0: 40, 1: moving, 2: -1}, {1: moving}, {1: 17})
    slept = []
    starts = where_since_begins(consumer, "intel.match.requests", {0: 50, 1: 30, 2: 9}, 0, 60.0,
                                sleep=slept.append, clock=lambda: 0.0)
    # partition 1 read from offset 17 once its new leader answered; partition 2 has nothing since
    assert starts == {0: 40, 1: 17}
    assert consumer.asked == [[0, 1, 2], [1], [1]] and len(slept) == 2


def test_a_partition_never_answered_is_named_in_a_warning_after_the_timeout(caplog):
    from stream_jobs.lookback import where_since_begins

    now = [0.0]

    def sleep(s):
        now[0] += s

    moving = FakeError(6, "NOT_LEADER_OR_FOLLOWER")
    consumer = OffsetsAnswers(*[{0: 5, 1: moving}] + [{1: moving}] * 10)
    starts = where_since_begins(consumer, "intel.match.requests", {0: 50, 1: 30}, 0, 2.0, sleep=sleep,
                                clock=lambda: now[0], short="the look-back is shorter for them")
    assert starts == {0: 5}
    assert "intel.match.requests [1]" in caplog.text and "NOT_LEADER_OR_FOLLOWER" in caplog.text
    assert "the look-back is shorter for them" in caplog.text


def test_a_refused_partition_raises_at_once():
    import pytest
    from confluent_kafka import KafkaError, KafkaException

    from stream_jobs.lookback import where_since_begins

    consumer = OffsetsAnswers({0: FakeError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "TOPIC_AUTHORIZATION_FAILED")})
    with pytest.raises(KafkaException):
        where_since_begins(consumer, "intel.match.requests", {0: 50}, 0, 60.0, refused=(KafkaError.TOPIC_AUTHORIZATION_FAILED,),
                           sleep=lambda s: None)
