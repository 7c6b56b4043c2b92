"""Bounded state: each stage deletes what is past its windows, a slice of its table per batch."""
from __future__ import annotations

import copy
import json

import pytest

from stream_jobs import metrics, rules
from stream_jobs.stages import HitStage, Incoming, CANDIDATE_TOPIC
from stream_jobs.state import COUNT_KEY, CURSOR_KEY, KEEP, MemoryState, Sweeper
from tests.unit.stream_jobs.test_stages import DAY, ID18, T0, Bus, incident, person, wanted

MIN = 60_000
HOUR = 60 * MIN
W = 7 * DAY  # the Bus's dedupe window


# --- the decisions ------------------------------------------------------------------------

def seen(*times):
    return {str(i + 1): [f"e{i}", t, i] for i, t in enumerate(times)}


def test_a_dedupe_entry_goes_when_every_revision_is_past_the_window_and_no_open_record_needs_it():
    now = T0 + 30 * DAY
    assert rules.dedupe_entry_expired({"seen": seen(now - W - 1)}, now, W)
    assert not rules.dedupe_entry_expired({"seen": seen(now - W - 1, now - W)}, now, W)  # the window's edge is inside
    listed = {"seen": seen(now - 20 * DAY), "state": {"rev": 1, "open": True, "ids": ["RESIDENT_ID:x"], "until": None}}
    assert not rules.dedupe_entry_expired(listed, now, W)  # open: its state makes the arrest remove it from the index
    closed = {"seen": seen(now - 20 * DAY), "state": {"rev": 2, "open": False, "ids": [], "until": None}}
    assert not rules.dedupe_entry_expired(closed, now, W, closed_retention_ms=30 * DAY)
    assert rules.dedupe_entry_expired(closed, now, W, closed_retention_ms=19 * DAY)
    lapsed = {"seen": seen(now - 20 * DAY), "state": {"rev": 1, "open": True, "ids": ["PLATE:x"], "until": now - 10 * DAY}}
    assert not rules.dedupe_entry_expired(lapsed, now, W, closed_retention_ms=11 * DAY)  # counted from valid_until
    assert rules.dedupe_entry_expired(lapsed, now, W, closed_retention_ms=9 * DAY)


def test_an_index_entry_loses_what_is_past_its_windows_and_keeps_open_records():
    now = T0 + 100 * DAY
    entry = {"records": {"open": {"closed": None, "until": None}, "arrested": {"closed": now - 3 * DAY, "until": None},
                         "lapsed": {"closed": None, "until": now - DAY}},
             "recent": [{"occurred": now - 61 * DAY}, {"occurred": now - 59 * DAY}],
             "reports": [{"occurred": now - 2 * HOUR}, {"occurred": now - 30 * MIN}]}
    keep = dict(closed_keep_ms=2 * DAY, case_keep_ms=60 * DAY, reports_keep_ms=HOUR)
    assert rules.prune_index_entry(entry, now, **keep)
    assert set(entry["records"]) == {"open", "lapsed"}
    assert entry["recent"] == [{"occurred": now - 59 * DAY}] and entry["reports"] == [{"occurred": now - 30 * MIN}]
    assert not rules.prune_index_entry(entry, now, **keep)  # nothing more to drop: unchanged
    assert not rules.index_entry_is_empty(entry)
    gone = {"records": {}, "recent": [{"occurred": now - 61 * DAY}], "reports": []}
    assert rules.prune_index_entry(gone, now, **keep) and rules.index_entry_is_empty(gone)


# --- the sweeper --------------------------------------------------------------------------

def old_if_below(value, clock):
    return None if int(value) < clock else KEEP


def expired(state):
    """The keys a MemoryState deleted, in order (the sweep's cursor left out)."""
    return [k for _, k in state.deleted if k[:1] != b"\x00"]


def filled(n, partition=0):
    state = MemoryState()
    for i in range(n):
        state.put(partition, b"k%04d" % i, str(i).encode())
    state.commit()
    return state


def test_the_sweeper_walks_a_bounded_slice_per_batch_and_deletes_only_what_is_old():
    state = filled(100)
    sweeper = Sweeper(old_if_below, per_message=2, minimum=10)
    examined, deleted = sweeper.sweep(state, 0, messages=3, clock_ms=50)  # 10 keys: max(minimum, 2 * 3)
    state.commit()
    assert (examined, deleted) == (10, 10) and state.get(0, CURSOR_KEY) == b"0:k0009"
    passes = 0
    while state.get(0, CURSOR_KEY) is not None or passes == 0:  # on to the end of the partition
        sweeper.sweep(state, 0, messages=20, clock_ms=50)
        state.commit()
        passes += 1
    assert sorted(k for k in state.data[0] if k[:1] != b"\x00") == [b"k%04d" % i for i in range(50, 100)]  # young
    assert passes == 3  # 90 keys left after the first slice, 40 a batch
    assert state.count(0) == 50  # a table without a count gets the one its first full pass kept
    assert expired(state) == [b"k%04d" % i for i in range(50)]


def test_each_partition_counts_its_entries_with_the_batchs_writes():
    state = MemoryState()
    state.put(0, COUNT_KEY, b"0")
    state.commit()
    state.put(0, b"a", b"1")
    state.put(0, b"b", b"1")
    state.put(0, b"a", b"2")  # rewritten: still one entry
    assert state.count(0) == 2 and state.count(1) is None  # partition 1 is not counted
    state.put(1, b"x", b"1")
    assert state.drain() == {0: {b"a": b"2", b"b": b"1", COUNT_KEY: b"2"}, 1: {b"x": b"1"}}
    state.put(0, b"a", b"1")  # the drained batch was never applied: count from 0 again
    state.put(0, b"b", b"1")
    state.commit()
    assert state.data[0][COUNT_KEY] == b"2"
    state.put(0, b"a", None)
    state.put(0, b"nothing", None)  # deleting what is not there counts nothing
    state.commit()
    assert state.data[0][COUNT_KEY] == b"1" and state.entries() == 1


def test_the_sweeper_sees_the_batchs_own_writes():
    state = filled(5)
    state.put(0, b"k0001", b"999")  # rewritten young in this batch: kept
    state.put(0, b"k0002", None)  # deleted in this batch: not judged again
    Sweeper(old_if_below).sweep(state, 0, messages=1, clock_ms=100)
    writes = state.drain()[0]
    assert writes[b"k0001"] == b"999" and writes[b"k0002"] is None
    assert {k for k, v in writes.items() if v is None} == {b"k0000", b"k0002", b"k0003", b"k0004"}


def test_a_batch_read_again_after_a_crash_sweeps_the_same_keys():
    """The cursor is a write of the batch: lost with it, so the replay starts where the first try did."""
    state = filled(300)
    for clock in (40, 80):  # two batches done and committed
        Sweeper(old_if_below, minimum=64).sweep(state, 0, messages=1, clock_ms=clock)
        state.commit()
    before = copy.deepcopy((state.data, state._sorted))
    Sweeper(old_if_below, minimum=64).sweep(state, 0, messages=1, clock_ms=200)
    first_try = state.drain()  # the worker dies before this batch is acknowledged
    state.data, state._sorted = before
    Sweeper(old_if_below, minimum=64).sweep(state, 0, messages=1, clock_ms=200)  # a new process, same batch
    assert state.drain() == first_try
    assert sum(v is None for v in first_try[0].values()) == 64  # keys 128-191, all below 200


def test_an_entry_that_cannot_be_read_is_kept():
    state = filled(3)
    state.put(0, b"k0001", b"not a number")
    state.commit()
    Sweeper(old_if_below).sweep(state, 0, messages=1, clock_ms=10)
    state.commit()
    assert [k for k in state.data[0] if k[:1] != b"\x00"] == [b"k0001"]


# --- the stages ---------------------------------------------------------------------------

def traffic(bus, t, n=60):
    """Identity checks at time t in every partition (each with a phone: lookups, no index write),
    so that every partition of the dedupe and match tables runs a batch, and sweeps."""
    for i in range(n):
        bus.publish("incident", incident("150000", f"T{t}-{i}", phones=[f"139{i:08d}"], t=t), now=t)


def test_dedupe_forgets_events_past_the_window_but_not_open_wanted_records():
    bus = Bus()
    bus.publish("wanted", wanted("110000", "ZT1"), now=T0)
    bus.publish("incident", incident("120000", "JQ1", persons=[person("11010519800101003X")]), now=T0)
    bus.publish("incident", incident("120000", "JQ2", t=T0 + DAY), now=T0 + DAY)
    later = T0 + W + DAY + 1
    traffic(bus, later)
    keys = {k for part in bus.records.data.values() for k in part}
    assert b"120000/sys/JQ1" not in keys and b"120000/sys/JQ2" not in keys  # a window and more behind the batch
    assert b"110000/sys/ZT1" in keys and b"150000/sys/T%d-0" % later in keys
    # the same event again, after its entry went: the window has passed, so it is new (as before expiry)
    bus.publish("incident", incident("120000", "JQ1", persons=[person("11010519800101003X")]), now=later)
    assert bus.duplicates == []


def test_an_arrest_weeks_after_the_listing_still_closes_the_record():
    bus = Bus()
    bus.publish("wanted", wanted("110000", "ZT1"), now=T0)
    for day in (5, 10, 15, 20):  # traffic sweeps the tables for weeks
        traffic(bus, T0 + day * DAY)
    t = T0 + 20 * DAY
    bus.publish("wanted", wanted("110000", "ZT1", action="ARRESTED", rev=2, t=t), now=t)
    bus.publish("incident", incident("120000", "JQ-after", persons=[person(ID18)], t=t + HOUR), now=t + HOUR)
    assert bus.hits == []
    bus.publish("incident", incident("120000", "JQ-before", persons=[person(ID18)], t=t - HOUR), now=t + HOUR)
    assert len(bus.distinct_hits()) == 1  # seen while it was still open: the index kept the record


def test_match_forgets_case_incidents_twice_the_window_behind():
    bus = Bus()
    bus.match.case_window_ms = DAY
    bus.publish("incident", incident("110000", "A1", itype="THEFT", phones=["13800000001"], t=T0), now=T0)
    bus.publish("incident", incident("120000", "B1", itype="THEFT", phones=["13800000001"], t=T0 + HOUR), now=T0 + HOUR)
    assert len(bus.distinct_hits()) == 1 and bus.index.entries() == 1  # the phone's entry holds both cases
    traffic(bus, T0 + 2 * DAY)
    assert bus.index.entries() == 1  # the newer case is two windows behind only at T0 + 2 days + 1 hour
    traffic(bus, T0 + 2 * DAY + HOUR + 1)
    assert bus.index.entries() == 0 and expired(bus.index) == [b"PHONE:13800000001"]


@pytest.mark.parametrize("cfg", [dict(seed=7, count=2000, case_link_rate=0.3)])
def test_expiry_changes_no_hit_when_the_input_keeps_to_the_windows(cfg):
    """The simulator's traffic with event time running 10 minutes a record (about two weeks), each
    record read at its own time, through the stages with expiry and without: the same hits,
    events and duplicates; and with expiry every table lost most of what it had."""
    from producers.simulator import SimConfig, Simulation
    from schemas.records import validate_record

    def run(expire):
        bus = Bus()
        bus.match.case_window_ms = DAY  # a short case-link window, so that it expires within the run
        for stage in (bus.dedupe, bus.match, bus.hits_stage):
            if not expire:
                stage.sweeper = None
        bus.hits_stage.retention_ms = 2 * DAY  # a trigger's resends come within the dedupe window, so dropped there
        sim = Simulation(SimConfig(start_ms=T0, step_ms=10 * MIN, **cfg))
        now = T0
        for item in sim.records():
            if item.invalid:
                continue
            record = validate_record(item.kind, item.record, now_ms=0)
            now = max(now, _ms(item.record["occurred_at"]))  # read as it is published (a resend: now)
            record["reported_at"] = now
            bus.publish(item.kind, record, now=now)
        return bus

    on, off = run(True), run(False)
    assert sorted(h["hit_id"] for _, h in on.hits) == sorted(h["hit_id"] for _, h in off.hits)
    assert len(on.distinct_hits()) > 30
    assert len(on.unique) == len(off.unique) and len(on.duplicates) == len(off.duplicates) > 0
    for mine, theirs in ((on.index, off.index), (on.seen, off.seen)):
        assert mine.entries() < theirs.entries() * 0.8, (mine.entries(), theirs.entries())
    for state in (on.records, on.index, on.seen):  # each partition's count is exact
        for partition, data in state.data.items():
            assert state.count(partition) == sum(1 for k in data if k[:1] != b"\x00")
    span = cfg["count"] * 10 * MIN  # the last window's events stay, and what the sweep has not reached yet
    assert on.records.entries() < off.records.entries() * (W / span + 0.15)


def _ms(iso: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def test_the_same_batches_delete_the_same_keys():
    from producers.simulator import SimConfig, Simulation
    from schemas.records import validate_record

    def run():
        bus = Bus()
        sim = Simulation(SimConfig(start_ms=T0, step_ms=HOUR, seed=3, count=500))
        now = T0
        for item in sim.records():
            if not item.invalid:
                record = validate_record(item.kind, item.record, now_ms=0)
                now = max(now, _ms(item.record["occurred_at"]))
                record["reported_at"] = now
                bus.publish(item.kind, record, now=now)
        return bus

    one, two = run(), run()
    assert expired(one.records) and one.records.deleted == two.records.deleted
    assert one.index.deleted == two.index.deleted and one.seen.deleted == two.seen.deleted


def test_the_sweep_clock_is_the_batchs_time_not_the_workers():
    """A backlog read days late (the worker's clock far ahead) forgets by the batch's own
    time: the hit stage keeps ids of hits detected within retention of the batch's newest."""
    state = MemoryState()
    stage = HitStage(state=state, encode_hit=lambda h: b"x", provinces_of=lambda n: ["110000"], retention_ms=DAY)
    state.put(0, b"old", str(T0 - 2 * DAY).encode())
    state.put(0, b"recent", str(T0 - HOUR).encode())
    state.commit()
    hit = {"hit_id": "h1", "hit_type": "WANTED_PERSON", "owner_region": "110000", "hit_region": "120000",
           "notify_regions": ["110000"], "detected_at": T0, "trigger_reported_at": T0}
    result = stage.process([Incoming(CANDIDATE_TOPIC, 0, 1, b"h1", json.dumps(hit).encode())], now_ms=T0 + 30 * DAY)
    state.commit()
    assert set(state.data[0]) == {b"recent", b"h1", COUNT_KEY}  # one slice reached the end: no cursor kept
    assert result.counts[("expired", "hits-seen")] == 1


def test_expired_and_swept_entries_are_counted_and_table_sizes_are_scraped():
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("intelbus_jobs_state_expired_total", {"table": "index"}) or 0
    result = type("R", (), {"counts": {("expired", "index"): 3, ("swept", "index"): 10}, "dead_letters": [],
                            "hit_delays_ms": []})()
    metrics.observe_batch("match", 1, 0.01, result)
    assert REGISTRY.get_sample_value("intelbus_jobs_state_expired_total", {"table": "index"}) == before + 3
    state = filled(7)
    metrics.STATE_SIZES.watch("test-table", state)
    assert REGISTRY.get_sample_value("intelbus_jobs_state_entries", {"table": "test-table"}) == 7
    state.put(0, b"k0000", None)
    state.commit()
    assert REGISTRY.get_sample_value("intelbus_jobs_state_entries", {"table": "test-table"}) == 6



def test_with_expiry_off_nothing_goes_but_each_partition_is_counted():
    from schemas.normalise import normalise_identifier
    from stream_jobs.stages import DedupeStage

    state = MemoryState()
    stage = DedupeStage(decode=lambda b: json.loads(b), normalise=normalise_identifier, state=state, partitions=6,
                        window_ms=W, expire=False)
    for n, t in enumerate((T0, T0 + 30 * DAY)):
        record = incident("120000", f"JQ{n}", t=t)
        stage.process([Incoming("intel.incident", 0, n, f"120000/sys/JQ{n}".encode(), json.dumps(record).encode())], t)
        state.commit()
    assert state.entries() == 2 and state.count(0) == 2


def test_the_floor_applies_once_a_second_of_the_batches_clock_per_partition():
    """Many small batches within a second walk two keys a message after the first, which walks the
    floor (64 keys a partition for every batch of a message or two was most of a quiet worker's CPU);
    a second later, or in another partition, the floor applies again."""
    state = filled(300)
    sweeper = Sweeper(old_if_below)  # the stages' defaults: 2 a message, a floor of 64 once a second
    walked = []
    for clock in (0, 100, 200, 999):
        walked.append(sweeper.sweep(state, 0, messages=1, clock_ms=clock)[0])
        state.commit()
    assert walked == [64, 2, 2, 2]
    assert sweeper.sweep(state, 0, messages=1, clock_ms=1000)[0] == 64  # a second on
    assert sweeper.sweep(filled(300, partition=1), 1, messages=1, clock_ms=1000)[0] == 64  # another partition
    assert sweeper.sweep(state, 0, messages=40, clock_ms=1001)[0] == 80  # a large batch: two a message
    state.commit()
    cursor = state.get(0, CURSOR_KEY)
    assert sweeper.sweep(state, 0, messages=0, clock_ms=1002) == (0, 0)  # nothing that adds a key: nothing walked
    assert state.get(0, CURSOR_KEY) == cursor


def test_the_index_sweep_walks_per_operation_that_can_add_a_key_not_per_lookup():
    """Plain lookups only read the index: a batch of them walks the floor once a second, not two
    keys each (they were 82,038 of 100,889 operations of the simulator's events); adds and the
    lookups that keep their event (case incidents, border reports) walk two keys each."""
    from stream_jobs.internal import AddOp, LookupOp, MatchRequest, encode_match_request
    from stream_jobs.stages import INDEX_TABLE, MATCH_TOPIC, MatchStage, adds_keys

    assert [adds_keys(op) for op in (AddOp("PHONE:1", "e"), LookupOp("PHONE:1", "e"), LookupOp("PHONE:1", "e", case=True),
                                      LookupOp("PHONE:1", "e", dup=True))] == [True, False, True, True]
    state = filled(1000)
    stage = MatchStage(state=state, partitions=1, is_within=lambda a, b: a == b, case_window_ms=DAY,
                       decode=json.loads)
    summary = {"kind": "incident", "key": "120000/sys/R", "event_id": "e", "region": "120000", "rev": 1,
               "occurred": T0, "reported": T0, "cls": "INTERNAL", "scope": [], "until": None, "avro": ""}

    def batch(ops, clock):
        req = MatchRequest({"e": {**summary, "reported": clock}}, ops)
        result = stage.process([Incoming(MATCH_TOPIC, 0, 0, None, encode_match_request(req))], clock)
        state.commit()
        return result.counts[("swept", INDEX_TABLE)]

    lookups = [LookupOp(f"PHONE:{n}", "e") for n in range(300)]
    assert batch(lookups, T0) == 64  # the floor, once a second of the batches' clock
    assert batch(lookups, T0 + 10) == 0  # 300 lookups more, nothing walked: they add no key
    assert batch([AddOp(f"PHONE:{n}", "e") for n in range(50)] + lookups, T0 + 20) == 100  # two a key-adding op
