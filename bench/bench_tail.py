"""The produce-to-hit tail: the e2e benchmark's fixed-rate run, repeated.

One run's p99 says little about the tail: the slow hits come from pipeline-wide stalls of
a fraction of a second that some 30-second runs have and others do not. This runs the
fixed-rate step `--runs` times on the stack `intelbus up` runs (or one it starts) and
prints, per run, p50/p99/max, the jobs worker's garbage collections that took 0.1 s or
more (by generation), and the seconds with hits over 0.5 s with each process's CPU around
them. The whole report goes to bench/results/tail.json (gitignored).

    .venv/bin/python -m bench.bench_tail --runs 10
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.bench_e2e import fixed_rate

RESULTS = Path(__file__).resolve().parent / "results"


def summary(i: int, r: dict) -> str:
    lat = r["produce_to_hit_s"]
    gc_slow = {g: int(v["over_0.1s"]) for g, v in r["jobs_gc_pauses"].items() if isinstance(v, dict) and v["over_0.1s"]}
    stalls = ", ".join(f"{s['t']}s:{s['slow_hits']} hits<={s['worst_s']}s ch={s['cpu_cores'].get('clickhouse')} "
                       f"kafka={s['cpu_cores'].get('kafka')} jobs={s['cpu_cores'].get('jobs-0')}"
                       for s in r["slow_hit_seconds"])
    fmt = lambda x: f"{x:.3f}" if x is not None else "-"  # noqa: E731
    return (f"run {i}: hits {r['hits']} p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])} "
            f"drained {r['drained']} gc>=0.1s {gc_slow or 'none'} slow seconds [{stalls}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="fixed-rate runs (default 10)")
    parser.add_argument("--rate", type=float, default=2000, help="events/s offered by the simulator (default 2000)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each run (default 30)")
    parser.add_argument("--no-stack", action="store_true", help="use the running stack; do not start or stop it")
    args = parser.parse_args(argv)

    from ops.bootstrap import bootstrap
    from ops.services import full_stack
    from ops.settings import load_settings

    settings = load_settings()
    stack = full_stack(settings, out=lambda m: print(m, file=sys.stderr))
    if not args.no_stack:
        stack.up(on_infra_ready=lambda: bootstrap(settings))
    runs = []
    try:
        for i in range(args.runs):
            r = fixed_rate(settings, args.rate, args.seconds)
            r.pop("series", None)
            r.pop("queryable_latencies_s", None)
            runs.append(r)
            print(summary(i, r), flush=True)
    finally:
        if not args.no_stack:
            stack.down()
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "tail.json").write_text(json.dumps(runs, indent=1))
    over = sum(1 for r in runs if (r["produce_to_hit_s"]["p99"] or 0) >= 0.5)
    print(f"{len(runs)} runs at {args.rate:.0f}/s: p99 under 0.5 s in {len(runs) - over}, over in {over}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
