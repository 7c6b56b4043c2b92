"""Stream-jobs benchmark: throughput of the faust worker(s) through dedupe, matcher and hits.

The input topics are loaded first with the jobs stopped (the simulator, --rate 0); then the
workers start and the clock runs from the first event the dedupe stage counts to the
moment the group's lag reaches zero. Produce-to-hit latency is measured separately, at a
fixed rate, from the workers' intelbus_produce_to_hit_seconds histogram.
"""
from __future__ import annotations

import time
import urllib.request
import uuid


def _metric_sum(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{") or l.startswith(name + " "))


def _histogram(port: int, name: str) -> list[tuple[float, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
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


def throughput(settings, n: int, workers: int = 1) -> dict:
    from ops.lag import JOBS_TOPICS, wait_for_zero_lag
    from ops.services import full_stack
    from producers.simulate import run_simulation
    from producers.simulator import SimConfig, Simulation

    stack = full_stack(settings, out=lambda m: None)
    job_names = {c.name for c in stack.components if c.name.startswith("jobs-")}
    stack.down(only=job_names)
    seed = uuid.uuid4().int % 10**6
    sim = Simulation(SimConfig(seed=seed, count=n, ref_prefix=f"J{seed}-"))
    load = run_simulation(sim, rate=0, settings=settings, phase_pause=0)
    events = load["published"]
    from dataclasses import replace

    scaled = replace(settings, jobs_workers=workers)
    started = time.monotonic()
    full_stack(scaled, out=lambda m: None).up()
    ready = time.monotonic()
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=1800, stable=2)
    done = time.monotonic()
    ports = [settings.metrics_port_base + 1 + i for i in range(workers)]
    processed = sum(_metric_sum(p, "intelbus_jobs_events_total") for p in ports)
    full_stack(scaled, out=lambda m: None).down(only={f"jobs-{i}" for i in range(workers)} - {"jobs-0"})
    return {"workers": workers, "events": events, "processed_by_workers": processed,
            "seconds_ready_to_drained": round(done - ready, 2), "events_per_s": round(events / (done - ready), 1),
            "startup_s": round(ready - started, 2)}


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
