"""Records deleted by retention before a consumer group read them: counted, logged, alerted.

An outage longer than a topic's retention (a sink down for days, the jobs stopped over a long
holiday) leaves the group's committed offset below the partition's first offset: Kafka has
deleted the messages in between. Every consumer of intelbus resets to the earliest offset
there (`auto.offset.reset=earliest`), which is the right place to go on from, but it would do
so silently. So whenever a group gets partitions (from its assignment callback, before it
commits anything new), the committed offsets are compared with the partitions' first
offsets (on a thread of its own, `check_group_in_background`: the assignment never waits for it),
and each range lost is:

- counted: `intelbus_records_lost_to_retention_total{group, topic}` (offsets, so an upper bound
  on records when a transactional producer's markers were among them);
- logged as an error naming the topic, partition and offsets;
- alerted: `RecordsLostToRetention` in ops/prometheus/rules.yml;
- documented: docs/deploy.md, "Retention shorter than an outage" (what to do about it).

A group with no committed offset for a partition (a new group) has lost nothing: it starts
where its reset says.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from prometheus_client import Counter

log = logging.getLogger("intelbus.retention")

RECORDS_LOST = Counter("intelbus_records_lost_to_retention_total",
                       "Offsets deleted by retention before the consumer group read them (an outage longer than "
                       "the topic's retention), by group and topic", ["group", "topic"])


@dataclass(frozen=True)
class LostRange:
    group: str
    topic: str
    partition: int
    first: int  # the first offset deleted before the group read it (its committed offset)
    last: int   # the last one (the partition's first offset now, minus one)

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return (f"{self.topic}[{self.partition}]: offsets {self.first}-{self.last} ({self.count:,}) were deleted by "
                f"retention before group {self.group} read them")


def lost_ranges(group: str, committed: dict[tuple[str, int], int | None],
                first_offsets: dict[tuple[str, int], int]) -> list[LostRange]:
    """The ranges lost per (topic, partition): committed offset (None or negative: none) below
    the partition's first offset."""
    out = []
    for (topic, partition), offset in sorted(committed.items()):
        first = first_offsets.get((topic, partition))
        if offset is None or offset < 0 or first is None or offset >= first:
            continue
        out.append(LostRange(group, topic, partition, offset, first - 1))
    return out


def record(lost: list[LostRange]) -> None:
    for r in lost:
        RECORDS_LOST.labels(r.group, r.topic).inc(r.count)
        log.error("%s: skipped, nothing of it can be read any more; the range is counted in "
                  "intelbus_records_lost_to_retention_total (docs/deploy.md, \"Retention shorter than an outage\")",
                  r.describe())


def read_offsets(kafka_config: dict, group: str, partitions: list[tuple[str, int]], timeout: float = 10.0
                 ) -> tuple[dict[tuple[str, int], int | None], dict[tuple[str, int], int]]:
    """The group's committed offsets and the partitions' first offsets, read with a plain consumer
    of the group's id that does not join it (nothing is committed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_config, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t, p in partitions]
        committed = {(tp.topic, tp.partition): (tp.offset if tp.error is None else None)
                     for tp in consumer.committed(tps, timeout=timeout)}
        # only where the group has committed (faust's changelogs and a new group's partitions have nothing)
        first = {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout)[0]
                 for (t, p), offset in committed.items() if offset is not None and offset >= 0}
        return committed, first
    finally:
        consumer.close()


def check_group_in_background(kafka_config: dict, group: str, partitions, timeout: float = 5.0) -> threading.Thread:
    """`check_group` on a thread of its own, started now: a group's assignment never waits for it.

    Awaited in the assignment, it held the worker up whenever the broker was slow to answer
    (a broker restarting after an outage: up to a timeout per partition). On its own thread the
    committed offsets are read within milliseconds of the assignment, before the group's first
    commit (faust and the sink commit a second or more after they start processing); if the
    broker is slower than that, a loss can be missed, never invented."""
    thread = threading.Thread(target=check_group, args=(kafka_config, group, list(partitions), timeout),
                              name=f"retention-check-{group}", daemon=True)
    thread.start()
    return thread


def check_group(kafka_config: dict, group: str, partitions, timeout: float = 10.0) -> list[LostRange]:
    """Check the partitions a group was just assigned; record and return what retention deleted
    before the group read it. Never raises: a check that cannot be made is a warning."""
    partitions = sorted({(t, p) for t, p in partitions})
    if not partitions:
        return []
    try:
        committed, first = read_offsets(kafka_config, group, partitions, timeout)
    except Exception as exc:
        log.warning("group %s: could not compare its committed offsets with the first offsets of %d partitions "
                    "(%s): records deleted by retention during an outage would not be counted this time",
                    group, len(partitions), exc)
        return []
    lost = lost_ranges(group, committed, first)
    record(lost)
    return lost
