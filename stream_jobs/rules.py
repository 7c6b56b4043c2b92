"""The decisions of the stream jobs, as pure functions of plain data.

Nothing here touches Kafka or faust: the stages in `stream_jobs.stages` call these, and the
unit tests call them directly. Records are Avro-decoded dicts with timestamps as epoch
milliseconds (the jobs decode without logical-type conversion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.records import subjects_of

DAY_MS = 86_400_000

CLASSIFICATION_ORDER = ("PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET")
_CLASSIFICATION_RANK = {c: i for i, c in enumerate(CLASSIFICATION_ORDER)}

CLOSING_WANTED_ACTIONS = frozenset({"ARRESTED", "SURRENDERED", "CANCELLED"})
# Incident types that are cases (串并案 candidates). Identity checks, hotel check-ins,
# registrations and traffic stops record who was *seen*, not who offended: linking every
# traveller who passed two checkpoints would drown analysts.
CASE_INCIDENT_TYPES = frozenset({"THEFT", "FRAUD", "ROBBERY", "DRUGS", "ASSAULT", "OTHER"})

WANTED_PERSON, WATCH_MATCH, CASE_LINK = "WANTED_PERSON", "WATCH_MATCH", "CASE_LINK"


# --- dedupe -------------------------------------------------------------------------------

def record_key_of(record: dict) -> str:
    """The record key: 'REGION/SYSTEM/REF' (all revisions of one record share it)."""
    return f"{record['source_region']}/{record['source_system']}/{record['source_ref']}"


NEW, DUPLICATE, REPLAY = "new", "duplicate", "replay"


@dataclass
class SeenRevisions:
    """What the dedupe stage remembers of one record key.

    revision -> (event_id, first seen ms, input offset). The offset tells a duplicate (the
    same event sent again, at another offset) from a replay (the same message read again
    after a crash, before its offset was committed), which must not count as a duplicate.
    """

    revisions: dict[int, tuple]

    def classify(self, event_id: str, revision: int, offset: int, now_ms: int, window_ms: int) -> str:
        """NEW, DUPLICATE (seen within the window by event id or revision) or REPLAY."""
        horizon = now_ms - window_ms
        for rev, (eid, at, *rest) in self.revisions.items():
            if at < horizon or (rev != revision and eid != event_id):
                continue
            return REPLAY if rest and rest[0] == offset else DUPLICATE
        return NEW

    def is_duplicate(self, event_id: str, revision: int, now_ms: int, window_ms: int) -> bool:
        return self.classify(event_id, revision, -1, now_ms, window_ms) != NEW

    def remember(self, event_id: str, revision: int, now_ms: int, window_ms: int, offset: int = -1) -> None:
        horizon = now_ms - window_ms
        self.revisions = {r: v for r, v in self.revisions.items() if v[1] >= horizon}
        self.revisions[revision] = (event_id, now_ms, offset)


# --- record lifecycle ---------------------------------------------------------------------

def is_open(kind: str, record: dict, now_ms: int) -> bool:
    """Does this revision of a wanted record or watch alert keep the record open?"""
    if kind == "wanted":
        return record["action"] not in CLOSING_WANTED_ACTIONS
    if kind == "alert":
        if record["status"] != "OPEN":
            return False
        valid_until = record.get("valid_until")
        return valid_until is None or valid_until > now_ms
    return False


def is_watchable(kind: str, record: dict) -> bool:
    """Records that are matched against events: wanted records and WATCH alerts."""
    return kind == "wanted" or (kind == "alert" and record.get("alert_type") == "WATCH")


@dataclass(frozen=True)
class RecordState:
    """Latest known state of a wanted record or watch alert."""

    revision: int
    open: bool
    identifiers: tuple[str, ...]  # what the index holds for it ('KIND:value')
    valid_until: int | None = None


@dataclass(frozen=True)
class Transition:
    state: RecordState
    index_add: tuple[str, ...]     # identifiers to (re)index with the new revision
    index_remove: tuple[str, ...]  # identifiers to drop the record from


def apply_revision(previous: RecordState | None, revision: int, open_now: bool, identifiers: tuple[str, ...],
                   valid_until: int | None = None) -> Transition | None:
    """Highest revision wins; a late older revision changes nothing (never reopens a closed record).

    Returns None when the revision is not newer than what is known.
    """
    if previous is not None and revision <= previous.revision:
        return None
    new_ids = identifiers if open_now else ()
    old_ids = previous.identifiers if previous is not None else ()
    state = RecordState(revision=revision, open=open_now, identifiers=new_ids, valid_until=valid_until)
    return Transition(state=state, index_add=new_ids, index_remove=tuple(i for i in old_ids if i not in new_ids))


# --- identifiers --------------------------------------------------------------------------

def identifier(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def split_identifier(ident: str) -> tuple[str, str]:
    kind, _, value = ident.partition(":")
    return kind, value


def identifiers_of(kind: str, record: dict) -> tuple[str, ...]:
    """Every normalised identifier an event or record carries ('KIND:value'), once each, in order.

    The identifiers of `subjects_of` without its (kind, value, role) triples: called for every event
    (twice for a listing), and the triples and their two de-duplications cost more than the rest."""
    out: dict[str, None] = {}
    for p in ((record["person"],) if kind == "wanted" else record.get("persons") or ()):
        id_type = p.get("id_type")
        if id_type == "RESIDENT_ID" or id_type == "PASSPORT":
            out[id_type + ":" + p["id_number"]] = None
    for v in record.get("vehicles") or ():
        out["PLATE:" + v["plate"]] = None
    for phone in record.get("phones") or ():
        out["PHONE:" + phone] = None
    return tuple(out)


def case_link_identifiers(record: dict) -> tuple[str, ...]:
    """Identifiers that link cases: suspects' documents, plates and phones of case incidents."""
    if record.get("incident_type") not in CASE_INCIDENT_TYPES:
        return ()
    return tuple(dict.fromkeys(identifier(k, v) for k, v, role in subjects_of("incident", record)
                               if role == "SUSPECT" or k in ("PLATE", "PHONE")))


# --- matching -----------------------------------------------------------------------------

def is_cross_region(record_region: str, event_region: str, is_within) -> bool:
    """A record hits an event of another region: not its own region, nor inside it.

    `is_within(code, other)` is true when code == other or other is an ancestor of code.
    """
    return not is_within(event_region, record_region)


def hit_type_for(record_kind: str) -> str:
    return WANTED_PERSON if record_kind == "wanted" else WATCH_MATCH


def is_case_link(earlier_region: str, earlier_occurred_ms: int, region: str, occurred_ms: int, window_ms: int) -> bool:
    """Two incidents of different regions within the window (either order in time)."""
    return earlier_region != region and abs(occurred_ms - earlier_occurred_ms) <= window_ms


# --- routing ------------------------------------------------------------------------------

def higher_classification(a: str, b: str) -> str:
    return a if _CLASSIFICATION_RANK.get(a, 1) >= _CLASSIFICATION_RANK.get(b, 1) else b


def notify_regions(owner_region: str, hit_region: str, record_scope, event_scope) -> list[str]:
    """Owner, hit region, then the regions and zones of both records' share_scope, once each."""
    return list(dict.fromkeys([owner_region, hit_region, *(record_scope or ()), *(event_scope or ())]))


# --- border duplicates --------------------------------------------------------------------

BORDER_DUPLICATE = "BORDER_DUPLICATE"
# Reports of something that happened (警情, 案件) can be one incident reported twice. Identity
# checks, hotel check-ins, registrations and traffic stops record who was *seen*: two checks
# of one traveller on either side of a border minutes apart are two real checks.
BORDER_DUPLICATE_TYPES = CASE_INCIDENT_TYPES
BORDER_DUPLICATE_WINDOW_MS = 30 * 60_000
BORDER_DUPLICATE_KM = 5.0
EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km on a sphere of the Earth's mean radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def place_of(record: dict) -> tuple[float, float] | None:
    """An incident's (lat, lon), or None when it has none: missing, not a number, out of range,
    or (0, 0), which is what a system without coordinates sends when it sends zeros."""
    loc = record.get("location") or {}
    lat, lon = loc.get("lat"), loc.get("lon")
    if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if lat == 0 and lon == 0:
        return None
    return float(lat), float(lon)


def border_duplicate_identifiers(record: dict) -> tuple[str, ...]:
    """Identifiers under which an incident report is compared with other agencies' reports:
    every subject identifier (any role: a victim's phone names one incident as well as a
    suspect's) of a case-type incident that has a place; none for identity checks and for
    reports without coordinates ("a few km apart" cannot be judged without them)."""
    if record.get("incident_type") not in BORDER_DUPLICATE_TYPES or place_of(record) is None:
        return ()
    return identifiers_of("incident", record)


def is_border_duplicate(region_a: str, occurred_a: int, place_a, region_b: str, occurred_b: int, place_b, *,
                        is_within, window_ms: int = BORDER_DUPLICATE_WINDOW_MS,
                        max_km: float = BORDER_DUPLICATE_KM) -> bool:
    """Two reports sharing an identifier may be one incident reported twice across a border:
    their publishing regions differ and neither is inside the other (a county and its own
    province are one chain of command, not two agencies at a border), they happened at most
    `window_ms` apart and at most `max_km` apart (both ends included). No place, no flag."""
    if place_a is None or place_b is None:
        return False
    if is_within(region_a, region_b) or is_within(region_b, region_a):
        return False
    if abs(occurred_a - occurred_b) > window_ms:
        return False
    return haversine_km(place_a[0], place_a[1], place_b[0], place_b[1]) <= max_km


def border_duplicate_on(a: dict, b: dict, *, is_within, window_ms: int = BORDER_DUPLICATE_WINDOW_MS,
                        max_km: float = BORDER_DUPLICATE_KM) -> tuple[str, ...]:
    """The identifiers two incident records share if they are a possible border duplicate, else ()."""
    theirs = set(border_duplicate_identifiers(b))
    shared = tuple(i for i in border_duplicate_identifiers(a) if i in theirs)
    if shared and is_border_duplicate(a["source_region"], a["occurred_at"], place_of(a),
                                      b["source_region"], b["occurred_at"], place_of(b),
                                      is_within=is_within, window_ms=window_ms, max_km=max_km):
        return shared
    return ()


def border_duplicate_notify(first_source: str, second_source: str, places=(), first_scope=(), second_scope=()) -> list[str]:
    """Both reporting agencies' regions first (the two who must know), then the regions the
    incidents are located in and both share scopes, once each."""
    return notify_regions(first_source, second_source, [*places, *(first_scope or ())], second_scope)


# --- expiry: what state is past its window ------------------------------------------------
# Each stage sweeps its table a slice at a time (stream_jobs.state.Sweeper) and asks these
# whether an entry is still needed, by a clock on the entries' own time base: the batch's
# newest publish time for the index (its entries carry event times), the batch's newest
# detection time for hit ids, the worker's clock for dedupe entries (stamped with it when
# first seen). An entry is forgotten only when nothing the stage decides could still read it.

CLOSED_RECORD_RETENTION_MS = 365 * DAY_MS


def dedupe_entry_expired(entry: dict, clock_ms: int, window_ms: int,
                         closed_retention_ms: int = CLOSED_RECORD_RETENTION_MS) -> bool:
    """May the dedupe entry of a record key go?

    Every revision it saw is past the dedupe window (`SeenRevisions.classify` ignores those),
    and the record is not an open wanted record or watch: their state is what turns a later
    closing revision into index removals, so it stays while they are open. A closed record
    (or a watch past its valid_until) is remembered `closed_retention_ms` longer, so that a
    late older revision does not reopen it."""
    times = [v[1] for v in (entry.get("seen") or {}).values()]
    newest = max(times) if times else None
    if newest is not None and newest >= clock_ms - window_ms:
        return False
    state = entry.get("state")
    if not state:
        return True
    if state.get("open") and state.get("until") is None:
        return False
    ends = [newest] if newest is not None else []
    if state.get("open"):
        ends.append(state["until"])  # a watch past its valid_until: closed in effect since then
    return max(ends, default=0) < clock_ms - closed_retention_ms


def prune_index_entry(entry: dict, clock_ms: int, *, closed_keep_ms: int, case_keep_ms: int,
                      reports_keep_ms: int) -> bool:
    """Drop from an identifier's index entry, in place, what is past its window; True if anything went.

    - records closed (or watches past valid_until) more than `closed_keep_ms` ago (as
      `MatchStage._purge_closed` does on a removal); open records stay;
    - case incidents (`recent`) that happened more than `case_keep_ms` ago;
    - border-duplicate reports that happened more than `reports_keep_ms` ago.
    The entry is empty (to be deleted) when all three are."""
    changed = False
    records = entry.get("records") or {}
    keep = {}
    for key, rec in records.items():
        end = rec.get("closed") if rec.get("closed") is not None else rec.get("until")
        if end is None or end >= clock_ms - closed_keep_ms:
            keep[key] = rec
    if len(keep) != len(records):
        entry["records"], changed = keep, True
    for name, keep_ms in (("recent", case_keep_ms), ("reports", reports_keep_ms)):
        items = entry.get(name)
        if items:
            kept = [r for r in items if r["occurred"] >= clock_ms - keep_ms]
            if len(kept) != len(items):
                entry[name], changed = kept, True
    return changed


def index_entry_is_empty(entry: dict) -> bool:
    return not (entry.get("records") or entry.get("recent") or entry.get("reports"))
