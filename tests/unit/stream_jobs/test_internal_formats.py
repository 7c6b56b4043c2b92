"""The versioned formats of intel.match.requests and intel.hit.candidates (stream_jobs/internal.py):
round trips, a version this worker does not know refused and dead-lettered naming `v`, and the
records written before the version field still read (they stay in the topics after an upgrade)."""
from __future__ import annotations

import json

import pytest

from stream_jobs.internal import (
    AddOp, InternalFormatError, LookupOp, MatchRequest, RemoveOp, decode_hit_candidate, decode_match_request,
    encode_hit_candidate, encode_match_request,
)
from stream_jobs.lookback import Lookback
from stream_jobs.stages import CANDIDATE_TOPIC, MATCH_TOPIC, Incoming
from tests.unit.stream_jobs.test_stages import ID18, T0, Bus, incident, person, wanted

SUMMARY = {"kind": "incident", "key": "120119/sys/C1", "event_id": "e1", "region": "120119", "rev": 1,
           "occurred": T0, "reported": T0, "cls": "INTERNAL", "scope": [], "until": None, "avro": "AAEC"}
HIT = {"hit_id": "h1", "hit_type": "WANTED_PERSON", "matched_on": {"kind": "RESIDENT_ID", "value": ID18},
       "owner_region": "130822", "hit_region": "120119", "notify_regions": ["130822", "120119"],
       "classification": "INTERNAL", "detected_at": T0, "record_kind": "WANTED", "record_key": "130822/sys/W1",
       "record": "{}", "trigger_kind": "INCIDENT", "trigger_event_id": "e1", "trigger": "{}",
       "trigger_reported_at": T0}


def a_request():
    return MatchRequest({"e1": SUMMARY, "e2": {**SUMMARY, "event_id": "e2"}}, [
        AddOp("RESIDENT_ID:" + ID18, "e2"),
        RemoveOp("PLATE:京A12345", "130822/sys/W9", 3, T0 - 5),
        LookupOp("RESIDENT_ID:" + ID18, "e1", case=True, dup=True),
        LookupOp("PHONE:13800138000", "e1"),
    ], size=12345)


def test_a_match_request_comes_back_as_it_went_with_its_version_and_without_the_split_size():
    req = a_request()
    wire = json.loads(encode_match_request(req))
    assert wire["v"] == 1 and "size" not in wire
    back = decode_match_request(encode_match_request(req))
    assert back.events == req.events and back.ops == req.ops and back.size == 0


def test_a_hit_candidate_comes_back_as_the_hit_record_without_its_version():
    assert json.loads(encode_hit_candidate(HIT))["v"] == 1
    assert decode_hit_candidate(encode_hit_candidate(HIT)) == HIT


@pytest.mark.parametrize("decode,doc", [(decode_match_request, {"events": {}, "ops": []}), (decode_hit_candidate, HIT)])
@pytest.mark.parametrize("v", [2, "1", None])
def test_an_unknown_version_is_refused_naming_the_field(decode, doc, v):
    with pytest.raises(InternalFormatError) as err:
        decode(json.dumps({**doc, "v": v}).encode())
    assert err.value.field == "v" and f"unknown version {v!r}" in str(err.value)


def test_records_written_before_the_version_field_are_read_as_version_1():
    old_request = {"events": {"e1": SUMMARY}, "ops": [{"op": "lookup", "id": "PLATE:京A12345", "event": "e1", "case": False},
                                                  {"op": "add", "id": "PLATE:京A12345", "event": "e1"}]}
    assert decode_match_request(json.dumps(old_request).encode()).ops == [
        LookupOp("PLATE:京A12345", "e1", False, False), AddOp("PLATE:京A12345", "e1")]
    assert decode_hit_candidate(json.dumps(HIT).encode()) == HIT


@pytest.mark.parametrize("op,field", [
    ({"op": "merge", "id": "PLATE:x", "event": "e1"}, "ops[1].op"),
    ({"op": "add", "event": "e1"}, "ops[1].id"),
    ({"op": "lookup", "id": "PLATE:x", "event": "nope"}, "ops[1].event"),
    ({"op": "remove", "id": "PLATE:x", "record_key": "k", "rev": "3", "at": T0}, "ops[1].rev"),
    ("add PLATE:x", "ops[1]"),
])
def test_a_malformed_operation_is_refused_naming_it(op, field):
    doc = {"v": 1, "events": {"e1": SUMMARY}, "ops": [{"op": "add", "id": "PLATE:x", "event": "e1"}, op]}
    with pytest.raises(InternalFormatError) as err:
        decode_match_request(json.dumps(doc).encode())
    assert err.value.field == field and field in str(err.value)


def test_a_hit_candidate_without_its_id_is_refused_naming_the_field():
    with pytest.raises(InternalFormatError) as err:
        decode_hit_candidate(json.dumps({k: v for k, v in HIT.items() if k != "hit_id"}).encode())
    assert err.value.field == "hit_id"


def bus_with_listing_and_sighting():
    """A listing read by the matcher, and the dedupe stage's outputs of a sighting of it in another region."""
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1"))
    msg = bus._message("incident", incident("120119", "C1", persons=[person(ID18)]))
    return bus, bus.dedupe.process([msg], T0).outputs


def with_version(value: bytes, v) -> bytes:
    doc = json.loads(value)
    if v is None:
        doc.pop("v")
    else:
        doc["v"] = v
    return json.dumps(doc).encode()


def test_the_matcher_dead_letters_a_request_of_an_unknown_version_and_applies_the_others():
    bus, outputs = bus_with_listing_and_sighting()
    requests = [Incoming(MATCH_TOPIC, o.partition, 7, o.key, o.value) for o in outputs if o.topic == MATCH_TOPIC]
    future = Incoming(MATCH_TOPIC, 0, 6, None, with_version(requests[0].value, 2))
    result = bus.match.process([future, *requests], T0)
    assert [(d.stage, d.field, d.source) for d in result.dead_letters] == [("MATCH", "v", f"{MATCH_TOPIC}/0/6")]
    assert "unknown version 2" in result.dead_letters[0].reason and result.dead_letters[0].raw == future.value
    assert [o.topic for o in result.outputs] == [CANDIDATE_TOPIC]  # the control request still hits


@pytest.mark.parametrize("v", [None, 1])
def test_requests_and_candidates_with_or_without_the_version_give_the_same_hit(v):
    bus, outputs = bus_with_listing_and_sighting()
    requests = [Incoming(MATCH_TOPIC, o.partition, 0, o.key, with_version(o.value, v)) for o in outputs if o.topic == MATCH_TOPIC]
    candidates = bus.match.process(requests, T0).outputs
    hits = bus.hits_stage.process([Incoming(CANDIDATE_TOPIC, c.partition, 0, c.key, with_version(c.value, v))
                                   for c in candidates], T0)
    assert not hits.dead_letters
    assert {json.loads(h.value)["trigger_event_id"] for h in hits.outputs} == {"120119-sys-C1-1"}
    assert "v" not in json.loads(hits.outputs[0].value)  # the hit record has no such field


def test_the_hit_stage_dead_letters_a_candidate_of_an_unknown_version_and_emits_the_others():
    bus, outputs = bus_with_listing_and_sighting()
    requests = [Incoming(MATCH_TOPIC, o.partition, 0, o.key, o.value) for o in outputs if o.topic == MATCH_TOPIC]
    (cand,) = bus.match.process(requests, T0).outputs
    future = Incoming(CANDIDATE_TOPIC, 1, 3, cand.key, with_version(cand.value, 9))
    result = bus.hits_stage.process([future, Incoming(CANDIDATE_TOPIC, 1, 4, cand.key, cand.value)], T0)
    assert [(d.field, d.source) for d in result.dead_letters] == [("v", f"{CANDIDATE_TOPIC}/1/3")]
    assert result.outputs and all(o.topic == "intel.hit" for o in result.outputs)


def test_the_lookback_restores_lookups_from_new_and_old_requests_and_skips_unknown_versions():
    lb = Lookback(clock=lambda: 1000.0)
    new = encode_match_request(MatchRequest({"e1": SUMMARY}, [LookupOp("PLATE:a", "e1")]))
    old = json.dumps({"events": {"e2": {**SUMMARY, "event_id": "e2"}},
                      "ops": [{"op": "lookup", "id": "PLATE:a", "event": "e2", "case": False}]}).encode()
    future = with_version(new, 2)
    assert lb.restore(0, [(999.0, new), (999.0, old), (999.0, future)]) == 2
    assert [e["event_id"] for e in lb.recent(0, "PLATE:a")] == ["e1", "e2"]


@pytest.mark.parametrize("decode", [decode_match_request, decode_hit_candidate])
@pytest.mark.parametrize("raw,why", [(b"\x00\x01avro?", "not JSON"), (b"[1, 2]", "a JSON object expected, not list"),
                                     (None, "not JSON")])
def test_a_value_that_is_no_json_object_is_refused_as_a_whole(decode, raw, why):
    with pytest.raises(InternalFormatError) as err:
        decode(raw)
    assert err.value.field == "(record)" and why in str(err.value)
