"""Workflow catch-up benchmark: how fast the workflow job absorbs a backlog of hits, and at what CPU.

On the stack `intelbus up` runs (single profile):

1. the stack's workflow worker (workflows-0) is stopped (`intelbus down workflows-0`);
2. the simulator publishes COUNT records at RATE events/s (a fresh `--ref-prefix`); the jobs detect
   their hits onto intel.hit, which the stopped worker does not read;
3. the backlog: the workflow group's lag on intel.hit and intel.wanted.unique;
4. baseline, same run, same backlog: a plain loop (confluent-kafka consumer assigned to the group's
   committed offsets, the project's Avro decoder on each value) reads the hit backlog to its end;
5. `intelbus up` starts workflows-0 again; the bench polls the group's lag on its inputs and its
   own topics (APP-records, APP-items) every second until it is zero twice in a row, and reads the
   worker's CPU (/proc) from its start to then.

Reported: hits behind, seconds to catch up, hits/s (and its ratio to the plain loop's), worker CPU
and CPU per hit, the commands it applied, the machine's busy share. Appended to
bench/results/workflow-catchup.md (and .json).

On a stack that has run the simulator before with the same seed, sightings also match the
earlier runs' wanted listings (same identifiers, other event ids): the hits per record grow
from run to run. The bench reports per hit, not per record, for that reason.

    .venv/bin/python -m bench.bench_workflow_catchup                  # 30,000 records at 2,000/s
    .venv/bin/python -m bench.bench_workflow_catchup --count 60000 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.bench_e2e import _service_pids
from bench.bench_jobs import metrics_text
from bench.chaos import metric_values
from bench.proc import cpu_seconds, machine_shares, machine_times
from schemas import catalog

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
GROUP = "intelbus-jobs-workflows"


def _intelbus(*args: str, check: bool = True) -> str:
    out = subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, cwd=REPO)
    if check and out.returncode != 0:
        raise SystemExit(f"intelbus {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def _topics() -> tuple[list[str], list[str]]:
    from stream_jobs.workflow_job import items_topic, records_topic

    inputs = [catalog.HIT_TOPIC, catalog.unique_topic("wanted")]
    return inputs, inputs + [records_topic(GROUP), items_topic(GROUP)]


def _workflows_pid(settings) -> int:
    pid = _service_pids(settings).get("workflows-0")
    if pid is None:
        raise SystemExit("workflows-0 is not running after `intelbus up`")
    return pid


def plain_loop(settings, topic: str) -> dict:
    """The group's backlog on `topic` read by a plain consumer and decoded: messages, seconds, rate."""
    from confluent_kafka import Consumer, TopicPartition

    from ops.kafka_auth import JOBS
    from schemas.wire import RawDecoder

    decode = RawDecoder.for_registry(settings.registry_url)
    # the workflow group's committed offsets, read as the group's own principal (never joining it)
    probe = Consumer({**settings.kafka_config(JOBS), "group.id": GROUP, "enable.auto.commit": False})
    meta = probe.list_topics(topic, timeout=10).topics[topic]
    committed = probe.committed([TopicPartition(topic, p) for p in meta.partitions], timeout=10)
    ends = {tp.partition: probe.get_watermark_offsets(tp, timeout=10)[1] for tp in committed}
    probe.close()
    reader = Consumer({**settings.kafka_config(JOBS), "group.id": f"bench-catchup-{uuid.uuid4().hex[:8]}",
                       "enable.auto.commit": False, "fetch.max.bytes": 50 * 2**20})
    assign = [TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in committed if ends[tp.partition] > max(tp.offset, 0)]
    todo = sum(ends[tp.partition] - tp.offset for tp in assign)
    n, started = 0, time.perf_counter()
    if assign:
        reader.assign(assign)
        while n < todo and time.perf_counter() - started < 120:
            for msg in reader.consume(1000, timeout=1.0):
                if msg.error() is None:
                    decode(msg.value())
                    n += 1
    seconds = time.perf_counter() - started
    reader.close()
    return {"messages": n, "seconds": round(seconds, 3), "rate": round(n / seconds, 1) if seconds > 0 else None}


def one_round(settings, count: int, rate: float) -> dict:
    from ops.lag import LagProbe

    inputs, watched = _topics()
    _intelbus("down", "workflows-0")
    prefix = f"wc{int(time.time())}-"
    sim = json.loads(_intelbus("simulate", "--rate", str(rate), "--count", str(count), "--quiet", "--ref-prefix", prefix,
                               "--metrics-port", "0").strip().splitlines()[-1])
    time.sleep(3)  # the jobs' last hits of the simulation
    probe = LagProbe(settings, GROUP, watched, user="intelbus-jobs")
    behind = {}
    for (topic, _), n in probe.lag().items():
        behind[topic] = behind.get(topic, 0) + n
    baseline = plain_loop(settings, catalog.HIT_TOPIC)
    hits = behind.get(catalog.HIT_TOPIC, 0)
    m0 = machine_times()
    _intelbus("up")
    started = time.monotonic()
    pid = _workflows_pid(settings)
    cpu0 = cpu_seconds(pid) or 0.0
    zero, caught = 0, None
    while time.monotonic() - started < 900:
        time.sleep(1.0)
        left = sum(probe.lag().values())
        if left == 0:
            zero += 1
            if zero >= 2:
                caught = time.monotonic() - started - 1.0  # the first zero was a poll earlier
                break
        else:
            zero = 0
    cpu = (cpu_seconds(pid) or 0.0) - cpu0
    m1 = machine_times()
    probe.close()
    commands = metric_values(metrics_text(settings.metrics_port_base + 40), "intelbus_workflows_commands_total")
    result = {
        "records": count, "rate": rate, "simulated_rate": sim.get("rate"), "expected_hits": sim.get("hits"),
        "hits_behind": hits, "wanted_behind": behind.get(catalog.unique_topic("wanted"), 0),
        "caught_up_s": round(caught, 1) if caught is not None else None,
        "hits_per_s": round(hits / caught, 1) if caught else None,
        "worker_cpu_s": round(cpu, 1), "cpu_ms_per_hit": round(1000 * cpu / hits, 3) if hits else None,
        "worker_cpu_at_start_s": round(cpu0, 1),
        "commands": commands, "machine": machine_shares(m0, m1), "plain_loop": baseline,
    }
    if caught and baseline.get("rate"):
        result["ratio_to_plain_loop"] = round(result["hits_per_s"] / baseline["rate"], 4)
    return result


def report(results: list[dict], args, stamp: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "workflow-catchup.json", "a") as f:
        f.write(json.dumps({"at": stamp, "args": vars(args), "rounds": results}) + "\n")
    lines = [f"\n## Run of {stamp} (`--count {args.count} --rate {args.rate} --rounds {args.rounds}`)\n",
             "| round | hits behind | caught up | hits/s | plain loop hits/s | ratio | worker CPU | CPU a hit | commands applied / no-op | machine busy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        c = r["commands"]
        lines.append(f"| {i} | {r['hits_behind']} | {r['caught_up_s']} s | {r['hits_per_s']} | {r['plain_loop']['rate']} | "
                     f"{r.get('ratio_to_plain_loop')} | {r['worker_cpu_s']} s | {r['cpu_ms_per_hit']} ms | "
                     f"{int(c.get('applied', 0))} / {int(c.get('no-op', 0))} | {r['machine']['busy']} |")
    text = "\n".join(lines) + "\n"
    path = RESULTS / "workflow-catchup.md"
    if not path.exists():
        path.write_text("# Workflow catch-up (bench/bench_workflow_catchup.py)\n\nThe workflow worker stopped while the "
                        "simulator runs, then started: how fast it absorbs the hits it missed, and its CPU per hit. "
                        "Baseline: a plain consumer decoding the same backlog in the same run.\n")
    with open(path, "a") as f:
        f.write(text)
    print(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=30_000, help="records the simulator publishes while the worker is down")
    p.add_argument("--rate", type=float, default=2000, help="the simulator's rate, events/s")
    p.add_argument("--rounds", type=int, default=1, help="rounds, one after the other")
    args = p.parse_args(argv)
    from ops.settings import Settings

    settings = Settings()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # the run's start
    results = []
    for i in range(args.rounds):
        r = one_round(settings, args.count, args.rate)
        print(json.dumps(r), flush=True)
        results.append(r)
    report(results, args, stamp)


if __name__ == "__main__":
    main()
