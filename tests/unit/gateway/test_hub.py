"""The live feed's decisions without Kafka: position tokens, what the buffer covers, slicing, resuming."""
from __future__ import annotations

import pytest

from gateway.hub import (ALERT_TOPIC, HIT_TOPIC, Buffer, Entry, TokenError, advance, decode_token, encode_token,
                         resume_source, stream_partitions)

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
