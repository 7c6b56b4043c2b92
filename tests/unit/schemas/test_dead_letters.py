"""One builder of the intel.dlq record for producers, jobs, the workflow job and the sink."""
from __future__ import annotations

import io
import uuid

import fastavro
import pytest

from schemas.catalog import parsed_schema
from schemas.dead_letters import STAGES, DeadLetter, dead_letter_record

T = 1_790_000_000_000


def through_avro(record: dict) -> dict:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema("dead_letter"), record)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, parsed_schema("dead_letter"))


def test_the_record_names_the_input_the_field_and_the_reason_and_keeps_the_raw_bytes():
    rec = dead_letter_record("VALIDATE", "incidents.jsonl:17", "not a valid resident id (check digit)",
                             bytearray(b'{"persons": []}'), kind="incident", field="persons[0].id_number",
                             source_region="120119", source_system="tj-checkpoints", failed_at_ms=T)
    back = through_avro(rec)
    assert (back["stage"], back["source"], back["field"], back["reason"]) == (
        "VALIDATE", "incidents.jsonl:17", "persons[0].id_number", "not a valid resident id (check digit)")
    assert back["raw"] == b'{"persons": []}' and back["kind"] == "incident" and back["source_region"] == "120119"
    assert back["failed_at"].timestamp() * 1000 == T
    assert uuid.UUID(str(back["dlq_id"])).version == 4


def test_each_record_gets_its_own_id_and_the_time_of_now_unless_given():
    a, b = (dead_letter_record("SINK", "intel.hit/0/5", "cannot store", b"x") for _ in range(2))
    assert a["dlq_id"] != b["dlq_id"]
    assert abs(a["failed_at"] - __import__("time").time() * 1000) < 5_000
    fixed = dead_letter_record("WORKFLOW", "cmd", "refused", b"", dlq_id="7d3f0a52-0000-5000-8000-000000000000", failed_at_ms=T)
    assert (fixed["dlq_id"], fixed["failed_at"]) == ("7d3f0a52-0000-5000-8000-000000000000", T)


def test_a_stage_the_schema_does_not_know_is_refused_by_name():
    with pytest.raises(ValueError, match="'ROUTE' is not one of PUBLISH"):
        dead_letter_record("ROUTE", "x", "y", b"")


def test_the_stages_are_the_schemas_enum():
    stage = next(f for f in parsed_schema("dead_letter")["fields"] if f["name"] == "stage")
    assert tuple(stage["type"]["symbols"]) == STAGES


def test_a_stage_dead_letter_becomes_the_same_record():
    dl = DeadLetter("MATCH", "intel.match.requests/2/40", "unreadable match request: v: unknown version 2", b"{}",
                    field="v")
    rec = dl.record(failed_at_ms=T)
    assert through_avro(rec)["field"] == "v"
    assert {k: v for k, v in rec.items() if k != "dlq_id"} == {
        k: v for k, v in dead_letter_record("MATCH", dl.source, dl.reason, b"{}", field="v", failed_at_ms=T).items()
        if k != "dlq_id"}
