"""The live feed's one Kafka consumer per gateway process, fanned out to every connected client.

`Hub` reads every partition of intel.hit, intel.alert.unique and intel.workflow with ONE assign()-only
consumer (group id "intelbus-gateway-hub", never committed), from "now minus the buffer
window" on, decodes each message once, and keeps it in a bounded in-memory `Buffer` in the
order read. Each SSE stream (gateway/events.py) is a cursor into that buffer and a
`Position` (the next offset of each partition its view reads); it filters with its own
`Entitlement`, so a browser costs the gateway a cursor, not a consumer.

A stream whose position is older than the buffer (a reconnect after a long absence, a
first connection asking further back than the window) gets a `CatchUpReader`: a private
assign()-only consumer from its offsets, until its position is inside the buffer; then it
reads the buffer. Positions are per-partition offsets, so the switch is exact: no gap, no
duplicate. The `position token` sent as each item's SSE id encodes the position after it, in
every partition the stream reads: its hit partition, the alert partitions and the workflow
partitions, so one Last-Event-ID resumes hits, alerts and workflow items alike (docs/architecture.md,
"The live feed: one consumer, many clients"). A token of version 1 (before the workflow items)
still resumes its hits and alerts; its workflow items start where the hub is.

Decisions (tokens, whether the buffer covers a position, slicing) are pure functions and
classes without Kafka, tested in tests/unit/gateway/test_hub.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from gateway.feed import ALERT_TOPIC, HIT_TOPIC, WORKFLOW_TOPIC, copy_key, may_see_workflow, shown_copy, workflow_for_display
from ops.settings import load_settings
from sinks.feed import alert_for_display, hit_for_display, hit_partition

log = logging.getLogger("intelbus.gateway.hub")

SSE_CLIENTS = Gauge("intelbus_gateway_sse_clients", "Live-feed (SSE) clients connected")
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60)
FANOUT_LAG = Histogram("intelbus_gateway_fanout_lag_seconds",
                       "Kafka message timestamp of a live-feed batch's oldest item to the batch's write to the client "
                       "(per item with INTELBUS_LIVE_BROADCAST=0)", buckets=LAG_BUCKETS)
HUB_LAG = Histogram("intelbus_gateway_hub_read_lag_seconds",
                    "Kafka message timestamp to the hub's buffer (read, decoded, streams woken): the part of the "
                    "fan-out lag before any client is served", buckets=LAG_BUCKETS)
AUDIT_WAIT = Histogram("intelbus_gateway_sse_audit_seconds",
                       "Live feed: a client's batch ready to its audit row written (group commit with other clients')",
                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BUFFER_ITEMS = Gauge("intelbus_gateway_hub_buffer_items", "Messages held in the live feed's in-memory buffer")
ROUNDS = Counter("intelbus_gateway_live_rounds_total", "Live feed rounds rung (the streams woken together)")
DELIVERED = Counter("intelbus_gateway_live_broadcast_batches_total",
                    "Live feed batches read, audited and handed to their stream by a round's ring (the broadcast path)")
STREAMS_RUNG = Counter("intelbus_gateway_live_streams_rung_total",
                       "Live feed streams woken by rounds (each a turn on the event loop)")
# the hub's read lag split (issue 15 follow-up, "where does the hub's time go"): Kafka time to the message handed to
# Python by the poll (librdkafka, the broker, the thread's wake-up and its GIL), and the hub thread's own work after
# the poll (decode, append, announce) in wall time and in the thread's CPU time: wall minus CPU is time waiting (for
# the GIL held by the event loop, or for a core of the machine)
HUB_FETCH_LAG = Histogram("intelbus_gateway_hub_fetch_lag_seconds",
                          "Kafka message timestamp to the hub's poll handing it to Python", buckets=LAG_BUCKETS)
HUB_WORK = Counter("intelbus_gateway_hub_work_seconds",
                   "The hub threads' work after each poll (decode, append, announce): wall time and thread CPU time",
                   ["clock"])
HUB_SLICE = Histogram("intelbus_gateway_hub_slice_seconds",
                      "One poll's messages from the poll's return to their announce (wall time)", buckets=LAG_BUCKETS)
GC_PAUSE = Histogram("intelbus_gateway_gc_pause_seconds", "The gateway process's garbage collections (every thread "
                     "stops for them)", ["generation"], buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                             0.5, 1, 2.5))
GC_PAUSE_MAX = Gauge("intelbus_gateway_gc_pause_max_seconds", "The longest garbage collection of the process so far",
                     ["generation"])
GC_CPU = Counter("intelbus_gateway_gc_cpu_seconds", "CPU time of the process's garbage collections (their wall time "
                 "in intelbus_gateway_gc_pause_seconds: the rest is the machine's other work)", ["generation"])
CATCH_UPS = Counter("intelbus_gateway_catchup_readers_total",
                    "Catch-up readers opened (a live-feed stream resuming before the buffer)")

TP = tuple[str, int]          # (topic, partition)
Position = dict[TP, int]       # the next offset to read, per partition a stream reads

_LIVE = load_settings()  # the live feed's tunables (INTELBUS_LIVE_*), read once when the gateway starts
BUFFER_WINDOW_S = _LIVE.live_buffer_s
BUFFER_MAX_ITEMS = _LIVE.live_buffer_items
TOKEN_VERSION = "2"
TOPICS = (HIT_TOPIC, ALERT_TOPIC, WORKFLOW_TOPIC)
APPEND_SLICE = 200
# rounds: the streams are rung at most once per RING_MS (leading edge: at once if the last ring is older), and
# only the streams whose view may see something the round brought (RING_SELECT); 0 / "0": the old behaviour
# (every append rings every stream at once), kept for bench_fanout's same-run comparison
RING_MS = _LIVE.live_ring_ms
RING_SELECT = _LIVE.live_ring_select
# intel.workflow read by a consumer (and thread) of its own, so that a burst of reminders never holds the hits
WORKFLOW_CONSUMER = _LIVE.live_workflow_consumer
# a heap the garbage collector walks quickly (bench/results/fanout.md, 12:31 run: the hub thread's work took 3.5 s
# of wall time for 0.5 s of its CPU, and the 3 s between were the process's full collections, 5 in 70 s, up to
# 0.9 s each, every thread stopped): the streams' shared walks are dropped a few rounds old (`RecentWalks`) instead of
# piling up to 5,000 and reaching the oldest generation; entries hold few objects the collector must visit (scope
# in tuples, a workflow item's bytes instead of its decoded record); the heap of the gateway's start (its modules,
# the app, the start's backlog) is frozen out of every later collection once the hub has caught up (`freeze_heap`).
# "0": as before, for bench_fanout's same-run comparison
GC_LIGHT = _LIVE.live_gc_light
# the collector's thresholds once the hub has caught up (`freeze_heap`): the third (full collections after that many
# of the second generation's, default 10) at 100, so a full collection comes every few minutes rather than every
# 15-20 s (bench_fanout, 12:38 run: 4 in 70 s, 1-2 s each on the loaded machine); cycles left as garbage wait that long
GC_THRESHOLDS = tuple(int(x) for x in _LIVE.live_gc_thresholds.split(","))
# the caught-up hub's thread of hits and alerts only polls and appends the messages' bytes; each is decoded on the event
# loop when a round first looks at it (whom to ring), so that thread holds the GIL briefly. Not intel.workflow's: a
# workflow tick's thousands of reminders decoded on the loop held every wall for seconds (bench_fanout, 16:17 run);
# its own thread decodes them. Off by default ("1" turns it on) until a same-run comparison shows it helps: the shared
# machine's runs so far were too disturbed to tell (bench/results/fanout.md)
HUB_LAZY = _LIVE.live_hub_lazy
WALKS_KEPT = 256  # about a second of rounds for 15 view groups: the streams of a round share their walks within it


class TokenError(ValueError):
    """A position token that cannot be used; str() says why, in one line."""


# --- position tokens -------------------------------------------------------------------------

def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n < 0:
        raise ValueError("negative offset")
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _check(body: str) -> str:
    return hashlib.blake2s(body.encode(), digest_size=4).hexdigest()


def stream_partitions(hit_part: int, alert_parts: int, workflow_parts: int = 0) -> list[TP]:
    """What a view's stream reads: its province's partition of intel.hit, every alert partition, every
    workflow partition (intel.workflow is keyed by item id, so any partition may hold the view's items)."""
    return ([(HIT_TOPIC, hit_part)] + [(ALERT_TOPIC, p) for p in range(alert_parts)]
            + [(WORKFLOW_TOPIC, p) for p in range(workflow_parts)])


def _offsets(position: Position, topic: str) -> list[int]:
    parts = sorted((p, o) for (t, p), o in position.items() if t == topic)
    if [p for p, _ in parts] != list(range(len(parts))):
        raise ValueError(f"not a stream position: {sorted(position)}")
    return [o for _, o in parts]


def encode_token(view: str, position: Position) -> str:
    """`2.<view>.<hit partition>.<hit offset>.<alert offsets>.<workflow offsets>.<check>`, offsets in base 36,
    '-'-separated (URL-safe, ~60 chars)."""
    hits = [(p, o) for (t, p), o in position.items() if t == HIT_TOPIC]
    if len(hits) != 1 or any(t not in TOPICS for t, _ in position):
        raise ValueError(f"not a stream position: {sorted(position)}")
    alerts, workflow = _offsets(position, ALERT_TOPIC), _offsets(position, WORKFLOW_TOPIC)
    body = (f"{TOKEN_VERSION}.{view}.{hits[0][0]}.{_b36(hits[0][1])}.{'-'.join(map(_b36, alerts))}."
            f"{'-'.join(map(_b36, workflow))}")
    return f"{body}.{_check(body)}"


def decode_token(token: str, view: str, partitions: list[TP]) -> Position:
    """The position a token names, for a stream of `view` reading `partitions`; TokenError if it is
    malformed, altered, of another view, or of another partition layout. A version 1 token (made
    before the feed carried workflow items) names no workflow partition: the position it gives lacks
    them, and the caller starts those where the hub is (`complete_position`)."""
    token = (token or "").strip()
    parts = token.split(".")
    if not (len(parts) == 7 and parts[0] == TOKEN_VERSION or len(parts) == 6 and parts[0] == "1"):
        raise TokenError("Last-Event-ID is not a position token of this feed (malformed)")
    body, check = token.rsplit(".", 1)
    if _check(body) != check:
        raise TokenError("Last-Event-ID does not check out (altered or truncated)")
    fields = body.split(".")
    tview, hit_part, hit_off, alert_offs = fields[1:5]
    workflow_offs = fields[5] if len(fields) == 6 else None
    if tview != view:
        raise TokenError(f"Last-Event-ID belongs to the view of region {tview}, not {view}: "
                         "reconnect without it, or with region={tview}")
    try:
        position = {(HIT_TOPIC, int(hit_part)): int(hit_off, 36)}
        position.update({(ALERT_TOPIC, p): int(o, 36) for p, o in enumerate(alert_offs.split("-"))})
        if workflow_offs:
            position.update({(WORKFLOW_TOPIC, p): int(o, 36) for p, o in enumerate(workflow_offs.split("-"))})
    except ValueError:
        raise TokenError("Last-Event-ID is not a position token of this feed (malformed)") from None
    expected = partitions if workflow_offs is not None else [tp for tp in partitions if tp[0] != WORKFLOW_TOPIC]
    if sorted(position) != sorted(expected):
        raise TokenError("Last-Event-ID was made for another partition layout of the bus: reconnect without it")
    return position


def complete_position(position: Position, partitions: list[TP], ends: Position) -> Position:
    """The position with every partition the stream reads: those a token did not name (a version 1
    token's workflow partitions) start at `ends` (where the hub has read to)."""
    return {tp: position[tp] if tp in position else ends.get(tp, 0) for tp in partitions}


# --- the buffer --------------------------------------------------------------------------------

@dataclass(slots=True)
class Entry:
    """One message as the buffer holds it: where it was, when Kafka took it, what it shows."""
    topic: str
    partition: int
    offset: int
    ts_ms: int
    kind: str           # hit | alert | workflow (the SSE event type)
    scope: dict         # what the entitlement needs: classification and notify_regions / share_scope / notify
    data: str           # the feed item as one line of JSON (the NDJSON feed's item)
    ident: str = ""     # hit_id, or the alert's or workflow event's event_id (for the audit row)
    seen: dict = field(default_factory=dict)  # (view, clearance) -> visible, computed once per view kind
    record: dict | None = None  # the decoded record until the item is rendered
    raw: tuple | None = None    # (codec, bytes) of a message read at the hub's start, decoded when first looked at
    payload: tuple | None = None  # (codec, bytes) of an item whose scope is known, decoded again when first shown
    polled: float = 0.0  # wall time the hub's poll returned it (0: read at the start); the send stamp's hold time
    copy_for: str = ""   # a hit copy's message key: the province it was written for (`shown_copy`)

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


def entry_of(topic: str, partition: int, offset: int, ts_ms: int, record: dict | None, *,
             render: bool = True) -> Entry | None:
    """A decoded message as a buffer entry (None for a tombstone); without `render`, its item is made
    when first shown (`rendered`): a catch-up reader shows few of the messages it reads."""
    if record is None:
        return None
    kind = {HIT_TOPIC: "hit", ALERT_TOPIC: "alert", WORKFLOW_TOPIC: "workflow"}[topic]
    entry = Entry(topic, partition, offset, ts_ms, kind, scope_of(kind, record), "", "", record=record)
    return rendered(entry) if render else entry


def scope_of(kind: str, record: dict) -> dict:
    """What the entitlement needs of a record. Its region lists as tuples: a dict of strings and tuples of strings
    is soon untracked by the garbage collector (a list never is), so a buffer of 50,000 entries is not 100,000
    more objects for every full collection to visit."""
    field = {"hit": "notify_regions", "workflow": "notify", "alert": "share_scope"}[kind]
    regions = record.get(field) or ()
    return {"classification": record.get("classification"), field: tuple(regions) if GC_LIGHT else list(regions)}


def lazy_entry(topic: str, partition: int, offset: int, ts_ms: int, codec, value: bytes | None) -> Entry | None:
    """A message kept undecoded (None for a tombstone): the hub's start reads an hour of three topics, of
    which a stream shows the few after its position; decoding all of it made a busy gateway's first
    connections wait 20 s (test_live_events, 07:16)."""
    if value is None:
        return None
    kind = {HIT_TOPIC: "hit", ALERT_TOPIC: "alert", WORKFLOW_TOPIC: "workflow"}[topic]
    return Entry(topic, partition, offset, ts_ms, kind, {}, "", raw=(codec, value))


def live_entry(topic: str, partition: int, offset: int, ts_ms: int, codec, value: bytes | None) -> Entry | None:
    """A message the caught-up hub reads, decoded for its scope (whom to ring; None for a tombstone). A hit or an
    alert is rendered at once (most are shown); a workflow item when first shown (most reminders go to agencies
    with no wall open), from its bytes (GC_LIGHT): its decoded record is tens of objects the garbage collector
    would visit for the hour the item is buffered."""
    if value is None:
        return None
    workflow = topic == WORKFLOW_TOPIC
    entry = entry_of(topic, partition, offset, ts_ms, codec.decode(value), render=not workflow)
    if workflow and GC_LIGHT:
        entry.record, entry.payload = None, (codec, value)
    return entry


def decoded(entry: Entry) -> Entry:
    """A lazy entry decoded in place (its scope and record); one that cannot be decoded is shown to no one."""
    if entry.raw is not None:
        codec, value = entry.raw
        entry.raw = None
        try:
            full = entry_of(entry.topic, entry.partition, entry.offset, entry.ts_ms, codec.decode(value), render=False)
        except Exception as exc:
            log.warning("live feed: %s[%d]@%d not shown: %s", entry.topic, entry.partition, entry.offset, exc)
            full = None
        if full is None:
            entry.kind = "none"
        elif entry.polled and GC_LIGHT and entry.kind == "workflow":  # a live one, as `live_entry` keeps it
            entry.scope, entry.payload = full.scope, (codec, value)
        else:
            entry.scope, entry.record = full.scope, full.record
            if entry.polled and entry.kind != "workflow":  # a live hit or alert: rendered at once, as `live_entry`
                try:
                    rendered(entry)
                except Exception as exc:
                    log.warning("live feed: %s[%d]@%d not shown: %s", entry.topic, entry.partition, entry.offset, exc)
                    entry.kind, entry.record = "none", None
    return entry


def rendered(entry: Entry) -> Entry:
    """The entry with its feed item as one line of JSON (the NDJSON feed's item) and its id."""
    if entry.record is None and entry.payload is not None:
        codec, value = entry.payload
        entry.payload = None
        try:
            entry.record = codec.decode(value)
        except Exception as exc:  # it decoded once, for its scope: not expected
            log.warning("live feed: %s[%d]@%d not shown: %s", entry.topic, entry.partition, entry.offset, exc)
            entry.data, entry.ident = "{}", ""
    if entry.record is not None:
        record, entry.record = entry.record, None
        if entry.kind == "hit":
            item = {"feed_item": "hit", **hit_for_display(record)}
        elif entry.kind == "workflow":
            item = workflow_for_display(record)
        else:
            item = alert_for_display(record)
        entry.data = json.dumps(item, ensure_ascii=False, default=str)
        entry.ident = str(item.get("hit_id") if entry.kind == "hit" else item.get("event_id"))
    return entry


def visible(entry: Entry, ent, view: str) -> bool:
    """May this entitlement, looking at `view`, see the entry? Memoised per (view, clearance) on the entry."""
    if entry.copy_for and entry.kind == "hit" and not shown_copy(entry.copy_for, view):
        return False
    if entry.raw is not None:
        decoded(entry)
    rule = _RULES.get(entry.kind)
    if rule is None:
        return False
    key = (view, ent.identity.clearance)
    seen = entry.seen.get(key)
    if seen is None:
        seen = entry.seen[key] = rule(ent, entry.scope, view)
    return seen


# the same rules as the API's: hits and alerts (identity.entitlement), workflow items (gateway/workflow_api)
_RULES = {"hit": lambda ent, scope, view: ent.may_see_hit(scope, view),
          "alert": lambda ent, scope, view: ent.may_see_alert(scope, view),
          "workflow": may_see_workflow}


class Buffer:
    """Messages of several partitions in the order read, bounded by count and age.

    `bases[tp]` is the first offset of tp the buffer answers for (every message of tp from there
    on is held, or not yet read); `covered_from_ms[tp]` the Kafka time from which it holds tp's
    messages. Entries are numbered by a global sequence; readers keep a cursor in it.
    """

    def __init__(self, starts: Position, start_ms: int, max_items: int = BUFFER_MAX_ITEMS,
                 window_ms: int = int(BUFFER_WINDOW_S * 1000)):
        self.entries: list[Entry] = []
        self.first_seq = 0
        self.bases: Position = dict(starts)
        self.ends: Position = dict(starts)
        self.covered_from_ms = {tp: start_ms for tp in starts}
        self.max_items, self.window_ms = max_items, window_ms

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.entries)

    def append(self, entry: Entry | None, tp: TP, offset: int) -> None:
        if entry is not None:
            self.entries.append(entry)
        self.ends[tp] = max(self.ends.get(tp, 0), offset + 1)

    def evict(self, now_ms: int) -> int:
        """Drop the oldest entries beyond the bounds (in chunks, so the list is not shifted per message)."""
        n = 0
        over = len(self.entries) - self.max_items
        while n < len(self.entries) and (n < over or self.entries[n].ts_ms < now_ms - self.window_ms):
            n += 1
        if n and (n >= 1000 or n == len(self.entries) or over > 0):
            for e in self.entries[:n]:
                self.bases[e.tp] = max(self.bases[e.tp], e.offset + 1)
                self.covered_from_ms[e.tp] = max(self.covered_from_ms[e.tp], e.ts_ms)
            del self.entries[:n]
            self.first_seq += n
            return n
        return 0

    def covers(self, position: Position) -> bool:
        """Can the buffer serve a stream at this position (nothing it still needs was dropped or skipped)?"""
        return all(tp in self.bases and off >= self.bases[tp] for tp, off in position.items())

    def covers_time(self, tps: list[TP], at_ms: int) -> bool:
        return all(tp in self.covered_from_ms and self.covered_from_ms[tp] <= at_ms for tp in tps)

    def offsets_at(self, tps: list[TP], at_ms: int) -> Position:
        """For each partition, the first offset held with a Kafka time at or after at_ms (else its end)."""
        out = {tp: self.ends.get(tp, 0) for tp in tps}
        found: set = set()
        wanted = set(tps)
        for e in self.entries:
            if e.tp in wanted and e.tp not in found and e.ts_ms >= at_ms:
                out[e.tp] = e.offset
                found.add(e.tp)
                if len(found) == len(wanted):
                    break
        return out

    def start_seq(self, position: Position) -> int:
        """The first sequence a stream at this position still has to read."""
        for i, e in enumerate(self.entries):
            if e.tp in position and e.offset >= position[e.tp]:
                return self.first_seq + i
        return self.end_seq

    def read(self, cursor: int, limit: int = 1000, end: int | None = None) -> tuple[list[Entry], int] | None:
        """Entries from the cursor on (at most `limit`, and before `end`) and the next cursor; None if the
        cursor was evicted."""
        if cursor < self.first_seq:
            return None
        i = cursor - self.first_seq
        stop = i + limit if end is None else min(i + limit, max(i, end - self.first_seq))
        chunk = self.entries[i:stop]
        return chunk, cursor + len(chunk)


def advance(position: Position, entries, may_see) -> list[tuple[Entry, Position]]:
    """Walk entries in order: skip those of other partitions or already behind the position, move the
    position past each, and return the visible ones with the position after each (its token)."""
    out = []
    for e in entries:
        tp = e.tp
        at = position.get(tp)
        if at is None or e.offset < at:
            continue
        position[tp] = e.offset + 1
        if may_see(e):
            out.append((e, dict(position)))
    return out


def walk(view: str, position: Position, entries, may_see) -> list[tuple[Entry, str]]:
    """`advance`, with each visible entry's token (`encode_token` of the position after it) made as the
    position moves: one partition's offset changes per entry, so only its base-36 text is redone (200
    streams walking a burst: a dict copy and 13 conversions per item were a fifth of the event loop's time)."""
    hit = [tp for tp in position if tp[0] == HIT_TOPIC]
    if len(hit) != 1:
        raise ValueError(f"not a stream position: {sorted(position)}")
    texts = {tp: _b36(o) for tp, o in position.items()}
    alerts = [tp for tp in sorted(position) if tp[0] == ALERT_TOPIC]
    flows = [tp for tp in sorted(position) if tp[0] == WORKFLOW_TOPIC]
    head = f"{TOKEN_VERSION}.{view}.{hit[0][1]}."
    out = []
    stale = set()  # partitions moved since their text was made: converted only when a token needs them
    for e in entries:
        tp = (e.topic, e.partition)
        at = position.get(tp)
        if at is None or e.offset < at:
            continue
        position[tp] = e.offset + 1
        stale.add(tp)
        if may_see(e):
            for t in stale:
                texts[t] = _b36(position[t])
            stale.clear()
            body = (f"{head}{texts[hit[0]]}.{'-'.join([texts[t] for t in alerts])}."
                    f"{'-'.join([texts[t] for t in flows])}")
            out.append((e, f"{body}.{_check(body)}"))
    return out


def resume_source(buffer: Buffer | None, position: Position) -> str:
    """'hub' if the shared buffer can serve this position, else 'catch-up' (a private reader)."""
    return "hub" if buffer is not None and buffer.covers(position) else "catch-up"


# --- rounds: when to ring, whom to ring ---------------------------------------------------------

def ring_delay(now: float, last_ring: float | None, interval: float) -> float:
    """A leading-edge throttle of the streams' doorbells: 0 (ring now) if the last ring was `interval` or more
    ago (or never), else how long until `last_ring + interval` (one ring then takes all that came meanwhile)."""
    if last_ring is None or interval <= 0:
        return 0.0
    return max(0.0, last_ring + interval - now)


def groups_to_ring(entries, groups: dict) -> list:
    """The keys of the stream groups a round may show something to. `groups`: key -> (the partitions its
    streams read, may_see(entry) for its view and clearance). A group is rung if one entry of a partition it
    reads is visible to it; a round of another province's hits, or of workflow items for other agencies,
    rings nobody of that group (its streams walk past those entries at their next round)."""
    out = []
    for key, (tps, may_see) in groups.items():
        for e in entries:
            if (e.topic, e.partition) in tps and may_see(e):
                out.append(key)
                break
    return out


# --- Kafka: the hub and the catch-up reader ------------------------------------------------------

def _decode(codec, msg):
    value = msg.value()
    return None if value is None else codec.decode(value)


class RecentWalks(dict):
    """The streams' shared walks, the `keep` most recently made (a dict in insertion order). A walk is shared by
    the streams of one view within a round; kept until 5,000 piled up (then all dropped), they lived long enough
    to reach the collector's oldest generation, and made most of what its full collections visited."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.keep:
            del self[next(iter(self))]


def freeze_heap() -> None:
    """Once, when the hub has caught up: collect, then move every object alive (modules, the app, the start's
    backlog) out of the collector's view (`gc.freeze`), so later full collections visit only what came since;
    and full collections made rarer (GC_THRESHOLDS).
    What it freezes is still freed when its last reference goes; only a cycle among frozen objects is never
    collected, and the start's objects are the process's own for its life."""
    import gc

    if _frozen:
        return
    _frozen.append("freezing")
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _frozen[0] = "frozen"
    log.info("live feed hub: %d objects of the gateway's start frozen out of the garbage collector's view; "
             "collection thresholds %s", gc.get_freeze_count(), GC_THRESHOLDS)


_frozen: list = []
_gc_started: list = []
_gc_max: dict = {}


def watch_gc() -> None:
    """Time the process's garbage collections (GC_PAUSE), once per process."""
    import gc

    if _gc_started:
        return
    _gc_started.append(None)

    def callback(phase, info):
        if phase == "start":
            _gc_started[0] = (time.perf_counter(), time.thread_time())  # it runs in the thread that triggered it
        elif _gc_started[0] is not None:
            took, gen = time.perf_counter() - _gc_started[0][0], str(info.get("generation"))
            if _frozen and _frozen[0] == "freezing":
                gen = "freeze"  # freeze_heap's own collection, once at the start
            GC_PAUSE.labels(gen).observe(took)
            GC_CPU.labels(gen).inc(time.thread_time() - _gc_started[0][1])
            if took > _gc_max.get(gen, 0.0):
                _gc_max[gen] = took
                GC_PAUSE_MAX.labels(gen).set(took)

    gc.callbacks.append(callback)


class Hub:
    """One consumer for the process; `start()` once (a thread), `stop()` on shutdown."""

    def __init__(self, kafka_config: dict, codec, *, window_s: float = BUFFER_WINDOW_S,
                 max_items: int = BUFFER_MAX_ITEMS):
        self.kafka_config, self.codec = kafka_config, codec
        self.window_s, self.max_items = window_s, max_items
        self.buffer: Buffer | None = None
        self.partitions: dict[str, int] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()      # read up to the ends seen at start
        self.started = threading.Event()    # assigned (buffer and partitions known) or failed
        self.error: str = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bells: dict[asyncio.AbstractEventLoop, Bell] = {}
        # the streams' shared walks (gateway/events.py), used on the event loop only
        self.walks: dict = RecentWalks(WALKS_KEPT) if GC_LIGHT else {}
        # A round: the streams' reads between one ring and the next all end where the ring said (the end of the
        # buffer when the entries it announces were appended), so the streams of a view stay in step (and share
        # one walk) even while the hub appends during the round; what came after is the next round's.
        self.wakes, self.round_end = 0, 0
        # the broadcast path (gateway/events.py `deliver`), called by a ring with the parked streams it rings
        self.deliver = None

    # lifecycle
    def start(self) -> "Hub":
        watch_gc()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="live-feed-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def view_partitions(self, view: str, regions) -> list[TP]:
        return stream_partitions(hit_partition(regions.province_of(view), self.partitions[HIT_TOPIC]),
                                 self.partitions[ALERT_TOPIC], self.partitions.get(WORKFLOW_TOPIC, 0))

    def ends(self) -> Position:
        """Where the hub has read to, per partition (a version 1 token's workflow partitions start there)."""
        with self.lock:
            return dict(self.buffer.ends) if self.buffer is not None else {}

    # subscribers (on an event loop)
    def subscribe(self, group=None, tps=None, may_see=None) -> "Wake":
        """A stream's doorbell. Streams of one `group` (a view and clearance) read `tps` and see what `may_see`
        says; they are rung together, when a round brings something they may see. Without a group: every round."""
        loop = asyncio.get_running_loop()
        event = Wake()
        with self.lock:
            bell = self._bells.get(loop)
            if bell is None:
                bell = self._bells[loop] = Bell(self, loop)
        bell.add(event, group, tps, may_see)
        return event

    def unsubscribe(self, event: "Wake") -> None:
        with self.lock:
            bells = list(self._bells.values())
        for bell in bells:
            bell.discard(event)

    def new_round(self, end_seq: int) -> None:
        """The next round's reads end at `end_seq` (never before the last round's end)."""
        with self.lock:
            self.wakes += 1
            self.round_end = max(self.round_end, end_seq)

    def _announce(self, entries: list, end_seq: int) -> None:
        """From a hub thread: these entries are in the buffer, which ends at end_seq; each loop's bell decides
        when and whom to ring (one call_soon_threadsafe per loop and append, not per stream)."""
        with self.lock:
            bells = list(self._bells.items())
        for loop, bell in bells:
            try:
                loop.call_soon_threadsafe(bell.arrived, entries, end_seq)
            except RuntimeError:  # the loop is closed
                pass

    def _wake(self) -> None:
        """Every stream, now (the hub caught up, the gateway closing): a round to the buffer's end."""
        with self.lock:
            end = self.buffer.end_seq if self.buffer is not None else 0
            self.wakes += 1
            self.round_end = max(self.round_end, end)
            bells = list(self._bells.items())
        for loop, bell in bells:
            try:
                loop.call_soon_threadsafe(bell.ring_all)
            except RuntimeError:
                pass

    def read(self, cursor: int, limit: int = 1000):
        """A stream's next entries, up to the end of the current round (see `round_end`)."""
        with self.lock:
            if self.buffer is None:
                return None
            return self.buffer.read(cursor, limit, self.round_end)

    def covers(self, position: Position) -> bool:
        with self.lock:
            return resume_source(self.buffer, position) == "hub"

    def start_seq(self, position: Position) -> int:
        with self.lock:
            return self.buffer.start_seq(position)

    def offsets_since(self, tps: list[TP], at_ms: int) -> Position | None:
        """Where a first connection asking from at_ms starts, if the buffer reaches back that far."""
        with self.lock:
            if self.buffer is None or not self.ready.is_set() or not self.buffer.covers_time(tps, at_ms):
                return None
            return self.buffer.offsets_at(tps, at_ms)

    # the threads
    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        try:
            config = {**self.kafka_config, "group.id": "intelbus-gateway-hub", "enable.auto.commit": False,
                      "auto.offset.reset": "latest", "enable.partition.eof": False}
            consumer = Consumer(config)
            meta = consumer.list_topics(timeout=10).topics
            # a stack without the workflows (no intel.workflow) still has its hits and alerts live
            partitions = {t: len(meta[t].partitions) for t in TOPICS if t in meta or t != WORKFLOW_TOPIC}
            start_ms = int((time.time() - self.window_s) * 1000)
            tps = [TopicPartition(t, p, start_ms) for t in partitions for p in range(partitions[t])]
            starts, highs, trimmed = {}, {}, set()
            budget = max(1, self.max_items // len(tps))  # no point decoding what the bound would drop at once
            for tp in consumer.offsets_for_times(tps, timeout=10):
                key = (tp.topic, tp.partition)
                _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
                starts[key] = tp.offset if tp.offset >= 0 else high
                if high - starts[key] > budget:
                    starts[key] = high - budget
                    trimmed.add(key)
                highs[key] = high
            # hits and alerts on this thread's consumer; intel.workflow on a second one (WORKFLOW_CONSUMER): a
            # workflow tick publishes thousands of reminders at once, and the hits must not queue behind them
            split = WORKFLOW_CONSUMER and WORKFLOW_TOPIC in partitions
            mine = [TopicPartition(t, p, o) for (t, p), o in starts.items() if not (split and t == WORKFLOW_TOPIC)]
            theirs = [TopicPartition(t, p, o) for (t, p), o in starts.items() if split and t == WORKFLOW_TOPIC]
            consumer.assign(mine)
            second = None
            if theirs:
                second = Consumer({**config, "group.id": "intelbus-gateway-hub-workflow"})
                second.assign(theirs)
            with self.lock:
                self.buffer = Buffer(starts, start_ms, self.max_items, int(self.window_s * 1000))
                self.partitions = partitions
                for key in trimmed:  # it holds these from an offset, not from a time: no first connection's `since`
                    self.buffer.covered_from_ms[key] = int(time.time() * 1000)
        except Exception as exc:
            self.error = f"live feed hub could not start: {exc}"
            log.error("%s", self.error)
            self.started.set()
            return
        self.started.set()
        log.info("live feed hub reading %s%s", {tp: o for tp, o in starts.items()},
                 " (intel.workflow on a consumer of its own)" if second is not None else "")
        caught_up = [threading.Event() for _ in range(2 if second is not None else 1)]
        if second is not None:
            threading.Thread(target=self._poll, args=(second, theirs, starts, highs, caught_up, 1),
                             name="live-feed-hub-workflow", daemon=True).start()
        self._poll(consumer, mine, starts, highs, caught_up, 0)

    def _poll(self, consumer, assigned, starts, highs, caught_up, mine: int) -> None:
        """One consumer's loop: read, append, announce; the hub is ready when every consumer has read to the
        ends seen at its start."""
        from ops.consume import consume_ready

        try:
            while not self._stop.is_set():
                messages = consume_ready(consumer, 2000, 0.1)
                wall0, cpu0 = time.time(), time.thread_time()
                if messages and self.ready.is_set():
                    for msg in messages:
                        HUB_FETCH_LAG.observe(max(0.0, wall0 - msg.timestamp()[1] / 1000))
                # hits and alerts before the workflow items of the same poll (one consumer for all): each
                # partition keeps its order, which is all a position needs
                messages.sort(key=lambda m: m.topic() == WORKFLOW_TOPIC)
                # decoded and handed over in slices: the first hits of a burst need not wait for the last's decoding
                for i in range(0, len(messages), APPEND_SLICE):
                    self._append(messages[i:i + APPEND_SLICE], wall0)
                if messages and self.ready.is_set():
                    wall = time.time() - wall0
                    HUB_WORK.labels("wall").inc(wall)
                    HUB_WORK.labels("cpu").inc(time.thread_time() - cpu0)
                    HUB_SLICE.observe(wall)
                if not caught_up[mine].is_set() and all(  # position(): past a transaction's markers too
                        tp.offset >= highs[(tp.topic, tp.partition)] or tp.offset < 0 and highs[(tp.topic, tp.partition)]
                        == starts[(tp.topic, tp.partition)] for tp in consumer.position(assigned)):
                    caught_up[mine].set()
                    with self.lock:
                        done = all(e.is_set() for e in caught_up) and not self.ready.is_set()
                        if done:
                            self.ready.set()
                    if done:
                        log.info("live feed hub caught up (%d items buffered)", len(self.buffer.entries))
                        if GC_LIGHT:
                            freeze_heap()
                        self._wake()
        finally:
            consumer.close()

    def _append(self, messages, polled: float = 0.0) -> None:
        fresh = []
        lazy = not self.ready.is_set()  # the start's backlog: decoded only if a stream looks at it
        for msg in messages:
            if msg.error():
                continue
            try:
                if lazy or HUB_LAZY and msg.topic() != WORKFLOW_TOPIC:
                    entry = lazy_entry(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], self.codec,
                                       msg.value())
                    if entry is not None and not lazy:
                        entry.polled = polled
                else:
                    entry = live_entry(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], self.codec,
                                       msg.value())
                    if entry is not None:
                        entry.polled = polled
                if entry is not None:
                    entry.copy_for = copy_key(msg)
            except Exception as exc:  # one message the gateway cannot show must not stop every feed
                log.warning("live feed: %s[%d]@%d not shown: %s", msg.topic(), msg.partition(), msg.offset(), exc)
                entry = None
            fresh.append((entry, (msg.topic(), msg.partition()), msg.offset()))
        if fresh:
            with self.lock:
                for entry, tp, offset in fresh:
                    self.buffer.append(entry, tp, offset)
                self.buffer.evict(int(time.time() * 1000))
                BUFFER_ITEMS.set(len(self.buffer.entries))
                end = self.buffer.end_seq
            entries = [e for e, _, _ in fresh if e is not None]
            if lazy:
                self._wake()
            else:
                self._announce(entries, end)
                now = time.time()
                for entry in entries:  # the live part, not the start's backlog
                    HUB_LAG.observe(max(0.0, now - entry.ts_ms / 1000))


class Bell:
    """The doorbells of the streams on one event loop, rung by rounds (used on that loop only).

    The hub's threads announce what they appended (`arrived`); the bell rings at once if its last ring is
    RING_MS old, else once at last ring + RING_MS for all that came meanwhile (`ring_delay`), and then only
    the groups of streams that may see something of it (`groups_to_ring`). Before: every append rang all
    200 streams, and intel.workflow's trickle of reminders made tens of rounds a second of 200 turns each
    (bench/results/fanout.md, 07:21 run)."""

    def __init__(self, hub: Hub, loop, interval_s: float | None = None, select: bool | None = None):
        self.hub, self.loop = hub, loop
        self.interval = RING_MS / 1000 if interval_s is None else interval_s
        self.select = RING_SELECT if select is None else select
        self.groups: dict = {}       # key -> [tps, may_see, set of Wake]
        self.everyone: set = set()   # streams rung every round (no group)
        self.pending: list = []
        self.pending_end = 0
        self.last_ring: float | None = None
        self.timer = None
        self.rings = self.rung = 0   # rounds rung, streams rung (for tests and metrics)
        self.rung_at = 0.0           # wall time of the last ring (the send stamp's)

    def add(self, wake: "Wake", group, tps, may_see) -> None:
        if group is None:
            self.everyone.add(wake)
            return
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = [frozenset(tps), may_see, set()]
        g[2].add(wake)

    def discard(self, wake: "Wake") -> None:
        self.everyone.discard(wake)
        for key, g in list(self.groups.items()):
            g[2].discard(wake)
            if not g[2]:
                del self.groups[key]

    def arrived(self, entries: list, end_seq: int) -> None:
        self.pending.extend(entries)
        self.pending_end = max(self.pending_end, end_seq)
        if self.timer is not None:
            return  # the ring already scheduled takes these too
        delay = ring_delay(self.loop.time(), self.last_ring, self.interval)
        if delay <= 0:
            self.ring()
        else:
            self.timer = self.loop.call_later(delay, self.ring)

    def ring(self) -> None:
        self.timer = None
        entries, self.pending = self.pending, []
        self.last_ring = self.loop.time()
        self.rung_at = time.time()
        self.hub.new_round(self.pending_end)
        self.rings += 1
        ROUNDS.inc()
        if self.select:
            keys = groups_to_ring(entries, {k: (g[0], g[1]) for k, g in self.groups.items()})
        else:
            keys = list(self.groups)
        deliver = self.hub.deliver
        if deliver is not None:  # the broadcast path: the parked streams' batches read, audited and handed over first
            parked = [w.parked for key in keys for w in self.groups[key][2] if w.parked is not None]
            if parked:
                try:
                    DELIVERED.inc(deliver(parked))
                except Exception:  # never a ring lost: the streams woken below take their own path
                    log.exception("live feed: the round's broadcast failed")
        for key in keys:
            self._set(self.groups[key][2])
        self._set(self.everyone)

    def ring_all(self) -> None:
        self.rung_at = time.time()
        for g in list(self.groups.values()):
            self._set(g[2])
        self._set(self.everyone)

    def _set(self, wakes) -> None:
        for w in list(wakes):
            w.rung_at = self.rung_at
            w.set()
        self.rung += len(wakes)
        STREAMS_RUNG.inc(len(wakes))


class Wake:
    """A stream's doorbell, rung by the hub on the stream's loop; awaited with a timeout without a task
    of its own (200 streams woken a few dozen times a second: asyncio.wait_for's task each time shows)."""

    __slots__ = ("flag", "fut", "rung_at", "parked")

    def __init__(self):
        self.flag, self.fut, self.rung_at = False, None, 0.0
        self.parked = None  # the stream, while it waits and a ring may serve it (gateway/events.py, `deliver`)

    def set(self) -> None:
        self.flag = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    async def wait(self, timeout: float) -> None:
        if self.flag:
            return
        loop = asyncio.get_running_loop()
        self.fut = loop.create_future()
        timer = loop.call_later(timeout, _resolve, self.fut)
        try:
            await self.fut
        finally:
            timer.cancel()
            self.fut = None


def _resolve(fut) -> None:
    if not fut.done():
        fut.set_result(None)


class CatchUpReader:
    """A private consumer for one stream that is behind the hub's buffer: from its position (or, for a
    first connection, from a time), until the stream can switch to the buffer."""

    def __init__(self, kafka_config: dict, codec, tps: list[TP], position: Position | None = None,
                 since_ms: int | None = None):
        from confluent_kafka import Consumer, TopicPartition

        CATCH_UPS.inc()
        self.codec = codec
        self.consumer = Consumer({**kafka_config, "group.id": "intelbus-gateway-catchup", "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest"})
        if position is None:
            found = self.consumer.offsets_for_times([TopicPartition(t, p, since_ms) for t, p in tps], timeout=10)
            position = {}
            for tp in found:
                off = tp.offset
                if off < 0:
                    off = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
                position[(tp.topic, tp.partition)] = off
        self.start = dict(position)
        self.consumer.assign([TopicPartition(t, p, o) for (t, p), o in position.items()])

    def poll(self) -> list[Entry]:
        from ops.consume import consume_ready

        out = []
        for msg in consume_ready(self.consumer, 1000, 0.2):
            if msg.error():
                continue
            try:
                entry = entry_of(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], _decode(self.codec, msg),
                                 render=False)
                if entry is not None:
                    entry.copy_for = copy_key(msg)
            except Exception as exc:
                log.warning("live feed catch-up: %s[%d]@%d not shown: %s", msg.topic(), msg.partition(), msg.offset(), exc)
                entry = None
            # an entry the gateway cannot show still moves the position past it
            out.append(entry or Entry(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], "none", {}, ""))
        return out

    def close(self) -> None:
        self.consumer.close()
