"""The benchmarks' pure helpers, and the trail generator's SQL on chDB (a current ClickHouse)."""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

# `bench` is not an installed package: `python -m pytest` finds it from the repo root, bare `pytest` needs this
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.bench_sink import AsTopic  # noqa: E402
from bench.bench_trail import (  # noqa: E402
    chunks, database_url, events_insert_sql, latency_summary, percentile, region_codes, subjects_insert_sql)


def test_percentile_interpolates_between_ranks():
    assert percentile([5], 0.5) == 5
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([4, 1, 3, 2], 0.0) == 1 and percentile([4, 1, 3, 2], 1.0) == 4
    assert percentile(range(1, 101), 0.95) == pytest.approx(95.05)
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1], 1.5)


def test_latency_summary():
    assert latency_summary([10.0, 30.0, 20.0]) == {"p50_ms": 20.0, "p95_ms": 29.0, "max_ms": 30.0, "mean_ms": 20.0}


def test_chunks_cover_every_event_once():
    assert chunks(2_500_000, 1_000_000) == [(0, 1_000_000), (1_000_000, 1_000_000), (2_000_000, 500_000)]
    assert chunks(0) == []


def test_database_url_keeps_host_and_user():
    assert database_url("clickhouse://default@127.0.0.1:9000/intelbus", "intelbus_bench") == \
        "clickhouse://default@127.0.0.1:9000/intelbus_bench"


def test_as_topic_renames_only_the_topic():
    class Msg:
        def topic(self): return "bench.sink.incident.1"
        def partition(self): return 3
        def offset(self): return 7
        def value(self): return b"v"
        def key(self): return b"k"
        def error(self): return None

    m = AsTopic(Msg(), "intel.incident.unique")
    assert (m.topic(), m.partition(), m.offset(), m.value(), m.key(), m.error()) == \
        ("intel.incident.unique", 3, 7, b"v", b"k", None)


def test_trail_generator_on_chdb(tmp_path):
    """Generated identifiers survive the real normaliser, events and subjects agree, and `trail` finds them."""
    pytest.importorskip("chdb")
    from schemas.normalise import normalise_identifier
    from schemas.regions import load_regions
    from gateway.history import UNSCOPED, identifier_forms, in_database
    from sinks.engine import ChdbExecutor
    from sinks.migrate import apply_migrations
    from sinks.queries import load_queries

    ex = ChdbExecutor(str(tmp_path), database="trail_gen")
    try:
        apply_migrations(ex)
        regions = region_codes()
        n = 3000
        for lo, count in chunks(n, 1000):
            ex.execute(events_insert_sql("trail_gen", lo, count, n, regions))
            ex.execute(subjects_insert_sql("trail_gen", lo, count, n, regions))
        _, [(events, identifiers)] = ex.query("SELECT count(), sum(length(identifiers)) FROM trail_gen.events")
        _, subjects = ex.query("SELECT id_value, id_kind, event_id FROM trail_gen.event_subjects")
        assert int(events) == n and int(identifiers) == len(subjects)
        assert 1.3 * n < len(subjects) < 1.7 * n
        kinds = Counter(kind for _, kind, _ in subjects)
        assert set(kinds) == {"RESIDENT_ID", "PLATE", "PHONE"} and kinds["RESIDENT_ID"] > kinds["PLATE"] + kinds["PHONE"]
        for value, kind, _ in subjects:
            assert normalise_identifier(kind, value) == value
            assert identifier_forms(value) == [value]
        value, _, event_id = subjects[0]
        sql = in_database(load_queries()["trail"].render({"id": value, "ids": identifier_forms(value)}, UNSCOPED),
                          "trail_gen")
        _, rows = ex.query(sql)
        assert event_id in {r[-1] for r in rows}
    finally:
        ex.close()


def test_stalls_groups_slow_hits_by_second_with_the_cpu_around_them():
    from bench.bench_e2e import stalls

    started = 1000.0
    reported = {"a": 1003.2, "b": 1003.7, "c": 1010.1, "d": 1003.5}
    latencies = {"a": 0.9, "b": 0.6, "c": 0.2, "d": 0.1}  # c and d were fast
    series = [{"t": 1000.0 + i, "cpu_s": {"kafka": 0.5 * i, "clickhouse": 2.0 * i if i >= 3 else 0.0}} for i in range(12)]
    out = stalls(reported, latencies, series, started)
    assert out == [{"t": 3, "slow_hits": 2, "worst_s": 0.9, "cpu_cores": {"kafka": 0.5, "clickhouse": 3.33}}]  # seconds 2 to 5: 10 s of CPU in 3
    assert stalls(reported, {k: 0.1 for k in latencies}, series, started) == []


def test_gc_pause_delta_per_generation_counts_the_slow_collections(monkeypatch):
    import bench.bench_e2e as e2e

    def page(count0, slow0, count2, slow2):
        return "\n".join([
            "# HELP intelbus_gc_pause_seconds pauses",
            f'intelbus_gc_pause_seconds_bucket{{generation="0",le="0.05"}} {count0 - slow0}',
            f'intelbus_gc_pause_seconds_bucket{{generation="0",le="0.1"}} {count0 - slow0}',
            f'intelbus_gc_pause_seconds_bucket{{generation="0",le="+Inf"}} {count0}',
            f'intelbus_gc_pause_seconds_count{{generation="0"}} {count0}',
            f'intelbus_gc_pause_seconds_sum{{generation="0"}} {count0 * 0.01}',
            f'intelbus_gc_pause_seconds_bucket{{generation="2",le="0.1"}} {count2 - slow2}',
            f'intelbus_gc_pause_seconds_count{{generation="2"}} {count2}',
            f'intelbus_gc_pause_seconds_sum{{generation="2"}} {count2 * 0.5}',
            "intelbus_jobs_events_total 5",
        ]).encode()

    pages = iter([page(100, 1, 2, 1), page(160, 3, 3, 2)])

    class Response:
        def __init__(self, body):
            self.body = body

        def read(self):
            return self.body

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response(next(pages)))
    before, after = e2e.gc_pauses(9401), e2e.gc_pauses(9401)
    assert after["2"] == {"count": 3.0, "seconds": 1.5, "over_0.1s": 2.0}
    assert e2e._gc_delta(before, after) == {"0": {"count": 60.0, "seconds": 0.6, "over_0.1s": 2.0},
                                            "2": {"count": 1.0, "seconds": 0.5, "over_0.1s": 1.0}}


def test_worker_threads_splits_py_spy_samples_by_thread_and_innermost_package():
    from bench.bench_worker_threads import parse_raw

    raw = "\n".join([
        "thread (100): MainThread;run_worker (stream_jobs/worker.py:106);Agent._execute_actor (faust/agents/agent.py:698);"
        "MatchStage._apply (stream_jobs/stages.py:381);dumps (stream_jobs/state.py:88) 7",
        "thread (100): MainThread;run_worker (stream_jobs/worker.py:106);select (selectors.py:468) 2",
        "thread (101): Thread-2;run (threading.py:982);_fetch (aiokafka/consumer/fetcher.py:100) 5",
        "not a sample line",
    ])
    got = parse_raw(raw)
    assert dict(got["thread (100): MainThread"]) == {"stream_jobs": 7, "selectors": 2}
    assert dict(got["thread (101): Thread-2"]) == {"aiokafka": 5}


def test_proc_reads_this_process_and_the_machine_and_none_for_a_process_gone():
    import subprocess

    from bench.proc import cpu_seconds, machine_shares, machine_times

    start = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # some CPU of our own
    assert cpu_seconds(os.getpid()) > start
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu_seconds(gone.pid) is None
    before = machine_times()
    busy, stolen, total = before
    assert 0 <= busy <= total and 0 <= stolen <= total
    shares = machine_shares(before, machine_times())
    assert set(shares) == {"busy", "stolen"} and 0 <= shares["busy"] <= 1


def test_the_fan_out_bench_reruns_itself_without_its_bench_nice_option():
    from bench.bench_fanout import markdown, without_bench_nice

    assert without_bench_nice(["--clients", "200", "--bench-nice", "-10", "--seconds", "60"]) == \
        ["--clients", "200", "--seconds", "60"]
    assert without_bench_nice(["--bench-nice=-10", "--rate", "2000"]) == ["--rate", "2000"]
    assert without_bench_nice(["--gateway-nice", "0", "-10"]) == ["--gateway-nice", "0", "-10"]
    report = {"at": "2026-12-02T06:06:33Z", "cpus": 2, "argv": "--clients 200", "runs": []}
    assert "the bench at nice" not in markdown(report).splitlines()[0]
    assert ", the bench at nice -10;" in markdown({**report, "bench_nice": -10}).splitlines()[0]
