"""bench/bench_stages.py: the order the offline stages read the records in."""
from __future__ import annotations

from bench.bench_stages import batches
from stream_jobs.stages import Incoming


def msg(topic: str, partition: int, offset: int) -> Incoming:
    return Incoming(topic, partition, offset, b"k", b"v")


def test_batches_are_one_partition_each_in_offset_order_partitions_in_turn():
    records = [msg("intel.incident", 1, o) for o in range(5)] + [msg("intel.alert", 0, o) for o in range(3)]
    got = [[(m.topic, m.partition, m.offset) for m in b] for b in batches(records, 2)]
    assert got == [
        [("intel.alert", 0, 0), ("intel.alert", 0, 1)], [("intel.incident", 1, 0), ("intel.incident", 1, 1)],
        [("intel.alert", 0, 2)], [("intel.incident", 1, 2), ("intel.incident", 1, 3)],
        [("intel.incident", 1, 4)],
    ]
    assert sum(len(b) for b in batches(records, 1000)) == len(records)  # every record once
