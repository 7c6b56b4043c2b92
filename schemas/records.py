"""Validating integrators' records (JSON-shaped dicts) into Avro-ready, normalised records.

`validate_record(kind, raw)` applies DOMAIN.md section 3: required fields, defaults,
enums, region codes, identifiers normalised (originals kept), unknown fields refused.
The first problem found raises `RecordError(field, reason)`, with the field's path
(`persons[0].id_number`) and a reason a person can act on.

Times: ISO-8601 strings (a time without an offset is Beijing time, UTC+8, as regional
systems write it) or epoch milliseconds; dates `YYYY-MM-DD`. The result holds epoch
milliseconds and `datetime.date`, as fastavro writes them.
"""
from __future__ import annotations

import functools
import time
import uuid
from datetime import date, datetime, timedelta, timezone

from schemas.ids import derive_event_id
from schemas.normalise import InvalidIdentifier, normalise_identifier
from schemas.regions import load_regions, validate_region_code

BEIJING = timezone(timedelta(hours=8))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class RecordError(ValueError):
    """A record that does not fit: `.field` is the path ('' for the whole record), `.reason` why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field, self.reason = field, reason


# --- value parsers: (value, path) -> parsed value, RecordError on failure ----------------

def _string(value, path):
    if not isinstance(value, str):
        raise RecordError(path, f"must be a string, got {_type(value)}")
    return value


def _optional_string(value, path):
    return None if value is None else _string(value, path)


def _non_empty(value, path):
    text = _string(value, path).strip()
    if not text:
        raise RecordError(path, "must not be empty")
    return text


def _int(value, path):
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise RecordError(path, f"must be an integer, got {_type(value)}")
    return value


def _float(value, path):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(path, f"must be a number, got {_type(value)}")
    return float(value)


def _timestamp(value, path):
    if isinstance(value, bool):
        raise RecordError(path, "must be an ISO-8601 time or epoch milliseconds, got a boolean")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise RecordError(path, f"must be an ISO-8601 time or epoch milliseconds, got {_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RecordError(path, f"{value!r} is not an ISO-8601 time (e.g. 2026-11-23T09:30:00+08:00)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=BEIJING)
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def _optional_timestamp(value, path):
    return None if value is None else _timestamp(value, path)


def _date(value, path):
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(path, f"must be a date YYYY-MM-DD, got {_type(value)}")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise RecordError(path, f"{value!r} is not a date YYYY-MM-DD") from None


def _uuid(value, path):
    try:
        return str(uuid.UUID(_string(value, path)))
    except ValueError:
        raise RecordError(path, f"{value!r} is not a UUID") from None


_known_region = functools.lru_cache(maxsize=16384)(validate_region_code)  # raises (uncached) for a bad code


def _region(value, path):
    try:
        return _known_region(_string(value, path).strip())
    except ValueError as exc:
        raise RecordError(path, str(exc)) from None


def _enum(*symbols):
    allowed = frozenset(symbols)
    listed = "|".join(symbols)

    def parse(value, path):
        if value in allowed:  # the common case: already canonical
            return value
        text = _string(value, path).strip().upper()
        if text not in allowed:
            raise RecordError(path, f"{value!r} is not one of {listed}")
        return text

    return parse


def _list(item):
    def parse(value, path):
        if value is None:
            return []
        if not isinstance(value, list):
            raise RecordError(path, f"must be a list, got {_type(value)}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return parse


def _type(value) -> str:
    return "null" if value is None else type(value).__name__.replace("dict", "object").replace("str", "string")


def _identifier(kind):
    def parse(value, path):
        raw = _string(value, path)
        try:
            return normalise_identifier(kind, raw)
        except InvalidIdentifier as exc:
            raise RecordError(path, exc.reason) from None

    return parse


_phone = _identifier("PHONE")

CLASSIFICATIONS = ("PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET")
_GENDER = _enum("M", "F", "U")
_ID_TYPE = _enum("RESIDENT_ID", "PASSPORT", "OTHER")
_ROLE = _enum("SUSPECT", "VICTIM", "WITNESS", "WANTED", "CHECKED", "OTHER")


def _check_fields(raw: dict, allowed: frozenset, path: str) -> None:
    if raw.keys() <= allowed:
        return
    for name in raw:
        if name not in allowed:
            where = f"{path}.{name}" if path else name
            raise RecordError(where, f"unknown field {name!r} (allowed: {', '.join(sorted(allowed))})")


def _object(value, path) -> dict:
    if not isinstance(value, dict):
        raise RecordError(path, f"must be an object, got {_type(value)}")
    return value


_PERSON_FIELDS = frozenset({"id_type", "id_number", "name", "gender", "birth_date", "role"})
_VEHICLE_FIELDS = frozenset({"plate", "color", "description"})
_LOCATION_FIELDS = frozenset({"region", "address", "lat", "lon"})


def _person(value, path, default_role="OTHER"):
    p = _object(value, path)
    _check_fields(p, _PERSON_FIELDS, path)
    get = p.get
    id_type = get("id_type")
    id_type = "OTHER" if id_type is None else _ID_TYPE(id_type, f"{path}.id_type")
    original = get("id_number")
    if original is None:
        raise RecordError(f"{path}.id_number", "is required")
    if type(original) is not str:
        _string(original, f"{path}.id_number")
    try:
        if id_type != "OTHER":
            number = normalise_identifier(id_type, original)
        else:
            number = original.strip().upper()
            if not number:
                raise InvalidIdentifier("is empty")
    except InvalidIdentifier as exc:
        raise RecordError(f"{path}.id_number", exc.reason) from None
    name, gender, birth_date, role = get("name"), get("gender"), get("birth_date"), get("role")
    return {
        "id_type": id_type,
        "id_number": number,
        "id_number_original": original if original != number else None,
        "name": name if name is None or type(name) is str else _string(name, f"{path}.name"),
        "gender": "U" if gender is None else _GENDER(gender, f"{path}.gender"),
        "birth_date": None if birth_date is None else _date(birth_date, f"{path}.birth_date"),
        "role": default_role if role is None else _ROLE(role, f"{path}.role"),
    }


def _vehicle(value, path):
    v = _object(value, path)
    _check_fields(v, _VEHICLE_FIELDS, path)
    if v.get("plate") is None:
        raise RecordError(f"{path}.plate", "is required")
    original = _string(v["plate"], f"{path}.plate")
    try:
        plate = normalise_identifier("PLATE", original)
    except InvalidIdentifier as exc:
        raise RecordError(f"{path}.plate", exc.reason) from None
    return {
        "plate": plate,
        "plate_original": original if original != plate else None,
        "color": _optional_string(v.get("color"), f"{path}.color"),
        "description": _optional_string(v.get("description"), f"{path}.description"),
    }


def _location(value, path):
    loc = _object(value, path)
    _check_fields(loc, _LOCATION_FIELDS, path)
    if loc.get("region") is None:
        raise RecordError(f"{path}.region", "is required")
    return {
        "region": _region(loc["region"], f"{path}.region"),
        "address": _optional_string(loc.get("address"), f"{path}.address"),
        "lat": _float(loc.get("lat"), f"{path}.lat"),
        "lon": _float(loc.get("lon"), f"{path}.lon"),
    }


def _scope_entry(value, path):
    text = _string(value, path).strip()
    regions = load_regions()
    if regions.is_zone(text) or regions.is_known(text):
        return text
    raise RecordError(path, f"{text!r} is neither a known region code nor a zone name")


_persons = _list(_person)
_vehicles = _list(_vehicle)
_phones = _list(_phone)
_scope = _list(_scope_entry)

ENVELOPE_FIELDS = ("event_id", "source_region", "source_system", "source_ref", "revision",
                   "occurred_at", "reported_at", "classification", "share_scope")

# per kind: field -> (parser, required, default)
_KIND_FIELDS = {
    "alert": {
        "alert_type": (_enum("ASSIST_REQUEST", "WATCH", "WARNING"), True, None),
        "title": (_non_empty, True, None),
        "description": (_optional_string, False, None),
        "priority": (_enum("ROUTINE", "URGENT", "CRITICAL"), False, "ROUTINE"),
        "status": (_enum("OPEN", "CLOSED"), True, None),
        "valid_until": (_optional_timestamp, False, None),
        "persons": (_persons, False, []),
        "vehicles": (_vehicles, False, []),
        "phones": (_phones, False, []),
    },
    "wanted": {
        "action": (_enum("LISTED", "UPDATED", "ARRESTED", "SURRENDERED", "CANCELLED"), True, None),
        "person": (lambda v, p: _person(v, p, "WANTED"), True, None),
        "offence": (_enum("THEFT", "ROBBERY", "FRAUD", "TELECOM_FRAUD", "DRUGS", "PYRAMID_SELLING",
                          "COUNTERFEIT_CURRENCY", "ASSAULT", "HOMICIDE", "TERRORISM", "TRAFFIC_CRIME",
                          "ENVIRONMENTAL", "OTHER"), False, "OTHER"),
        "warrant_ref": (_optional_string, False, None),
        "danger_level": (_enum("LOW", "MEDIUM", "HIGH"), False, "MEDIUM"),
        "phones": (_phones, False, []),
        "vehicles": (_vehicles, False, []),
    },
    "incident": {
        "incident_type": (_enum("CHECKPOINT_CHECK", "HOTEL_CHECKIN", "RESIDENCE_REGISTRATION", "TRAFFIC_STOP",
                                "THEFT", "FRAUD", "ROBBERY", "DRUGS", "ASSAULT", "OTHER"), True, None),
        "case_no": (_optional_string, False, None),
        "title": (_optional_string, False, None),
        "description": (_optional_string, False, None),
        "location": (_location, True, None),
        "persons": (_persons, False, []),
        "vehicles": (_vehicles, False, []),
        "phones": (_phones, False, []),
    },
}
_ALLOWED = {kind: frozenset(ENVELOPE_FIELDS) | frozenset(fields) for kind, fields in _KIND_FIELDS.items()}
_EMPTY = object()  # default: a new empty list
_FIELD_PLAN = {kind: tuple((name, parse, required, _EMPTY if default == [] else default)
                           for name, (parse, required, default) in fields.items())
               for kind, fields in _KIND_FIELDS.items()}
_CLASSIFICATION = _enum(*CLASSIFICATIONS)


def validate_record(kind: str, raw: dict, *, source_region: str | None = None, source_system: str | None = None,
                    now_ms: int | None = None) -> dict:
    """The Avro-ready record for `kind`, or RecordError for the first problem found."""
    if kind not in _KIND_FIELDS:
        raise RecordError("", f"unknown kind {kind!r} (alert, wanted or incident)")
    if not isinstance(raw, dict):
        raise RecordError("", f"a record must be an object, got {_type(raw)}")
    _check_fields(raw, _ALLOWED[kind], "")
    get = raw.get
    region = _region(_from_publisher(raw, "source_region", source_region), "source_region")
    system = _non_empty(_from_publisher(raw, "source_system", source_system), "source_system")
    ref = get("source_ref")
    if ref is None:
        raise RecordError("source_ref", "is required")
    ref = _non_empty(ref, "source_ref")
    revision = get("revision")
    revision = 1 if revision is None else _int(revision, "revision")
    if revision < 1:
        raise RecordError("revision", f"must be 1 or more, got {revision}")
    event_id = get("event_id")
    occurred, reported, classification = get("occurred_at"), get("reported_at"), get("classification")
    if occurred is None:
        raise RecordError("occurred_at", "is required")
    scope = get("share_scope")
    out = {
        "source_region": region,
        "source_system": system,
        "source_ref": ref,
        "revision": revision,
        "event_id": (derive_event_id(region, system, ref, revision) if event_id is None
                     else _uuid(event_id, "event_id")),
        "occurred_at": _timestamp(occurred, "occurred_at"),
        "reported_at": (_timestamp(reported, "reported_at") if reported is not None
                        else now_ms if now_ms is not None else int(time.time() * 1000)),
        "classification": "INTERNAL" if classification is None else _CLASSIFICATION(classification, "classification"),
        "share_scope": _scope(scope, "share_scope") if scope else [],
    }
    for name, parse, required, default in _FIELD_PLAN[kind]:
        value = get(name)
        if value is None:
            if required:
                raise RecordError(name, "is required")
            out[name] = [] if default is _EMPTY else default
        else:
            out[name] = parse(value, name)
    return out


def _from_publisher(raw: dict, name: str, given: str | None) -> str:
    value = raw.get(name)
    if value is None:
        if given is None:
            raise RecordError(name, "is required (in the record, or from the publisher: --region / --system)")
        return given
    if given is not None and value != given:
        raise RecordError(name, f"record says {value!r}, publisher is {given!r}")
    return value


def subjects_of(kind: str, record: dict) -> list[tuple[str, str, str]]:
    """(identifier kind, normalised value, role) of every identifier a validated record carries."""
    out: list[tuple[str, str, str]] = []
    persons = [record["person"]] if kind == "wanted" else record.get("persons") or ()
    for p in persons:
        if p.get("id_type") in ("RESIDENT_ID", "PASSPORT"):
            out.append((p["id_type"], p["id_number"], p.get("role") or ""))
    out += [("PLATE", v["plate"], "") for v in record.get("vehicles") or ()]
    out += [("PHONE", ph, "") for ph in record.get("phones") or ()]
    return list(dict.fromkeys(out))
