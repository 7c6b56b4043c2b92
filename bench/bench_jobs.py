"""Stream-jobs benchmark: throughput of the faust worker(s) through dedupe, matcher and hits.

The input topics are loaded first with the jobs stopped (the simulator, --rate 0); then the
workers start together and the clock runs from the first event a dedupe stage counts to
the moment the group's lag reaches zero (rebalances among the starting workers, table
recovery and look-back reads inside it included). Before they start, the run waits until the
bus's match requests are older than the workers' look-back (up to INTELBUS_JOBS_LOOKBACK_S, 2
minutes): otherwise a run started soon after another restores that run's lookups, and the
runs are not alike; what is restored anyway is reported (`lookback_restored_lookups`).
With --settled the workers start on an idle bus first and the records are loaded while they run:
no start-up rebalance in the measure (two workers joining a few seconds apart read thousands of
records twice); events per worker CPU-second then compare one and two workers at the same offered
load (bench/results/jobs-loops.md, 2026-12-02 evening).
Produce-to-hit latency is measured separately, at a fixed rate, from the workers'
intelbus_produce_to_hit_seconds histogram.
"""
from __future__ import annotations

import sys
import threading
import time
import urllib.request
import uuid

from schemas.catalog import INPUT_TOPICS


def metrics_text(port: int) -> str:
    """A local process's Prometheus metrics page."""
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _metric_sum(port: int, name: str) -> float:
    text = metrics_text(port)
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{") or l.startswith(name + " "))


def _histogram(port: int, name: str) -> list[tuple[float, float]]:
    text = metrics_text(port)
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return out


def quantile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile (Prometheus-style, coarse)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target:
            return le
    return None


def throughput(settings, n: int, workers: int = 1, loop: str | None = None, settled: float = 0.0) -> dict:
    """One load of `n` simulated records, drained by `workers` fresh workers; `loop` sets their
    INTELBUS_JOBS_CONSUMER_LOOP (None: as the environment says). With the input offsets before
    the load, so a baseline can read the same messages (`decode_baseline`).

    settled > 0: the steady state instead of the start. The workers start on an idle bus, the
    group is given `settled` seconds more after all are ready, and only then are the records
    loaded (as fast as the simulator goes, in this process) while the workers take them. So no
    rebalance falls inside the measure: in the start's drain two workers joining a few seconds apart
    read 5,000-20,000 records twice (2026-12-02). Events a second are then the load's rate, not the
    workers'; what compares is events per worker CPU-second."""
    import os
    from dataclasses import replace

    from ops.lag import JOBS_TOPICS, wait_for_zero_lag
    from ops.services import full_stack
    from producers.simulate import run_simulation
    from producers.simulator import SimConfig, Simulation

    scaled = replace(settings, jobs_workers=workers)
    names = {f"jobs-{i}" for i in range(max(workers, settings.jobs_workers))}
    ports = [settings.metrics_port_base + 1 + i for i in range(workers)]
    # Warm-up: a worker whose state store is behind (a new one, or one stopped while the
    # bus went on) first recovers its partitions from the changelogs: minutes on a long
    # history (faust reads them record by record). Each worker runs alone once, so that its
    # store is current for every partition, whichever it gets below; measured apart.
    warmup = {}
    if loop is not None:
        os.environ["INTELBUS_JOBS_CONSUMER_LOOP"] = loop  # the workers started below inherit it
    for i in range(workers):
        full_stack(scaled, out=lambda m: None).down(only=names)
        w = _start_together(full_stack(scaled, out=lambda m: None), [i], [])
        warmup[f"jobs-{i}"] = round(w["ready"] - w["started"], 2)
    full_stack(scaled, out=lambda m: None).down(only=names)
    seed = uuid.uuid4().int % 10**6
    sim = Simulation(SimConfig(seed=seed, count=n, ref_prefix=f"J{seed}-"))
    from bench.proc import machine_shares, machine_times

    def measure_from() -> tuple:
        # the workers' own CPU from here to the drain: events per CPU-second of a worker says whether
        # a worker gets slower with company (it does not scale) or only gets less of the 2 cores
        return (sum(_metric_sum(p, "process_cpu_seconds_total") for p in ports), time.monotonic(),
                sum(_metric_sum(p, "intelbus_jobs_events_total") for p in ports), machine_times())

    if settled > 0:
        waited = _after_previous_lookback(settings)
        run = _start_together(full_stack(scaled, out=lambda m: None), list(range(workers)), ports)
        time.sleep(settled)
        starts = end_offsets(settings, INPUT_TOPICS)
        cpu0, t0, events0, machine0 = measure_from()
        run["first_event"] = time.monotonic()  # the clock runs from the load's start
        load = run_simulation(sim, rate=0, settings=settings, phase_pause=0)
    else:
        starts = end_offsets(settings, INPUT_TOPICS)
        load = run_simulation(sim, rate=0, settings=settings, phase_pause=0)
        waited = _after_previous_lookback(settings)
        run = _start_together(full_stack(scaled, out=lambda m: None), list(range(workers)), ports)
        cpu0, t0, events0, machine0 = measure_from()
    events = load["published"]
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=1800, stable=2)
    done = time.monotonic()
    machine = machine_shares(machine0, machine_times())
    processed = sum(_metric_sum(p, "intelbus_jobs_events_total") for p in ports)
    # A worker that gets match partitions first reads the last INTELBUS_JOBS_LOOKBACK_S of their
    # requests back (stream_jobs/lookback.py): a run started within that time of an earlier load
    # does that work too (measured 2026-12-02: a quarter of the worker's main thread, after the
    # previous round's 60,000 events). Reported, so rounds are compared knowing it.
    restored = sum(_metric_sum(p, "intelbus_jobs_lookback_restored_total") for p in ports)
    restore_s = sum(_metric_sum(p, "intelbus_jobs_lookback_restore_seconds_total") for p in ports)
    cpu = sum(_metric_sum(p, "process_cpu_seconds_total") for p in ports) - cpu0
    full_stack(scaled, out=lambda m: None).down(only=names - {"jobs-0"})
    first = run["first_event"] or run["ready"]
    from stream_jobs.app import consumer_loop_from

    return {"workers": workers, "consumer_loop": consumer_loop_from(os.environ),
            "events": events, "processed_by_workers": processed, "input_offsets_before": starts,
            "seconds_first_event_to_drained": round(done - first, 2), "events_per_s": round(events / (done - first), 1),
            "seconds_to_first_event": round(first - run["started"], 2),
            "seconds_to_all_ready": round(run["ready"] - run["started"], 2),
            "warmup_seconds_alone_to_ready": warmup,
            "workers_cpu_cores": round(cpu / max(1e-9, done - t0), 2),
            "events_per_worker_cpu_second": round((processed - events0) / cpu, 1) if cpu > 0 else None,
            "processed_in_measure": int(processed - events0), "settled_seconds": settled,
            "lookback_restored_lookups": int(restored), "lookback_restore_seconds": round(restore_s, 2),
            "seconds_waited_for_previous_lookback": round(waited, 1),
            "machine": machine}


def newest_request_ms(settings, timeout: float = 10.0) -> int | None:
    """The Kafka timestamp (ms) of the newest message of `intel.match.requests`, None if it is empty."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.catalog import MATCH_REQUESTS_TOPIC

    consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": "bench-jobs-newest",
                         "enable.auto.commit": False})
    try:
        last = []
        for p in range(settings.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(MATCH_REQUESTS_TOPIC, p), timeout=timeout)
            if high > low:
                last.append(TopicPartition(MATCH_REQUESTS_TOPIC, p, high - 1))
        if not last:
            return None
        consumer.assign(last)
        newest, left, deadline = None, {tp.partition for tp in last}, time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(len(left), 0.5):
                if msg.error() is None and msg.partition() in left:
                    left.discard(msg.partition())
                    newest = max(newest or 0, msg.timestamp()[1])
        return newest
    finally:
        consumer.close()


def _after_previous_lookback(settings, out=sys.stderr) -> float:
    """Wait, if need be, until the bus's match requests are older than the workers' look-back.

    A worker that gets match partitions first reads the last `jobs_lookback_s` of their requests
    back (stream_jobs/lookback.py). Started within that time of an earlier run's drain, the measured
    workers would restore its lookups (98,268 in the 2-worker run of `make bench` on 2026-12-02,
    2.7 s of waiting, while the 1-worker run before it restored none): a start-up cost, like the
    changelog recovery the warm-up keeps out of the drain, and one that made runs unlike each other.
    Returns the seconds waited; what is restored anyway is reported per run."""
    newest = newest_request_ms(settings)
    if newest is None:
        return 0.0
    wait = newest / 1000 + settings.jobs_lookback_s + 2 - time.time()
    if wait <= 0:
        return 0.0
    print(f"[bench jobs] waiting {wait:.0f} s: the last match requests leave the workers' look-back "
          f"({settings.jobs_lookback_s:.0f} s) first, so this run does not restore them", file=out, flush=True)
    time.sleep(wait)
    return wait


def _start_together(stack, indexes: list[int], ports: list[int]) -> dict:
    """Start the jobs workers at once, as `intelbus jobs --workers N` does (`intelbus up`
    starts one after the other, and each later one costs the group a rebalance); returns
    when they all are ready, with the time the first event was counted."""
    wanted = {f"jobs-{i}" for i in indexes}
    threads = [threading.Thread(target=stack.start, args=(c, c.start_timeout))
               for c in stack.components if c.name in wanted]
    started, first = time.monotonic(), None
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if first is None and any(_events_or_zero(p) > 0 for p in ports):
            first = time.monotonic()
        time.sleep(0.1)
    ready = time.monotonic()
    if first is None and any(_events_or_zero(p) > 0 for p in ports):
        first = ready
    return {"started": started, "first_event": first, "ready": ready}


def _events_or_zero(port: int) -> float:
    try:
        return _metric_sum(port, "intelbus_jobs_events_total")
    except Exception:  # not serving yet
        return 0.0


def latency(settings, rate: float, seconds: float) -> dict:
    from producers.simulate import run_simulation
    from producers.simulator import SimConfig, Simulation

    port = settings.metrics_port_base + 1
    before = _histogram(port, "intelbus_produce_to_hit_seconds")
    seed = uuid.uuid4().int % 10**6
    sim = Simulation(SimConfig(seed=seed, count=int(rate * seconds), ref_prefix=f"L{seed}-"))
    report = run_simulation(sim, rate=rate, settings=settings, phase_pause=1.0)
    time.sleep(3)
    after = _histogram(port, "intelbus_produce_to_hit_seconds")
    delta = [(le, a - b) for (le, a), (_, b) in zip(after, before)] if before else after
    return {"rate": rate, "achieved_publish_rate": report["rate"], "hits": delta[-1][1] if delta else 0,
            "p50_s_at_most": quantile_from_buckets(delta, 0.5), "p99_s_at_most": quantile_from_buckets(delta, 0.99)}


def end_offsets(settings, topics) -> dict[str, list[int]]:
    """topic -> each partition's end offset now."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        out = {}
        for topic in topics:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            out[topic] = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in sorted(parts)]
        return out
    finally:
        c.close()


def decode_baseline(settings, starts: dict[str, list[int]]) -> dict:
    """The floor of any worker: plain confluent-kafka `consume(1000)` and a fastavro decode of each
    input message from `starts` to the end (no state, no output), in this process."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.wire import RawDecoder

    ends = end_offsets(settings, starts)
    want = sum(e - s for topic in starts for s, e in zip(starts[topic], ends[topic]))
    decode = RawDecoder.for_registry(settings.registry_url)
    c = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(t, p, o) for t, offs in starts.items() for p, o in enumerate(offs)])
    got, errors, first, cpu0 = 0, 0, None, time.process_time()
    deadline = time.monotonic() + 600
    while got < want and time.monotonic() < deadline:
        for msg in c.consume(1000, 1.0):
            if msg.error():
                continue
            if first is None:
                first = time.monotonic()
            try:
                decode(msg.value())
            except Exception:
                errors += 1
            got += 1
    seconds = time.monotonic() - (first or time.monotonic())
    cpu = time.process_time() - cpu0
    c.close()
    return {"messages": got, "undecodable": errors, "seconds": round(seconds, 2),
            "events_per_s": round(got / seconds, 1) if seconds > 0 else None,
            "events_per_cpu_second": round(got / cpu, 1) if cpu > 0 else None}


def e2e_latency(settings, loop: str, rate: float, seconds: float) -> dict:
    """jobs-0 restarted with INTELBUS_JOBS_CONSUMER_LOOP=`loop`, then one fixed-rate run of bench_e2e."""
    import os

    from bench import bench_e2e
    from ops.services import full_stack

    os.environ["INTELBUS_JOBS_CONSUMER_LOOP"] = loop
    full_stack(settings, out=lambda m: None).down(only={"jobs-0"})
    _start_together(full_stack(settings, out=lambda m: None), [0], [settings.metrics_port_base + 1])
    time.sleep(5)  # past the look-back restore of the first batch
    result = bench_e2e.fixed_rate(settings, rate, seconds)
    keep = ("published", "achieved_publish_rate", "jobs_events_per_s_steady", "drained", "hits", "produce_to_hit_s",
            "cpu_cores_used")
    return {"consumer_loop": loop, **{k: result[k] for k in keep}}


def main() -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        description="One jobs worker (or more) draining a simulated backlog, once per consumer loop, in one run; "
                    "each next to the raw confluent-kafka + fastavro decode of the same messages.")
    parser.add_argument("--events", type=int, default=60_000, help="records loaded per run (default 60,000)")
    parser.add_argument("--consumer-loops", default="faust,batch", help="INTELBUS_JOBS_CONSUMER_LOOP values, in order "
                        "(not `--loops`: faust reads any argument starting with --loop as its event loop on import) "
                        "(default faust,batch: faust's own loop, the fallback, then the batch loop, the default)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the list of loops this many times")
    parser.add_argument("--settled", type=float, default=0.0, metavar="SECONDS",
                        help="the steady state: start the workers on an idle bus, give the group SECONDS more, then "
                             "load while they run (no start-up rebalance in the measure; compare events per worker "
                             "CPU-second, since events a second are then the load's). Default 0: the start's drain")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    parser.add_argument("--e2e", default="", metavar="RATE:SECONDS",
                        help="instead of the backlog: per loop, jobs-0 restarted with it, then produce-to-hit latency "
                             "at RATE events/s for SECONDS (bench_e2e.fixed_rate: each hit's arrival minus its "
                             "trigger's reported_at)")
    args = parser.parse_args()
    from ops.settings import load_settings

    settings = load_settings()
    loops = [l for l in args.consumer_loops.split(",") if l]
    runs = []
    for r in range(args.rounds):
        for loop in loops:
            if args.e2e:
                rate, seconds = (float(x) for x in args.e2e.split(":"))
                run = e2e_latency(settings, loop, rate, seconds)
                run["round"] = r + 1
                runs.append(run)
                print(json.dumps(run), flush=True)
                continue
            run = throughput(settings, args.events, workers=args.workers, loop=loop, settled=args.settled)
            run["baseline_decode"] = decode_baseline(settings, run.pop("input_offsets_before"))
            base = run["baseline_decode"]["events_per_s"]
            run["ratio_to_baseline"] = round(run["events_per_s"] / base, 3) if base else None
            # the yardstick: fastavro decoding incidents alone, no Kafka, in the same minute
            from bench.bench_e2e import avro_ceiling

            decode_only = avro_ceiling()["decode_per_s"]
            run["fastavro_decode_only_per_s"] = decode_only
            run["ratio_to_decode_only"] = round(run["events_per_s"] / decode_only, 3)
            run["ratio_per_worker_cpu_second_to_decode_only"] = (
                round(run["events_per_worker_cpu_second"] / decode_only, 3) if run["events_per_worker_cpu_second"] else None)
            run["round"] = r + 1
            runs.append(run)
            print(json.dumps(run), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
