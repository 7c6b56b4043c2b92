"""End-to-end benchmark: the simulator at a fixed rate through producers, jobs and sink.

Measured in one run, on the stack `intelbus up` runs (jobs-0 and the sink as services):
- sustained events/s (published by the simulator, read by the jobs, stored by the sink);
- produce-to-hit latency p50/p99/max, exact: a consumer of intel.hit (as a command center)
  takes each hit's arrival time minus its trigger's reported_at (set when it was published);
- produce-to-queryable latency p50/p99: a poller asks ClickHouse every 0.25 s for a 1-in-32
  sample of the run's events and notes when each first answers (so ±0.25 s);
- peak resident memory of every process (VmRSS sampled every second);
- throughput and lag over time (for the plot);
- the maximum sustainable rate: rates in a ladder, each held for `hold` seconds; a rate is
  sustained when the simulator achieved it and the jobs' and sink's lag at the end is under
  two seconds' worth of events (bounded, not growing);
- the Avro ceiling of this machine: fastavro encode and decode rates measured now, divided
  by the passes one event makes (one encode at the producer, one decode in the jobs, one
  decode in the sink): the most events/s one core could carry if Avro were all the work.
"""
from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

from ops.consume import consume_ready
from ops.secrets import clickhouse_url_as  # the benchmarks connect as the ClickHouse admin
from schemas.catalog import HIT_TOPIC

AVRO_PASSES = {"encode": 1, "decode": 2}


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0..1) of values, a value of the sample; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def avro_ceiling(n: int = 20_000, passes: int = 5) -> dict:
    """fastavro alone on one core: encode and decode rates of `n` simulated incidents, each the
    median of `passes` passes (one pass is a few tenths of a second, and on this machine one pass
    read anywhere from 33,638 to 55,453 decodes a second on 2026-12-02 within minutes); and the
    ceiling of events a second they allow (AVRO_PASSES encodes and decodes an event)."""
    import fastavro

    from bench.bench_producer import incidents
    from schemas.catalog import parsed_schema
    from schemas.records import validate_record

    parsed = parsed_schema("incident")
    records = [validate_record("incident", r) for r in incidents(n, seed=7)]
    encodes, decodes = [], []
    for _ in range(passes):
        started = time.perf_counter()
        bodies = []
        for r in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r)
            bodies.append(buf.getvalue())
        encodes.append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        for b in bodies:
            fastavro.schemaless_reader(io.BytesIO(b), parsed, None)
        decodes.append(n / (time.perf_counter() - started))
    encode, decode = statistics.median(encodes), statistics.median(decodes)
    per_event_s = AVRO_PASSES["encode"] / encode + AVRO_PASSES["decode"] / decode
    return {"encode_per_s": round(encode), "decode_per_s": round(decode), "passes": AVRO_PASSES,
            "decode_passes_per_s": [round(d) for d in decodes],
            "ceiling_events_per_s_one_core": round(1 / per_event_s),
            "ceiling_events_per_s_two_cores": round(2 / per_event_s)}


class _Hits(threading.Thread):
    """A command center's consumer of intel.hit, from now on; keeps each hit's first arrival."""

    def __init__(self, settings, prefix: str):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        from schemas.wire import RawDecoder

        self.prefix = prefix
        self.latencies_s: dict[str, float] = {}
        self.reported_s: dict[str, float] = {}  # when each hit's trigger was reported (epoch s)
        self.decode = RawDecoder.for_registry(settings.registry_url)
        self.consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-e2e-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "latest", "enable.auto.commit": False})
        self.consumer.subscribe([HIT_TOPIC])
        self.stop = threading.Event()
        self.assigned = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            msgs = consume_ready(self.consumer, 500, 0.2)  # consume(500, 0.2) held each hit up to 0.2 s
            if self.consumer.assignment():
                self.assigned.set()
            now_ms = time.time() * 1000
            for m in msgs:
                if m.error() or m.value() is None:
                    continue
                hit = self.decode(m.value())
                if f"/{self.prefix}" not in hit["record_key"] or hit["hit_id"] in self.latencies_s:
                    continue
                self.latencies_s[hit["hit_id"]] = (now_ms - hit["trigger_reported_at"]) / 1000
                self.reported_s[hit["hit_id"]] = hit["trigger_reported_at"] / 1000
        self.consumer.close()


class _Queryable(threading.Thread):
    """Polls ClickHouse for a sample of the run's events; the first answer is when it became queryable."""

    def __init__(self, settings, prefix: str, every: float = 0.25):
        super().__init__(daemon=True)
        from clickhouse_driver import Client

        self.client = Client.from_url(clickhouse_url_as(settings, "default"))
        self.prefix, self.every = prefix, every
        self.latencies_s: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now_ms = time.time() * 1000
            try:
                rows = self.client.execute(
                    "SELECT event_id, reported_ms FROM events WHERE source_ref LIKE %(p)s AND modulo(cityHash64(event_id), 32) = 0",
                    {"p": self.prefix + "%"})
            except Exception:
                rows = []
            for event_id, reported_ms in rows:
                if event_id not in self.latencies_s:
                    self.latencies_s[event_id] = max(0.0, (now_ms - reported_ms) / 1000)
            self.stop.wait(self.every)


class _Sampler(threading.Thread):
    """Every second: events read by the jobs, rows stored by the sink, both groups' lag, RSS per process."""

    def __init__(self, settings, pids: dict[str, int]):
        super().__init__(daemon=True)
        from ops.lag import JOBS_TOPICS, SINK_TOPICS, LagProbe

        self.settings = settings
        self.pids = pids
        self.jobs_lag = LagProbe(settings, "intelbus-jobs", JOBS_TOPICS)
        self.sink_lag = LagProbe(settings, "intelbus-sink", SINK_TOPICS)
        self.series: list[dict] = []
        self.peak_rss_mb: dict[str, float] = {}
        self.cpu_first: dict[str, tuple[float, float]] = {}
        self.cpu_last: dict[str, tuple[float, float]] = {}
        self.stop = threading.Event()

    def _metric(self, port: int, name: str) -> float:
        from bench.bench_jobs import _metric_sum

        try:
            return _metric_sum(port, name)
        except Exception:
            return float("nan")

    def cpu_seconds(self) -> dict[str, float]:
        """utime + stime of each process so far, in seconds."""
        out = {}
        ticks = os.sysconf("SC_CLK_TCK")
        for name, pid in list(self.pids.items()):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, IndexError, ValueError):
                continue
        return out

    def rss(self) -> None:
        for name, pid in list(self.pids.items()):
            try:
                with open(f"/proc/{pid}/status") as f:
                    kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
            except (OSError, StopIteration):
                continue
            self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), round(kb / 1024, 1))

    def sample(self) -> dict:
        base = self.settings.metrics_port_base
        workers = [int(name.split("-")[1]) for name in self.pids if name.startswith("jobs-")] or [0]
        point = {"t": time.time(),
                 "jobs_events": sum(self._metric(base + 1 + i, "intelbus_jobs_events_total") for i in workers),
                 "sink_rows": self._metric(base + 20, "intelbus_sink_messages_total")}
        try:
            point["jobs_lag"] = sum(self.jobs_lag.lag().values())
            point["sink_lag"] = sum(self.sink_lag.lag().values())
        except Exception:
            point["jobs_lag"] = point["sink_lag"] = float("nan")
        self.rss()
        point["cpu_s"] = self.cpu_seconds()
        return point

    def run(self) -> None:
        while not self.stop.is_set():
            point = self.sample()
            self.series.append(point)
            for name, cpu in point["cpu_s"].items():
                self.cpu_first.setdefault(name, (time.time(), cpu))
                self.cpu_last[name] = (time.time(), cpu)
            self.stop.wait(1.0)
        self.jobs_lag.close()
        self.sink_lag.close()


def _service_pids(settings) -> dict[str, int]:
    from ops.services import full_stack

    return {s.name: s.pid for s in full_stack(settings, out=lambda m: None).status() if s.pid}


def _simulate(rate: float, seconds: float, prefix: str, seed: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "ops.cli", "simulate", "--rate", str(rate), "--duration", str(seconds),
            "--seed", str(seed), "--ref-prefix", prefix, "--phase-pause", "0", "--quiet", "--metrics-port", "0"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _profile_jobs(pid: int | None, seconds: float):
    """py-spy on the jobs worker while the simulator runs (in the background); the raw output's path."""
    import shutil
    import tempfile

    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not pid or not os.path.exists(spy):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="intelbus-spy-"), "jobs.txt")
    subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "-f", "raw", "-o", path,
                      "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


# where a sample of the jobs worker is, by the first matching frame (innermost first)
PROFILE_BUCKETS = (
    ("Avro decode (fastavro)", ("decode_body",)),
    ("Avro encode (fastavro)", ("encode_with_id",)),
    ("JSON state and requests", ("json/",)),
    ("intelbus stages (dedupe, match, hits logic)", ("stream_jobs/stages.py", "stream_jobs/rules.py",
                                                      "stream_jobs/state.py", "schemas/")),
    ("state store and changelog (rocksdict, tables.py)", ("stream_jobs/tables.py",)),
    ("waiting for Kafka acks (producer flush thread)", ("concurrent/futures/thread.py",)),
    ("faust/mode/aiokafka consumer machinery", ("faust/", "mode/", "aiokafka/", "asyncio/", "selectors.py")),
)


def _summarise_profile(path: str) -> dict:
    deadline = time.time() + 40
    while time.time() < deadline and not (os.path.exists(path) and os.path.getsize(path) > 0):
        time.sleep(1)
    if not os.path.exists(path):
        return {"error": "no py-spy output (ptrace not permitted?)"}
    time.sleep(1)
    buckets: dict[str, int] = {}
    total = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, n = line.rsplit(" ", 1)
        try:
            count = int(n)
        except ValueError:
            continue
        total += count
        frames = stack.split(";")
        label = "other (event loop in C, threads idle in C)"
        for frame in reversed(frames):
            hit = next((name for name, needles in PROFILE_BUCKETS if any(x in frame for x in needles)), None)
            if hit:
                label = hit
                break
        buckets[label] = buckets.get(label, 0) + count
    return {"samples": total, "share": {k: round(v / total, 3) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])}
            if total else {}}


def gc_pauses(port: int) -> dict[str, dict[str, float]]:
    """A process's `intelbus_gc_pause_seconds` by generation: collections, seconds, and how many
    took 0.1 s or more."""
    from bench.bench_jobs import metrics_text

    text = metrics_text(port)
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("intelbus_gc_pause_seconds"):
            continue
        name, value = line.rsplit(" ", 1)
        gen = name.split('generation="', 1)[1].split('"', 1)[0] if 'generation="' in name else "?"
        g = out.setdefault(gen, {"count": 0.0, "seconds": 0.0, "over_0.1s": 0.0})
        if name.startswith("intelbus_gc_pause_seconds_count"):
            g["count"] = float(value)
            g["over_0.1s"] += float(value)
        elif name.startswith("intelbus_gc_pause_seconds_sum"):
            g["seconds"] = float(value)
        elif name.startswith("intelbus_gc_pause_seconds_bucket") and 'le="0.1"' in name:
            g["over_0.1s"] -= float(value)
    return out


def _gc_delta(before: dict, after: dict) -> dict:
    return {gen: {k: round(v - before.get(gen, {}).get(k, 0.0), 3) for k, v in g.items()} for gen, g in sorted(after.items())}


def stalls(reported_s: dict[str, float], latencies_s: dict[str, float], series: list[dict], started: float,
           slow: float = 0.5) -> list[dict]:
    """The seconds in which hits were slow (over `slow`): when (from the start of publishing), how
    many, the worst, and the CPU each process used from the second before to two seconds after
    (the samples are a second apart): a merge in ClickHouse, a burst in Kafka, a worker that
    stood still."""
    by_second: dict[int, list[float]] = {}
    for hit_id, lat in latencies_s.items():
        if lat > slow:
            by_second.setdefault(int(reported_s[hit_id] - started), []).append(lat)
    out = []
    for sec, lats in sorted(by_second.items()):
        window = [p for p in series if started + sec - 1 <= p["t"] <= started + sec + 2]
        cpu = {}
        if len(window) >= 2:
            span = window[-1]["t"] - window[0]["t"]
            cpu = {name: round((window[-1]["cpu_s"].get(name, c) - c) / span, 2)
                   for name, c in window[0]["cpu_s"].items()}
        out.append({"t": sec, "slow_hits": len(lats), "worst_s": round(max(lats), 3), "cpu_cores": cpu})
    return out


def fixed_rate(settings, rate: float, seconds: float, *, drain_timeout: float = 120.0, profile: bool = False) -> dict:
    """One run at `rate` for `seconds`: latencies, throughput, lag and memory."""
    from ops.lag import JOBS_TOPICS, SINK_TOPICS, wait_for_zero_lag

    seed = uuid.uuid4().int % 10**6
    prefix = f"E{seed}-"
    hits = _Hits(settings, prefix)
    hits.start()
    hits.assigned.wait(30)
    queryable = _Queryable(settings, prefix)
    queryable.start()
    sampler = _Sampler(settings, _service_pids(settings))
    jobs_port = settings.metrics_port_base + 1
    try:
        gc_before = gc_pauses(jobs_port)
    except OSError:
        gc_before = None
    sampler.start()
    started = time.time()
    sim = _simulate(rate, seconds, prefix, seed)
    sampler.pids["simulate"] = sim.pid
    profile_path = _profile_jobs(sampler.pids.get("jobs-0"), min(seconds, 30.0)) if profile else None
    out, err = sim.communicate(timeout=seconds * 5 + 300)
    published_at = time.time()
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-500:]}
    end_lag = sampler.series[-1] if sampler.series else {}
    drained = True
    try:
        wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=drain_timeout, stable=2)
        wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=drain_timeout, stable=2)
    except TimeoutError:
        drained = False
    time.sleep(1.5)  # the last hits in flight and the last sink batch
    for t in (hits, queryable, sampler):
        t.stop.set()
    for t in (hits, queryable, sampler):
        t.join(10)
    try:
        jobs_gc = _gc_delta(gc_before, gc_pauses(jobs_port)) if gc_before is not None else {"error": "no metrics"}
    except OSError as exc:
        jobs_gc = {"error": str(exc)}
    cpu_cores = {name: round((sampler.cpu_last[name][1] - c0) / max(1e-9, sampler.cpu_last[name][0] - t0), 2)
                 for name, (t0, c0) in sampler.cpu_first.items() if name in sampler.cpu_last}
    profile = _summarise_profile(profile_path) if profile_path else {"error": "py-spy did not run"}
    hit_lat = list(hits.latencies_s.values())
    q_lat = list(queryable.latencies_s.values())
    series = sampler.series
    steady = [p for p in series if started + 5 <= p["t"] <= published_at]
    jobs_rate = sink_rate = None
    if len(steady) >= 2:
        span = steady[-1]["t"] - steady[0]["t"]
        jobs_rate = (steady[-1]["jobs_events"] - steady[0]["jobs_events"]) / span
        sink_rate = (steady[-1]["sink_rows"] - steady[0]["sink_rows"]) / span
    return {
        "offered_rate": rate, "seconds": seconds,
        "published": report.get("published"), "achieved_publish_rate": report.get("rate"),
        "jobs_events_per_s_steady": round(jobs_rate, 1) if jobs_rate is not None else None,
        "sink_messages_per_s_steady": round(sink_rate, 1) if sink_rate is not None else None,
        "lag_at_end_of_publishing": {"jobs": end_lag.get("jobs_lag"), "sink": end_lag.get("sink_lag")},
        "drained": drained,
        "hits": len(hit_lat),
        "produce_to_hit_s": {"p50": percentile(hit_lat, 0.5), "p99": percentile(hit_lat, 0.99),
                             "max": max(hit_lat) if hit_lat else None},
        "produce_to_queryable_s": {"sampled": len(q_lat), "p50": percentile(q_lat, 0.5), "p99": percentile(q_lat, 0.99),
                                   "max": max(q_lat) if q_lat else None},
        "peak_rss_mb": sampler.peak_rss_mb,
        "cpu_cores_used": cpu_cores,
        "jobs_gc_pauses": jobs_gc,
        "slow_hit_seconds": stalls(hits.reported_s, hits.latencies_s, series, started),
        "jobs_profile": profile,
        "series": [{**{k: v for k, v in p.items() if k != "cpu_s"}, "t": round(p["t"] - started, 2)} for p in series],
        "hit_latencies_s": sorted(round(x, 4) for x in hit_lat),
        "queryable_latencies_s": sorted(round(x, 3) for x in q_lat),
    }


def sustained(result: dict, rate: float) -> bool:
    """The simulator achieved the rate, and what the jobs and sink had left at the end was under 2 s of events."""
    achieved = result.get("achieved_publish_rate") or 0
    lag = result["lag_at_end_of_publishing"]
    bound = 2 * rate
    return (achieved >= 0.95 * rate and lag["jobs"] is not None and lag["jobs"] <= bound
            and lag["sink"] is not None and lag["sink"] <= bound)


def max_sustainable(settings, ladder: list[float], hold: float) -> dict:
    """Up the ladder until a rate lags; if the first already does, one step at half of it."""
    steps = []
    best = None

    def step(rate: float) -> bool:
        r = fixed_rate(settings, rate, hold, drain_timeout=180)
        ok = sustained(r, rate)
        steps.append({"rate": rate, "sustained": ok, "achieved_publish_rate": r["achieved_publish_rate"],
                      "lag_at_end": r["lag_at_end_of_publishing"], "jobs_events_per_s_steady": r["jobs_events_per_s_steady"],
                      "produce_to_hit_p99_s": r["produce_to_hit_s"]["p99"]})
        return ok

    for rate in ladder:
        if not step(rate):
            if best is None and step(rate / 2):
                best = rate / 2
            break
        best = rate
    return {"hold_seconds": hold, "steps": steps, "max_sustainable_rate": best}


def plot(result: dict, path) -> None:
    """Latency distribution (produce-to-hit, produce-to-queryable) and throughput/lag over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for key, label in (("hit_latencies_s", "produce → hit (command center)"),
                       ("queryable_latencies_s", "produce → queryable (ClickHouse)")):
        values = result[key]
        if values:
            ax1.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=f"{label}, n={len(values)}")
    ax1.set_xscale("log")
    ax1.set_xlabel("seconds (log)")
    ax1.set_ylabel("cumulative share")
    ax1.axvline(0.5, color="grey", linestyle=":", label="0.5 s target (hits, p99)")
    ax1.set_title(f"latency at {result['offered_rate']:.0f} events/s offered")
    ax1.legend(fontsize=8)
    series = result["series"]
    t = [p["t"] for p in series]

    def rate_of(key):
        return [0.0] + [max(0.0, (b[key] - a[key]) / max(1e-9, b["t"] - a["t"])) for a, b in zip(series, series[1:])]

    if series:
        ax2.plot(t, rate_of("jobs_events"), label="jobs: events read/s")
        ax2.plot(t, rate_of("sink_rows"), label="sink: messages stored/s")
        ax2.set_xlabel("seconds since start")
        ax2.set_ylabel("per second")
        ax3 = ax2.twinx()
        ax3.plot(t, [p["jobs_lag"] for p in series], color="tab:red", linestyle="--", label="jobs lag (messages)")
        ax3.plot(t, [p["sink_lag"] for p in series], color="tab:purple", linestyle=":", label="sink lag (messages)")
        ax3.set_ylabel("lag (messages)")
        lines = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
        ax2.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="upper left")
    ax2.set_title("throughput and lag over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(settings, *, rate: float, seconds: float, ladder: list[float], hold: float) -> dict:
    result = {"avro_ceiling": avro_ceiling()}
    result["fixed_rate"] = fixed_rate(settings, rate, seconds, profile=True)
    result["max_sustainable"] = max_sustainable(settings, ladder, hold)
    best = result["max_sustainable"]["max_sustainable_rate"]
    ceiling = result["avro_ceiling"]["ceiling_events_per_s_one_core"]
    result["max_sustainable_over_avro_ceiling"] = round(best / ceiling, 3) if best else 0.0
    return result
