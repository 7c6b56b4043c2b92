"""`intelbus verify`: compare what the bus produced with a simulator's ground truth.

Reads intel.hit and the unique event topics from the beginning, keeps what belongs to the
simulated run (its source_ref prefix), and reports recall, false hits, duplicate hits and
the count of distinct events and of input messages dropped as duplicates.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Verdict:
    expected_hits: int
    found_hits: int
    missing: list[dict] = field(default_factory=list)
    false_hits: list[dict] = field(default_factory=list)
    duplicate_hits: int = 0          # the same hit_id on intel.hit more often than its province copies
    expected_events: int = 0
    distinct_events: int = 0
    expected_duplicates: int = 0
    duplicates_dropped: int = 0      # distinct input messages on intel.duplicates (a replayed drop counts once)
    by_type: dict = field(default_factory=dict)  # hit type -> {expected, found, missing, false}

    @property
    def recall(self) -> float:
        return 1.0 if not self.expected_hits else (self.expected_hits - len(self.missing)) / self.expected_hits

    @property
    def exact(self) -> bool:
        return not self.missing and not self.false_hits and not self.duplicate_hits and \
            self.distinct_events == self.expected_events and self.duplicates_dropped == self.expected_duplicates

    def summary(self) -> dict:
        return {"expected_hits": self.expected_hits, "found_hits": self.found_hits, "recall": round(self.recall, 6),
                "missing": len(self.missing), "false_hits": len(self.false_hits),
                "duplicate_hits": self.duplicate_hits, "expected_events": self.expected_events,
                "distinct_events": self.distinct_events, "expected_duplicates": self.expected_duplicates,
                "duplicates_dropped": self.duplicates_dropped, "by_type": self.by_type, "exact": self.exact}


def load_truth(path: str) -> tuple[dict, dict[str, dict]]:
    summary, hits = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            if item.get("type") == "summary":
                summary = item
            else:
                hits[item["hit_id"]] = item
    return summary, hits


def _ref_of(record_key: str) -> str:
    return record_key.split("/", 2)[2] if record_key.count("/") >= 2 else ""


def read_topic(settings, topics: list[str], *, idle_seconds: float = 3.0, timeout: float = 600.0):
    """Every message of the topics, from the beginning until `idle_seconds` bring nothing new."""
    from confluent_kafka import Consumer, TopicPartition

    from ops.kafka_auth import ADMIN

    consumer = Consumer({**settings.kafka_config(ADMIN), "group.id": f"verify-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        assignment = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            assignment += [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(assignment)
        last, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - last < idle_seconds and time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.5)
            for msg in batch:
                if not msg.error():
                    yield msg
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()


def verify(settings, truth_path: str, *, idle_seconds: float = 3.0) -> Verdict:
    from schemas.wire import SchemaCodec

    summary, expected = load_truth(truth_path)
    prefix = summary.get("ref_prefix", "")
    codec = SchemaCodec(url=settings.registry_url)
    copies: dict[str, list[str]] = {}
    found: dict[str, dict] = {}
    for msg in read_topic(settings, ["intel.hit"], idle_seconds=idle_seconds):
        hit = codec.decode(msg.value())
        if prefix and not _ref_of(hit["record_key"]).startswith(prefix):
            continue
        hid = str(hit["hit_id"])
        found[hid] = hit
        copies.setdefault(hid, []).append(msg.key().decode() if msg.key() else "")
    verdict = Verdict(expected_hits=len(expected), found_hits=len(found))
    verdict.missing = [h for hid, h in expected.items() if hid not in found]
    verdict.false_hits = [
        {"hit_id": hid, "hit_type": h["hit_type"], "record_key": h["record_key"],
         "trigger_event_id": str(h["trigger_event_id"]), "owner_region": h["owner_region"], "hit_region": h["hit_region"]}
        for hid, h in found.items() if hid not in expected
    ]
    verdict.duplicate_hits = sum(len(keys) - len(set(keys)) for keys in copies.values())
    verdict.by_type = hits_by_type(expected, found)
    events = set()
    unique_topics = ["intel.alert.unique", "intel.wanted.unique", "intel.incident.unique"]
    for msg in read_topic(settings, unique_topics, idle_seconds=idle_seconds):
        key = (msg.key() or b"").decode()
        if prefix and not _ref_of(key).startswith(prefix):
            continue
        events.add(str(codec.decode(msg.value())["event_id"]))
    verdict.expected_events = summary.get("distinct_events", 0)
    verdict.distinct_events = len(events)
    verdict.expected_duplicates = summary.get("duplicates", 0)
    verdict.duplicates_dropped = count_dropped_duplicates(
        (msg.value() for msg in read_topic(settings, ["intel.duplicates"], idle_seconds=idle_seconds)), prefix)
    return verdict


def hits_by_type(expected: dict, found: dict) -> dict:
    """Per hit type: hits expected, found (of that type on the bus), missing and false."""
    out: dict[str, dict] = {}
    for hid, h in expected.items():
        t = out.setdefault(h["hit_type"], {"expected": 0, "found": 0, "missing": 0, "false": 0})
        t["expected"] += 1
        t["missing"] += hid not in found
    for hid, h in found.items():
        t = out.setdefault(h["hit_type"], {"expected": 0, "found": 0, "missing": 0, "false": 0})
        t["found"] += 1
        t["false"] += hid not in expected
    return dict(sorted(out.items()))


def count_dropped_duplicates(values, prefix: str) -> int:
    """Input messages the dedupe stage dropped, counted by where they were read
    (topic/partition/offset): a batch read again after a crash or a rebalance drops its
    duplicates a second time, and those are the same messages."""
    sources = set()
    for value in values:
        try:
            drop = json.loads(value)
            record_key, source = drop["record_key"], drop["source"]
        except (ValueError, TypeError, KeyError):
            continue  # not a dedupe drop (a benchmark's filler, say): no run's duplicate
        if prefix and not _ref_of(record_key).startswith(prefix):
            continue
        sources.add(source)
    return len(sources)


def add_verify(p):
    p.add_argument("--truth", required=True, help="the ground-truth file written by `intelbus simulate --truth`")
    p.add_argument("--idle", type=float, default=3.0, help="seconds without new messages that end the reading (default 3)")
    p.epilog = ("Exit code 0 when the bus produced exactly the expected hits (no missing, no false, no duplicate)\n"
                "and exactly the expected numbers of distinct events and of dropped duplicates; 1 otherwise.")

    def run(args):
        from ops.settings import load_settings

        verdict = verify(load_settings(), args.truth, idle_seconds=args.idle)
        print(json.dumps(verdict.summary()))
        for h in verdict.missing[:10]:
            print(f"missing: {json.dumps(h, ensure_ascii=False)}", file=sys.stderr)
        for h in verdict.false_hits[:10]:
            print(f"false hit: {json.dumps(h, ensure_ascii=False)}", file=sys.stderr)
        return 0 if verdict.exact else 1

    return run
