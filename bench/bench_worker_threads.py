"""Where a stream-jobs worker spends its CPU, thread by thread (issue 17, "Measure first").

Two measurements of the same running worker over the same window:

- the kernel's account: each thread's user+system CPU from /proc/<pid>/task/<tid>/stat (C
  threads included: librdkafka's producer threads, RocksDB's), by thread name;
- py-spy's: `py-spy record --threads --gil --format raw`, every sample of a Python thread holding
  the GIL, split by thread (the event loop: MainThread; aiokafka's consumer: the thread faust
  starts for it) and, within a thread, by the package of the innermost intelbus/faust/mode/
  aiokafka/confluent_kafka/fastavro frame.

Run it against the stack's worker while traffic flows (`intelbus simulate --rate R` in another
shell), e.g.

    python -m bench.bench_worker_threads --seconds 30            # the pid of jobs-0 from its pid file
    python -m bench.bench_worker_threads --pid 1234 --seconds 30

The result is printed as a Markdown table and appended to bench/results/worker-threads.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = ("stream_jobs", "schemas", "faust", "mode", "aiokafka", "kafka", "confluent_kafka", "fastavro",
            "rocksdict", "asyncio", "uvloop", "concurrent", "threading", "selectors", "orjson")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds so far)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except (OSError, IndexError, ValueError):
            continue
    return out


def package_of(frames: list[str]) -> str:
    """The package of the innermost frame we can name ('other' when none)."""
    for frame in reversed(frames):
        m = re.search(r"\(([^)]*?)(?::\d+)?\)$", frame)
        path = m.group(1) if m else frame
        for pkg in PACKAGES:
            if f"/{pkg}/" in path or path.startswith(f"{pkg}/") or f"{pkg}.py" in path:
                return pkg
    return "other"


def parse_raw(text: str) -> dict[str, collections.Counter]:
    """py-spy raw (collapsed) lines, 'thread (0xTID);frame;...;frame N' -> thread -> package -> samples."""
    by_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        if thread.startswith("process") and len(frames) > 1 and frames[1].startswith("thread"):
            thread = frames[1]
        by_thread[thread][package_of(frames[1:])] += int(count)
    return by_thread


def jobs_pid() -> int:
    from ops.processes import PidFiles
    from ops.settings import load_settings

    record = PidFiles(load_settings().stack_path / "run").read("jobs-0")
    if record is None or not record.alive():
        raise SystemExit("no running jobs-0 (intelbus up), and no --pid given")
    return record.pid


def events_total(port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("intelbus_jobs_events_total{"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, help="the worker's pid (default: jobs-0 of the local stack)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--metrics-port", type=int, default=9401, help="the worker's metrics port (events/s)")
    p.add_argument("--results", default="bench/results/worker-threads.md")
    args = p.parse_args(argv)
    pid = args.pid or jobs_pid()

    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        raw_path = f.name
    try:
        ev0 = events_total(args.metrics_port)
    except OSError:
        ev0 = None
    before, t0 = thread_cpu(pid), time.monotonic()
    spy = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--threads",
                          "--gil", "--format", "raw", "--rate", str(args.rate), "--duration", str(int(args.seconds)),
                          "--nonblocking", "--output", raw_path], capture_output=True, text=True)
    after, elapsed = thread_cpu(pid), time.monotonic() - t0
    ev1 = events_total(args.metrics_port) if ev0 is not None else None
    if spy.returncode != 0:
        print(spy.stderr, file=sys.stderr)
        return 1
    samples = parse_raw(Path(raw_path).read_text())
    os.unlink(raw_path)

    by_name: dict[str, float] = collections.Counter()
    for tid, (name, cpu) in after.items():
        # Python 3.11 does not name its threads for the kernel: they all show the process's name
        label = "main thread (event loop)" if tid == pid else (f"python thread {tid}" if name.startswith("python") else name)
        by_name[label] += cpu - before.get(tid, (name, 0.0))[1]
    total_cpu = sum(by_name.values())
    rate = (ev1 - ev0) / elapsed if ev1 is not None else None
    load = os.getloadavg()[0]

    lines = [f"## Run of {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} (pid {pid}, {elapsed:.0f} s, "
             f"load 1m {load:.1f}, worker {total_cpu / elapsed:.2f} cores"
             + (f", {rate:,.0f} input events/s" if rate is not None else "") + ")", "",
             "Kernel's account, CPU by thread name (C threads included):", "",
             "| thread | cores | share |", "|---|---|---|"]
    for name, cpu in sorted(by_name.items(), key=lambda kv: -kv[1]):
        if cpu > 0:
            lines.append(f"| {name} | {cpu / elapsed:.3f} | {cpu / total_cpu:.0%} |")
    all_samples = sum(sum(c.values()) for c in samples.values())
    lines += ["", "py-spy, samples holding the GIL, by Python thread and innermost package:", "",
              "| thread | share of GIL samples | top packages |", "|---|---|---|"]
    for thread, counter in sorted(samples.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counter.values())
        top = ", ".join(f"{pkg} {c / n:.0%}" for pkg, c in counter.most_common(6))
        lines.append(f"| {thread} | {n / all_samples:.0%} ({n}) | {top} |")
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    header = "" if results.exists() else "# Stream-jobs worker: CPU by thread (bench/bench_worker_threads.py)\n\n"
    with results.open("a", encoding="utf-8") as out:
        out.write(header + text + "\n")
    with results.with_suffix(".json").open("a", encoding="utf-8") as out:
        out.write(json.dumps({"pid": pid, "seconds": elapsed, "load": load, "events_per_s": rate,
                              "threads_cores": {k: v / elapsed for k, v in by_name.items() if v > 0},
                              "gil_samples": {k: dict(v) for k, v in samples.items()}}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
