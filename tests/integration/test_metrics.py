"""After a simulator run, every process's /metrics shows the bus working: non-zero values for
what the operators' dashboard and alert rules read (issue: metrics, dashboards, benchmark)."""
from __future__ import annotations

import socket
import uuid

from ops.lag import JOBS_TOPICS, SINK_TOPICS, wait_for_zero_lag
from producers.metrics import serve
from producers.simulate import run_simulation
from producers.simulator import SimConfig, Simulation
from tests.integration.scrape import scrape
from tests.integration.seeds import fresh_seed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_process_reports_non_zero_metrics_after_a_simulator_run(stack, settings):
    port = serve(free_port(), "simulate")  # what `intelbus simulate` does, in this process
    sim = Simulation(SimConfig(seed=fresh_seed(settings), count=4000, invalid_rate=0.01, duplicate_rate=0.05,
                               ref_prefix=f"M{uuid.uuid4().hex[:6]}-"))
    before = scrape(port)  # other tests in this process may have produced already
    report = run_simulation(sim, rate=0, settings=settings, phase_pause=0.2)
    assert report["undelivered"] == 0
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=300)

    producer = scrape(port)
    published = 'intelbus_producer_records_total{kind="incident",outcome="published"}'
    assert producer[published] - before.get(published, 0) > 0
    assert producer["intelbus_producer_rejected_total"] - before.get("intelbus_producer_rejected_total", 0) \
        == sim.truth.invalid > 0

    jobs = scrape(settings.metrics_port_base + 1)
    for name in ("intelbus_jobs_events_total", "intelbus_jobs_unique_events_total", "intelbus_jobs_duplicates_dropped_total",
                 "intelbus_jobs_hits_total", "intelbus_produce_to_hit_seconds_count", "intelbus_jobs_batch_seconds_count",
                 "intelbus_jobs_batch_size_count"):
        assert jobs.get(name, 0) > 0, name
    assert jobs["intelbus_service_ready"] == 1
    assert any(k.startswith('intelbus_consumer_lag_messages{group="intelbus-jobs"') for k in jobs)

    sink = scrape(settings.metrics_port_base + 20)
    for name in ("intelbus_sink_messages_total", "intelbus_sink_rows_inserted_total", "intelbus_sink_insert_seconds_count",
                 "intelbus_sink_batch_rows_count"):
        assert sink.get(name, 0) > 0, name
    assert sink["intelbus_sink_clickhouse_up"] == 1 and sink["intelbus_service_ready"] == 1
    assert any(k.startswith('intelbus_consumer_lag_messages{group="intelbus-sink"') for k in sink)


def test_a_bad_message_counts_as_a_dead_letter_by_stage(stack, settings):
    from confluent_kafka import Producer

    before = scrape(settings.metrics_port_base + 1).get('intelbus_dlq_writes_total{stage="DECODE"}', 0.0)
    p = Producer(settings.kafka_config("intelbus-admin"))
    p.produce("intel.incident", value=b"not avro at all", key=b"120119/x/garbage")
    assert p.flush(30) == 0
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=120)
    assert scrape(settings.metrics_port_base + 1)['intelbus_dlq_writes_total{stage="DECODE"}'] == before + 1
