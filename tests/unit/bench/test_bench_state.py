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
