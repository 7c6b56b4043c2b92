import argparse

import pytest

from bench.bench_rate_cost import parse_variant, table


def test_a_variant_names_jobs_environment():
    assert parse_variant("fetch wait:") == ("fetch wait", {})
    assert parse_variant("none:INTELBUS_JOBS_FETCH_MIN_BYTES=1,INTELBUS_JOBS_FETCH_MAX_WAIT_MS=500") == (
        "none", {"INTELBUS_JOBS_FETCH_MIN_BYTES": "1", "INTELBUS_JOBS_FETCH_MAX_WAIT_MS": "500"})
    with pytest.raises(argparse.ArgumentTypeError, match="'INTELBUS_X' is not VAR=VALUE"):
        parse_variant("bad:INTELBUS_X")


def test_the_table_shows_each_run_s_cores_and_batches():
    row = {"round": 1, "variant": "fetch wait", "rate": 200.0, "cores": {"jobs-0": 0.44, "kafka": 0.35, "simulate": 0.05},
           "machine": {"busy": 0.61}, "stages": {"dedupe": {"batches_per_s": 61.0, "messages_per_batch": 3.3}}}
    text = table([row])
    assert "| 1 | fetch wait | 200 | **0.44** | 0.35 | - | - | - | - | 0.05 | 0.61 | 61.0, 3.3 | - | - |" in text
