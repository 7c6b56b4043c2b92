"""Stream-jobs benchmark: throughput of the faust worker(s) through dedupe, matcher and hits.

The input topics are loaded first with the jobs stopped (the simulator, --rate 0); then the
workers start together and the clock runs from the first event a dedupe stage counts to
the moment the group's lag reaches zero (rebalances among the starting workers, table
recovery and look-back reads inside it included). Produce-to-hit latency is measured separately, at a
fixed rate, from the workers' intelbus_produce_to_hit_seconds histogram.
"""
from __future__ import annotations

import threading
import time
import urllib.request
import uuid


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


def throughput(settings, n: int, workers: int = 1) -> dict:
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
    for i in range(workers):
        full_stack(scaled, out=lambda m: None).down(only=names)
        w = _start_together(full_stack(scaled, out=lambda m: None), [i], [])
        warmup[f"jobs-{i}"] = round(w["ready"] - w["started"], 2)
    full_stack(scaled, out=lambda m: None).down(only=names)
    seed = uuid.uuid4().int % 10**6
    sim = Simulation(SimConfig(seed=seed, count=n, ref_prefix=f"J{seed}-"))
    load = run_simulation(sim, rate=0, settings=settings, phase_pause=0)
    events = load["published"]
    run = _start_together(full_stack(scaled, out=lambda m: None), list(range(workers)), ports)
    # the workers' own CPU from here to the drain: events per CPU-second of a worker says whether
    # a worker gets slower with company (it does not scale) or only gets less of the 2 cores
    cpu0, t0 = sum(_metric_sum(p, "process_cpu_seconds_total") for p in ports), time.monotonic()
    events0 = sum(_metric_sum(p, "intelbus_jobs_events_total") for p in ports)
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=1800, stable=2)
    done = time.monotonic()
    processed = sum(_metric_sum(p, "intelbus_jobs_events_total") for p in ports)
    cpu = sum(_metric_sum(p, "process_cpu_seconds_total") for p in ports) - cpu0
    full_stack(scaled, out=lambda m: None).down(only=names - {"jobs-0"})
    first = run["first_event"] or run["ready"]
    return {"workers": workers, "events": events, "processed_by_workers": processed,
            "seconds_first_event_to_drained": round(done - first, 2), "events_per_s": round(events / (done - first), 1),
            "seconds_to_first_event": round(first - run["started"], 2),
            "seconds_to_all_ready": round(run["ready"] - run["started"], 2),
            "warmup_seconds_alone_to_ready": warmup,
            "workers_cpu_cores": round(cpu / max(1e-9, done - t0), 2),
            "events_per_worker_cpu_second": round((processed - events0) / cpu, 1) if cpu > 0 else None}


def _start_together(stack, indexes: list[int], ports: list[int]) -> dict:
    """Start the jobs workers at once, as `intelbus jobs --workers N` does (`intelbus up`
    starts one after the other, and each later one costs the group a rebalance); returns
    when they all are ready, with the time the first event was counted."""
    wanted = {f"jobs-{i}" for i in indexes}
    threads = [threading.Thread(target=stack._start, args=(c, c.start_timeout))
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
