"""The formats of the jobs' internal topics, `intel.match.requests` and `intel.hit.candidates`.

Only the stream jobs write and read them (dedupe -> match -> hits), as JSON with a version
field `v`; one encode/decode pair per type. A decode refuses what it cannot read with an
`InternalFormatError` naming the field, and the stage dead-letters the record like any other
bad input.

Version 1 is the shape the jobs wrote before the field existed, plus `v`; a record without `v`
is read as that shape (version 0): after an upgrade the topics still hold such records (a
backlog not yet read, and the look-back reads the last minutes of match requests again when a
worker gets a partition). A version this worker does not know is refused, never guessed at.

    match request (one partition's, in order):
      {"v": 1,
       "events": {event_id: event summary (stream_jobs.stages.event_summary)},
       "ops": [{"op": "add",    "id": identifier, "event": event_id}
               {"op": "remove", "id": identifier, "record_key": str, "rev": int, "at": epoch ms}
               {"op": "lookup", "id": identifier, "event": event_id, "case": bool, "dup": bool (optional)}]}
    hit candidate: {"v": 1, **the Avro `hit` record (schemas/avro/hit.avsc), times as epoch ms}
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stream_jobs.state import dumps, loads

MATCH_REQUEST_VERSION = 1
HIT_CANDIDATE_VERSION = 1
# versions this code reads; 0 is the record written before the `v` field (same shape as 1)
_READS = (0, 1)


class InternalFormatError(ValueError):
    """An internal record this worker cannot read; `field` names where (e.g. `v`, `ops[3].id`)."""

    def __init__(self, what: str, field: str, reason: str):
        super().__init__(f"{what}: {field}: {reason}")
        self.field, self.reason = field, reason


# Each operation carries its wire tag `op` as a field (always its default), so that orjson writes
# the dataclass as the JSON object itself, without a dict made per operation (and no slots: orjson
# reads a dataclass's __dict__ as fast as a dict, its slots several times slower).
@dataclass
class AddOp:
    """Index an open record (its event summary) under an identifier."""
    id: str
    event: str
    op: str = "add"


@dataclass
class RemoveOp:
    """A record closed (revision `rev`, at event time `at`): no hit for sightings from then on."""
    id: str
    record_key: str
    rev: int
    at: int
    op: str = "remove"


@dataclass
class LookupOp:
    """A sighting of an identifier; `case` and `dup` ask for case links and border duplicates too."""
    id: str
    event: str
    case: bool = False
    dup: bool = False
    op: str = "lookup"


Op = AddOp | RemoveOp | LookupOp


@dataclass(slots=True)
class MatchRequest:
    events: dict[str, dict] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    size: int = 0  # about how many bytes of records the events hold (the split, stages.request_for); not sent


def encode_match_request(req: MatchRequest) -> bytes:
    return dumps({"v": MATCH_REQUEST_VERSION, "events": req.events, "ops": req.ops})


def _document(data: bytes | None, what: str) -> dict:
    """The record's JSON object, once its version is one this worker reads."""
    try:
        doc = loads(data if data is not None else b"")
    except ValueError as exc:
        raise InternalFormatError(what, "(record)", f"not JSON: {exc}") from None
    if type(doc) is not dict:
        raise InternalFormatError(what, "(record)", f"a JSON object expected, not {type(doc).__name__}")
    v = doc.get("v", 0)
    if type(v) is not int or v not in _READS:
        raise InternalFormatError(what, "v", f"unknown version {v!r} (this worker reads versions up to "
                                  f"{_READS[-1]}, and records without v)")
    return doc


def _need(what: str, where: str, value, kind: type):
    if type(value) is not kind:
        got = "missing" if value is None else f"{type(value).__name__}, not {kind.__name__}"
        raise InternalFormatError(what, where, got)
    return value


def _decode_op(raw, i: int, events: dict) -> Op:
    # the fast path checks types inline; the names of what is wrong are made only on a refusal
    if type(raw) is dict:
        name, ident = raw.get("op"), raw.get("id")
        if type(ident) is str:
            if name == "lookup" or name == "add":
                event = raw.get("event")
                if type(event) is str and event in events:
                    if name == "lookup":
                        return LookupOp(ident, event, raw.get("case") is True, raw.get("dup") is True)
                    return AddOp(ident, event)
            elif name == "remove":
                key, rev, at = raw.get("record_key"), raw.get("rev"), raw.get("at")
                if type(key) is str and type(rev) is int and type(at) is int:
                    return RemoveOp(ident, key, rev, at)
    raise _op_refusal(raw, i, events)


def _op_refusal(raw, i: int, events: dict) -> InternalFormatError:
    what, where = "match request", f"ops[{i}]"
    _need(what, where, raw, dict)
    _need(what, f"{where}.id", raw.get("id"), str)
    name = raw.get("op")
    if name in ("lookup", "add"):
        event = _need(what, f"{where}.event", raw.get("event"), str)
        return InternalFormatError(what, f"{where}.event", f"event {event!r} is not in the request's events")
    if name == "remove":
        for field_name, kind in (("record_key", str), ("rev", int), ("at", int)):
            _need(what, f"{where}.{field_name}", raw.get(field_name), kind)
    return InternalFormatError(what, f"{where}.op", f"unknown operation {name!r} (add, remove, lookup)")


def decode_match_request(data: bytes | None) -> MatchRequest:
    """The request written by `encode_match_request` (or by the jobs before version 1)."""
    what = "match request"
    doc = _document(data, what)
    events = _need(what, "events", doc.get("events"), dict)
    for event_id, summary in events.items():
        if type(summary) is not dict:
            _need(what, f"events[{event_id!r}]", summary, dict)
    ops = _need(what, "ops", doc.get("ops"), list)
    return MatchRequest(events, [_decode_op(op, i, events) for i, op in enumerate(ops)])


# the fields the hit stage reads itself (the Avro encoder checks the rest of the `hit` record)
_HIT_FIELDS = (("hit_id", str), ("hit_type", str), ("owner_region", str), ("hit_region", str),
               ("notify_regions", list), ("detected_at", int), ("trigger_reported_at", int))


def encode_hit_candidate(hit: dict) -> bytes:
    return dumps({"v": HIT_CANDIDATE_VERSION, **hit})


def decode_hit_candidate(data: bytes | None) -> dict:
    """The hit (the Avro `hit` record, times as epoch ms) of a candidate, without `v`."""
    what = "hit candidate"
    doc = _document(data, what)
    doc.pop("v", None)
    for name, kind in _HIT_FIELDS:
        if type(doc.get(name)) is not kind:
            _need(what, name, doc.get(name), kind)
    return doc
