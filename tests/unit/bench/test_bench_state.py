"""The soak's verdict arithmetic (bench/bench_state.py)."""
from __future__ import annotations

import pytest

from bench.bench_state import slope_per_100k, verdicts


def test_the_slope_is_per_hundred_thousand_events():
    xs = [0, 10_000, 20_000, 30_000]
    assert slope_per_100k(xs, [5 + x / 2 for x in xs]) == pytest.approx(50_000)
    assert slope_per_100k(xs, [7, 7, 7, 7]) == 0
    assert slope_per_100k(xs[:2], [1, 2]) is None  # too few points to say


def test_the_verdict_leaves_the_warm_up_out():
    rows = [{"events": e, "records": min(e, 1000), "index": 0, "hits-seen": 0, "rss": 1.0} for e in range(0, 5000, 250)]
    v = verdicts(rows, skip_events=1000)
    assert v["records"] == {"slope_per_100k": 0, "last": 1000}
    assert verdicts(rows, skip_events=0)["records"]["slope_per_100k"] > 0


def test_a_cache_shared_by_every_store_is_counted_once():
    from bench.bench_state import rocksdb_memory

    table = lambda usage, shared, stores=6: {"cur-size-all-mem-tables": 2**20, "estimate-table-readers-mem": 0,
                                             "block-cache-usage": usage * stores, "stores": stores, "shared": shared}
    # shared: each of the 18 stores reports the one cache's 10 MiB
    assert rocksdb_memory({t: table(10 * 2**20, True) for t in "abc"})["cache"] == 10 * 2**20
    # per store: 18 caches of 10 MiB each
    assert rocksdb_memory({t: table(10 * 2**20, False) for t in "abc"})["cache"] == 180 * 2**20
    assert rocksdb_memory({t: table(0, False) for t in "abc"})["memtables"] == 3 * 2**20


def test_the_report_has_a_column_pair_per_worker():
    from bench.bench_state import markdown

    v = {s: {"slope_per_100k": 1.0, "last": 2.0} for s in ("records", "index", "hits-seen", "rss")}
    result = {"at": "now", "events": 10, "rate": 1, "window_s": 1, "warmup_events": 0, "verdicts": {"before": v, "after": v},
              "variants": {"before": {"env": {"INTELBUS_JOBS_ROCKSDB_SHARED": "0"}}, "after": {}},
              "max_lag": {"before": 1, "after": 2}, "expired": {"before": 3, "after": 4}, "hits": {"before": 5, "after": 6},
              "key_index_alternative": {"bytes_per_key": 94, "keys": 100}}
    text = markdown(result)
    assert "| series | before: last | before: slope /100k | after: last | after: slope /100k |" in text
    assert "before (expiry on, INTELBUS_JOBS_ROCKSDB_SHARED=0), after (expiry on)" in text
    assert "Hits emitted: before 5, after 6." in text
