"""bench_jobs keeps an earlier run's look-back restore out of the measured drain."""
from __future__ import annotations

import io
from types import SimpleNamespace

from bench import bench_jobs


def test_a_run_waits_until_the_last_match_requests_are_older_than_the_lookback(monkeypatch):
    slept = []
    monkeypatch.setattr(bench_jobs.time, "time", lambda: 1_000.0)
    monkeypatch.setattr(bench_jobs.time, "sleep", slept.append)
    settings = SimpleNamespace(jobs_lookback_s=120.0)

    monkeypatch.setattr(bench_jobs, "newest_request_ms", lambda s: 990_000)  # 10 s ago: the look-back holds them
    out = io.StringIO()
    assert bench_jobs._after_previous_lookback(settings, out=out) == 112.0
    assert slept == [112.0] and "waiting 112 s" in out.getvalue() and "look-back (120 s)" in out.getvalue()

    slept.clear()  # the controls: older than the look-back, or no request at all: no wait
    monkeypatch.setattr(bench_jobs, "newest_request_ms", lambda s: 860_000)
    assert bench_jobs._after_previous_lookback(settings, out=io.StringIO()) == 0.0
    monkeypatch.setattr(bench_jobs, "newest_request_ms", lambda s: None)
    assert bench_jobs._after_previous_lookback(settings, out=io.StringIO()) == 0.0
    assert slept == []
