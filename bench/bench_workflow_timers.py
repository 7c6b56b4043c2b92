"""Workflow timers benchmark (issue 16): 100,000 open items with deadlines, the bus at 2,000 events/s.

One run, on the stack `intelbus up` runs (jobs-0, the sink, the stack's own workflows-0 untouched):

1. a private workflow worker (`python -m stream_jobs.workflow_job` with an app id, datadir and
   metrics port of its own, a policy file, INTELBUS_WORKFLOWS_ONLY so that it opens no follow-up
   for the simulator's hits, and INTELBUS_WORKFLOWS_OUTPUT_TOPIC so that its events go to a
   topic of its own: 100,000 reminders must not reach the stack's sink, feeds and queues);
2. the simulator (`intelbus simulate --rate 2000`) drives the bus for the whole run; the bus
   rate is measured from the input topics' offsets over each phase;
3. phase "no items": the worker's CPU (/proc/<pid>/stat) with nothing open;
4. load: N `IssueDirective` commands produced by the bench (as the admin principal) straight
   onto the job's input path, `<app>-items` (the topic the job's own `commands` agent forwards
   the gateway's commands to, partitioned the same way, murmur2), each to one recipient, due at
   a time spread uniformly over the fire window; the load is done when N `ISSUED` events are out;
5. phase "open, none due": N items open, none due yet: the worker's CPU and memory;
6. phase "fire window": every item's `due:<region>` reminder falls due in the window (N/window
   per second); for each `REMINDED` event: lateness = its `at` (when the worker fired it) minus its
   `scheduled_at`, and the bench consumer's receipt minus `scheduled_at` (fired, produced,
   delivered); the worker's CPU over the window;
7. baseline, same process and run: an asyncio loop in the bench sleeping until sampled due times of
   the same window (one per 20 ms) and noting how late it wakes (what the machine's scheduling
   alone costs), and the worker's CPU with no items (3.).

The timers' CPU cost per second = worker CPU in the fire window - worker CPU with the items
open and none due (same items, same bus); what holding the items costs = the latter - the
no-items phase. Results appended to bench/results/workflow-timers.md (and .json).

With --horizon H (> the window), the deadlines are spread over H seconds and only the first
window's are measured: the other items stay open (100,000 open items, N x window/H of them due
in the window: a lower fire rate for the same number of open items).

    .venv/bin/python -m bench.bench_workflow_timers            # 100,000 items, 300 s window
    .venv/bin/python -m bench.bench_workflow_timers --horizon 1000   # the same items, 100 fires/s
    .venv/bin/python -m bench.bench_workflow_timers --quick    # 10,000 items, 60 s window
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from bench.bench_e2e import percentile
from bench.proc import cpu_seconds as process_cpu_seconds, machine_shares, machine_times
from schemas import catalog

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
INPUT_TOPICS = tuple(catalog.input_topic(k) for k in ("incident", "alert", "wanted"))
# (issuer region, recipient region): a province or city directs a region inside it
PAIRS = (("130000", "130822"), ("110000", "110112"), ("120000", "120119"), ("130000", "131000"), ("320000", "320281"))

POLICY = """
# bench/bench_workflow_timers.py: one reminder per directive in the run (due:<region>); the
# acknowledgement deadline and the escalations come a day later, after the run
directive:
  acknowledge: 1d
  overdue_step: 1d
escalation:
  step: 0
"""


def cpu_seconds(pid: int) -> float:
    return process_cpu_seconds(pid) or 0.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values) if values else None, "share_over_1s": (sum(v > 1.0 for v in values) / len(values)) if values else None}


class Worker:
    """The private workflow worker process."""

    def __init__(self, settings, workdir: Path, tag: str, code: Path = REPO):
        self.settings, self.workdir, self.tag, self.code = settings, workdir, tag, Path(code)
        self.app_id = f"intelbus-jobs-workflows-bench-{tag}"
        self.out_topic = f"{self.app_id}-events"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (workdir / "policy.yaml").write_text(POLICY, encoding="utf-8")
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "INTELBUS_WORKFLOWS_FILE": str(self.workdir / "policy.yaml"),
               "INTELBUS_WORKFLOWS_ONLY": self.tag, "INTELBUS_WORKFLOWS_OFFSET_RESET": "latest",
               "INTELBUS_WORKFLOWS_OUTPUT_TOPIC": self.out_topic, "INTELBUS_STACK_DIR": str(self.settings.stack_dir)}
        if self.code != REPO:  # another version of the job (a before/after comparison)
            env["PYTHONPATH"] = str(self.code)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_jobs.workflow_job", "--app-id", self.app_id, "--datadir",
             str(self.workdir / "data"), "--metrics-port", str(self.port), "--log-level", "warning"],
            env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, cwd=str(self.code))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"workflow worker exited with {self.proc.returncode}: see {self.log_path}")
            try:
                if "intelbus_service_ready 1.0" in self.metrics():
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"workflow worker not ready within {timeout:.0f}s: see {self.log_path}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str) -> float:
        return sum(float(l.rsplit(" ", 1)[1]) for l in self.metrics().splitlines()
                   if l.startswith(name + "{") or l.startswith(name + " "))

    def stop(self):
        """SIGTERM; how long it took to be out (ops/private_app.py)."""
        from ops.private_app import stop_worker

        return stop_worker(self.proc)

    def delete_topics(self) -> None:
        from ops.private_app import delete_private_app

        delete_private_app(self.settings, self.app_id)


class Events(threading.Thread):
    """Reads the worker's output topic from its start: ISSUED count, and each REMINDED's times."""

    def __init__(self, settings, topic: str):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        from schemas.wire import SchemaCodec

        self.codec = SchemaCodec(url=settings.registry_url)
        self.consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-wt-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 20})
        meta = self.consumer.list_topics(topic, timeout=15).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        self.issued = 0
        self.reminded: list[tuple[str, int, int, float]] = []  # (item id, scheduled ms, at ms, receipt s)
        self.other: dict[str, int] = {}
        self.messages = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            for msg in self.consumer.consume(1000, 0.05):
                if msg.error():
                    continue
                received = time.time()
                e = self.codec.decode(msg.value())
                self.messages += 1
                if e["event_type"] == "ISSUED":
                    self.issued += 1
                elif e["event_type"] == "REMINDED":
                    self.reminded.append((e["item_id"], _ms(e["scheduled_at"]), _ms(e["at"]), received))
                else:
                    self.other[e["event_type"]] = self.other.get(e["event_type"], 0) + 1
        self.consumer.close()


def _ms(value) -> int:
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def bus_offsets(settings) -> int:
    """Sum of the high watermarks of the simulator's input topics (events carried so far)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-wt-w-{uuid.uuid4().hex}"})
    try:
        total = 0
        for topic in INPUT_TOPICS:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                total += c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return total
    finally:
        c.close()


class Phase:
    """CPU of the worker and the machine, and the bus rate, between begin() and end()."""

    def __init__(self, settings, pid: int, name: str):
        self.settings, self.pid, self.name = settings, pid, name

    def __enter__(self):
        self.t0, self.cpu0, self.busy0, self.bus0 = time.monotonic(), cpu_seconds(self.pid), machine_times(), bus_offsets(self.settings)
        self.rss_max = rss_mib(self.pid)
        return self

    def sample(self) -> None:
        self.rss_max = max(self.rss_max, rss_mib(self.pid))

    def __exit__(self, *exc):
        dt = time.monotonic() - self.t0
        busy = machine_times()
        self.result = {"seconds": round(dt, 1),
                       "worker_cpu_cores": round((cpu_seconds(self.pid) - self.cpu0) / dt, 4),
                       "worker_rss_mib_max": round(max(self.rss_max, rss_mib(self.pid)), 1),
                       "machine_busy_share": machine_shares(self.busy0, busy)["busy"],
                       "bus_events_per_s": round((bus_offsets(self.settings) - self.bus0) / dt, 1),
                       "load_average_1m": float(open("/proc/loadavg").read().split()[0])}
        return False


def progress(what: str, figures: dict) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}: {json.dumps(figures)}", file=sys.stderr, flush=True)


def hold(phase: Phase, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        phase.sample()


def sleep_loop_lateness(start_s: float, window_s: float, every_s: float = 0.02) -> list[float]:
    """Baseline: an asyncio loop (in this process) sleeping until each sampled due time; how late it wakes."""

    async def main() -> list[float]:
        late = []
        t = start_s
        while t < start_s + window_s:
            now = time.time()
            if t > now:
                await asyncio.sleep(t - now)
            late.append(time.time() - t)
            t += every_s
        return late

    return asyncio.run(main())


def load(settings, worker: Worker, n: int, first_due_s: float, window_s: float, seed: int) -> dict:
    """N IssueDirective envelopes onto <app>-items, due uniformly over [first_due_s, first_due_s + window_s)."""
    from confluent_kafka import Producer

    from stream_jobs.workflow_job import encode_envelope, items_topic
    from workflows import model as m

    rng = random.Random(seed)
    p = Producer({**settings.kafka_config("intelbus-admin"), "enable.idempotence": True, "acks": "all",
                  "linger.ms": 20, "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})
    topic = items_topic(worker.app_id)
    due = {}
    for i in range(n):
        issuer, recipient = PAIRS[i % len(PAIRS)]
        actor = m.Actor(f"bench-{issuer}-cc", issuer, "COMMAND_CENTER", frozenset({"command_center"}))
        item = f"D-{worker.tag}-{i:06d}"
        at = int((first_due_s + rng.random() * window_s) * 1000)
        cmd = m.IssueDirective(command_id=f"{worker.tag}-{i}", item_id=item, actor=actor, to=(recipient,),
                               task="check the listed addresses tonight", due_at=at)
        due[item] = at
        while True:
            try:
                p.produce(topic, key=item.encode(), value=encode_envelope(cmd, int(time.time() * 1000), "bench"))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    if p.flush(60):
        raise RuntimeError("the bench could not deliver every command")
    return due


def run(settings, *, items: int, window_s: float, idle_s: float, rate: float, load_rate_guess: float,
        horizon_s: float | None = None, keep: bool = False, worker_code: Path | None = None, code_label: str | None = None) -> dict:
    tag = "WT" + uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="intelbus-bench-wt-"))
    worker = Worker(settings, workdir, tag, worker_code or REPO)
    sim = None
    result: dict = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(), "items": items,
                    "window_s": window_s, "horizon_s": horizon_s or window_s, "rate_offered": rate, "tag": tag}
    horizon_s = max(horizon_s or window_s, window_s)
    try:
        import subprocess as sp

        commit = sp.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = bool(sp.run(["git", "status", "--porcelain", "stream_jobs/workflow_job.py"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip())
        result["code"] = code_label or (commit + (" + uncommitted workflow_job.py" if dirty else ""))
        result["tick_s"] = settings.workflows_tick_s
        worker.start()
        events = Events(settings, worker.out_topic)
        events.start()
        load_budget = items / load_rate_guess * 1.3 + 10
        sim_seconds = idle_s + load_budget + idle_s + window_s + 60
        sim = subprocess.Popen([sys.executable, "-m", "ops.cli", "simulate", "--rate", str(rate), "--duration",
                                str(sim_seconds), "--seed", str(int(time.time())), "--ref-prefix", f"S{tag[2:]}-",  # not the tag: the worker would open their hits
                                "--phase-pause", "0", "--quiet", "--metrics-port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
        time.sleep(5)  # the simulator's start (lists the wanted records first)
        with Phase(settings, worker.proc.pid, "no items") as ph:
            hold(ph, idle_s)
        result["no_items"] = ph.result
        progress("no_items", ph.result)
        # the fire window starts after the load (budget) and the "open, none due" phase
        loaded_at = time.time()
        first_due = loaded_at + load_budget + idle_s + 5
        with Phase(settings, worker.proc.pid, "load") as ph:
            due = load(settings, worker, items, first_due, horizon_s, seed=items)
            while events.issued < items and time.time() < first_due - idle_s:
                time.sleep(0.5)
                ph.sample()
        result["load"] = {**ph.result, "issued": events.issued,
                          "commands_per_s": round(events.issued / max(1e-9, time.time() - loaded_at), 1)}
        progress("load", result["load"])
        if events.issued < items:
            raise RuntimeError(f"only {events.issued} of {items} directives issued in the load budget "
                               f"({load_budget:.0f} s): raise --load-rate-guess lower")
        result["open_items_metric"] = worker.metric("intelbus_workflows_open_items")
        with Phase(settings, worker.proc.pid, "open, none due") as ph:
            hold(ph, max(1.0, first_due - time.time() - 2))
        result["open_none_due"] = ph.result
        progress("open_none_due", ph.result)
        baseline: list[float] = []
        th = threading.Thread(target=lambda: baseline.extend(sleep_loop_lateness(first_due, window_s)), daemon=True)
        th.start()
        time.sleep(max(0.0, first_due - time.time()))
        with Phase(settings, worker.proc.pid, "fire window") as ph:
            hold(ph, window_s)
        result["fire_window"] = ph.result
        progress("fire_window", ph.result)
        th.join(30)
        # the last deadlines of the window: wait until each has come (or 30 s)
        end = time.time() + 30
        window_end_ms = int((first_due + window_s) * 1000)
        in_window = {i for i, at in due.items() if at < window_end_ms}  # the rest stay open, due after the window
        while len(in_window & {r[0] for r in events.reminded}) < len(in_window) and time.time() < end:
            time.sleep(0.5)
        time.sleep(2)
        events.stopping = True
        events.join(10)
        first = {}
        copies: dict[str, int] = {}
        for item, scheduled, at, received in events.reminded:
            copies[item] = copies.get(item, 0) + 1
            if item in in_window:
                first.setdefault(item, (scheduled, at, received))
        fire_late = [(at - s) / 1000 for s, at, _ in first.values()]
        receipt_late = [r - s / 1000 for s, _, r in first.values()]
        wrong_time = sum(1 for item, (s, _, _) in first.items() if due.get(item) != s)
        result.update({
            "due_in_window": len(in_window), "reminded_items": len(first), "reminded_messages": len(events.reminded),
            "missing": len(in_window) - len(first), "duplicates": sum(n - 1 for n in copies.values()), "scheduled_not_as_issued": wrong_time,
            "other_events": events.other,
            "fired_lateness_s": summary(fire_late), "receipt_lateness_s": summary(receipt_late),
            "baseline_sleep_loop_lateness_s": summary(baseline),
            "timer_lag_metric_count": worker.metric("intelbus_workflows_timer_lag_seconds_count"),
            "timers_cpu_cores": round(result["fire_window"]["worker_cpu_cores"] - result["open_none_due"]["worker_cpu_cores"], 4),
            "holding_items_cpu_cores": round(result["open_none_due"]["worker_cpu_cores"] - result["no_items"]["worker_cpu_cores"], 4),
            "fires_per_s": round(len(in_window) / window_s, 1),
        })
        result["timers_cpu_ms_per_fire"] = round(result["timers_cpu_cores"] * 1000 / max(1e-9, result["fires_per_s"]), 3)
        return result
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            try:
                sim.wait(20)
            except subprocess.TimeoutExpired:
                sim.kill()
        stopped = worker.stop()
        if stopped is not None:
            print(f"worker out {stopped.seconds:.1f} s after SIGTERM{' (SIGKILLed)' if stopped.killed else ''}", file=sys.stderr)
        if not keep:
            worker.delete_topics()
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} and the topics {worker.app_id}-*", file=sys.stderr)


def _s(v) -> str:
    return "n/a" if v is None else (f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s")


def markdown_rows(r: dict) -> list[str]:
    f, rc, b = r["fired_lateness_s"], r["receipt_lateness_s"], r["baseline_sleep_loop_lateness_s"]
    return [
        f"### {r['at']}: {r['items']:,} items due over {r.get('horizon_s') or r['window_s']:.0f} s, measured over the first "
        f"{r['window_s']:.0f} s ({r['fires_per_s']:.0f} fires/s), tick {r['tick_s']} s, "
        f"code {r['code']}", "",
        "| | p50 | p99 | max | share > 1 s |", "|---|---|---|---|---|",
        f"| lateness: event `at` − `scheduled_at` (worker fired it) | {_s(f['p50'])} | {_s(f['p99'])} | {_s(f['max'])} | {f['share_over_1s']:.2%} |",
        f"| lateness: bench consumer's receipt − `scheduled_at` | {_s(rc['p50'])} | {_s(rc['p99'])} | {_s(rc['max'])} | {rc['share_over_1s']:.2%} |",
        f"| baseline: asyncio sleep loop in the bench, same window | {_s(b['p50'])} | {_s(b['p99'])} | {_s(b['max'])} | {b['share_over_1s']:.2%} |",
        "",
        "| phase | seconds | worker CPU (cores) | worker RSS max (MiB) | bus events/s | machine busy | load average (1 min, end) |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} | {r[k]['seconds']} | {r[k]['worker_cpu_cores']} | {r[k]['worker_rss_mib_max']} | {r[k]['bus_events_per_s']:,.0f} | "
          f"{r[k]['machine_busy_share']} | {r[k].get('load_average_1m', '')} |" for name, k in (("no items", "no_items"), ("load", "load"),
                                                             ("open, none due", "open_none_due"), ("fire window", "fire_window"))],
        "",
        f"Timers' CPU cost: {r['timers_cpu_cores']:.3f} cores while firing {r['fires_per_s']:.0f} steps/s "
        f"({r['timers_cpu_ms_per_fire']:.2f} ms CPU per fired step); holding {r['items']:,} open items with none due: "
        f"{r['holding_items_cpu_cores']:+.3f} cores over the no-items phase. Load: {r['load']['commands_per_s']:,.0f} commands/s. "
        f"Reminders: {r['reminded_items']:,} of the {r.get('due_in_window', r['items']):,} items due in the window fired, {r['missing']} missing, {r['duplicates']} duplicate messages, "
        f"{r['scheduled_not_as_issued']} with a scheduled time other than the directive's due time; other events {r['other_events']}.",
        ""]


def append_markdown(r: dict, path: Path) -> None:
    if not path.exists():
        path.write_text("# Workflow timers (bench/bench_workflow_timers.py)\n\n"
                        "Issue 16: 100,000 open items with deadlines, a deadline fires within 1 s of its time (p99) while the "
                        "bus carries 2,000 events/s; the timers' CPU cost per second. Method: the module docstring.\n\n",
                        encoding="utf-8")
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(markdown_rows(r)) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 items, 60 s window, 20 s phases")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="seconds over which the deadlines fall due")
    parser.add_argument("--idle", type=float, default=None, help="seconds of each phase without deadlines due")
    parser.add_argument("--horizon", type=float, default=None,
                        help="seconds over which the deadlines are spread (default: the window; longer: items stay open)")
    parser.add_argument("--rate", type=float, default=2000, help="events/s offered by the simulator")
    parser.add_argument("--load-rate-guess", type=float, default=400, help="commands/s the worker applies (sets the load budget)")
    parser.add_argument("--keep", action="store_true", help="keep the worker's topics and datadir")
    parser.add_argument("--worker-code", type=Path, default=None,
                        help="run the worker from this directory (an export of another commit: before/after)")
    parser.add_argument("--code-label", default=None, help="how the results name that code")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    from ops.settings import load_settings

    items = args.items or (10_000 if args.quick else 100_000)
    window = args.window or (60 if args.quick else 300)
    idle = args.idle or (20 if args.quick else 40)
    r = run(load_settings(), items=items, window_s=window, idle_s=idle, rate=args.rate, horizon_s=args.horizon,
            load_rate_guess=args.load_rate_guess, keep=args.keep, worker_code=args.worker_code, code_label=args.code_label)
    r["quick"] = args.quick
    print(json.dumps(r, indent=1, default=str))
    print("\n".join(markdown_rows(r)))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        history = RESULTS / "workflow-timers.json"
        runs = json.loads(history.read_text()) if history.exists() else []
        runs.append(r)
        history.write_text(json.dumps(runs, indent=1, default=str))
        append_markdown(r, RESULTS / "workflow-timers.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
