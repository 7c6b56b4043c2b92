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


def test_the_check_in_the_background_never_holds_the_assignment_up(monkeypatch):
    # a broker that is slow to answer (restarting after an outage): the caller goes on at once,
    # and the range is still counted once the broker answers
    import threading
    import time

    from ops import retention

    answer = threading.Event()

    def slow_read(kafka_config, group, partitions, timeout):
        answer.wait(5)
        return {("intel.alert", 2): 3}, {("intel.alert", 2): 10}

    monkeypatch.setattr(retention, "read_offsets", slow_read)
    before = RECORDS_LOST.labels("intelbus-jobs-bg", "intel.alert")._value.get()
    started = time.monotonic()
    thread = retention.check_group_in_background({}, "intelbus-jobs-bg", [("intel.alert", 2)])
    assert time.monotonic() - started < 0.5 and thread.is_alive()
    answer.set()
    thread.join(5)
    assert RECORDS_LOST.labels("intelbus-jobs-bg", "intel.alert")._value.get() == before + 7
