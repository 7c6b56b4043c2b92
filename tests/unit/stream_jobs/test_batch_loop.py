"""The batch consumer loop's decisions (stream_jobs/faust_patches.py; the default loop,
INTELBUS_JOBS_CONSUMER_LOOP=faust is the fallback).

Where the loop replaces a per-message step of faust 0.15.3 (the read-offset checks, the
acknowledgement), faust's own code runs beside it on the same input and the bookkeeping
must come out the same."""
from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest

from stream_jobs import faust_patches
from stream_jobs.faust_patches import SeekMarks, StageBatches, ack_offsets, fresh_records, why_not_start

from faust.types import TP as FaustTP

TP = FaustTP("intel.incident", 2)
TP_M = FaustTP("intel.match.requests", 2)


def recs(*offsets, topic="intel.incident"):
    return [SimpleNamespace(offset=o, topic=topic, partition=2) for o in offsets]


def faust_drain_checks(offsets, read_offset):
    """faust's `_drain_messages`, message by message: delivered offsets, gaps, read offset after."""
    delivered, gaps, r = [], [], read_offset
    for offset in offsets:
        if r is None or offset >= r:
            gap = offset - (r or 0)
            if gap > 1 and r:
                gaps.append((r + 1, offset))
            delivered.append(offset)
            r = offset
    return delivered, gaps, r


@pytest.mark.parametrize("offsets, read_offset", [
    ([5, 6, 7], None),
    ([5, 6, 7], 4),
    ([5, 6, 7], 5),         # after a seek to the committed offset 5: 5 is delivered again
    ([5, 6, 7], 6),         # fetched before the read offset moved on: 5 dropped
    ([5, 9, 10, 14], 4),    # offsets without messages inside the fetch
    ([12, 13], 7),          # a gap before the fetch
    ([3, 4], 0),            # faust records no gap after a read offset of 0
    ([], 3),
])
def test_fresh_records_decide_as_faust_does_message_by_message(offsets, read_offset):
    kept, gaps, last = fresh_records(recs(*offsets), read_offset)
    assert ([r.offset for r in kept], gaps, last) == faust_drain_checks(offsets, read_offset)


def bookkeeping(committed=None):
    return SimpleNamespace(_committed_offset=defaultdict(lambda: None, {TP: committed}),
                           _acked=defaultdict(list), _acked_index=defaultdict(set), _n_acked=0,
                           _unacked_messages=set(), _waiting_for_ack=None,
                           app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)))


class Message:  # what faust's `Consumer.ack` reads of a ConsumerMessage (hashable, as faust keeps it in a set)
    def __init__(self, tp, offset):
        self.acked, self.tp, self.offset, self.topic = False, tp, offset, tp.topic


@pytest.mark.parametrize("committed, offsets", [(None, [4, 5, 6]), (5, [3, 4, 5, 6, 7]), (5, [5, 5, 6]), (0, [0, 1])])
def test_bulk_acknowledgement_leaves_faust_the_bookkeeping_its_own_acks_leave(committed, offsets):
    from faust.transport.consumer import Consumer

    ours, theirs = bookkeeping(committed), bookkeeping(committed)
    n = ack_offsets(ours, TP, offsets)
    for o in offsets:
        Consumer.ack(theirs, Message(TP, o))
    assert n == theirs._n_acked
    assert (ours._acked[TP], ours._acked_index[TP], ours._n_acked) == (theirs._acked[TP], theirs._acked_index[TP],
                                                                        theirs._n_acked)


def test_faust_commits_past_a_bulk_acknowledged_batch():
    from faust.transport.consumer import Consumer

    from intervaltree import IntervalTree

    c = bookkeeping(committed=100)
    c._gap = defaultdict(IntervalTree)
    ack_offsets(c, TP, range(100, 150))
    assert Consumer._new_offset(c, TP) == 150


@pytest.mark.parametrize("kw, reason", [
    ({}, None),
    ({"stopping": True}, "stopping"),
    ({"flow_active": False}, "flow stopped"),
    ({"flow_control_active": False}, "flow stopped"),
])
def test_a_batch_starts_only_while_the_flow_runs(kw, reason):
    args = dict(stopping=False, flow_active=True, flow_control_active=True)
    assert why_not_start(**{**args, **kw}) == reason


@pytest.mark.parametrize("first, read_offset, seeked, rebalanced, dropped", [
    (120, 119, False, False, False),  # nothing moved: faust's read-offset checks decide
    (200, 100, True, False, True),    # fetched before the seek to 100: read again from 100
    (100, 100, True, False, False),   # fetched after the seek: the fetch position is past them, keep
    (100, 100, True, True, False),    # rebalanced, then the recovery's seek: as above
    (100, 100, False, True, True),    # rebalanced, no seek yet (it comes once the tables are recovered)
    (5, None, True, False, False),    # never committed: nothing to judge by, as faust
])
def test_records_that_may_predate_a_seek_or_rebalance_are_stale_unless_they_begin_where_it_put_the_partition(
        first, read_offset, seeked, rebalanced, dropped):
    assert faust_patches.stale(first, read_offset, seeked=seeked, rebalanced=rebalanced) is dropped


def test_a_seek_makes_what_was_fetched_before_it_stale_for_its_partitions_only():
    marks = SeekMarks()
    then = marks.now()
    assert not marks.seeked_since(TP, then)
    marks.mark(TP_M)
    assert marks.seeked_since(TP_M, then) and not marks.seeked_since(TP, then)
    later = marks.now()
    assert not marks.seeked_since(TP_M, later)
    marks.mark()  # perform_seek: every partition
    assert marks.seeked_since(TP, later) and marks.seeked_since(TP_M, later)


def test_a_fetch_splits_into_one_batch_per_stage_and_the_rest():
    other = FaustTP("intelbus-jobs-records-changelog", 2)
    alert = FaustTP("intel.alert", 0)
    batches = StageBatches({}, {"intel.incident": "dedupe", "intel.alert": "dedupe", "intel.match.requests": "match"})
    by_stage, rest = batches.split({TP: [1], alert: [2], TP_M: [3], other: [4]})
    assert by_stage == {"dedupe": {TP: [1], alert: [2]}, "match": {TP_M: [3]}}
    assert rest == {other: [4]}


class FakeConsumer:
    """What the batch loop reads of faust's consumer, with faust's own `_add_gap` and `ack`."""

    def __init__(self, committed=None):
        self.should_stop = False
        self.flow_active = True
        self.generation = 7
        self.flow_control_active = True
        self._read_offset = defaultdict(lambda: None)
        self._committed_offset = defaultdict(lambda: None, {TP: committed, TP_M: committed})
        self._acked, self._acked_index, self._n_acked = defaultdict(list), defaultdict(set), 0
        self._buffered_partitions = set()
        self._waiting_for_ack = None
        self.gaps = []
        outer = self
        self.app = SimpleNamespace(
            flow_control=SimpleNamespace(is_active=lambda: outer.flow_control_active),
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: None, stream_inbound_time={}))

    def highwater(self, tp):
        return 1000

    async def _add_gap(self, tp, a, b):
        self.gaps.append((tp, a, b))


def with_generation(consumer):
    consumer.app.consumer_generation_id = consumer.generation
    return consumer


def test_a_batch_is_acknowledged_in_bulk_only_after_its_handler_returned():
    async def main():
        release = asyncio.Event()
        seen = []

        async def dedupe(records):
            seen.append([r.offset for r in records])
            await release.wait()

        c = with_generation(FakeConsumer(committed=10))
        c._read_offset[TP] = 9
        batches = StageBatches({"dedupe": dedupe}, {"intel.incident": "dedupe"})
        n = await batches.submit(c, "dedupe", {TP: recs(8, 10, 11, 14)}, 7, batches.marks.now(), {TP})
        assert n == 3 and c._read_offset[TP] == 14 and c.gaps == [(TP, 12, 14)]
        await asyncio.sleep(0)
        assert seen == [[10, 11, 14]] and c._acked[TP] == [] and batches.busy()
        release.set()
        assert await batches.wait_in_flight(1)
        assert c._acked[TP] == [10, 11, 14] and c._n_acked == 3

    asyncio.run(main())


def test_a_stage_runs_its_batches_one_after_the_other_in_fetch_order():
    async def main():
        order = []

        async def match(records):
            order.append(("start", [r.offset for r in records]))
            await asyncio.sleep(0.01)
            order.append(("end", records[0].offset))

        c = with_generation(FakeConsumer())
        batches = StageBatches({"match": match}, {"intel.match.requests": "match"})
        await batches.submit(c, "match", {TP_M: recs(1, 2, topic=TP_M.topic)}, 7, 0, None)
        await asyncio.sleep(0)  # the first batch begins
        # handed over while the stage is busy: the two wait, then run together, after it
        await batches.submit(c, "match", {TP_M: recs(3, topic=TP_M.topic)}, 7, 0, None)
        await batches.submit(c, "match", {TP_M: recs(4, 5, topic=TP_M.topic)}, 7, 0, None)
        await batches.wait_in_flight(1)
        assert order == [("start", [1, 2]), ("end", 1), ("start", [3, 4, 5]), ("end", 3)]
        assert c._acked[TP_M] == [1, 2, 3, 4, 5]

    asyncio.run(main())


def test_the_loop_goes_on_while_a_stage_delivers_and_waits_only_for_a_stage_too_far_behind():
    async def main():
        release = asyncio.Event()
        handled = []

        async def dedupe(records):
            await release.wait()  # delivering
            handled.extend(r.offset for r in records)

        c = with_generation(FakeConsumer())
        batches = StageBatches({"dedupe": dedupe}, {"intel.incident": "dedupe"}, max_queued=3)
        await batches.submit(c, "dedupe", {TP: recs(1, 2)}, 7, 0, None)
        await asyncio.sleep(0)
        # the stage is busy: the next fetch's batch is handed over at once (before, the loop waited here)
        await asyncio.wait_for(batches.submit(c, "dedupe", {TP: recs(3, 4, 5)}, 7, 0, None), 0.5)
        assert handled == [] and batches.queued_records["dedupe"] == 3
        # three records wait: the next submit holds the loop until the stage has caught up
        held = asyncio.ensure_future(batches.submit(c, "dedupe", {TP: recs(6)}, 7, 0, None))
        await asyncio.sleep(0.05)
        assert not held.done()
        release.set()
        await asyncio.wait_for(held, 1)
        assert await batches.wait_in_flight(1)
        assert handled == [1, 2, 3, 4, 5, 6] and c._acked[TP] == [1, 2, 3, 4, 5, 6]

    asyncio.run(main())


def test_the_first_fetch_after_a_seek_is_processed_when_it_begins_at_the_new_read_offset():
    async def main():
        handled = []

        async def dedupe(records):
            handled.extend(r.offset for r in records)

        c = with_generation(FakeConsumer(committed=100))
        batches = StageBatches({"dedupe": dedupe}, {"intel.incident": "dedupe"})
        then = batches.marks.now()
        batches.marks.mark()  # perform_seek while the fetch was under way: read offsets back to 100
        c._read_offset[TP] = 100
        await batches.submit(c, "dedupe", {TP: recs(100, 101)}, 7, then, {TP})
        await batches.wait_in_flight(1)
        assert handled == [100, 101] and c._acked[TP] == [100, 101]

    asyncio.run(main())


@pytest.mark.parametrize("change", ["flow", "generation", "seek", "paused"])
def test_records_fetched_before_a_flow_stop_rebalance_or_seek_are_dropped_unacknowledged(change):
    async def main():
        handled = []

        async def dedupe(records):
            handled.extend(records)

        c = with_generation(FakeConsumer())
        batches = StageBatches({"dedupe": dedupe}, {"intel.incident": "dedupe"})
        then, active = batches.marks.now(), {TP}
        if change == "flow":
            c.flow_active = False
        elif change == "generation":
            c.app.consumer_generation_id = 8
        elif change == "seek":
            batches.marks.mark()  # to the committed offset 0, from before which the fetch came
            c._read_offset[TP] = 0
        else:
            active = set()
        n = await batches.submit(c, "dedupe", {TP: recs(1, 2, 3)}, 7, then, active)
        await batches.wait_in_flight(1)
        assert n == 0 and handled == [] and c._acked[TP] == [] and c._read_offset[TP] == (0 if change == "seek" else None)
        assert batches.dropped == 3

    asyncio.run(main())


def test_a_revoke_waits_for_the_batches_in_flight_before_faust_goes_on(monkeypatch):
    async def main():
        events = []

        async def hits(records):
            await asyncio.sleep(0.02)
            events.append("batch done")

        c = with_generation(FakeConsumer())
        c.app.conf = SimpleNamespace(broker_session_timeout=10.0)
        c.stop_flow = lambda: events.append("flow stopped")

        async def faust_revoke(self, revoked):
            events.append(("faust revokes, acknowledged:", list(c._acked[TP])))
            self._acked.clear()

        async def faust_stop(self):
            events.append("faust stops")

        batches = StageBatches({"hits": hits}, {"intel.incident": "hits"})
        monkeypatch.setattr(faust_patches, "_batches", batches)
        revoke, _ = faust_patches._finishing_batches(faust_revoke, faust_stop)
        await batches.submit(c, "hits", {TP: recs(4, 5)}, 7, 0, None)
        await asyncio.sleep(0)  # the batch begins
        await revoke(c, {TP})
        assert events == ["flow stopped", "batch done", ("faust revokes, acknowledged:", [4, 5])]

    asyncio.run(main())


def test_the_partitions_just_served_go_to_the_back_of_aiokafkas_queue_so_partitions_take_turns():
    from collections import OrderedDict

    big, small, other = FaustTP("intel.incident", 0), FaustTP("intel.match.requests", 3), FaustTP("intel.alert", 1)
    queued = OrderedDict([(big, "37,000 records left"), (small, "11 records"), (other, "5 records")])
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_fetcher=SimpleNamespace(_records=queued))))
    faust_patches._rotate(consumer, {big: recs(1, 2)})  # served from, not emptied
    assert list(queued) == [small, other, big]
    faust_patches._rotate(consumer, {FaustTP("intel.wanted", 2): recs(7)})  # emptied (no longer queued): nothing moves
    assert list(queued) == [small, other, big]


def test_a_fetch_larger_than_the_batch_size_reaches_the_stage_in_batches_of_at_most_that_size():
    # a fetch holds up to broker_max_poll_records (5,000): in one batch, the dedupe stage's match
    # request of one partition outgrew the broker's 1 MB limit and the worker exited
    from stream_jobs.app import _batch_handler

    seen, steps = [], []

    class Runner:
        name = "dedupe"

        def start(self, stage, state, batch):
            seen.append([m.offset for m in batch])
            steps.append(("start", len(seen)))
            return len(seen)

        async def finish(self, n):
            steps.append(("delivered", n))

    records = [SimpleNamespace(topic="intel.incident", partition=2, offset=o, key=b"k", value=b"v", headers=None)
               for o in range(4500)]

    async def main():
        last = await _batch_handler(Runner(), None, None, 2000)(records)
        steps.append("handler returned")
        await last  # what the loop awaits before it acknowledges the records

    asyncio.run(main())
    assert [len(b) for b in seen] == [2000, 2000, 500]
    assert [o for b in seen for o in b] == list(range(4500))  # in fetch order, each once
    # each part starts while the one before is delivered; the last is delivered after the handler returned
    assert steps == [("start", 1), ("start", 2), ("delivered", 1), ("start", 3), ("delivered", 2),
                     "handler returned", ("delivered", 3)]


def test_a_seek_drops_the_partitions_queued_records_and_a_revoke_waits_only_for_the_batch_begun(monkeypatch):
    async def main():
        release = asyncio.Event()
        handled = []

        async def dedupe(records):
            await release.wait()
            handled.extend((r.topic, r.offset) for r in records)

        other = FaustTP("intel.alert", 0)
        c = with_generation(FakeConsumer())
        c.app.conf = SimpleNamespace(broker_session_timeout=10.0)
        c.stop_flow = lambda: None
        batches = StageBatches({"dedupe": dedupe}, {"intel.incident": "dedupe", "intel.alert": "dedupe"})
        monkeypatch.setattr(faust_patches, "_batches", batches)
        await batches.submit(c, "dedupe", {TP: recs(1)}, 7, 0, None)
        await asyncio.sleep(0)  # begun: delivering
        await batches.submit(c, "dedupe", {TP: recs(2, 3), other: recs(8, topic=other.topic)}, 7, 0, None)
        # the watchdog seeks one partition back: its queued records would be read twice
        assert batches.drop_queued("a seek", TP) == 2
        assert batches.queued_records["dedupe"] == 1
        await batches.submit(c, "dedupe", {other: recs(9, topic=other.topic)}, 7, 0, None)

        async def faust_revoke(self, revoked):
            handled.append("faust revokes")

        revoke, _ = faust_patches._finishing_batches(faust_revoke, None)
        task = asyncio.ensure_future(revoke(c, {TP, other}))
        await asyncio.sleep(0.01)
        assert not task.done()  # waits for the batch begun
        release.set()
        await asyncio.wait_for(task, 1)
        # the begun batch finished and was acknowledged; the queued ones were dropped, unacknowledged
        assert handled == [("intel.incident", 1), "faust revokes"]
        assert c._acked[TP] == [1] and c._acked[other] == [] and batches.dropped == 4

    asyncio.run(main())


def test_a_stage_starts_its_next_batch_while_the_one_before_is_delivered_and_acknowledges_in_order():
    async def main():
        delivered = {1: asyncio.Event(), 3: asyncio.Event()}
        steps = []

        async def hits(records):
            first = records[0].offset
            steps.append(("processed", first))

            async def finishing():
                await delivered[first].wait()
                steps.append(("delivered", first))
            return finishing()

        c = with_generation(FakeConsumer())
        batches = StageBatches({"hits": hits}, {"intel.hit.candidates": "hits"})
        await batches.submit(c, "hits", {TP_M: recs(1, 2, topic=TP_M.topic)}, 7, 0, None)
        await asyncio.sleep(0)
        await batches.submit(c, "hits", {TP_M: recs(3, topic=TP_M.topic)}, 7, 0, None)
        for _ in range(5):
            await asyncio.sleep(0)
        # the second batch was processed while the first waits for its delivery; nothing acknowledged
        assert steps == [("processed", 1), ("processed", 3)] and c._acked[TP_M] == []
        delivered[3].set()  # the later batch's reports come first: still acknowledged after the first
        for _ in range(5):
            await asyncio.sleep(0)
        assert c._acked[TP_M] == []
        delivered[1].set()
        assert await batches.wait_in_flight(1)
        assert c._acked[TP_M] == [1, 2, 3]

    asyncio.run(main())


def test_a_stage_keeps_up_to_its_depth_of_batches_in_delivery_and_acknowledges_them_in_order():
    """Three batches processed while none is delivered yet (depth 3); the fourth waits for the
    oldest delivery. Before, the second batch waited for the first's delivery round trips before
    a third could begin."""
    async def main():
        delivered = {o: asyncio.Event() for o in (1, 2, 3, 4)}
        processed = []

        async def hits(records):
            first = records[0].offset
            processed.append(first)

            async def finishing():
                await delivered[first].wait()
            return finishing()

        async def settle():
            for _ in range(10):
                await asyncio.sleep(0)

        c = with_generation(FakeConsumer())
        batches = StageBatches({"hits": hits}, {"intel.hit.candidates": "hits"}, depth=3)
        for o in (1, 2, 3, 4):
            await batches.submit(c, "hits", {TP_M: recs(o, topic=TP_M.topic)}, 7, 0, None)
            await settle()
        assert processed == [1, 2, 3] and c._acked[TP_M] == []  # three on their way, the fourth waits
        delivered[3].set()  # a later batch's reports first: nothing acknowledged, still no room
        await settle()
        assert processed == [1, 2, 3] and c._acked[TP_M] == []
        delivered[1].set()  # the oldest: acknowledged, with room for the fourth
        await settle()
        assert processed == [1, 2, 3, 4] and c._acked[TP_M] == [1]
        delivered[2].set()
        await settle()
        assert c._acked[TP_M] == [1, 2, 3]
        delivered[4].set()
        assert await batches.wait_in_flight(1)
        assert c._acked[TP_M] == [1, 2, 3, 4]

    asyncio.run(main())


# --- the loop itself, over a fake of faust's consumer: faust's own path (the changelogs in a recovery) ----------

CHANGELOG = FaustTP("intelbus-jobs-index-changelog", 0)


class LoopConsumer:
    """What `_drain_batch_loop` uses of faust's consumer. `fetch(consumer)` plays one
    `_wait_next_records` (it may play a rebalance too); the loop stops after `fetches` of them."""

    def __init__(self, fetches, *, generation=3):
        self.fetches = list(fetches)
        self.delivered = []
        self.flow_active = True
        self.should_stop = False
        self._stopped = asyncio.Event()
        self._read_offset = defaultdict(lambda: None)
        self._buffered_partitions = set()
        self._commit_every = None
        self._n_acked = 0
        self.suspend_flow = asyncio.Event()
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(consumer_generation_id=generation,
                                   topics=SimpleNamespace(acks_enabled_for=lambda topic: False),
                                   monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: None))

        async def callback(message):
            self.delivered.append((message.tp.topic, message.offset))
            if self.on_delivery is not None:
                self.on_delivery(self, message)

        self.callback, self.on_delivery = callback, None

    async def _wait_next_records(self, timeout):
        if not self.fetches:
            self._stopped.set()
            return None, None
        return self.fetches.pop(0)(self)

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)

    def _to_message(self, tp, record):
        return SimpleNamespace(tp=tp, topic=tp.topic, offset=record.offset)

    def highwater(self, tp):
        return 1000

    async def wait_first(self, *coros):
        await coros[0]
        coros[1].close()

    async def _add_gap(self, tp, a, b):
        pass


def run_loop(consumer):
    async def main():
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        await faust_patches._drain_batch_loop(consumer, fetcher)

    asyncio.run(main())


def test_changelog_records_of_a_recovery_that_began_while_the_fetch_waited_are_handed_to_faust(monkeypatch):
    """The hang of 2026-12-01: a worker's fetch was waiting when the second worker left; the rebalance
    (generation 3 to 4) began, its recovery sought the changelogs and resumed them, and the fetch
    returned their records. Judged by the generation from before the fetch, they were dropped, the
    recovery never reached the changelogs' highwater, and the worker stayed "rebalancing" for good."""
    monkeypatch.setattr(faust_patches, "_batches", StageBatches({}, {"intel.incident": "dedupe"}))

    def fetch_across_a_rebalance(consumer):
        consumer.app.consumer_generation_id = 4  # set by aiokafka's thread while the fetch waited
        return {CHANGELOG: recs(12232, 12233, 12234, topic=CHANGELOG.topic)}, {CHANGELOG}

    consumer = LoopConsumer([fetch_across_a_rebalance])
    run_loop(consumer)
    assert consumer.delivered == [(CHANGELOG.topic, 12232), (CHANGELOG.topic, 12233), (CHANGELOG.topic, 12234)]
    assert consumer._read_offset[CHANGELOG] == 12234


def test_changelog_records_are_not_handed_over_once_a_rebalance_begins_while_they_are(monkeypatch):
    """The control: a rebalance that begins while a fetch's records are being handed over stops them,
    as in faust's own loop (the recovery it starts seeks the changelogs back to the tables' offsets)."""
    monkeypatch.setattr(faust_patches, "_batches", StageBatches({}, {"intel.incident": "dedupe"}))
    consumer = LoopConsumer([lambda c: ({CHANGELOG: recs(5, 6, 7, topic=CHANGELOG.topic)}, {CHANGELOG})])

    def rebalance_after_the_first(c, message):
        c.app.consumer_generation_id += 1

    consumer.on_delivery = rebalance_after_the_first
    run_loop(consumer)
    assert consumer.delivered == [(CHANGELOG.topic, 5)]


def test_the_loop_says_how_long_a_record_waited_before_and_after_it_reached_its_stage(monkeypatch):
    """`intelbus_jobs_arrival_seconds`: fetched = the record's Kafka timestamp to the hand-over
    (each partition's oldest record of the fetch), queued = the hand-over to the batch's start,
    here held up by the batch before it (depth 1)."""
    async def main():
        release = asyncio.Event()
        seen = []

        async def dedupe(records):
            seen.append([r.offset for r in records])
            if len(seen) == 1:
                await release.wait()

        observed = []
        monkeypatch.setattr(faust_patches, "_wall_ms", lambda: 1_000_250.0)
        c = with_generation(FakeConsumer(committed=10))
        c._read_offset[TP] = 9
        batches = StageBatches({"dedupe": dedupe}, {"intel.incident": "dedupe"}, depth=1,
                               observe=lambda stage, step, s: observed.append((stage, step, round(s, 3))))
        first = recs(10, 11)
        first[0].timestamp, first[1].timestamp = 1_000_000, 1_000_200
        await batches.submit(c, "dedupe", {TP: first}, 7, batches.marks.now(), {TP})
        await asyncio.sleep(0)
        assert observed[0] == ("dedupe", "fetched", 0.25)  # the oldest record's wait, not the newest's
        second = recs(12)
        second[0].timestamp = 1_000_240
        await batches.submit(c, "dedupe", {TP: second}, 7, batches.marks.now(), {TP})
        await asyncio.sleep(0.05)
        assert seen == [[10, 11]]  # the second batch waits for the first (depth 1)
        release.set()
        assert await batches.wait_in_flight(1)
        assert seen == [[10, 11], [12]]
        queued = [s for stage, step, s in observed if step == "queued"]
        assert len(queued) == 2 and queued[0] < 0.01 and queued[1] >= 0.04
        assert ("dedupe", "fetched", 0.01) in observed

    asyncio.run(main())
