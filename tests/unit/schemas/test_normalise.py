from __future__ import annotations

from datetime import date

import pytest

from schemas.normalise import (
    InvalidIdentifier, normalise_identifier, normalise_passport, normalise_phone, normalise_plate,
    normalise_resident_id, resident_id_check_digit,
)


def reason(fn, raw):
    with pytest.raises(InvalidIdentifier) as exc:
        fn(raw)
    return exc.value.reason


@pytest.mark.parametrize("first17,check", [("11010519491231002", "X"), ("13082219850101123", "2")])
def test_check_digit_iso_7064_mod_11_2(first17, check):
    assert resident_id_check_digit(first17) == check


def test_check_digit_agrees_with_the_textbook_formula():
    import random

    rng = random.Random(7)
    for _ in range(2000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        # ISO 7064 MOD 11-2 as the standard states it: weights 2^(i) mod 11, from the right
        total = sum(int(c) * (2 ** (17 - i) % 11) for i, c in enumerate(first17))
        assert resident_id_check_digit(first17) == "10X98765432"[total % 11]


def test_valid_18_digit_ids_and_lower_case_x():
    assert normalise_resident_id("11010519491231002X") == "11010519491231002X"
    assert normalise_resident_id(" 11010519491231002x ") == "11010519491231002X"


def test_15_digit_ids_become_18_digits_with_19_and_a_check_digit():
    converted = normalise_resident_id("130822850101123")
    assert converted == "130822198501011232"
    assert normalise_resident_id(converted) == converted


@pytest.mark.parametrize("raw,expected", [
    ("110105194912310021", "check digit is 1, expected X"),
    ("11010519491231002", "has 17 characters, expected 15 or 18"),
    ("1101051949123100211", "has 19 characters, expected 15 or 18"),
    ("11010519491A31002X", "the first 17 characters must be digits"),
    ("11010519491231002Y", "last character 'Y' must be a digit or X"),
    ("110105199002300011", "birth date 19900230 is not a valid date"),
    (f"1101052{date.today().year + 1 - 2000:03d}01010011"[:17] + "0", None),  # future (check digit may differ)
    ("000000199001010011", "region part 000000 is not a region"),
    ("13082285010112A", "a 15-character resident ID must be all digits"),
    ("", "is empty"),
    (None, "is empty"),
])
def test_invalid_resident_ids_have_precise_reasons(raw, expected):
    got = reason(normalise_resident_id, raw)
    if expected:
        assert got == expected
    else:
        assert "in the future" in got or "check digit" in got


def test_a_future_birth_date_is_refused():
    year = date.today().year + 1
    first17 = f"110105{year}0101001"
    assert reason(normalise_resident_id, first17 + resident_id_check_digit(first17)) == f"birth date {year}0101 is in the future"


@pytest.mark.parametrize("raw,plate", [("京A12345", "京A12345"), ("京a 12345", "京A12345"), ("冀R·8F3D6", "冀R8F3D6"),
                                       ("粤B.D12345", "粤BD12345"), (" 津-C 0001A ", "津C0001A")])
def test_plates(raw, plate):
    assert normalise_plate(raw) == plate


@pytest.mark.parametrize("raw,expected", [
    ("XA12345", "unknown province character 'X'"),
    ("京12345", "the character after the province must be a letter A-Z"),
    ("京A1234", "has 4 characters after the province letter, expected 5 or 6"),
    ("京A1234567", "has 7 characters after the province letter, expected 5 or 6"),
    ("京A12#45", "serial '12#45' may hold only letters A-Z and digits"),
    ("", "is empty"),
])
def test_invalid_plates(raw, expected):
    assert reason(normalise_plate, raw) == expected


@pytest.mark.parametrize("raw", ["13800138000", "+86 138-0013-8000", "0086 13800138000", "8613800138000", "(138) 0013 8000"])
def test_phones(raw):
    assert normalise_phone(raw) == "13800138000"


@pytest.mark.parametrize("raw,expected", [
    ("1380013800", "has 10 digits, expected 11"),
    ("23800138000", "23 is not a mainland mobile prefix (13-19)"),
    ("12800138000", "12 is not a mainland mobile prefix (13-19)"),
    ("+85212345678", "country code +852 is not mainland China (+86)"),
    ("138OO138000", "may hold only digits (and a +86 prefix)"),
])
def test_invalid_phones(raw, expected):
    assert reason(normalise_phone, raw) == expected


def test_passports():
    assert normalise_passport(" e1234 5678 ") == "E12345678"
    assert reason(normalise_passport, "E1") == "must be 5 to 20 letters and digits"


def test_normalise_identifier_dispatches_and_refuses_unknown_kinds():
    assert normalise_identifier("PLATE", "京a 12345") == "京A12345"
    assert normalise_identifier("PHONE", "+86 13800138000") == "13800138000"
    assert reason(lambda v: normalise_identifier("EMAIL", v), "x@y") == "unknown identifier kind 'EMAIL'"
    # refusals are not cached: the same bad value fails again
    for _ in range(2):
        assert "check digit" in reason(lambda v: normalise_identifier("RESIDENT_ID", v), "110105194912310021")
