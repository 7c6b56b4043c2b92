"""`intelbus up --profile cluster` on an isolated stack (own directory, ports 64xxx; the session's
`cluster_stack`, shared with test_chaos_short.py): three brokers, ZooKeeper, two ClickHouse replicas
and intelbus's services. One broker SIGKILLed mid-traffic: the simulator's ground truth exact and
no producer error, and the supervisor brings the broker back. One ClickHouse replica down: queries
answer from the other and the sink loses nothing.

In `make test` (after every other test, on the stack test_chaos_short.py used): 96-138 s of its
own (the broker kill with 10,000 records 39-65 s, the replica down 22-29 s, the supervisor's
restarts 34-43 s; two runs on 2026-11-30 at load 7-33); the stack's start (50-116 s, plus 26-33 s
for two archives) and `down` (35-41 s) are counted once for both modules (docs/deploy.md, "In the
suite": 7 min 44 s for both in the passing run).
INTELBUS_TEST_CLUSTER=0 leaves both out of a quick local run. Alone:
    .venv/bin/python -m pytest tests/integration/test_cluster_profile.py -s
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ops.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = int(os.environ.get("INTELBUS_TEST_CLUSTER_SIM_COUNT", "10000"))


@pytest.fixture
def cluster_env(cluster_stack):
    # ports 64xxx, above the kernel's ephemeral range (bench/chaos.py chaos_env: on 5xxxx a killed
    # broker's port was taken by a client's self-connect and its restart could not bind for minutes)
    return cluster_stack


def settle(settings, group: str, topics: list[str], timeout: float = 300.0) -> None:
    """ops.lag.wait_for_zero_lag, again after a probe that failed while a broker was away (its
    coordinator or a partition leader moved: NOT_COORDINATOR, a destroyed broker handle)."""
    from confluent_kafka import KafkaException

    from ops.lag import wait_for_zero_lag

    deadline = time.monotonic() + timeout
    while True:
        try:
            wait_for_zero_lag(settings, group, topics, timeout=max(1.0, deadline - time.monotonic()))
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def intelbus(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _settings(env):
    # no INTELBUS_STACK_PROFILE in env: the stack dir remembers what `up --profile` chose
    return load_settings(environ=env)


def _stack(env):
    from ops.services import full_stack

    return full_stack(_settings(env), out=lambda m: None)


def test_status_shows_every_node_and_the_topics_are_replicated(cluster_env):
    from confluent_kafka.admin import AdminClient, ConfigResource

    status = intelbus(cluster_env, "status", "--json")
    doc = json.loads(status.stdout)
    names = [c["name"] for c in doc["components"]]
    assert names[:7] == ["kafka-1", "kafka-2", "kafka-3", "registry", "zookeeper", "clickhouse-1", "clickhouse-2"]
    assert doc["healthy"] and status.returncode == 0, status.stdout
    settings = _settings(cluster_env)
    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    meta = admin.list_topics(timeout=15)
    assert sorted(meta.brokers) == [1, 2, 3]
    ours = [t for t in meta.topics if t.startswith("intel.")]
    assert ours and all(len(p.replicas) == 3 for t in ours for p in meta.topics[t].partitions.values())
    configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "intel.incident")])
    assert next(iter(configs.values())).result()["min.insync.replicas"].value == "2"


def test_a_broker_killed_mid_traffic_loses_nothing_and_comes_back(cluster_env):
    from ops.lag import JOBS_TOPICS, SINK_TOPICS
    from ops.verify import verify
    from producers.regional import RegionalProducer
    from producers.simulate import run_simulation, write_truth
    from producers.simulator import SimConfig, Simulation

    settings = _settings(cluster_env)
    stack = _stack(cluster_env)
    victim = stack.pids.read("kafka-2")
    assert victim is not None and victim.alive()
    sim = Simulation(SimConfig(seed=uuid.uuid4().int % 10**6, count=COUNT, ref_prefix=f"K{uuid.uuid4().hex[:6]}-"))
    producer = RegionalProducer(settings=settings)
    report, killed_at = {}, {}

    def traffic():
        report.update(run_simulation(sim, rate=2000, settings=settings, producer=producer, phase_pause=0.5,
                                     between_phases=lambda: settle(settings, "intelbus-jobs", JOBS_TOPICS)))

    worker = threading.Thread(target=traffic)
    started = time.monotonic()
    worker.start()
    time.sleep(4)  # into the traffic
    os.kill(victim.pid, signal.SIGKILL)
    killed_at["s"] = time.monotonic() - started
    worker.join()
    producer.flush(60)
    errors = list(producer.stats.errors)
    producer.close()
    truth = cluster_env["INTELBUS_STACK_DIR"] + f"/truth-{sim.cfg.seed}.jsonl"
    write_truth(truth, sim)
    settle(settings, "intelbus-jobs", JOBS_TOPICS)
    verdict = verify(settings, truth)
    print(json.dumps({"report": report, "killed_after_s": round(killed_at["s"], 1), "verdict": verdict.summary(),
                      "missing": verdict.missing[:5], "false_hits": verdict.false_hits[:5]}, default=str))
    assert report["undelivered"] == 0 and errors == [], errors[:5]
    assert sim.truth.hits and verdict.exact
    assert verdict.distinct_events == sim.truth.events and verdict.duplicates_dropped == sim.truth.duplicates

    # the supervisor started the broker again; it rejoins the cluster
    kafka2 = next(c for c in stack.components if c.name == "kafka-2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = stack.pids.read("kafka-2")
        if record is not None and record.pid != victim.pid and record.alive() and kafka2.healthy():
            break
        time.sleep(1)
    else:
        pytest.fail("kafka-2 did not come back within 120 s of the run's end")
    # and the history holds every distinct event once the sink caught up
    settle(settings, "intelbus-sink", SINK_TOPICS)
    assert _count_events(settings, sim.cfg.ref_prefix) == sim.truth.events


def _count_events(settings, prefix: str, user: str = "intelbus_reader") -> int:
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, user))
    try:
        _, rows = ex.query(f"SELECT uniqExact(event_id) FROM {ex.database}.events WHERE source_ref LIKE '{prefix}%'",
                           readonly=True)
        return rows[0][0]
    finally:
        ex.close()


def _replica_port(settings, index: int) -> int:
    """clickhouse-<index>'s native port (ops/cluster.py: the stack's ClickHouse port, then the next)."""
    from ops.cluster import clickhouse_replicas

    return next(r.tcp_port for r in clickhouse_replicas(settings) if r.index == index)


def _replica_rows(settings, port: int, prefix: str) -> int:
    from clickhouse_driver import Client

    from ops.secrets import clickhouse_password

    client = Client("127.0.0.1", port=port, user="default", password=clickhouse_password(settings, "default"))
    try:
        return client.execute(f"SELECT uniqExact(event_id) FROM intelbus.events_local WHERE source_ref LIKE '{prefix}%'")[0][0]
    finally:
        client.disconnect()


def test_one_clickhouse_replica_down_queries_answer_and_the_sink_loses_nothing(cluster_env):
    """clickhouse-1 is the replica every client names first: with it stopped, the sink writes to and
    the readers query clickhouse-2 (alt_hosts); once it is back it fetches what it missed."""
    from ops.lag import JOBS_TOPICS, SINK_TOPICS
    from producers.simulate import run_simulation
    from producers.simulator import SimConfig, Simulation

    settings = _settings(cluster_env)
    prefix = f"C{uuid.uuid4().hex[:6]}-"
    down = intelbus(cluster_env, "down", "clickhouse-1")  # on purpose: the supervisor leaves it down
    assert down.returncode == 0, down.stderr
    try:
        sim = Simulation(SimConfig(seed=uuid.uuid4().int % 10**6, count=5000, ref_prefix=prefix))
        report = run_simulation(sim, rate=2000, settings=settings, phase_pause=0.5)
        assert report["undelivered"] == 0
        settle(settings, "intelbus-jobs", JOBS_TOPICS)
        settle(settings, "intelbus-sink", SINK_TOPICS)
        assert _count_events(settings, prefix) == sim.truth.events  # answered by clickhouse-2 alone
        assert _replica_rows(settings, _replica_port(settings, 2), prefix) == sim.truth.events
    finally:
        up = intelbus(cluster_env, "up", timeout=600)
        assert up.returncode == 0, up.stderr[-2000:] + up.stdout[-2000:]
    deadline = time.monotonic() + 60
    while _replica_rows(settings, _replica_port(settings, 1), prefix) != sim.truth.events:
        assert time.monotonic() < deadline, "clickhouse-1 did not fetch what it missed within 60 s"
        time.sleep(1)


def test_the_supervisor_brings_back_a_killed_clickhouse_replica_and_zookeeper(cluster_env):
    stack = _stack(cluster_env)
    by_name = {c.name: c for c in stack.components}
    back = {}
    for name in ("zookeeper", "clickhouse-2"):  # one at a time, as crashes come
        record = stack.pids.read(name)
        assert record is not None and record.alive(), name
        os.kill(record.pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < 120:
            now = stack.pids.read(name)
            if now is not None and now.pid != record.pid and now.alive() and by_name[name].healthy():
                back[name] = round(time.monotonic() - killed, 1)
                break
            time.sleep(0.5)
        assert name in back, f"{name} did not come back within 120 s"
    print("seconds from SIGKILL to healthy:", back)
    # the replica takes part again: a row written through clickhouse-1 reaches it
    settings = _settings(cluster_env)
    from clickhouse_driver import Client

    from ops.secrets import clickhouse_password

    from clickhouse_driver.errors import ServerException

    tag = uuid.uuid4().hex[:8]
    first = Client("127.0.0.1", port=_replica_port(settings, 1), user="default", password=clickhouse_password(settings, "default"))
    # clickhouse-1's replicated tables are read-only until it has a ZooKeeper session again (ZooKeeper
    # was killed: its session expired; the replica starts a new one within seconds): the sink waits too
    deadline, writable_after = time.monotonic() + 60, time.monotonic()
    while True:
        try:
            first.execute("INSERT INTO intelbus.dead_letters (dlq_id, stage, failed_at, failed_ms, ingested_ms) VALUES",
                          [(f"sup-{tag}", "TEST", datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), 0, 0)])
            break
        except ServerException as exc:
            assert exc.code == 242 and time.monotonic() < deadline, f"clickhouse-1 still refuses inserts: {exc.message[:200]}"
            time.sleep(1)
    print(f"clickhouse-1 took inserts again {time.monotonic() - writable_after:.1f}s after both were back")
    first.disconnect()
    second = Client("127.0.0.1", port=_replica_port(settings, 2), user="default", password=clickhouse_password(settings, "default"))
    deadline = time.monotonic() + 60
    while second.execute(f"SELECT count() FROM intelbus.dead_letters_local WHERE dlq_id = 'sup-{tag}'") != [(1,)]:
        assert time.monotonic() < deadline, "clickhouse-2 did not fetch a new part within 60 s of its restart"
        time.sleep(1)
    second.disconnect()
