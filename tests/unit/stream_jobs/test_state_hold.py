"""A batch's state writes held while they are delivered: the stage's next batch reads them.

The batch loop processes batch n+1 while batch n's outputs and changelog writes are on their
way to Kafka (stream_jobs/app.py BatchRunner). Batch n's writes are in the store only after
their delivery, so n+1 must read them from the overlay, or a record of n seen again in n+1
would pass the dedupe stage twice."""
from __future__ import annotations

import json

from stream_jobs.stages import unique_topic
from stream_jobs.state import MemoryState
from tests.unit.stream_jobs.test_stages import Bus, incident, person


def unique_outputs(result) -> list:
    return [o for o in result.outputs if o.topic == unique_topic("incident")]


def test_the_next_batch_sees_the_writes_of_a_batch_still_being_delivered_and_the_store_after():
    bus = Bus()
    check = incident("130225", "CHK-1", persons=[person("11010519491231002X")])
    first = bus.dedupe.process([bus._message("incident", check)], 0)
    held = bus.records.drain(hold=True)  # produced, not delivered yet: not in the store
    assert len(unique_outputs(first)) == 1 and bus.records.data == {}

    again = bus.dedupe.process([bus._message("incident", check)], 0)  # the same record, in the next batch
    assert unique_outputs(again) == []  # a duplicate: read from the held writes
    bus.records.drain(hold=True)

    bus.records.apply(held)  # delivered: in the store, released from the overlay
    assert bus.records.data and not any(h is held for h in bus.records._held)
    third = bus.dedupe.process([bus._message("incident", check)], 0)
    assert unique_outputs(third) == []


def test_without_holding_the_next_batch_would_pass_the_duplicate():
    # the control: what the hold prevents (writes drained, not yet in the store, not read)
    bus = Bus()
    check = incident("130225", "CHK-2", persons=[person("11010519491231002X")])
    bus.dedupe.process([bus._message("incident", check)], 0)
    bus.records.drain()
    again = bus.dedupe.process([bus._message("incident", check)], 0)
    assert len(unique_outputs(again)) == 1


def test_scans_and_counts_see_held_writes_newest_last():
    state = MemoryState()
    state.put(0, b"a", b"1")
    state.put(0, b"b", b"1")
    state.commit()
    state.put(0, b"a", b"2")
    first = state.drain(hold=True)
    state.put(0, b"b", None)
    state.drain(hold=True)
    assert state.get(0, b"a") == b"2" and state.get(0, b"b") is None
    assert state.scan(0, None, 10) == [(b"a", b"2"), (b"b", None)]
    state.apply(first)
    assert state.data[0] == {b"a": b"2", b"b": b"1"} and state.get(0, b"b") is None  # the second still held
