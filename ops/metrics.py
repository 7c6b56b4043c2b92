"""Metrics every intelbus process shares (one definition, one registry)."""
from __future__ import annotations

import gc
import logging
import time

from prometheus_client import Counter, Gauge, Histogram

READY = Gauge("intelbus_service_ready", "1 once the process consumes: in its consumer group with partitions (and, for a "
              "jobs worker, its tables recovered); 0 while a jobs worker rebalances or recovers")
DLQ = Counter("intelbus_dlq_writes_total", "Messages sent to intel.dlq", ["stage"])
GC_PAUSE = Histogram("intelbus_gc_pause_seconds",
                     "Time the process stood still in Python's cyclic garbage collector, by generation "
                     "(a full collection walks every tracked object of the heap)", ["generation"],
                     buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

_gc_started: list[float] = [0.0]
SLOW_GC_S = 0.1  # a collection this long is logged, with what it found
# The slow-collection line goes where the process's logging goes: a service (worker, sink) configures
# logging at start and has it in its log. A process that configured none (a test run, a CLI command)
# would have it printed on stderr by logging's last resort; this handler keeps it quiet there.
_GC_LOG = logging.getLogger("intelbus.gc")
_GC_LOG.addHandler(logging.NullHandler())


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        took = time.perf_counter() - _gc_started[0]
        GC_PAUSE.labels(str(info["generation"])).observe(took)
        if took >= SLOW_GC_S:
            _GC_LOG.warning(
                "garbage collection of generation %d stood the process still for %.3f s: %d objects collected, "
                "%d uncollectable", info["generation"], took, info["collected"], info["uncollectable"])


def watch_gc() -> None:
    """Observe every collection's pause in `intelbus_gc_pause_seconds` (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def unwatch_gc() -> None:
    """Stop observing (a test that watched, so the rest of its process is not timed)."""
    while _on_gc in gc.callbacks:
        gc.callbacks.remove(_on_gc)


def tune_gc(gen0: int = 50_000) -> None:
    """Collect the youngest generation every `gen0` allocations instead of every 700.

    A worker allocates a few dicts and strings per message that die within the batch;
    Python's default collected them (and promoted the survivors towards the full
    collections that walk the whole heap) hundreds of times a second.
    """
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)
