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
from schemas import catalog

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
                        self.producer.produce(f"{self.inputs}.{item.kind}", self.codec.encode(catalog.input_topic(item.kind), record),
                                              key=key)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
                self.sent += 1
            self.producer.poll(0)
        return True


def sample(worker: PrivateJobs) -> dict:
    text = worker.metrics()
    out = {"events": 0.0, "expired": 0.0, "hits": 0.0, "rss": 0.0, "cpu": 0.0, **{t: 0.0 for t in TABLES}}
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
        elif name == "process_cpu_seconds_total":
            out["cpu"] = v
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
    variants = json.loads(args.variants) if args.variants else {"on": {}, "off": {"expire": False}}
    probe = json.loads(args.probe) if args.probe else None
    workers = {}
    for name, v in variants.items():
        stages = short if v.get("expire", True) else off
        if probe is None and not v.get("env"):
            workers[name] = PrivateJobs(settings, workdir / name, f"{tag}{name}", inputs=inputs, stages=stages,
                                        metrics_port=free_port(), batch=args.batch)
        else:
            workers[name] = ProbedJobs(settings, workdir / name, f"{tag}{name}", inputs=inputs, stages=stages,
                                       metrics_port=free_port(), batch=args.batch,
                                       probe={**(probe or {}), **v.get("probe", {}), "env": v.get("env", {})})
    rows: dict[str, list] = {name: [] for name in workers}
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
        first = rows[next(iter(rows))]
        rate_span = first[-1]["t"] if first else 0
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
        "cpu_ms_per_1000": {n: 1e6 * (r[-1]["cpu"] - r[0]["cpu"]) / max(1.0, r[-1]["events"] - r[0]["events"])
                            if len(r) > 1 else None for n, r in rows.items()},
        "key_index_alternative": key_index_bytes_per_key(),
        "rows": rows,
        "variants": variants,
        "probe": {n: read_probe(workdir / n / "probe.jsonl") for n in workers},
    }
    return result


def read_probe(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def markdown(result: dict) -> str:
    names = list(result["verdicts"])
    described = ", ".join(f"{n} ({describe(result.get('variants', {}).get(n, {'expire': n != 'off'}))})" for n in names)
    lines = [f"## Run of {result['at']}", "",
             f"{result['events']:,} simulator events at {result['rate']:,.0f}/s onto private topics, {len(names)} private "
             f"workers reading them: {described}; windows {result['window_s']:.0f} s; slopes over "
             f"the events after the first {result['warmup_events']:,.0f} (warm-up), per 100,000 events read.", "",
             "| series | " + " | ".join(f"{n}: last | {n}: slope /100k" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    v = result["verdicts"]

    def fmt(x, rss=False):
        if x is None:
            return "-"
        return f"{x / 2**20:,.1f} MiB" if rss else f"{x:,.0f}"

    for series in (*TABLES, "rss"):
        rss = series == "rss"
        lines.append((f"| {series} entries |" if not rss else "| resident memory |") + "".join(
            f" {fmt(v[n][series]['last'], rss)} | {fmt(v[n][series]['slope_per_100k'], rss)} |" for n in names))
    alt = result["key_index_alternative"]
    per = lambda d, f="{:,.0f}": ", ".join(f"{n} {f.format(d[n])}" if d.get(n) is not None else f"{n} -" for n in names)
    lines += ["", f"Largest lag behind the feed: {per(result['max_lag'])} events. Entries expired: {per(result['expired'])}. "
              f"Hits emitted: {per(result['hits'])}."]
    if result.get("cpu_ms_per_1000"):
        lines[-1] += f" Worker CPU per 1,000 events read: {per(result['cpu_ms_per_1000'], '{:,.0f} ms')}."
    if result.get("probe") and any(result["probe"].values()):
        lines += ["", "Where the memory was at the end (the workers' memory probe): " + "; ".join(
            f"{n}: {probe_summary(rows)}" for n, rows in result["probe"].items() if rows) + "."]
    lines += ["", f"An in-memory index of the keys (the design not taken) would hold "
              f"{alt['bytes_per_key']:.0f} bytes per key (tracemalloc, {alt['keys']:,} record keys in sets by time "
              "bucket); the sweep holds a cursor per partition.", ""]
    return "\n".join(lines)


def describe(variant: dict) -> str:
    parts = ["expiry " + ("on" if variant.get("expire", True) else "off")]
    parts += [f"{k}={v}" for k, v in (variant.get("env") or {}).items()]
    return ", ".join(parts)


def rocksdb_memory(tables: dict) -> dict:
    """RocksDB's memory from per-table property sums: memtables, block cache and table readers.
    A cache shared by every store (stream_jobs.tables' worker budget) is reported by each store
    in full, so it is counted once."""
    memtables = sum(t["cur-size-all-mem-tables"] for t in tables.values())
    readers = sum(t["estimate-table-readers-mem"] for t in tables.values())
    stores = sum(t.get("stores", 0) for t in tables.values())
    shared = any(t.get("shared") for t in tables.values())
    cache = sum(t["block-cache-usage"] for t in tables.values())
    if shared and stores:
        cache = cache / stores
    return {"memtables": memtables, "cache": cache, "readers": readers}


def probe_summary(rows: list[dict]) -> str:
    last = [r for r in rows if "rss" in r][-1]
    rk = rocksdb_memory(last["rocksdb"])
    m, lb = last["malloc"], (last["lookback"] or [{}])[0]
    mib = lambda b: f"{b / 2**20:,.0f}"
    return (f"resident {mib(last['rss'])} MiB, RocksDB memtables {mib(rk['memtables'])} + block cache {mib(rk['cache'])} "
            f"+ table readers {mib(rk['readers'])} MiB, look-back {mib(lb.get('bytes', 0))} MiB ({lb.get('entries', 0):,} "
            f"lookups), malloc in use {mib(m['inuse'])} MiB and free inside its arenas {mib(m['free'])} MiB")


# --- memory probe, inside a worker's process (--probe) ---------------------------------------

ROCKSDB_PROPS = ("rocksdb.cur-size-all-mem-tables", "rocksdb.size-all-mem-tables", "rocksdb.estimate-table-readers-mem",
                 "rocksdb.block-cache-usage", "rocksdb.block-cache-pinned-usage", "rocksdb.total-sst-files-size",
                 "rocksdb.num-live-versions")


class ProbedJobs(PrivateJobs):
    """A private worker whose process also runs `probe_main`: a thread writing, every `every`
    seconds, a JSON line of where its memory is (RocksDB's properties per table, glibc's
    malloc statistics, tracemalloc's total and the look-back's bytes) to `<workdir>/probe.jsonl`,
    and tracemalloc snapshots at the times asked."""

    def __init__(self, *args, probe: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = probe

    def start(self, timeout: float = 120.0):
        import os
        import subprocess

        self.create_topics()
        config = {"app_id": self.app_id, "topics": self.topics, "stages": self.stages,
                  "stack_dir": str(self.workdir / "stack"), "metrics_port": self.port, "batch": self.batch,
                  "probe": {**self.probe, "out": str(self.workdir / "probe.jsonl"), "dir": str(self.workdir)}}
        path = self.workdir / f"{self.tag}.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        env = {**os.environ, "INTELBUS_SECRETS_DIR": self.settings.secrets_dir, **self.probe.get("env", {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.bench_state", "--worker", str(path)],
                                     cwd=str(Path(__file__).resolve().parents[1]), env=env,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self.wait_ready(timeout)


def mallinfo() -> dict:
    """glibc's malloc statistics (mallinfo2): arena = bytes taken from the OS by brk/arenas,
    inuse = allocated, free = free inside them (fragmentation or not yet returned), mmap = big blocks."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return {"arena": m.arena, "inuse": m.uordblks, "free": m.fordblks, "mmap": m.hblkhd}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def probe_main(path: str) -> int:
    """The worker (bench.private_jobs) with the memory probe of `ProbedJobs`."""
    import ctypes
    import threading
    import tracemalloc

    from bench import private_jobs
    import stream_jobs.app as jobs_app
    import stream_jobs.lookback as lookback_mod
    from stream_jobs.tables import worker_budget_mib

    config = json.loads(Path(path).read_text(encoding="utf-8"))
    probe = config["probe"]
    frames = int(probe.get("tracemalloc", 0))
    trace_from = float(probe.get("tracemalloc_from", 0))  # seconds: traced from then on (it slows the worker)
    if frames and not trace_from:
        tracemalloc.start(frames)
    found: dict = {"apps": [], "lookbacks": []}
    create = jobs_app.create_app

    def create_app(*a, **kw):
        app = create(*a, **kw)
        found["apps"].append(app)
        return app

    jobs_app.create_app = create_app
    init = lookback_mod.Lookback.__init__

    def lookback_init(self, *a, **kw):
        init(self, *a, **kw)
        found["lookbacks"].append(self)

    lookback_mod.Lookback.__init__ = lookback_init
    libc = ctypes.CDLL("libc.so.6")
    snapshots = sorted(float(t) for t in probe.get("snapshots", ()))
    trim_every = float(probe.get("trim_every", 0))
    started = time.monotonic()

    def sample() -> dict:
        row = {"t": round(time.monotonic() - started, 1), "rss": rss_bytes(), "malloc": mallinfo()}
        if tracemalloc.is_tracing():
            row["traced"] = tracemalloc.get_traced_memory()[0]
        tables = {}
        for app in found["apps"]:
            for name, table in list(app.tables.items()):
                store = getattr(table, "_data", None)
                dbs = list(getattr(store, "_dbs", {}).values()) if store is not None else []
                tables[name] = {prop.split(".", 1)[1]: sum(db.property_int_value(prop) or 0 for db in dbs)
                                for prop in ROCKSDB_PROPS}
                tables[name]["stores"] = len(dbs)
                tables[name]["shared"] = worker_budget_mib() is not None
        row["rocksdb"] = tables
        lbs = []
        for lb in found["lookbacks"]:
            by = list(lb._by_partition.values())
            lbs.append({"entries": lb.entries, "bytes": sum(len(v) for slices in by for sl in list(slices.values())
                                                            for v in list(sl.values())),
                        "identifiers": sum(len(sl) for slices in by for sl in list(slices.values()))})
        row["lookback"] = lbs
        return row

    def loop():
        out = open(probe["out"], "a", encoding="utf-8")
        next_trim = trim_every
        while True:
            time.sleep(float(probe.get("every", 10)))
            try:
                if frames and trace_from and not tracemalloc.is_tracing() and time.monotonic() - started >= trace_from:
                    tracemalloc.start(frames)
                row = sample()
                t = row["t"]
                while snapshots and t >= snapshots[0] and tracemalloc.is_tracing():
                    when = snapshots.pop(0)
                    tracemalloc.take_snapshot().dump(f"{probe['dir']}/snap-{int(when)}.tm")
                    row["snapshot"] = when
                if trim_every and t >= next_trim:
                    before = rss_bytes()
                    libc.malloc_trim(0)
                    row["trimmed"] = before - rss_bytes()
                    next_trim += trim_every
                out.write(json.dumps(row) + "\n")
                out.flush()
            except Exception as exc:  # the probe must not end the worker
                out.write(json.dumps({"error": repr(exc)}) + "\n")
                out.flush()

    threading.Thread(target=loop, name="memory-probe", daemon=True).start()
    return private_jobs.main(path)


# --- offline: the three stages over RocksDB, without Kafka (--offline) ----------------------

def generate_feed(path: Path, count: int, rate: float, seed: int, registry_url: str) -> int:
    """Simulator records as the feed sends them (validated, Avro-encoded), written to `path`
    as length-prefixed (kind, key, value, publish time ms) for `offline` to read."""
    import struct

    from producers.simulator import SimConfig, Simulation
    from schemas.records import validate_record
    from schemas.wire import SchemaCodec

    codec = SchemaCodec(url=registry_url)
    sim = Simulation(SimConfig(seed=seed, count=count, step_ms=max(1, round(1000 / rate)), start_ms=1_790_000_000_000,
                               ref_prefix=f"S{seed}-"))
    n = 0
    with open(path, "wb") as f:
        for item in sim.records():
            if item.invalid:
                continue
            record = validate_record(item.kind, item.record, now_ms=sim.t)
            record["reported_at"] = sim.t
            key = f"{record['source_region']}/{record['source_system']}/{record['source_ref']}".encode()
            value = codec.encode(catalog.input_topic(item.kind), record)
            kind = item.kind.encode()
            f.write(struct.pack(">BHIq", len(kind), len(key), len(value), sim.t) + kind + key + value)
            n += 1
    return n


def read_feed(path: Path):
    import struct

    head = struct.Struct(">BHIq")
    with open(path, "rb") as f:
        while True:
            h = f.read(head.size)
            if not h:
                return
            lk, lkey, lv, t = head.unpack(h)
            body = f.read(lk + lkey + lv)
            yield body[:lk].decode(), body[lk:lk + lkey], body[lk + lkey:], t


class _Store:
    """What FaustTableState uses of faust's RocksDB store: one rocksdict per partition, opened
    with the table's options the way faust opens them."""

    def __init__(self, path: Path, table):
        from faust.stores.rocksdb import RocksDBOptions

        self.path, self.table, self._dbs = path, table, {}
        self.rocksdb_options = RocksDBOptions(**table.options)

    def _db_for_partition(self, partition: int):
        db = self._dbs.get(partition)
        if db is None:
            self.path.mkdir(parents=True, exist_ok=True)
            db = self._dbs[partition] = self.rocksdb_options.open(self.path / f"{partition}.db")
        return db

    def set_persisted_offset(self, tp, offset: int) -> None:
        pass


class _Table:
    def __init__(self, name: str, path: Path):
        self.name, self.options, self._data = name, None, None
        self.path = path

    def _new_store(self):
        return _Store(self.path / self.name, self)

    @property
    def data(self):
        if self._data is None:
            self._data = self._new_store()
        return self._data


def offline(args) -> dict:
    """The checkout's three stages (stream_jobs.stages) over the production table adapter and
    RocksDB options (stream_jobs.tables), fed from a generated file at full speed with a
    virtual clock of `rate` events a second: what our code and RocksDB hold per event, with
    Kafka, faust and aiokafka out of the picture."""
    import gc
    import tracemalloc
    import zlib

    from ops.settings import load_settings
    from schemas.normalise import normalise_identifier
    from schemas.regions import load_regions
    from schemas.wire import RawDecoder, SchemaCodec
    from stream_jobs import stages as st
    from stream_jobs.app import border_duplicate_settings, provinces_of
    from stream_jobs.lookback import Lookback
    from stream_jobs.tables import FaustTableState

    settings = load_settings()
    workdir = Path(args.workdir or f"/tmp/bench-state-offline-{uuid.uuid4().hex[:6]}")
    workdir.mkdir(parents=True, exist_ok=True)
    feed = Path(args.offline)
    if not feed.exists():
        print(f"[offline] generating {args.events:,} records into {feed}", flush=True)
        generate_feed(feed, args.events, args.rate, 7, settings.registry_url)
    frames = int(args.tracemalloc or 0)
    codec = SchemaCodec(url=settings.registry_url)
    decode = RawDecoder.for_registry(settings.registry_url)
    regions = load_regions()
    parts = settings.partitions
    w = int(args.window * 1000)
    expire = not args.no_expire
    clock = {"ms": 0}
    state = {n: FaustTableState(_Table(n, workdir / "tables")) for n in ("records", "index", "hits-seen")}
    lookback = Lookback(clock=lambda: clock["ms"] / 1000)
    dedupe = st.DedupeStage(decode=decode, normalise=normalise_identifier, state=state["records"], partitions=parts,
                            window_ms=w, closed_retention_ms=w, expire=expire)
    match = st.MatchStage(state=state["index"], partitions=parts, is_within=regions.is_within, case_window_ms=w,
                          decode=decode, lookback=lookback, closed_retention_ms=w, expire=expire,
                          **{**border_duplicate_settings(settings), "border_window_ms": w // 2})
    hits = st.HitStage(state=state["hits-seen"], encode_hit=lambda h: codec.encode(catalog.HIT_TOPIC, h),
                       provinces_of=lambda notify: provinces_of(notify, regions), retention_ms=max(w, 180_000),
                       expire=expire)
    offsets: dict = {}

    def incoming(topic, partition, key, value):
        o = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        return st.Incoming(topic, partition, o, key, value)

    def run_stage(stage, table, batch):
        result = stage.process(batch, clock["ms"])
        table.apply(table.drain(), {})
        return result

    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    rows, snaps = [], {}
    n, batch, hit_count = 0, [], 0
    started = time.monotonic()
    trace_at = args.trace_from or 0
    snapshots = sorted(args.snapshots or [])

    def sample():
        gc.collect()
        row = {"events": n, "s": round(time.monotonic() - started, 1), "rss": rss_bytes(), "malloc": mallinfo(),
               "entries": {k: v.entries() for k, v in state.items()},
               "rocksdb": {k: {prop.split(".", 1)[1]: sum(db.property_int_value(prop) or 0
                                                            for db in v._store._dbs.values()) for prop in ROCKSDB_PROPS}
                           for k, v in state.items()},
               "lookback": {"entries": lookback.entries, "bytes": sum(len(x) for sl in lookback._by_partition.values()
                                                                      for d in sl.values() for x in d.values())},
               "normalise_cache": normalise_identifier.cache_info().currsize, "hits": hit_count}
        if tracemalloc.is_tracing():
            row["traced"] = tracemalloc.get_traced_memory()[0]
        rows.append(row)
        print(f"[offline] {n:,} events {row['s']}s rss={row['rss'] / 2**20:.0f}MiB malloc in use "
              f"{row['malloc']['inuse'] / 2**20:.0f} free {row['malloc']['free'] / 2**20:.0f} MiB "
              f"memtables {sum(r['cur-size-all-mem-tables'] for r in row['rocksdb'].values()) / 2**20:.0f} "
              f"cache {sum(r['block-cache-usage'] for r in row['rocksdb'].values()) / 2**20:.0f} "
              f"readers {sum(r['estimate-table-readers-mem'] for r in row['rocksdb'].values()) / 2**20:.1f} MiB "
              f"lookback {row['lookback']['bytes'] / 2**20:.0f} MiB entries {row['entries']} "
              f"normalise cache {row['normalise_cache']}", flush=True)

    for kind, key, value, t in read_feed(feed):
        if args.events and n >= args.events:
            break
        clock["ms"] = t
        batch.append(incoming(catalog.input_topic(kind), zlib.crc32(key) % parts, key, value))
        n += 1
        if len(batch) >= args.batch:
            res = run_stage(dedupe, state["records"], batch)
            reqs = [incoming(st.MATCH_TOPIC, o.partition, o.key, o.value) for o in res.outputs if o.topic == st.MATCH_TOPIC]
            res = run_stage(match, state["index"], reqs)
            cands = [incoming(st.CANDIDATE_TOPIC, o.partition, o.key, o.value) for o in res.outputs
                     if o.topic == st.CANDIDATE_TOPIC]
            res = run_stage(hits, state["hits-seen"], cands)
            hit_count += sum(1 for o in res.outputs if o.topic == st.HIT_TOPIC)
            batch = []
            if frames and trace_at and n >= trace_at and not tracemalloc.is_tracing():
                tracemalloc.start(frames)
            while snapshots and n >= snapshots[0] and tracemalloc.is_tracing():
                gc.collect()
                snaps[snapshots.pop(0)] = tracemalloc.take_snapshot()
            if n % args.sample_every < args.batch:
                sample()
    sample()
    before = rss_bytes()
    libc.malloc_trim(0)
    trimmed = before - rss_bytes()
    result = {"at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": "offline", "events": n,
              "rate": args.rate, "window_s": args.window, "expire": expire, "rows": rows, "trimmed_at_end": trimmed,
              "seconds": round(time.monotonic() - started, 1)}
    if len(snaps) >= 2:
        keys = sorted(snaps)
        diff = snaps[keys[-1]].compare_to(snaps[keys[0]], "traceback")
        result["tracemalloc"] = {"between_events": keys[:1] + keys[-1:], "top": [
            {"size_diff": d.size_diff, "count_diff": d.count_diff,
             "where": [f"{fr.filename.split('site-packages/')[-1].replace(str(Path.cwd()) + '/', '')}:{fr.lineno}"
                       for fr in d.traceback]} for d in diff[:25]]}
        for d in result["tracemalloc"]["top"][:25]:
            print(f"{d['size_diff'] / 2**20:8.2f} MiB {d['count_diff']:8d}  " + " < ".join(d["where"][:6]))
    return result


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
    p.add_argument("--variants", default=None,
                   help='JSON: worker name -> {"expire": bool, "env": {VAR: value}} (default: on and off)')
    p.add_argument("--probe", default=None, help='JSON: the memory probe in every worker, e.g. '
                   '{"every": 10, "tracemalloc": 8, "snapshots": [200, 600], "trim_every": 0}')
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # inside a probed worker's process
    p.add_argument("--offline", default=None, metavar="FEED",
                   help="the stages over RocksDB without Kafka, fed from FEED (generated first if missing)")
    p.add_argument("--no-expire", action="store_true", help="offline: expiry off")
    p.add_argument("--tracemalloc", type=int, default=0, help="offline: frames traced")
    p.add_argument("--trace-from", type=int, default=0, help="offline: events before tracing starts")
    p.add_argument("--snapshots", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="offline: events at which tracemalloc snapshots are taken (the first and last are diffed)")
    p.add_argument("--sample-every", type=int, default=10_000, help="offline: events between samples")
    args = p.parse_args(argv)
    if args.worker:
        return probe_main(args.worker)
    if args.offline:
        result = offline(args)
        out = Path(args.workdir or "/tmp") / "offline.json"
        out.write_text(json.dumps(result), encoding="utf-8")
        print(f"[offline] {out}")
        return 0
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
