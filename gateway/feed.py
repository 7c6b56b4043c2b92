"""The feed as the gateway serves it: hits, shared alerts and workflow items the caller may see, read from Kafka.

intel.hit holds one copy of each hit per notified province, keyed by province code, so a
feed reads its view region's province partition; intel.alert.unique and intel.workflow
(keyed by item id) are read whole. Each item passes `Entitlement.may_see_hit` /
`may_see_alert` / `may_see_workflow` (region, zones, clearance) before it leaves the server. With `follow`, the position is committed in the consumer group
`feed-<principal>-<region>` as items are sent, and a restart resumes there.

One Kafka consumer per request for now; the console issue replaces it with one consumer
per gateway process fanning out to every client.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from identity.entitlement import Entitlement
from schemas.catalog import HIT_TOPIC, WORKFLOW_TOPIC, unique_topic
from sinks.feed import alert_for_display, hit_for_display, hit_partition

ALERT_TOPIC = unique_topic("alert")
# the times of a workflow event, as the API's items carry them (epoch ms, gateway/workflow_api.EVENT_FIELDS)
_WORKFLOW_TIMES = {"at": "at_ms", "due_at": "due_ms", "scheduled_at": "scheduled_ms"}
# what a wall or a terminal says of a workflow event (docs/workflows.md has the table)
WORKFLOW_KIND_ZH = {"HIT_FOLLOW_UP": "命中核查", "ASSISTANCE_REQUEST": "协查请求", "DIRECTIVE": "指令"}
WORKFLOW_EVENT_ZH = {"OPENED": "待核查", "SENT": "新协查", "ISSUED": "新指令", "REMINDED": "催办", "RESENT": "重发",
                     "ESCALATED": "升级", "ANSWERS_OFFERED": "可复用反馈", "STALE_LISTING": "在逃信息待撤销"}


def copy_key(msg) -> str:
    """The province an intel.hit message is the copy for (its key), or "" (another topic, no key)."""
    if msg.topic() != HIT_TOPIC:
        return ""
    key = msg.key()
    return key.decode("ascii", "replace") if key else ""


def shown_copy(copy_for: str, view: str) -> bool:
    """Is a hit copy keyed `copy_for` the one a view shows? intel.hit holds one copy of a hit per notified
    province, keyed by its code, and a view reads its province's partition; provinces share partitions
    (31 provinces in 6: Shanghai's and Jiangsu's copies, say, are both in partition 4), so without this a
    Shanghai-Jiangsu hit reached a Shanghai wall twice. A copy without a key (none is written so) is shown."""
    return not copy_for or copy_for == view[:2] + "0000"


def may_see_workflow(ent: Entitlement, event: dict, view: str) -> bool:
    """The workflow API's rule (gateway/workflow_api `may_see`): cleared for its classification, and the
    view region may see one of the regions or zones it notifies (`RegionTable.may_see`, as for hits)."""
    return event.get("classification") in ent.classifications and ent.regions.may_see(view, event.get("notify") or [])


def workflow_for_display(event: dict) -> dict:
    """A decoded intel.workflow event as plain JSON: ids as text, times as epoch ms (at_ms, due_ms, scheduled_ms)."""
    out = {"feed_item": "workflow"}
    for k, v in event.items():
        if k in _WORKFLOW_TIMES:
            out[_WORKFLOW_TIMES[k]] = None if v is None else (int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v)
        else:
            out[k] = str(v) if k == "event_id" else v
    return out


def render_workflow_line(item: dict, regions) -> str:
    """One line per workflow event for a terminal: what, which item, to whom, due when (CST), the words."""
    from schemas.times import cst

    def who(code):
        name = regions.name(code.split("/")[0]) if code and code[:1].isdigit() else ""
        return f"{code} {name}".strip()

    what = WORKFLOW_EVENT_ZH.get(item.get("event_type"), "")
    head = (f"[待办 workflow] {WORKFLOW_KIND_ZH.get(item.get('item_kind'), item.get('item_kind'))} "
            f"{item.get('event_type')}{' ' + what if what else ''} {item.get('item_id')}")
    parts = [head, f"at {cst((item.get('at_ms') or 0) / 1000)}"]
    if item.get("to"):
        parts.append("to " + ", ".join(who(t) for t in item["to"]))
    if item.get("due_ms"):
        parts.append(f"due {cst(item['due_ms'] / 1000)}")
    if item.get("text"):
        parts.append(str(item["text"]))
    return " · ".join(parts)


@dataclass
class FeedRequest:
    view: str
    since_s: float
    follow: bool
    group: str
    fresh: bool = False  # start since_s ago even if the group has a saved position


class FeedReader:
    """Reads hits and alerts (and, following, workflow events) from the start the request asks for; `poll()`
    gives visible items."""

    def __init__(self, kafka_config: dict, codec, ent: Entitlement, req: FeedRequest):
        from confluent_kafka import Consumer, TopicPartition

        self.ent, self.req, self.codec = ent, req, codec
        self.consumer = Consumer({**kafka_config, "group.id": req.group, "enable.auto.commit": False,
                                  "auto.offset.reset": "latest"})
        meta = self.consumer.list_topics(timeout=10).topics
        province = ent.regions.province_of(req.view)
        tps = [TopicPartition(HIT_TOPIC, hit_partition(province, len(meta[HIT_TOPIC].partitions)))]
        tps += [TopicPartition(ALERT_TOPIC, p) for p in sorted(meta[ALERT_TOPIC].partitions)]
        # workflow items are live news (a request to answer now): only a following feed shows them; their
        # history is the queue's and `request list`'s. A stack without intel.workflow still serves the rest.
        self.workflow = req.follow and WORKFLOW_TOPIC in meta
        if self.workflow:
            tps += [TopicPartition(WORKFLOW_TOPIC, p) for p in sorted(meta[WORKFLOW_TOPIC].partitions)]
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
        self.described = f"{HIT_TOPIC} partition {tps[0].partition}, {ALERT_TOPIC}" + (
            f", {WORKFLOW_TOPIC}" if self.workflow else "")

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
                if shown_copy(copy_key(msg), self.req.view) and self.ent.may_see_hit(record, self.req.view):
                    items.append({"feed_item": "hit", **hit_for_display(record)})
            elif msg.topic() == WORKFLOW_TOPIC:
                if may_see_workflow(self.ent, record, self.req.view):
                    items.append(workflow_for_display(record))
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
