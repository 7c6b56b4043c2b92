"""The workflow job: a faust worker that owns the cooperation workflows' state and clocks.

docs/workflows.md, "The workflow job". Topics (APP = `intelbus-jobs-workflows`):

    intel.workflow.commands (gateway, JSON, key item id) --commands--> APP-items (key item id)
    intel.hit (Avro, key province) ------------------------\
    intel.wanted.unique (Avro, key record key) -----------route--> APP-records (key record key)
    APP-records --records (table hits-by-record)--> OpenHit / WantedRevision envelopes -> APP-items
    APP-items --items (table items; the timers)--> intel.workflow (Avro, key item id), intel.dlq

Every item's events and every write of a table are produced by one idempotent librdkafka
producer at the partition of the message (or of the item, for timers): the events first,
awaited, then the table's writes, awaited, then faust's store (publish_outputs_then_state:
a crash never leaves the state saying "applied" for an event not on Kafka); faust commits the
input offset after that (at-least-once in, and the
machine's idempotence by command id and by deadline-step key makes it exactly-once out).
The two internal topics are written by our own producer (murmur2, Java-compatible), so an
item's commands, OpenHit, revisions and timers all live in one partition of APP-items,
whatever partitioner the gateway's producer uses.

The timers fire a partition's steps only up to its command watermark ("commands partition p is
read through T"): markers the commands agent produces behind the commands it forwarded, for the
partitions of APP-items other workers own, and local claims for its own (LocalClaims), so a
command stamped before a step but read late still finds the step unsent (docs/workflows.md,
"Late commands and the watermark"; a bounded hold when a watermark is stuck).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import heapq
import json
import logging
import os
import re
import time
import typing
import uuid
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from schemas import catalog
from schemas.dead_letters import dead_letter_record
from stream_jobs.lookback import ReadBack, read_first_strings_since
from workflows import model as m

log = logging.getLogger("intelbus.workflows")

APP_ID = "intelbus-jobs-workflows"
COMMANDS_TOPIC = catalog.WORKFLOW_COMMANDS_TOPIC
WORKFLOW_TOPIC = catalog.WORKFLOW_TOPIC
HIT_TOPIC = catalog.HIT_TOPIC
WANTED_TOPIC = catalog.unique_topic("wanted")
DLQ_TOPIC = catalog.DLQ_TOPIC

OPEN_ITEMS = Gauge("intelbus_workflows_open_items", "Workflow items of this worker's partitions with a deadline pending")
FIRED = Counter("intelbus_workflows_fired_steps_total", "Deadline steps fired (reminders, resends, escalations, stale listings)",
                ["kind"])
NOT_RESENT = Counter("intelbus_workflows_events_not_resent_total",
                     "Events a replay made again that were already on intel.workflow (read back after an assignment)")
TIMER_LAG = Histogram("intelbus_workflows_timer_lag_seconds", "How late a deadline step fired (now - its scheduled time)",
                      buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600))
WATERMARK_LAG = Gauge("intelbus_workflows_watermark_lag_seconds", "How far the command watermark of a partition of "
                      "APP-items is behind the wall clock (now - the earliest commands partition's read-through time)",
                      ["partition"])
FIRED_BY_HOLD = Counter("intelbus_workflows_fired_by_hold_total", "Deadline steps fired by the wall clock after the "
                        "bounded hold, the command watermark stuck or missing")
COMMANDS = Counter("intelbus_workflows_commands_total", "Workflow commands applied, by outcome (applied, no-op, refused, "
                   "undecodable)", ["outcome"])
COPIES_SKIPPED = Counter("intelbus_workflows_hit_copies_skipped_total", "Copies of a hit on intel.hit (one per notified "
                         "province) not routed again: the worker routed another copy of the same hit moments before")


def items_topic(app_id: str = APP_ID) -> str:
    return f"{app_id}-items"


def records_topic(app_id: str = APP_ID) -> str:
    return f"{app_id}-records"


def answers_topic(app_id: str = APP_ID) -> str:
    return f"{app_id}-answers"


ANSWERS_KEPT = 50  # earlier answers kept per identifier (the newest)
ITEMS_BATCH = 200  # commands applied per produce-and-await (the timers wait for the lock meanwhile)
TIMER_ROUND = 1000  # items fired per hold of the lock (then the agents have their turn)
PAUSE_MS = 2000  # the timer loop woke this much later than it meant to: the worker was paused or starved


# --- pure glue: commands on the wire -------------------------------------------------------

_COMMAND_CLASSES = {c.__name__: c for c in typing.get_args(m.Command)}
_VALUE_CLASSES = {c.__name__: c for c in (m.Actor, m.Identifier, m.EarlierAnswer)}


class BadCommand(ValueError):
    """A commands-topic message that is not a command this job knows."""


@functools.cache
def _type_hints(cls) -> dict:
    """typing.get_type_hints, once per class (it compiles every string annotation on each call)."""
    return typing.get_type_hints(cls)


def _decode_value(value, hint=None):
    if isinstance(value, dict) and "__type__" in value:
        name = value["__type__"]
        cls = _COMMAND_CLASSES.get(name) or _VALUE_CLASSES.get(name)
        if cls is None:
            raise BadCommand(f"unknown type {name!r}")
        hints = _type_hints(cls)
        kwargs = {f.name: _decode_value(value[f.name], hints.get(f.name)) for f in dataclasses.fields(cls)
                  if f.name in value}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise BadCommand(f"{name}: {e}") from None
    if isinstance(value, list):
        items = [_decode_value(v) for v in value]
        if hint is frozenset:
            return frozenset(items)
        return tuple(items)
    if hint is m.Actor or hint is m.Identifier:
        raise BadCommand(f"expected a tagged {hint.__name__}, got {value!r}")
    return value


def decode_command(obj) -> m.Command:
    """The command dataclass of workflows.model.to_json(command) (the gateway's form)."""
    if not isinstance(obj, dict) or obj.get("__type__") not in _COMMAND_CLASSES:
        raise BadCommand(f"not a workflow command: {str(obj)[:120]}")
    cmd = _decode_value(obj)
    if not isinstance(cmd.actor, m.Actor):
        raise BadCommand("the command has no actor")
    return cmd


@dataclasses.dataclass(frozen=True)
class Envelope:
    command: m.Command
    command_id: str
    issued_at: int
    via: str
    enriched: bool = False  # a SendRequest back from the answers index, earlier_answers filled


WAITING = "__waiting_for_answers__"  # an items-table value: a request in the answers index, and the commands queued behind it


def decode_envelope(value: bytes | str) -> Envelope:
    """`{"command": to_json(cmd), "command_id", "issued_at", "via"}` -> Envelope (BadCommand if not)."""
    try:
        doc = json.loads(value)
    except (ValueError, TypeError) as e:
        raise BadCommand(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or "command" not in doc:
        raise BadCommand("no 'command' in the message")
    cmd = decode_command(doc["command"])
    command_id = str(doc.get("command_id") or cmd.command_id)
    if cmd.command_id != command_id:
        cmd = dataclasses.replace(cmd, command_id=command_id)
    issued_at = doc.get("issued_at")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int):
        raise BadCommand(f"issued_at must be epoch milliseconds, not {issued_at!r}")
    return Envelope(cmd, command_id, issued_at, str(doc.get("via") or ""), bool(doc.get("enriched")))


def encode_envelope(command, issued_at: int, via: str) -> bytes:
    return json.dumps({"command": m.to_json(command), "command_id": command.command_id, "issued_at": int(issued_at),
                       "via": via}, ensure_ascii=False, separators=(",", ":")).encode()


# --- pure glue: routing hits and wanted revisions by record key -----------------------------


def hit_route(hit: dict) -> tuple[str, bytes] | None:
    """(record key, message for APP-records) for a WANTED_PERSON/WATCH_MATCH hit; None otherwise."""
    from workflows.hits import open_hit_command

    cmd = open_hit_command(hit)
    if cmd is None:
        return None
    return cmd.record_key, json.dumps({"op": "hit", "open": json.loads(encode_envelope(cmd, hit["detected_at"], catalog.HIT_TOPIC))},
                                      ensure_ascii=False).encode()


def hit_is_recent(hit: dict, now_ms: int, backfill_s: float) -> bool:
    """Is the hit recent enough to open a follow-up? A worker starting on a bus with a history
    (a new consumer group reads intel.hit from its start) opens only the hits of the last
    `backfill_s` seconds, rather than reminding and escalating every old hit at once. A hit
    older than that whose follow-up exists already is a no-op anyway."""
    return backfill_s <= 0 or now_ms - int(hit.get("detected_at") or 0) <= backfill_s * 1000


class RecentHits:
    """The hit ids this worker routed lately (at most `capacity`, the oldest forgotten first).

    intel.hit carries one copy of a hit per notified province; each copy would open the same follow-up
    (command id = hit id), so every copy after the first is a no-op that still costs a message on
    APP-records, one on APP-items and a state-machine step. Only this process's memory: after a
    restart, or with the copies read by two workers, a copy is routed again, which is the no-op it was
    before. The first copy seen is always routed; nothing is skipped that was not routed in this
    process (a failed publish ends the worker, and its memory with it)."""

    def __init__(self, capacity: int = 50_000):
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def first(self, hit_id: str) -> bool:
        """True the first time a hit id is seen (remembered from now on), False for a later copy."""
        if hit_id in self._ids:
            return False
        self._ids[hit_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]
        return True


def wanted_route(record: dict) -> tuple[str, bytes]:
    """(record key, message for APP-records) for a revision of a wanted record."""
    key = f"{record['source_region']}/{record['source_system']}/{record['source_ref']}"
    return key, json.dumps({"op": "revision", "event_id": str(record["event_id"]), "action": record["action"],
                            "revision": int(record.get("revision") or 1),
                            "at": int(record.get("reported_at") or record.get("occurred_at") or 0)}).encode()


def route_by_record(record_key: str, open_hits: list[str], message: bytes) -> tuple[list[str], list[tuple[str, bytes]]]:
    """One APP-records message: (the record's hit ids after it, [(item id, envelope)] for APP-items).

    A hit adds its id and forwards its OpenHit; a revision becomes one WantedRevision per
    hit of the record (command id: revision event id, so a replay is a no-op for each item);
    a closing revision ends the record's list (its hits are closed, nothing more routes).
    """
    doc = json.loads(message)
    if doc["op"] == "hit":
        env = doc["open"]
        hit_id = env["command"]["item_id"]
        hits = open_hits if hit_id in open_hits else [*open_hits, hit_id]
        return hits, [(hit_id, json.dumps(env, ensure_ascii=False).encode())]
    out = []
    for hit_id in open_hits:
        cmd = m.WantedRevision(command_id=f"{doc['event_id']}", item_id=hit_id, actor=m.Actor.bus(), record_key=record_key,
                               action=doc["action"], revision=doc["revision"])
        out.append((hit_id, encode_envelope(cmd, doc["at"], WANTED_TOPIC)))
    return ([] if doc["action"] in m.CLOSING_REVISIONS else open_hits), out


# --- pure glue: the earlier-answers index (keyed by identifier) ----------------------------


def needs_answers(env: Envelope) -> bool:
    """A new request naming subjects goes by the answers index before it is applied."""
    return isinstance(env.command, m.SendRequest) and bool(env.command.subjects)


def lookup_message(envelope_bytes: bytes, env: Envelope) -> tuple[str, bytes]:
    """(first subject, message for APP-answers): the request visits each subject's partition in turn."""
    subjects = list(dict.fromkeys(str(s) for s in env.command.subjects))
    doc = {"op": "lookup", "pending": subjects[1:], "envelope": json.loads(envelope_bytes), "answers": []}
    return subjects[0], json.dumps(doc, ensure_ascii=False).encode()


def index_message(answer: m.EarlierAnswer) -> tuple[str, bytes]:
    """(identifier, message for APP-answers) remembering an answer (an IndexAnswer effect)."""
    return str(answer.identifier), json.dumps({"op": "index", "answer": m.to_json(answer)}, ensure_ascii=False).encode()


def answers_step(identifier: str, kept: list, message: bytes, *, limit: int = ANSWERS_KEPT):
    """One APP-answers message: (the identifier's answers after it, [(topic kind, key, message)]).

    `index` adds an answer (once per request and agency); `lookup` adds this identifier's
    answers to the request's, then goes on to its next subject ("answers", key) or, after the
    last, to the item ("items", item id) with SendRequest.earlier_answers filled.
    """
    doc = json.loads(message)
    if doc["op"] == "index":
        answer = doc["answer"]
        same = [a for a in kept if (a["request_id"], a["answered_by"]) == (answer["request_id"], answer["answered_by"])]
        if same:
            return kept, []
        return [*kept, answer][-limit:], []
    answers = [*doc["answers"], *kept]
    if doc["pending"]:
        nxt = {**doc, "pending": doc["pending"][1:], "answers": answers}
        return kept, [("answers", doc["pending"][0], json.dumps(nxt, ensure_ascii=False).encode())]
    envelope = doc["envelope"]
    command = dict(envelope["command"])
    seen, merged = set(), []
    for a in [*command.get("earlier_answers", []), *answers]:
        k = (a["request_id"], a["answered_by"], json.dumps(a["identifier"], sort_keys=True))
        if k not in seen:
            seen.add(k)
            merged.append(a)
    command["earlier_answers"] = merged
    out = {**envelope, "command": command, "enriched": True}
    return kept, [("items", command["item_id"], json.dumps(out, ensure_ascii=False).encode())]


# --- pure glue: the due index ---------------------------------------------------------------


class DueIndex:
    """When each item of this worker's partitions next needs its timer (a heap per partition, lazy deletion).

    One heap per partition of APP-items, so that each partition can be fired up to its own cutoff
    (the command watermark: docs/workflows.md, "Late commands and the watermark")."""

    def __init__(self):
        self._at: dict[str, tuple[int, int]] = {}  # item id -> (due ms, partition)
        self._heaps: dict[int, list[tuple[int, str]]] = {}

    def set(self, item_id: str, partition: int, at: int | None) -> None:
        if at is None:
            self._at.pop(item_id, None)
            return
        if self._at.get(item_id) == (at, partition):
            return
        self._at[item_id] = (at, partition)
        heapq.heappush(self._heaps.setdefault(partition, []), (at, item_id))

    def _head(self, partition: int) -> int | None:
        """The partition's earliest due time (stale heap entries are dropped on the way: O(log n) each)."""
        heap = self._heaps.get(partition)
        while heap:
            at, item_id = heap[0]
            if self._at.get(item_id) == (at, partition):
                return at
            heapq.heappop(heap)
        return None

    def heads(self) -> dict[int, int]:
        """partition -> its earliest due time, for the partitions with something pending."""
        return {p: at for p in list(self._heaps) if (at := self._head(p)) is not None}

    def pop_due(self, now_ms: int, limit: int | None = None, cutoffs: dict[int, int] | None = None) -> list[tuple[str, int]]:
        """(item id, partition) of the items due by now_ms, and by their partition's cutoff when one is
        given (`cutoffs[p]`), earliest first (at most `limit`), removed from the index (set them again)."""
        out = []
        while limit is None or len(out) < limit:
            best = None
            for p in self._heaps:
                at = self._head(p)
                until = now_ms if cutoffs is None else min(now_ms, cutoffs.get(p, now_ms))
                if at is not None and at <= until and (best is None or at < best[0]):
                    best = (at, p)
            if best is None:
                break
            _, item_id = heapq.heappop(self._heaps[best[1]])
            del self._at[item_id]
            out.append((item_id, best[1]))
        return out

    def drop_partitions(self, partitions) -> None:
        partitions = set(partitions)
        for item_id in [i for i, (_, p) in self._at.items() if p in partitions]:
            del self._at[item_id]
        for p in partitions:
            self._heaps.pop(p, None)

    def clear(self) -> None:
        self._at.clear()
        self._heaps.clear()

    def __len__(self) -> int:
        return len(self._at)

    def next_at(self) -> int | None:
        """The earliest due time indexed."""
        return min(self.heads().values(), default=None)


# --- pure glue: the command watermark (docs/workflows.md, "Late commands and the watermark") ---

WATERMARK_HEADER = "intelbus-watermark"  # a marker on APP-items carries it; a forwarded command never does
WATERMARK_KEY = b"__watermark__"


def marker_wanted_at(due_ms: int, last_asked_ms: int, skew_ms: int) -> int | None:
    """When a marker could free a step due at due_ms (a marker asked at A says "read through A - skew"), or
    None if the last one was asked late enough already (a later one frees it only once the commands move,
    which the regular tick covers)."""
    at = due_ms + skew_ms
    return None if last_asked_ms >= at else at


def marker_delay(now_ms: float, last_tried_ms: int, wanted_at: int | None, interval_s: float,
                 min_gap_ms: int = 20) -> float:
    """Seconds until the next marker: the tick after the last try, or sooner when a held step wants one
    (never closer than min_gap_ms to the last try: a burst of wishes is one marker, and a try that sent
    nothing, the worker not ready, does not make the loop spin)."""
    at = last_tried_ms + interval_s * 1000
    if wanted_at is not None:
        at = min(at, max(wanted_at, last_tried_ms + min_gap_ms))
    return max(0.0, (at - now_ms) / 1000)


def read_through(forwarded_next: int | None, committed: int | None, untouched_position: int | None,
                 untouched_position_before: int | None) -> int | None:
    """The offset of a commands partition below which every message has been forwarded (None: not known).

    `forwarded_next`: the offset after the last message the commands agent handled since the
    partition was assigned. Before its first message: the group's committed offset (faust's,
    from the broker at assignment: the agent starts there); with none (a new group), the
    consumer's position while faust has delivered nothing of the partition, seen unchanged at
    two ticks in a row (a record the consumer has just handed out is on its way to the agent
    for a moment, not for a whole tick).
    """
    if forwarded_next is not None:
        return forwarded_next
    if committed is not None:
        return committed
    if untouched_position is not None and untouched_position == untouched_position_before:
        return untouched_position
    return None


def commands_watermark(through: int | None, high: int | None, asked_at_ms: int, last_time_ms: int | None,
                       skew_ms: int) -> int | None:
    """"Commands partition p is read through time T": every command stamped at or before T is forwarded.

    `high`: the partition's high watermark, asked of the broker at `asked_at_ms`. Read up to it,
    every record appended before the question is forwarded: T = asked_at - skew (the skew covers
    a command stamped by the gateway a moment before the broker appended it). Behind it: the
    time of the last command forwarded, less the same skew (a later record stamped a moment
    earlier by another gateway). None when neither is known.
    """
    if through is not None and high is not None and through >= high:
        return asked_at_ms - skew_ms
    if last_time_ms is not None:
        return last_time_ms - skew_ms
    return None


def marker_value(worker: str, partitions: int, asked_at_ms: int, watermarks: dict[int, int]) -> bytes:
    """The marker on every partition of APP-items: the commands partitions this worker owns, each read through T."""
    return json.dumps({"worker": worker, "partitions": partitions, "at": asked_at_ms,
                       "wm": {str(p): int(t) for p, t in sorted(watermarks.items())}}, separators=(",", ":")).encode()


def decode_marker(value: bytes) -> tuple[int, dict[int, int]]:
    """(the number of commands partitions, {commands partition: T}) of a marker."""
    doc = json.loads(value)
    return int(doc["partitions"]), {int(p): int(t) for p, t in doc["wm"].items()}


def is_marker(headers) -> bool:
    """Is this message of APP-items a watermark marker (its header), not a command?"""
    pairs = headers.items() if isinstance(headers, dict) else (headers or ())
    return any(k == WATERMARK_HEADER for k, _ in pairs)


def step_cutoff(now_ms: int, partitions: int | None, marks: dict[int, tuple[int, int]], waiting_since_ms: int,
                hold_ms: int) -> tuple[int, int]:
    """(cutoff, strict) for one partition of APP-items: its steps due at or before `cutoff` fire.

    `marks`: commands partition -> (its watermark T, when T last advanced). `strict` = min(now,
    every commands partition's T): what the commands alone allow. A commands partition whose T
    has not advanced for `hold_ms` (nor been seen, for one never marked) since `waiting_since_ms`
    (the items partition's assignment, or the worker's last pause) is left out of `cutoff`: its
    owner is stuck or gone, and the steps fire by the wall clock (the bounded hold).
    """
    if partitions is None:  # no marker yet: nothing is known of the commands
        held = now_ms - waiting_since_ms < hold_ms
        return (-1 if held else now_ms), -1
    strict = cutoff = now_ms
    for p in range(partitions):
        t, advanced_at = marks.get(p, (-1, waiting_since_ms))
        strict = min(strict, t)
        if now_ms - max(advanced_at, waiting_since_ms) < hold_ms:
            cutoff = min(cutoff, t)
    return cutoff, strict


def hold_release_at(due_ms: int, partitions: int | None, marks: dict[int, tuple[int, int]], waiting_since_ms: int,
                    hold_ms: int) -> int:
    """When the bounded hold lets a step due at `due_ms` fire if no watermark moves (epoch ms)."""
    if partitions is None:
        return waiting_since_ms + hold_ms
    return max([max(adv, waiting_since_ms) + hold_ms for p in range(partitions)
                for t, adv in [marks.get(p, (-1, waiting_since_ms))] if t < due_ms], default=due_ms)


def step_fire_at(due_ms: int, now_ms: int, partitions: int | None, marks: dict[int, tuple[int, int]],
                 waiting_since_ms: int, hold_ms: int) -> int:
    """When a step due at `due_ms` can fire if no marker comes meanwhile (epoch ms; a marker may free it
    sooner): at its time if the watermarks have passed it, else when the hold lets it go. The timer
    loop sleeps until then rather than waking at each due time only to find the step held."""
    if partitions is None:
        return max(due_ms, hold_release_at(due_ms, None, marks, waiting_since_ms, hold_ms))
    bound = min([t for p in range(partitions) for t, adv in [marks.get(p, (-1, waiting_since_ms))]
                 if now_ms - max(adv, waiting_since_ms) < hold_ms], default=None)
    if bound is None or due_ms <= bound:
        return max(due_ms, now_ms)
    return max(due_ms, hold_release_at(due_ms, partitions, marks, waiting_since_ms, hold_ms))


class WatermarkBook:
    """Per partition of APP-items, the latest watermark of each commands partition (the markers read there).

    Not state: kept in memory, empty after a restart (the job waits for fresh markers, or the hold).
    The newest claim per commands partition wins by value: every claim is true of what is before it
    on the partition, so after a rebalance an earlier owner's higher claim stays true.
    """

    def __init__(self, hold_ms: int):
        self.hold_ms = hold_ms
        self.partitions: int | None = None  # commands partitions (from the markers)
        self._marks: dict[int, dict[int, tuple[int, int]]] = {}
        self._since: dict[int, int] = {}
        self._resumed = 0

    def assign(self, partition: int, now_ms: int) -> None:
        if partition not in self._since:
            self._since[partition] = now_ms
            self._marks[partition] = {}

    def assigned(self) -> list[int]:
        return sorted(self._since)

    def revoke(self, partition: int) -> None:
        self._since.pop(partition, None)
        self._marks.pop(partition, None)

    def resumed(self, now_ms: int) -> None:
        """The worker was paused (or starved): the hold counts again from now."""
        self._resumed = now_ms

    def observe(self, partition: int, partitions: int, watermarks: dict[int, int], now_ms: int) -> bool:
        """A marker read on `partition`; True if a watermark advanced."""
        self.assign(partition, now_ms)
        self.partitions = partitions
        marks, advanced = self._marks[partition], False
        for p, t in watermarks.items():
            if p not in marks or t > marks[p][0]:
                marks[p] = (t, now_ms)
                advanced = True
        return advanced

    def _since_of(self, partition: int, now_ms: int) -> int:
        return max(self._since.get(partition, now_ms), self._resumed)

    def cutoff(self, partition: int, now_ms: int) -> tuple[int, int]:
        return step_cutoff(now_ms, self.partitions, self._marks.get(partition, {}), self._since_of(partition, now_ms),
                           self.hold_ms)

    def fire_at(self, partition: int, due_ms: int, now_ms: int) -> int:
        return step_fire_at(due_ms, now_ms, self.partitions, self._marks.get(partition, {}),
                            self._since_of(partition, now_ms), self.hold_ms)

    def release_at(self, partition: int, due_ms: int, now_ms: int) -> int:
        return hold_release_at(due_ms, self.partitions, self._marks.get(partition, {}),
                               self._since_of(partition, now_ms), self.hold_ms)


def items_position(applied_next: int | None, committed: int | None) -> int | None:
    """The offset of an APP-items partition below which the items agent has applied every message
    (None: not known): what it applied since the assignment, else the group's committed offset
    (faust commits only what the agent finished)."""
    known = [o for o in (applied_next, committed) if o is not None]
    return max(known) if known else None


class LocalClaims:
    """The command watermark without the round trip through Kafka, for the partitions of APP-items
    this worker owns itself (docs/workflows.md, "Late commands and the watermark").

    A claim "commands partition p is read through T" is made for items partition q once every
    command of p stamped at or before T has been delivered to APP-items (by this worker, or by an
    earlier owner of p before it committed), with `high`, q's high watermark asked after that: the
    claim holds on q once the items agent has applied q up to `high`. A marker through Kafka says
    the same by its place on q; here the worker's own bookkeeping says it, a round trip sooner.
    Claims wait in order of `high`; at most `limit` per partition (the oldest go first: a newer
    claim says more, only later).
    """

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._pending: dict[int, list[tuple[int, int, dict[int, int]]]] = {}

    def add(self, partition: int, high: int, partitions: int, marks: dict[int, int]) -> None:
        pending = self._pending.setdefault(partition, [])
        pending.append((high, partitions, dict(marks)))
        pending.sort(key=lambda c: c[0])
        del pending[:-self.limit]

    def release(self, partition: int, position: int | None) -> list[tuple[int, dict[int, int]]]:
        """(commands partitions, {p: T}) of the claims on `partition` that hold once it is applied up to
        `position`, oldest first; they are removed."""
        pending = self._pending.get(partition)
        if not pending:
            return []
        ready = [c for c in pending if c[0] <= 0 or (position is not None and c[0] <= position)]
        if ready:
            self._pending[partition] = pending[len(ready):]
        return [(n, marks) for _, n, marks in ready]

    def revoke(self, partition: int) -> None:
        self._pending.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._pending.values())


def refusal_dead_letter(envelope_bytes: bytes, reason: str, command=None, *, command_id: str | None = None,
                        at: int | None = None) -> dict:
    """The intel.dlq record of a refused (or undecodable) command: stage WORKFLOW; the same id on a replay."""
    from schemas.ids import NAMESPACE

    actor = getattr(command, "actor", None)
    cid = command_id or getattr(command, "command_id", None) or uuid.uuid5(NAMESPACE, envelope_bytes.decode(errors="replace")).hex
    who = f"{actor.name} of {actor.agency or 'the bus'}" if actor else "unknown"
    return dead_letter_record(
        "WORKFLOW", f"{COMMANDS_TOPIC} command {cid}", f"{reason} (command {cid} by {who})", envelope_bytes,
        kind="workflow", field=type(command).__name__ if command is not None else None,
        source_region=actor.region if actor and actor.region else None, source_system=actor.name if actor else None,
        failed_at_ms=at, dlq_id=str(uuid.uuid5(NAMESPACE, f"workflow-refusal|{cid}")))


# --- the faust app --------------------------------------------------------------------------


def _item_matches(only: re.Pattern | None, *texts: str) -> bool:
    return only is None or any(only.search(t or "") for t in texts)


class EmittedEvents(ReadBack):
    """The workflow job's read-back of its output topic (ReadBack), on new items partitions.

    An item's new state is written only after its events were delivered
    (publish_outputs_then_state). A crash between the two replays the command on the old state,
    which makes the same events with the same ids: those on the topic in the last `seconds`
    are skipped (`fresh`), the others are sent. `before` runs ahead of each round that may
    publish events (the items agent's batches, the timers), under the job's lock;
    read(since epoch ms) -> {event id}."""

    def __init__(self, read, *, seconds: float, clock=time.time):
        super().__init__(read, seconds=seconds, what="the workflow events", items="events", clock=clock)
        self.ids: set[str] = set()

    async def before(self) -> None:
        found = await self.read_back()
        if found is not None:
            self.ids = found

    def fresh(self, events: list) -> list:
        """The events not already on the topic."""
        if not self.ids:
            return events
        kept = [e for e in events if e.event_id not in self.ids]
        if len(kept) != len(events):
            NOT_RESENT.inc(len(events) - len(kept))
        return kept


async def _produce_and_wait(producer, waiter, out: list, error_cls, what: str, on_delivered=None) -> None:
    """Produce (topic, key, value, partition) messages and wait for every delivery report."""
    outstanding, errors = [0], []

    def delivered(err, msg):
        outstanding[0] -= 1
        if err is not None:
            errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
        elif on_delivered is not None:
            on_delivered(msg)

    for topic, key, value, partition in out:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        outstanding[0] += 1
    remaining = await waiter.wait(outstanding, 60.0)
    if remaining or errors:
        raise error_cls(f"workflows: {remaining} {what} undelivered, errors: {errors[:3]}")


async def publish_outputs_then_state(producer, waiter, messages, table=None, error_cls=RuntimeError) -> None:
    """Produce the messages (items' events, forwarded commands, dead letters), wait for them; only
    then produce the table's pending writes to its changelog, wait, and write them into the store.

    The order is the exactly-once argument. Input offsets are committed after this returns, so a
    crash anywhere in it replays the input. A crash after the state write but before an output's
    delivery would replay a command the item has already applied (the machine's idempotence by
    command id: "changes nothing and emits nothing"), and the output would be lost: on one broker
    both travel together, on three they go to different leaders and are retried apart while one
    fails over. With the outputs first, the only crash window left is after the outputs and
    before the state: the replay then makes the same events again with the same event ids
    (uuid5 of item, cause and part), which EmittedEvents finds on the topic and does not send
    again. Should that read-back fail (logged), they go out twice with the same ids: ClickHouse's
    Replacing table and the scorecard count them once, the live feed would show them twice. The
    stream jobs do the same (stream_jobs/app.py, BatchRunner; EmittedHits).
    """
    writes = table.drain() if table is not None else {}
    await _produce_and_wait(producer, waiter, list(messages), error_cls, "outputs")
    if table is None:
        return
    offsets: dict[int, int] = {}

    def note(msg):
        offsets[msg.partition()] = max(offsets.get(msg.partition(), -1), msg.offset())

    changelog = [(table.changelog_topic, k, v, p) for p, kv in writes.items() for k, v in kv.items()]
    if changelog:
        await _produce_and_wait(producer, waiter, changelog, error_cls, "state writes", on_delivered=note)
    table.apply(writes, offsets)


def create_app(settings, *, worker_index: int = 0, app_id: str = APP_ID, datadir: str | None = None):
    import faust
    from confluent_kafka import KafkaException

    from ops.kafka_auth import JOBS, faust_credentials
    from schemas.regions import load_regions
    from schemas.wire import RawDecoder, RegistryUnavailable, SchemaCodec
    from stream_jobs import metrics as job_metrics
    from stream_jobs.app import (DeliveryWaiter, _raw_table, count_retention_losses, make_producer, not_ready_because,
                                 rocksdb_available)
    from stream_jobs import faust_patches
    from stream_jobs.tables import FaustTableState
    from workflows.machine import WorkflowRefusal, apply, fire_due, next_due
    from workflows.policy import load_policy

    if settings.workflows_fetch_min_bytes > 1:  # else faust's own fetch: answered as soon as a message is there
        faust_patches.install_fetch_wait(settings.workflows_fetch_min_bytes, settings.workflows_fetch_max_wait_ms)
    policy = load_policy()
    regions = load_regions()
    hit_backfill_s = settings.workflows_hit_backfill_s
    only = re.compile(settings.workflows_only) if settings.workflows_only else None
    datadir = Path(datadir or Path(settings.stack_dir) / "jobs" / f"workflows-{worker_index}")
    datadir.mkdir(parents=True, exist_ok=True)
    replication = 3 if settings.profile == "production" else 1
    items_t, records_t, answers_t = items_topic(app_id), records_topic(app_id), answers_topic(app_id)
    # benchmarks only: the events on a topic of the app's own (Avro of intel.workflow's schema), so that
    # 100,000 reminders do not reach the stack's sink, feeds and queues
    out_t = settings.workflows_output_topic or WORKFLOW_TOPIC
    if out_t != WORKFLOW_TOPIC and not out_t.startswith(app_id + "-"):
        raise SystemExit(f"INTELBUS_WORKFLOWS_OUTPUT_TOPIC must start with {app_id}- (the job's own topics), not {out_t!r}")
    _ensure_topics(settings, [items_t, records_t, answers_t] + ([out_t] if out_t != WORKFLOW_TOPIC else []),
                   settings.partitions, replication)
    app = faust.App(
        app_id,
        broker=[f"kafka://{h}" for h in settings.kafka.split(",")],
        broker_credentials=faust_credentials(settings, JOBS),
        store="rocksdb://" if rocksdb_available() else "memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=replication,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset=settings.workflows_offset_reset,
        stream_wait_empty=False,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.workflows_session_s,
        broker_heartbeat_interval=1.0,
        table_standby_replicas=0,
    )
    items_table = FaustTableState(_raw_table(app, "items", settings.partitions))
    by_record = FaustTableState(_raw_table(app, "hits-by-record", settings.partitions))
    answers = FaustTableState(_raw_table(app, "answers-by-identifier", settings.partitions))
    producer = make_producer(settings)
    waiter = DeliveryWaiter(producer)
    kafka_config = settings.kafka_config(JOBS)
    # a replay after a crash skips the events already on the topic (publish_outputs_then_state writes the
    # state after them): the last INTELBUS_JOBS_LOOKBACK_S of it, read back on each new assignment
    emitted = EmittedEvents(lambda since_ms: read_first_strings_since(
        kafka_config, out_t, since_ms, timeout=20.0, group=f"{app_id}-emitted",
        short="events of theirs sent before a crash may be sent again"), seconds=settings.jobs_lookback_s)
    count_retention_losses(app, kafka_config, app_id)
    codec = SchemaCodec(url=settings.registry_url)
    decode = RawDecoder.for_registry(settings.registry_url)
    lock = asyncio.Lock()
    index = DueIndex()
    state = {"rebuild": True}
    tick_s = settings.workflows_tick_s
    wake = asyncio.Event()  # set when a deadline earlier than the timer loop's wake-up time is indexed
    clock = {"wake_at": 0}  # epoch ms the timer loop sleeps until
    # a marker on demand: the timers ask for one as soon as a held step's due time is past the skew, instead of
    # waiting for the next tick (a step held only for want of a fresh marker waited up to a tick and a half)
    marker_wake = asyncio.Event()
    markers = {"asked_at": 0, "tried_at": 0, "wanted_at": None}
    # the command watermark (docs/workflows.md, "Late commands and the watermark")
    wm_interval = settings.workflows_watermark_s
    wm_skew_ms = settings.workflows_watermark_skew_ms
    book = WatermarkBook(int(settings.workflows_hold_s * 1000))
    forwarded: dict[int, tuple[int, int | None]] = {}  # commands partition -> (next offset, the last command's time ms)
    # the local watermark (LocalClaims): the items agent's applied offsets, the commands agent's publishes
    claims = LocalClaims()
    applied: dict[int, int] = {}  # APP-items partition -> the offset after the last message the items agent applied
    forwards = {"started": 0, "done": 0, "event": asyncio.Event()}
    assignments = [0]  # counts rebalances: a claim made across one is dropped
    worker_uid = f"{worker_index}-{uuid.uuid4().hex[:8]}"

    async def publish(messages, table: FaustTableState | None = None):
        await publish_outputs_then_state(producer, waiter, messages, table, KafkaException)

    def event_messages(events):
        return [(out_t, e.item_id.encode(), codec.encode(WORKFLOW_TOPIC, e.to_avro()), None) for e in emitted.fresh(events)]

    def load(partition: int, item_id: str):
        raw = items_table.get(partition, item_id.encode())
        doc = json.loads(raw) if raw else None
        return m.from_json(doc) if doc is not None and WAITING not in doc else None

    def save(partition: int, item) -> None:
        items_table.put(partition, item.item_id.encode(),
                        json.dumps(m.to_json(item), ensure_ascii=False, separators=(",", ":")).encode())
        at = next_due(item, policy, regions)
        index.set(item.item_id, partition, at)
        OPEN_ITEMS.set(len(index))
        if at is not None and at < clock["wake_at"]:
            wake.set()  # the timer loop sleeps until a later time: wake it for this deadline

    # intel.workflow.commands -> APP-items (our partitioner: the commands share the item's partition)
    async def commands_agent(stream):
        async for batch in _guarded(stream.take_events(ITEMS_BATCH, within=0.01), "commands"):
            out = []
            for event in batch:
                msg = event.message
                key = msg.key or b""
                if _item_matches(only, key.decode(errors="replace"), msg.value.decode(errors="replace")):
                    out.append((items_t, key or None, msg.value, None))
                before = forwarded.get(msg.partition, (0, None))[1]
                forwarded[msg.partition] = (msg.offset + 1, int(msg.timestamp * 1000) if msg.timestamp else before)
            # `forwarded` is read by the markers' task: no await between here and the produce calls of
            # publish(), so a marker produced after this line is behind these commands on APP-items
            if out:
                forwards["started"] += 1
                await publish(out)
                forwards["done"] += 1
                forwards["event"].set()

    def consumer_offsets(partition: int) -> tuple[int | None, int | None]:
        """(faust's committed offset, the consumer's position if faust has delivered nothing yet) of a
        commands partition; None where not known."""
        from faust.types import TP

        tp = TP(COMMANDS_TOPIC, partition)
        consumer = app.consumer
        committed = consumer._committed_offset.get(tp)
        untouched = None
        if consumer._read_offset.get(tp) is None:
            try:
                from aiokafka import TopicPartition as AioTP

                state = consumer._thread._ensure_consumer()._subscription.subscription.assignment.state_value(
                    AioTP(COMMANDS_TOPIC, partition))
                untouched = state.position if state is not None and state.has_valid_position else None
            except Exception:  # not assigned any more, or the consumer is restarting
                untouched = None
        return committed, untouched

    def release_claims(partition: int) -> None:
        """The local claims on an APP-items partition that its applied offset now bears out, into the book."""
        from faust.types import TP

        done = applied.get(partition)
        committed = app.consumer._committed_offset.get(TP(items_t, partition)) if done is None else None
        now_ms = int(time.time() * 1000)
        for n, marks in claims.release(partition, items_position(done, committed)):
            observe_marks(partition, n, marks, now_ms)

    async def claim_locally(mine: list[int], n_commands: int, marks: dict[int, int]) -> None:
        """The marks for this worker's own partitions of APP-items, without markers: once the commands
        forwarded so far are delivered, each partition's high watermark is what its items agent must
        have applied for the marks to hold there (LocalClaims)."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        generation, started = assignments[0], forwards["started"]
        deadline = time.monotonic() + 5.0
        while forwards["done"] < started:  # the publishes that `marks` counted as forwarded: delivered first
            forwards["event"].clear()
            try:
                await asyncio.wait_for(forwards["event"].wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return  # the commands agent is stuck: no claim (the steps wait, at most the hold)
        futures = admin.list_offsets({TopicPartition(items_t, q): OffsetSpec.latest() for q in mine},
                                     request_timeout=5)
        highs = {tp.partition: (await asyncio.wrap_future(fut)).offset for tp, fut in futures.items()}
        if assignments[0] != generation:
            return  # a rebalance meanwhile: what was forwarded may be another worker's now
        for q in mine:
            if q in highs:
                claims.add(q, highs[q], n_commands, marks)
                release_claims(q)

    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config(JOBS))

    @app.task
    async def _watermarks():
        """Every wm_interval (or sooner, for a held step): "commands partition p is read through T" for each
        commands partition this worker owns, as a marker produced behind the commands it forwarded on each
        partition of APP-items another worker owns, and as a local claim on the partitions it owns itself."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        n_commands = n_items = 0
        untouched_before: dict[int, int | None] = {}
        failing = False

        def delivered(err, _msg):
            if err is not None:
                log.warning("a watermark marker was not delivered: %s", err)

        async def send_markers(n_commands: int, n_items: int) -> tuple[int, int]:
            nonlocal failing
            try:
                assignment = app.consumer.assignment()
                owned = sorted(tp.partition for tp in assignment if tp.topic == COMMANDS_TOPIC)
                mine = sorted(tp.partition for tp in assignment if tp.topic == items_t)
            except Exception:
                return n_commands, n_items
            if not owned or not_ready_because(app) is not None:
                return n_commands, n_items
            if not n_items:
                try:
                    md = await asyncio.to_thread(admin.list_topics, timeout=15)
                    n_commands, n_items = len(md.topics[COMMANDS_TOPIC].partitions), len(md.topics[items_t].partitions)
                except Exception as e:  # the broker away: try again next tick (the steps wait, at most the hold)
                    log.warning("cannot read the partitions of %s and %s: %s", COMMANDS_TOPIC, items_t, e)
                    return n_commands, n_items
            asked_at = int(time.time() * 1000)
            markers["asked_at"] = asked_at
            highs = {}
            try:
                futures = admin.list_offsets({TopicPartition(COMMANDS_TOPIC, p): OffsetSpec.latest() for p in owned},
                                             request_timeout=5)
                for tp, fut in futures.items():
                    highs[tp.partition] = (await asyncio.wrap_future(fut)).offset
                if failing:
                    log.info("the commands' high watermarks are read again")
                failing = False
            except Exception as e:  # the watermark stays at the last command read: steps wait (at most the hold)
                if not failing:
                    log.warning("cannot read the high watermarks of %s: %s", COMMANDS_TOPIC, e)
                failing = True
            # from here to the produce calls no await: `forwarded` is what has been produced
            marks = {}
            for p in owned:
                next_offset, last_time = forwarded.get(p, (None, None))
                committed, untouched = consumer_offsets(p)
                through = read_through(next_offset, committed, untouched, untouched_before.get(p))
                untouched_before[p] = untouched
                t = commands_watermark(through, highs.get(p), asked_at, last_time, wm_skew_ms)
                if t is not None:
                    marks[p] = t
            if not marks:
                return n_commands, n_items
            value = marker_value(worker_uid, n_commands, asked_at, marks)
            for q in sorted(set(range(n_items)) - set(mine)):
                while True:
                    try:
                        producer.produce(items_t, key=WATERMARK_KEY, value=value, partition=q,
                                         headers=[(WATERMARK_HEADER, b"1")], on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)
            if mine:
                await claim_locally(mine, n_commands, marks)
            return n_commands, n_items

        broken = False
        while True:
            marker_wake.clear()
            # from the last attempt, sent or not (not ready, nothing owned): at least the minimum gap between two
            delay = marker_delay(time.time() * 1000, markers["tried_at"], markers["wanted_at"], wm_interval)
            if delay > 0:
                try:
                    await asyncio.wait_for(marker_wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = marker_delay(time.time() * 1000, markers["tried_at"], markers["wanted_at"], wm_interval)
                if delay > 0:  # woken for a wish further off than this: sleep again
                    continue
            markers["wanted_at"] = None
            markers["tried_at"] = int(time.time() * 1000)
            try:
                n_commands, n_items = await send_markers(n_commands, n_items)
                broken = False
            except Exception:  # never silently: without markers every step would wait for the hold
                if not broken:
                    log.warning("the watermark markers could not be sent; trying again every tick", exc_info=True)
                broken = True

    # APP-answers: the earlier-answers index, and the requests' lookups in it
    async def answers_agent(stream):
        async for event in _guarded(stream.events(), "answers"):
            msg = event.message
            raw = answers.get(msg.partition, msg.key)
            kept = json.loads(raw) if raw else []
            after, forwards = answers_step(msg.key.decode(), kept, msg.value)
            if after is not kept:
                answers.put(msg.partition, msg.key, json.dumps(after, ensure_ascii=False).encode())
            out = [(answers_t if where == "answers" else items_t, key.encode(), value, None) for where, key, value in forwards]
            await publish(out, answers)

    # intel.hit, intel.wanted.unique -> APP-records, keyed by record key (in batches: the busiest input)
    recent = RecentHits()

    async def route_agent(stream):
        async for batch in _guarded(stream.take_events(500, within=0.05), "route"):
            out = []
            for event in batch:
                msg = event.message
                try:
                    record = decode(msg.value)
                    if msg.topic != HIT_TOPIC and record.get("action") not in m.CLOSING_REVISIONS:
                        continue  # LISTED/UPDATED change nothing on a follow-up
                    if msg.topic == HIT_TOPIC and not hit_is_recent(record, int(time.time() * 1000), hit_backfill_s):
                        continue
                    if msg.topic == HIT_TOPIC and record.get("hit_type") in m.HIT_TYPES and not recent.first(str(record["hit_id"])):
                        COPIES_SKIPPED.inc()
                        continue  # another province's copy of a hit routed moments ago (RecentHits)
                    routed = hit_route(record) if msg.topic == HIT_TOPIC else wanted_route(record)
                except RegistryUnavailable:  # not the record's fault: skipped, its follow-up would never open
                    _exit_to_be_restarted("route")
                except Exception as e:  # not ours to dead-letter: the jobs checked these records
                    log.warning("%s[%d]@%d: not routed: %s", msg.topic, msg.partition, msg.offset, e)
                    continue
                if routed is not None and _item_matches(only, routed[0]):
                    out.append((records_t, routed[0].encode(), routed[1], None))
            if out:
                await publish(out)

    async def records_agent(stream):
        # in batches, as the items: one produce-and-await of the batch's forwards, then one of its table
        # writes. One message at a time, two deliveries awaited each, a worker absorbed a backlog of hits
        # at 155-196/s and 2.4-3.5 ms of CPU a hit; in batches 1,000-1,300/s and 0.7-0.9 ms
        # (bench/results/workflow-catchup.md). A record's later message in the batch reads its earlier
        # one's pending write (the table's overlay).
        async for batch in _guarded(stream.take_events(ITEMS_BATCH, within=0.01), "records"):
            out = []
            try:
                for event in batch:
                    msg = event.message
                    raw = by_record.get(msg.partition, msg.key)
                    hits = json.loads(raw) if raw else []
                    after, forwards = route_by_record(msg.key.decode(), hits, msg.value)
                    if after != hits:
                        by_record.put(msg.partition, msg.key, json.dumps(after).encode() if after else None)
                    out += [(items_t, item_id.encode(), env, None) for item_id, env in forwards]
                await publish(out, by_record)
            except BaseException:
                by_record.drain()  # nothing half-written is kept (the worker exits and reads again)
                raise

    async def items_agent(stream):
        # in batches: one produce-and-await per batch, not per command (a worker applied about 140
        # commands/s one by one: bench/results/workflow-timers.md); the batch's events, then its table
        # writes once the events are delivered, and the store once the writes are (publish_outputs_then_state)
        async for batch in _guarded(stream.take_events(ITEMS_BATCH, within=0.01), "items"):
            if all(is_marker(event.message.headers) for event in batch):
                # markers only: the commands before them were applied by the earlier batches, so they need
                # not wait for the timers' lock (held across a whole round's publish)
                for event in batch:
                    observe_marker(event.message.partition, event.message.value)
                applied_through(batch)
                continue
            async with lock:
                try:
                    await emitted.before()
                    out = []
                    for event in batch:
                        msg = event.message
                        if is_marker(msg.headers):  # not a command: no table, no dead letter
                            observe_marker(msg.partition, msg.value)
                            continue
                        out += handle_command(msg.partition, msg.key.decode() if msg.key else "", msg.value)
                    await publish(out, items_table)
                except BaseException:
                    items_table.drain()  # nothing half-written is kept (the worker exits and reads again)
                    raise
                applied_through(batch)

    def applied_through(batch) -> None:
        """The batch is applied (its writes delivered): the local claims its offsets bear out hold now."""
        last: dict[int, int] = {}
        for event in batch:
            last[event.message.partition] = max(last.get(event.message.partition, -1), event.message.offset + 1)
        for q, position in last.items():
            applied[q] = max(applied.get(q, 0), position)
            release_claims(q)

    def observe_marker(partition: int, value: bytes) -> None:
        try:
            n, marks = decode_marker(value)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s[%d]: a watermark marker that cannot be read: %s", items_t, partition, e)
            return
        observe_marks(partition, n, marks, int(time.time() * 1000))

    def observe_marks(partition: int, n: int, marks: dict[int, int], now_ms: int) -> None:
        if book.observe(partition, n, marks, now_ms):
            head = index.heads().get(partition)
            if head is not None and head <= book.cutoff(partition, now_ms)[0]:
                wake.set()  # a step held for the commands is free now

    def step(state, key: str, value: bytes) -> tuple[object, list]:
        """One command on the item's state: (state after, messages to publish). Refusals are dead letters."""
        try:
            env = decode_envelope(value)
        except BadCommand as e:
            COMMANDS.labels("undecodable").inc()
            job_metrics.DLQ.labels("WORKFLOW").inc()
            return state, [(DLQ_TOPIC, key.encode() or None, codec.encode(DLQ_TOPIC, refusal_dead_letter(value, str(e))), None)]
        cmd = env.command
        try:
            if cmd.item_id != key:
                raise WorkflowRefusal(f"command {cmd.command_id} names item {cmd.item_id} but was keyed {key!r}")
            after, events, effects = apply(state, cmd, env.issued_at, policy, regions)
        except WorkflowRefusal as e:
            COMMANDS.labels("refused").inc()
            job_metrics.DLQ.labels("WORKFLOW").inc()
            log.info("refused %s %s on %s: %s", type(cmd).__name__, cmd.command_id, cmd.item_id, e)
            dl = refusal_dead_letter(value, str(e), cmd, at=env.issued_at)
            return state, [(DLQ_TOPIC, cmd.item_id.encode(), codec.encode(DLQ_TOPIC, dl), None)]
        COMMANDS.labels("applied" if events else "no-op").inc()
        indexed = [index_message(e.answer) for e in effects if isinstance(e, m.IndexAnswer)]
        return after, event_messages(events) + [(answers_t, k.encode(), v, None) for k, v in indexed]

    def handle_command(partition: int, key: str, value: bytes) -> list:
        """One message of APP-items: the messages to publish; the table's writes are left pending."""
        raw = items_table.get(partition, key.encode())
        doc = json.loads(raw) if raw else None
        try:
            env = decode_envelope(value)
        except BadCommand:
            env = None
        if doc is not None and WAITING in doc:
            if env is None or not (env.enriched and isinstance(env.command, m.SendRequest)):
                # the item's request is still in the answers index: later commands wait for it, in order
                items_table.put(partition, key.encode(), json.dumps({WAITING: [*doc[WAITING], value.decode()]}).encode())
                return []
            state, messages = step(None, key, value)
            for queued in doc[WAITING]:
                state, more = step(state, key, queued.encode())
                messages += more
        elif doc is None and env is not None and needs_answers(env) and not env.enriched and env.command.item_id == key:
            # a new request naming subjects: look its subjects up first (APP-answers), keep its place here
            subject, lookup = lookup_message(value, env)
            items_table.put(partition, key.encode(), json.dumps({WAITING: []}).encode())
            return [(answers_t, subject.encode(), lookup, None)]
        else:
            before = m.from_json(doc) if doc is not None else None
            state, messages = step(before, key, value)
            if state is before:
                return messages
        if state is not None:
            save(partition, state)
        else:
            items_table.put(partition, key.encode(), None)  # the waiting request was refused: nothing is kept
        return messages

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **kwargs):
        assignments[0] += 1
        now_ms = int(time.time() * 1000)
        for tp in assigned:
            if tp.topic == items_t:
                book.assign(tp.partition, now_ms)  # no markers read here yet: its steps wait for them (or the hold)
        emitted.on_assigned(tp.partition for tp in assigned if tp.topic == items_t)
        state["rebuild"] = True
        wake.set()

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs):
        assignments[0] += 1
        index.drop_partitions(tp.partition for tp in revoked if tp.topic == items_t)
        for tp in revoked:
            if tp.topic == items_t:
                book.revoke(tp.partition)
                claims.revoke(tp.partition)
                applied.pop(tp.partition, None)
                try:
                    WATERMARK_LAG.remove(str(tp.partition))
                except KeyError:
                    pass
            elif tp.topic == COMMANDS_TOPIC:
                forwarded.pop(tp.partition, None)
        state["rebuild"] = True

    def rebuild() -> None:
        """The due index from the local store of the assigned partitions of APP-items."""
        store = items_table.table.data
        partitions = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == items_t)
        index.clear()
        n = 0
        for p in partitions:
            book.assign(p, int(time.time() * 1000))
            if hasattr(store, "_db_for_partition"):
                pairs = store._visible_items(store._db_for_partition(p))
            else:
                pairs = ((k, v) for k, v in store.data.items() if store._key_partition.get(k) == p)
            for k, v in pairs:
                doc = json.loads(v)
                if WAITING in doc:
                    continue
                item = m.from_json(doc)
                index.set(item.item_id, p, next_due(item, policy, regions))
                n += 1
        OPEN_ITEMS.set(len(index))
        log.info("due index rebuilt: %d items in partitions %s, %d with a deadline pending", n, partitions, len(index))

    async def fire_timers() -> int | None:
        """Fire every step due by now; the next due time (epoch ms) or None."""
        async with lock:
            try:
                await emitted.before()
                if state["rebuild"]:
                    state["rebuild"] = False
                    rebuild()
                now_ms = int(time.time() * 1000)
                # each partition fires up to its command watermark (a command stamped before a step and
                # not read yet must find it unsent), or by the wall clock after the bounded hold
                heads = index.heads()
                cutoffs = {p: book.cutoff(p, now_ms) for p in set(heads) | set(book.assigned())}
                for p, (_, strict) in cutoffs.items():
                    WATERMARK_LAG.labels(str(p)).set(max(0.0, (now_ms - strict) / 1000) if strict >= 0 else float("nan"))
                messages, fired, by_hold = [], [], []
                # bounded work per round: after a downtime thousands are overdue at once; the lock is
                # released between rounds so that commands are not held up behind all of them
                for item_id, partition in index.pop_due(now_ms, limit=TIMER_ROUND,
                                                         cutoffs={p: c for p, (c, _) in cutoffs.items()}):
                    cutoff, strict = cutoffs[partition]
                    msgs, events = fire_item(item_id, partition, now_ms, cutoff)
                    by_hold += [(e, partition, strict) for e in events if (e.scheduled_at or 0) > strict]
                    messages += msgs
                    fired += events
                    if len(messages) >= 250:  # one produce-and-await per 250 events (not per item; the first go out soon)
                        await publish(messages, items_table)
                        observe_fired(fired, now_ms)
                        messages, fired = [], []
                if messages:
                    await publish(messages, items_table)
                    observe_fired(fired, now_ms)
                if by_hold:
                    FIRED_BY_HOLD.inc(len(by_hold))
                    lags = {p: "no marker yet" if strict < 0 else f"{(now_ms - strict) / 1000:.1f} s behind"
                            for _, p, strict in by_hold}
                    log.warning("%d deadline steps fired by the wall clock after the hold (%s): the command watermark "
                                "is stuck or missing on partitions %s", len(by_hold),
                                ", ".join(f"{e.event_type} {e.item_id}" for e, _, _ in by_hold[:3]),
                                ", ".join(f"{p} ({lag})" for p, lag in sorted(lags.items())))
            except Exception:
                # Kafka or the registry away: what was not saved fires at a later tick (same event ids)
                log.warning("could not fire the due deadlines; the index is rebuilt and they fire at a later tick",
                            exc_info=True)
                items_table.drain()  # nothing half-written is kept
                state["rebuild"] = True
                return None
            finally:
                OPEN_ITEMS.set(len(index))
            return next_wake(int(time.time() * 1000))

    def next_wake(now_ms: int) -> int | None:
        """When the timers have something to do: a partition's earliest due time if the commands are read
        past it, else its hold's end (a marker that frees it wakes the loop sooner: waking at each due
        time only to find it held kept a starved worker busy, 2-s lateness at 100 steps/s)."""
        wake_at = None
        for p, head in index.heads().items():
            cutoff, _ = book.cutoff(p, now_ms)
            at = now_ms if head <= cutoff else max(now_ms + 1, book.fire_at(p, head, now_ms))
            wake_at = at if wake_at is None else min(wake_at, at)
            if head > cutoff:
                want_marker(head)
        return wake_at

    def want_marker(due_ms: int) -> None:
        """A step due at due_ms is held for the commands: ask for a marker that can free it."""
        at = marker_wanted_at(due_ms, markers["asked_at"], wm_skew_ms)
        if at is not None and (markers["wanted_at"] is None or at < markers["wanted_at"]):
            markers["wanted_at"] = at
            marker_wake.set()

    @app.task
    async def _timers():
        """Sleep until the next due time (at most tick_s: readiness, rebuilds), fire what is due, repeat.

        A fixed 1-s tick made a step up to a second late before any work (bench/results/workflow-timers.md):
        this loop wakes at the earliest due time of the index, or when a command indexes an earlier one.
        """
        try:
            while True:
                wake.clear()
                if not_ready_because(app) is None:
                    next_at = await fire_timers()
                    longest = tick_s
                else:
                    next_at, longest = None, min(tick_s, 0.25)  # not ready (recovering): look again soon
                now_ms = time.time() * 1000
                delay = longest if next_at is None else min(longest, max(0.0, (next_at - now_ms) / 1000))
                clock["wake_at"] = now_ms + delay * 1000
                if delay > 0:
                    try:
                        await asyncio.wait_for(wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)  # due already (it came during the publish): let the agents have a turn
                overslept = time.time() * 1000 - clock["wake_at"]
                if overslept > PAUSE_MS:
                    # the worker was stopped or starved: no marker could be read meanwhile, so the hold
                    # counts again from now (fresh markers come within a tick or two)
                    book.resumed(int(time.time() * 1000))
                    log.info("the timers woke %.1f s late (the worker was paused or starved): the command "
                             "watermark's hold counts again from now", overslept / 1000)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical("the workflow timers failed; the worker exits so that it is restarted", exc_info=True)
            logging.shutdown()
            os._exit(70)

    def fire_item(item_id: str, partition: int, now_ms: int, until_ms: int) -> tuple[list, list]:
        """Fire the item's steps due by until_ms: (messages, events); the new state is put in the table's pending writes."""
        item = load(partition, item_id)
        after, events, _ = fire_due(item, now_ms, policy, regions, until_ms=until_ms)
        if after is None:
            return [], []
        if not events:
            index.set(item_id, partition, next_due(after, policy, regions))
            return [], []
        messages = event_messages(events)  # before the table write: an encoding error leaves the state as it was
        save(partition, after)
        return messages, events

    def observe_fired(events, now_ms: int) -> None:
        for e in events:
            FIRED.labels(e.event_type).inc()
            TIMER_LAG.observe(max(0.0, (now_ms - (e.scheduled_at or now_ms)) / 1000))

    @app.timer(interval=1.0)
    async def _serve_producer_callbacks():
        producer.poll(0)

    @app.task
    async def _ready():
        was = None
        while True:
            ready = not_ready_because(app) is None
            if ready != was:
                job_metrics.READY.set(1 if ready else 0)
                log.info("workflows worker %d %s", worker_index, "ready" if ready else "not ready")
                was = ready
            await asyncio.sleep(0.25)

    raw = dict(key_serializer="raw", value_serializer="raw")
    app.agent(app.topic(COMMANDS_TOPIC, **raw), name="intelbus.workflows.commands")(_exits_on_failure("commands", commands_agent))
    app.agent(app.topic(HIT_TOPIC, WANTED_TOPIC, **raw), name="intelbus.workflows.route")(_exits_on_failure("route", route_agent))
    app.agent(app.topic(records_t, **raw), name="intelbus.workflows.records")(_exits_on_failure("records", records_agent))
    app.agent(app.topic(items_t, **raw), name="intelbus.workflows.items")(_exits_on_failure("items", items_agent))
    app.agent(app.topic(answers_t, **raw), name="intelbus.workflows.answers")(_exits_on_failure("answers", answers_agent))
    app.intelbus_producer = producer
    app.intelbus_policy = policy
    return app


async def _guarded(events, name: str):
    """The agent's events; any failure ends the worker (it is restarted and reads again from the commit)."""
    try:
        async for event in events:
            yield event
    except (asyncio.CancelledError, GeneratorExit):  # the worker stops: not a failure
        raise
    except BaseException:
        _exit_to_be_restarted(name)


def _exits_on_failure(name: str, agent):
    """The agent, ending the worker when its body fails too, not only its stream (`_guarded` sees
    only the stream's failures). Otherwise faust restarts the crashed actor, and `take_events`
    acknowledges the batch in hand in its `finally` when the abandoned generator is closed: the
    batch that failed could be committed unprocessed (a hit with no follow-up, a command lost)."""
    @functools.wraps(agent)
    async def run(stream):
        try:
            await agent(stream)
        except (asyncio.CancelledError, GeneratorExit):  # a rebalance or the worker stopping: not a failure
            raise
        except BaseException:
            _exit_to_be_restarted(name)

    return run


def _exit_to_be_restarted(name: str) -> None:
    """The worker ends with status 70 (its supervisor restarts it; it reads again from the commit),
    the exception being handled logged."""
    log.critical("workflow agent %s failed; the worker exits so that it is restarted", name, exc_info=True)
    logging.shutdown()
    os._exit(70)


def _ensure_topics(settings, names: list[str], partitions: int, replication: int) -> None:
    """Create the job's internal topics if missing (ACL: intelbus-jobs- prefix, CREATE)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from ops.kafka_auth import JOBS

    admin = AdminClient(settings.kafka_config(JOBS))
    existing = admin.list_topics(timeout=15).topics
    missing = [NewTopic(n, partitions, replication, config={"retention.ms": str(7 * 86_400_000)})
               for n in names if n not in existing]
    for name, fut in (admin.create_topics(missing, operation_timeout=15).items() if missing else []):
        try:
            fut.result()
        except Exception as e:  # created meanwhile by another worker
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


# --- the worker process ---------------------------------------------------------------------


def metrics_port(settings, index: int) -> int:
    return settings.metrics_port_base + 40 + index


def add_workflows(p):
    p.add_argument("--worker-index", type=int, default=0, help="this worker's index (datadir, metrics port)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port (default INTELBUS_METRICS_PORT_BASE + 40 + index)")
    p.add_argument("--app-id", default=APP_ID, help=argparse.SUPPRESS)  # tests: a group and topics of their own
    p.add_argument("--datadir", default=None, help=argparse.SUPPRESS)  # tests: default <stack>/jobs/workflows-<index>
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="intelbus log level")
    p.epilog = ("The workflow job: commands (intel.workflow.commands), hits and wanted revisions in; transitions, "
                "reminders and escalations out on intel.workflow (docs/workflows.md). Deadlines: ops/workflows.yaml "
                "or INTELBUS_WORKFLOWS_FILE.")

    def run(args):
        from ops.settings import load_settings

        return run_worker(load_settings(), args)

    return run


def run_worker(settings, args) -> int:
    import sys

    from stream_jobs.worker import configure_logging

    configure_logging(args.log_level)
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.setswitchinterval(0.0005)
    from prometheus_client import start_http_server

    from stream_jobs.app import private_worker

    port = args.metrics_port or metrics_port(settings, args.worker_index)
    app = create_app(settings, worker_index=args.worker_index, app_id=args.app_id, datadir=args.datadir)
    start_http_server(port, addr=settings.metrics_bind)
    log.info("workflows worker %d: app=%s kafka=%s metrics=:%d policy=%s", args.worker_index, args.app_id, settings.kafka,
             port, os.environ.get("INTELBUS_WORKFLOWS_FILE") or "ops/workflows.yaml")
    worker = private_worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="intelbus workflows", description="the workflow job's worker (foreground)")
    run = add_workflows(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
