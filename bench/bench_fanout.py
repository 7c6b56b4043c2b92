"""Live-feed fan-out: 200 SSE clients of different regions on one gateway while the bus carries 2,000 events/s.

Measured in one run, on the stack `intelbus up` runs (it starts nothing of the stack, only a
gateway of its own on a free port, running this checkout's code):
- per hit delivered to a client: its receipt minus the Kafka timestamp of the intel.hit copy
  the client's view reads (the client's province partition);
- the baseline in the same run: a plain confluent-kafka consumer of intel.hit (all
  partitions), its receipt minus the same Kafka timestamp;
- added by the gateway, per delivered hit: the client's receipt minus the baseline's receipt
  of the same copy (same hit id, same partition): p50/p99/max. Even a gateway that added nothing
  would show the difference of two consumers' fetch tails here, so the same run has
- a control: a second plain consumer of intel.hit, the baseline's code in a process of its own
  (as the gateway is), its receipts minus the baseline's, per copy of the clients' partitions:
  "added by a plain consumer", the metric's floor on this machine at this moment;
- the gateway's own hold per delivered hit, on its own clock: from its hub's poll returning the
  message to the send of the batch holding it (the send stamp lists each item's poll time), split
  into poll to the ring of the round that woke the stream, ring to the stream's turn, turn to send;
  and the hub's poll minus the baseline's receipt (its Kafka fetch against the baseline's);
- the gateway's CPU per second (/proc/<pid>/stat), the machine's load, the clients' and
  hits' counts, the gateway's own `intelbus_gateway_fanout_lag_seconds`;
- where the added time goes (the gateway runs with INTELBUS_LIVE_SEND_STAMP=1: each batch it
  writes starts with `: sent <epoch ms>`): the gateway's part (its send stamp minus the
  baseline's receipt), the clients' part (receipt minus the send stamp: the client processes
  reading 200 sockets on the same 2 cores), the gateway's hub alone (`..._hub_read_lag_seconds`,
  Kafka time to its buffer), the client processes' event-loop lag (a 20 ms sleeper's oversleep)
  and CPU. The clients run in child processes (`--client-procs`, default 1), apart from the
  baseline consumer, so neither slows the other's receipts.

With INTELBUS_LIVE_AUDIT_INTERVAL_S > 0 the gateway holds a client's items for its next audit
row: `--audit-interval` runs the measurement once per value given (e.g. `--audit-interval 1 0`;
default 0, the gateway's default), each with a fresh gateway.

    .venv/bin/python -m bench.bench_fanout --clients 200 --rate 2000 --seconds 60 --uvicorn-http h11 httptools

`--uvicorn-http h11 httptools` runs once per HTTP implementation of the gateway's uvicorn.
`--client-procs N` spreads the clients over N processes (is one client process the bottleneck?).
`--bench-nice -10` runs the bench (clients, baseline, control, simulator) in a session of its own at the gateway's
priority: on one machine the clients otherwise wait behind the stack's sessions, as browsers on machines of their
own would not.
`--variant NAME:VAR=VALUE,...` (repeatable) runs the gateway once per variant with those environment variables,
e.g. the live feed's rounds before and after issue 15's follow-up, in one run:

    .venv/bin/python -m bench.bench_fanout --variant 'old:INTELBUS_LIVE_RING_MS=0,INTELBUS_LIVE_RING_SELECT=0,\
        INTELBUS_LIVE_AUDIT_GROUP=0,INTELBUS_LIVE_WORKFLOW_CONSUMER=0' --variant 'new:'

The live feed's broadcast path (a round's ring reads, walks and audits once for the streams of a view in step) against
every stream in its own turn, in one run:

    .venv/bin/python -m bench.bench_fanout --variant 'new:' --variant 'old:INTELBUS_LIVE_BROADCAST=0'

The hub's heap before and after the garbage-collector work (INTELBUS_LIVE_GC_LIGHT), with py-spy on the gateway
(`--profile 15`: 15 s of every thread's samples, then 15 s of those holding the GIL, from 15 s into each run):

    .venv/bin/python -m bench.bench_fanout --profile 15 --variant 'new:' --variant 'old:INTELBUS_LIVE_GC_LIGHT=0'

Results: bench/results/fanout.json, and a section appended to bench/results/fanout.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from bench.proc import cpu_seconds as process_cpu_seconds, machine_shares, machine_times
from ops.processes import effective_nice, start_niced
from schemas.catalog import HIT_TOPIC

RESULTS = Path(__file__).resolve().parent / "results"
# (principal, agency region, view regions its clients use): provinces of the simulator's regions and some counties
VIEWS = [("bench-fo-bj", "110000", ["110000", "110105"]), ("bench-fo-tj", "120000", ["120000", "120119"]),
         ("bench-fo-hb", "130000", ["130000", "130822", "131000"]), ("bench-fo-js", "320000", ["320000", "320500"]),
         ("bench-fo-hn", "430000", ["430000"]), ("bench-fo-ha", "410000", ["410000"]),
         ("bench-fo-gd", "440000", ["440000", "440300"])]
HIT_ID = re.compile(r'"hit_id": "([^"]+)"')
SENT = re.compile(r"^: sent (\d+)(?: polled ([\d,]*))?(?: rung (\d+) turn (\d+))?$", re.M)
ITEM = re.compile(r"^event: (\w+)\ndata: (.*)$", re.M)


def pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 4)


def dist(values) -> dict:
    return {"n": len(values), "p50": pct(values, 0.5), "p90": pct(values, 0.9), "p99": pct(values, 0.99),
            "max": round(max(values), 4) if values else None}


def principals(settings) -> dict[str, str]:
    """The bench's principals (command centers), with fresh passwords."""
    from identity.store import PrincipalStore, store_path

    store = PrincipalStore(store_path(settings))
    out = {}
    try:
        for name, region, _ in VIEWS:
            out[name] = secrets.token_urlsafe(16)
            if store.find(name) is None:
                store.add(actor="bench", name=name, kind="person", region=region, branch="COMMAND_CENTER",
                          roles=["command_center"], clearance="INTERNAL", password=out[name])
            else:
                store.set_disabled(actor="bench", name=name, disabled=False)
                store.reset_password(actor="bench", name=name, password=out[name])
    finally:
        store.close()
    return out


def start_gateway(settings, audit_interval: float, log_path: Path, http: str = "", nice: int = 0,
                  extra_env: dict | None = None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INTELBUS_GATEWAY_URL": url, "INTELBUS_LIVE_AUDIT_INTERVAL_S": str(audit_interval),
           "INTELBUS_LIVE_SEND_STAMP": "1"}
    if http:
        env["INTELBUS_GATEWAY_HTTP"] = http
    env.update(extra_env or {})
    # a session of its own, as `intelbus up` starts it (ops/processes.py spawn): with autogroup
    # scheduling a session shares the CPU as one, so a gateway in the bench's session would share
    # its part with the clients and the producer, and its nice value would act only among them
    proc = start_niced([sys.executable, "-P", "-m", "ops.cli", "gateway", "--port", str(port)],
                       effective_nice(nice) if nice else 0, env=env, stdout=open(log_path, "ab"),
                       stderr=subprocess.STDOUT, cwd=str(settings.stack_path))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                return proc, port, url
        except Exception:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"gateway not ready: see {log_path}")


def login(url, name, password) -> str:
    req = urllib.request.Request(f"{url}/api/v1/login", data=json.dumps({"name": name, "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["token"]


class Baseline(threading.Thread):
    """A plain consumer of intel.hit from its ends: (partition, hit_id) -> (Kafka timestamp, receipt). The same class
    is the control (`control_process`), in a process of its own as the gateway is."""

    def __init__(self, settings, codec):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.codec, self.seen, self.stop = codec, {}, threading.Event()
        self.consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-fo-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        meta = self.consumer.list_topics(HIT_TOPIC, timeout=10).topics[HIT_TOPIC]
        self.partitions = len(meta.partitions)
        self.consumer.assign([TopicPartition(HIT_TOPIC, p, self.consumer.get_watermark_offsets(
            TopicPartition(HIT_TOPIC, p), timeout=10)[1]) for p in meta.partitions])

    def run(self):
        from ops.consume import consume_ready

        while not self.stop.is_set():
            for msg in consume_ready(self.consumer, 1000, 0.1):
                now = time.time()
                if msg.error() or msg.value() is None:
                    continue
                hit_id = str(self.codec.decode(msg.value())["hit_id"])
                self.seen[(msg.partition(), hit_id)] = (msg.timestamp()[1] / 1000, now)
        self.consumer.close()


def parse_batch(text: str) -> list[tuple]:
    """The hits of a chunk the gateway wrote: (hit_id, sent, polled, (rung, turn)) in epoch seconds, from its send
    stamp (`gateway.events.send_stamp`; None where the stamp does not say)."""
    stamp = SENT.search(text)
    sent = int(stamp.group(1)) / 1000 if stamp else None
    # the hub's poll time of each item of the batch, in order (0: read at the hub's start)
    polled = [int(x) / 1000 for x in stamp.group(2).split(",")] if stamp and stamp.group(2) else []
    rung = (int(stamp.group(3)) / 1000, int(stamp.group(4)) / 1000) if stamp and stamp.group(3) else None
    out = []
    for i, m in enumerate(ITEM.finditer(text)):
        if m.group(1) != "hit":
            continue
        hit = HIT_ID.search(m.group(2))
        if hit:
            out.append((hit.group(1), sent, polled[i] if i < len(polled) else None, rung))
    return out


async def sse_client(port: int, token: str, view: str, partition: int, out: list, opened: list, stop: asyncio.Event):
    """A raw HTTP/1.1 SSE client (chunked decoding by hand: cheap enough for 200 in one process)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET /api/v1/events?region={view}&since=1s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{view}: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    first = True
    try:
        while not stop.is_set():
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            chunk = await reader.readexactly(size + 2)
            now = time.time()
            if first and (b"event: heartbeat" in chunk or b"event: " in chunk):
                first = False
                opened.append(view)  # streaming: past the gateway's start (its hub has read its buffer)
            for hit_id, sent, polled, rung in parse_batch(chunk.decode()):
                out.append((partition, hit_id, now, view, sent, polled, rung))
    finally:
        writer.close()


def control_process(registry_url: str, ready, go_home, conn) -> None:
    """The control (a child process, like the gateway): a second plain consumer of intel.hit, exactly the baseline's
    code, until `go_home`; sends back what it received. Its receipts minus the baseline's, per hit copy, are what
    "added" shows when nothing but a second consumer stands between Kafka and the receipt: the metric's floor."""
    from ops.settings import load_settings
    from schemas.wire import SchemaCodec

    control = Baseline(load_settings(), SchemaCodec(url=registry_url))
    control.start()
    ready.set()
    go_home.wait()
    control.stop.set()
    control.join(10)
    conn.send(control.seen)
    conn.close()


def cpu_seconds(pid: int) -> float:
    return process_cpu_seconds(pid) or 0.0


# where a sample of a gateway thread is, by its innermost frame that matches (first rule that matches wins)
WHERE = [("consume.py", "Kafka poll (GIL released)"), ("schemas/wire.py", "Avro decode"), ("fastavro", "Avro decode"),
         ("_decode (hub.py", "Avro decode"), ("for_display", "render (display dict)"), ("json/", "render (JSON)"),
         ("rendered (hub.py", "render (JSON)"), ("entry_of (hub.py", "entry (scope)"),
         ("_announce (hub.py", "announce to the loop"), ("prometheus_client", "metrics"),
         ("_append (hub.py", "append (lock, buffer)"), ("_poll (hub.py", "poll loop"),
         ("events.py", "streams (events.py)"), ("hub.py", "bells, walks, reads (hub.py)"),
         ("h11", "HTTP send (h11/uvicorn/starlette)"), ("uvicorn/", "HTTP send (h11/uvicorn/starlette)"),
         ("starlette/", "HTTP send (h11/uvicorn/starlette)"), ("anyio/", "HTTP send (h11/uvicorn/starlette)"),
         ("asyncio/", "asyncio"), ("selectors.py", "asyncio"), ("threading.py", "thread wait"),
         ("clickhouse", "audit shipper (ClickHouse)")]


def thread_cpu(pid: int) -> dict[int, float]:
    """tid -> CPU seconds so far (the kernel's account, C threads included)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return out


def where(frames: list[str]) -> str:
    for frame in reversed(frames):
        for needle, label in WHERE:
            if needle in frame:
                return label
    return "other"


def profile_gateway(pid: int, seconds: float, out: dict) -> None:
    """py-spy on the gateway, two windows one after the other: every sample of every thread (`--idle`: where
    each thread's wall time goes), then only the samples holding the GIL (`--gil`: who holds it); with the
    kernel's CPU per thread over the first window. `out` gets {thread name: {...}}."""
    import collections
    import tempfile

    spy = str(Path(sys.executable).parent / "py-spy")
    for mode in ("idle", "gil"):
        raw = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
        before, t0 = thread_cpu(pid), time.monotonic()
        r = subprocess.run([spy, "record", "--pid", str(pid), "--threads", f"--{mode}", "--nonblocking", "--format",
                            "raw", "--rate", "100", "--duration", str(int(seconds)), "--output", raw],
                           capture_output=True, text=True)
        after, elapsed = thread_cpu(pid), time.monotonic() - t0
        if r.returncode != 0:
            out["error"] = r.stderr[-300:]
            return
        threads: dict = collections.defaultdict(lambda: {"samples": 0, "where": collections.Counter(), "tids": set()})
        for line in Path(raw).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit() or not stack.startswith("thread ("):
                continue
            frames = stack.split(";")
            tid_text, _, name = frames[0].partition("): ")
            name = re.sub(r"-\d+$", "", name) or "?"
            if name.startswith(("AnyIO worker", "ThreadPoolExecutor", "asyncio_")):
                name = "worker threads"
            t = threads[name]
            t["samples"] += int(count)
            t["where"][where(frames[1:])] += int(count)
            t["tids"].add(int(tid_text[len("thread ("):]))
        os.unlink(raw)
        total = sum(t["samples"] for t in threads.values())
        for name, t in threads.items():
            o = out.setdefault(name, {})
            o[f"{mode}_samples"] = t["samples"]
            o[f"{mode}_where"] = {k: round(v / t["samples"], 3) for k, v in t["where"].most_common()}
            if mode == "idle":
                o["cpu_cores"] = round(sum(after.get(i, 0) - before.get(i, 0) for i in t["tids"]) / elapsed, 3)
            else:
                o["gil_share_of_all_gil_samples"] = round(t["samples"] / max(1, total), 3)
        out[f"{mode}_window_s"] = round(elapsed, 1)


def gateway_metric(url: str, prefix: str) -> dict:
    """The gateway's metrics of that prefix ({} if it does not answer within a minute: a busy machine)."""
    for _ in range(2):
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
                text = r.read().decode()
            return {line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)}
        except OSError as exc:
            print(f"gateway metrics: {exc}", file=sys.stderr)
    return {}


def audit_count(settings, since_ms: int) -> int:
    """The live feed's audit rows of the bench's principals since the run started (as the ClickHouse admin)."""
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    time.sleep(1)
    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(f"SELECT count() FROM intelbus.audit_log WHERE at_ms >= {since_ms} AND query_name = 'events' "
                        "AND user LIKE 'bench-fo-%'")[1][0][0]
    finally:
        ex.close()


async def loop_lag(out: list, stop: asyncio.Event, every: float = 0.02):
    """This process's event-loop lag: how late a 20 ms sleep wakes up (a busy loop or a busy machine)."""
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(every)
        out.append(time.monotonic() - t - every)


def client_process(port: int, assigned: list, go_home, opened_count, conn) -> None:
    """The SSE clients of one process (a child), until `go_home` is set; sends back what they received."""
    received: list = []
    opened: list = []
    lags: list = []

    async def main():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sse_client(port, tok, view, part, received, opened, stop))
                 for tok, view, part in assigned]
        monitor = asyncio.create_task(loop_lag(lags, stop))
        while not go_home.is_set():
            opened_count.value = len(opened)
            await asyncio.sleep(0.2)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, monitor, return_exceptions=True)

    asyncio.run(main())
    conn.send((received, lags, len(opened)))
    conn.close()


def histogram_quantiles(metrics: dict, name: str) -> dict:
    """p50/p99 of a Prometheus histogram from its buckets (linear within a bucket): coarse, for a decomposition."""
    buckets = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in metrics.items()
                     if k.startswith(name + "_bucket") and "+Inf" not in k)
    total = metrics.get(name + "_count", 0)
    out = {"n": int(total)}
    for q in (0.5, 0.9, 0.99):
        want, lo, lo_n = q * total, 0.0, 0.0
        out[f"p{int(q * 100)}"] = None
        for le, n in buckets:
            if n >= want and total:
                out[f"p{int(q * 100)}"] = round(lo + (le - lo) * ((want - lo_n) / max(1e-9, n - lo_n)), 4)
                break
            lo, lo_n = le, n
    return out


def one_run(settings, codec, passwords, *, clients: int, rate: float, seconds: float, audit_interval: float,
            client_procs: int = 1, http: str = "", nice: int = 0, variant: tuple[str, dict] = ("", {}),
            profile_s: float = 0) -> dict:
    import multiprocessing
    import tempfile

    from sinks.feed import hit_partition

    log_path = Path(tempfile.mkdtemp(prefix="intelbus-fanout-")) / "gateway.log"
    proc, port, url = start_gateway(settings, audit_interval, log_path, http, nice, variant[1])
    ctx = multiprocessing.get_context("fork")
    children, control = [], None
    try:
        tokens = {name: login(url, name, pw) for name, pw in passwords.items()}
        views = [(tokens[name], view) for name, _, vs in VIEWS for view in vs]
        from confluent_kafka.admin import AdminClient

        parts = len(AdminClient(settings.kafka_config("intelbus-admin")).list_topics(
            HIT_TOPIC, timeout=10).topics[HIT_TOPIC].partitions)
        assigned = [(tok, view, hit_partition(view[:2] + "0000", parts))
                    for tok, view in (views[i % len(views)] for i in range(clients))]
        go_home = ctx.Event()
        for k in range(client_procs):  # forked before this process holds a Kafka consumer
            mine = assigned[k::client_procs]
            count = ctx.Value("i", 0)
            parent_end, child_end = ctx.Pipe(duplex=False)
            child = ctx.Process(target=client_process, args=(port, mine, go_home, count, child_end), daemon=True)
            child.start()
            children.append((child, count, parent_end))
        control_ready = ctx.Event()
        control_end, control_child_end = ctx.Pipe(duplex=False)
        control = ctx.Process(target=control_process, args=(settings.registry_url, control_ready, go_home,
                                                            control_child_end), daemon=True)
        control.start()
        t0 = time.monotonic()
        while sum(c.value for _, c, _ in children) < clients and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        control_ready.wait(60)
        baseline = Baseline(settings, codec)
        baseline.start()
        samples = []
        prefix = f"FO{uuid.uuid4().hex[:6]}-"
        run_from_ms = int(time.time() * 1000)
        sim = subprocess.Popen([sys.executable, "-m", "ops.cli", "simulate", "--rate", str(rate), "--duration",
                                str(seconds), "--seed", str(int(time.time())), "--ref-prefix", prefix,
                                "--phase-pause", "0", "--quiet", "--metrics-port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        load_before = os.getloadavg()
        profile: dict = {}
        if profile_s:  # from 15 s into the simulator's run, when the hits flow
            spy = threading.Timer(15, profile_gateway, args=(proc.pid, profile_s, profile))
            spy.daemon = True
            spy.start()
        pids = [c.pid for c, _, _ in children]
        last_cpu, last_busy = cpu_seconds(proc.pid), machine_times()
        last_clients = sum(cpu_seconds(pid) for pid in pids)
        started = time.monotonic()
        while sim.poll() is None and time.monotonic() - started < seconds + 120:
            time.sleep(1.0)
            cpu, busy = cpu_seconds(proc.pid), machine_times()
            client_cpu = sum(cpu_seconds(pid) for pid in pids)
            with open("/proc/loadavg") as f:
                load1 = float(f.read().split()[0])
            samples.append({"t": round(time.monotonic() - started, 1), "gateway_cpu_cores": round(cpu - last_cpu, 3),
                            "clients_cpu_cores": round(client_cpu - last_clients, 3), "loadavg_1m": load1,
                            "machine_busy_share": machine_shares(last_busy, busy)["busy"]})
            last_cpu, last_busy, last_clients = cpu, busy, client_cpu
        if sim.poll() is None:
            sim.kill()
        sim_rc, sim_err = sim.wait(), (sim.stderr.read() or "")[-500:]
        elapsed = time.monotonic() - started
        load_after = os.getloadavg()
        time.sleep(5)  # the last hits through the jobs and the gateway
        if profile_s:
            spy.join(2 * profile_s + 60)
        metrics = {**gateway_metric(url, "intelbus_gateway_fanout_lag_seconds"),
                   **gateway_metric(url, "intelbus_gateway_hub_"),
                   **gateway_metric(url, "intelbus_gateway_gc_"),  # pauses, their CPU, the longest
                   **gateway_metric(url, "intelbus_gateway_sse_audit_seconds"),
                   **gateway_metric(url, "intelbus_gateway_catchup_readers_total"),
                   **gateway_metric(url, "intelbus_gateway_live_")}
        go_home.set()
        received, lags, connected = [], [], 0
        for child, _, conn in children:
            r, lag, n = conn.recv()
            received += r
            lags += lag
            connected += n
            child.join(20)
        control_seen = control_end.recv() if control_end.poll(30) else {}
        control.join(20)
        baseline.stop.set()
        baseline.join(10)
        audit_rows = audit_count(settings, run_from_ms)
    finally:
        for child in [c for c, _, _ in children] + ([control] if control is not None else []):
            if child.is_alive():
                child.kill()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

    to_client, base, added, gateway_part, client_part, missing = [], {}, [], [], [], 0
    hold, fetch_vs_base, to_ring, ring_to_turn, turn_to_send = [], [], [], [], []
    for (part, hit_id), (ts, recv) in baseline.seen.items():
        base[(part, hit_id)] = recv - ts
    for part, hit_id, recv, _view, sent, polled, rung in received:
        b = baseline.seen.get((part, hit_id))
        if b is None:
            missing += 1
            continue
        to_client.append(recv - b[0])
        added.append(recv - b[1])
        if sent is not None:
            gateway_part.append(sent - b[1])
            client_part.append(recv - sent)
            if polled:  # the gateway's own clock both ends: its hold, apart from its Kafka fetch
                hold.append(sent - polled)
                fetch_vs_base.append(polled - b[1])
                if rung and rung[0] >= polled:  # the hold split: to the ring, to the stream's turn, its own work
                    to_ring.append(rung[0] - polled)
                    ring_to_turn.append(rung[1] - rung[0])
                    turn_to_send.append(sent - rung[1])
    # the control: a second plain consumer's receipt minus the baseline's, per hit copy of the partitions the clients
    # read (each copy once; "added" counts each delivery, several clients of a view receive the same copy)
    client_parts = {part for _, _, part in assigned}
    control_added = [c[1] - baseline.seen[k][1] for k, c in control_seen.items()
                     if k[0] in client_parts and k in baseline.seen]
    cpu = [s["gateway_cpu_cores"] for s in samples]
    ccpu = [s["clients_cpu_cores"] for s in samples]
    busy = [s["machine_busy_share"] for s in samples]
    loads = [s["loadavg_1m"] for s in samples]
    mean = lambda xs: round(sum(xs) / len(xs), 3) if xs else None  # noqa: E731
    return {
        "audit_interval_s": audit_interval, "uvicorn_http": http or "auto", "client_procs": client_procs,
        "gateway_nice": nice, "variant": variant[0], "variant_env": variant[1],
        "clients": clients, "clients_connected": connected,
        "rate": rate, "seconds": seconds, "elapsed_s": round(elapsed, 1), "simulate_rc": sim_rc,
        "simulate_stderr_tail": sim_err if sim_rc else "",
        "hit_copies_on_bus": len(baseline.seen), "hits_delivered_to_clients": len(received),
        "delivered_without_baseline_match": missing,
        "baseline_kafka_to_receipt_s": dist(list(base.values())),
        "gateway_kafka_to_client_s": dist(to_client),
        "added_by_gateway_s": dist(added),
        "added_by_plain_consumer_s": dist(control_added),
        "control_copies_unmatched": sum(1 for k in control_seen if k not in baseline.seen),
        "gateway_hold_s": dist(hold),
        "hub_poll_minus_baseline_s": dist(fetch_vs_base),
        "hold_poll_to_ring_s": dist(to_ring), "hold_ring_to_turn_s": dist(ring_to_turn),
        "hold_turn_to_send_s": dist(turn_to_send),
        "added_gateway_part_s": dist(gateway_part),
        "added_client_part_s": dist(client_part),
        "hub_read_lag_s": histogram_quantiles(metrics, "intelbus_gateway_hub_read_lag_seconds"),
        "hub_fetch_lag_s": histogram_quantiles(metrics, "intelbus_gateway_hub_fetch_lag_seconds"),
        "hub_slice_s": histogram_quantiles(metrics, "intelbus_gateway_hub_slice_seconds"),
        "hub_work": {"wall_s": metrics.get('intelbus_gateway_hub_work_seconds_total{clock="wall"}'),
                     "cpu_s": metrics.get('intelbus_gateway_hub_work_seconds_total{clock="cpu"}')},
        "gc_pauses": {g: {"n": int(metrics.get(f'intelbus_gateway_gc_pause_seconds_count{{generation="{g}"}}', 0)),
                          "sum_s": round(metrics.get(f'intelbus_gateway_gc_pause_seconds_sum{{generation="{g}"}}', 0), 3),
                          "max_s": round(metrics.get(f'intelbus_gateway_gc_pause_max_seconds{{generation="{g}"}}', 0), 3),
                          "cpu_s": round(metrics.get(f'intelbus_gateway_gc_cpu_seconds_total{{generation="{g}"}}', 0), 3)}
                      for g in ("0", "1", "2", "freeze")},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "profile": profile,
        "gateway_write_lag_s": histogram_quantiles(metrics, "intelbus_gateway_fanout_lag_seconds"),
        "client_loop_lag_s": dist(lags),
        "audit_rows": audit_rows,
        "audit_rows_per_client_per_s": round(audit_rows / max(1, connected) / max(1.0, elapsed), 3),
        "gateway_cpu_cores": {"mean": mean(cpu), "p90": pct(cpu, 0.9), "max": max(cpu) if cpu else None},
        "clients_cpu_cores": {"mean": mean(ccpu), "max": max(ccpu) if ccpu else None},
        "machine_busy_share": {"mean": mean(busy), "max": max(busy) if busy else None},
        "loadavg_1m": {"mean": mean(loads), "max": max(loads) if loads else None},
        "gateway_log": str(log_path), "gateway_metrics": metrics, "per_second": samples,
    }


def _work(w) -> str:
    if not w or w.get("wall_s") is None:
        return "-"
    return f"{w['wall_s']:.2f} / {w['cpu_s']:.2f}"


def _gc(g) -> str:
    if not g:
        return "-"
    return f"{g['n']} / {g['max_s'] * 1000:.0f} / {g.get('cpu_s', 0):.2f}"


def markdown(report: dict) -> str:
    ms = lambda x: "-" if x is None else f"{x * 1000:.0f}"  # noqa: E731
    pair = lambda d: f"{ms(d['p50'])} / {ms(d['p99'])}"  # noqa: E731
    opt = lambda r, k: pair(r[k]) if r.get(k) and r[k].get("n") else "-"  # noqa: E731
    bench_nice = f", the bench at nice {report['bench_nice']}" if report.get("bench_nice") else ""
    lines = [f"## Run of {report['at']} ({report['cpus']} cores, shared{bench_nice}; `{report['argv']}`)", "",
             "| variant | clients | hits on bus | delivered | baseline p50/p99 | **added p50/p99/max** | control: added by "
             "a plain consumer p50/p99 | gateway hold (hub poll to send) p50/p99 | hub poll minus baseline p50/p99 | "
             "hold: poll to ring; ring to turn; turn to send p50/p99 | "
             "added: gateway part p50/p99 | added: client part p50/p99 | hub read lag p50/p99 (hist.) | client loop lag p50/p99 | "
             "gateway CPU mean/max | clients CPU mean | machine busy / load 1m | catch-up readers | rounds/s | "
             "streams rung/round | hub fetch lag p50/p99 | hub work wall/CPU (s) | full GCs n / max ms / CPU s | "
             "load 1m before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        a = r["added_by_gateway_s"]
        variant = ((f"**{r['variant']}**, " if r.get("variant") else "")
                   + f"http {r['uvicorn_http']}, audit {r['audit_interval_s']} s, {r['client_procs']} client proc"
                   + (f", gateway nice {r['gateway_nice']}" if r.get("gateway_nice") else ""))
        m = r["gateway_metrics"]
        rounds, rung = m.get("intelbus_gateway_live_rounds_total"), m.get("intelbus_gateway_live_streams_rung_total")
        lines.append(
            f"| {variant} | {r['clients_connected']}/{r['clients']} | {r['hit_copies_on_bus']} | "
            f"{r['hits_delivered_to_clients']} | {pair(r['baseline_kafka_to_receipt_s'])} | "
            f"**{ms(a['p50'])} / {ms(a['p99'])}** / {ms(a['max'])} | {opt(r, 'added_by_plain_consumer_s')} | "
            f"{opt(r, 'gateway_hold_s')} | {opt(r, 'hub_poll_minus_baseline_s')} | {opt(r, 'hold_poll_to_ring_s')}; "
            f"{opt(r, 'hold_ring_to_turn_s')}; {opt(r, 'hold_turn_to_send_s')} | {pair(r['added_gateway_part_s'])} | "
            f"{pair(r['added_client_part_s'])} | {pair(r['hub_read_lag_s'])} | {pair(r['client_loop_lag_s'])} | "
            f"{r['gateway_cpu_cores']['mean']} / {r['gateway_cpu_cores']['max']} | {r['clients_cpu_cores']['mean']} | "
            f"{r['machine_busy_share']['mean']} / {r['loadavg_1m']['mean']} | "
            f"{r['gateway_metrics'].get('intelbus_gateway_catchup_readers_total', '-')} | "
            f"{'-' if rounds is None else round(rounds / max(1.0, r['elapsed_s']), 1)} | "
            f"{'-' if not rounds else round(rung / rounds, 1)} | {pair(r['hub_fetch_lag_s']) if 'hub_fetch_lag_s' in r else '-'} | "
            f"{_work(r.get('hub_work'))} | {_gc(r.get('gc_pauses', {}).get('2'))} | "
            f"{(r.get('loadavg_before') or ['-'])[0]} / {(r.get('loadavg_after') or ['-'])[0]} |")
    lines += ["", "Milliseconds. Baseline: a plain consumer of intel.hit in the bench's main process, Kafka time to "
              "receipt. *Added*: a client's receipt minus the baseline's receipt of the same hit copy. *Control*: a "
              "second plain consumer of intel.hit in a process of its own (as the gateway is), its receipt minus the "
              "baseline's, per copy of the clients' partitions: what *added* shows with no gateway at all (the "
              "difference of two consumers' fetch tails). *Gateway hold*: per delivered hit, the gateway's send stamp "
              "minus its hub's poll returning that message (one clock); *hub poll minus baseline*: the hub's fetch "
              "against the baseline's (added = hub poll minus baseline + hold + client part); the hold split (hits of "
              "a round rung after their poll): poll to the ring of the round that woke the stream, ring to the "
              "stream's turn (the streams before it), turn to send (its own walk, audit line, render). The *gateway "
              "part* ends at the gateway's send stamp, its *client part* is receipt minus send stamp. Hub read lag: "
              "Kafka time to the gateway hub's buffer (from the gateway's histogram); hub fetch lag: Kafka time to the hub's "
              "poll handing the message to Python; hub work: the hub threads' time after their polls, wall and CPU; "
              "full GCs: the gateway's generation-2 collections (every thread stops), count, longest, CPU.", ""]
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    """'old:A=1,B=2' -> ('old', {'A': '1', 'B': '2'}); 'old:' -> ('old', {}). (Also bench_rate_cost's.)"""
    name, _, assignments = text.partition(":")
    env = {}
    for item in filter(None, (a.strip() for a in assignments.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {item!r} is not VAR=VALUE")
        env[key] = value
    return name, env


def without_bench_nice(argv: list[str]) -> list[str]:
    """argv without its --bench-nice option (the rerun must not rerun itself)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--bench-nice":
            skip = True
        elif not a.startswith("--bench-nice="):
            out.append(a)
    return out


def rerun_niced(argv: list[str], nice: int) -> int:
    """This bench again, in a session of its own at `nice` (as far as `effective_nice` allows); its exit code."""
    allowed = effective_nice(nice)
    if allowed != nice:
        print(f"--bench-nice {nice}: this user may not; the bench runs at {allowed}", file=sys.stderr)
    proc = start_niced([sys.executable, "-m", "bench.bench_fanout", *without_bench_nice(argv)], allowed)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2000, help="events/s offered by the simulator")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--audit-interval", type=float, nargs="+", default=[0.0],
                        help="the gateway's INTELBUS_LIVE_AUDIT_INTERVAL_S, one run per value (default 0)")
    parser.add_argument("--uvicorn-http", nargs="+", default=[""],
                        help="the gateway's uvicorn HTTP implementation (h11, httptools), one run per value")
    parser.add_argument("--client-procs", type=int, nargs="+", default=[1],
                        help="processes the clients are spread over, one run per value (default 1)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                        help="a gateway variant, one run each, in the order given (e.g. 'old:INTELBUS_LIVE_RING_MS=0,"
                             "INTELBUS_LIVE_RING_SELECT=0,INTELBUS_LIVE_AUDIT_GROUP=0,"
                             "INTELBUS_LIVE_WORKFLOW_CONSUMER=0' 'new:'); default: one run as configured")
    parser.add_argument("--gateway-nice", type=int, nargs="+", default=None,
                        help="the gateway's nice value (process and autogroup, as `intelbus up` sets it), one run "
                             "per value (e.g. 0 -10: is the tail the CPU share a busy machine leaves it?); default: "
                             "INTELBUS_GATEWAY_NICE's")
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                        help="py-spy the gateway from 15 s into each run: SECONDS of every thread's samples, then "
                             "SECONDS of the samples holding the GIL (results in fanout.json, 'profile')")
    parser.add_argument("--bench-nice", type=int, default=None, metavar="N",
                        help="run the bench itself (its clients, baseline and control consumers, simulator) in a "
                             "session of its own at nice N, process and autogroup, e.g. the gateway's -10: on one "
                             "machine the clients otherwise wait behind the stack, as browsers on their own "
                             "machines would not (bench/results/fanout.md, 06:06 run)")
    args = parser.parse_args(argv)
    if args.bench_nice is not None and args.bench_nice != 0:
        return rerun_niced(sys.argv[1:] if argv is None else list(argv), args.bench_nice)

    from ops.settings import load_settings
    from schemas.wire import SchemaCodec

    settings = load_settings()
    codec = SchemaCodec(url=settings.registry_url)
    passwords = principals(settings)
    RESULTS.mkdir(exist_ok=True)
    report = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(), "bench_nice": os.nice(0),
              "argv": " ".join(sys.argv[1:] if argv is None else argv), "runs": []}
    variants = [parse_variant(v) for v in args.variant] or [("", {})]
    if args.gateway_nice is None:
        args.gateway_nice = [settings.gateway_nice]
    for interval in args.audit_interval:
        for http in args.uvicorn_http:
            for procs, nice, variant in [(p, n, v) for p in args.client_procs for n in args.gateway_nice
                                         for v in variants]:
                try:
                    r = one_run(settings, codec, passwords, clients=args.clients, rate=args.rate,
                                seconds=args.seconds, audit_interval=interval, client_procs=procs, http=http,
                                nice=nice, variant=variant, profile_s=args.profile)
                except Exception as exc:  # a shared machine: the stack may restart under a run; the others count
                    print(f"run (audit {interval}, http {http or 'auto'}, {procs} client procs) failed: {exc}",
                          file=sys.stderr)
                    continue
                report["runs"].append(r)
                print(json.dumps({k: v for k, v in r.items() if k not in ("per_second", "gateway_metrics")}, indent=1),
                      flush=True)
    (RESULTS / "fanout.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    with open(RESULTS / "fanout.md", "a") as f:  # the history stays: each run appends its section
        f.write("\n" + markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
