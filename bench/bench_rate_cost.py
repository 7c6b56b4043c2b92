"""What the stack's components cost at a fixed rate, and how many batches the jobs make of it.

For each rate and each variant of a component's environment (`--variant NAME:VAR=VALUE,...`; the
component, jobs-0 unless `--restart` names another, is restarted with it, then with the stack's own
settings at the end), in alternating rounds:
`intelbus simulate` at the rate (a fresh seed and reference prefix each time, so nothing is a
duplicate of an earlier run), and over its middle seconds:
- each component's CPU, cores (/proc/<pid>/stat), the simulator's among them, and the machine's share busy;
- jobs-0's batches a second and messages a batch, per stage (`intelbus_jobs_batch_size`).

The baseline of the same run is the first variant (give it no variables: the defaults).

    .venv/bin/python -m bench.bench_rate_cost --rates 200,1000 --seconds 40 \\
        --variant 'default:' --variant 'fetch wait:INTELBUS_JOBS_FETCH_MIN_BYTES=16384,INTELBUS_JOBS_FETCH_MAX_WAIT_MS=10'

The workflow job's fetch, for instance:

    .venv/bin/python -m bench.bench_rate_cost --restart workflows-0 --variant 'default:' \\
        --variant 'fetch wait:INTELBUS_WORKFLOWS_FETCH_MIN_BYTES=65536,INTELBUS_WORKFLOWS_FETCH_MAX_WAIT_MS=50'

Results are appended to bench/results/rate-cost.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.bench_fanout import parse_variant
from bench.chaos import intelbus

RESULTS = Path(__file__).resolve().parent / "results"


def restart_component(env: dict[str, str], component: str = "jobs-0") -> None:
    """`component` stopped and started again by `intelbus up`, with `env` added to its environment."""
    for args in (("down", component), ("up",)):
        done = intelbus({**os.environ, **env}, *args)
        if done.returncode:
            raise SystemExit(f"intelbus {' '.join(args)} failed: {done.stderr[-2000:] or done.stdout[-2000:]}")


def batch_counts(port: int) -> dict[str, tuple[float, float]]:
    """{stage: (batches, messages)} so far, from jobs-0's `intelbus_jobs_batch_size`."""
    from bench.bench_jobs import metrics_text
    from bench.chaos import metric_values

    text = metrics_text(port)
    counts = metric_values(text, "intelbus_jobs_batch_size_count")
    sums = metric_values(text, "intelbus_jobs_batch_size_sum")
    return {stage: (counts[stage], sums.get(stage, 0.0)) for stage in counts}


def one_run(settings, rate: float, seconds: float, settle: float = 8.0) -> dict:
    from bench.bench_e2e import _service_pids, _simulate
    from bench.proc import cpu_seconds, machine_shares, machine_times

    port = settings.metrics_port_base + 1
    pids = _service_pids(settings)
    seed = random.randrange(1, 1_000_000)
    sim = _simulate(rate, seconds, f"rc{seed}-", seed)
    time.sleep(settle)  # the simulator's start and the first batches are not the steady rate
    window = max(5.0, seconds - settle - 4)
    pids["simulate"] = sim.pid
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine0, batches0, t0 = machine_times(), batch_counts(port), time.monotonic()
    time.sleep(window)
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine1, batches1, dt = machine_times(), batch_counts(port), time.monotonic() - t0
    sim.communicate(timeout=seconds + 60)
    cores = {name: round((cpu1[name] - cpu0[name]) / dt, 3) for name in pids
             if cpu0.get(name) is not None and cpu1.get(name) is not None}
    stages = {}
    for stage, (n1, m1) in batches1.items():
        n0, m0 = batches0.get(stage, (0.0, 0.0))
        if n1 > n0:
            stages[stage] = {"batches_per_s": round((n1 - n0) / dt, 1), "messages_per_batch": round((m1 - m0) / (n1 - n0), 2)}
    return {"rate": rate, "window_s": round(dt, 1), "cores": cores, "machine": machine_shares(machine0, machine1),
            "stages": stages}


def table(rows: list[dict]) -> str:
    out = ["| round | variant | rate | jobs-0 | Kafka | workflow job | sink | ClickHouse | gateway | simulator | machine busy "
           "| dedupe: batches/s, msgs a batch | match | hits |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cores"]
        st = [f"{s['batches_per_s']}, {s['messages_per_batch']}" if (s := r["stages"].get(name)) else "-"
              for name in ("dedupe", "match", "hits")]
        out.append(f"| {r['round']} | {r['variant']} | {r['rate']:.0f} | **{c.get('jobs-0', '-')}** | {c.get('kafka', '-')} | "
                   f"{c.get('workflows-0', '-')} | {c.get('sink', '-')} | {c.get('clickhouse', '-')} | {c.get('gateway', '-')} | "
                   f"{c.get('simulate', '-')} | {r['machine'].get('busy')} | " + " | ".join(st) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="200,1000", help="events/s, comma-separated (default 200,1000)")
    p.add_argument("--seconds", type=float, default=40.0, help="seconds the simulator publishes per run (default 40)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every variant at every rate (default 2)")
    p.add_argument("--variant", action="append", type=parse_variant, default=None,
                   help="NAME:VAR=VALUE,... for the restarted component (repeatable; default: one variant, the "
                   "stack's settings)")
    p.add_argument("--restart", default="jobs-0", choices=("jobs-0", "workflows-0", "sink", "gateway"),
                   help="the component each variant restarts with its variables (default jobs-0)")
    args = p.parse_args(argv)
    from ops.settings import load_settings

    settings = load_settings()
    variants = args.variant or [("stack's settings", {})]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    try:
        for n in range(1, args.rounds + 1):
            for name, env in variants:
                restart_component(env, args.restart)
                time.sleep(12)  # the worker's assignment and its stores' opening
                for rate in rates:
                    row = {"round": n, "variant": name, "restarted": args.restart, "env": env,
                           **one_run(settings, rate, args.seconds)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if len(variants) > 1 or variants[0][1]:
            restart_component({}, args.restart)  # the stack as `up` runs it
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "rate-cost.json", "a") as f:
        f.write(json.dumps({"started": started, "argv": sys.argv[1:], "rows": rows}) + "\n")
    cmd = " ".join(a if " " not in a and ":" not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
    with open(RESULTS / "rate-cost.md", "a") as f:
        f.write(f"\n## Run of {started} (2 cores; `{cmd}`)\n\n{table(rows)}\n\nCores: CPU seconds a second over each "
                "run's middle (/proc). Batches: jobs-0's `intelbus_jobs_batch_size` over the same seconds.\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
