"""What border duplicates cost the stream jobs: the three stages over the simulator's traffic,
in memory (no Kafka, no faust), with the case reports' places and without them.

Without places no report carries the `dup` flag, so the match stage does exactly what it did
before border duplicates (the baseline); with places every case report is also kept under
its identifiers and compared with the kept ones. The same records otherwise, the two
variants alternating in one run. Reported per variant: the median of the runs' stage time
per input event (dedupe, match, hits), the bytes the match stage writes to its index state
per input event, and the hits by type (a check that the baseline really has no border
duplicates).

    .venv/bin/python -m bench.bench_border_duplicates [--count 30000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from collections import Counter

from producers.simulator import SimConfig, Simulation
from schemas.catalog import input_topic
from schemas.normalise import normalise_identifier
from schemas.records import validate_record
from schemas.regions import load_regions
from stream_jobs.app import provinces_of
from stream_jobs.stages import CANDIDATE_TOPIC, HIT_TOPIC, MATCH_TOPIC, DedupeStage, HitStage, Incoming, MatchStage
from stream_jobs.state import MemoryState

START_MS = 1_790_000_000_000
PARTITIONS = 6
BATCH = 500


def messages(count: int, seed: int, places: bool) -> list[Incoming]:
    """The simulator's valid records (resends included) as input messages, JSON-encoded."""
    out = []
    for n, item in enumerate(Simulation(SimConfig(seed=seed, count=count, start_ms=START_MS)).records()):
        if item.invalid:
            continue
        record = validate_record(item.kind, item.record, now_ms=START_MS)
        if not places and item.kind == "incident":
            record["location"]["lat"] = record["location"]["lon"] = None
        key = f"{record['source_region']}/{record['source_system']}/{record['source_ref']}".encode()
        out.append(Incoming(input_topic(item.kind), zlib.crc32(key) % PARTITIONS, n, key, json.dumps(record).encode()))
    return out


def run(batch_in: list[Incoming]) -> dict:
    regions = load_regions()
    records, index, seen = MemoryState(), MemoryState(), MemoryState()
    decode = json.loads
    dedupe = DedupeStage(decode=decode, normalise=normalise_identifier, state=records, partitions=PARTITIONS,
                         window_ms=7 * 86_400_000)
    match = MatchStage(state=index, partitions=PARTITIONS, is_within=regions.is_within, case_window_ms=30 * 86_400_000,
                       decode=decode)
    hits = HitStage(state=seen, encode_hit=lambda h: json.dumps(h).encode(), provinces_of=lambda n: provinces_of(n, regions))
    spent = Counter()
    index_bytes = 0
    by_type = Counter()

    def stage(name, st, state, batch):
        nonlocal index_bytes
        started = time.perf_counter()
        result = st.process(batch, START_MS)
        if name == "match":
            index_bytes += sum(len(v or b"") for items in state._pending.values() for v in items.values())
        state.commit()
        spent[name] += time.perf_counter() - started
        return result

    for i in range(0, len(batch_in), BATCH):
        out = stage("dedupe", dedupe, records, batch_in[i:i + BATCH]).outputs
        requests = [Incoming(MATCH_TOPIC, o.partition, 0, o.key, o.value) for o in out if o.topic == MATCH_TOPIC]
        out = stage("match", match, index, requests).outputs
        candidates = [Incoming(CANDIDATE_TOPIC, o.partition, 0, o.key, o.value) for o in out if o.topic == CANDIDATE_TOPIC]
        for o in stage("hits", hits, seen, candidates).outputs:
            if o.topic == HIT_TOPIC:
                by_type[json.loads(o.value)["hit_type"]] += 1
    n = len(batch_in)
    return {"us_per_event": {k: v / n * 1e6 for k, v in spent.items()}, "index_bytes_per_event": index_bytes / n,
            "hit_copies_by_type": dict(by_type)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)
    variants = {"without places (baseline)": messages(args.count, args.seed, False),
                "with places (border duplicates)": messages(args.count, args.seed, True)}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, msgs in variants.items():  # alternating, so load on the machine falls on both
            runs[name].append(run(msgs))
    report = {}
    for name, results in runs.items():
        report[name] = {
            "events": len(variants[name]),
            "median_us_per_event": {k: round(statistics.median(r["us_per_event"][k] for r in results), 1)
                                    for k in ("dedupe", "match", "hits")},
            "match_us_per_event_runs": [round(r["us_per_event"]["match"], 1) for r in results],
            "index_bytes_per_event": round(results[0]["index_bytes_per_event"], 1),
            "hit_copies_by_type": results[0]["hit_copies_by_type"],
        }
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
