from __future__ import annotations

import io

import fastavro
import pytest

from schemas.catalog import parsed_schema
from schemas.ids import derive_event_id
from schemas.records import RecordError, subjects_of, validate_record

NOW = 1_790_000_000_000


def incident(**over):
    base = {"source_region": "120119", "source_system": "kakou", "source_ref": "JQ1", "occurred_at": "2026-11-23T09:30:00+08:00",
            "incident_type": "checkpoint_check", "location": {"region": "120119", "address": "蓟州检查站"},
            "persons": [{"id_type": "RESIDENT_ID", "id_number": "130822850101123", "name": "王五", "role": "checked"}],
            "vehicles": [{"plate": "冀r 8f3d6"}], "phones": ["+86 138-0013-8000"]}
    base.update(over)
    return base


def error(kind, raw, **kw):
    with pytest.raises(RecordError) as exc:
        validate_record(kind, raw, now_ms=NOW, **kw)
    return exc.value


def test_a_valid_incident_is_normalised_with_originals_and_defaults():
    rec = validate_record("incident", incident(), now_ms=NOW)
    assert rec["event_id"] == derive_event_id("120119", "kakou", "JQ1", 1)
    assert rec["revision"] == 1 and rec["classification"] == "INTERNAL" and rec["share_scope"] == []
    assert rec["reported_at"] == NOW
    assert rec["occurred_at"] == 1_795_397_400_000  # 2026-11-23 01:30 UTC
    assert rec["incident_type"] == "CHECKPOINT_CHECK"
    person = rec["persons"][0]
    assert person["id_number"] == "130822198501011232" and person["id_number_original"] == "130822850101123"
    assert person["role"] == "CHECKED" and person["gender"] == "U"
    assert rec["vehicles"][0] == {"plate": "冀R8F3D6", "plate_original": "冀r 8f3d6", "color": None, "description": None}
    assert rec["phones"] == ["13800138000"]
    assert subjects_of("incident", rec) == [("RESIDENT_ID", "130822198501011232", "CHECKED"), ("PLATE", "冀R8F3D6", ""),
                                            ("PHONE", "13800138000", "")]


def test_times_iso_with_and_without_offset_and_epoch_ms():
    with_offset = validate_record("incident", incident(occurred_at="2026-11-23T09:30:00+08:00"), now_ms=NOW)["occurred_at"]
    naive = validate_record("incident", incident(occurred_at="2026-11-23T09:30:00"), now_ms=NOW)["occurred_at"]
    utc = validate_record("incident", incident(occurred_at="2026-11-23T01:30:00Z"), now_ms=NOW)["occurred_at"]
    assert with_offset == naive == utc  # a time without offset is Beijing time
    assert validate_record("incident", incident(occurred_at=123), now_ms=NOW)["occurred_at"] == 123


def test_resend_gets_the_same_event_id():
    a = validate_record("incident", incident(), now_ms=NOW)
    b = validate_record("incident", incident(), now_ms=NOW + 5000)
    assert a["event_id"] == b["event_id"]
    assert validate_record("incident", incident(revision=2), now_ms=NOW)["event_id"] != a["event_id"]



@pytest.mark.parametrize("name", ["110112/jwzh/C1", "130822/ztry/ZT-2026-001", "京A12345/中文/ref", ""])
def test_ids_are_the_uuid5_of_domain_md(name):
    """Other languages derive the same ids with their UUIDv5: the fast path must stay exactly uuid5."""
    import uuid

    from schemas.ids import NAMESPACE, derive_event_id, hit_id

    region, system, ref = (name.split("/") + ["", "", ""])[:3]
    assert derive_event_id(region, system, ref, 3) == str(uuid.uuid5(NAMESPACE, f"{region}/{system}/{ref}#3"))
    assert hit_id(name, "e", "CASE_LINK") == str(uuid.uuid5(NAMESPACE, f"hit|{name}|e|CASE_LINK"))


@pytest.mark.parametrize("kind,raw,field,reason", [
    ("incident", incident(source_ref=None), "source_ref", "is required"),
    ("incident", incident(occurred_at=None), "occurred_at", "is required"),
    ("incident", incident(incident_type=None), "incident_type", "is required"),
    ("incident", incident(location=None), "location", "is required"),
    ("incident", incident(location={"address": "x"}), "location.region", "is required"),
    ("incident", incident(location={"region": "999999"}), "location.region", "unknown region code 999999"),
    ("incident", incident(titel="x"), "titel", "unknown field 'titel'"),
    ("incident", incident(incident_type="PICNIC"), "incident_type", "'PICNIC' is not one of CHECKPOINT_CHECK|"),
    ("incident", incident(occurred_at="yesterday"), "occurred_at", "'yesterday' is not an ISO-8601 time"),
    ("incident", incident(revision=0), "revision", "must be 1 or more"),
    ("incident", incident(event_id="not-a-uuid"), "event_id", "'not-a-uuid' is not a UUID"),
    ("incident", incident(share_scope=["MARS"]), "share_scope[0]", "'MARS' is neither a known region code nor a zone name"),
    ("incident", incident(persons=[{"id_type": "RESIDENT_ID", "id_number": "110105194912310021"}]),
     "persons[0].id_number", "check digit is 1, expected X"),
    ("incident", incident(persons=[{"id_type": "RESIDENT_ID"}]), "persons[0].id_number", "is required"),
    ("incident", incident(persons=[{"id_number": "X1", "shoe": 42}]), "persons[0].shoe", "unknown field 'shoe'"),
    ("incident", incident(vehicles=[{"plate": "XA12345"}]), "vehicles[0].plate", "unknown province character 'X'"),
    ("incident", incident(phones=["12345"]), "phones[0]", "has 5 digits, expected 11"),
    ("incident", incident(classification="TOP_SECRET"), "classification", "'TOP_SECRET' is not one of PUBLIC|"),
    ("incident", incident(classification=["SECRET"]), "classification", "must be a string, got list"),
    ("incident", incident(incident_type={"x": 1}), "incident_type", "must be a string, got object"),
    ("incident", incident(source_region={}), "source_region", "must be a string, got object"),
    ("incident", incident(persons=[{"id_number": "X1"}, {"id_number": "X2", "role": ["SUSPECT"]}]),
     "persons[1].role", "must be a string, got list"),
    ("incident", incident(location={"region": "120119", "lat": "north"}), "location.lat", "must be a number"),
    ("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": "W1", "occurred_at": 1, "action": "LISTED"},
     "person", "is required"),
    ("alert", {"source_region": "110000", "source_system": "bk", "source_ref": "A1", "occurred_at": 1, "alert_type": "WATCH",
               "status": "OPEN"}, "title", "is required"),
])
def test_each_problem_names_its_field_and_reason(kind, raw, field, reason):
    exc = error(kind, raw)
    assert exc.field == field and exc.reason.startswith(reason), (exc.field, exc.reason)
    assert str(exc) == f"{field}: {exc.reason}"


def test_publisher_region_and_system_fill_in_and_conflicts_are_refused():
    raw = incident()
    del raw["source_region"], raw["source_system"]
    rec = validate_record("incident", raw, source_region="120119", source_system="kakou", now_ms=NOW)
    assert (rec["source_region"], rec["source_system"]) == ("120119", "kakou")
    exc = error("incident", incident(), source_region="110000")
    assert exc.field == "source_region" and "record says '120119', publisher is '110000'" in exc.reason
    exc = error("incident", raw)
    assert exc.field == "source_region" and "--region" in exc.reason


@pytest.mark.parametrize("kind,raw", [
    ("incident", incident()),
    ("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": "W1", "occurred_at": "2026-01-01T00:00:00",
                "action": "listed", "person": {"id_type": "RESIDENT_ID", "id_number": "11010519491231002X",
                                                "birth_date": "1949-12-31", "gender": "f"},
                "phones": ["13800138000"], "danger_level": "high", "share_scope": ["JJJ", "130000"]}),
    ("alert", {"source_region": "110000", "source_system": "bk", "source_ref": "A1", "occurred_at": 1, "alert_type": "WATCH",
               "title": "布控", "status": "OPEN", "valid_until": "2027-01-01T00:00:00+08:00", "vehicles": [{"plate": "京A12345"}]}),
])
def test_every_validated_record_round_trips_through_its_avro_schema(kind, raw):
    rec = validate_record(kind, raw, now_ms=NOW)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(kind), rec)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed_schema(kind), None)
    assert str(back["event_id"]) == rec["event_id"]
    assert int(back["occurred_at"].timestamp() * 1000) == rec["occurred_at"]
    for key in ("source_ref", "revision", "classification", "share_scope"):
        assert back[key] == rec[key]
