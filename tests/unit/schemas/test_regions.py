from __future__ import annotations

import pytest

from schemas.regions import load_branches, load_offences, load_regions, validate_region_code

R = load_regions()


def test_ancestors_from_the_table_and_from_the_code():
    assert R.ancestors("130822") == ["130800", "130000"]
    assert R.ancestors("110112") == ["110100", "110000"]
    assert R.ancestors("120119") == ["120100", "120000"]
    assert R.ancestors("130899") == ["130800", "130000"]  # well-formed, not in the table
    assert R.ancestors("130000") == []


def test_is_within_and_prefixes():
    assert R.is_within("130822", "130000") and R.is_within("130822", "130822")
    assert not R.is_within("130000", "130822") and not R.is_within("120119", "130000")
    assert R.descendants_prefix("130000") == "13" and R.descendants_prefix("130800") == "1308"
    assert R.descendants_prefix("130822") == "130822"


def test_zones():
    assert R.zones_of("120114") == {"TWL", "JJJ"}
    assert R.zones_of("110117") == {"JJJ"}
    assert R.expand_scope(["TWL", "320281"]) == {"110112", "120114", "131000", "320281"}


def test_names_and_retired_codes():
    assert R.name("120119") == "蓟州区" and R.name("999999") == "999999"
    assert R.get("120225").valid_to == "2016-07-28"


@pytest.mark.parametrize("code,reason", [("12345", "is not a 6-digit region code"), ("999999", "unknown region code 999999")])
def test_validate_region_code(code, reason):
    with pytest.raises(ValueError, match=reason):
        validate_region_code(code)


def test_code_tables():
    assert load_offences()["TELECOM_FRAUD"] == "电信网络诈骗"
    assert load_branches()["COMMAND_CENTER"] == "指挥中心"
