"""`intelbus feed`: a command center's live feed of the hits and alerts that concern its region.

intel.hit holds one copy of each hit per notified province, keyed by province code, so a
feed reads one partition: its province's. It shows what the region may see
(`RegionTable.may_see`: its own hits, those of regions inside it, and of its zones),
newest last. Alerts shared with the region (their `share_scope` names the region, a
region inside it, one of its ancestors or one of its zones) come from intel.alert.unique.
Its consumer group is `feed-<region>-<user>`: with --follow, the position is committed as
items are shown, and a restart resumes there.
"""
from __future__ import annotations

import getpass
import json
import re
import sys
import time

from ops.consume import consume_ready
from sinks.queries import display_width, pad

FEED_EPILOG = """\
Without --follow the feed prints the hits and shared alerts of the last --since (default 24h) and exits;
with --follow it keeps printing as hits arrive and resumes, after a restart, where it
stopped (consumer group feed-<region>-<user>). Every read is written to the audit log.

Examples:
  intelbus feed --region 130000 --follow          # Hebei's command center, counties included
  intelbus feed --region 120119 --since 2h --json  # Jizhou, last two hours, one JSON per line
"""

_DURATION = re.compile(r"(\d+)\s*(s|m|h|d)")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 30m, 2h, 7d)")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def hit_partition(province: str, partitions: int) -> int:
    """The partition librdkafka's murmur2 partitioner gives a province key (Java-compatible)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(province.encode()) & 0x7FFFFFFF) % partitions


def hit_for_display(hit: dict) -> dict:
    """A decoded hit as plain JSON: ids as text, the two records parsed."""
    out = {k: (str(v) if k in ("hit_id", "trigger_event_id") else v) for k, v in hit.items()}
    for name in ("record", "trigger"):
        try:
            out[name] = json.loads(hit[name])
        except (TypeError, ValueError):
            pass
    return out


def _age(at, now: float) -> str:
    stamp = at.timestamp() if hasattr(at, "timestamp") else at / 1000
    seconds = max(0, int(now - stamp))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"


_TYPE_ZH = {"WANTED_PERSON": "在逃人员", "WATCH_MATCH": "布控比中", "CASE_LINK": "串并案线索"}


def render_block(hit: dict, regions, now: float | None = None) -> str:
    """One readable block per hit; labels padded by display width, so Chinese text lines up."""
    now = time.time() if now is None else now
    record, trigger = hit["record"], hit["trigger"]

    def region(code):
        return f"{code} {regions.name(code)}"

    if hit["record_kind"] == "WANTED":
        person = record.get("person", {})
        what = (f"wanted {record.get('source_ref')} rev {record.get('revision')}: {person.get('name') or ''} "
                f"{person.get('id_number')} · {record.get('offence')} · danger {record.get('danger_level')}")
    elif hit["record_kind"] == "ALERT":
        what = f"watch {record.get('source_ref')}: {record.get('title')} · {record.get('priority')}"
    else:
        what = f"incident {record.get('source_ref')}: {record.get('incident_type')} at {record.get('occurred_at')}"
    location = trigger.get("location") or {}
    event = (f"{trigger.get('incident_type') or trigger.get('alert_type')} {trigger.get('source_ref')} "
             f"at {trigger.get('occurred_at')} {location.get('address') or ''}").strip()
    rows = [
        ("命中 hit", f"{hit['hit_type']} {_TYPE_ZH.get(hit['hit_type'], '')} · {hit['classification']} · {_age(hit['detected_at'], now)}"),
        ("记录方 owner", region(hit["owner_region"])),
        ("发现地 seen in", region(hit["hit_region"])),
        ("比中 matched on", f"{hit['matched_on']['kind']} {hit['matched_on']['value']}"),
        ("记录 record", what),
        ("事件 event", event),
        ("通知 notify", ", ".join(hit["notify_regions"])),
    ]
    width = max(display_width(label) for label, _ in rows)
    lines = [f"── {hit['hit_id']} " + "─" * 20]
    lines += [f"  {pad(label, width)}  {value}" for label, value in rows]
    return "\n".join(lines)


def alert_shared_with(region: str, scope: list[str], regions) -> bool:
    """An alert's share_scope reaches the region: names it, a region inside it, an ancestor of it or a zone of it."""
    # may_see covers the region, regions inside it and its zones; sharing with an ancestor is the rest
    return regions.may_see(region, scope) or any(regions.is_within(region, s) for s in scope)


def alert_for_display(alert: dict) -> dict:
    return {"feed_item": "alert", **{k: (str(v) if k == "event_id" else v) for k, v in alert.items()}}


def render_alert_block(alert: dict, regions, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [
        ("协查 alert", f"{alert['alert_type']} · {alert['priority']} · {alert['status']} · {alert['classification']} · "
                      f"{_age(alert['reported_at'], now)}"),
        ("发布方 from", f"{alert['source_region']} {regions.name(alert['source_region'])} ({alert['source_system']} "
                       f"{alert['source_ref']} rev {alert['revision']})"),
        ("标题 title", alert["title"]),
        ("对象 subjects", ", ".join([p["id_number"] for p in alert.get("persons") or []]
                                   + [v["plate"] for v in alert.get("vehicles") or []] + list(alert.get("phones") or []))
         or "-"),
        ("共享 shared with", ", ".join(alert["share_scope"])),
    ]
    width = max(display_width(label) for label, _ in rows)
    lines = [f"── alert {alert['event_id']} " + "─" * 14]
    lines += [f"  {pad(label, width)}  {value}" for label, value in rows]
    return "\n".join(lines)


def add_feed(p):
    p.add_argument("--region", required=True, help="the command center's region code (a province sees its counties)")
    p.add_argument("--follow", action="store_true", help="keep printing hits as they arrive (Ctrl-C to stop)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit and line")
    p.add_argument("--since", default="24h", help="how far back to start when there is no saved position (default 24h)")
    p.add_argument("--user", default=None, help="who reads (default: the OS user); part of the consumer group name")
    p.add_argument("--purpose", default="live feed", help="recorded in the audit log")
    p.epilog = FEED_EPILOG

    def run(args):
        return feed_command(args)

    return run


def feed_command(args) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from ops.settings import load_settings
    from schemas.regions import load_regions, validate_region_code
    from schemas.wire import SchemaCodec
    from sinks.engine import DriverExecutor
    from sinks.queries import audit

    settings = load_settings()
    regions = load_regions()
    try:
        validate_region_code(args.region)
        since = parse_duration(args.since)
    except ValueError as exc:
        print(f"intelbus feed: {exc}", file=sys.stderr)
        return 2
    user = args.user or getpass.getuser()
    codec = SchemaCodec(url=settings.registry_url)
    consumer = Consumer({**settings.kafka_config(), "group.id": f"feed-{args.region}-{user}",
                         "enable.auto.commit": False, "auto.offset.reset": "latest"})
    executor = DriverExecutor(settings.clickhouse_url)
    hit_topic, alert_topic = "intel.hit", "intel.alert.unique"
    meta = consumer.list_topics(timeout=10).topics
    tps = [TopicPartition(hit_topic, hit_partition(regions.province_of(args.region), len(meta[hit_topic].partitions)))]
    tps += [TopicPartition(alert_topic, p) for p in sorted(meta[alert_topic].partitions)]
    committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)} if args.follow else {}
    by_time = {(tp.topic, tp.partition): tp.offset for tp in consumer.offsets_for_times(
        [TopicPartition(tp.topic, tp.partition, int((time.time() - since) * 1000)) for tp in tps], timeout=10)}
    ends, assignment = {}, []
    for tp in tps:
        key = (tp.topic, tp.partition)
        _, end = consumer.get_watermark_offsets(tp, timeout=10)
        start = committed.get(key, -1)
        if start < 0:
            start = by_time[key] if by_time[key] >= 0 else end
        ends[key] = end
        assignment.append(TopicPartition(tp.topic, tp.partition, start))
    consumer.assign(assignment)
    described = f"intel.hit partition {tps[0].partition}, intel.alert.unique"

    # how far each partition has been read: without --follow, the feed stops at the ends seen at start
    read_to = {(tp.topic, tp.partition): tp.offset for tp in assignment}

    def caught_up() -> bool:
        return all(read_to[key] >= end for key, end in ends.items())

    shown = 0
    try:
        while True:
            if not args.follow and caught_up():
                break
            messages = consume_ready(consumer, 500, 0.2)  # a hit as soon as it is there
            batch = []
            for msg in messages:
                if msg.error():
                    continue
                read_to[(msg.topic(), msg.partition())] = msg.offset() + 1
                if msg.value() is None:
                    continue
                if not args.follow and msg.offset() >= ends[(msg.topic(), msg.partition())]:
                    continue
                if msg.topic() == hit_topic:
                    hit = codec.decode(msg.value())
                    if regions.may_see(args.region, hit["notify_regions"]):
                        batch.append(("hit", hit_for_display(hit)))
                else:
                    alert = codec.decode(msg.value())
                    if alert_shared_with(args.region, alert.get("share_scope") or [], regions):
                        batch.append(("alert", alert_for_display(alert)))
            for kind, item in batch:
                if args.json:
                    print(json.dumps(item, ensure_ascii=False, default=str), flush=True)
                else:
                    print((render_block(item, regions) if kind == "hit" else render_alert_block(item, regions)) + "\n",
                          flush=True)
            if batch:
                shown += len(batch)
                audit(executor, user=user, region=args.region, purpose=args.purpose, action="feed",
                      query_name="feed", query_text=described,
                      params={"hit_ids": [i["hit_id"] for k, i in batch if k == "hit"][:100],
                              "alert_event_ids": [i["event_id"] for k, i in batch if k == "alert"][:100]},
                      row_count=len(batch))
            if messages and args.follow:
                consumer.commit(asynchronous=False)
    except KeyboardInterrupt:
        pass
    finally:
        if shown == 0:
            audit(executor, user=user, region=args.region, purpose=args.purpose, action="feed", query_name="feed",
                  query_text=described, params={}, row_count=0)
        consumer.close()
    if not args.json:
        print(f"({shown} hits and shared alerts for {args.region} {regions.name(args.region)})", file=sys.stderr)
    return 0
