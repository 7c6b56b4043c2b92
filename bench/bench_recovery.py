"""How long a SIGKILLed component of the stack takes to serve again, phase by phase (issue 18).

On an isolated stack (its own directory and ports 64980-65450, base 64800: docs/deploy.md's port
map; `intelbus up --infra-only`: never the shared stack's processes), each component named is SIGKILLed `--kills` times per variant and
condition, and only the stack's supervisor brings it back. Each recovery is cut into:

  restart   SIGKILL -> the supervisor has spawned the new process (its look interval, backoff,
            the lock, `prepare()`: the pid file's start time)
  jvm       spawn -> the server's first log line (the JVM's start, to log initialisation)
  server    first log line -> the server says it started (Kafka "Kafka Server started": KRaft,
            log recovery, registration; the registry "started in": Quarkus, its storage)
            of which, for a broker, `old session`: from the first DUPLICATE_BROKER_REGISTRATION
            refusal to the start (its previous incarnation's session running out)
  probe     started -> the health probe `intelbus status` uses answers (polled every 0.1 s here)
  total     SIGKILL -> probe answers

Variants are values of INTELBUS_STARTUP_TUNING (ops/components.py) given to the stack's
supervisor, restarted for each: "none" (as before issue 18's recovery work), "all", or a list.
The `cds` tuning's archive is written when a JVM exits cleanly: a variant with cds first stops
the component with `down NAME` and starts it again when its archive is missing (the warm-up,
reported apart: the clean stop's time, the archive's size).
Conditions: idle (whatever else runs on the machine), loaded (`--hog` busy-loop processes
started just before each kill and stopped once it answers). The load average is recorded per kill.

Examples:
  .venv/bin/python -m bench.bench_recovery --components kafka,registry --kills 3
  .venv/bin/python -m bench.bench_recovery --reuse --keep --variants "none/restart/restart,kafka/all" --conditions idle
  .venv/bin/python -m bench.bench_recovery --profile cluster --components kafka-2 --name recovery-cluster
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench.chaos import chaos_env, intelbus, loadavg
from bench.proc import cpu_seconds as process_cpu_seconds

RESULTS = Path(__file__).resolve().parent / "results"
# its isolated stack's ports: base+180..base+650 (bench/chaos.py chaos_env's layout); the other isolated
# stacks' bases are in docs/deploy.md's port map ("Ports of the isolated stacks"), checked by
# tests/unit/ops/test_isolated_stack_ports.py
PORT_BASE = 64800
PHASES = ("restart", "jvm", "server", "probe", "total")

# log lines that mark where a server is in its start: (phase mark, substring)
MARKERS = {
    "Kafka": [("started", "Kafka Server started"), ("refused", "DUPLICATE_BROKER_REGISTRATION")],
    "KafkaNode": [("started", "Kafka Server started"), ("refused", "DUPLICATE_BROKER_REGISTRATION")],
    "Registry": [("started", ") started in ")],
    "ZooKeeper": [("started", "binding to port")],
    "ClickHouse": [("started", "Ready for connections")],
    "ClickHouseReplicaServer": [("started", "Ready for connections")],
}


@dataclass
class Recovery:
    component: str
    variant: str
    condition: str
    warmup: bool = False
    load: str = ""
    pid: int | None = None
    new_pid: int | None = None
    # seconds after the SIGKILL
    spawned: float | None = None
    first_line: float | None = None
    started: float | None = None
    refused_first: float | None = None
    healthy: float | None = None
    cpu_s: float | None = None  # CPU seconds the new process used until it answered (all its threads)
    note: str = ""
    flags: list[str] = field(default_factory=list)

    def phases(self) -> dict[str, float | None]:
        def gap(a, b):
            return None if a is None or b is None else round(b - a, 2)

        started = self.started if self.started is not None else self.first_line
        return {"restart": gap(0.0, self.spawned), "jvm": gap(self.spawned, self.first_line),
                "server": gap(self.first_line, self.started), "probe": gap(started, self.healthy),
                "total": self.healthy, "old session": gap(self.refused_first, self.started)}


class LogWatch:
    """New lines of a log file since a point, with the time each was first seen (polled)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.buffer = b""

    def poll(self) -> list[str]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # rotated
                self.offset = 0
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def cpu_seconds(pid: int) -> float | None:
    seconds = process_cpu_seconds(pid)
    return None if seconds is None else round(seconds, 2)


def hog() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the bench's handler, inherited by the fork
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        pass


def start_hogs(n: int) -> list[multiprocessing.Process]:
    procs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def stop_hogs(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)


def restart_supervisor(settings, variant: str) -> None:
    """The stack's supervisor again, with this variant's start-up tunings (its children inherit them)."""
    from ops.supervise import ensure_supervisor, log_path, stop_supervisor

    from ops.settings import load_settings

    os.environ["INTELBUS_STARTUP_TUNING"] = variant
    settings = load_settings()  # the supervisor is started with its settings' startup_tuning
    stop_supervisor(settings, out=lambda m: None)
    log = log_path(settings)
    before = log.stat().st_size if log.exists() else 0
    ensure_supervisor(settings, out=lambda m: None)
    # watching: its imports and first look done (else a kill's restart phase would hold its start)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(before)
            if b"supervisor: watching" in f.read():
                break
        time.sleep(0.1)
    time.sleep(1.0)


def kill_and_time(stack, c, variant: str, condition: str, *, hogs: int, warmup: bool = False,
                  give_up_s: float = 180.0, log=print) -> Recovery:
    record = stack.pids.read(c.name)
    r = Recovery(c.name, variant, condition, warmup=warmup)
    if record is None or not record.alive():
        r.note = "not running"
        return r
    logs = {"first": LogWatch(Path(c.log))}
    if Path(c.stdout_log) != Path(c.log):
        logs["stdout"] = LogWatch(Path(c.stdout_log))
    markers = MARKERS.get(type(c).__name__, [])
    procs = start_hogs(hogs) if hogs else []
    try:
        if procs:
            time.sleep(2.0)  # the hogs running before the kill
        r.load = loadavg()
        r.pid = record.pid
        killed_wall = time.time()
        killed = time.monotonic()
        os.kill(record.pid, signal.SIGKILL)
        while time.monotonic() - killed < give_up_s:
            now = time.monotonic() - killed
            if r.new_pid is None:
                rec = stack.pids.read(c.name)
                if rec is not None and rec.pid != r.pid:
                    r.new_pid, r.spawned = rec.pid, round(rec.started_at - killed_wall, 2)
                    # lines the old process wrote before it died are not the new one's
                    for w in logs.values():
                        w.poll()
                        w.buffer = b""
            else:
                lines = [line for line in logs["first"].poll() if " intelbus starts " not in line]
                if lines and r.first_line is None:
                    r.first_line = round(now, 2)
                lines += logs["stdout"].poll() if "stdout" in logs else []
                for mark, text in markers:
                    if any(text in line for line in lines):
                        if mark == "started" and r.started is None:
                            r.started = round(now, 2)
                        elif mark == "refused" and r.refused_first is None:
                            r.refused_first = round(now, 2)
                if c.healthy():
                    r.healthy = round(time.monotonic() - killed, 2)
                    r.cpu_s = cpu_seconds(r.new_pid)
                    # a server can answer just before it logs that it started
                    late = [line for w in logs.values() for line in w.poll()]
                    for mark, text in markers:
                        if mark == "started" and r.started is None and any(text in line for line in late):
                            r.started = r.healthy
                    break
            time.sleep(0.1)
        if r.healthy is None:
            r.note = f"not healthy within {give_up_s:.0f}s"
        if r.new_pid:
            try:
                r.flags = [a.decode() for a in Path(f"/proc/{r.new_pid}/cmdline").read_bytes().split(b"\0")
                           if a.startswith((b"-XX:", b"-Xshare"))]
            except OSError:
                pass
    finally:
        stop_hogs(procs)
    p = r.phases()
    log(f"recovery: {c.name:<9} {variant:<22} {condition:<6}{' warm-up' if warmup else ''} load {r.load}: "
        + ", ".join(f"{k} {v}" for k, v in p.items() if v is not None) + f", CPU {r.cpu_s} s"
        + (f" ({r.note})" if r.note else ""))
    return r


def wait_settled(stack, c, timeout: float = 120.0) -> None:
    """After a recovery: healthy, then a few seconds for what follows a start (the supervisor's
    own probe, the broker's first metadata round)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not c.healthy():
        time.sleep(0.5)
    time.sleep(3.0)


def clean_restart(stack, c, variant: str, *, log=print) -> dict:
    """`down NAME` (SIGTERM: the JVM writes its class-data archive as it exits), then start it
    again (the code path of `up`): what a stack's first clean stop does for the `cds` tuning."""
    t0 = time.monotonic()
    stack.down(only={c.name})
    stopped = round(time.monotonic() - t0, 1)
    archived = c.cds_archive().exists()
    t1 = time.monotonic()
    record, _ = stack.launch(c)
    while time.monotonic() - t1 < 300 and not c.healthy():
        time.sleep(0.2)
    out = {"component": c.name, "variant": variant, "stop_s": stopped, "archive_written": archived,
           "archive_mb": round(c.cds_archive().stat().st_size / 2**20, 1) if archived else None,
           "start_s": round(time.monotonic() - t1, 1), "cpu_s": cpu_seconds(record.pid)}
    log(f"recovery: {c.name:<9} {variant:<22} warm-up: clean stop {stopped} s (archive written: {archived}, "
        f"{out['archive_mb']} MB), start {out['start_s']} s, CPU {out['cpu_s']} s")
    time.sleep(3.0)
    return out


def needs_archive(c) -> bool:
    from ops.components import JavaServer, startup_tunings

    if not isinstance(c, JavaServer) or "cds" not in startup_tunings():
        return False
    c.prepare()
    return not c.cds_archive().exists()


def summarize(recoveries: list[Recovery]) -> list[dict]:
    rows = {}
    for r in recoveries:
        if r.warmup or r.healthy is None:
            continue
        rows.setdefault((r.component, r.condition, r.variant), []).append(r)
    out = []
    for (component, condition, variant), rs in rows.items():
        row = {"component": component, "condition": condition, "variant": variant, "n": len(rs),
               "load": [r.load for r in rs]}
        for phase in (*PHASES, "old session", "cpu"):
            values = [r.cpu_s if phase == "cpu" else r.phases()[phase] for r in rs]
            values = [v for v in values if v is not None]
            row[phase] = {"median": round(statistics.median(values), 1), "max": round(max(values), 1)} if values else None
        out.append(row)
    return out


def markdown(results: dict) -> str:
    lines = [f"# Recovery after SIGKILL, phase by phase ({results['started_utc'][:16].replace('T', ' ')} UTC)", "",
             f"`python -m bench.bench_recovery {results['argv']}`: an isolated `intelbus up --infra-only "
             f"--profile {results['profile']}` (ports {results['port_base']}+), each component SIGKILLed "
             f"{results['kills']} times per variant idle ({results['loaded_kills']} loaded), the variants in turn; only the stack's supervisor brings it back. "
             "Seconds, median (max) of the kills. Variants are INTELBUS_STARTUP_TUNING values "
             "(ops/components.py): `none` is the stack as it was before, `all` every tuning. `loaded`: "
             f"{results['hogs']} busy-loop processes run from 2 s before the kill until the probe answers.", "",
             f"Machine: 2 cores, shared; load average at the start `{results['load_at_start']}`, at the end "
             f"`{results['load_at_end']}`.", "",
             "| component | condition | variant | n | restart | jvm | server | (old session) | probe | **total** | CPU s | load at the kills |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(v):
        return "-" if v is None else f"{v['median']} ({v['max']})"

    for row in results["summary"]:
        lines.append(f"| {row['component']} | {row['condition']} | {row['variant']} | {row['n']} | "
                     + " | ".join(cell(row[p]) for p in ("restart", "jvm", "server", "old session", "probe"))
                     + f" | **{cell(row['total'])}** | {cell(row['cpu'])} | {'; '.join(l.split()[0] for l in row['load'])} |")
    lines += ["", "Phases: restart = SIGKILL to the new process spawned (supervisor's look, backoff, `prepare`); "
              "jvm = spawn to the server's first log line; server = first log line to its 'started' line "
              "(old session: a broker's registration refused until its killed incarnation's session ran out); "
              "probe = 'started' to the health probe answering; total = SIGKILL to the probe answering. "
              "CPU s: what the new process used until it answered, all threads (on a machine with a load "
              "average of L on 2 cores it gets about 2/L of a core: the wall time it needs there).", "",
              "## Warm-ups (a variant with `cds`, its archive missing: a clean stop writes it)", "",
              *[f"- {w['component']} ({w['variant']}): clean stop {w['stop_s']} s, archive written: "
                f"{w['archive_written']} ({w['archive_mb']} MB), start with it {w['start_s']} s, CPU {w['cpu_s']} s"
                for w in results.get("warmups", [])], "",
              "## Every kill", "", "| component | condition | variant | load | total | phases | CPU s | JVM flags | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["recoveries"]:
        p = Recovery(**r).phases()
        lines.append(f"| {r['component']} | {r['condition']} | {r['variant']}{' (warm-up)' if r['warmup'] else ''} | "
                     f"{r['load'].split()[0] if r['load'] else ''} | {p['total']} | "
                     + ", ".join(f"{k} {v}" for k, v in p.items() if v is not None and k != "total")
                     + f" | {r.get('cpu_s')} | {' '.join(f for f in r['flags'] if 'Shared' in f or 'Archive' in f or 'Tiered' in f)} | {r['note']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_recovery", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--components", default="kafka,registry", help="components to kill (default kafka,registry)")
    p.add_argument("--kills", type=int, default=3, help="timed kills per component, variant and condition (default 3)")
    p.add_argument("--variants", default="none,all",
                   help="INTELBUS_STARTUP_TUNING values, separated by '/' or ',' between whole values when no "
                        "value has a comma (default none,all); e.g. 'none/restart/restart,kafka/all'")
    p.add_argument("--loaded-kills", type=int, default=2, help="timed kills in the loaded condition (default 2: "
                   "the machine is shared)")
    p.add_argument("--conditions", default="idle,loaded", help="idle, loaded or both (default idle,loaded)")
    p.add_argument("--hog", type=int, default=2, help="busy-loop processes for the loaded condition (default 2)")
    p.add_argument("--profile", default="single", choices=["single", "cluster"])
    p.add_argument("--stack-dir", default="/tmp/intelbus-recovery")
    p.add_argument("--port-base", type=int, default=PORT_BASE,
                   help=f"ports as bench/chaos.py's, base+180..base+650 (default {PORT_BASE}: {PORT_BASE + 180}-"
                        f"{PORT_BASE + 650}, above the ephemeral range and beside the others of docs/deploy.md's port map)")
    p.add_argument("--reuse", action="store_true", help="use a stack already up with these settings")
    p.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    p.add_argument("--name", default="recovery", help="results: bench/results/<name>.json and .md")
    return p.parse_args(argv)


def variants_of(text: str) -> list[str]:
    return [v.strip() for v in (text.split("/") if "/" in text else text.split(",")) if v.strip()]


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # a background job of a non-interactive shell ignores SIGINT: stop on it and on SIGTERM alike,
    # through the finally blocks (the hogs stopped, the results written)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    env = chaos_env(args.stack_dir, args.port_base)
    os.environ.update({k: v for k, v in env.items() if k.startswith("INTELBUS_")})
    os.environ.pop("INTELBUS_STACK_PROFILE", None)
    if not args.reuse:
        extra = ("--infra-only", "--profile", args.profile)
        print(f"recovery: intelbus up {' '.join(extra)} in {args.stack_dir} ...", flush=True)
        up = intelbus(env, "up", *extra, timeout=1200)
        if up.returncode != 0:
            print(up.stdout[-3000:], up.stderr[-3000:], file=sys.stderr)
            return 2
    from ops.services import full_stack
    from ops.settings import load_settings

    settings = load_settings()
    stack = full_stack(settings, include_services=False, out=lambda m: None)
    by_name = {c.name: c for c in stack.components}
    names = [n.strip() for n in args.components.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"recovery: no component {', '.join(unknown)} here (have {', '.join(by_name)})", file=sys.stderr)
        return 2
    results = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "argv": " ".join(argv if argv is not None else sys.argv[1:]), "profile": args.profile,
               "port_base": args.port_base, "kills": args.kills, "loaded_kills": args.loaded_kills, "hogs": args.hog, "load_at_start": loadavg(),
               "recoveries": [], "warmups": []}
    log = lambda m: print(m, flush=True)  # noqa: E731
    variants = variants_of(args.variants)
    conditions = [x.strip() for x in args.conditions.split(",") if x.strip()]
    try:
        for name in names:
            c = by_name[name]
            for variant in variants:
                restart_supervisor(settings, variant)
                if needs_archive(c):  # the archive is written at a clean exit: stop and start it once
                    results["warmups"].append(clean_restart(stack, c, variant, log=log))
            # the variants in turn, kill after kill: the machine's other load falls on each alike
            for condition in conditions:
                for _ in range(args.loaded_kills if condition == "loaded" else args.kills):
                    for variant in variants:
                        # a fresh supervisor: each kill is a first crash (a second one within 60 s backs off)
                        restart_supervisor(settings, variant)
                        rec = kill_and_time(stack, c, variant, condition, hogs=args.hog if condition == "loaded" else 0,
                                            log=log)
                        results["recoveries"].append(asdict(rec))
                        wait_settled(stack, c)
    finally:
        os.environ.pop("INTELBUS_STARTUP_TUNING", None)
        if not args.keep:
            down = intelbus(env, "down", "--purge", timeout=600)
            print(f"recovery: intelbus down --purge: exit {down.returncode}", flush=True)
        elif results["recoveries"]:
            restart_supervisor(settings, "all")
        results["load_at_end"] = loadavg()
        results["summary"] = summarize([Recovery(**r) for r in results["recoveries"]])
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / f"{args.name}.md").write_text(markdown(results))
        print(f"recovery: results in {RESULTS / args.name}.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
