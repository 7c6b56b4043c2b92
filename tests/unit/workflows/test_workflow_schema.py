"""Every workflow event encodes with schemas/avro/workflow.avsc, registered for intel.workflow; states survive JSON."""
from __future__ import annotations

import io
import json

import fastavro

from schemas.catalog import TOPIC_SCHEMAS, WORKFLOW_TOPIC, load_schema, parsed_schema, schema_for_topic
from schemas.wire import RawDecoder, SchemaCodec
from workflows import model as m
from workflows.testing import HOUR, MIN, Runner, person


def field(schema, name):
    return next(f for f in schema["fields"] if f["name"] == name)


def test_the_topic_is_registered_with_its_schema():
    assert WORKFLOW_TOPIC == "intel.workflow" and TOPIC_SCHEMAS[WORKFLOW_TOPIC] == "workflow"
    assert schema_for_topic("intel.workflow") == "workflow"


def test_event_types_and_item_kinds_match_the_code():
    schema = load_schema("workflow")
    assert field(schema, "event_type")["type"]["symbols"] == [*m.EVENT_TYPES, "UNKNOWN"]
    assert field(schema, "item_kind")["type"]["symbols"] == [*m.ITEM_KINDS, "UNKNOWN"]
    assert [f["name"] for f in schema["fields"]] == list(m.WorkflowEvent(
        "i", "DIRECTIVE", "ISSUED", 1, 0, "OPEN").to_avro())


def _every_kind_of_event() -> list[m.WorkflowEvent]:
    events = []
    hit = Runner()
    hit.apply(m.OpenHit("h", "H-1", m.Actor.bus(), "WANTED_PERSON", "130822", "120114", m.Identifier("PLATE", "冀R8F3D6"),
                        "130822/ztry/W-1", "HIGH", classification="SECRET"))
    hit.apply(m.ReportAction("a", "H-1", person("120114"), "DETAINED", "held at the checkpoint"))
    hit.apply(m.ConfirmHit("n", "H-1", person("130822"), "NEED_TIME", 20))
    hit.clock.advance(HOUR)
    hit.fire_due()
    hit.apply(m.ConfirmHit("c", "H-1", person("130822"), "CONFIRMED"))
    hit.clock.advance(4 * 24 * HOUR)
    hit.fire_due()
    hit.apply(m.WantedRevision("w", "H-1", m.Actor.bus(), "130822/ztry/W-1", "ARRESTED", 4))
    events += hit.events
    invalid = Runner()
    invalid.apply(m.OpenHit("h", "H-2", m.Actor.bus(), "WATCH_MATCH", "130822", "120114", m.Identifier("PHONE", "13800138000"),
                            "130822/bk/A-1"))
    invalid.apply(m.ConfirmHit("c", "H-2", person("130822"), "NOT_VALID", note="the watch had expired"))
    events += invalid.events

    req = Runner()
    earlier = m.EarlierAnswer("R-1", "131000/CRIMINAL_INVESTIGATION", req.clock.now - HOUR, m.Identifier("PHONE", "13800138000"),
                              "seen in Langfang")
    req.apply(m.SendRequest("s", "R-2", person("110000"), ("130822/CRIMINAL_INVESTIGATION", "120114/PUBLIC_ORDER"), "URGENT",
                            (m.Identifier("PHONE", "13800138000"),), "locate the phone's user", joint_action=True,
                            earlier_answers=(earlier,)))
    req.apply(m.AcceptRequest("acc", "R-2", person("130822", "CRIMINAL_INVESTIGATION")))
    req.apply(m.AnswerRequest("ans", "R-2", person("130822", "CRIMINAL_INVESTIGATION"), "same as R-1", ("R-1",)))
    req.apply(m.ReportJointAction("act", "R-2", person("130822", "CRIMINAL_INVESTIGATION"), "arrested together"))
    req.apply(m.RefuseRequest("ref", "R-2", person("120114", "PUBLIC_ORDER"), "NOT_COMPETENT"))
    req.apply(m.CloseRequest("close", "R-2", person("110000"), "done"))
    events += req.events

    d = Runner()
    d.apply(m.IssueDirective("i", "D-1", person("130000"), ("130822", "131000"), "set up checkpoints", d.clock.now + 2 * HOUR))
    d.clock.advance(16 * MIN)
    d.fire_due()
    d.apply(m.AcknowledgeDirective("k1", "D-1", person("130822")))
    d.apply(m.AcknowledgeDirective("k2", "D-1", person("131000")))
    d.apply(m.ReportDirective("r1", "D-1", person("130822"), "DONE"))
    d.apply(m.ReportDirective("r2", "D-1", person("131000"), "CANNOT", "no officers free"))
    d2 = Runner()
    d2.apply(m.IssueDirective("i", "D-2", person("130000"), ("130822",), "x", d2.clock.now + HOUR))
    d2.apply(m.CancelDirective("c", "D-2", person("130000"), "superseded"))
    events += d.events + d2.events
    return events


def test_every_event_type_round_trips_through_avro():
    events = _every_kind_of_event()
    assert set(m.EVENT_TYPES) == {e.event_type for e in events}
    parsed = parsed_schema("workflow")
    for event in events:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event.to_avro())
        buf.seek(0)
        back = fastavro.schemaless_reader(buf, parsed, None)
        assert str(back["event_id"]) == event.event_id and back["event_type"] == event.event_type
        assert back["at"].timestamp() * 1000 == event.at


class FakeRegistry:
    """Just enough of SchemaRegistryClient for SchemaCodec.register (unit tests only)."""

    def __init__(self):
        self.by_id, self.subjects = {}, {}

    def set_compatibility(self, subject_name, level):
        pass

    def register_schema(self, subject, schema):
        sid = self.subjects.setdefault(subject, len(self.subjects) + 1)
        self.by_id[sid] = schema.schema_str
        return sid


def test_the_codec_encodes_for_intel_workflow_and_the_raw_decoder_reads_numbers():
    registry = FakeRegistry()
    event = _every_kind_of_event()[0]
    data = SchemaCodec(registry=registry).encode(WORKFLOW_TOPIC, event.to_avro())
    assert "intel.workflow-value" in registry.subjects
    raw = RawDecoder(lambda sid: registry.by_id[sid])(data)
    assert raw == {**event.to_avro(), "to": list(event.to), "notify": list(event.notify)}


def test_states_survive_json_for_the_stream_jobs_tables():
    hit, req = Runner(), Runner()
    hit.apply(m.OpenHit("h", "H-1", m.Actor.bus(), "WATCH_MATCH", "130822", "120114", m.Identifier("PLATE", "冀R8F3D6"), "k",
                        priority="URGENT"))
    hit.clock.advance(HOUR)
    hit.fire_due()
    earlier = m.EarlierAnswer("R-1", "131000/CRIMINAL_INVESTIGATION", req.clock.now, m.Identifier("PHONE", "13800138000"), "x")
    req.apply(m.SendRequest("s", "R-2", person("110000"), ("130822/CRIMINAL_INVESTIGATION",), "ROUTINE",
                            (m.Identifier("PHONE", "13800138000"),), "q", earlier_answers=(earlier,)))
    for state in (hit.state, req.state):
        text = json.dumps(m.to_json(state), ensure_ascii=False)
        assert m.from_json(json.loads(text)) == state
