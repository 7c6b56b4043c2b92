"""The feed as the gateway serves it: hits and shared alerts the caller may see, read from Kafka.

intel.hit holds one copy of each hit per notified province, keyed by province code, so a
feed reads its view region's province partition; intel.alert.unique is read whole. Each
item passes `Entitlement.may_see_hit` / `may_see_alert` (region, zones, clearance) before
it leaves the server. With `follow`, the position is committed in the consumer group
`feed-<principal>-<region>` as items are sent, and a restart resumes there.

One Kafka consumer per request for now; the console issue replaces it with one consumer
per gateway process fanning out to every client.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from identity.entitlement import Entitlement
from sinks.feed import alert_for_display, hit_for_display, hit_partition

HIT_TOPIC, ALERT_TOPIC = "intel.hit", "intel.alert.unique"


@dataclass
class FeedRequest:
    view: str
    since_s: float
    follow: bool
    group: str
    fresh: bool = False  # start since_s ago even if the group has a saved position


class FeedReader:
    """Reads the two topics from the start the request asks for; `poll()` gives visible items."""

    def __init__(self, kafka_config: dict, codec, ent: Entitlement, req: FeedRequest):
        from confluent_kafka import Consumer, TopicPartition

        self.ent, self.req, self.codec = ent, req, codec
        self.consumer = Consumer({**kafka_config, "group.id": req.group, "enable.auto.commit": False,
                                  "auto.offset.reset": "latest"})
        meta = self.consumer.list_topics(timeout=10).topics
        province = ent.regions.province_of(req.view)
        tps = [TopicPartition(HIT_TOPIC, hit_partition(province, len(meta[HIT_TOPIC].partitions)))]
        tps += [TopicPartition(ALERT_TOPIC, p) for p in sorted(meta[ALERT_TOPIC].partitions)]
        committed = ({(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(tps, timeout=10)}
                     if req.follow and not req.fresh else {})
        by_time = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, int((time.time() - req.since_s) * 1000)) for tp in tps], timeout=10)}
        self.ends, assignment = {}, []
        for tp in tps:
            key = (tp.topic, tp.partition)
            _, end = self.consumer.get_watermark_offsets(tp, timeout=10)
            start = committed.get(key, -1)
            if start < 0:
                start = by_time[key] if by_time[key] >= 0 else end
            self.ends[key] = end
            assignment.append(TopicPartition(tp.topic, tp.partition, start))
        self.consumer.assign(assignment)
        self.read_to = {(tp.topic, tp.partition): tp.offset for tp in assignment}
        self._uncommitted = False
        self.described = f"{HIT_TOPIC} partition {tps[0].partition}, {ALERT_TOPIC}"

    def caught_up(self) -> bool:
        """Without follow, the feed stops at the ends seen when it started."""
        return all(self.read_to[key] >= end for key, end in self.ends.items())

    def poll(self) -> list[dict]:
        from ops.consume import consume_ready

        messages = consume_ready(self.consumer, 500, 0.2)
        items = []
        for msg in messages:
            if msg.error():
                continue
            key = (msg.topic(), msg.partition())
            self.read_to[key] = msg.offset() + 1
            if msg.value() is None or (not self.req.follow and msg.offset() >= self.ends[key]):
                continue
            record = self.codec.decode(msg.value())
            if msg.topic() == HIT_TOPIC:
                if self.ent.may_see_hit(record, self.req.view):
                    items.append({"feed_item": "hit", **hit_for_display(record)})
            elif self.ent.may_see_alert(record, self.req.view):
                items.append(alert_for_display(record))
        self._uncommitted = self._uncommitted or bool(messages)
        return items

    def commit(self) -> None:
        """After the items of the last polls were sent: a restarted follower resumes behind them."""
        if self.req.follow and self._uncommitted:
            self.consumer.commit(asynchronous=False)
            self._uncommitted = False

    def close(self) -> None:
        self.consumer.close()
