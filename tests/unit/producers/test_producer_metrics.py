"""Rejections are counted by a bounded reason class, whatever integrators send."""
from __future__ import annotations

import pytest

from producers.metrics import REASONS, reason_class
from schemas.records import RecordError, validate_record

GOOD = {"source_region": "120119", "source_system": "kakou", "source_ref": "JQ1", "occurred_at": "2026-11-23T09:30:00+08:00",
        "incident_type": "CHECKPOINT_CHECK", "location": {"region": "120119"},
        "persons": [{"id_type": "RESIDENT_ID", "id_number": "130822850101123"}], "vehicles": [{"plate": "冀R8F3D6"}],
        "phones": ["13800138000"]}


@pytest.mark.parametrize("change, expected", [
    ({"source_ref": None}, "missing_field"),
    ({"colour": "red"}, "unknown_field"),
    ({"persons": [{"id_type": "RESIDENT_ID", "id_number": "130822198501011234"}]}, "bad_identifier"),
    ({"vehicles": [{"plate": "X"}]}, "bad_identifier"),
    ({"phones": ["12"]}, "bad_identifier"),
    ({"incident_type": "PICNIC"}, "not_in_enum"),
    ({"location": {"region": "999999"}}, "bad_region"),
    ({"occurred_at": "yesterday"}, "bad_time"),
    ({"persons": "王五"}, "wrong_type"),
    ({"revision": 0}, "invalid_value"),
])
def test_each_kind_of_bad_record_gets_its_reason_class(change, expected):
    with pytest.raises(RecordError) as exc:
        validate_record("incident", {**GOOD, **change})
    assert reason_class(exc.value.field, exc.value.reason) == expected
    assert expected in REASONS


def test_the_good_record_is_good():
    assert validate_record("incident", GOOD)["source_ref"] == "JQ1"
