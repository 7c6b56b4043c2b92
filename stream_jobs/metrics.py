"""Prometheus metrics of the stream-job workers (names: docs/metrics.md)."""
from __future__ import annotations

import logging
import weakref

from ops.metrics import DLQ, READY  # noqa: F401  (shared by every process)
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily


EVENTS_IN = Counter("intelbus_jobs_events_total", "Events read by the dedupe stage", ["kind"])
UNIQUE = Counter("intelbus_jobs_unique_events_total", "Events forwarded once to intel.<kind>.unique", ["kind"])
DUPLICATES = Counter("intelbus_jobs_duplicates_dropped_total", "Duplicate events dropped", ["kind", "source_system"])
HITS = Counter("intelbus_jobs_hits_total", "Hits emitted to intel.hit, by type and province pair",
               ["hit_type", "owner_province", "hit_province"])
UNVERIFIED = Counter("intelbus_jobs_unverified_total", "Records refused for their proof of publisher (sent to intel.dlq, "
                     "stage VERIFY, never matched), by reason code", ["code"])
DUPLICATE_HITS = Counter("intelbus_jobs_duplicate_hits_dropped_total", "Hit candidates already emitted", ["hit_type"])
PARTITION_REPAIRS = Counter("intelbus_jobs_partition_repairs_total",
                            "Partitions whose committed offset had stopped moving with work past it; each made "
                            "the worker read its partitions again from their committed offsets "
                            "(stream_jobs/watchdog.py)", ["topic"])
COMMIT_HOLDS = Counter("intelbus_jobs_commit_holds_total",
                       "Holes at a partition's commit point: messages not processed while later ones were "
                       "(faust 0.15.3 commits over a hole of one message); the commit is held there; one that "
                       "stays is repaired by the watchdog (stream_jobs/faust_patches.py)", ["topic"])
GAPS_LEFT_OPEN = Counter("intelbus_jobs_gaps_left_open_total",
                         "Runs of offsets skipped by the fetch that faust would have taken as absent and committed "
                         "over; left holes instead, to be processed or probed (stream_jobs/faust_patches.py)",
                         ["topic"])
BATCH_SIZE = Histogram("intelbus_jobs_batch_size", "Messages per processed batch", ["stage"],
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
BATCH_SECONDS = Histogram("intelbus_jobs_batch_seconds", "Time to process a batch and make it durable", ["stage"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
PHASE_SECONDS = Histogram("intelbus_jobs_phase_seconds",
                          "Time per batch in each phase: process (the stage's logic), produce (handing outputs and "
                          "changelog records to the producer), deliver (waiting for Kafka's acknowledgements), "
                          "apply (state store write)", ["stage", "phase"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
ARRIVAL_SECONDS = Histogram("intelbus_jobs_arrival_seconds",
                            "Where a record waits before its stage works on it (batch loop): fetched = from its "
                            "Kafka timestamp (the producer's clock when it was produced: linger, the broker and the "
                            "fetch) to the loop handing it to its stage, for each partition's oldest record of a "
                            "fetch; queued = from that hand-over to its stage starting the batch (the batches before "
                            "it being processed or delivered)", ["stage", "step"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
LOOP_LAG = Histogram("intelbus_jobs_event_loop_lag_seconds",
                     "How late the worker's event loop ran a 50 ms timer: time it spent on something else "
                     "without giving control back (a long batch, a garbage collection, a blocking call)",
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
PRODUCE_TO_HIT = Histogram("intelbus_produce_to_hit_seconds", "From the triggering event's reported_at to the hit's emission",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30))


STATE_EXPIRED = Counter("intelbus_jobs_state_expired_total",
                        "State entries deleted because everything in them was past its window (a tombstone "
                        "in the table's changelog each), by table", ["table"])
STATE_SWEPT = Counter("intelbus_jobs_state_swept_total",
                      "State entries examined by the expiry sweep (a slice of each table per batch), by table",
                      ["table"])

LOOKBACK_RESTORED = Counter("intelbus_jobs_lookback_restored_total",
                            "Lookups of intel.match.requests read back into the look-back when the worker got "
                            "partitions of it (start, restart, rebalance)")
LOOKBACK_RESTORE_SECONDS = Counter("intelbus_jobs_lookback_restore_seconds_total",
                                   "Time the match stage waited for those read-backs (reading and remembering)")


class StateSizes:
    """`intelbus_jobs_state_entries{table}`: the entries of each table in the partitions this
    worker holds, read when Prometheus scrapes (each table's `entries()`)."""

    def __init__(self):
        self._tables: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def watch(self, name: str, table) -> None:
        self._tables[name] = table

    def collect(self):
        family = GaugeMetricFamily("intelbus_jobs_state_entries",
                                   "Entries in each state table (partitions held by this worker; RocksDB's "
                                   "estimate): flat under steady traffic once expiry runs", labels=["table"])
        for name, table in sorted(self._tables.items()):
            try:
                family.add_metric([name], float(table.entries()))
            except Exception:  # a store closing in a rebalance: no sample this scrape
                logging.getLogger("intelbus.jobs").debug("state size of %s not read", name, exc_info=True)
        yield family


STATE_SIZES = StateSizes()
REGISTRY.register(STATE_SIZES)


def observe_phases(stage: str, **seconds: float) -> None:
    for phase, value in seconds.items():
        PHASE_SECONDS.labels(stage, phase).observe(value)


def observe_arrival(stage: str, step: str, seconds: float) -> None:
    ARRIVAL_SECONDS.labels(stage, step).observe(seconds)


def observe_batch(stage: str, size: int, seconds: float, result) -> None:
    BATCH_SIZE.labels(stage).observe(size)
    BATCH_SECONDS.labels(stage).observe(seconds)
    for key, n in result.counts.items():
        what = key[0]
        if what == "in":
            EVENTS_IN.labels(key[1]).inc(n)
        elif what == "unique":
            UNIQUE.labels(key[1]).inc(n)
        elif what == "duplicate":
            DUPLICATES.labels(key[1], key[2]).inc(n)
        elif what == "unverified":
            UNVERIFIED.labels(key[1]).inc(n)
        elif what == "duplicate_hit":
            DUPLICATE_HITS.labels(key[1]).inc(n)
        elif what == "hit":
            HITS.labels(key[1], key[2][:2] + "0000", key[3][:2] + "0000").inc(n)
        elif what == "expired":
            STATE_EXPIRED.labels(key[1]).inc(n)
        elif what == "swept":
            STATE_SWEPT.labels(key[1]).inc(n)
    for dl in result.dead_letters:
        DLQ.labels(dl.stage).inc()
    for delay_ms in result.hit_delays_ms:
        PRODUCE_TO_HIT.observe(max(0.0, delay_ms / 1000))
