"""The live feed's decisions without Kafka: position tokens, what the buffer covers, slicing, resuming."""
from __future__ import annotations

import pytest

from gateway.hub import (ALERT_TOPIC, HIT_TOPIC, WORKFLOW_TOPIC, Buffer, Entry, TokenError, advance, complete_position,
                         decode_token, encode_token, entry_of, lazy_entry, rendered, resume_source, stream_partitions,
                         visible, walk)

TPS = stream_partitions(3, 6)
H3, A0, A1 = (HIT_TOPIC, 3), (ALERT_TOPIC, 0), (ALERT_TOPIC, 1)


def position(hit=0, **alerts):
    pos = {tp: 0 for tp in TPS}
    pos[H3] = hit
    for k, v in alerts.items():
        pos[(ALERT_TOPIC, int(k[1:]))] = v
    return pos


def entry(tp, offset, ts_ms=1_000, kind=None, visible=True):
    kind = kind or ("hit" if tp[0] == HIT_TOPIC else "alert")
    return Entry(tp[0], tp[1], offset, ts_ms, kind, {"visible": visible}, f'{{"o": {offset}}}', f"id-{offset}")


def test_token_round_trip_is_short_and_url_safe():
    pos = position(hit=123_456_789, a0=5, a5=1_000_000)
    token = encode_token("130000", pos)
    assert decode_token(token, "130000", TPS) == pos
    assert len(token) < 70 and all(c.isalnum() or c in ".-_" for c in token)


@pytest.mark.parametrize("mangle, reason", [
    (lambda t: "hello", "malformed"),
    (lambda t: "", "malformed"),
    (lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"), "does not check out"),
    (lambda t: t.replace(".1.", ".2.", 1) if ".1." in t else "1." + t, "malformed"),
])
def test_malformed_or_altered_tokens_are_refused(mangle, reason):
    token = encode_token("130000", position(hit=7))
    with pytest.raises(TokenError, match=reason):
        decode_token(mangle(token), "130000", TPS)


def test_a_token_of_another_view_or_layout_is_refused():
    token = encode_token("130000", position(hit=7))
    with pytest.raises(TokenError, match="belongs to the view of region 130000, not 120000"):
        decode_token(token, "120000", stream_partitions(1, 6))
    with pytest.raises(TokenError, match="another partition layout"):
        decode_token(token, "130000", stream_partitions(3, 8))
    with pytest.raises(TokenError, match="another partition layout"):
        decode_token(token, "130000", stream_partitions(2, 6))


def buffer_with(entries, starts=None, **kw):
    b = Buffer(starts or {tp: 0 for tp in TPS}, start_ms=0, **kw)
    for e in entries:
        b.append(e, e.tp, e.offset)
    return b


def test_advance_moves_the_position_past_every_entry_and_tokens_resume_exactly_after_each_item():
    entries = [entry(H3, 0), entry(A0, 0, visible=False), entry((HIT_TOPIC, 1), 0), entry(A0, 1), entry(H3, 1)]
    pos = position()
    shown = advance(pos, entries, lambda e: e.scope["visible"])
    assert [(e.tp, e.offset) for e, _ in shown] == [(H3, 0), (A0, 1), (H3, 1)]
    assert shown[0][1][H3] == 1 and shown[0][1][A0] == 0      # after the first item, before the invisible alert
    assert shown[1][1][A0] == 2 and pos[H3] == 2 and pos[A0] == 2
    assert (HIT_TOPIC, 1) not in pos                           # another province's partition is not this stream's
    # resuming after the second item: exactly the third, again
    again = advance(dict(shown[1][1]), entries, lambda e: e.scope["visible"])
    assert [(e.tp, e.offset) for e, _ in again] == [(H3, 1)]
    assert advance(dict(shown[2][1]), entries, lambda e: True) == []  # after the last: nothing twice


def test_buffer_slices_from_a_position_and_reports_an_evicted_cursor():
    entries = [entry(H3, i, ts_ms=1000 + i) for i in range(10)] + [entry(A1, i, ts_ms=2000 + i) for i in range(5)]
    b = buffer_with(entries)
    pos = position(hit=4, a1=3)
    cursor = b.start_seq(pos)
    got, nxt = b.read(cursor)
    assert [(e.tp, e.offset) for e, _ in advance(pos, got, lambda e: True)] == \
        [(H3, i) for i in range(4, 10)] + [(A1, 3), (A1, 4)]
    assert nxt == b.end_seq and b.read(nxt) == ([], nxt)
    b.max_items = 5
    assert b.evict(now_ms=3000) == 10
    assert b.bases[H3] == 10 and b.read(cursor) is None
    assert not b.covers(position(hit=4)) and b.covers(position(hit=10, a1=0))


def test_buffer_evicts_by_age_in_chunks_and_tracks_what_time_it_covers():
    b = buffer_with([entry(A0, i, ts_ms=i) for i in range(1500)], window_ms=1000)
    assert b.evict(now_ms=1200) == 0          # 199 too old: not worth shifting the list yet
    assert b.evict(now_ms=2100) == 1100       # 1100 too old
    assert b.bases[A0] == 1100 and b.covered_from_ms[A0] == 1099
    assert b.covers_time([A0], 1099) and not b.covers_time([A0], 1098)
    assert b.offsets_at([A0, A1], 1300) == {A0: 1300, A1: 0}
    assert b.offsets_at([A0], 10_000) == {A0: 1500}  # nothing that late: from the end


def test_resume_decision():
    starts = {tp: 100 for tp in TPS}
    b = buffer_with([], starts=starts)
    assert resume_source(b, {tp: 100 for tp in TPS}) == "hub"
    assert resume_source(b, {tp: 150 for tp in TPS}) == "hub"        # ahead of what the hub has read: it waits
    assert resume_source(b, {**starts, A1: 99}) == "catch-up"       # one partition older than the buffer
    assert resume_source(None, starts) == "catch-up"                 # no hub (it could not start)
    assert resume_source(b, {**starts, (HIT_TOPIC, 9): 100}) == "catch-up"  # a partition the hub does not read


def test_catch_up_then_hub_gives_no_gap_and_no_duplicate():
    """A stream reads offsets 0..4 privately, then switches to a buffer holding 3..9: each once."""
    log = [entry(H3, i) for i in range(10)]
    b = buffer_with(log[3:], starts={**{tp: 0 for tp in TPS}, H3: 3})
    pos = position()
    seen = [e.offset for e, _ in advance(pos, log[:5], lambda e: True)]   # the catch-up reader's polls
    assert resume_source(b, pos) == "hub"
    got, _ = b.read(b.start_seq(pos))
    seen += [e.offset for e, _ in advance(pos, got, lambda e: True)]
    assert seen == list(range(10))


# --- the live feed's audit journal records (gateway/events.py) ------------------------------------

def test_a_stream_s_fast_journal_lines_are_the_rows_audit_row_makes_and_merge_per_stream():
    import json

    from gateway.audit import AuditEntry
    from gateway.events import JournalLines, audit_record, merge_audit_records
    from identity.principals import Identity

    who = Identity(name="hb-cc", kind="person", region="130000", branch="COMMAND_CENTER",
                   roles=frozenset({"command_center"}), clearance="INTERNAL", token_id="jti-1")
    template = AuditEntry(action="feed", identity=who, region="130822", purpose="墙 live wall", query_name="events",
                          query_text="live feed of 130822 (SSE)")
    params = {"hit_ids": ["h1", "h2"], "alert_event_ids": [], "through": "1.130822.3.a.0-0-0-0-0-0.0"}
    fast = JournalLines("s1", template).line(params, 2, now=1_800_000_000.25)
    slow = audit_record("s1", AuditEntry(**{**template.__dict__, "params": params, "row_count": 2}), now=1_800_000_000.25)
    assert json.loads(fast) == json.loads(slow)
    second = JournalLines("s1", template).line({**params, "hit_ids": ["h3"], "through": "t2"}, 1, now=1_800_000_001.0)
    other = JournalLines("s2", template).line(params, 2, now=1_800_000_000.5)
    rows = merge_audit_records([json.loads(x) for x in (fast, second, other)])
    assert len(rows) == 2  # one row per stream and shipment
    first = dict(zip(("at", "at_ms", "user", "region"), rows[0][:4]))
    assert first["at_ms"] == 1_800_000_000_250 and first["user"] == "hb-cc" and first["region"] == "130822"
    merged = json.loads(rows[0][8])
    assert merged["hit_ids"] == ["h1", "h2", "h3"] and merged["through"] == "t2" and merged["batches"] == 2
    assert rows[0][9] == 3 and rows[1][9] == 2


# --- workflow items in the live feed --------------------------------------------------------------

WTPS = stream_partitions(3, 6, 6)
W0, W4 = (WORKFLOW_TOPIC, 0), (WORKFLOW_TOPIC, 4)


def identity_of(region, clearance="INTERNAL"):
    from identity.principals import Identity

    return Identity(name=f"cc-{region}", kind="person", region=region, branch="COMMAND_CENTER",
                    roles=frozenset({"command_center"}), clearance=clearance, token_id="jti")


def workflow_record(notify, classification="INTERNAL", event_type="SENT", to=("120000/COMMAND_CENTER",)):
    import uuid
    from datetime import datetime, timezone

    return {"event_id": uuid.uuid4(), "item_id": "R-1", "item_kind": "ASSISTANCE_REQUEST", "event_type": event_type,
            "seq": 1, "at": datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc), "status": "OPEN", "actor": "hb-cc",
            "actor_agency": "130000/COMMAND_CENTER", "party": None, "party_status": None, "to": list(to),
            "notify": list(notify), "deadline": None, "due_at": datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc),
            "scheduled_at": None, "level": 0, "code": "URGENT", "text": "该车是否在蓟州辖区?", "minutes": None,
            "refs": [], "command_id": "c-1", "classification": classification}


def test_a_workflow_token_round_trips_and_names_every_workflow_partition():
    pos = {tp: i * 1000 for i, tp in enumerate(WTPS)}
    token = encode_token("120000", pos)
    assert token.startswith("2.120000.3.") and len(token) < 100
    assert decode_token(token, "120000", WTPS) == pos
    with pytest.raises(TokenError, match="another partition layout"):  # the bus grew a workflow partition
        decode_token(token, "120000", stream_partitions(3, 6, 7))


def test_a_version_1_token_resumes_hits_and_alerts_and_starts_workflow_where_the_hub_is():
    import hashlib

    body = "1.120000.3.a.0-0-0-0-0-1"  # what a wall held before the feed carried workflow items
    old = f"{body}.{hashlib.blake2s(body.encode(), digest_size=4).hexdigest()}"
    pos = decode_token(old, "120000", WTPS)
    assert pos[H3] == 10 and pos[(ALERT_TOPIC, 5)] == 1 and W0 not in pos
    ends = {**{tp: 0 for tp in WTPS}, W0: 77, W4: 5}
    full = complete_position(pos, WTPS, ends)
    assert full[W0] == 77 and full[W4] == 5 and full[H3] == 10 and sorted(full) == sorted(WTPS)
    with pytest.raises(TokenError, match="does not check out"):
        decode_token(old[:-1] + ("0" if old[-1] != "0" else "1"), "120000", WTPS)


def test_workflow_items_go_to_the_agencies_the_workflow_api_shows_them_to():
    from identity.entitlement import Entitlement
    from schemas.regions import load_regions

    regions = load_regions()
    tianjin, jizhou, jiangsu = (Entitlement(identity_of(r), regions) for r in ("120000", "120119", "320000"))
    secret_tianjin = Entitlement(identity_of("120000", "SECRET"), regions)
    to_tianjin = entry_of(WORKFLOW_TOPIC, 0, 0, 1000, workflow_record(["120000", "130000"]))
    to_jizhou = entry_of(WORKFLOW_TOPIC, 1, 0, 1000, workflow_record(["120119"]))
    secret = entry_of(WORKFLOW_TOPIC, 2, 0, 1000, workflow_record(["120000"], classification="SECRET"))
    assert visible(to_tianjin, tianjin, "120000") and not visible(to_tianjin, jiangsu, "320000")
    assert visible(to_jizhou, tianjin, "120000")           # a province sees what its counties are sent
    assert visible(to_jizhou, jizhou, "120119") and not visible(to_tianjin, jizhou, "120119")  # not the other way
    assert not visible(secret, tianjin, "120000") and visible(secret, secret_tianjin, "120000")
    # the API's rule, asked directly, agrees on each
    from gateway.feed import may_see_workflow
    for ent, view in ((tianjin, "120000"), (jiangsu, "320000"), (jizhou, "120119")):
        for e, rec in ((to_tianjin, ["120000", "130000"]), (to_jizhou, ["120119"])):
            assert visible(e, ent, view) == regions.may_see(view, rec) == may_see_workflow(
                ent, {"classification": "INTERNAL", "notify": rec}, view)


def test_a_workflow_item_is_rendered_as_an_sse_workflow_event_with_times_in_ms():
    import json

    from gateway.events import sse_item

    e = rendered(entry_of(WORKFLOW_TOPIC, 4, 9, 1000, workflow_record(["120000"])))
    item = json.loads(e.data)
    assert item["feed_item"] == "workflow" and item["item_id"] == "R-1" and item["event_type"] == "SENT"
    from datetime import datetime, timezone
    assert item["at_ms"] == datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc).timestamp() * 1000
    assert item["due_ms"] - item["at_ms"] == 3_600_000
    assert "at" not in item and "due_at" not in item and e.ident == item["event_id"]
    text = sse_item(e, "tok")
    assert text.startswith("id: tok\nevent: workflow\ndata: {") and text.endswith("}\n\n") and text.count("\n") == 4


def test_resuming_after_any_item_gives_the_rest_of_both_topics_once():
    """Hits and workflow items interleaved: after each item's token, exactly the items after it, whichever
    topic it was on; the buffer's order is the order read, not the topics' own."""
    log = [entry(H3, 0), entry(W0, 0, kind="workflow"), entry(W4, 0, kind="workflow"), entry(H3, 1),
           entry(W0, 1, kind="workflow", visible=False), entry(A0, 0), entry(W4, 1, kind="workflow"), entry(H3, 2)]
    b = buffer_with(log, starts={tp: 0 for tp in WTPS})
    may = lambda e: e.scope["visible"]  # noqa: E731
    start = {tp: 0 for tp in WTPS}
    whole = advance(dict(start), b.read(b.start_seq(start))[0], may)
    names = [(e.tp, e.offset) for e, _ in whole]
    assert (W0, 1) not in names and len(names) == 7
    for i, (_, after) in enumerate(whole):
        token = encode_token("120000", after)
        pos = decode_token(token, "120000", WTPS)
        assert resume_source(b, pos) == "hub"
        rest = advance(pos, b.read(b.start_seq(pos))[0], may)
        assert [(e.tp, e.offset) for e, _ in rest] == names[i + 1:]


def test_intelbus_feed_follow_prints_a_workflow_item_as_one_line_with_cst_times():
    from gateway.feed import render_workflow_line, workflow_for_display
    from schemas.regions import load_regions

    line = render_workflow_line(workflow_for_display(workflow_record(["120000"], event_type="ESCALATED",
                                                                     to=("120000",))), load_regions())
    assert line.startswith("[待办 workflow] 协查请求 ESCALATED 升级 R-1")
    assert "at 2026-11-30 09:00:00 CST" in line and "due 2026-11-30 10:00:00 CST" in line  # 01:00 / 02:00 UTC
    assert "to 120000 天津市" in line and line.endswith("该车是否在蓟州辖区?") and "\n" not in line


def test_walk_gives_each_visible_item_the_token_of_the_position_after_it():
    """The event loop's fast walk (tokens made as the position moves) says exactly what advance + encode_token say."""
    import random

    rnd = random.Random(7)
    tps = [H3] + [(ALERT_TOPIC, p) for p in range(6)] + [(WORKFLOW_TOPIC, p) for p in range(6)]
    log, next_off = [], {tp: rnd.randrange(0, 5000) for tp in tps}
    for _ in range(400):
        tp = rnd.choice(tps + [(HIT_TOPIC, 1)])  # another province's partition too: not this stream's
        next_off[tp] = next_off.get(tp, 0) + rnd.randrange(1, 4)  # gaps: transaction markers
        log.append(entry(tp, next_off[tp], kind="workflow" if tp[0] == WORKFLOW_TOPIC else None,
                         visible=rnd.random() < 0.6))
    start = {tp: 0 for tp in WTPS}
    may = lambda e: e.scope["visible"]  # noqa: E731
    slow_pos, fast_pos = dict(start), dict(start)
    slow = [(e, encode_token("120000", pos)) for e, pos in advance(slow_pos, log, may)]
    fast = walk("120000", fast_pos, log, may)
    assert [(e.tp, e.offset) for e, _ in fast] == [(e.tp, e.offset) for e, _ in slow] and len(fast) > 100
    assert [t for _, t in fast] == [t for _, t in slow]
    assert fast_pos == slow_pos and (HIT_TOPIC, 1) not in fast_pos  # past every entry, invisible ones too


def test_the_streams_of_a_round_read_to_the_same_end_while_the_hub_appends():
    """Between one wake and the next, every stream's read ends where the round's first read ended, so the
    streams of a view stay in step (one shared walk); what the hub appended meanwhile comes with its own wake."""
    from gateway.hub import Hub

    hub = Hub({}, None)
    hub.buffer = buffer_with([entry(H3, i) for i in range(5)])
    hub._wake()
    first, end1 = hub.read(0)
    hub.buffer.append(entry(H3, 5), H3, 5)          # appended during the round, before its wake
    second, end2 = hub.read(0)
    assert end1 == end2 == 5 and [e.offset for e in second] == [0, 1, 2, 3, 4]
    assert hub.read(end1) == ([], 5)                 # nothing more this round: the stream waits for the wake
    hub._wake()
    more, end3 = hub.read(end1)
    assert [e.offset for e in more] == [5] and end3 == 6


def test_a_message_of_the_hub_s_start_is_decoded_only_when_a_stream_looks_at_it():
    import json

    from identity.entitlement import Entitlement
    from schemas.regions import load_regions

    class Codec:
        decoded = 0

        def decode(self, value):
            Codec.decoded += 1
            if value == b"junk":
                raise ValueError("not Avro")
            return workflow_record(["120000"])

    codec = Codec()
    tianjin = Entitlement(identity_of("120000"), load_regions())
    ok = lazy_entry(WORKFLOW_TOPIC, 0, 5, 1000, codec, b"avro")
    bad = lazy_entry(WORKFLOW_TOPIC, 0, 6, 1000, codec, b"junk")
    assert lazy_entry(WORKFLOW_TOPIC, 0, 7, 1000, codec, None) is None       # a tombstone: nothing to hold
    b = buffer_with([ok, bad])
    assert b.start_seq({**{tp: 0 for tp in WTPS}, W0: 6}) == 1 and Codec.decoded == 0  # positions need no decoding
    assert visible(ok, tianjin, "120000") and Codec.decoded == 1
    assert json.loads(rendered(ok).data)["item_id"] == "R-1"
    assert not visible(bad, tianjin, "120000") and bad.kind == "none"           # shown to no one, position moves past
    assert visible(ok, tianjin, "120000") and Codec.decoded == 2                  # once each


# --- rounds: when and whom the hub rings -----------------------------------------------------------

def test_the_ring_is_throttled_on_its_leading_edge():
    from gateway.hub import ring_delay

    assert ring_delay(100.0, None, 0.01) == 0                      # never rung: at once
    assert ring_delay(100.0, 99.5, 0.01) == 0                      # quiet for a while: at once, no added wait
    assert ring_delay(100.004, 100.0, 0.01) == pytest.approx(0.006)  # 4 ms after a ring: at last + 10 ms
    assert ring_delay(100.004, 100.0, 0) == 0                      # 0: every append rings (the old behaviour)


def test_a_round_rings_only_the_groups_that_may_see_one_of_its_entries():
    from gateway.hub import groups_to_ring

    h1 = (HIT_TOPIC, 1)
    groups = {"hebei": (frozenset(WTPS), lambda e: e.scope["visible"]),
              "beijing": (frozenset(stream_partitions(1, 6, 6)), lambda e: e.scope["visible"]),
              "tianjin-workflow-only": (frozenset(stream_partitions(1, 6, 6)),
                                        lambda e: e.kind == "workflow" and e.scope["visible"])}
    hebei_hit = entry(H3, 5)
    assert groups_to_ring([hebei_hit], groups) == ["hebei"]                  # another province's hit rings nobody else
    assert groups_to_ring([entry(h1, 5)], groups) == ["beijing"]
    assert groups_to_ring([entry(W0, 1, kind="workflow", visible=False)], groups) == []  # reminders for no one here
    assert sorted(groups_to_ring([entry(W0, 2, kind="workflow"), entry(A0, 3, visible=False)], groups)) == [
        "beijing", "hebei", "tianjin-workflow-only"]
    assert groups_to_ring([], groups) == []


class FakeLoop:
    def __init__(self):
        self.now, self.timers = 0.0, []

    def time(self):
        return self.now

    def call_later(self, delay, fn):
        self.timers.append((self.now + delay, fn))
        return object()

    def advance(self, to):
        self.now = to
        due, self.timers = [t for t in self.timers if t[0] <= to], [t for t in self.timers if t[0] > to]
        for _, fn in due:
            fn()


def test_a_burst_of_appends_makes_one_ring_per_interval_and_each_round_ends_where_its_entries_end():
    from gateway.hub import Bell, Hub, Wake

    hub, loop = Hub({}, None), FakeLoop()
    hub.buffer = buffer_with([])
    bell = Bell(hub, loop, interval_s=0.01, select=True)
    hebei, beijing = Wake(), Wake()
    bell.add(hebei, ("130000", "INTERNAL"), WTPS, lambda e: e.scope["visible"])
    bell.add(beijing, ("110000", "INTERNAL"), stream_partitions(1, 6, 6), lambda e: e.scope["visible"])

    def append(e):
        hub.buffer.append(e, e.tp, e.offset)
        bell.arrived([e], hub.buffer.end_seq)

    append(entry(H3, 0))                                   # quiet before: rung at once
    assert bell.rings == 1 and hebei.is_set() and not beijing.is_set() and hub.round_end == 1
    hebei.clear()
    for i in range(1, 6):                                  # five appends within the next 5 ms
        loop.now = i / 1000
        append(entry(H3, i))
    assert bell.rings == 1 and not hebei.is_set() and hub.round_end == 1  # held: the streams still read to 1
    assert [e.offset for e in hub.read(0)[0]] == [0]
    loop.advance(0.0101)                                   # one ring for the five, at last ring + 10 ms
    assert bell.rings == 2 and hebei.is_set() and not beijing.is_set() and hub.round_end == 6
    assert [e.offset for e in hub.read(1)[0]] == [1, 2, 3, 4, 5]


def test_without_throttle_and_selection_every_append_rings_every_stream():
    from gateway.hub import Bell, Hub, Wake

    hub, loop = Hub({}, None), FakeLoop()
    hub.buffer = buffer_with([])
    bell = Bell(hub, loop, interval_s=0, select=False)
    wakes = [Wake(), Wake()]
    bell.add(wakes[0], "a", WTPS, lambda e: False)
    bell.add(wakes[1], "b", WTPS, lambda e: False)
    for i in range(3):
        hub.buffer.append(entry(H3, i), H3, i)
        bell.arrived([hub.buffer.entries[-1]], hub.buffer.end_seq)
    assert bell.rings == 3 and bell.rung == 6 and all(w.is_set() for w in wakes)


def test_the_streams_of_a_round_write_their_audit_lines_in_one_journal_write_before_any_sends(monkeypatch):
    import asyncio

    from gateway import events
    from gateway.events import AuditBatcher

    monkeypatch.setattr(events, "AUDIT_GROUP_WRITE", True)  # INTELBUS_LIVE_AUDIT_GROUP=1 (not the default)

    class Journal:
        def __init__(self):
            self.writes = []

        def append(self, lines, records=None):
            self.writes.append(list(lines))

    journal = Journal()
    batcher = AuditBatcher(services=None, journal=journal)
    sent = []

    async def stream(name):
        await batcher.journal_line(f"{name}\n")
        sent.append((name, len(journal.writes)))  # what was written when this stream sends

    async def main():
        await asyncio.gather(*(stream(f"s{i}") for i in range(200)))  # woken by the same round
        await stream("late")                                          # a later round: a write of its own

    asyncio.run(main())
    assert journal.writes[0] == [f"s{i}\n" for i in range(200)] and journal.writes[1] == ["late\n"]
    assert all(n >= 1 for _, n in sent[:200]) and sent[-1] == ("late", 2)  # none sent before its line was written


def test_the_shipper_s_in_memory_records_merge_to_the_rows_its_journal_lines_give():
    import json

    from gateway.audit import AuditEntry
    from gateway.events import JournalLines, merge_audit_records

    template = AuditEntry(action="feed", identity=identity_of("130000"), region="130822", purpose="live wall",
                          query_name="events", query_text="live feed of 130822 (SSE)")
    shared = {"hit_ids": ["h1"], "alert_event_ids": [], "workflow_event_ids": [], "through": "t1"}
    batches = [("s1", shared, 1, 1_800_000_000_000), ("s2", shared, 1, 1_800_000_000_100),
               ("s1", {**shared, "hit_ids": ["h2", "h3"], "through": "t2"}, 2, 1_800_000_000_900)]
    makers = {s: JournalLines(s, template) for s in ("s1", "s2")}
    from_lines = merge_audit_records([json.loads(makers[s].line(p, n, now=at / 1000)) for s, p, n, at in batches])
    from_records = merge_audit_records([makers[s].record_of(p, n, at) for s, p, n, at in batches])
    assert from_records == from_lines and len(from_lines) == 2
    assert json.loads(from_records[0][8])["hit_ids"] == ["h1", "h2", "h3"] and from_records[0][9] == 3
    assert shared["hit_ids"] == ["h1"]  # the streams' shared params are not changed by the merge


class _Msg:
    """What confluent-kafka's Message gives the hub: topic, key."""

    def __init__(self, topic, key):
        self._topic, self._key = topic, key

    def topic(self):
        return self._topic

    def key(self):
        return self._key


def test_a_view_shows_the_copy_of_a_hit_written_for_its_province_once_where_provinces_share_a_partition():
    """Shanghai's and Jiangsu's copies of a hit between them are both in intel.hit partition 4 (31
    provinces in 6 partitions): a Shanghai wall read both and showed the hit twice. Each view now
    shows its own province's copy; a Beijing-Tianjin hit (copies in partitions 0 and 3) as before."""
    from gateway.feed import copy_key, shown_copy
    from identity.entitlement import Entitlement
    from schemas.regions import load_regions
    from sinks.feed import hit_partition

    regions = load_regions()
    assert hit_partition("310000", 6) == hit_partition("320000", 6) == 4  # the premise
    shanghai, jiangsu = (Entitlement(identity_of(r), regions) for r in ("310000", "320000"))
    hit = {"classification": "INTERNAL", "notify_regions": ["310000", "320000"], "hit_id": "h-1"}
    copies = []
    for province in ("310000", "320000"):
        e = entry_of(HIT_TOPIC, 4, len(copies), 1000, dict(hit), render=False)
        e.copy_for = copy_key(_Msg(HIT_TOPIC, province.encode()))
        copies.append(e)
    assert [visible(e, shanghai, "310000") for e in copies] == [True, False]
    assert [visible(e, jiangsu, "320000") for e in copies] == [False, True]
    # the control: without the key (how the hub held hits before), both copies showed on the Shanghai wall
    for e in copies:
        e.copy_for, e.seen = "", {}
    assert [visible(e, shanghai, "310000") for e in copies] == [True, True]
    # the pull feed's rule is the same function; other topics carry no copy key
    assert shown_copy("310000", "310000") and not shown_copy("320000", "310000") and shown_copy("", "310000")
    assert copy_key(_Msg(ALERT_TOPIC, b"310000")) == "" and copy_key(_Msg(HIT_TOPIC, None)) == ""
