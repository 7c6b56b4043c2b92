"""`make bench` / `make bench-quick`: run the benchmarks and write bench/results/latest.{json,md}."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REGION_NAME = "Hebei"  # bench_trail.REGION


def machine() -> dict:
    mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    versions = {}
    for pkg in ("faust-streaming", "aiokafka", "confluent-kafka", "fastavro", "clickhouse-driver"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = "?"
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "commit": commit, "versions": versions, "at": time.strftime("%Y-%m-%d %H:%M:%S")}


def main() -> int:
    parser = argparse.ArgumentParser(description="intelbus benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run (producer, jobs, latency, e2e, sink, trail, identity); "
                                                 "results go to bench/results/partial.json, latest.* is left alone")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    from ops.bootstrap import bootstrap
    from ops.services import full_stack
    from ops.settings import load_settings

    settings = load_settings()
    full_stack(settings).up(on_infra_ready=lambda: bootstrap(settings))
    from bench import bench_jobs, bench_producer

    results = {"machine": machine(), "quick": args.quick}
    wanted = lambda name: not only or name in only  # noqa: E731
    if wanted("producer"):
        with tempfile.TemporaryDirectory() as tmp:
            results["producer"] = bench_producer.run(settings, 100_000 if args.quick else 1_000_000, Path(tmp))
    if wanted("jobs"):
        results["jobs_1_worker"] = bench_jobs.throughput(settings, 20_000 if args.quick else 60_000, workers=1)
        if not args.quick:
            results["jobs_2_workers"] = bench_jobs.throughput(settings, 60_000, workers=2)
    if only and "latency" in only:  # superseded by e2e (exact latencies); kept for comparison runs
        results["produce_to_hit_2000_per_s"] = bench_jobs.latency(settings, 2000, 15 if args.quick else 60)
    if wanted("sink"):
        from bench import bench_sink

        results["sink"] = bench_sink.run(settings, 30_000 if args.quick else 60_000)
    if wanted("trail"):
        from bench import bench_trail

        # the generated history is kept in ClickHouse and reused by later runs (3 minutes to make 10 M)
        results["trail"] = bench_trail.run(settings, 1_000_000 if args.quick else 10_000_000, 20 if args.quick else 50)
    if wanted("e2e"):
        from bench import bench_e2e

        results["e2e"] = bench_e2e.run(settings, rate=2000, seconds=20 if args.quick else 30,
                                       ladder=[1000, 2000] if args.quick else [1000, 1500, 2000, 3000, 5000],
                                       hold=15 if args.quick else 60)
        RESULTS.mkdir(exist_ok=True)
        bench_e2e.plot(results["e2e"]["fixed_rate"], RESULTS / ("partial.png" if only else "latest.png"))
    if wanted("identity"):
        from bench import bench_identity

        # the cost of authentication and row filters: trail (driver, filtered, gateway, CLI) and feed start-up;
        # its generated population (1 M events, tag BI) is kept in the stack's database between runs
        results["identity"] = bench_identity.run(settings, quick=args.quick)
    RESULTS.mkdir(exist_ok=True)
    if only:
        (RESULTS / "partial.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def _s(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# intelbus benchmarks ({'quick' if r['quick'] else 'full'})", "",
             f"{m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, commit {m['commit']}, {m['at']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             "| benchmark | figure | baseline | ratio |", "|---|---|---|---|"]
    p = r.get("producer")
    if p:
        lines += [
            f"| producer (a) raw produce of pre-encoded bytes, {p['records']:,} incidents | {p['a_transport_per_s']:,.0f}/s | transport ceiling | |",
            f"| producer (b) fastavro encode + produce | {p['b_avro_per_s']:,.0f}/s | (a) | {p['b_over_a']:.2f} |",
            f"| producer (c) RegionalProducer (validate, normalise, encode, produce) | {p['c_regional_producer_per_s']:,.0f}/s | (b) | {p['c_over_b']:.2f} (target 0.60) |",
            f"| producer (d) `intelbus publish` on the JSONL file | {p['d_publish_cli_per_s']:,.0f}/s | (c) | {p['d_over_c']:.2f} |"]
    for key in ("jobs_1_worker", "jobs_2_workers"):
        if key in r:
            j = r[key]
            replayed = j["processed_by_workers"] - j["events"]
            extra = f" ({replayed:,.0f} read twice after rebalances)" if replayed > 0 else ""
            lines.append(f"| stream jobs, {j['workers']} worker(s) started together, {j['events']:,} events through dedupe, "
                         f"matcher, hits{extra} | {j['events_per_s']:,.0f} events/s | target 5,000/worker | |")
            if j.get("events_per_worker_cpu_second"):
                lines.append(f"| the same, per CPU-second of the workers ({j['workers_cpu_cores']:.2f} cores used by them) | "
                             f"{j['events_per_worker_cpu_second']:,.0f} events | | |")
    lat = r.get("produce_to_hit_2000_per_s")
    if lat:
        lines.append(f"| produce-to-hit at {lat['rate']:.0f}/s offered ({lat['achieved_publish_rate']:,.0f}/s achieved), {lat['hits']:.0f} hits | "
                     f"p50 ≤ {lat['p50_s_at_most']} s, p99 ≤ {lat['p99_s_at_most']} s (histogram buckets) | target p99 < 0.5 s | |")
    sk = r.get("sink")
    if sk:
        lines.append(f"| sink: {sk['events']:,} incidents from a topic into ClickHouse (decode, rows, insert, commit) | "
                     f"{sk['sink_rows_per_s']:,.0f} events/s | plain loop {sk['baseline_rows_per_s']:,.0f}/s | {sk['ratio']:.2f} (target 0.80) |")
    tr = r.get("trail")
    if tr:
        op, reg = tr["trail_operator"], next(v for k, v in tr.items() if k.startswith("trail_region_"))
        lines.append(f"| `trail` over {tr['events']:,} stored events ({tr['event_subjects']:,} subject rows) | "
                     f"p50 {op['p50_ms']:.0f} ms, p95 {op['p95_ms']:.0f} ms unfiltered (with a {REGION_NAME} analyst's region + "
                     f"clearance filter: p50 {reg['p50_ms']:.0f} ms) | target p50 < 200 ms | |")
    if r.get("identity"):
        from bench.bench_identity import markdown_rows

        lines += markdown_rows(r["identity"])
    e = r.get("e2e")
    if e:
        f, c, ms = e["fixed_rate"], e["avro_ceiling"], e["max_sustainable"]
        steps = ", ".join(f"{step['rate']:.0f} {'ok' if step['sustained'] else 'lagging'}" for step in ms["steps"])
        lines += [
            f"| end to end at {f['offered_rate']:.0f}/s offered for {f['seconds']:.0f} s: published / jobs / sink | "
            f"{f['achieved_publish_rate'] or 0:,.0f} / {f['jobs_events_per_s_steady'] or 0:,.0f} / {f['sink_messages_per_s_steady'] or 0:,.0f} per s | | |",
            f"| end to end produce-to-hit ({f['hits']} hits, exact) | p50 {_s(f['produce_to_hit_s']['p50'])}, "
            f"p99 {_s(f['produce_to_hit_s']['p99'])}, max {_s(f['produce_to_hit_s']['max'])} | target p99 < 0.5 s | |",
            f"| end to end produce-to-queryable ({f['produce_to_queryable_s']['sampled']} sampled, ±0.25 s) | "
            f"p50 {_s(f['produce_to_queryable_s']['p50'])}, p99 {_s(f['produce_to_queryable_s']['p99'])} | | |",
            f"| maximum sustainable rate ({ms['hold_seconds']:.0f} s per step: {steps}) | "
            f"{ms['max_sustainable_rate'] or 0:,.0f} events/s | Avro ceiling {c['ceiling_events_per_s_one_core']:,}/s per core | "
            f"{e['max_sustainable_over_avro_ceiling']:.2f} (goal 5,000/s) |",
            "", f"Avro on this machine: fastavro encodes {c['encode_per_s']:,}/s and decodes {c['decode_per_s']:,}/s (incident); "
            f"an event makes {c['passes']['encode']} encode and {c['passes']['decode']} decode passes (producer; jobs, sink).",
            "", "Peak resident memory during the fixed-rate run (MiB): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in f["peak_rss_mb"].items()) + ".",
            "", "CPU used during the fixed-rate run (cores, of 2): "
            + ", ".join(f"{k} {v:.2f}" for k, v in f.get("cpu_cores_used", {}).items()) + ".",
            "", "Where the jobs worker spends its time during that run (py-spy samples, innermost known frame): "
            + ", ".join(f"{k} {v:.0%}" for k, v in (f.get("jobs_profile") or {}).get("share", {}).items()) + ".",
            "", "Plot: `latest.png` (latency distributions; throughput and lag over time)."]
    if p:
        lines += ["", f"Average Avro incident: {p['avg_avro_bytes']} bytes. Where (c) spends its time (share of profiled time):", ""]
        lines += [f"- {k}: {v:.1%}" for k, v in p["c_profile_self_time_share"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
