from __future__ import annotations

import pytest

from sinks.batching import Backoff, Batch, FlushPolicy, RowRejected, bisect_rejects
from sinks.queries import display_width, pad


def test_batches_flush_on_rows_or_time_and_track_next_offsets():
    b = Batch(started=0.0)
    assert not b.due(FlushPolicy(2, 1.0), now=5.0)  # nothing in it
    b.add("events", (1,))
    b.advance("intel.incident.unique", 3, 41)
    b.advance("intel.incident.unique", 3, 40)
    assert b.offsets == {("intel.incident.unique", 3): 42}
    assert not b.due(FlushPolicy(2, 1.0), now=0.5) and b.due(FlushPolicy(2, 1.0), now=1.0)
    b.add("events", (2,))
    assert b.due(FlushPolicy(2, 10.0), now=0.1)


def test_backoff_doubles_up_to_its_cap():
    assert [Backoff().delay(n) for n in (1, 2, 3, 10)] == [0.5, 1.0, 2.0, 30.0]


def test_bisect_finds_the_rows_clickhouse_refuses():
    stored = []

    def insert(rows):
        if any(r == "bad" for r in rows):
            raise RowRejected("Cannot parse")
        stored.extend(rows)

    ok, refused = bisect_rejects(["a", "b", "bad", "c", "bad"], insert)
    assert ok == 3 and sorted(stored) == ["a", "b", "c"] and [r for r, _ in refused] == ["bad", "bad"]


def test_chinese_text_aligns_by_display_width():
    assert display_width("蓟州区") == 6 and pad("蓟州区", 8) == "蓟州区  "
