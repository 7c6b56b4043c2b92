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


def test_shares_take_all_of_small_partitions_and_split_the_rest_evenly():
    from bench.bench_stages import shares

    assert shares([10, 1000, 1000], 1000) == [10, 495, 495]
    assert shares([100, 100], 1000) == [100, 100]  # fewer than asked: everything
    assert shares([0, 7, 500, 500, 500], 30) == [0, 7, 7, 8, 8]
    assert sum(shares([3, 50, 9, 400], 200)) == 200


def test_the_rounds_clock_starts_at_the_records_time_not_the_wall_clock():
    from bench.bench_stages import records_clock

    wall = [1_800_000_000.0]  # hours after the records were published
    now_ms = records_clock(1_700_000_000_000, wall=lambda: wall[0])
    assert now_ms() == 1_700_000_000_000
    wall[0] += 2.5  # the round's time goes on from the records' time
    assert now_ms() == 1_700_000_002_500
    # records without timestamps: the wall clock, as before
    assert records_clock(0, wall=lambda: wall[0])() == int(wall[0] * 1000)
