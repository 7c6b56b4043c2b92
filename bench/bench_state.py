"""State soak (issue 18 item 2): do the jobs' tables and the worker's memory stay flat?

One run, on the stack `intelbus up` runs (its jobs-0 untouched): two private workers
(bench/private_jobs.py: own topics, groups, tables, datadirs, metrics ports) read the same
simulator traffic, published by the bench at a fixed rate onto private input topics:

- "on": the checkout's stages with their windows set short (`--window`, seconds: dedupe
  window, case-link window, closed-record retention; border-duplicate window half of it;
  hit ids kept at least 3 minutes, longer than the look-back), so that the run lasts many
  windows;
- "off": the same, with expiry off (`expire=False` for the three stages: the sweep walks and
  counts, and deletes nothing): the baseline.

Every `--every` seconds the bench reads each worker's metrics: events read, entries per table
(`intelbus_jobs_state_entries`), entries expired, resident memory. The verdict per worker and
series is the slope (least squares) per 100,000 events over the run after the first
`--warmup` windows: flat means a slope of a few per cent of the plateau. Hits emitted by
each worker are compared too (expiry must not change them when the traffic keeps to the
windows). Also measured: what an in-memory index of the keys would have cost per key (the
design not taken: the sweep walks RocksDB from a cursor and holds nothing per key).

Results appended to bench/results/state.md (and state.json).

    .venv/bin/python -m bench.bench_state                       # 300,000 events at 1,000/s, 60 s windows
    .venv/bin/python -m bench.bench_state --events 40000 --rate 800 --window 20   # a short one
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bench.private_jobs import PrivateJobs

RESULTS = Path(__file__).resolve().parent / "results"
TABLES = ("records", "index", "hits-seen")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slope_per_100k(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs, times 100,000."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return 100_000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def key_index_bytes_per_key(n: int = 100_000) -> dict:
    """What the alternative design would hold in memory: every key of a table in a set per
    time bucket (record keys as the dedupe table has them), measured with tracemalloc."""
    import tracemalloc

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    buckets: dict[int, set] = {}
    for i in range(n):
        buckets.setdefault(i // 1000, set()).add(f"120119/jzga/JQ120119{i:08d}".encode())
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"keys": n, "bytes_per_key": round(used / n, 1)}


class Feed:
    """Simulator records, validated and Avro-encoded as producers send them, at a fixed rate."""

    def __init__(self, settings, codec, inputs: str, count: int, rate: float, seed: int):
        from confluent_kafka import Producer

        from producers.simulator import SimConfig, Simulation

        self.codec, self.inputs, self.rate = codec, inputs, rate
        step = max(1, round(1000 / rate))
        self.sim = Simulation(SimConfig(seed=seed, count=count, step_ms=step, start_ms=int(time.time() * 1000),
                                        ref_prefix=f"S{seed}-"))
        self.producer = Producer({**settings.kafka_config("intelbus-admin"), "linger.ms": 20,
                                  "compression.type": "lz4", "partitioner": "murmur2_random"})
        self.sent = 0
        self._items = iter(self.sim.records())
        self._started = None

    def pump(self, until: float) -> bool:
        """Send what is due until `until` (monotonic); False when the traffic is all sent."""
        from schemas.records import validate_record

        if self._started is None:
            self._started = time.monotonic()
        while time.monotonic() < until:
            due = int((time.monotonic() - self._started) * self.rate) - self.sent
            if due <= 0:
                time.sleep(0.005)
                continue
            for _ in range(min(due, 2000)):
                item = next(self._items, None)
                if item is None:
                    self.producer.flush(30)
                    return False
                if item.invalid:
                    continue
                now = int(time.time() * 1000)
                record = validate_record(item.kind, item.record, now_ms=now)
                record["reported_at"] = now  # a resend is published again now
                # Event time follows the publish time: the simulator's clock runs at its own step,
                # and a feed that falls behind it would make every event later than the windows.
                # Shifted by the same amount, records keep their distances (border pairs, links).
                record["occurred_at"] += now - self.sim.t
                key = f"{record['source_region']}/{record['source_system']}/{record['source_ref']}".encode()
                while True:
                    try:
                        self.producer.produce(f"{self.inputs}.{item.kind}", self.codec.encode(f"intel.{item.kind}", record),
                                              key=key)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
                self.sent += 1
            self.producer.poll(0)
        return True


def sample(worker: PrivateJobs) -> dict:
    text = worker.metrics()
    out = {"events": 0.0, "expired": 0.0, "hits": 0.0, "rss": 0.0, **{t: 0.0 for t in TABLES}}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        v = float(value)
        if name == "intelbus_jobs_events_total":
            out["events"] += v
        elif name == "intelbus_jobs_state_entries":
            for t in TABLES:
                if f'table="{t}"' in labels:
                    out[t] = v
        elif name == "intelbus_jobs_state_expired_total":
            out["expired"] += v
        elif name == "intelbus_jobs_hits_total":
            out["hits"] += v
        elif name == "process_resident_memory_bytes":
            out["rss"] = v
    return out


def verdicts(rows: list[dict], skip_events: float) -> dict:
    """Slope per 100k events of each series after `skip_events`, and its last value."""
    rows = [r for r in rows if r["events"] >= skip_events]
    xs = [r["events"] for r in rows]
    out = {}
    for series in (*TABLES, "rss"):
        ys = [r[series] for r in rows]
        out[series] = {"slope_per_100k": None if not ys else slope_per_100k(xs, ys), "last": ys[-1] if ys else None}
    return out


def run(args) -> dict:
    from ops.settings import load_settings
    from schemas.wire import SchemaCodec

    settings = load_settings()
    codec = SchemaCodec(url=settings.registry_url)
    tag = f"s{uuid.uuid4().hex[:6]}"
    inputs = f"intelbus-jobs-{tag}-in"
    w = int(args.window * 1000)
    short = {"dedupe": {"window_ms": w, "closed_retention_ms": w},
             "match": {"case_window_ms": w, "border_window_ms": w // 2, "closed_retention_ms": w},
             # hit ids at least as long as the look-back (2 minutes): a record indexed again (an
             # update) matches the look-back's sightings again, and the hit stage must still drop them
             "hits": {"retention_ms": max(w, 180_000)}}
    off = {name: {**kw, "expire": False} for name, kw in short.items()}
    workdir = Path(args.workdir or f"/tmp/bench-state-{tag}")
    workers = {"on": PrivateJobs(settings, workdir / "on", f"{tag}on", inputs=inputs, stages=short,
                                 metrics_port=free_port(), batch=args.batch),
               "off": PrivateJobs(settings, workdir / "off", f"{tag}off", inputs=inputs, stages=off,
                                  metrics_port=free_port(), batch=args.batch)}
    rows: dict[str, list] = {"on": [], "off": []}
    started = time.monotonic()
    try:
        for wk in workers.values():
            wk.start()
        feed = Feed(settings, codec, inputs, args.events, args.rate, seed=uuid.uuid4().int % 10**6)
        sending, drained_at = True, None
        while True:
            sending = feed.pump(time.monotonic() + args.every) if sending else (time.sleep(args.every) or False)
            t = round(time.monotonic() - started, 1)
            for name, wk in workers.items():
                try:
                    rows[name].append({"t": t, "sent": feed.sent, **sample(wk)})
                except Exception as exc:  # a scrape that failed: the next one counts
                    print(f"[bench] {name}: no sample at {t}s: {exc}", file=sys.stderr)
            last = {n: r[-1] for n, r in rows.items() if r}
            print(f"[bench] t={t}s sent={feed.sent} " + " ".join(
                f"{n}: events={int(r['events'])} records={int(r['records'])} index={int(r['index'])} "
                f"hits-seen={int(r['hits-seen'])} rss={r['rss'] / 2**20:.0f}MiB" for n, r in last.items()), flush=True)
            if not sending and all(r["events"] >= feed.sent for r in last.values()):
                drained_at = drained_at or time.monotonic()
                if time.monotonic() - drained_at >= args.tail:
                    break
            if not sending and time.monotonic() - started > args.timeout:
                print("[bench] the workers did not drain within the timeout", file=sys.stderr)
                break
        rate_span = (rows["on"][-1]["t"] if rows["on"] else 0)
    finally:
        for wk in workers.values():
            wk.stop()
        if not args.keep:
            for i, wk in enumerate(workers.values()):
                wk.delete_topics(inputs_too=(i == 0))
    skip = args.warmup * args.window * args.rate
    result = {
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "events": feed.sent, "rate": args.rate,
        "window_s": args.window, "warmup_events": skip, "every_s": args.every, "seconds": rate_span,
        "verdicts": {n: verdicts(r, skip) for n, r in rows.items()},
        "expired": {n: r[-1]["expired"] if r else None for n, r in rows.items()},
        # how far behind the feed each worker fell (events sent, not yet read): a worker that
        # lags holds the look-back's and faust's buffers of a backlog, which are not its tables
        "max_lag": {n: max((x["sent"] - x["events"] for x in r), default=None) for n, r in rows.items()},
        "hits": {n: r[-1]["hits"] if r else None for n, r in rows.items()},
        "key_index_alternative": key_index_bytes_per_key(),
        "rows": rows,
    }
    return result


def markdown(result: dict) -> str:
    lines = [f"## Run of {result['at']}", "",
             f"{result['events']:,} simulator events at {result['rate']:,.0f}/s onto private topics, two private "
             f"workers reading them: expiry on and off (baseline), windows {result['window_s']:.0f} s; slopes over "
             f"the events after the first {result['warmup_events']:,.0f} (warm-up), per 100,000 events read.", "",
             "| series | on: last | on: slope /100k | off: last | off: slope /100k |", "|---|---|---|---|---|"]
    v = result["verdicts"]

    def fmt(x, rss=False):
        if x is None:
            return "-"
        return f"{x / 2**20:,.1f} MiB" if rss else f"{x:,.0f}"

    for series in (*TABLES, "rss"):
        rss = series == "rss"
        on, off = v["on"][series], v["off"][series]
        lines.append(f"| {series} entries |" if not rss else "| resident memory |")
        lines[-1] += (f" {fmt(on['last'], rss)} | {fmt(on['slope_per_100k'], rss)} | {fmt(off['last'], rss)} | "
                      f"{fmt(off['slope_per_100k'], rss)} |")
    alt = result["key_index_alternative"]
    lines += ["", f"Largest lag behind the feed: on {result['max_lag']['on']:,.0f}, off {result['max_lag']['off']:,.0f} "
              f"events. Entries expired (on): {result['expired']['on']:,.0f}. Hits emitted: on {result['hits']['on']:,.0f}, "
              f"off {result['hits']['off']:,.0f}. An in-memory index of the keys (the design not taken) would hold "
              f"{alt['bytes_per_key']:.0f} bytes per key (tracemalloc, {alt['keys']:,} record keys in sets by time "
              "bucket); the sweep holds a cursor per partition.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--window", type=float, default=60.0, help="seconds: the stages' windows in this run")
    p.add_argument("--warmup", type=float, default=2.0, help="windows of events left out of the slopes")
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--tail", type=float, default=15.0, help="seconds sampled after both workers drained")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the private topics")
    args = p.parse_args(argv)
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    md = markdown(result)
    path = RESULTS / "state.md"
    head = "" if path.exists() else "# State soak (bench/bench_state.py)\n\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(head + md + "\n")
    with open(RESULTS / "state.json", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
