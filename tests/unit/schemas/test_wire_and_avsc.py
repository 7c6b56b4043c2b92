from __future__ import annotations

import json

import pytest

from schemas.catalog import AVRO_DIR, TOPIC_SCHEMAS, load_schema, parsed_schema, schema_text
from schemas.records import validate_record
from schemas.wire import RawDecoder, SchemaCodec, WireFormatError, encode_with_id, split_header


class FakeRegistry:
    """An in-process stand-in for SchemaRegistryClient: unit tests of the codec's own logic only."""

    def __init__(self):
        self.by_id, self.subjects, self.compat = {}, {}, {}

    def set_compatibility(self, subject_name, level):
        self.compat[subject_name] = level

    def register_schema(self, subject, schema):
        for sid, text in self.by_id.items():
            if text == schema.schema_str:
                self.subjects[subject] = sid
                return sid
        sid = len(self.by_id) + 1
        self.by_id[sid] = schema.schema_str
        self.subjects[subject] = sid
        return sid

    def get_schema(self, sid):
        class S:
            schema_str = self.by_id[sid]
        return S()


RECORD = {"source_region": "120119", "source_system": "kakou", "source_ref": "JQ1", "occurred_at": 1_790_000_000_000,
          "incident_type": "HOTEL_CHECKIN", "location": {"region": "120119"}}


def test_wire_format_header_and_round_trip():
    registry = FakeRegistry()
    codec = SchemaCodec(registry=registry)
    rec = validate_record("incident", RECORD, now_ms=1)
    data = codec.encode("intel.incident", rec)
    schema_id, body = split_header(data)
    assert data[0] == 0 and schema_id == registry.subjects["intel.incident-value"]
    assert registry.compat["intel.incident-value"] == "BACKWARD_TRANSITIVE"
    back = SchemaCodec(registry=registry).decode(data)
    assert back["source_ref"] == "JQ1" and str(back["event_id"]) == rec["event_id"]
    raw = RawDecoder(lambda sid: registry.by_id[sid])(data)
    assert raw["occurred_at"] == 1_790_000_000_000 and raw["event_id"] == rec["event_id"]


def test_the_registry_is_asked_once_per_schema_id():
    registry = FakeRegistry()
    data = SchemaCodec(registry=registry).encode("intel.incident", validate_record("incident", RECORD, now_ms=1))
    calls = []
    decoder = RawDecoder(lambda sid: calls.append(sid) or registry.by_id[sid])
    for _ in range(5):
        decoder(data)
    assert calls == [split_header(data)[0]]


@pytest.mark.parametrize("data,reason", [
    (b"\x00\x00", "2 bytes, the header alone is 5"),
    (b"\x01\x00\x00\x00\x01abc", "magic byte is 1, expected 0"),
])
def test_bad_headers(data, reason):
    with pytest.raises(WireFormatError, match=reason):
        split_header(data)


def test_truncated_body_and_unknown_id():
    registry = FakeRegistry()
    data = SchemaCodec(registry=registry).encode("intel.incident", validate_record("incident", RECORD, now_ms=1))
    decoder = RawDecoder(lambda sid: registry.by_id[sid])
    with pytest.raises(WireFormatError, match="does not decode"):
        decoder(data[:-8])
    with pytest.raises(WireFormatError, match="schema id 99 is unknown"):
        decoder(b"\x00\x00\x00\x00\x63" + data[5:])
    assert encode_with_id(7, parsed_schema("incident"), validate_record("incident", RECORD, now_ms=1))[:5] == b"\x00\x00\x00\x00\x07"


@pytest.mark.parametrize("name", sorted(set(TOPIC_SCHEMAS.values())))
def test_every_field_has_a_doc_and_every_enum_a_default(name):
    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "enum":
                assert "default" in node, f"{path}: enum {node['name']} has no default"
            for f in node.get("fields", []):
                assert f.get("doc"), f"{path}.{f['name']} has no doc"
                walk(f["type"], f"{path}.{f['name']}")
            for key in ("items", "values", "type"):
                if isinstance(node.get(key), (dict, list)):
                    walk(node[key], path)
        elif isinstance(node, list):
            for n in node:
                walk(n, path)
    walk(load_schema(name), name)


@pytest.mark.parametrize("kind", ["alert", "wanted", "incident"])
def test_kinds_start_with_the_envelope_fields(kind):
    envelope = load_schema("envelope")["fields"]
    assert load_schema(kind)["fields"][:len(envelope)] == envelope


def test_logical_types():
    incident = json.loads(schema_text("incident"))
    fields = {f["name"]: f["type"] for f in incident["fields"]}
    assert fields["event_id"] == {"type": "string", "logicalType": "uuid"}
    assert fields["occurred_at"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert any("date" in json.dumps(f["type"]) for f in fields["persons"]["items"]["fields"] if f["name"] == "birth_date")
    assert sorted(p.name for p in AVRO_DIR.glob("*.avsc")) == [
        "alert.avsc", "dead_letter.avsc", "envelope.avsc", "hit.avsc", "incident.avsc", "wanted.avsc", "workflow.avsc"]


def test_a_registry_that_does_not_answer_is_told_apart_from_one_that_has_no_such_schema():
    import socket
    import time

    import pytest
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from schemas.wire import RawDecoder, RegistryUnavailable, WireFormatError, registry_did_not_answer

    # a real client against a port nobody listens on: connection refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    decoder = RawDecoder.for_registry(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="did not answer for schema id 7"):
        decoder(b"\x00\x00\x00\x00\x07\x02")
    assert time.monotonic() - started < 30
    assert not isinstance(RegistryUnavailable("x"), ValueError)  # no stage dead-letters it

    assert registry_did_not_answer(SchemaRegistryError(503, -1, "Service Unavailable"))
    assert not registry_did_not_answer(SchemaRegistryError(404, 40403, "Schema not found"))
    assert registry_did_not_answer(TimeoutError())

    def not_found(_id):
        raise SchemaRegistryError(404, 40403, "Schema not found")

    with pytest.raises(WireFormatError, match="schema id 7 is unknown to the registry"):  # the control: an answer
        RawDecoder(not_found)(b"\x00\x00\x00\x00\x07\x02")
    with pytest.raises(WireFormatError):
        RawDecoder({}.__getitem__)(b"\x00\x00\x00\x00\x07\x02")  # a fetcher of our own that has no such id
