"""Consumer-group lag: how far a group is behind the end of its topics."""
from __future__ import annotations

import time

from schemas import catalog


class LagProbe:
    """Reads a consumer group's committed offsets and the topics' end offsets.

    One consumer that carries the group's id but never joins the group: `committed()` is a
    plain OffsetFetch, so probing does not disturb the group. (The admin API's
    list_consumer_group_offsets segfaulted inside the faust worker on a freshly formatted
    broker, while the offsets topic was still loading.)
    """

    def __init__(self, settings, group: str, topics: list[str], *, user: str = "intelbus-admin"):
        from confluent_kafka import Consumer

        self.group, self.topics = group, list(topics)
        # the services probe as themselves (their group is theirs to describe), operators' tools as the admin
        self._probe = Consumer({**settings.kafka_config(user), "group.id": group, "enable.auto.commit": False})

    def lag(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> messages the group has not committed yet."""
        from confluent_kafka import TopicPartition

        partitions = []
        for topic in self.topics:
            meta = self._probe.list_topics(topic, timeout=10).topics[topic]
            partitions += [TopicPartition(topic, p) for p in meta.partitions]
        committed = self._probe.committed(partitions, timeout=10)
        lag = {}
        for tp in committed:
            _, high = self._probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            lag[(tp.topic, tp.partition)] = high - (tp.offset if tp.offset >= 0 else 0)
        return lag

    def close(self) -> None:
        self._probe.close()


def group_lag(settings, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> messages the group has not committed yet."""
    probe = LagProbe(settings, group, topics)
    try:
        return probe.lag()
    finally:
        probe.close()


JOBS_TOPICS = [*catalog.INPUT_TOPICS, catalog.MATCH_REQUESTS_TOPIC, catalog.HIT_CANDIDATES_TOPIC]
SINK_TOPICS = [*catalog.UNIQUE_TOPICS, catalog.HIT_TOPIC, catalog.DLQ_TOPIC, catalog.DUPLICATES_TOPIC, catalog.WORKFLOW_TOPIC]


def wait_for_zero_lag(settings, group: str, topics: list[str], *, timeout: float = 300.0, stable: int = 3) -> float:
    """Block until the group has consumed everything (seen `stable` times in a row); returns seconds waited."""
    started = time.monotonic()
    zero_in_a_row = 0
    while time.monotonic() - started < timeout:
        total = sum(group_lag(settings, group, topics).values())
        zero_in_a_row = zero_in_a_row + 1 if total == 0 else 0
        if zero_in_a_row >= stable:
            return time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(f"group {group} still has lag after {timeout:.0f}s")
