"""Normalising identifiers on the way in (DOMAIN.md section 2): the keys that make hits.

Pure functions, fast enough for the producer's hot path. Each refusal raises
`InvalidIdentifier` with a reason a person can act on ("check digit is 3, expected X").
"""
from __future__ import annotations

import functools
import operator
import re
import time
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ASCII_ZERO_TOTAL = 48 * sum(_WEIGHTS)  # the weighted sum of ASCII codes, less this, is the digits' sum
_CHECK = "10X98765432"

# Province abbreviations on mainland plates (GA 36).
PLATE_PROVINCES = frozenset("京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼")
_PLATE_STRIP = str.maketrans("", "", " .·•-_\u3000")
_PLATE_SERIAL = re.compile(r"[A-Z0-9]+")
_PHONE_STRIP = str.maketrans("", "", " -()\u3000.")
_PASSPORT = re.compile(r"[A-Z0-9]{5,20}")

IDENTIFIER_KINDS = ("RESIDENT_ID", "PLATE", "PHONE", "PASSPORT")


class InvalidIdentifier(ValueError):
    """An identifier that cannot be normalised; `.reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def resident_id_check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits: '0'-'9' or 'X'."""
    return _CHECK[(sum(map(operator.mul, first17.encode("ascii"), _WEIGHTS)) - _ASCII_ZERO_TOTAL) % 11]


@functools.lru_cache(maxsize=65_536)  # about 36,500 birth dates a century: persons share them
def _birth_date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _check_birth_date(text: str) -> None:
    born = _birth_date(text)
    if born is None:
        raise InvalidIdentifier(f"birth date {text} is not a valid date")
    if born > _today():
        raise InvalidIdentifier(f"birth date {text} is in the future")


_today_cache = [0.0, date.min]


def _today() -> date:
    """date.today(), asked of the clock at most once a minute."""
    now = time.monotonic()
    if now - _today_cache[0] > 60:
        _today_cache[:] = [now, date.today()]
    return _today_cache[1]


def normalise_resident_id(raw: str) -> str:
    """An 18-character resident ID (15-digit numbers converted), upper-case X."""
    if raw is None or not str(raw).strip():
        raise InvalidIdentifier("is empty")
    text = str(raw).strip().upper()
    if len(text) == 15:
        if not (text.isascii() and text.isdigit()):
            raise InvalidIdentifier("a 15-character resident ID must be all digits")
        first17 = text[:6] + "19" + text[6:]
        _check_region_and_date(first17)
        return first17 + resident_id_check_digit(first17)
    if len(text) != 18:
        raise InvalidIdentifier(f"has {len(text)} characters, expected 15 or 18")
    first17, check = text[:17], text[17]
    if not (first17.isascii() and first17.isdigit()):
        raise InvalidIdentifier("the first 17 characters must be digits")
    if check not in "0123456789X":
        raise InvalidIdentifier(f"last character {check!r} must be a digit or X")
    _check_region_and_date(first17)
    expected = resident_id_check_digit(first17)
    if check != expected:
        raise InvalidIdentifier(f"check digit is {check}, expected {expected}")
    return text


def _check_region_and_date(first17: str) -> None:
    if first17[:6] == "000000":
        raise InvalidIdentifier("region part 000000 is not a region")
    _check_birth_date(first17[6:14])


def normalise_plate(raw: str) -> str:
    """A mainland plate: province character, letter, 5 (6 for new-energy) letters or digits."""
    if raw is None or not str(raw).strip():
        raise InvalidIdentifier("is empty")
    text = str(raw).translate(_PLATE_STRIP).upper()
    province = text[0]
    if province not in PLATE_PROVINCES:
        raise InvalidIdentifier(f"unknown province character {province!r}")
    if len(text) < 2 or not ("A" <= text[1] <= "Z"):
        raise InvalidIdentifier("the character after the province must be a letter A-Z")
    serial = text[2:]
    if len(serial) not in (5, 6):
        raise InvalidIdentifier(f"has {len(serial)} characters after the province letter, expected 5 or 6")
    # I and O do not occur in real serials, but plates are typed by hand at checkpoints:
    # refusing them would lose the record; the matcher compares what it is given.
    if not _PLATE_SERIAL.fullmatch(serial):
        raise InvalidIdentifier(f"serial {serial!r} may hold only letters A-Z and digits")
    return text


def normalise_phone(raw: str) -> str:
    """A mainland mobile number: 11 digits starting with 1 (+86 / 0086 / 86 prefixes removed)."""
    if raw is None or not str(raw).strip():
        raise InvalidIdentifier("is empty")
    text = str(raw).translate(_PHONE_STRIP)
    if text.startswith("+"):
        text = text[1:]
        if not text.startswith("86"):
            raise InvalidIdentifier(f"country code +{text[:3]} is not mainland China (+86)")
        text = text[2:]
    elif text.startswith("0086"):
        text = text[4:]
    elif text.startswith("86") and len(text) == 13:
        text = text[2:]
    if not text.isdigit():
        raise InvalidIdentifier("may hold only digits (and a +86 prefix)")
    if len(text) != 11:
        raise InvalidIdentifier(f"has {len(text)} digits, expected 11")
    if text[0] != "1" or text[1] not in "3456789":
        raise InvalidIdentifier(f"{text[:2]} is not a mainland mobile prefix (13-19)")
    return text


def normalise_passport(raw: str) -> str:
    """A passport or other document number: upper-case, no spaces, 5-20 letters and digits."""
    if raw is None or not str(raw).strip():
        raise InvalidIdentifier("is empty")
    text = str(raw).replace(" ", "").replace("-", "").upper()
    if not _PASSPORT.fullmatch(text):
        raise InvalidIdentifier("must be 5 to 20 letters and digits")
    return text


_NORMALISERS = {
    "RESIDENT_ID": normalise_resident_id,
    "PLATE": normalise_plate,
    "PHONE": normalise_phone,
    "PASSPORT": normalise_passport,
}


@functools.lru_cache(maxsize=262_144)
def normalise_identifier(kind: str, raw: str) -> str:
    """Normalise an identifier of kind RESIDENT_ID, PLATE, PHONE or PASSPORT.

    Cached: the same persons, plates and phones come by again and again (refusals are not
    cached, and raise each time).
    """
    try:
        normalise = _NORMALISERS[kind]
    except KeyError:
        raise InvalidIdentifier(f"unknown identifier kind {kind!r}") from None
    return normalise(raw)
