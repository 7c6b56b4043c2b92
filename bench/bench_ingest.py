"""Ingest over HTTP against publishing straight to Kafka (issue "The console", item 2), in one run.

The same file of N incidents (generated as bench_producer does, with source_refs unique to the
run: `BI<run>-<round>-<n>`) published two ways:
  (k) `intelbus publish --via kafka` as a subprocess: the baseline (validate, sign with the local
      key, produce as the Kafka principal `local`, flush);
  (g) `intelbus publish --via gateway` as a subprocess against a gateway process of this checkout
      on a free port: NDJSON batches of 500 to POST /api/v1/events/incident, each answered after
      Kafka acknowledged it (validate, sign with the system's key, produce, dead letters).
Both act as `bench-integrator` (bench.logins), whose key for the gateway path is created once in
the key store (`intelbus keys create bench-integrator`), and both write intel.incident, the real
input topic (the ingest endpoint takes no topic from its callers): the records are harmless
(generated people, unique refs, no wanted records or watches), and a round's second path sends the
same event ids again, which the jobs drop as duplicates. The paths alternate over rounds (k, g,
then g, k, ...) and each path's rate is its records over its summed seconds, so the machine's
noise (the stack shares its cores) falls on both; a warm-up of 2,000 records per path comes first
and is not counted. Target: (g)/(k) >= 0.5.

Run: `python -m bench.bench_ingest [--records 20000] [--rounds 4]`; results in
bench/results/ingest.{json,md}. It starts and stops its own gateway; the stack must be up.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.5


class OwnGateway:
    """`intelbus gateway --port N` of this checkout, started and stopped by the benchmark."""

    def __init__(self, settings, log_path: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings, self.log_path, self.proc = settings, log_path, None

    def __enter__(self):
        env = {**os.environ, "INTELBUS_GATEWAY_URL": self.url}
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "ops.cli", "gateway", "--port", str(self.port)],
                                     env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     cwd=str(self.settings.stack_path))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except Exception:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"gateway not ready within 60 s: see {self.log_path}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def ensure_key(settings, system: str, regions) -> str:
    from identity.keys import KeyStore, keys_path

    with KeyStore(keys_path(settings)) as store:
        active = store.active(system)
        key = active[0] if active else store.create(system, sorted(regions), actor="bench")
    return key.key_id


def write_file(path: Path, records, run_id: str, round_no: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, record in enumerate(records):
            f.write(json.dumps(dict(record, source_ref=f"BI{run_id}-{round_no}-{i}"), ensure_ascii=False) + "\n")


def publish(path: Path, via: str, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--via", via, "--kind", "incident",
                           "--metrics-port", "0", str(path)], capture_output=True, text=True, timeout=1800, env=env)
    seconds = time.perf_counter() - started
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0:
        raise RuntimeError(f"intelbus publish --via {via} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return seconds, summary


def run(settings, n: int, rounds: int, workdir: Path) -> dict:
    from bench.bench_producer import incidents
    from bench.logins import INTEGRATOR, covering_provinces, integrator_env

    records = incidents(n)
    regions = {r["source_region"] for r in records}
    env = integrator_env(settings, regions, workdir / "logins")
    key_id = ensure_key(settings, INTEGRATOR, covering_provinces(regions))
    token = json.loads(Path(env["INTELBUS_CREDENTIALS"]).read_text())["token"]
    run_id = uuid.uuid4().hex[:6]
    seconds = {"kafka": 0.0, "gateway": 0.0}
    rounds_out = []
    with OwnGateway(settings, workdir / "gateway.log") as gateway:
        gw_env = {**env, "INTELBUS_GATEWAY_URL": gateway.url, "INTELBUS_TOKEN": token}
        time.sleep(1.5)  # the jobs read the key store again within a second
        warm = workdir / "warm-up.jsonl"  # not counted: imports, connections, the registry's schema ids
        write_file(warm, records[: min(n, 2000)], run_id, -1)
        for via in ("kafka", "gateway"):
            publish(warm, via, env if via == "kafka" else gw_env)
        for r in range(rounds):
            path = workdir / f"incidents-{r}.jsonl"
            write_file(path, records, run_id, r)
            order = ("kafka", "gateway") if r % 2 == 0 else ("gateway", "kafka")
            this = {}
            for via in order:
                took, summary = publish(path, via, env if via == "kafka" else gw_env)
                seconds[via] += took
                this[via] = {"seconds": round(took, 2), "per_s": round(n / took), "summary": summary}
            rounds_out.append(this)
    kafka_rate, gateway_rate = n * rounds / seconds["kafka"], n * rounds / seconds["gateway"]
    return {"records": n, "rounds": rounds, "batch_lines": 500, "gateway_key": key_id,
            "k_publish_via_kafka_per_s": round(kafka_rate), "g_publish_via_gateway_per_s": round(gateway_rate),
            "g_over_k": round(gateway_rate / kafka_rate, 3), "target": TARGET, "rounds_detail": rounds_out}


def table(result: dict) -> str:
    n = result["records"]
    return "\n".join([
        "| benchmark | figure | baseline | ratio |", "|---|---|---|---|",
        f"| ingest: (k) `intelbus publish --via kafka`, {n:,} incidents × {result['rounds']} rounds | "
        f"{result['k_publish_via_kafka_per_s']:,} records/s | baseline | |",
        f"| ingest: (g) `intelbus publish --via gateway`: POST /api/v1/events/incident in NDJSON batches of 500, "
        f"each answered after Kafka's acknowledgement, same file, same run, alternating | "
        f"{result['g_publish_via_gateway_per_s']:,} records/s | (k) | {result['g_over_k']:.2f} (target ≥ {TARGET}) |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description="ingest over HTTP against intelbus publish straight to Kafka")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    from bench.run import machine
    from ops.settings import load_settings

    settings = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": machine(), **run(settings, args.records, args.rounds, Path(tmp))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    m = result["machine"]
    text = (f"# intelbus benchmark: ingest over HTTP\n\n{m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
            f"commit {m['commit']}, {m['at']}\n\n{table(result)}\n")
    (RESULTS / "ingest.md").write_text(text)
    print(text)
    return 0 if result["g_over_k"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
