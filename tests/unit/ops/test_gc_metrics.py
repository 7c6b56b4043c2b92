"""The garbage collector's pauses are measured, and the youngest generation collected less often."""
import gc
import re
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from ops.metrics import tune_gc, unwatch_gc, watch_gc


@pytest.fixture(autouse=True)
def _unwatched_after():
    yield
    unwatch_gc()  # the rest of the test run is not timed (nor its slow collections logged)


def _count(generation: str) -> float:
    return REGISTRY.get_sample_value("intelbus_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_every_full_collection_is_observed_once_even_when_watched_twice():
    watch_gc()
    watch_gc()
    before = _count("2")
    gc.collect()
    assert _count("2") == before + 1


def test_tuning_raises_only_the_youngest_generation_threshold():
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc(gen0=12_345)
        assert gc.get_threshold() == (12_345, 10, 10)
    finally:
        gc.set_threshold(*saved)


def test_a_slow_collection_is_logged_with_what_it_collected(monkeypatch, caplog):
    import ops.metrics

    watch_gc()

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    del a, b
    monkeypatch.setattr(ops.metrics, "SLOW_GC_S", 0.0)
    with caplog.at_level("WARNING", logger="intelbus.gc"):
        gc.collect()
    assert "garbage collection of generation 2 stood the process still" in caplog.text
    assert re.search(r"still for \d+\.\d{3} s: [1-9]\d* objects collected", caplog.text)  # the cycle was found
    caplog.clear()
    monkeypatch.setattr(ops.metrics, "SLOW_GC_S", 60.0)
    gc.collect()
    assert "garbage collection" not in caplog.text


SLOW_COLLECTION = """
import gc, logging, sys
import ops.metrics
if sys.argv[1] == "service":  # as the jobs worker and the sink configure their logging at start
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
ops.metrics.SLOW_GC_S = 0.0
ops.metrics.watch_gc()
gc.collect()
print("collected", flush=True)
"""


@pytest.mark.parametrize("kind", ["service", "test"])
def test_a_slow_collection_is_in_a_services_log_and_not_printed_where_no_logging_is_set_up(kind):
    run = subprocess.run([sys.executable, "-c", SLOW_COLLECTION, kind], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "collected" in run.stdout, run.stderr
    if kind == "service":
        assert "WARNING intelbus.gc: garbage collection of generation 2 stood the process still" in run.stderr
    else:  # a test process, a CLI command: nothing on stderr
        assert "garbage collection" not in run.stderr, run.stderr


def test_unwatching_stops_the_observations():
    watch_gc()
    unwatch_gc()
    before = _count("2")
    gc.collect()
    assert _count("2") == before
