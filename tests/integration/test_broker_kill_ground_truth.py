"""The broker SIGKILLed in the middle of traffic, kept down for 20 s, then started again (issue 17
item 4): the simulator's ground truth exact with the jobs' default (batch) consumer loop. Every
expected hit once, no false or doubled hit, every distinct event and dropped duplicate, and no
record the simulator could not deliver. A user would notice a hit lost or doubled by the outage.

The shared stack's broker serves other people, so this runs on a private single-broker stack of
its own (its own directory, ports 61xxx: above the kernel's ephemeral range, bench/chaos.py
chaos_env): `intelbus up --infra-only` (Kafka, registry, ClickHouse), then jobs-0 only (no sink,
gateway or workflows: the truth is read on Kafka). The stack's supervisor runs as with `up`, so a
jobs worker that dies during the outage is brought back; the broker is kept out of its hands by
removing its pid file before the SIGKILL (as `intelbus down kafka` does before its SIGTERM), so the
outage lasts the 20 s asked for, and `intelbus up --infra-only` starts it again, as an operator
would.

First run (2026-11-30, the 2-core machine at a load average of 4-10 from other sessions): 3 min
24 s in all, the private stack and jobs-0 up in 48 s; 20,000 records, the broker killed 22.2 s
into the traffic, started again 20.0 s later and serving 17 s after that; 658/658 hits, 19,361
distinct events, 594 duplicates dropped, no producer error, jobs-0 never restarted. Second run:
2 min 10 s, 729/729 hits, 19,360 distinct events, 605 duplicates dropped. So it runs in
`make test` (no flag): INTELBUS_TEST_BROKER_KILL_COUNT / _RATE make it longer.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from bench.chaos import chaos_env, settings_of
from tests.integration.test_ground_truth import assert_exact

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT_BASE = 61000  # 61180-61650, this test's alone (docs/deploy.md, "Ports of the isolated stacks")
DOWN_S = float(os.environ.get("INTELBUS_TEST_BROKER_DOWN_S", "20"))  # longer: the commit watchdog fires during the outage
COUNT = int(os.environ.get("INTELBUS_TEST_BROKER_KILL_COUNT", "20000"))
RATE = float(os.environ.get("INTELBUS_TEST_BROKER_KILL_RATE", "300"))
REPO = Path(__file__).resolve().parents[2]

START_JOBS_0 = """
from ops.services import services
from ops.settings import load_settings
from ops.stack import Stack
settings = load_settings()
Stack(settings, [c for c in services(settings) if c.name == "jobs-0"], out=print).up()
"""


def run(env: dict, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command in the private stack's environment (its children inherit that environment)."""
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO))


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory):
    env = chaos_env(str(tmp_path_factory.mktemp("broker-kill")), port_base=PORT_BASE)
    env["INTELBUS_STACK_PROFILE"] = "single"
    env.pop("INTELBUS_JOBS_CONSUMER_LOOP", None)  # the default loop: what `intelbus up` runs
    env.pop("INTELBUS_JOBS_WORKERS", None)
    started = time.monotonic()
    try:
        up = run(env, "-m", "ops.cli", "up", "--infra-only", timeout=900)
        if up.returncode != 0:
            # Seen 2026-11-30 with the JVMs' class-data-sharing dump (ops/components.py, `cds`): the
            # registry's JVM died of SIGSEGV in `jcmd VM.cds dynamic_dump` on a fresh stack's first
            # start; the second `up` started it from the archive. Not this test's subject: said, retried.
            print(f"\nfirst `up` failed, once more:\n{up.stdout[-1500:]}{up.stderr[-1500:]}", flush=True)
            up = run(env, "-m", "ops.cli", "up", "--infra-only", timeout=900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        jobs = run(env, "-c", START_JOBS_0, timeout=900)
        assert jobs.returncode == 0, jobs.stdout[-3000:] + jobs.stderr[-3000:]
        print(f"\nprivate single-broker stack and jobs-0 up in {time.monotonic() - started:.0f} s", flush=True)
        yield env
    finally:
        # the purge removes the stack's logs: a copy stays with pytest's temporary directories (the
        # last three runs), for a failure seen once to be read afterwards (2026-11-30: jobs' lag stuck)
        logs = Path(env["INTELBUS_STACK_DIR"]) / "logs"
        if logs.exists():
            kept = tmp_path_factory.mktemp("broker-kill-logs")
            shutil.copytree(logs, kept, dirs_exist_ok=True)
            print(f"the private stack's logs: {kept}")
        down = run(env, "-m", "ops.cli", "down", "--purge", timeout=300)
        print(down.stdout[-1500:], down.stderr[-1500:])


def settle(settings, timeout: float = 300.0) -> None:
    """Zero lag for the jobs, again after a probe that failed while the broker was away."""
    from confluent_kafka import KafkaException

    from ops.lag import JOBS_TOPICS, wait_for_zero_lag

    deadline = time.monotonic() + timeout
    while True:
        try:
            wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=max(1.0, deadline - time.monotonic()))
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def jobs_loops(stack_dir: str) -> list[str]:
    import re

    try:
        return re.findall(r"consumer_loop=(\w+)", (Path(stack_dir) / "logs" / "jobs-0.log").read_text(errors="replace"))
    except OSError:
        return []


def test_broker_killed_for_20_s_mid_traffic_and_restarted_gives_the_ground_truth(private_stack, tmp_path):
    from ops.stack import Stack
    from ops.verify import verify
    from producers.regional import RegionalProducer
    from producers.simulate import run_simulation, write_truth
    from producers.simulator import SimConfig, Simulation

    env = private_stack
    settings = settings_of(env)
    pids = Stack(settings, []).pids
    kafka_port = int(settings.kafka.split(",")[0].rsplit(":", 1)[1])
    sim = Simulation(SimConfig(seed=uuid.uuid4().int % 10**6, count=COUNT, ref_prefix=f"B{uuid.uuid4().hex[:6]}-"))
    producer = RegionalProducer(settings=settings)
    report, moments = {}, {}

    def traffic():
        report.update(run_simulation(sim, rate=RATE, settings=settings, producer=producer, phase_pause=0.5,
                                     between_phases=lambda: settle(settings)))

    worker = threading.Thread(target=traffic)
    started = time.monotonic()
    worker.start()
    time.sleep(COUNT / RATE / 3)  # about a third into the traffic
    with pids.lock("kafka"):
        victim = pids.read("kafka")
        assert victim is not None and victim.alive()
        pids.remove("kafka")  # the supervisor leaves a component without a pid file alone
        os.kill(victim.pid, signal.SIGKILL)
    moments["killed_s"] = time.monotonic() - started
    deadline = time.monotonic() + 10
    while port_open(kafka_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(kafka_port), "the broker still answers after its SIGKILL"
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - started - moments["killed_s"])))
    moments["restart_s"] = time.monotonic() - started
    up = run(env, "-m", "ops.cli", "up", "--infra-only", timeout=600)
    moments["broker_back_s"] = time.monotonic() - started
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert pids.read("kafka").pid != victim.pid
    worker.join()
    moments["traffic_done_s"] = time.monotonic() - started
    producer.flush(60)
    errors = list(producer.stats.errors)
    producer.close()
    truth = tmp_path / f"truth-{sim.cfg.seed}.jsonl"
    write_truth(str(truth), sim)
    settle(settings)
    verdict = verify(settings, str(truth))
    moments["verified_s"] = time.monotonic() - started
    loops = jobs_loops(env["INTELBUS_STACK_DIR"])
    assert_exact(verdict, sim, report=report, moments={k: round(v, 1) for k, v in moments.items()},
                 jobs_0_started_with=loops, producer_errors=errors[:5])
    assert loops and set(loops) == {"batch"}  # every jobs-0 of the run, restarts included, ran the default loop
    assert report["undelivered"] == 0 and errors == [], errors[:5]
