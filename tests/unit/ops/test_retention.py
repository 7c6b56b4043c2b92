"""What retention deleted before a group read it is found, counted and named (ops/retention.py)."""
from __future__ import annotations

import logging

from ops.retention import RECORDS_LOST, LostRange, lost_ranges, record


def test_a_committed_offset_below_the_first_offset_is_a_lost_range():
    committed = {("intel.incident", 0): 5, ("intel.incident", 1): 40, ("intel.incident", 2): None,
                 ("intel.incident", 3): -1001, ("intel.alert", 0): 12}
    first = {("intel.incident", 0): 20, ("intel.incident", 1): 20, ("intel.incident", 2): 20,
             ("intel.incident", 3): 20, ("intel.alert", 0): 12}
    lost = lost_ranges("intelbus-sink", committed, first)
    # partition 1 read past the deletion, 2 and 3 never committed (a new group), intel.alert exactly at it
    assert lost == [LostRange("intelbus-sink", "intel.incident", 0, 5, 19)]
    assert lost[0].count == 15


def test_nothing_is_lost_when_the_group_is_at_or_past_the_first_offset():
    assert lost_ranges("g", {("t", 0): 20, ("t", 1): 21}, {("t", 0): 20, ("t", 1): 20}) == []


def test_a_lost_range_is_counted_by_group_and_topic_and_logged_with_its_offsets(caplog):
    before = RECORDS_LOST.labels("intelbus-jobs", "intel.wanted")._value.get()
    with caplog.at_level(logging.ERROR, logger="intelbus.retention"):
        record([LostRange("intelbus-jobs", "intel.wanted", 4, 100, 149)])
    assert RECORDS_LOST.labels("intelbus-jobs", "intel.wanted")._value.get() == before + 50
    assert "intel.wanted[4]: offsets 100-149 (50) were deleted by retention before group intelbus-jobs read them" in caplog.text
