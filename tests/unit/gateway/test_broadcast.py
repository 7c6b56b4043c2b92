"""The live feed's broadcast path (gateway/events.py `deliver`): a round's ring reads, walks and audits once for the
parked streams of a view group, and each stream's turn only sends what it was given. Without Kafka: a hub with a
buffer filled by the test, a real Bell, real LiveStreams, a journal that records what it was given and when."""
from __future__ import annotations

import asyncio

import pytest

from gateway import events
from gateway.events import AuditBatcher, LiveStream, deliver, sse_item
from gateway.hub import HIT_TOPIC, Bell, Hub, Wake, decode_token, walk
from tests.unit.gateway.test_hub import TPS, FakeLoop, H3, A0, buffer_with, entry, identity_of, position


class Journal:
    """Records each write's lines and whether any stream already had its batch when the write was made."""

    def __init__(self, streams=(), refuse=False):
        self.writes, self.streams, self.refuse = [], list(streams), refuse
        self.handed_before_write = False

    def append(self, lines, records=None):
        if self.refuse:
            raise RuntimeError("the audit log has taken no row for 60 s")
        self.handed_before_write |= any(s.mailbox is not None for s in self.streams)
        self.writes.append(list(lines))


def stream_of(hub, batcher, pos, view="130000"):
    s = LiveStream(None, batcher, hub, None, identity_of("130000"), view, "live wall", TPS, dict(pos), 0)
    s._may_see = lambda e: e.scope.get("visible", True)
    s.cursor = hub.buffer.start_seq(pos)
    return s


def setup(refuse=False):
    hub = Hub({}, None)
    hub.buffer = buffer_with([])
    journal = Journal(refuse=refuse)
    batcher = AuditBatcher(services=None, journal=journal)
    hub.deliver = lambda streams: deliver(batcher, streams)
    bell = Bell(hub, FakeLoop(), interval_s=0)
    return hub, journal, batcher, bell


def park(bell, s):
    w = Wake()
    w.parked = s
    bell.add(w, s.vkey, TPS, s._may_see)
    return w


def expected_text(view, pos, entries):
    return "".join(sse_item(e, t) for e, t in walk(view, dict(pos), entries, lambda e: e.scope.get("visible", True)))


def test_a_round_serves_the_parked_streams_of_a_view_with_one_journal_write_before_any_is_handed_its_batch():
    hub, journal, batcher, bell = setup()
    for i in range(2):  # already in the buffer: the third stream is past them, out of step with the first two
        hub.buffer.append(entry(H3, i), H3, i)
    a, b = stream_of(hub, batcher, position()), stream_of(hub, batcher, position())
    c = stream_of(hub, batcher, position(hit=2))
    journal.streams = [a, b, c]
    wakes = [park(bell, s) for s in (a, b, c)]
    fresh = [entry(H3, 2), entry(A0, 0, visible=False), entry(H3, 3)]
    for e in fresh:
        hub.buffer.append(e, e.tp, e.offset)
    bell.arrived(fresh, hub.buffer.end_seq)

    assert len(journal.writes) == 1 and len(journal.writes[0]) == 3  # one write, a line per stream
    assert not journal.handed_before_write                             # audited before any batch is handed over
    assert sorted(s.id for s in (a, b, c) for line in journal.writes[0] if s.id in line) == sorted([a.id, b.id, c.id])
    everything = hub.buffer.entries
    assert a.mailbox[1] == b.mailbox[1] == expected_text("130000", position(), everything)
    assert [e.offset for e, _, _ in a.mailbox[0]] == [0, 1, 2, 3]      # the invisible alert is not shown
    assert c.mailbox[1] == expected_text("130000", position(hit=2), everything)
    assert [e.offset for e, _, _ in c.mailbox[0]] == [2, 3]            # only what came after its position
    # each stream's position is the one its last item's id resumes from; past the invisible alert too
    assert decode_token(a.mailbox[0][-1][1], "130000", TPS) == a.position == position(hit=4, a0=1)
    assert a.cursor == c.cursor == hub.buffer.end_seq
    assert all(w.is_set() for w in wakes)


def test_a_refusing_journal_hands_nothing_over_and_moves_no_stream():
    hub, journal, batcher, bell = setup(refuse=True)
    a = stream_of(hub, batcher, position())
    w = park(bell, a)
    e = entry(H3, 0)
    hub.buffer.append(e, H3, 0)
    bell.arrived([e], hub.buffer.end_seq)
    assert a.mailbox is None and a.cursor == 0 and a.position == position()  # its own path will refuse and end it
    assert w.is_set()
    # control: the same round with a journal that takes the lines hands the batch over
    journal.refuse = False
    bell.arrived([e], hub.buffer.end_seq)
    assert a.mailbox is not None and a.position == position(hit=1)


def test_with_the_broadcast_off_a_ring_serves_no_stream(monkeypatch):
    monkeypatch.setattr(events, "BROADCAST", False)  # INTELBUS_LIVE_BROADCAST=0: every stream in its own turn
    hub, journal, batcher, bell = setup()
    a = stream_of(hub, batcher, position())
    w = park(bell, a)
    e = entry(H3, 0)
    hub.buffer.append(e, H3, 0)
    bell.arrived([e], hub.buffer.end_seq)
    assert a.mailbox is None and journal.writes == [] and w.is_set()


class Request:
    async def is_disconnected(self):
        return False


@pytest.mark.parametrize("broadcast", [True, False])
def test_a_live_stream_sends_each_item_once_audited_first_whichever_path(monkeypatch, broadcast):
    monkeypatch.setattr(events, "BROADCAST", broadcast)

    async def main():
        hub, journal, batcher, _ = setup()
        served = []
        hub.deliver = lambda streams: served.append(deliver(batcher, streams)) or served[-1]
        hub.started.set()
        hub.ready.set()
        s = stream_of(hub, batcher, position())
        journal.streams = [s]
        gen = s.run(Request())
        assert await gen.__anext__() == "retry: 2000\n\n"
        got = []

        async def read():
            while True:
                got.append(await gen.__anext__())
                got.append(len(journal.writes))  # journal writes made by the time the chunk is sent

        reader = asyncio.create_task(read())
        for rnd in range(3):
            await asyncio.sleep(0.05)  # the stream waits (parked, if broadcast)
            fresh = [entry(H3, 2 * rnd), entry(H3, 2 * rnd + 1)]
            with hub.lock:
                for e in fresh:
                    hub.buffer.append(e, e.tp, e.offset)
                end = hub.buffer.end_seq
            hub._announce(fresh, end)
        await asyncio.sleep(0.3)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await gen.aclose()
        return hub, journal, s, got, served

    hub, journal, s, got, served = asyncio.run(main())
    assert sum(served) == (3 if broadcast else 0)  # the path taken: batches handed over by the rings, or none
    chunks, writes_then = got[0::2], got[1::2]
    text = "".join(chunks)
    assert text == expected_text("130000", position(), hub.buffer.entries)  # each of the six once, in order
    assert len(chunks) == 3 and writes_then == [1, 2, 3]  # a batch a round, its line written before it was sent
    assert s.position == position(hit=6) and s.shown == 6


def test_the_send_stamp_gives_the_bench_each_hit_s_poll_time_and_the_round_s_times():
    import json

    from bench.bench_fanout import parse_batch
    from gateway.events import send_stamp
    from gateway.hub import Entry

    def item(kind, offset, polled, **data):
        e = Entry(HIT_TOPIC if kind == "hit" else "intel.alert.unique", 3, offset, 1_000, kind, {},
                  json.dumps({"feed_item": kind, **data}), "", polled=polled)
        return (e, f"tok{offset}", sse_item(e, f"tok{offset}"))

    # an alert between the hits (it names a hit id too): the hits keep their own poll times
    items = [item("hit", 0, 100.001, hit_id="h-a"), item("alert", 1, 100.002, hit_id="h-x"),
             item("hit", 2, 100.003, hit_id="h-b")]
    text = send_stamp(items, rung=100.01, turn=100.02, now=100.03) + "".join(t for _, _, t in items)
    assert parse_batch(text) == [("h-a", 100.03, 100.001, (100.01, 100.02)), ("h-b", 100.03, 100.003, (100.01, 100.02))]
    # a chunk without a stamp (the default gateway): hits, no times
    assert parse_batch("".join(t for _, _, t in items)) == [("h-a", None, None, None), ("h-b", None, None, None)]


def test_a_live_message_is_decoded_on_the_loop_when_a_round_first_looks_at_it_and_kept_as_light_as_before():
    import json

    from identity.entitlement import Entitlement
    from schemas.regions import load_regions

    from gateway.hub import WORKFLOW_TOPIC, lazy_entry, rendered, visible
    from tests.unit.gateway.test_hub import workflow_record

    class Codec:
        decoded = 0

        def decode(self, value):
            Codec.decoded += 1
            return workflow_record(["120000"]) if value == b"wf" else {
                "hit_id": "h-1", "classification": "INTERNAL", "notify_regions": ["120000"], "record": "{}",
                "trigger": "{}"} if value == b"hit" else {"hit_id": "h-2", "classification": "INTERNAL"}

    tianjin = Entitlement(identity_of("120000"), load_regions())
    hit, flow = lazy_entry(HIT_TOPIC, 3, 1, 1000, Codec(), b"hit"), lazy_entry(WORKFLOW_TOPIC, 0, 1, 1000, Codec(), b"wf")
    hit.polled = flow.polled = 100.0  # appended by the caught-up hub (INTELBUS_LIVE_HUB_LAZY=1): only its bytes held
    assert Codec.decoded == 0
    assert visible(hit, tianjin, "120000") and visible(flow, tianjin, "120000") and Codec.decoded == 2
    # the hit is rendered at once and keeps no decoded record; the workflow item keeps its bytes until shown
    assert hit.record is None and json.loads(hit.data)["hit_id"] == "h-1" and hit.ident == "h-1"
    assert flow.record is None and flow.payload is not None and flow.data == ""
    assert json.loads(rendered(flow).data)["item_id"] == "R-1"
    # one that cannot be rendered is shown to no one (its position still moves past it), and the round goes on
    odd = lazy_entry(HIT_TOPIC, 3, 2, 1000, Codec(), b"no record")
    odd.polled = 100.0
    assert not visible(odd, tianjin, "120000") and odd.kind == "none"
