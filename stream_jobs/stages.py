r"""The three stages of the stream jobs, as plain classes over batches of messages.

    intel.{alert,wanted,incident}  --DedupeStage-->  intel.<kind>.unique   (same bytes)
                                                 \-> intel.match.requests (by identifier)
    intel.match.requests           --MatchStage-->   intel.hit.candidates (by hit id)
    intel.hit.candidates           --HitStage-->     intel.hit            (by notified province)

Each stage takes a batch of `Incoming` messages of one worker and returns what to send;
state goes through a `PartitionedState` (read any time, written once per batch by the
caller). Transport (faust, Kafka producers) lives in `stream_jobs.app`; these classes are
tested without it. Every output is keyed or partitioned so that replaying a batch (after
a crash, before its offsets were committed) produces nothing new: dedupe state, the index
and the seen-hits table all make the second pass a no-op.
"""
from __future__ import annotations

import base64
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from schemas import catalog
from schemas.catalog import unique_topic
from schemas.dead_letters import DeadLetter
from schemas.wire import RegistryUnavailable
from schemas.ids import hit_id as make_hit_id
from stream_jobs import rules
from stream_jobs.internal import (
    AddOp, InternalFormatError, LookupOp, MatchRequest, Op, RemoveOp, decode_hit_candidate, decode_match_request,
    encode_hit_candidate, encode_match_request,
)
from stream_jobs.lookback import Lookback
from stream_jobs.state import KEEP, PartitionedState, Sweeper, dumps, loads

# module names of the catalog's topics (bench/private_jobs.py points them at topics of its own)
MATCH_TOPIC = catalog.MATCH_REQUESTS_TOPIC
# A partition's match requests of one batch go as several messages of at most about this many
# bytes: one message of a 2,000-event batch of incidents (each with its record, base64) outgrew the
# topic's 1 MB limit, and the worker exited with MSG_SIZE_TOO_LARGE at every restart.
REQUEST_BYTES = 256 * 1024
CANDIDATE_TOPIC = catalog.HIT_CANDIDATES_TOPIC
DUPLICATES_TOPIC = catalog.DUPLICATES_TOPIC
HIT_TOPIC = catalog.HIT_TOPIC
KIND_OF_TOPIC = {catalog.input_topic(k): k for k in catalog.KINDS}
# the faust tables behind the stages (stream_jobs.app), as the metrics name them
RECORDS_TABLE, INDEX_TABLE, HITS_TABLE = "records", "index", "hits-seen"
HIT_RETENTION_MS = 30 * rules.DAY_MS


@dataclass(frozen=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()  # Kafka headers as (name, bytes) pairs: the publisher's proof travels here

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None  # None: the producer's partitioner decides by key


@dataclass
class StageResult:
    outputs: list[Outgoing] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    hit_delays_ms: list[int] = field(default_factory=list)  # trigger reported_at -> hit emitted


def internal_error(stage: str, msg: Incoming, exc: Exception, detail: str = "") -> DeadLetter:
    """A dead letter for an exception the stage did not expect, so the partition moves on."""
    what = f"{detail}: " if detail else ""
    return DeadLetter(stage, msg.source, f"internal error, {what}{type(exc).__name__}: {exc}", msg.value or b"")


def sweep_partitions(sweeper: Sweeper | None, state: PartitionedState, table: str, messages: dict[int, int],
                     clock_ms: int, result: StageResult) -> None:
    """A slice of each partition of the batch swept for entries past their windows (see
    `stream_jobs.state.Sweeper`); nothing without a clock (a batch of dead letters only)."""
    if sweeper is None or clock_ms <= 0:
        return
    for partition in sorted(messages):
        examined, deleted = sweeper.sweep(state, partition, messages[partition], clock_ms)
        result.counts[("swept", table)] += examined
        if deleted:
            result.counts[("expired", table)] += deleted


def keep_all(value: bytes, clock_ms: int):
    """The sweep's decision with expiry off: keep everything (the sweep still walks, and counts
    a table from before counting)."""
    return KEEP


def partition_for(key: str, partitions: int) -> int:
    """Partition of an identifier or hit id in the jobs' internal topics (CRC-32, stable)."""
    return zlib.crc32(key.encode()) % partitions


class InvalidSubject(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def normalise_subjects(kind: str, record: dict, normalise) -> None:
    """Normalise the record's identifiers in place (producers in other languages may not have).

    `normalise(id_kind, raw) -> str` raises ValueError with `.reason` for invalid values.
    """

    def fix(container, key, id_kind, path):
        try:
            container[key] = normalise(id_kind, container[key])
        except ValueError as exc:
            raise InvalidSubject(path, getattr(exc, "reason", str(exc))) from None

    persons = [("person", record["person"])] if kind == "wanted" else [
        (f"persons[{i}]", p) for i, p in enumerate(record.get("persons") or ())
    ]
    for path, p in persons:
        if p.get("id_type") in ("RESIDENT_ID", "PASSPORT") and p.get("id_number"):
            fix(p, "id_number", p["id_type"], f"{path}.id_number")
    for i, v in enumerate(record.get("vehicles") or ()):
        fix(v, "plate", "PLATE", f"vehicles[{i}].plate")
    phones = record.get("phones") or []
    for i in range(len(phones)):
        fix(phones, i, "PHONE", f"phones[{i}]")


def event_region(kind: str, record: dict) -> str:
    """Where an event happened: an incident's location region, else its publisher's region."""
    if kind == "incident":
        return (record.get("location") or {}).get("region") or record["source_region"]
    return record["source_region"]


# --- stage 1: dedupe ----------------------------------------------------------------------

class DedupeStage:
    """Drops events seen within the window; forwards the rest and the index operations they imply."""

    def __init__(self, *, decode, normalise, state: PartitionedState, partitions: int, window_ms: int, verify=None,
                 expire: bool = True, closed_retention_ms: int = rules.CLOSED_RECORD_RETENTION_MS):
        self.decode = decode  # bytes -> dict (timestamps as epoch ms); ValueError on bad input
        # (value, headers, source_region) -> None if the publisher's proof holds, else (code, reason)
        self.verify = verify
        self.normalise = normalise
        self.state = state
        self.partitions = partitions
        self.window_ms = window_ms
        # Entries past the window go (rules.dedupe_entry_expired); a closed wanted record or
        # watch is remembered closed_retention_ms longer, so a late older revision cannot reopen it.
        self.closed_retention_ms = closed_retention_ms
        self.sweeper = Sweeper(self._expired if expire else keep_all)

    def _expired(self, value: bytes, clock_ms: int):
        return None if rules.dedupe_entry_expired(loads(value), clock_ms, self.window_ms, self.closed_retention_ms) else KEEP

    def process(self, batch: list[Incoming], now_ms: int) -> StageResult:
        result = StageResult()
        requests: dict[int, list[MatchRequest]] = {}
        # the state key is the record key, which producers also put in the message key:
        # read those in one go (a message keyed otherwise is read on its own)
        keys_by_partition: dict[int, list[bytes]] = {}
        for msg in batch:
            if msg.key:
                keys_by_partition.setdefault(msg.partition, []).append(msg.key)
        for partition, keys in keys_by_partition.items():
            self.state.prefetch(partition, keys)
        for msg in batch:
            try:
                self._one(msg, now_ms, result, requests)
            except RegistryUnavailable:  # not the record's fault: the worker ends and reads it again
                raise
            except Exception as exc:  # a bug or a record we did not foresee: never stall the partition
                result.dead_letters.append(internal_error("DEDUPE", msg, exc))
        for partition, reqs in requests.items():
            for req in reqs:  # in order: the matcher applies a partition's ops as they were made
                result.outputs.append(Outgoing(MATCH_TOPIC, None, encode_match_request(req), partition))
        # The dedupe entries are stamped with the worker's clock when first seen (the window is
        # how long the bus remembers an event id), so they are judged by it too: a clock of
        # publish times would keep every entry as much longer as the worker lags behind
        # (measured: 5 times the window's entries after a backlog). What goes is only what
        # `SeenRevisions.classify` ignores from now on, so a replay that deletes more decides no
        # differently.
        sweep_partitions(self.sweeper, self.state, RECORDS_TABLE, Counter(m.partition for m in batch), now_ms, result)
        return result

    def _one(self, msg: Incoming, now_ms: int, result: StageResult, requests: dict) -> None:
        kind = KIND_OF_TOPIC[msg.topic]
        record = self._decode(kind, msg, result)
        if record is None:
            return
        result.counts[("in", kind)] += 1
        rkey = rules.record_key_of(record)
        skey = rkey.encode()
        entry = loads(self.state.get(msg.partition, skey)) or {}
        seen = rules.SeenRevisions({int(r): tuple(v) for r, v in entry.get("seen", {}).items()})
        event_id, revision = record["event_id"], record["revision"]
        verdict = seen.classify(event_id, revision, msg.offset, now_ms, self.window_ms)
        if verdict == rules.DUPLICATE:
            result.counts[("duplicate", kind, record["source_system"])] += 1
            result.outputs.append(Outgoing(DUPLICATES_TOPIC, msg.key, dumps({
                "event_id": event_id, "kind": kind, "record_key": rkey, "revision": revision,
                "source_region": record["source_region"], "source_system": record["source_system"],
                "dropped_ms": now_ms, "source": msg.source}), msg.partition))
            return
        if verdict == rules.REPLAY:
            # Read again after a crash: its outputs may not all have been delivered, so
            # they are sent again (every consumer of them is idempotent), uncounted.
            result.counts[("replay", kind)] += 1
        else:
            seen.remember(event_id, revision, now_ms, self.window_ms, msg.offset)
            entry["seen"] = {str(r): list(v) for r, v in seen.revisions.items()}
        result.outputs.append(Outgoing(unique_topic(kind), msg.key, msg.value, msg.partition))
        if verdict == rules.NEW:
            result.counts[("unique", kind)] += 1

        if verdict == rules.REPLAY:
            ops = self._replayed_index_ops(kind, record, rkey, entry)
        else:
            ops = self._index_ops(kind, record, rkey, entry, now_ms)
        ops += self._lookup_ops(kind, record)
        if ops:
            summary = event_summary(kind, record, rkey, msg.value)
            for op in ops:
                req = request_for(requests.setdefault(partition_for(op.id, self.partitions), []), event_id,
                                  len(summary["avro"]))
                req.events[event_id] = summary
                req.ops.append(op)
        self.state.put(msg.partition, skey, dumps(entry))

    def _decode(self, kind: str, msg: Incoming, result: StageResult) -> dict | None:
        if msg.value is None:
            result.dead_letters.append(DeadLetter("DECODE", msg.source, "message has no value (tombstone)", b"", kind))
            return None
        try:
            record = self.decode(msg.value)
        except ValueError as exc:
            result.dead_letters.append(DeadLetter("DECODE", msg.source, str(exc), msg.value, kind))
            return None
        if self.verify is not None:
            # before any state, index or match: the decode above only reads the region the record claims
            refusal = self.verify(msg.value, msg.headers, record.get("source_region") or "")
            if refusal is not None:
                code, reason = refusal
                result.counts[("unverified", code)] += 1
                result.dead_letters.append(DeadLetter("VERIFY", msg.source, f"{code}: {reason}", msg.value, kind, None,
                                                      record.get("source_region"), record.get("source_system")))
                return None
        try:
            normalise_subjects(kind, record, self.normalise)
        except InvalidSubject as exc:
            result.dead_letters.append(DeadLetter(
                "VALIDATE", msg.source, exc.reason, msg.value, kind, exc.field,
                record.get("source_region"), record.get("source_system"),
            ))
            return None
        return record

    def _index_ops(self, kind: str, record: dict, rkey: str, entry: dict, now_ms: int) -> list[Op]:
        if not rules.is_watchable(kind, record):
            return []
        prev = entry.get("state")
        previous = rules.RecordState(prev["rev"], prev["open"], tuple(prev["ids"]), prev.get("until")) if prev else None
        transition = rules.apply_revision(
            previous, record["revision"], rules.is_open(kind, record, now_ms),
            rules.identifiers_of(kind, record), record.get("valid_until"),
        )
        if transition is None:  # a late older revision: history only, the record state stays
            return []
        s = transition.state
        entry["state"] = {"rev": s.revision, "open": s.open, "ids": list(s.identifiers), "until": s.valid_until}
        ops: list[Op] = [AddOp(i, record["event_id"]) for i in transition.index_add]
        ops += [RemoveOp(i, rkey, s.revision, record["occurred_at"]) for i in transition.index_remove]
        return ops

    def _replayed_index_ops(self, kind: str, record: dict, rkey: str, entry: dict) -> list[Op]:
        """The index operations of a revision already applied to the record state (the
        matcher ignores what it already has)."""
        state = entry.get("state")
        if not rules.is_watchable(kind, record) or not state or state["rev"] != record["revision"]:
            return []
        if state["open"]:
            return [AddOp(i, record["event_id"]) for i in state["ids"]]
        return [RemoveOp(i, rkey, state["rev"], record["occurred_at"]) for i in rules.identifiers_of(kind, record)]

    def _lookup_ops(self, kind: str, record: dict) -> list[Op]:
        if kind == "wanted":
            return []
        case_ids = rules.case_link_identifiers(record) if kind == "incident" else ()
        # every identifier of a case report with a place is flagged for border duplicates (only those)
        dup = kind == "incident" and bool(rules.border_duplicate_identifiers(record))
        return [LookupOp(i, record["event_id"], i in case_ids, dup) for i in rules.identifiers_of(kind, record)]


def request_for(reqs: list[MatchRequest], event_id: str, size: int, limit: int | None = None) -> MatchRequest:
    """The match request (of one partition's, in order) an op of the event goes into: the last one,
    or a new one when the last is full (about `limit` bytes of records, REQUEST_BYTES) and lacks the event."""
    limit = REQUEST_BYTES if limit is None else limit
    if not reqs or (event_id not in reqs[-1].events and reqs[-1].size + size > limit and reqs[-1].events):
        reqs.append(MatchRequest())
    req = reqs[-1]
    if event_id not in req.events:
        req.size += size + 300  # the summary's other fields, about
    return req


def event_summary(kind: str, record: dict, rkey: str, value: bytes) -> dict:
    """What the matcher needs of an event, with the whole record as its wire bytes.

    The bytes (base64) are decoded again only when the record goes into a hit: hits are
    a few in a hundred events, and turning every record into JSON here cost more than
    anything else in the stage.
    """
    return {
        "kind": kind,
        "key": rkey,
        "event_id": record["event_id"],
        "region": event_region(kind, record),
        "rev": record["revision"],
        "occurred": record["occurred_at"],
        "reported": record["reported_at"],
        "cls": record["classification"],
        "scope": record.get("share_scope") or [],
        "until": record.get("valid_until"),
        "avro": base64.b64encode(value).decode("ascii"),
        **_border_fields(kind, record),
    }


def _border_fields(kind: str, record: dict) -> dict:
    """What the border-duplicate rule needs beyond the rest: the report's place (only case
    reports that have one; the publisher's region is the record key's first part)."""
    if kind != "incident" or record.get("incident_type") not in rules.BORDER_DUPLICATE_TYPES:
        return {}
    place = rules.place_of(record)
    return {"geo": list(place)} if place is not None else {}


def source_region_of(summary: dict) -> str:
    """The publishing agency's region: the first part of the record key."""
    return summary["key"].split("/", 1)[0]


# --- stage 2: match -----------------------------------------------------------------------

def adds_keys(op: Op) -> bool:
    """Whether an operation can add a key to the index (`MatchStage._apply`): an add, or a lookup
    that keeps its event (a case incident's `recent`, a border report). A plain lookup only reads,
    a remove only changes a record that is there.

    The index sweep walks `Sweeper.per_message` keys per such operation (and its floor of keys a
    second): its bound (a pass takes at most half as many key-adding operations as the partition
    holds keys) needs no more. Walking per operation, as before 2026-12-02, walked five times as
    many keys as the index gained (of 100,889 operations of 60,000 simulated events, 82,038 were
    plain lookups), and the sweep was a tenth of the stages' time."""
    t = type(op)
    return t is AddOp or (t is LookupOp and (op.case or op.dup))


class MatchStage:
    """Keeps the identifier index (open records, recent case incidents) and finds hits."""

    def __init__(self, *, state: PartitionedState, partitions: int, is_within, case_window_ms: int, decode,
                 recent_per_identifier: int = 8, closed_retention_ms: int = 2 * 86_400_000,
                 lookback: Lookback | None = None, border_window_ms: int = rules.BORDER_DUPLICATE_WINDOW_MS,
                 border_km: float = rules.BORDER_DUPLICATE_KM, reports_per_identifier: int = 64, expire: bool = True):
        self.decode = decode  # wire bytes -> record dict (epoch ms), to put records into hits
        # Lookups of the last minutes: a record indexed *after* a sighting of it was looked
        # up (topics are not read in publication order) still hits it (stream_jobs/lookback.py).
        self.lookback = lookback or Lookback()
        self.closed_retention_ms = closed_retention_ms
        self.state = state
        self.partitions = partitions
        self.is_within = is_within
        self.case_window_ms = case_window_ms
        self.recent_per_identifier = recent_per_identifier
        # Border duplicates (stream_jobs.rules.is_border_duplicate): case reports with a place
        # are kept per identifier for twice the window, by event time, at most this many.
        self.border_window_ms = border_window_ms
        self.border_km = border_km
        self.reports_per_identifier = reports_per_identifier
        # Entries past their windows go, or shrink (rules.prune_index_entry): case incidents and
        # border reports are kept twice their window behind the batch's time, so one reported up
        # to a window late still meets them; closed records as long as _purge_closed keeps them.
        self.sweeper = Sweeper(self._pruned if expire else keep_all)

    def _pruned(self, value: bytes, clock_ms: int):
        entry = loads(value)
        if not rules.prune_index_entry(entry, clock_ms, closed_keep_ms=self.closed_retention_ms,
                                       case_keep_ms=2 * self.case_window_ms, reports_keep_ms=2 * self.border_window_ms):
            return KEEP
        return None if rules.index_entry_is_empty(entry) else dumps(entry)

    def process(self, batch: list[Incoming], now_ms: int) -> StageResult:
        result = StageResult()
        requests = []
        # the sweep's clock: the newest publish time of the batch's events; and each partition's
        # operations that can add an index key (`adds_keys`), which set how far its sweep walks
        clock, adding_by_partition = 0, Counter()
        for msg in batch:
            try:
                req = decode_match_request(msg.value)
            except InternalFormatError as exc:
                result.dead_letters.append(DeadLetter("MATCH", msg.source, f"unreadable {exc}", msg.value or b"",
                                                      field=exc.field))
                continue
            events, ops = req.events, req.ops
            requests.append((msg, events, ops))
            adding_by_partition[msg.partition] += sum(map(adds_keys, ops))
            for ev in events.values():
                reported = ev.get("reported")
                if type(reported) is int and reported > clock:
                    clock = reported
            # every identifier of the batch read in one go
            self.state.prefetch(msg.partition, [op.id.encode() for op in ops])
        # The batch's index operations first, then its lookups. Matching is by event time, so
        # the order the matcher reads them in must not decide a hit: a lookup applied before the
        # listing it sights is caught only by the look-back (bounded by time, and by a guard of
        # a few hundred lookups an identifier), and a check read before an arrest that happened
        # earlier would hit.
        for lookups in (False, True):
            for msg, events, ops in requests:
                for op in ops:
                    if (type(op) is LookupOp) is not lookups:
                        continue
                    try:
                        self._apply(op, events, msg.partition, now_ms, result)
                    except RegistryUnavailable:  # a hit's records not decodable now: read the request again later
                        raise
                    except Exception as exc:  # never stall the partition on one bad operation
                        result.dead_letters.append(internal_error("MATCH", msg, exc, detail=f"operation {op.op} on {op.id}"))
        sweep_partitions(self.sweeper, self.state, INDEX_TABLE, adding_by_partition, min(clock, now_ms), result)
        return result

    def _apply(self, op: Op, events: dict, partition: int, now_ms: int, result: StageResult) -> None:
        key = op.id.encode()
        entry = loads(self.state.get(partition, key)) or {"records": {}, "recent": []}
        if type(op) is LookupOp:
            changed = self._lookup(op, events, entry, partition, now_ms, result)
        elif type(op) is AddOp:
            changed = self._add(op, events, entry, partition, now_ms, result)
        else:
            changed = self._remove(op, events, entry, partition, now_ms, result)
        if changed:
            if entry["records"] or entry["recent"] or entry.get("reports"):  # an empty entry is deleted
                self.state.put(partition, key, dumps(entry))
            else:
                self.state.put(partition, key, None)

    def _add(self, op: AddOp, events, entry, partition, now_ms, result) -> bool:
        ev = events[op.event]
        have = entry["records"].get(ev["key"])
        if have is not None and have["rev"] >= ev["rev"]:
            return False
        still_open = have is not None and have.get("closed") is None
        # open_from/closed are event times: whether a sighting hits is decided by when it
        # happened, not by which message the matcher happened to read first.
        rec = entry["records"][ev["key"]] = {**ev, "open_from": have["open_from"] if still_open else ev["occurred"],
                                              "closed": None}
        result.counts[("indexed", ev["kind"])] += 1
        for seen in self.lookback.recent(partition, op.id):
            self._match(rec, seen, op.id, now_ms, result)
        return True

    def _remove(self, op: RemoveOp, events, entry, partition, now_ms, result) -> bool:
        have = entry["records"].get(op.record_key)
        if have is None or have["rev"] > op.rev:
            return False
        have["rev"], have["closed"] = op.rev, op.at
        self._purge_closed(entry, now_ms)
        return True

    def _purge_closed(self, entry, now_ms) -> None:
        """Forget closed records once late sightings of their open time are unlikely."""
        horizon = now_ms - self.closed_retention_ms
        entry["records"] = {k: r for k, r in entry["records"].items() if r.get("closed") is None or r["closed"] > horizon}

    def _lookup(self, op: LookupOp, events, entry, partition, now_ms, result) -> bool:
        ev = events[op.event]
        ident = op.id
        for rec in entry["records"].values():
            self._match(rec, ev, ident, now_ms, result)
        self.lookback.remember(partition, ident, ev)
        changed = self._border_duplicates(ev, ident, entry, now_ms, result) if op.dup else False
        if not op.case:
            return changed
        recent = [r for r in entry["recent"] if abs(r["occurred"] - ev["occurred"]) <= self.case_window_ms]
        if any(r["event_id"] == ev["event_id"] for r in recent):
            return changed  # replay of a request already applied
        for other in recent:
            if rules.is_case_link(other["region"], other["occurred"], ev["region"], ev["occurred"], self.case_window_ms):
                # The earlier incident is the matched record, the later one the trigger, whichever
                # the matcher read first: so the hit id does not depend on delivery order.
                first, second = sorted((other, ev), key=lambda e: (e["occurred"], e["event_id"]))
                self._candidate(rules.CASE_LINK, first, second, ident, now_ms, result)
        recent.append(ev)
        recent.sort(key=lambda r: r["occurred"])
        entry["recent"] = recent[-self.recent_per_identifier:]
        return True

    def _border_duplicates(self, ev: dict, ident: str, entry: dict, now_ms: int, result: StageResult) -> bool:
        """Flag ev with every kept report of another agency that may be the same incident, then
        keep ev. Returns whether the entry changed."""
        reports = entry.get("reports") or []
        for other in reports:
            if other["event_id"] != ev["event_id"] and self._is_border_duplicate(other, ev):
                # as for case links: the earlier report is the matched record, the later one the
                # trigger, whichever came first, so the hit id does not depend on delivery order
                first, second = sorted((other, ev), key=lambda e: (e["occurred"], e["event_id"]))
                self._border_candidate(first, second, ident, now_ms, result)
        if any(r["event_id"] == ev["event_id"] for r in reports):
            return False  # a replay: its candidates went out again above, the hit stage drops seen ids
        # Kept by event time: twice the window behind the newest report of the identifier, so a
        # report read late (another agency's, typed in later) still meets the ones of its time.
        horizon = max([ev["occurred"], *(r["occurred"] for r in reports)]) - 2 * self.border_window_ms
        kept = [r for r in reports if r["occurred"] >= horizon]
        if ev["occurred"] >= horizon:
            kept.append(ev)
        kept.sort(key=lambda r: (r["occurred"], r["event_id"]))
        kept = kept[-self.reports_per_identifier:]
        if kept == reports:
            return False
        entry["reports"] = kept
        return True

    def _is_border_duplicate(self, a: dict, b: dict) -> bool:
        return rules.is_border_duplicate(
            source_region_of(a), a["occurred"], tuple(a["geo"]) if a.get("geo") else None,
            source_region_of(b), b["occurred"], tuple(b["geo"]) if b.get("geo") else None,
            is_within=self.is_within, window_ms=self.border_window_ms, max_km=self.border_km)

    def _border_candidate(self, first: dict, second: dict, ident: str, now_ms: int, result: StageResult) -> None:
        """A BORDER_DUPLICATE names both reports and goes to both reporting agencies (their
        regions are the hit's owner and hit regions); neither report is merged or dropped."""
        src1, src2 = source_region_of(first), source_region_of(second)
        notify = rules.border_duplicate_notify(src1, src2, [first["region"], second["region"]],
                                               first["scope"], second["scope"])
        hit = build_hit(rules.BORDER_DUPLICATE, first, second, ident, now_ms, self.decode,
                        owner_region=src1, hit_region=src2, notify=notify)
        self._emit_candidate(hit, result)

    def _match(self, rec: dict, ev: dict, ident: str, now_ms: int, result: StageResult) -> None:
        """A hit candidate if the open record and the event of another region meet in time."""
        occurred = ev["occurred"]
        if occurred < rec["open_from"] or (rec["closed"] is not None and occurred >= rec["closed"]):
            return  # seen before the record was open, or after it was closed
        if rec["until"] is not None and rec["until"] <= occurred:
            return  # a watch alert past its valid_until
        if rec["event_id"] == ev["event_id"]:
            return  # a watch alert is looked up too: it does not hit itself
        if rules.is_cross_region(rec["region"], ev["region"], self.is_within):
            self._candidate(rules.hit_type_for(rec["kind"]), rec, ev, ident, now_ms, result)

    def _candidate(self, hit_type, record, event, ident, now_ms, result) -> None:
        self._emit_candidate(build_hit(hit_type, record, event, ident, now_ms, self.decode), result)

    def _emit_candidate(self, hit: dict, result: StageResult) -> None:
        result.outputs.append(
            Outgoing(CANDIDATE_TOPIC, hit["hit_id"].encode(), encode_hit_candidate(hit),
                     partition_for(hit["hit_id"], self.partitions))
        )
        result.counts[("candidate", hit["hit_type"])] += 1


def build_hit(hit_type: str, record: dict, event: dict, ident: str, now_ms: int, decode, *,
              owner_region: str | None = None, hit_region: str | None = None, notify: list[str] | None = None) -> dict:
    """A hit as the Avro `hit` record wants it (timestamps as epoch ms).

    Owner and hit region are where the two records are (the record's, the event's) unless
    given; notify is the owner, the hit region and both share scopes unless given."""
    id_kind, value = rules.split_identifier(ident)
    owner = record["region"] if owner_region is None else owner_region
    seen_in = event["region"] if hit_region is None else hit_region
    return {
        "hit_id": make_hit_id(record["key"], event["event_id"], hit_type),
        "hit_type": hit_type,
        "matched_on": {"kind": id_kind, "value": value},
        "owner_region": owner,
        "hit_region": seen_in,
        "notify_regions": notify if notify is not None else rules.notify_regions(owner, seen_in, record["scope"], event["scope"]),
        "classification": rules.higher_classification(record["cls"], event["cls"]),
        "detected_at": now_ms,
        "record_kind": record["kind"].upper(),
        "record_key": record["key"],
        "record": display_json(decode(base64.b64decode(record["avro"]))),
        "trigger_kind": event["kind"].upper(),
        "trigger_event_id": event["event_id"],
        "trigger": display_json(decode(base64.b64decode(event["avro"]))),
        "trigger_reported_at": event["reported"],
    }


_TIMESTAMP_FIELDS = ("occurred_at", "reported_at", "valid_until")
_EPOCH = date(1970, 1, 1)


def display_json(record: dict) -> str:
    """The record as integrators wrote it: ISO-8601 times and dates instead of epoch numbers."""
    record = dict(record)
    for name in _TIMESTAMP_FIELDS:
        if isinstance(record.get(name), int):
            record[name] = datetime.fromtimestamp(record[name] / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    persons = record.get("persons") or ([record["person"]] if "person" in record else [])
    for p in persons:
        if isinstance(p.get("birth_date"), int):
            p["birth_date"] = (_EPOCH + timedelta(days=p["birth_date"])).isoformat()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


# --- stage 3: hits ------------------------------------------------------------------------

class HitStage:
    """Emits each hit once, one copy per notified province (the key), so a command center
    reads only its province's partition."""

    def __init__(self, *, state: PartitionedState, encode_hit, provinces_of, retention_ms: int = HIT_RETENTION_MS,
                 expire: bool = True):
        self.state = state
        # (hit id, province) copies found on intel.hit when the worker got its candidate partitions
        # (`EmittedHits`): a hit whose copies were delivered before a crash and its seen-id not is
        # not sent again, and a copy that was not delivered is (the seen-ids are written after the
        # copies: stream_jobs/app.py BatchRunner)
        self.emitted: set[tuple[str, str]] = set()
        self.encode_hit = encode_hit      # dict -> Confluent wire bytes
        self.provinces_of = provinces_of  # notify_regions -> sorted province codes
        # A hit id is remembered this long after its hit: longer than any resend of its trigger
        # that the dedupe window lets through would come, in practice (hits are a few per cent
        # of events, so the table stays small).
        self.retention_ms = retention_ms
        self.sweeper = Sweeper(self._expired if expire else keep_all)

    def _expired(self, value: bytes, clock_ms: int):
        return None if int(value) < clock_ms - self.retention_ms else KEEP

    def process(self, batch: list[Incoming], now_ms: int) -> StageResult:
        result = StageResult()
        clock = 0  # the sweep's clock: the newest detection time of the batch's candidates
        for msg in batch:
            try:
                hit = decode_hit_candidate(msg.value)
            except InternalFormatError as exc:
                result.dead_letters.append(DeadLetter("MATCH", msg.source, f"unreadable {exc}", msg.value or b"",
                                                      field=exc.field))
                continue
            hid = hit["hit_id"]
            detected = hit["detected_at"]
            if detected > clock:
                clock = detected
            key = hid.encode()
            if self.state.get(msg.partition, key) is not None:
                result.counts[("duplicate_hit", hit["hit_type"])] += 1
                continue
            try:
                value = self.encode_hit(hit)
            except RegistryUnavailable:  # the hit's schema not registered yet: the candidate is read again later
                raise
            except Exception as exc:
                result.dead_letters.append(internal_error("MATCH", msg, exc, detail="hit does not encode"))
                continue
            self.state.put(msg.partition, key, str(hit["detected_at"]).encode())
            provinces = self.provinces_of(hit["notify_regions"])
            missing = [p for p in provinces if (hid, p) not in self.emitted] if self.emitted else provinces
            for province in missing:
                result.outputs.append(Outgoing(HIT_TOPIC, province.encode(), value))
            if len(missing) < len(provinces):  # sent before a crash: not counted again
                result.counts[("hit_already_out", hit["hit_type"])] += 1
                continue
            result.counts[("hit", hit["hit_type"], hit["owner_region"], hit["hit_region"])] += 1
            result.hit_delays_ms.append(now_ms - hit["trigger_reported_at"])
        sweep_partitions(self.sweeper, self.state, HITS_TABLE, Counter(m.partition for m in batch), min(clock, now_ms),
                         result)
        return result
