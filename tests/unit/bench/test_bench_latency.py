"""bench/bench_latency.py's summary: each run next to its raw-client baseline of the same seconds."""
from bench.bench_latency import percentile, table


def run(p50, p99, probe_p99):
    return {"rate": 1000.0, "achieved_publish_rate": 998.5, "hits": 120, "p50_ms": p50, "p99_ms": p99, "max_ms": 300.0,
            "probe": {"probes": 3000, "p50_ms": 2.0, "p99_ms": probe_p99}, "cpu_cores_used": {"jobs-0": 0.41}}


def test_each_run_is_a_row_with_its_ratio_to_four_hops_of_the_raw_client():
    lines = table([run(30.0, 80.0, 10.0), run(35.0, 96.0, 0.0)])
    assert lines[2] == "| 1 | 1000 (998.5) | 120 | 30.0 / 80.0 / 300.0 ms | 2.0 / 10.0 ms | 2.0 | 0.41 |"
    assert "| 2 | 1000 (998.5) | 120 | 35.0 / 96.0 / 300.0 ms | 2.0 / 0.0 ms | None |" in lines[3]  # no probe: no ratio


def test_percentile_is_a_value_of_the_sample():
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([3.0, 1.0, 2.0], 0.99) == 3.0
