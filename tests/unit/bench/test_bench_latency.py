"""bench/bench_latency.py's summary: each run next to its raw-client baseline of the same seconds."""
from bench.bench_latency import percentile, table


def run(p50, p99, probe_p99):
    return {"rate": 1000.0, "achieved_publish_rate": 998.5, "hits": 120, "p50_ms": p50, "p99_ms": p99, "max_ms": 300.0,
            "probe": {"probes": 3000, "p50_ms": 2.0, "p99_ms": probe_p99}, "cpu_cores_used": {"jobs-0": 0.41}}


def test_each_run_is_a_row_with_its_ratio_to_four_hops_of_the_raw_client():
    lines = table([run(30.0, 80.0, 10.0), run(35.0, 96.0, 0.0)])
    assert lines[2] == "| 1 | 1000 (998.5) | 120 | 30.0 / 80.0 / 300.0 ms | 2.0 / 10.0 ms | 2.0 | 0.41 | None / None |"
    assert "| 2 | 1000 (998.5) | 120 | 35.0 / 96.0 / 300.0 ms | 2.0 / 0.0 ms | None |" in lines[3]  # no probe: no ratio


def test_percentile_is_a_value_of_the_sample():
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([3.0, 1.0, 2.0], 0.99) == 3.0


def test_a_hop_inside_the_worker_is_the_mean_of_its_metrics_over_the_run_beside_a_plain_consumer():
    from bench.bench_latency import split_table, waits_between

    before = {("dedupe", "fetched"): (1.0, 100.0), ("dedupe", "process"): (0.5, 100.0), ("hits", "queued"): (0.2, 10.0)}
    after = {("dedupe", "fetched"): (4.0, 200.0), ("dedupe", "process"): (0.7, 150.0), ("hits", "queued"): (0.2, 10.0),
             ("match", "fetched"): (0.5, 25.0)}
    inside = waits_between(before, after)
    # 3 s over 100 fetches; 0.2 s over 50 batches; hits: no batch in the run, no figure; match: new in the run
    assert inside == {"dedupe fetched": 30.0, "dedupe process": 4.0, "match fetched": 20.0}
    row = split_table([{"hops": {"plain consumer": {"p50_ms": 11.0, "mean_ms": 15.1}, "inside jobs-0 (mean ms)": inside}}])
    assert row[2] == "| 1 | 11.0 / 15.1 ms | 30.0 / None / 4.0 ms | 20.0 / None / None ms | None / None / None ms |"


def test_the_machines_share_of_stolen_time_is_read_apart_from_its_busy_time():
    from bench.proc import machine_shares

    # ticks: (busy, stolen, all): 600 busy and 300 stolen of 2,000
    assert machine_shares((1000, 100, 10_000), (1600, 400, 12_000)) == {"busy": 0.3, "stolen": 0.15}
