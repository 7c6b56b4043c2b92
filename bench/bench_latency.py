"""Produce-to-hit latency over several runs at fixed rates (issue 17: "p99 under 100 ms and p50
under 40 ms at 1,000 and 2,000 events/s, over at least five runs, the first run after `up` included").

Each run is `bench_e2e.fixed_rate` (the simulator at RATE events/s for SECONDS through the stack
`intelbus up` runs; each hit's arrival at a command center's consumer minus its trigger's
`reported_at`). Beside each run, in the same seconds and on the same broker, the baseline: one
hop of the raw client, a confluent-kafka producer (linger 0) sending a probe every 10 ms to a
topic of its own and a consumer reading it (send to receipt). A hit makes four hops (input,
match request, candidate, hit), so four times the probe's latency is what the bus alone costs.

Run it right after `intelbus up` (or `intelbus down --purge && intelbus up`) so that the first
run is the first after up:

    .venv/bin/python -m bench.bench_latency --rates 1000,2000 --runs 5 --seconds 30

Results: bench/results/latency.json, and a section appended to bench/results/latency.md.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from pathlib import Path

from bench.bench_e2e import percentile

RESULTS = Path(__file__).resolve().parent / "results"
PROBE_TOPIC = "bench.latency.probe"


class Probe(threading.Thread):
    """The raw client's one hop: a probe every `every` s, send time to receipt, while the run lasts."""

    def __init__(self, settings, every: float = 0.01):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, Producer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        config = settings.kafka_config("intelbus-admin")
        admin = AdminClient(config)
        if PROBE_TOPIC not in admin.list_topics(timeout=10).topics:
            for f in admin.create_topics([NewTopic(PROBE_TOPIC, 1, 1)]).values():
                try:
                    f.result(30)
                except Exception as exc:  # made meanwhile by another run
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise
        self.producer = Producer({**config, "linger.ms": 0, "acks": "all", "enable.idempotence": True})
        self.consumer = Consumer({**config, "group.id": f"bench-latency-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False})
        tp = TopicPartition(PROBE_TOPIC, 0)
        for attempt in range(20):  # a topic just made has no leader for a moment
            try:
                tp.offset = self.consumer.get_watermark_offsets(tp, timeout=10)[1]
                break
            except Exception:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        self.consumer.assign([tp])
        self.every, self.stop, self.latencies_s = every, threading.Event(), []
        self.sender = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        while not self.stop.is_set():
            self.producer.produce(PROBE_TOPIC, str(time.time()).encode())
            self.producer.poll(0)
            time.sleep(self.every)
        self.producer.flush(10)

    def run(self) -> None:
        self.sender.start()
        while not self.stop.is_set():
            m = self.consumer.poll(0.1)
            if m is None or m.error():
                continue
            self.latencies_s.append(time.time() - float(m.value()))
        self.consumer.close()

    def finish(self) -> dict:
        self.stop.set()
        self.join(10)
        self.sender.join(10)
        lat = self.latencies_s
        return {"probes": len(lat), "p50_ms": _ms(percentile(lat, 0.5)), "p99_ms": _ms(percentile(lat, 0.99))}


class Hops(threading.Thread):
    """Where a hit waits between its hops: reads the match requests, the hit candidates and the hits
    as they are written (from now on) and keeps each one's Kafka timestamp, the time its producer
    was handed it (librdkafka stamps a message at `produce()`). For each hit of the run:

      report -> request: the trigger reported, to the dedupe stage producing its match request
                         (input hop, the dedupe batch and its wait for the fetch);
      request -> candidate: the dedupe batch's delivery wait, the match stage's fetch and batch;
      candidate -> hit: the match batch's delivery wait, the hits stage's fetch and batch;
      hit -> consumer: the hits batch's delivery, a command center's fetch."""

    def __init__(self, settings):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        from schemas.catalog import HIT_TOPIC
        from schemas.wire import RawDecoder
        from stream_jobs.stages import CANDIDATE_TOPIC, MATCH_TOPIC

        self.topics = {"request": MATCH_TOPIC, "candidate": CANDIDATE_TOPIC, "hit": HIT_TOPIC}
        self.decode = RawDecoder.for_registry(settings.registry_url)
        self.consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-hops-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "latest", "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        self.consumer.subscribe(list(self.topics.values()))
        self.request_ms: dict[str, int] = {}    # event id -> its first match request's Kafka time
        self.candidate_ms: dict[str, int] = {}  # hit id -> its candidate's Kafka time
        self.hits: dict[str, tuple] = {}        # hit id -> (reported ms, trigger event id, hit's Kafka time, receipt ms)
        self.stop = threading.Event()
        self.assigned = threading.Event()
        self.receipt_s: list[float] = []  # every message read: its Kafka time to this consumer's receipt

    def run(self) -> None:
        import orjson

        from ops.consume import consume_ready

        request_t, candidate_t = self.topics["request"], self.topics["candidate"]
        while not self.stop.is_set():
            msgs = consume_ready(self.consumer, 500, 0.1)
            if self.consumer.assignment():
                self.assigned.set()
            now_ms = time.time() * 1000
            for m in msgs:
                if m.error() or m.value() is None:
                    continue
                topic, ts = m.topic(), m.timestamp()[1]
                self.receipt_s.append(max(0.0, now_ms - ts) / 1000)
                if topic == request_t:
                    for event_id in orjson.loads(m.value()).get("events", ()):
                        self.request_ms.setdefault(event_id, ts)
                elif topic == candidate_t:
                    self.candidate_ms.setdefault(orjson.loads(m.value())["hit_id"], ts)
                else:
                    hit = self.decode(m.value())
                    if hit["hit_id"] not in self.hits:  # the run's hits: nothing else publishes meanwhile
                        self.hits[hit["hit_id"]] = (hit["trigger_reported_at"], hit["trigger_event_id"], ts, now_ms)
        self.consumer.close()

    def finish(self) -> dict:
        self.stop.set()
        self.join(10)
        segments: dict[str, list[float]] = {"report -> request": [], "request -> candidate": [],
                                            "candidate -> hit": [], "hit -> consumer": []}
        linked = 0
        for hit_id, (reported, event_id, hit_ms, got_ms) in self.hits.items():
            request, candidate = self.request_ms.get(event_id), self.candidate_ms.get(hit_id)
            if request is None or candidate is None:
                continue
            linked += 1
            for name, (a, b) in zip(segments, ((reported, request), (request, candidate), (candidate, hit_ms),
                                               (hit_ms, got_ms))):
                segments[name].append((b - a) / 1000)
        receipt = self.receipt_s
        return {"linked_hits": linked,
                "plain consumer": {"messages": len(receipt), "p50_ms": _ms(percentile(receipt, 0.5)),
                                   "mean_ms": _ms(sum(receipt) / len(receipt)) if receipt else None},
                **{name: {"p50_ms": _ms(percentile(v, 0.5)), "p99_ms": _ms(percentile(v, 0.99))}
                                          for name, v in segments.items()}}


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 1)


def jobs_loop(settings) -> str:
    """The consumer loop the stack's jobs-0 runs, from its last start line (`consumer_loop=...`)."""
    import re

    try:
        text = (settings.stack_path / "logs" / "jobs-0.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    found = re.findall(r"consumer_loop=(\w+)", text)
    return found[-1] if found else "unknown"


def worker_waits(settings) -> dict:
    """jobs-0's running sums and counts of `intelbus_jobs_arrival_seconds` (fetched, queued) and
    `intelbus_jobs_phase_seconds` (process), by stage: {(stage, step): (sum, count)}."""
    from prometheus_client.parser import text_string_to_metric_families

    from bench.bench_jobs import metrics_text

    try:
        text = metrics_text(settings.metrics_port_base + 1)
    except OSError:
        return {}
    out: dict = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("intelbus_jobs_arrival_seconds", "intelbus_jobs_phase_seconds"):
            continue
        for sample in family.samples:
            step = sample.labels.get("step") or sample.labels.get("phase")
            if step not in ("fetched", "queued", "process") or not sample.name.endswith(("_sum", "_count")):
                continue
            key = (sample.labels["stage"], step)
            total, count = out.get(key, (0.0, 0.0))
            out[key] = (total + sample.value, count) if sample.name.endswith("_sum") else (total, count + sample.value)
    return out


def waits_between(before: dict, after: dict) -> dict:
    """Mean ms per (stage, step) over the run: {"dedupe fetched": 12.3, ...}."""
    out = {}
    for (stage, step), (total, count) in sorted(after.items()):
        t0, c0 = before.get((stage, step), (0.0, 0.0))
        if count > c0:
            out[f"{stage} {step}"] = round(1000 * (total - t0) / (count - c0), 1)
    return out


def one_run(settings, rate: float, seconds: float) -> dict:
    from bench.bench_e2e import fixed_rate
    from bench.proc import machine_shares, machine_times

    before, machine = worker_waits(settings), machine_times()
    probe = Probe(settings)
    probe.start()
    hops = Hops(settings)
    hops.start()
    hops.assigned.wait(30)
    r = fixed_rate(settings, rate, seconds)
    baseline = probe.finish()
    waits = hops.finish()
    waits["inside jobs-0 (mean ms)"] = waits_between(before, worker_waits(settings))
    shares = machine_shares(machine, machine_times())
    hit = r["produce_to_hit_s"]
    return {"rate": rate, "seconds": seconds, "achieved_publish_rate": r["achieved_publish_rate"], "hits": r["hits"],
            "drained": r["drained"], "p50_ms": _ms(hit["p50"]), "p99_ms": _ms(hit["p99"]), "max_ms": _ms(hit["max"]),
            "probe": baseline, "hops": waits, "cpu_cores_used": r["cpu_cores_used"], "machine": shares,
            "lag_at_end_of_publishing": r["lag_at_end_of_publishing"]}


def table(runs: list[dict]) -> list[str]:
    lines = ["| run | rate (achieved) | hits | produce-to-hit p50 / p99 / max | raw client, one hop: p50 / p99 | "
             "p99 over 4 hops of the raw client | jobs-0 cores | machine busy / stolen |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        p = r["probe"]
        ratio = round(r["p99_ms"] / (4 * p["p99_ms"]), 1) if r["p99_ms"] and p["p99_ms"] else None
        lines.append(f"| {i} | {r['rate']:.0f} ({r['achieved_publish_rate']}) | {r['hits']} | "
                     f"{r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} ms | {p['p50_ms']} / {p['p99_ms']} ms | {ratio} | "
                     f"{r['cpu_cores_used'].get('jobs-0')} | {(r.get('machine') or {}).get('busy')} / "
                     f"{(r.get('machine') or {}).get('stolen')} |")
    return lines


def hops_table(runs: list[dict]) -> list[str]:
    names = ["report -> request", "request -> candidate", "candidate -> hit", "hit -> consumer"]
    lines = ["| run | hits linked | " + " | ".join(f"{n}: p50 / p99" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for i, r in enumerate(runs, 1):
        h = r.get("hops") or {}
        lines.append(f"| {i} | {h.get('linked_hits')} | " + " | ".join(
            f"{h.get(n, {}).get('p50_ms')} / {h.get(n, {}).get('p99_ms')} ms" for n in names) + " |")
    return lines


def split_table(runs: list[dict]) -> list[str]:
    """Each hop inside jobs-0 (means of its metrics over the run) beside a plain consumer of the same topics."""
    stages = ("dedupe", "match", "hits")
    lines = ["| run | plain consumer of the jobs' topics: Kafka time to receipt p50 / mean | " + " | ".join(
        f"{s}: fetched / queued / process" for s in stages) + " |", "|---|---|" + "---|" * len(stages)]
    for i, r in enumerate(runs, 1):
        h = r.get("hops") or {}
        plain, inside = h.get("plain consumer") or {}, h.get("inside jobs-0 (mean ms)") or {}
        lines.append(f"| {i} | {plain.get('p50_ms')} / {plain.get('mean_ms')} ms | " + " | ".join(
            f"{inside.get(s + ' fetched')} / {inside.get(s + ' queued')} / {inside.get(s + ' process')} ms"
            for s in stages) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run right after `intelbus up`: the first run counts as the first after up. Each run prints one "
               "JSON line as it ends; the table is appended to bench/results/latency.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,2000", help="events/s, comma-separated (default 1000,2000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per rate (default 5)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds each run publishes (default 30)")
    args = parser.parse_args(argv)
    from ops.settings import load_settings

    settings = load_settings()
    rates = [float(x) for x in args.rates.split(",") if x]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs = []
    for _ in range(args.runs):
        for rate in rates:  # alternating, so that neither rate gets all the quiet (or busy) minutes
            runs.append(one_run(settings, rate, args.seconds))
            print(json.dumps(runs[-1]), flush=True)
    (RESULTS / "latency.json").write_text(json.dumps({"started": started, "runs": runs}, indent=1))
    lines = ["", f"## Run of {started} (`--rates {args.rates} --runs {args.runs} --seconds {args.seconds:g}`; "
                 f"jobs-0's consumer loop: {jobs_loop(settings)})", ""]
    for rate in rates:
        mine = [r for r in runs if r["rate"] == rate]
        lines += [f"### {rate:.0f} events/s", "", *table(mine), "", "Where the hits waited (`Hops`: Kafka times of "
                  "each hit's match request, candidate and hit, and its receipt):", "", *hops_table(mine), "",
                  "Each hop inside jobs-0 (`intelbus_jobs_arrival_seconds`, `intelbus_jobs_phase_seconds`: means "
                  "over the run; *fetched*: a record's Kafka time to its stage's hand-over, each partition's oldest "
                  "record of a fetch; *queued*: to its batch's start; *process*: the stage's logic a batch), beside "
                  "the `Hops` consumer's own Kafka time to receipt over the same topics (match requests, candidates, "
                  "hits) in the same seconds:", "", *split_table(mine), ""]
    if not (RESULTS / "latency.md").exists():
        lines = ["# Produce-to-hit latency over runs (bench/bench_latency.py)", "", __doc__.split("\n\n")[1], *lines]
    with open(RESULTS / "latency.md", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
