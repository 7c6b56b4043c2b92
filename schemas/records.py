"""Validating integrators' records (JSON-shaped dicts) into Avro-ready, normalised records.

`validate_record(kind, raw)` applies DOMAIN.md section 3: required fields, defaults,
enums, region codes, identifiers normalised (originals kept), unknown fields refused.
The first problem found raises `RecordError(field, reason)`, with the field's path
(`persons[0].id_number`) and a reason a person can act on.

Times: ISO-8601 strings (a time without an offset is Beijing time, UTC+8, as regional
systems write it) or epoch milliseconds; dates `YYYY-MM-DD`. The result holds epoch
milliseconds and `datetime.date`, as fastavro writes them.

This is the producer's hot path (issue: the full path at 60% of the Avro ceiling), so:
- a parser takes only the value and raises RecordError about the value itself; each
  container (record, object, list) puts its own path segment in front on the way out
  (`RecordError.under`). No path string is built for a value that is fine.
- each kind's field loop is generated once from `_KIND_FIELDS` as straight-line code
  (`_compile_kind`; `python -m schemas.records incident` prints it): a value already in
  canonical form (a string, a known enum symbol) is taken inline, without a call.
"""
from __future__ import annotations

import functools
import sys
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

    def under(self, segment: str) -> "RecordError":
        """The same error seen from the container: `segment` ('location', '[0]') goes in front."""
        field = self.field
        if not field:
            path = segment
        elif field[0] == "[":
            path = segment + field
        else:
            path = f"{segment}.{field}"
        return RecordError(path, self.reason)


# --- value parsers: value -> parsed value, RecordError('', reason) about the value ---------

def _type(value) -> str:
    return "null" if value is None else type(value).__name__.replace("dict", "object").replace("str", "string")


def _string(value):
    if not isinstance(value, str):
        raise RecordError("", f"must be a string, got {_type(value)}")
    return value


def _optional_string(value):
    return None if value is None else _string(value)


def _non_empty(value):
    text = _string(value).strip()
    if not text:
        raise RecordError("", "must not be empty")
    return text


def _int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise RecordError("", f"must be an integer, got {_type(value)}")
    return value


def _float(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("", f"must be a number, got {_type(value)}")
    return float(value)


def _timestamp(value):
    if type(value) is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                raise RecordError("", f"{value!r} is not an ISO-8601 time (e.g. 2026-11-23T09:30:00+08:00)") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=BEIJING)
        since = parsed - _EPOCH  # exact: days, seconds, microseconds
        return (since.days * 86_400 + since.seconds) * 1000 + since.microseconds // 1000
    if isinstance(value, bool):
        raise RecordError("", "must be an ISO-8601 time or epoch milliseconds, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return _timestamp(str(value))
    raise RecordError("", f"must be an ISO-8601 time or epoch milliseconds, got {_type(value)}")


def _optional_timestamp(value):
    return None if value is None else _timestamp(value)


def _date(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError("", f"must be a date YYYY-MM-DD, got {_type(value)}")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise RecordError("", f"{value!r} is not a date YYYY-MM-DD") from None


def _uuid(value):
    try:
        return str(uuid.UUID(_string(value)))
    except ValueError:
        raise RecordError("", f"{value!r} is not a UUID") from None


_known_region = functools.lru_cache(maxsize=16384)(validate_region_code)  # raises (uncached) for a bad code


def _region(value):
    try:
        return _known_region(_string(value).strip())
    except ValueError as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError("", str(exc)) from None


class _Enum:
    """A parser for an enum: canonical symbols pass as they are, others are upper-cased."""

    def __init__(self, *symbols):
        self.symbols = frozenset(symbols)
        self.listed = "|".join(symbols)

    def __call__(self, value):
        if type(value) is str and value in self.symbols:  # the common case: already canonical
            return value
        text = _string(value).strip().upper()
        if text not in self.symbols:
            raise RecordError("", f"{value!r} is not one of {self.listed}")
        return text


def _list(item):
    def parse(value):
        if value is None:
            return []
        if not isinstance(value, list):
            raise RecordError("", f"must be a list, got {_type(value)}")
        try:
            return list(map(item, value))
        except RecordError:
            # which item: found again only now that one failed
            for i, v in enumerate(value):
                try:
                    item(v)
                except RecordError as exc_i:
                    raise exc_i.under(f"[{i}]") from None
            raise  # pragma: no cover - item() is deterministic

    return parse


def _identifier(kind):
    def parse(value):
        if type(value) is not str:
            _string(value)
        try:
            return normalise_identifier(kind, value)
        except InvalidIdentifier as exc:
            raise RecordError("", exc.reason) from None

    return parse


_phone = _identifier("PHONE")
_plate = _identifier("PLATE")

CLASSIFICATIONS = ("PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET")
_GENDER = _Enum("M", "F", "U")
_ID_TYPE = _Enum("RESIDENT_ID", "PASSPORT", "OTHER")
_ROLE = _Enum("SUSPECT", "VICTIM", "WITNESS", "WANTED", "CHECKED", "OTHER")


def _check_fields(raw: dict, allowed: frozenset) -> None:
    if raw.keys() <= allowed:
        return
    for name in raw:
        if name not in allowed:
            raise RecordError(name, f"unknown field {name!r} (allowed: {', '.join(sorted(allowed))})")


def _object(value) -> dict:
    if type(value) is not dict and not isinstance(value, dict):
        raise RecordError("", f"must be an object, got {_type(value)}")
    return value


def _refuse_object(value, allowed: frozenset) -> None:
    """Why `value` is not an object with only `allowed` fields (callers test the good case inline)."""
    _check_fields(_object(value), allowed)


_PERSON_FIELDS = frozenset({"id_type", "id_number", "name", "gender", "birth_date", "role"})
_VEHICLE_FIELDS = frozenset({"plate", "color", "description"})
_LOCATION_FIELDS = frozenset({"region", "address", "lat", "lon"})
_NORMALISED_ID_TYPES = frozenset({"RESIDENT_ID", "PASSPORT"})


def _person_of(default_role: str):
    roles = _ROLE.symbols

    def person(p):
        if type(p) is not dict or not p.keys() <= _PERSON_FIELDS:
            _refuse_object(p, _PERSON_FIELDS)
        get = p.get
        id_type = get("id_type")
        if id_type is None:
            id_type = "OTHER"
        elif type(id_type) is not str or id_type not in _ID_TYPE.symbols:
            id_type = _sub(_ID_TYPE, id_type, "id_type")
        original = get("id_number")
        if original is None:
            raise RecordError("id_number", "is required")
        if type(original) is not str:
            _sub(_string, original, "id_number")
        try:
            if id_type in _NORMALISED_ID_TYPES:
                number = normalise_identifier(id_type, original)
            else:
                number = original.strip().upper()
                if not number:
                    raise InvalidIdentifier("is empty")
        except InvalidIdentifier as exc:
            raise RecordError("id_number", exc.reason) from None
        name, gender, birth_date, role = get("name"), get("gender"), get("birth_date"), get("role")
        return {
            "id_type": id_type,
            "id_number": number,
            "id_number_original": original if original != number else None,
            "name": name if name is None or type(name) is str else _sub(_string, name, "name"),
            "gender": "U" if gender is None else gender if type(gender) is str and gender in _GENDER.symbols else _sub(_GENDER, gender, "gender"),
            "birth_date": None if birth_date is None else _sub(_date, birth_date, "birth_date"),
            "role": default_role if role is None else role if type(role) is str and role in roles else _sub(_ROLE, role, "role"),
        }

    return person


def _sub(parse, value, segment: str):
    """parse(value), an error placed under `segment`."""
    try:
        return parse(value)
    except RecordError as exc:
        raise exc.under(segment) from None


def _vehicle(v):
    if type(v) is not dict or not v.keys() <= _VEHICLE_FIELDS:
        _refuse_object(v, _VEHICLE_FIELDS)
    original = v.get("plate")
    if original is None:
        raise RecordError("plate", "is required")
    plate = _sub(_plate, original, "plate")
    color, description = v.get("color"), v.get("description")
    return {
        "plate": plate,
        "plate_original": original if original != plate else None,
        "color": color if color is None or type(color) is str else _sub(_string, color, "color"),
        "description": (description if description is None or type(description) is str
                        else _sub(_string, description, "description")),
    }


def _location(loc):
    if type(loc) is not dict or not loc.keys() <= _LOCATION_FIELDS:
        _refuse_object(loc, _LOCATION_FIELDS)
    get = loc.get
    region, address, lat, lon = get("region"), get("address"), get("lat"), get("lon")
    if region is None:
        raise RecordError("region", "is required")
    return {
        "region": _region_fast(region, "region"),
        "address": address if address is None or type(address) is str else _sub(_string, address, "address"),
        "lat": None if lat is None else _sub(_float, lat, "lat"),
        "lon": None if lon is None else _sub(_float, lon, "lon"),
    }


def _scope_entry(value):
    text = _string(value).strip()
    regions = load_regions()
    if regions.is_zone(text) or regions.is_known(text):
        return text
    raise RecordError("", f"{text!r} is neither a known region code nor a zone name")


_persons = _list(_person_of("OTHER"))
_vehicles = _list(_vehicle)
_phones = _list(_phone)
_scope = _list(_scope_entry)

ENVELOPE_FIELDS = ("event_id", "source_region", "source_system", "source_ref", "revision",
                   "occurred_at", "reported_at", "classification", "share_scope")

# per kind: field -> (parser, required, default)
_KIND_FIELDS = {
    "alert": {
        "alert_type": (_Enum("ASSIST_REQUEST", "WATCH", "WARNING"), True, None),
        "title": (_non_empty, True, None),
        "description": (_optional_string, False, None),
        "priority": (_Enum("ROUTINE", "URGENT", "CRITICAL"), False, "ROUTINE"),
        "status": (_Enum("OPEN", "CLOSED"), True, None),
        "valid_until": (_optional_timestamp, False, None),
        "persons": (_persons, False, []),
        "vehicles": (_vehicles, False, []),
        "phones": (_phones, False, []),
    },
    "wanted": {
        "action": (_Enum("LISTED", "UPDATED", "ARRESTED", "SURRENDERED", "CANCELLED"), True, None),
        "person": (_person_of("WANTED"), True, None),
        "offence": (_Enum("THEFT", "ROBBERY", "FRAUD", "TELECOM_FRAUD", "DRUGS", "PYRAMID_SELLING",
                          "COUNTERFEIT_CURRENCY", "ASSAULT", "HOMICIDE", "TERRORISM", "TRAFFIC_CRIME",
                          "ENVIRONMENTAL", "OTHER"), False, "OTHER"),
        "warrant_ref": (_optional_string, False, None),
        "danger_level": (_Enum("LOW", "MEDIUM", "HIGH"), False, "MEDIUM"),
        "phones": (_phones, False, []),
        "vehicles": (_vehicles, False, []),
    },
    "incident": {
        "incident_type": (_Enum("CHECKPOINT_CHECK", "HOTEL_CHECKIN", "RESIDENCE_REGISTRATION", "TRAFFIC_STOP",
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
_CLASSIFICATION = _Enum(*CLASSIFICATIONS)


def _compile_kind(kind: str) -> tuple[str, object]:
    """Source and function `fill(get, out)` that parses `kind`'s own fields into `out`.

    Straight-line code per field: a missing value is refused or defaulted, a canonical one
    (a string for a string field, a known symbol for an enum, epoch ms for a time) is
    taken as it is, anything else goes through the field's parser.
    """
    env: dict = {"RecordError": RecordError}
    lines = ["def fill(get, out):"]
    for i, (name, (parse, required, default)) in enumerate(_KIND_FIELDS[kind].items()):
        env[f"parse_{i}"] = parse
        lines.append(f"    v = get({name!r})")
        lines.append("    if v is None:")
        if required:
            lines.append(f"        raise RecordError({name!r}, 'is required')")
        else:
            lines.append(f"        out[{name!r}] = {'[]' if default == [] else repr(default)}")
        if isinstance(parse, _Enum):
            env[f"symbols_{i}"] = parse.symbols
            lines.append(f"    elif type(v) is str and v in symbols_{i}:")
            lines.append(f"        out[{name!r}] = v")
        elif parse is _optional_string:
            lines.append("    elif type(v) is str:")
            lines.append(f"        out[{name!r}] = v")
        elif parse is _optional_timestamp:
            lines.append("    elif type(v) is int:")
            lines.append(f"        out[{name!r}] = v")
        lines.append("    else:")
        lines.append("        try:")
        lines.append(f"            out[{name!r}] = parse_{i}(v)")
        lines.append("        except RecordError as exc:")
        lines.append(f"            raise exc.under({name!r}) from None")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<schemas.records: {kind} fields>", "exec"), env)
    return source, env["fill"]


_FILL = {kind: _compile_kind(kind)[1] for kind in _KIND_FIELDS}


def validate_record(kind: str, raw: dict, *, source_region: str | None = None, source_system: str | None = None,
                    now_ms: int | None = None) -> dict:
    """The Avro-ready record for `kind`, or RecordError for the first problem found."""
    fill = _FILL.get(kind)
    if fill is None:
        raise RecordError("", f"unknown kind {kind!r} (alert, wanted or incident)")
    if type(raw) is not dict and not isinstance(raw, dict):
        raise RecordError("", f"a record must be an object, got {_type(raw)}")
    if not raw.keys() <= _ALLOWED[kind]:
        _check_fields(raw, _ALLOWED[kind])
    get = raw.get
    region, system, ref = get("source_region"), get("source_system"), get("source_ref")
    if region is None or source_region is not None:
        region = _from_publisher(region, "source_region", source_region)
    region = _region_fast(region, "source_region")
    if system is None or source_system is not None:
        system = _from_publisher(system, "source_system", source_system)
    system = _text_fast(system, "source_system")
    if ref is None:
        raise RecordError("source_ref", "is required")
    ref = _text_fast(ref, "source_ref")
    revision = get("revision")
    if revision is None:
        revision = 1
    elif type(revision) is not int:
        revision = _sub(_int, revision, "revision")
    if revision < 1:
        raise RecordError("revision", f"must be 1 or more, got {revision}")
    event_id, occurred, reported = get("event_id"), get("occurred_at"), get("reported_at")
    if occurred is None:
        raise RecordError("occurred_at", "is required")
    classification, scope = get("classification"), get("share_scope")
    out = {
        "source_region": region,
        "source_system": system,
        "source_ref": ref,
        "revision": revision,
        "event_id": (derive_event_id(region, system, ref, revision) if event_id is None
                     else _sub(_uuid, event_id, "event_id")),
        "occurred_at": occurred if type(occurred) is int else _sub(_timestamp, occurred, "occurred_at"),
        "reported_at": (now_ms if now_ms is not None else int(time.time() * 1000)) if reported is None
        else reported if type(reported) is int else _sub(_timestamp, reported, "reported_at"),
        "classification": ("INTERNAL" if classification is None else classification
                           if type(classification) is str and classification in _CLASSIFICATION.symbols
                           else _sub(_CLASSIFICATION, classification, "classification")),
        "share_scope": _sub(_scope, scope, "share_scope") if scope else [],
    }
    fill(get, out)
    return out


def _region_fast(value, segment: str) -> str:
    try:
        return _known_region(value)  # a canonical code: one cache lookup
    except (ValueError, TypeError):
        return _sub(_region, value, segment)


def _text_fast(value, segment: str) -> str:
    if type(value) is str:
        text = value.strip()
        if text:
            return text
    return _sub(_non_empty, value, segment)


def _from_publisher(value, name: str, given: str | None):
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


if __name__ == "__main__":  # python -m schemas.records KIND: the generated field code
    for name in sys.argv[1:] or list(_KIND_FIELDS):
        print(_compile_kind(name)[0])
