"""Chaos run (issue 18 item 5): simulator traffic on a cluster-profile stack while every component is
SIGKILLed once; then the simulator's ground truth, checked exactly, and how fast each came back.

What it does, in order:

1. Starts an isolated `intelbus up --profile cluster` (its own directory, ports 62xxx: it never
   touches the stack on the default ports), or uses one already started with the same settings
   (`--reuse`, e.g. kept by an earlier `--keep`). A stack it starts has its JVM servers stopped
   cleanly and started again once, so that they write the class-data archives their restarts map
   (`--no-warm-archives` skips it; docs/deploy.md, "Recovery after SIGKILL").
2. Publishes `--rate` records/s for `--minutes` through the simulator (producers/simulator.py,
   a fresh source_ref prefix), waiting for the jobs between its phases as the ground-truth tests do
   (three times: listings, traffic, closings, traffic). `--traffic-nice -10` gives its process
   autogroup nice -10 (when it leads a session of its own: start it under `setsid`), so that the
   traffic keeps its rate on a crowded machine (traffic_priority); not the default, see --help.
3. Meanwhile SIGKILLs each component once (`--components`), in a seeded random order (the brokers
   in their own order, one after the other), each at a seeded random time of its slot of the
   traffic and never before the previous victim came back. Nothing restarts them but the stack's
   supervisor (`intelbus supervise`, started by `up`). A component is back when a new process of
   it runs and its health answers (the same probe `intelbus status` uses: a broker listed by the
   cluster, ClickHouse's /ping, the registry's /subjects, a service's `intelbus_service_ready 1`).
   Over 30 s (`--max-recovery`) is a failure.
4. Every `--every` seconds it samples the resident memory and CPU time of every process, the jobs'
   state table sizes (`intelbus_jobs_state_entries{table}` on the workers' metrics ports) and the
   consumer lag of the jobs' and the sink's groups.
5. At the end it waits for the jobs and the sink to drain, then checks the ground truth exactly:
   on Kafka (`ops.verify.verify`: every expected hit once, no false hit, the distinct events and the
   dropped duplicates) and in ClickHouse (the run's distinct events and hit ids through the
   Distributed tables, and on each replica). It measures the sizing figures (cores and memory per
   process at the rate, ClickHouse's `system.parts` bytes per event, Kafka's log bytes per event).
6. Writes <results-dir>/<name>.json, <name>.md and <name>.svg (memory, state and lag over time,
   the kills marked), and stops the stack it started (`intelbus down --purge`) unless `--keep`.

Exit status: 0 when the ground truth is exact and every component came back within
`--max-recovery`; 1 otherwise (what failed is printed and in the results); 2 when the stack
could not be started.

Examples:
  setsid .venv/bin/python -m bench.chaos                            # 30 min at 1,000/s (the issue's run)
  .venv/bin/python -m bench.chaos --minutes 6 --rate 500 --name chaos-short --keep
  .venv/bin/python -m bench.chaos --reuse --minutes 3 --components kafka-2,sink --name try
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
DEFAULT_COMPONENTS = (*BROKERS, "jobs-0", "sink", "clickhouse-2", "registry", "workflows-0", "gateway")
GROUPS = {"intelbus-jobs": "JOBS_TOPICS", "intelbus-sink": "SINK_TOPICS"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def chaos_env(stack_dir: str, port_base: int = 62000) -> dict:
    """The environment of an isolated cluster-profile stack: every address derived from port_base
    (the same layout as tests/integration/test_cluster_profile.py's, on other ports).

    The ports must lie outside the kernel's ephemeral range (32768-60999 here): a killed server's
    port inside it can be taken as the local port of any outgoing connection made while the
    server is away, and its restart then fails to bind (seen: a broker on 56302 refused four
    restarts for 4 minutes with "Address already in use")."""
    b = port_base
    env = {
        **os.environ,
        "INTELBUS_STACK_DIR": stack_dir,
        "INTELBUS_KAFKA": f"127.0.0.1:{b + 302}",            # brokers +302..+304, controllers +402..+404
        "INTELBUS_REGISTRY_URL": f"http://127.0.0.1:{b + 181}/apis/ccompat/v7",  # management +191
        "INTELBUS_CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{b + 310}/intelbus",  # replica 2 on +311
        "INTELBUS_CLICKHOUSE_HTTP": f"http://127.0.0.1:{b + 323}",            # +324; replication +325..+326
        "INTELBUS_ZOOKEEPER": f"127.0.0.1:{b + 182}",
        "INTELBUS_GATEWAY_URL": f"http://127.0.0.1:{b + 180}",
        "INTELBUS_METRICS_PORT_BASE": str(b + 600),           # jobs +601, sink +620, workflows +640
    }
    env.pop("INTELBUS_STACK_PROFILE", None)
    return env


def intelbus(env: dict, *args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(Path(__file__).resolve().parent.parent))


@contextlib.contextmanager
def cluster_up(env: dict, *, log=print):
    """`intelbus up --profile cluster` on env's isolated stack, `down --purge` after (the tests' fixtures);
    with INTELBUS_KEEP_STACK set, `down` only: its directory (data and logs) stays to be looked into."""
    started = time.monotonic()
    up = intelbus(env, "up", "--profile", "cluster", timeout=900)
    assert up.returncode == 0, up.stderr[-3000:] + up.stdout[-3000:]
    log(f"\ncluster profile up in {time.monotonic() - started:.0f}s")
    try:
        yield env
    finally:
        keep = bool(os.environ.get("INTELBUS_KEEP_STACK"))
        down = intelbus(env, "down", *(() if keep else ("--purge",)), timeout=300)
        log(down.stdout[-2000:] + (f"\nkept (INTELBUS_KEEP_STACK): {env['INTELBUS_STACK_DIR']}" if keep else ""))


def keep_evidence(stack_dir: str, into: Path) -> Path:
    """Copy a stack's logs and the runs' truth files into `into` (a failed run's evidence, before
    `down --purge` deletes the stack's directory). Data directories are left: they are large."""
    into.mkdir(parents=True, exist_ok=True)
    stack = Path(stack_dir)
    if (stack / "logs").is_dir():
        shutil.copytree(stack / "logs", into / "logs", dirs_exist_ok=True)
    for truth in stack.glob("truth-*.jsonl"):
        shutil.copy2(truth, into / truth.name)
    return into


JVM_SERVERS = (*BROKERS, "registry", "zookeeper")


def warm_class_archives(env: dict, *, log=print, servers=JVM_SERVERS) -> bool:
    """`down` and `up` the JVM servers once: they write their class-data archives as they exit
    cleanly, and every restart after a SIGKILL maps them, as on a stack that was ever stopped.
    servers: only these (the short chaos test warms only the ones it kills)."""
    started = time.monotonic()
    down = intelbus(env, "down", *servers, timeout=600)
    up = intelbus(env, "up", "--profile", "cluster", timeout=1200)
    if down.returncode != 0 or up.returncode != 0:
        log(f"chaos: the clean stop and start of {', '.join(servers)} failed: {down.stderr[-1000:]} {up.stderr[-2000:]}")
        return False
    log(f"chaos: {', '.join(servers)} stopped cleanly and started again in {time.monotonic() - started:.0f}s "
        "(their class-data archives written)")
    return True


def settings_of(env: dict):
    from ops.settings import load_settings

    return load_settings(environ=env)


# --- the kill plan (pure) --------------------------------------------------------------------------

def kill_plan(components: list[str], seed: int, traffic_s: float, *, start: float = 0.08, end: float = 0.85
              ) -> list[tuple[str, float]]:
    """[(component, planned seconds into the traffic)], in kill order.

    The order is a seeded shuffle in which the brokers keep their own order (each broker in turn);
    the traffic between start and end (shares of traffic_s) is cut into one slot per component and
    each kill falls at a seeded random time of its slot."""
    rng = random.Random(seed)
    order = list(components)
    rng.shuffle(order)
    brokers = iter(sorted(c for c in order if c in BROKERS))
    order = [next(brokers) if c in BROKERS else c for c in order]
    if not order:
        return []
    slot = (end - start) * traffic_s / len(order)
    return [(c, round(start * traffic_s + i * slot + rng.uniform(0.1, 0.9) * slot, 1)) for i, c in enumerate(order)]


# --- looking at processes --------------------------------------------------------------------------

def proc_stats(pid: int) -> tuple[int, float] | None:
    """(resident bytes, CPU seconds) of one process (not its children: the supervisor's children are
    the components it restarted); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime, stime
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return rss, cpu


def metric_values(text: str, name: str) -> dict[str, float]:
    """{label value or "": value} of one Prometheus metric with at most one label."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        label = head.split('"')[1] if '"' in head else ""
        try:
            out[label] = out.get(label, 0.0) + float(value)
        except ValueError:
            pass
    return out


def scrape(port: int) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            return resp.read().decode()
    except Exception:
        return None


def port_holders(ports) -> str:
    """`ss` lines of every TCP socket on these local ports (who keeps a restarted server from binding)."""
    try:
        out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, timeout=10).stdout
    except Exception as exc:
        return f"ss failed: {exc}"
    wanted = {f":{p}" for p in ports}
    # closing connections of the killed process (TIME-WAIT, FIN-WAIT) do not keep a restart from binding
    return "\n".join(" ".join(line.split()) for line in out.splitlines()
                     if len(line.split()) > 3 and any(line.split()[3].endswith(w) for w in wanted)
                     and not line.startswith(("TIME-WAIT", "FIN-WAIT")))[:2000]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def traffic_priority(nice: int) -> str:
    """Give this process (the simulator's traffic, the sampler and the killer) the CPU share of the
    autogroup nice value `nice` (sched(7), "The autogroup feature"; /proc/self/autogroup); returns
    what it runs with, or why it is unchanged.

    With autogroups on, the kernel shares the CPU between sessions first, and the stack's
    supervisor starts every component in a session of its own: under load the simulator's one
    thread got a share like any component's (480 records/s at load 42-48 on 2 cores, where it
    needs about 0.09 of a core for 1,000/s). The traffic stands for regional systems on machines
    of their own: it should arrive at its rate whatever the stack's load, and take only the little
    CPU it needs. Only a session leader changes its own autogroup (never the caller's session):
    start the run under `setsid` when its shell made it a process group leader."""
    group = Path("/proc/self/autogroup")
    if nice == 0:
        return "unchanged (--traffic-nice 0)"
    if not group.exists():
        return "unchanged: no autogroups on this kernel"
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except OSError:
            return "unchanged: not the leader of a session of its own (start it under `setsid`)"
    try:
        group.write_text(str(nice))
        return group.read_text().strip()
    except OSError as exc:
        return f"unchanged: {exc}"


def publishing_rates(samples: list[dict], end_s: float | None) -> dict:
    """Records/s published between consecutive samples while the traffic ran (each interval's
    count over its seconds): the settle waits between the simulator's phases make the dips."""
    rates = [round((b["sent"] - a["sent"]) / (b["t"] - a["t"]), 1) for a, b in zip(samples, samples[1:])
             if b["t"] > a["t"] and (end_s is None or b["t"] <= end_s)]
    if not rates:
        return {}
    ordered = sorted(rates)
    return {"intervals": len(rates), "min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1],
            "per_interval": rates}


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class Kill:
    component: str
    planned_s: float
    killed_s: float | None = None
    pid: int | None = None
    new_pid: int | None = None
    alive_after_s: float | None = None    # a new process of it runs
    healthy_after_s: float | None = None  # ... and its health answers
    during_traffic: bool = True
    note: str = ""
    evidence: list[str] = field(default_factory=list)  # sockets on its ports while it was not back

    def ok(self, limit: float) -> bool:
        return self.note == "not running" or (self.healthy_after_s is not None and self.healthy_after_s <= limit)


@dataclass
class Run:
    env: dict
    minutes: float
    rate: float
    seed: int
    components: list[str]
    every: float = 10.0
    max_recovery: float = 30.0
    give_up_s: float = 240.0
    kill_gap_s: float = 5.0  # after a victim is back, this long before the next kill
    log: object = print
    t0: float = 0.0
    samples: list[dict] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    sent: int = 0
    traffic_done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    partial: Path | None = None  # the samples and kills so far, written every minute: a run stopped by hand keeps them

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def write_partial(self) -> None:
        if self.partial is None:
            return
        try:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.partial.with_suffix(".tmp")
            tmp.write_text(json.dumps({"minutes": self.minutes, "rate": self.rate, "seed": self.seed, "at_s": self.now(),
                                       "sent": self.sent, "kills": [k.__dict__ for k in self.kills],
                                       "samples": self.samples}, default=str) + "\n")
            tmp.replace(self.partial)
        except OSError as exc:
            self.log(f"chaos: could not write {self.partial}: {exc}")

    # --- sampling ---
    def sampler(self, stack, settings) -> None:
        from ops.lag import JOBS_TOPICS, SINK_TOPICS, LagProbe

        topics = {"intelbus-jobs": JOBS_TOPICS, "intelbus-sink": SINK_TOPICS}
        probes: dict = {}
        names = [c.name for c in stack.components] + ["supervisor"]
        ports = {c.name: c.metrics_port for c in stack.components if getattr(c, "metrics_port", 0)}
        next_at = time.monotonic()
        while not self.stop.is_set():
            sample = {"t": self.now(), "sent": self.sent, "load": loadavg(), "rss": {}, "cpu": {}, "state": {},
                      "lag": {}}
            for name in names:
                record = stack.pids.read(name)
                got = proc_stats(record.pid) if record is not None else None
                if got:
                    sample["rss"][name], sample["cpu"][name] = got[0], round(got[1], 2)
            own = proc_stats(os.getpid())
            if own:
                sample["rss"]["simulator+chaos"], sample["cpu"]["simulator+chaos"] = own[0], round(own[1], 2)
            for name, port in ports.items():
                if not (name.startswith("jobs-") or name.startswith("workflows-")):
                    continue
                text = scrape(port)
                if text is None:
                    continue
                for table, v in metric_values(text, "intelbus_jobs_state_entries").items():
                    key = table if name == "jobs-0" else f"{name}:{table}"
                    sample["state"][key] = sample["state"].get(key, 0) + int(v)
            for group, group_topics in topics.items():
                try:
                    if group not in probes:
                        probes[group] = LagProbe(settings, group, group_topics)
                    sample["lag"][group] = sum(probes[group].lag().values())
                except Exception:  # a broker away: probe again from a fresh client next time
                    probe = probes.pop(group, None)
                    if probe is not None:
                        try:
                            probe.close()
                        except Exception:
                            pass
            self.samples.append(sample)
            if len(self.samples) % max(1, round(60 / self.every)) == 0:
                self.write_partial()
            next_at += self.every
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        for probe in probes.values():
            try:
                probe.close()
            except Exception:
                pass

    # --- killing ---
    def killer(self, stack, plan: list[tuple[str, float]]) -> None:
        by_name = {c.name: c for c in stack.components}
        ready_at = 0.0
        for name, planned in plan:
            kill = Kill(name, planned)
            self.kills.append(kill)
            at = max(planned, ready_at)
            while self.now() < at and not self.stop.is_set():
                time.sleep(0.2)
            if self.stop.is_set():
                kill.note = "run stopped first"
                return
            record = stack.pids.read(name)
            if name not in by_name or record is None or not record.alive():
                kill.note = "not running"
                self.log(f"chaos: {name} does not run here; not killed")
                continue
            kill.pid, kill.killed_s, kill.during_traffic = record.pid, self.now(), not self.traffic_done.is_set()
            os.kill(record.pid, signal.SIGKILL)
            self.log(f"chaos: {kill.killed_s:7.1f}s SIGKILL {name} (pid {record.pid})")
            killed = time.monotonic()
            looked = 0.0
            while time.monotonic() - killed < self.give_up_s:
                if time.monotonic() - killed - looked >= 10:  # slow: who holds its ports?
                    looked = time.monotonic() - killed
                    held = port_holders(by_name[name].ports)
                    if held and held not in kill.evidence:
                        kill.evidence.append(f"{looked:.0f}s: {held}")
                now = stack.pids.read(name)
                if now is not None and now.pid != kill.pid and now.alive():
                    if kill.alive_after_s is None:
                        kill.alive_after_s, kill.new_pid = round(time.monotonic() - killed, 1), now.pid
                    if by_name[name].healthy():
                        kill.healthy_after_s = round(time.monotonic() - killed, 1)
                        break
                time.sleep(0.25)
            if kill.healthy_after_s is None:
                kill.note = f"not healthy within {self.give_up_s:.0f}s"
            self.log(f"chaos: {name}: process back after {_s(kill.alive_after_s)}, healthy after {_s(kill.healthy_after_s)}")
            ready_at = self.now() + self.kill_gap_s  # one at a time: the next victim only after this one is back


def settle(settings, group: str, topics: list[str], timeout: float) -> float:
    """ops.lag.wait_for_zero_lag, probing again after a probe that failed while a broker was away."""
    from confluent_kafka import KafkaException

    from ops.lag import wait_for_zero_lag

    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            wait_for_zero_lag(settings, group, topics, timeout=max(1.0, deadline - time.monotonic()))
            return time.monotonic() - started
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def clickhouse_truth(settings, prefix: str, expected_hits: set[str], expected_events: int, *, timeout: float = 300.0
                     ) -> dict:
    """The run's distinct events and hit ids in ClickHouse: through the Distributed tables and on each
    replica's local tables; polled until they match or the timeout (the sink's last flushes, replication)."""
    from clickhouse_driver import Client

    from ops.cluster import clickhouse_replicas
    from ops.secrets import clickhouse_password

    password = clickhouse_password(settings, "default")
    like = prefix.replace("'", "")
    deadline = time.monotonic() + timeout
    while True:
        out = {"replicas": {}}
        targets = [("distributed", settings_host_port(settings), "")] + \
                  [(f"clickhouse-{r.index}", (r.host, r.tcp_port), "_local") for r in clickhouse_replicas(settings)]
        for label, (host, port), suffix in targets:
            try:
                client = Client(host, port=port, user="default", password=password, connect_timeout=5,
                                send_receive_timeout=60)
                events = client.execute(f"SELECT uniqExact(event_id) FROM intelbus.events{suffix} "
                                        f"WHERE source_ref LIKE '{like}%'")[0][0]
                hits = {row[0] for row in client.execute(f"SELECT DISTINCT hit_id FROM intelbus.hits{suffix} "
                                                         f"WHERE record_key LIKE '%/%/{like}%'")}
                client.disconnect()
                view = {"events": events, "hits": len(hits), "missing_hits": len(expected_hits - hits),
                        "false_hits": len(hits - expected_hits), "missing_sample": sorted(expected_hits - hits)[:5],
                        "false_sample": sorted(hits - expected_hits)[:5]}
                view["exact"] = events == expected_events and not view["missing_hits"] and not view["false_hits"]
            except Exception as exc:
                view = {"error": f"{type(exc).__name__}: {exc}"[:300], "exact": False}
            if label == "distributed":
                out.update(view)
            else:
                out["replicas"][label] = view
        out["exact"] = bool(out.get("exact")) and all(v.get("exact") for v in out["replicas"].values())
        if out["exact"] or time.monotonic() > deadline:
            return out
        time.sleep(5)


def settings_host_port(settings) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(settings.clickhouse_url)
    return parts.hostname or "127.0.0.1", parts.port or 9000


def process_usage(samples: list[dict], traffic: tuple[float, float]) -> tuple[dict, dict]:
    """Per process: resident memory (median, max) and cores while the traffic ran, and CPU seconds
    per 1,000 records over the whole run (traffic, drain and checks: the work the records caused,
    whenever it was done). CPU is summed between consecutive samples of the same process (a restart
    resets its counter: that interval is left out)."""
    start, end = traffic

    def cpu(window):
        out = {}
        for a, b in zip(window, window[1:]):
            for name, v in b["cpu"].items():
                if name in a["cpu"] and v >= a["cpu"][name]:
                    used, wall = out.get(name, (0.0, 0.0))
                    out[name] = (used + v - a["cpu"][name], wall + b["t"] - a["t"])
        return out

    inside = [s for s in samples if start <= s["t"] <= end]
    during, whole = cpu(inside), cpu(samples)
    records = max([s.get("sent", 0) for s in samples] + [0])
    per_process = {}
    for name in sorted({n for s in samples for n in s["rss"]}):
        rss = sorted(s["rss"][name] for s in inside if name in s["rss"])
        used, wall = during.get(name, (0.0, 0.0))
        per_process[name] = {"rss_mb_median": round(rss[len(rss) // 2] / 2**20, 1) if rss else None,
                             "rss_mb_max": round(rss[-1] / 2**20, 1) if rss else None,
                             "cores": round(used / wall, 3) if wall else None,
                             "cpu_s_per_1000_records": round(whole.get(name, (0.0, 0.0))[0] / records * 1000, 3)
                             if records else None}
    total = {"rss_mb_median": round(sum(p["rss_mb_median"] or 0 for p in per_process.values()), 1),
             "cores": round(sum(p["cores"] or 0 for p in per_process.values()), 3),
             "cpu_s_per_1000_records": round(sum(p["cpu_s_per_1000_records"] or 0 for p in per_process.values()), 3),
             "records": records}
    return per_process, total


def sizing(settings, stack, samples: list[dict], traffic: tuple[float, float], rate: float) -> dict:
    """Cores and memory per process while the traffic ran; ClickHouse's and Kafka's bytes per event."""
    from clickhouse_driver import Client

    from ops.cluster import clickhouse_replicas
    from ops.secrets import clickhouse_password

    per_process, total = process_usage(samples, traffic)
    out = {"per_process": per_process, "total": total, "rate": rate}
    password = clickhouse_password(settings, "default")
    parts = {}
    for r in clickhouse_replicas(settings):
        try:
            client = Client(r.host, port=r.tcp_port, user="default", password=password, connect_timeout=5)
            cols = {row[0] for row in client.execute("SELECT name FROM system.columns WHERE database = 'system' "
                                                     "AND table = 'parts'")}
            size = "bytes_on_disk" if "bytes_on_disk" in cols else "bytes"
            rows = client.execute(f"SELECT table, sum({size}), sum(rows) FROM system.parts WHERE database = 'intelbus' "
                                  "AND active GROUP BY table ORDER BY table")
            events = client.execute("SELECT count() FROM intelbus.events_local")[0][0]
            client.disconnect()
            total_bytes = sum(int(b) for _, b, _ in rows)
            parts[f"clickhouse-{r.index}"] = {
                "bytes": total_bytes, "event_rows": events,
                "bytes_per_event": round(total_bytes / events, 1) if events else None,
                "tables": {t: {"bytes": int(b), "rows": int(n)} for t, b, n in rows}}
        except Exception as exc:
            parts[f"clickhouse-{r.index}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out["clickhouse"] = parts
    per_event = [p["bytes_per_event"] for p in parts.values() if p.get("bytes_per_event")]
    if per_event:
        bpe = max(per_event)
        out["clickhouse_gb_per_day_per_replica_per_1000_eps"] = round(bpe * 1000 * 86400 / 1e9, 2)
    kafka = {}
    for c in stack.components:
        if c.name in BROKERS:
            data = Path(c.home) / "data"
            # blocks on disk, not st_size: each partition's index files are preallocated (10 MiB, sparse)
            kafka[c.name] = sum(f.stat().st_blocks * 512 for f in data.rglob("*") if f.is_file()) if data.exists() else None
    out["kafka_log_bytes"] = kafka
    return out


def run_chaos(env: dict, *, minutes: float, rate: float, seed: int, components: list[str], every: float = 10.0,
              max_recovery: float = 30.0, log=print, kill_window: tuple[float, float] = (0.08, 0.85),
              kill_gap_s: float = 5.0, partial_path: Path | None = None, clickhouse_wait_s: float = 300.0) -> dict:
    """The run on a stack already up with env's settings: traffic, kills, samples, drain, checks.
    Returns the results (also what the JSON holds); results["ok"] is the verdict.
    kill_window: the shares of the planned traffic time the kills are spread over (kill_plan's
    start and end); kill_gap_s: seconds after a victim is back before the next kill (the short
    test's tighter plan: tests/integration/test_chaos_short.py); partial_path: where the samples and kills
    so far are written every minute (a run stopped before its end keeps them); clickhouse_wait_s: how long
    ClickHouse may take to match the truth once both groups drained (the test: 90 s, not 300)."""
    from ops.lag import JOBS_TOPICS, SINK_TOPICS
    from ops.services import full_stack
    from ops.verify import load_truth, verify
    from producers.regional import RegionalProducer
    from producers.simulate import run_simulation, write_truth
    from producers.simulator import SimConfig, Simulation

    settings = settings_of(env)
    stack = full_stack(settings, out=lambda m: None)
    traffic_s = minutes * 60
    count = int(rate * traffic_s)
    prefix = f"X{uuid.uuid4().hex[:6]}-"
    sim = Simulation(SimConfig(seed=seed, count=count, ref_prefix=prefix))
    plan = kill_plan(components, seed, traffic_s, start=kill_window[0], end=kill_window[1])
    run = Run(env=env, minutes=minutes, rate=rate, seed=seed, components=components, every=every,
              max_recovery=max_recovery, log=log, kill_gap_s=kill_gap_s, partial=partial_path)
    results = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "minutes": minutes,
               "rate": rate, "seed": seed, "records": count, "ref_prefix": prefix, "components": components, "every": every,
               "plan": plan, "load_at_start": loadavg(), "uptime_at_start": _uptime(),
               "stack_dir": settings.stack_dir}
    log(f"chaos: {count:,} records at {rate:,.0f}/s ({minutes} min), prefix {prefix}, seed {seed}; "
        f"kills planned: {', '.join(f'{c}@{t:.0f}s' for c, t in plan)}")
    producer = RegionalProducer(settings=settings)
    report: dict = {}
    settle_waits: list[float] = []

    def between_phases():
        settle_waits.append(round(settle(settings, "intelbus-jobs", JOBS_TOPICS, timeout=900), 1))

    def progress(line: str):
        try:
            run.sent = int(line.split()[1].replace(",", ""))
        except (IndexError, ValueError):
            pass

    def traffic():
        try:
            report.update(run_simulation(sim, rate=rate, settings=settings, producer=producer, phase_pause=0.5,
                                         between_phases=between_phases, log=progress))
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            run.traffic_done.set()

    run.t0 = time.monotonic()
    threads = [threading.Thread(target=run.sampler, args=(stack, settings), daemon=True),
               threading.Thread(target=run.killer, args=(stack, plan), daemon=True)]
    sim_thread = threading.Thread(target=traffic, daemon=True)
    sim_thread.start()
    for t in threads:
        t.start()
    sim_thread.join()
    traffic_end = run.now()
    run.sent = report.get("published", run.sent)
    log(f"chaos: traffic done at {traffic_end:.0f}s: {json.dumps({k: report.get(k) for k in ('published', 'rejected', 'undelivered', 'rate', 'error')})}")
    threads[1].join()  # the kills planned after the traffic (slow recoveries) still happen
    producer.flush(60)
    errors = list(producer.stats.errors)
    producer.close()
    truth = Path(settings.stack_dir) / f"truth-{seed}-{prefix.rstrip('-')}.jsonl"
    write_truth(str(truth), sim)
    drain = {}
    # the sink's lag need not read 0 three times in a row: after the 15-minute run at 1,000/s it read 4-57 for
    # 5 minutes (its topics kept getting messages); clickhouse_truth below polls until the rows are there anyway
    for group, topics, wait_s in (("intelbus-jobs", JOBS_TOPICS, 1200), ("intelbus-sink", SINK_TOPICS, 120)):
        try:
            drain[group] = round(settle(settings, group, topics, timeout=wait_s), 1)
        except Exception as exc:
            drain[group] = f"{type(exc).__name__}: {exc}"
    log(f"chaos: drained at {run.now():.0f}s: {drain}")
    try:
        verdict = verify(settings, str(truth))
        kafka_truth = {**verdict.summary(), "missing_sample": verdict.missing[:5], "false_sample": verdict.false_hits[:5]}
    except Exception as exc:  # recorded, and the run fails; the rest is still measured and written
        kafka_truth = {"error": f"{type(exc).__name__}: {exc}"[:500], "exact": False}
    _, expected = load_truth(str(truth))
    clickhouse = clickhouse_truth(settings, prefix, set(expected), sim.truth.events, timeout=clickhouse_wait_s)
    run.stop.set()
    threads[0].join(timeout=60)
    kafka_ok = bool(kafka_truth.get("exact")) and bool(sim.truth.hits)
    try:
        measured = sizing(settings, stack, run.samples, (0.0, traffic_end), rate)
    except Exception as exc:
        measured = {"error": f"{type(exc).__name__}: {exc}"[:500], "per_process": {}, "total": {}, "clickhouse": {},
                    "kafka_log_bytes": {}}
    recovered = all(k.ok(max_recovery) for k in run.kills) and len(run.kills) == len(plan)
    delivered = report.get("undelivered", 1) == 0 and not report.get("error")
    results.update({
        "traffic": {**{k: v for k, v in report.items() if k != "by_type"}, "ended_s": traffic_end,
                    "settle_waits_s": settle_waits, "publishing_rates": publishing_rates(run.samples, traffic_end)},
        "producer_errors": {"count": len(errors), "first": errors[:5]},
        "kills": [k.__dict__ for k in run.kills],
        "drain_s": drain,
        "kafka_truth": kafka_truth,
        "clickhouse_truth": clickhouse,
        "samples": run.samples,
        "sizing": measured,
        "load_at_end": loadavg(), "uptime_at_end": _uptime(), "ended_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    failures = []
    if not kafka_ok:
        failures.append("ground truth on Kafka not exact")
    if not clickhouse["exact"]:
        failures.append("ground truth in ClickHouse not exact")
    if not recovered:
        failures.append("a component did not come back within "
                        f"{max_recovery:.0f}s: " + ", ".join(f"{k.component} ({k.healthy_after_s}s{', ' + k.note if k.note else ''})"
                                                            for k in run.kills if not k.ok(max_recovery)))
    if not delivered:
        failures.append(f"the simulator did not deliver everything: {report.get('undelivered')} undelivered, "
                        f"{report.get('error') or ''}")
    results["failures"] = failures
    results["ok"] = not failures
    return results


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return loadavg()


# --- the report ------------------------------------------------------------------------------------

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#843c39", "#7b4173"]


def svg_plot(results: dict) -> str:
    """Three panels over the run's time: resident memory per process (MB), the jobs' state table
    entries, consumer lag per group; a dashed line at each kill."""
    samples = results["samples"]
    width, left, right, panel_h, gap, top = 980, 70, 190, 200, 55, 56
    panels = [
        ("resident memory per process (MB)", "rss", lambda v: v / 2**20),
        ("jobs state entries per table", "state", float),
        ("consumer lag per group (messages)", "lag", float),
    ]
    height = top + len(panels) * (panel_h + gap) + 10
    t_max = max([s["t"] for s in samples] + [1.0])
    plot_w = width - left - right
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14">chaos run: {results["rate"]:,.0f} records/s, {results["minutes"]} min, '
           f'seed {results["seed"]}; dashed: SIGKILL; green: traffic ends</text>']
    for i, (title, key, conv) in enumerate(panels):
        y0 = top + i * (panel_h + gap)
        series: dict[str, list[tuple[float, float]]] = {}
        for s in samples:
            for name, v in s.get(key, {}).items():
                if v is not None:
                    series.setdefault(name, []).append((s["t"], conv(v)))
        v_max = max([v for pts in series.values() for _, v in pts] + [1.0]) * 1.05
        out.append(f'<text x="{left}" y="{y0 - 6}" font-size="12" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        for frac in (0, 0.5, 1):
            y = y0 + panel_h - frac * panel_h
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(frac * v_max)}</text>')
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        for frac in (0, 0.25, 0.5, 0.75, 1):
            x = left + frac * plot_w
            out.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">{frac * t_max:.0f}s</text>')
        end = results.get("traffic", {}).get("ended_s")
        if end:
            x = left + end / t_max * plot_w
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + panel_h}" stroke="#2a2" stroke-width="2"/>')
            if i == 0:
                out.append(f'<text x="{x - 3:.1f}" y="{y0 + panel_h - 4}" text-anchor="end" fill="#2a2">traffic ends</text>')
        for k in results["kills"]:
            if k.get("killed_s") is None:
                continue
            x = left + k["killed_s"] / t_max * plot_w
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + panel_h}" stroke="#555" stroke-dasharray="4,3"/>')
            if i == 0:
                out.append(f'<text x="{x + 2:.1f}" y="{y0 + 10}" font-size="9" transform="rotate(90 {x + 2:.1f} {y0 + 10})">'
                           f'{k["component"]}</text>')
        for j, (name, pts) in enumerate(sorted(series.items())):
            color = PALETTE[j % len(PALETTE)]
            path = " ".join(f"{left + t / t_max * plot_w:.1f},{y0 + panel_h - v / v_max * panel_h:.1f}" for t, v in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
            ly = y0 + 10 + j * 13
            out.append(f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 28}" y1="{ly - 4}" y2="{ly - 4}" '
                       f'stroke="{color}" stroke-width="2"/>')
            out.append(f'<text x="{left + plot_w + 32}" y="{ly}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def markdown(results: dict, svg_name: str) -> str:
    k_truth, c_truth, t = results["kafka_truth"], results["clickhouse_truth"], results["traffic"]
    if "error" in k_truth:
        k_truth = {**{k: "?" for k in ("expected_hits", "found_hits", "missing", "false_hits", "duplicate_hits",
                                      "expected_events", "distinct_events", "expected_duplicates", "duplicates_dropped")},
                   **k_truth}
    lines = [f"# Chaos run {results['started_utc']}",
             "",
             f"`python -m bench.chaos --minutes {results['minutes']} --rate {results['rate']:g} --seed {results['seed']}`: "
             f"{results['records']:,} simulator records on an isolated `intelbus up --profile cluster` (3 KRaft brokers, "
             "ZooKeeper, 2 ClickHouse replicas, registry, jobs-0, workflows-0, sink, gateway), each component SIGKILLed "
             "once; only the stack's supervisor brings them back.",
             "",
             f"**Verdict: {'PASS' if results['ok'] else 'FAIL'}**" + ("" if results["ok"] else ": " + "; ".join(results["failures"])),
             "",
             f"Machine (shared, 2 cores): at start `{results['uptime_at_start']}`; at end `{results['uptime_at_end']}`.",
             "",
             f"Traffic: {t.get('published', 0):,} published ({t.get('rejected', 0)} refused before the bus, as the "
             f"simulator intends), {t.get('undelivered')} undelivered, {t.get('rate')} records/s achieved over "
             f"{t.get('elapsed_s')} s (the phases wait for the jobs: {t.get('settle_waits_s')} s); producer errors "
             f"{results['producer_errors']['count']}; drained after the traffic in {results['drain_s']} s.",
             "",
             _rates_line(t.get("publishing_rates"), results.get("every", 10), results.get("traffic_priority")),
             "",
             "## Ground truth",
             "",
             "| where | expected | found | missing | false | exact |",
             "|---|---|---|---|---|---|",
             f"| Kafka intel.hit (hits) | {_n(k_truth['expected_hits'])} | {_n(k_truth['found_hits'])} | {k_truth['missing']} | "
             f"{k_truth['false_hits']} (+{k_truth['duplicate_hits']} duplicate) | {k_truth['exact']} |",
             f"| Kafka *.unique (distinct events) | {_n(k_truth['expected_events'])} | {_n(k_truth['distinct_events'])} | | | |",
             f"| Kafka intel.duplicates (dropped duplicates) | {_n(k_truth['expected_duplicates'])} | "
             f"{_n(k_truth['duplicates_dropped'])} | | | |",
             f"| ClickHouse hits (Distributed) | {_n(k_truth['expected_hits'])} | {c_truth.get('hits', '?')} | "
             f"{c_truth.get('missing_hits', '?')} | {c_truth.get('false_hits', '?')} | {c_truth.get('exact')} |",
             f"| ClickHouse events (Distributed) | {_n(k_truth['expected_events'])} | {c_truth.get('events', '?')} | | | |",
             ]
    for name, v in c_truth.get("replicas", {}).items():
        lines.append(f"| {name} local tables (hits / events) | {_n(k_truth['expected_hits'])} / {_n(k_truth['expected_events'])} | "
                     f"{v.get('hits', '?')} / {v.get('events', '?')} | {v.get('missing_hits', '?')} | "
                     f"{v.get('false_hits', '?')} | {v.get('exact')} |")
    lines += ["", "## Recovery after SIGKILL",
              "",
              f"Seconds from the SIGKILL until a new process runs and until its health answers (limit "
              f"{results.get('max_recovery', 30):.0f} s). The supervisor looks twice a second and restarts a "
              "component at once after its first crash (INTELBUS_STARTUP_TUNING without `restart`: every second, "
              "after 1 s); bench/bench_recovery.py splits the time into phases.",
              "",
              "| component | planned at | killed at | process back | healthy | during traffic | note |",
              "|---|---|---|---|---|---|---|"]
    for k in results["kills"]:
        lines.append(f"| {k['component']} | {k['planned_s']:.0f} s | {_s(k['killed_s'])} | {_s(k['alive_after_s'])} | "
                     f"**{_s(k['healthy_after_s'])}** | {'yes' if k['during_traffic'] else 'no'} | {k['note']} |")
    for k in results["kills"]:
        if k.get("evidence"):
            lines += ["", f"Sockets on {k['component']}'s ports while it was not back (`ss -tanp`):", "", "```",
                      *k["evidence"], "```"]
    sz = results["sizing"]
    lines += ["", f"## Sizing at {results['rate']:,.0f} records/s (while the traffic ran, kills included)", "",
              "Cores: CPU time over wall time while the traffic ran (its phases' waits for the jobs included). "
              "CPU s per 1,000 records: all the CPU the process used from the start to the last check, over the "
              "records published: what sizing per 1,000 records/s needs (1 CPU s per 1,000 records = 1 core at "
              "1,000/s). Each figure includes the process's own restart after its SIGKILL.", "",
              "| process | cores | CPU s per 1,000 records | RSS median MB | RSS max MB |", "|---|---|---|---|---|"]
    for name, p in sorted(sz["per_process"].items()):
        lines.append(f"| {name} | {p['cores']} | {p.get('cpu_s_per_1000_records')} | {p['rss_mb_median']} | "
                     f"{p['rss_mb_max']} |")
    lines.append(f"| **total** | **{sz['total'].get('cores')}** | **{sz['total'].get('cpu_s_per_1000_records')}** | "
                 f"**{sz['total'].get('rss_mb_median')}** | |")
    lines += [""]
    for name, p in sz["clickhouse"].items():
        if "bytes" in p:
            lines.append(f"- {name}: `system.parts` {p['bytes'] / 2**20:.1f} MiB active for {p['event_rows']:,} event rows: "
                         f"{p['bytes_per_event']} bytes per event (all intelbus tables)")
    if "clickhouse_gb_per_day_per_replica_per_1000_eps" in sz:
        lines.append(f"- ClickHouse history: {sz['clickhouse_gb_per_day_per_replica_per_1000_eps']} GB per day per replica "
                     "per 1,000 events/s (x2 replicas)")
    for name, b in sz["kafka_log_bytes"].items():
        if b:
            lines.append(f"- {name}: {b / 2**20:.1f} MiB of log after {t.get('published', 0):,} records "
                         f"({b / max(1, t.get('published', 1)):.0f} bytes per published record, every topic, replication 3)")
    state_first, state_last = _state_ends(results["samples"])
    lines += ["", "## State and lag over time", "",
              f"![memory, state, lag]({svg_name})", "",
              f"Jobs state entries first sample -> last: {state_first} -> {state_last} (the windows are days: "
              "over a 30-minute run they only grow; bench/bench_state.py shows them flat with short windows).",
              f"Max lag: {_max_lag(results['samples'])}."]
    return "\n".join(lines) + "\n"


def _rates_line(rates: dict | None, every: float, priority: str | None) -> str:
    if not rates:
        return "Publishing rate per sample interval: no samples."
    return (f"Publishing rate per {every:g}-s sample interval while the traffic ran: median {rates['median']:,.0f}, "
            f"min {rates['min']:,.0f}, max {rates['max']:,.0f} records/s over {rates['intervals']} intervals (the "
            f"settle waits make the dips); the traffic's process ran with autogroup `{priority or 'unchanged'}`.")


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f} s"


def _state_ends(samples):
    with_state = [s["state"] for s in samples if s.get("state")]
    return (with_state[0], with_state[-1]) if with_state else ({}, {})


def _max_lag(samples):
    out = {}
    for s in samples:
        for g, v in s.get("lag", {}).items():
            out[g] = max(out.get(g, 0), v)
    return out


def write_results(results: dict, out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}.svg"
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[2].write_text(svg_plot(results))
    paths[1].write_text(markdown(results, paths[2].name))
    return paths


# --- the command -----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of simulator traffic (default 30)")
    p.add_argument("--rate", type=float, default=1000.0, help="simulator records per second (default 1000)")
    p.add_argument("--seed", type=int, default=18, help="seeds the kill order and times and the simulator (default 18)")
    p.add_argument("--components", default=",".join(DEFAULT_COMPONENTS),
                   help=f"comma-separated components to SIGKILL once each (default {','.join(DEFAULT_COMPONENTS)}; "
                        "also zookeeper, clickhouse-1, jobs-N)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--max-recovery", type=float, default=30.0,
                   help="seconds a component may take from SIGKILL to healthy (default 30)")
    p.add_argument("--stack-dir", default="/tmp/intelbus-chaos", help="the isolated stack's directory (default /tmp/intelbus-chaos)")
    p.add_argument("--port-base", type=int, default=62000,
                   help="its ports: brokers base+302.., registry +181, ClickHouse +310/+323, ZooKeeper +182, gateway +180, "
                        "metrics +600 (default 62000, above the ephemeral ports)")
    p.add_argument("--reuse", action="store_true", help="use a stack already up with these settings (no up, no down)")
    p.add_argument("--no-warm-archives", dest="warm_archives", action="store_false",
                   help="skip the clean stop and start of the JVM servers after `up` that writes their class-data "
                        "archives (a fresh stack has none until its first clean stop; ops/components.py, JavaServer)")
    p.add_argument("--keep", action="store_true", help="leave the stack running at the end (for --reuse)")
    p.add_argument("--results-dir", default=str(RESULTS), help="where the results go (default bench/results)")
    p.add_argument("--name", default="chaos", help="results file name: <name>.json/.md/.svg (default chaos)")
    p.add_argument("--traffic-nice", type=int, default=0,
                   help="autogroup nice of this process, the simulator's traffic (default 0: unchanged): -10 keeps "
                        "the traffic's rate on a crowded machine (traffic_priority; needs a session of its own: run "
                        "it under `setsid`), but every thread of the process gets it, librdkafka's too (in the run "
                        "of 19:31 they took 0.9 of a core for 3 minutes and starved the stack; bench/results/chaos.md)")
    p.add_argument("--rewrite", metavar="JSON", help="only write the .md and .svg again from a run's .json")
    return p.parse_args(argv)


def rewrite(path: Path) -> int:
    """Write <name>.md and .svg again from <name>.json (the figures from the samples recomputed)."""
    results = json.loads(path.read_text())
    end = results.get("traffic", {}).get("ended_s") or max(s["t"] for s in results["samples"])
    per_process, total = process_usage(results["samples"], (0.0, end))
    results.setdefault("sizing", {}).update(per_process=per_process, total=total)
    write_results(results, path.parent, path.stem)
    print(f"chaos: {path.with_suffix('.md')} and .svg written again")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rewrite:
        return rewrite(Path(args.rewrite))
    env = chaos_env(args.stack_dir, args.port_base)
    try:
        low, high = map(int, EPHEMERAL.read_text().split())
        if args.port_base + 180 <= high and args.port_base + 640 >= low:
            print(f"chaos: warning: ports {args.port_base + 180}-{args.port_base + 640} overlap the ephemeral range "
                  f"{low}-{high}: a killed server may not get its port back", flush=True)
    except (OSError, ValueError):
        pass
    priority = traffic_priority(args.traffic_nice)
    print(f"chaos: this process's autogroup: {priority}", flush=True)
    started = time.monotonic()
    if not args.reuse:
        print(f"chaos: intelbus up --profile cluster in {args.stack_dir} (ports {args.port_base}+) ...", flush=True)
        up = intelbus(env, "up", "--profile", "cluster", timeout=1200)
        if up.returncode != 0:
            print(up.stdout[-3000:], up.stderr[-3000:], file=sys.stderr)
            return 2
        if args.warm_archives and not warm_class_archives(env):
            return 2
    up_s = round(time.monotonic() - started, 1)
    print(f"chaos: stack up in {up_s}s", flush=True)
    try:
        results = run_chaos(env, minutes=args.minutes, rate=args.rate, seed=args.seed,
                            components=[c.strip() for c in args.components.split(",") if c.strip()],
                            every=args.every, max_recovery=args.max_recovery,
                            log=lambda m: print(m, flush=True),
                            partial_path=Path(args.results_dir) / f"{args.name}.partial.json")
        results["stack_up_s"] = None if args.reuse else up_s
        results["traffic_priority"] = priority
        results["max_recovery"] = args.max_recovery
        paths = write_results(results, Path(args.results_dir), args.name)
        (Path(args.results_dir) / f"{args.name}.partial.json").unlink(missing_ok=True)  # the whole run is written
    finally:
        if not args.reuse and not args.keep:
            down = intelbus(env, "down", "--purge", timeout=600)
            print(f"chaos: intelbus down --purge: exit {down.returncode}", flush=True)
    print(f"chaos: {'PASS' if results['ok'] else 'FAIL: ' + '; '.join(results['failures'])}")
    print(f"chaos: results in {', '.join(str(p) for p in paths)}; total {time.monotonic() - started:.0f}s")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
