"""The jobs' three stages offline, on the input topics' real records (issue 17: "our own stages
are not free either"): no faust, no Kafka in the loop, state in memory.

The records (with their headers: the publishers' proofs) are read once from the stack `intelbus up`
runs: the oldest of each partition of `intel.alert`, `intel.wanted` and `intel.incident`, as evenly
as the partitions' sizes allow, so that runs on one stack read the same records (load some first:
`bench.bench_jobs` does, or `intelbus simulate`). Then, in rounds, in this process:

- decode only: the registry decoder over the same records, the median of three passes (the
  yardstick; `bench_jobs` uses fastavro on generated incidents, `bench_e2e.avro_ceiling`);
- the stages: `DedupeStage` (decode, proof of publisher, normalisation, dedupe state, match
  requests) -> `MatchStage` (index, look-back, candidates) -> `HitStage` (hit copies), as the
  worker builds them (`stream_jobs.app.build_stages`) but over `MemoryState`, in batches of
  `--batch` records a partition, each stage's outputs the next one's input.

Python's collector is set as the worker sets it (`ops.metrics.tune_gc` with the settings' gc_gen0,
and what start-up built frozen out of its view, here with the input records, which a worker holds
only a batch at a time): with Python's default thresholds the stages ran 1-36% slower (2026-12-02,
seven pairs of rounds in one process, 7,285-11,796 against 8,626-11,961 events/s), a cost the
worker does not pay.

The stages' clock is the records' own (`records_clock`: their newest publish time, then the round's
time), not the wall clock: the same records then do the same work hours apart.

Reported per round: events a second through the three stages, each stage's microseconds per
event, and the ratio to decode only in the same round. The difference to `bench_jobs` (the
worker with RocksDB, faust and Kafka) is what those cost.

    .venv/bin/python -m bench.bench_stages [--events 60000] [--rounds 3] [--batch 1000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict


def read_inputs(settings, limit: int) -> tuple[list, int]:
    """About `limit` records of the input topics, the oldest of each partition, as `Incoming`; and
    the newest of their Kafka timestamps (ms: the rounds' clock starts there, `records_clock`)."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.catalog import INPUT_TOPICS
    from stream_jobs.stages import Incoming

    consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": "bench-stages",
                         "enable.auto.commit": False})
    tps = []
    for topic in INPUT_TOPICS:
        for p in range(settings.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                tps.append((TopicPartition(topic, p, low), high))
    # the same records every run: the oldest of each partition, as evenly as the partitions' sizes allow
    remaining = {(tp.topic, tp.partition): tp.offset + n
                 for (tp, _), n in zip(tps, shares([high - tp.offset for tp, high in tps], limit))}
    consumer.assign([tp for tp, _ in tps])
    out, idle, newest_ms = [], 0, 0
    while remaining and idle < 5:
        msgs = consumer.consume(1000, 1.0)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            key = (m.topic(), m.partition())
            if m.error() or key not in remaining or m.offset() >= remaining[key]:
                continue
            out.append(Incoming(m.topic(), m.partition(), m.offset(), m.key(), m.value(), tuple(m.headers() or ())))
            newest_ms = max(newest_ms, m.timestamp()[1])
            if m.offset() + 1 >= remaining[key]:
                del remaining[key]
    consumer.close()
    return sorted(out, key=lambda m: (m.topic, m.partition, m.offset)), newest_ms


def records_clock(newest_ms: int, *, wall=time.time):
    """The stages' `now_ms` in a round: the records' own time (`newest_ms`, when they were published)
    plus the time the round has taken. With the wall clock, the same records gave 3,548 hit copies
    at 11:00 and 2,112 at 13:42 (2026-12-02): watch alerts past their `valid_until` by then no
    longer index, so rounds an hour apart did different work. 0: the wall clock (no timestamps)."""
    if newest_ms <= 0:
        return lambda: int(wall() * 1000)
    started = wall()
    return lambda: newest_ms + int((wall() - started) * 1000)


def shares(sizes: list[int], total: int) -> list[int]:
    """How many of each partition's `sizes` records to take for `total` in all, as even as the sizes allow
    (a partition with fewer than its share gives all it has, the others share the rest)."""
    out, left, order = [0] * len(sizes), total, sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        out[i] = min(sizes[i], left // (len(sizes) - k))
        left -= out[i]
    return out


def build(settings, codec):
    """The three stages as the worker makes them (`stream_jobs.app.make_stages`), over memory; and their decoder."""
    from schemas.regions import load_regions
    from stream_jobs.app import make_stages
    from stream_jobs.state import MemoryState

    records, index, seen = MemoryState(), MemoryState(), MemoryState()
    dedupe, match, hits = make_stages(settings, codec, load_regions(), records, index, seen)
    return [("dedupe", dedupe, records), ("match", match, index), ("hits", hits, seen)], dedupe.decode


def batches(messages: list, size: int):
    """The records in the order a worker reads them: a batch of up to `size` a partition, partitions in turn."""
    by_tp = defaultdict(list)
    for m in messages:
        by_tp[(m.topic, m.partition)].append(m)
    queues = [by_tp[k] for k in sorted(by_tp)]
    pos = 0
    while any(pos < len(q) for q in queues):
        for q in queues:
            if pos < len(q):
                yield q[pos:pos + size]
        pos += size


def stages_round(settings, codec, messages: list, batch: int, newest_ms: int = 0) -> dict:
    from stream_jobs.stages import CANDIDATE_TOPIC, MATCH_TOPIC, Incoming

    stages, _ = build(settings, codec)
    spent = {name: 0.0 for name, _, _ in stages}
    next_topic = {"dedupe": MATCH_TOPIC, "match": CANDIDATE_TOPIC, "hits": None}
    counts = defaultdict(int)
    clock, now_ms = time.perf_counter, records_clock(newest_ms)
    started = clock()
    for first in batches(messages, batch):
        inputs = first
        for name, stage, state in stages:
            if not inputs:
                break
            t = clock()
            result = stage.process(inputs, now_ms())
            state.commit()
            spent[name] += clock() - t
            counts[f"{name} dead letters"] += len(result.dead_letters)
            topic = next_topic[name]
            if topic is None:
                counts["hit copies"] += len(result.outputs)
                break
            inputs = [Incoming(o.topic, o.partition or 0, 0, o.key, o.value)
                      for o in result.outputs if o.topic == topic]
    seconds = clock() - started
    n = len(messages)
    return {"events_per_s": round(n / seconds), "us_per_event": {k: round(v / n * 1e6, 1) for k, v in spent.items()},
            **counts}


def decode_round(decode, messages: list, passes: int = 3) -> dict:
    """Decode only, the median of `passes` passes over the records (one pass is a second or two: noisy)."""
    rates, bad = [], 0
    for _ in range(passes):
        t, bad = time.perf_counter(), 0
        for m in messages:
            try:
                decode(m.value)
            except Exception:
                bad += 1
        rates.append(len(messages) / (time.perf_counter() - t))
    return {"events_per_s": round(statistics.median(rates)), "undecodable": bad}


def worker_gc(settings) -> None:
    """The collector as the worker has it once ready (stream_jobs.worker: `tune_gc`; app: `gc.freeze`)."""
    import gc

    from ops.metrics import tune_gc

    gc.collect()
    gc.freeze()
    tune_gc(settings.gc_gen0)


def main(argv=None) -> int:
    from ops.settings import Settings
    from schemas.wire import SchemaCodec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=60_000, help="input records read (default 60,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1000, help="records a partition per batch (default 1,000)")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args(argv)
    settings = Settings()
    messages, newest_ms = read_inputs(settings, args.events)
    worker_gc(settings)
    if not messages:
        print("no input records: load some first (python -m bench.bench_jobs, or intelbus simulate)")
        return 2
    codec = SchemaCodec(url=settings.registry_url)
    _, decode = build(settings, codec)
    rounds = []
    for r in range(args.rounds):
        base = decode_round(decode, messages)
        run = stages_round(settings, codec, messages, args.batch, newest_ms)
        run["decode_only_per_s"] = base["events_per_s"]
        run["ratio_to_decode_only"] = round(run["events_per_s"] / base["events_per_s"], 3)
        run["round"] = r + 1
        rounds.append(run)
        print(json.dumps(run), flush=True)
    print(json.dumps({"events": len(messages), "batch": args.batch,
                      "median_ratio_to_decode_only": statistics.median(r["ratio_to_decode_only"] for r in rounds),
                      "median_us_per_event": {k: statistics.median(r["us_per_event"][k] for r in rounds)
                                              for k in rounds[0]["us_per_event"]}}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rounds, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
