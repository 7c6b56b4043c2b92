"""The garbage collector's pauses are measured, and the youngest generation collected less often."""
import gc

from prometheus_client import REGISTRY

from ops.metrics import tune_gc, watch_gc


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
