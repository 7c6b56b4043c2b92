"""`intelbus feed`: a command center's live feed of the hits that concern its region.

intel.hit holds one copy of each hit per notified province, keyed by province code, so a
feed reads one partition: its province's. It shows what the region may see
(`RegionTable.may_see`: its own hits, those of regions inside it, and of its zones),
newest last. Its consumer group is `feed-<region>-<user>`: with --follow, the position is
committed as hits are shown, and a restart resumes there.
"""
from __future__ import annotations

import getpass
import json
import re
import sys
import time

from sinks.queries import display_width, pad

FEED_EPILOG = """\
Without --follow the feed prints the hits of the last --since (default 24h) and exits;
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
    topic = "intel.hit"
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    tp = TopicPartition(topic, hit_partition(regions.province_of(args.region), partitions))
    start = None
    if args.follow:
        committed = consumer.committed([tp], timeout=10)[0]
        if committed.offset >= 0:
            start = committed.offset
    if start is None:
        by_time = consumer.offsets_for_times([TopicPartition(topic, tp.partition, int((time.time() - since) * 1000))], timeout=10)[0]
        start = by_time.offset if by_time.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=10)[1]
    _, end = consumer.get_watermark_offsets(tp, timeout=10)
    consumer.assign([TopicPartition(topic, tp.partition, start)])
    shown = 0
    try:
        while True:
            if not args.follow and consumer.position([tp])[0].offset >= end:
                break
            messages = consumer.consume(500, 0.2)
            batch = []
            for msg in messages:
                if msg.error():
                    continue
                if not args.follow and msg.offset() >= end:
                    continue
                hit = codec.decode(msg.value())
                if regions.may_see(args.region, hit["notify_regions"]):
                    batch.append(hit_for_display(hit))
            for hit in batch:
                print(json.dumps(hit, ensure_ascii=False, default=str) if args.json else render_block(hit, regions) + "\n",
                      flush=True)
            if batch:
                shown += len(batch)
                audit(executor, user=user, region=args.region, purpose=args.purpose, action="feed",
                      query_name="feed", query_text=f"intel.hit partition {tp.partition}",
                      params={"hit_ids": [h["hit_id"] for h in batch][:100]}, row_count=len(batch))
            if messages and args.follow:
                consumer.commit(asynchronous=False)
            if not messages and not args.follow and consumer.position([tp])[0].offset >= end:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if shown == 0:
            audit(executor, user=user, region=args.region, purpose=args.purpose, action="feed", query_name="feed",
                  query_text=f"intel.hit partition {tp.partition}", params={}, row_count=0)
        consumer.close()
    if not args.json:
        print(f"({shown} hits for {args.region} {regions.name(args.region)})", file=sys.stderr)
    return 0
