"""Live-feed fan-out: 200 SSE clients of different regions on one gateway while the bus carries 2,000 events/s.

Measured in one run, on the stack `intelbus up` runs (it starts nothing of the stack, only a
gateway of its own on a free port, running this checkout's code):
- per hit delivered to a client: its receipt minus the Kafka timestamp of the intel.hit copy
  the client's view reads (the client's province partition);
- the baseline in the same run: a plain confluent-kafka consumer of intel.hit (all
  partitions), its receipt minus the same Kafka timestamp;
- added by the gateway, per delivered hit: the client's receipt minus the baseline's receipt
  of the same copy (same hit id, same partition): p50/p99/max;
- the gateway's CPU per second (/proc/<pid>/stat), the machine's load, the clients' and
  hits' counts, the gateway's own `intelbus_gateway_fanout_lag_seconds`.

The gateway audits each client's items at most once per INTELBUS_LIVE_AUDIT_INTERVAL_S
(default 1 s), and items wait for their client's next row: `--audit-interval` runs the
measurement once per value given (e.g. `--audit-interval 1 0`), each with a fresh gateway.

    .venv/bin/python -m bench.bench_fanout --clients 200 --rate 2000 --seconds 60 --audit-interval 1 0

Results: bench/results/fanout.json and fanout.md.
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

RESULTS = Path(__file__).resolve().parent / "results"
# (principal, agency region, view regions its clients use): provinces of the simulator's regions and some counties
VIEWS = [("bench-fo-bj", "110000", ["110000", "110105"]), ("bench-fo-tj", "120000", ["120000", "120119"]),
         ("bench-fo-hb", "130000", ["130000", "130822", "131000"]), ("bench-fo-js", "320000", ["320000", "320500"]),
         ("bench-fo-hn", "430000", ["430000"]), ("bench-fo-ha", "410000", ["410000"]),
         ("bench-fo-gd", "440000", ["440000", "440300"])]
HIT_ID = re.compile(r'"hit_id": "([^"]+)"')


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


def start_gateway(settings, audit_interval: float, log_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INTELBUS_GATEWAY_URL": url, "INTELBUS_LIVE_AUDIT_INTERVAL_S": str(audit_interval)}
    proc = subprocess.Popen([sys.executable, "-P", "-m", "ops.cli", "gateway", "--port", str(port)], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, cwd=str(settings.stack_path))
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
    """A plain consumer of intel.hit from its ends: (partition, hit_id) -> (Kafka timestamp, receipt)."""

    def __init__(self, settings, codec):
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.codec, self.seen, self.stop = codec, {}, threading.Event()
        self.consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"bench-fo-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        meta = self.consumer.list_topics("intel.hit", timeout=10).topics["intel.hit"]
        self.partitions = len(meta.partitions)
        self.consumer.assign([TopicPartition("intel.hit", p, self.consumer.get_watermark_offsets(
            TopicPartition("intel.hit", p), timeout=10)[1]) for p in meta.partitions])

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
            for m in HIT_ID.finditer(chunk.decode()):
                out.append((partition, m.group(1), now, view))
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def gateway_metric(url: str, prefix: str) -> dict:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)}


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


def one_run(settings, codec, passwords, *, clients: int, rate: float, seconds: float, audit_interval: float) -> dict:
    from sinks.feed import hit_partition

    import tempfile

    log_path = Path(tempfile.mkdtemp(prefix="intelbus-fanout-")) / "gateway.log"
    proc, port, url = start_gateway(settings, audit_interval, log_path)
    try:
        tokens = {name: login(url, name, pw) for name, pw in passwords.items()}
        baseline = Baseline(settings, codec)
        baseline.start()
        views = [(tokens[name], view) for name, _, vs in VIEWS for view in vs]
        received: list = []
        opened: list = []
        samples = []

        async def main():
            stop = asyncio.Event()
            tasks = [asyncio.create_task(sse_client(port, tok, view, hit_partition(view[:2] + "0000", baseline.partitions),
                                                    received, opened, stop))
                     for tok, view in (views[i % len(views)] for i in range(clients))]
            t0 = time.monotonic()
            while len(opened) < clients and time.monotonic() - t0 < 120:
                await asyncio.sleep(0.2)
            prefix = f"FO{uuid.uuid4().hex[:6]}-"
            sim = subprocess.Popen([sys.executable, "-m", "ops.cli", "simulate", "--rate", str(rate), "--duration",
                                    str(seconds), "--seed", str(int(time.time())), "--ref-prefix", prefix,
                                    "--phase-pause", "0", "--quiet", "--metrics-port", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            last_cpu, last_busy = cpu_seconds(proc.pid), machine_busy()
            started = time.monotonic()
            while sim.poll() is None and time.monotonic() - started < seconds + 120:
                await asyncio.sleep(1.0)
                cpu, busy = cpu_seconds(proc.pid), machine_busy()
                samples.append({"t": round(time.monotonic() - started, 1), "gateway_cpu_cores": round(cpu - last_cpu, 3),
                                "machine_busy_share": round((busy[0] - last_busy[0]) / max(1, busy[1] - last_busy[1]), 3),
                                "delivered": len(received)})
                last_cpu, last_busy = cpu, busy
            if sim.poll() is None:
                sim.kill()
            await asyncio.sleep(5)  # the last hits through the jobs and the gateway
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return sim.returncode, (sim.stderr.read() or "")[-500:], time.monotonic() - started

        run_from_ms = int(time.time() * 1000)
        sim_rc, sim_err, elapsed = asyncio.run(main())
        baseline.stop.set()
        baseline.join(10)
        metrics = {**gateway_metric(url, "intelbus_gateway_fanout_lag_seconds"),
                   **gateway_metric(url, "intelbus_gateway_sse_audit_seconds")}
        audit_rows = audit_count(settings, run_from_ms)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

    to_client, base, added, missing = [], {}, [], 0
    for (part, hit_id), (ts, recv) in baseline.seen.items():
        base[(part, hit_id)] = recv - ts
    for part, hit_id, recv, _view in received:
        b = baseline.seen.get((part, hit_id))
        if b is None:
            missing += 1
            continue
        to_client.append(recv - b[0])
        added.append(recv - b[1])
    cpu = [s["gateway_cpu_cores"] for s in samples]
    busy = [s["machine_busy_share"] for s in samples]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "audit_interval_s": audit_interval, "clients": clients, "clients_connected": len(opened),
        "rate": rate, "seconds": seconds, "elapsed_s": round(elapsed, 1), "simulate_rc": sim_rc,
        "simulate_stderr_tail": sim_err if sim_rc else "",
        "hit_copies_on_bus": len(baseline.seen), "hits_delivered_to_clients": len(received),
        "delivered_without_baseline_match": missing,
        "baseline_kafka_to_receipt_s": dist(list(base.values())),
        "gateway_kafka_to_client_s": dist(to_client),
        "added_by_gateway_s": dist(added),
        "audit_rows": audit_rows,
        "audit_rows_per_client_per_s": round(audit_rows / max(1, len(opened)) / max(1.0, elapsed), 3),
        "gateway_cpu_cores": {"mean": round(sum(cpu) / len(cpu), 3) if cpu else None, "p90": pct(cpu, 0.9),
                              "max": max(cpu) if cpu else None},
        "machine_busy_share": {"mean": round(sum(busy) / len(busy), 3) if busy else None, "max": max(busy) if busy else None},
        "loadavg_at_end": load, "gateway_log": str(log_path), "gateway_fanout_lag_metric": metrics, "per_second": samples,
    }


def markdown(report: dict) -> str:
    lines = ["# Live-feed fan-out (bench/bench_fanout.py)", "",
             f"{report['at']}, {report['cpus']} cores; other work on the machine as measured (machine busy share).", "",
             "| audit interval | clients | hits on bus | delivered | baseline p50/p99 | gateway p50/p99 | added p50/p99/max "
             "| ratio p99 | audit rows/client/s | gateway CPU mean/max (cores) | machine busy mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        b, g, a = r["baseline_kafka_to_receipt_s"], r["gateway_kafka_to_client_s"], r["added_by_gateway_s"]
        ratio = round(g["p99"] / b["p99"], 1) if g["p99"] and b["p99"] else None
        ms = lambda x: "-" if x is None else f"{x * 1000:.0f} ms"  # noqa: E731
        lines.append(f"| {r['audit_interval_s']} s | {r['clients_connected']}/{r['clients']} | {r['hit_copies_on_bus']} | "
                     f"{r['hits_delivered_to_clients']} | {ms(b['p50'])} / {ms(b['p99'])} | {ms(g['p50'])} / {ms(g['p99'])} | "
                     f"{ms(a['p50'])} / {ms(a['p99'])} / {ms(a['max'])} | {ratio} | {r['audit_rows_per_client_per_s']} | "
                     f"{r['gateway_cpu_cores']['mean']} / "
                     f"{r['gateway_cpu_cores']['max']} | {r['machine_busy_share']['mean']} |")
    lines += ["", "Latencies from the Kafka timestamp of the intel.hit copy the client's view reads. *Added*: per "
              "delivered hit, the client's receipt minus the baseline consumer's receipt of the same copy (both "
              "in this process, same clock).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2000, help="events/s offered by the simulator")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--audit-interval", type=float, nargs="+", default=[1.0],
                        help="the gateway's INTELBUS_LIVE_AUDIT_INTERVAL_S, one run per value (default 1)")
    args = parser.parse_args(argv)

    from ops.settings import load_settings
    from schemas.wire import SchemaCodec

    settings = load_settings()
    codec = SchemaCodec(url=settings.registry_url)
    passwords = principals(settings)
    RESULTS.mkdir(exist_ok=True)
    report = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(), "runs": []}
    for interval in args.audit_interval:
        r = one_run(settings, codec, passwords, clients=args.clients, rate=args.rate, seconds=args.seconds,
                    audit_interval=interval)
        report["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "per_second"}, indent=1), flush=True)
    (RESULTS / "fanout.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (RESULTS / "fanout.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
