"""A schema registry that does not answer is not the record's fault: nothing is dead-lettered
for it. The stages let it end the worker (restarted, it reads the records again); a registry
that answers "no such schema" still dead-letters the record. Each refusal next to its control."""
from __future__ import annotations

import json

import pytest

from schemas.wire import RegistryUnavailable, WireFormatError
from stream_jobs.stages import CANDIDATE_TOPIC, HitStage, Incoming
from tests.unit.stream_jobs.test_stages import ID18, T0, Bus, incident, person, wanted


def registry_down(_value):
    raise RegistryUnavailable("the schema registry did not answer for schema id 3: ConnectError: [Errno 111] Connection refused")


def test_a_record_read_while_the_registry_is_down_ends_the_batch_and_one_it_does_not_know_is_a_dead_letter():
    bus = Bus()
    check = incident("120119", "C1", persons=[person(ID18)])
    bus.dedupe.decode = registry_down
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        bus.publish("incident", check)
    assert bus.dead == [] and bus.unique == []  # nothing dead-lettered, nothing forwarded

    def unknown_id(_value):
        raise WireFormatError("schema id 99 is unknown to the registry: Schema not found (HTTP status code 404, SR code 40403)")

    bus.dedupe.decode = unknown_id  # the control: the registry answered, the record is at fault
    bus.publish("incident", check)
    assert [d.stage for d in bus.dead] == ["DECODE"] and "unknown to the registry" in bus.dead[0].reason


def test_a_hit_whose_records_cannot_be_decoded_now_is_not_lost():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1"))
    bus.match.decode = registry_down  # the hit's two records are decoded when it is built
    with pytest.raises(RegistryUnavailable):
        bus.publish("incident", incident("120119", "C1", persons=[person(ID18)]))
    assert bus.dead == [] and bus.hits == []
    bus.match.decode = lambda b: json.loads(b)  # back: the same check, read again, hits
    bus.publish("incident", incident("120119", "C2", persons=[person(ID18)]))
    assert len(bus.distinct_hits()) == 1 and bus.dead == []


def test_a_hit_that_cannot_be_encoded_now_is_read_again_and_one_that_never_encodes_is_a_dead_letter():
    from stream_jobs.state import MemoryState

    candidate = json.dumps({"hit_id": "h1", "hit_type": "WANTED_PERSON", "detected_at": T0, "trigger_reported_at": T0,
                            "notify_regions": ["120000", "130000"], "owner_region": "130822",
                            "hit_region": "120119"}).encode()
    msg = Incoming(CANDIDATE_TOPIC, 0, 5, b"h1", candidate)
    state = MemoryState()
    stage = HitStage(state=state, encode_hit=registry_down, provinces_of=lambda n: sorted({c[:2] + "0000" for c in n}))
    with pytest.raises(RegistryUnavailable):
        stage.process([msg], T0)
    assert state.get(0, b"h1") is None  # not marked as sent: read again, it is sent

    stage.encode_hit = lambda h: b"hit"
    assert len(stage.process([msg], T0).outputs) == 2

    def bug(_hit):
        raise KeyError("trigger")  # the control: a hit that cannot encode at all is a dead letter

    other = HitStage(state=MemoryState(), encode_hit=bug, provinces_of=lambda n: ["120000"])
    result = other.process([msg], T0)
    assert [d.stage for d in result.dead_letters] == ["MATCH"] and "hit does not encode" in result.dead_letters[0].reason
