"""The three stages chained over in-memory state: hits appear exactly once."""
from __future__ import annotations

import json
import zlib

import pytest

from schemas.normalise import normalise_identifier
from schemas.regions import load_regions
from stream_jobs.app import provinces_of
from stream_jobs.stages import (
    CANDIDATE_TOPIC, HIT_TOPIC, MATCH_TOPIC, DedupeStage, HitStage, Incoming, MatchStage, unique_topic,
)
from stream_jobs.state import MemoryState

P = 6
DAY = 86_400_000
T0 = 1_790_000_000_000
REGIONS = load_regions()
ID18 = "11010519491231002X"


def envelope(region, ref, rev=1, *, system="sys", t=T0, event_id=None, scope=(), cls="INTERNAL"):
    return {"event_id": event_id or f"{region}-{system}-{ref}-{rev}", "source_region": region, "source_system": system,
            "source_ref": ref, "revision": rev, "occurred_at": t, "reported_at": t, "classification": cls,
            "share_scope": list(scope)}


def person(id_number, role="CHECKED"):
    return {"id_type": "RESIDENT_ID", "id_number": id_number, "id_number_original": None, "name": "张三",
            "gender": "M", "birth_date": None, "role": role}


def wanted(region, ref, action="LISTED", rev=1, id_number=ID18, phones=(), **kw):
    return {**envelope(region, ref, rev, **kw), "action": action, "person": person(id_number, "WANTED"),
            "offence": "THEFT", "warrant_ref": None, "danger_level": "MEDIUM", "phones": list(phones), "vehicles": []}


def incident(region, ref, itype="CHECKPOINT_CHECK", persons=(), plates=(), phones=(), rev=1, **kw):
    return {**envelope(region, ref, rev, **kw), "incident_type": itype, "case_no": None, "title": None,
            "description": None, "location": {"region": region, "address": None, "lat": None, "lon": None},
            "persons": list(persons), "vehicles": [{"plate": p, "plate_original": None, "color": None, "description": None} for p in plates],
            "phones": list(phones)}


def watch(region, ref, plates=(), status="OPEN", rev=1, valid_until=None, **kw):
    return {**envelope(region, ref, rev, **kw), "alert_type": "WATCH", "title": "布控", "description": None,
            "priority": "URGENT", "status": status, "valid_until": valid_until, "persons": [],
            "vehicles": [{"plate": p, "plate_original": None, "color": None, "description": None} for p in plates], "phones": []}


class Bus:
    """The three stages wired through in-memory topics, as the faust app wires them through Kafka."""

    def __init__(self):
        self.records, self.index, self.seen = MemoryState(), MemoryState(), MemoryState()
        self.dedupe = DedupeStage(decode=lambda b: json.loads(b), normalise=normalise_identifier, state=self.records,
                                  partitions=P, window_ms=7 * DAY)
        self.match = MatchStage(state=self.index, partitions=P, is_within=REGIONS.is_within, case_window_ms=30 * DAY,
                                decode=lambda b: json.loads(b))
        self.hits_stage = HitStage(state=self.seen, encode_hit=lambda h: json.dumps(h).encode(),
                                   provinces_of=lambda n: provinces_of(n, REGIONS))
        self.offset = 0
        self.unique, self.hits, self.dead, self.duplicates = [], [], [], []

    def publish(self, kind, record, *, now=T0, raw=None):
        self._run(self.dedupe, self.records, [self._message(kind, record, raw)], now)

    def publish_batch(self, items, *, now=T0):
        """Several records read by the dedupe stage in one batch, in this order."""
        self._run(self.dedupe, self.records, [self._message(kind, record) for kind, record in items], now)

    def _message(self, kind, record, raw=None):
        self.offset += 1
        value = raw if raw is not None else json.dumps(record, ensure_ascii=False).encode()
        key = f"{record['source_region']}/{record['source_system']}/{record['source_ref']}".encode() if record else b"k"
        return Incoming(f"intel.{kind}", zlib.crc32(key) % P, self.offset, key, value)  # same key, same partition

    def _run(self, stage, state, batch, now):
        result = stage.process(batch, now)
        state.commit()
        self.dead += result.dead_letters
        forward = {}
        for out in result.outputs:
            if out.topic in (MATCH_TOPIC, CANDIDATE_TOPIC):
                forward.setdefault(out.topic, []).append(Incoming(out.topic, out.partition, 0, out.key, out.value))
            elif out.topic == HIT_TOPIC:
                self.hits.append((out.key.decode(), json.loads(out.value)))
            elif out.topic == "intel.duplicates":
                self.duplicates.append(json.loads(out.value))
            else:
                self.unique.append(out)
        if MATCH_TOPIC in forward:
            self._run(self.match, self.index, forward[MATCH_TOPIC], now)
        if CANDIDATE_TOPIC in forward:
            self._run(self.hits_stage, self.seen, forward[CANDIDATE_TOPIC], now)
        return result

    def distinct_hits(self):
        return {h["hit_id"]: h for _, h in self.hits}


def test_wanted_person_checked_in_another_region_gives_one_hit_to_both():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1"))
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)]))
    hits = bus.distinct_hits()
    assert len(hits) == 1
    hit = next(iter(hits.values()))
    assert hit["hit_type"] == "WANTED_PERSON"
    assert hit["owner_region"] == "130822" and hit["hit_region"] == "120119"
    assert hit["matched_on"] == {"kind": "RESIDENT_ID", "value": ID18}
    assert hit["notify_regions"] == ["130822", "120119"]
    assert json.loads(hit["record"])["source_ref"] == "W1"
    assert json.loads(hit["trigger"])["occurred_at"].startswith("2026-")
    # one copy per notified province: Hebei and Tianjin
    assert sorted(k for k, _ in bus.hits) == ["120000", "130000"]


def test_duplicates_are_dropped_and_counted_and_still_one_hit():
    bus = Bus()
    for _ in range(3):
        bus.publish("wanted", wanted("130822", "W1"))
    for _ in range(2):
        bus.publish("incident", incident("120119", "C1", persons=[person(ID18)]))
    assert len(bus.unique) == 2
    assert len(bus.duplicates) == 3 and {d["source_system"] for d in bus.duplicates} == {"sys"}
    assert len(bus.distinct_hits()) == 1 and len(bus.hits) == 2


def test_same_event_id_with_another_revision_number_is_a_duplicate():
    bus = Bus()
    bus.publish("incident", incident("120119", "C1", event_id="00000000-0000-0000-0000-000000000001"))
    bus.publish("incident", incident("120119", "C1", rev=2, event_id="00000000-0000-0000-0000-000000000001"))
    assert len(bus.unique) == 1


def test_no_hit_after_arrest_and_late_update_does_not_reopen():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=1))
    bus.publish("wanted", wanted("130822", "W1", "CANCELLED", rev=3))
    bus.publish("wanted", wanted("130822", "W1", "UPDATED", rev=2))  # late, older
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)]))
    assert bus.distinct_hits() == {}
    assert len(bus.unique) == 4  # history keeps every distinct revision


def test_arrested_record_gives_no_hit():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=1))
    bus.publish("wanted", wanted("130822", "W1", "ARRESTED", rev=2))
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)]))
    assert bus.distinct_hits() == {}


def test_fifteen_digit_id_on_the_record_matches_the_eighteen_digit_check():
    bus = Bus()
    id15 = "130822850101123"
    id18 = normalise_identifier("RESIDENT_ID", id15)
    bus.publish("wanted", wanted("130822", "W1", id_number=id15))
    bus.publish("incident", incident("120119", "C1", persons=[person(id18)]))
    assert len(bus.distinct_hits()) == 1


def test_watch_on_plate_matched_by_a_differently_written_plate():
    bus = Bus()
    bus.publish("alert", watch("110000", "A1", plates=["京A12345"]))
    bus.publish("incident", incident("131000", "T1", itype="TRAFFIC_STOP", plates=["京a 12345"]))
    hits = list(bus.distinct_hits().values())
    assert len(hits) == 1 and hits[0]["hit_type"] == "WATCH_MATCH"
    assert hits[0]["matched_on"] == {"kind": "PLATE", "value": "京A12345"}


def test_expired_or_closed_watch_gives_no_hit():
    bus = Bus()
    bus.publish("alert", watch("110000", "A1", plates=["京A12345"], valid_until=T0 - 1))
    bus.publish("alert", watch("110000", "A2", plates=["京B12345"], status="CLOSED"))
    bus.publish("incident", incident("131000", "T1", itype="TRAFFIC_STOP", plates=["京A12345", "京B12345"]))
    assert bus.distinct_hits() == {}


def test_check_in_the_owners_own_region_gives_no_hit():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1"))
    bus.publish("incident", incident("130822", "C1", persons=[person(ID18)]))
    assert bus.distinct_hits() == {}


def test_case_link_between_two_regions_once():
    bus = Bus()
    bus.publish("incident", incident("120119", "C1", itype="THEFT", phones=["13800138000"]))
    bus.publish("incident", incident("130822", "C2", itype="FRAUD", phones=["+86 138-0013-8000"], t=T0 + DAY))
    bus.publish("incident", incident("130822", "C2", itype="FRAUD", phones=["13800138000"], t=T0 + DAY))  # resend
    hits = list(bus.distinct_hits().values())
    assert len(hits) == 1 and hits[0]["hit_type"] == "CASE_LINK"
    assert hits[0]["owner_region"] == "120119" and hits[0]["hit_region"] == "130822"


def test_case_link_needs_the_window_and_two_regions():
    bus = Bus()
    bus.publish("incident", incident("120119", "C1", itype="THEFT", phones=["13800138000"]))
    bus.publish("incident", incident("120119", "C2", itype="THEFT", phones=["13800138000"], t=T0 + DAY))
    bus.publish("incident", incident("130822", "C3", itype="THEFT", phones=["13800138000"], t=T0 + 40 * DAY))
    assert bus.distinct_hits() == {}


def test_replaying_the_match_requests_makes_no_second_hit():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1"))
    result = bus.dedupe.process([Incoming("intel.incident", 0, 99, b"k",
                                          json.dumps(incident("120119", "C9", itype="THEFT", persons=[person(ID18, "SUSPECT")])).encode())], T0)
    bus.records.commit()
    requests = [Incoming(MATCH_TOPIC, o.partition, 0, o.key, o.value) for o in result.outputs if o.topic == MATCH_TOPIC]
    bus._run(bus.match, bus.index, requests, T0)
    bus._run(bus.match, bus.index, requests, T0)  # redelivered after a crash
    assert len(bus.distinct_hits()) == 1 and len(bus.hits) == 2  # two provinces, one hit


def test_bad_bytes_and_bad_identifiers_go_to_the_dead_letters():
    bus = Bus()
    bus.publish("incident", None, raw=b"\x00garbage")
    bad = incident("120119", "C1", persons=[person("110105194912310021")])
    bus.publish("incident", bad)
    assert [d.stage for d in bus.dead] == ["DECODE", "VALIDATE"]
    assert bus.dead[1].field == "persons[0].id_number" and "check digit" in bus.dead[1].reason
    assert bus.unique == []


def test_state_is_partitioned_by_the_message_partition():
    bus = Bus()
    bus.publish("incident", incident("120119", "C1"))
    assert bus.records.entries() == 1


def test_sighting_before_the_arrest_still_hits_when_the_arrest_is_read_first():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=1, t=T0))
    bus.publish("wanted", wanted("130822", "W1", "ARRESTED", rev=2, t=T0 + 10_000))
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)], t=T0 + 5_000))
    assert len(bus.distinct_hits()) == 1


def test_sighting_before_the_listing_happened_is_not_a_hit():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=1, t=T0))
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)], t=T0 - 60_000))
    assert bus.distinct_hits() == {}


def test_relisting_after_arrest_hits_again_for_later_sightings():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=1, t=T0))
    bus.publish("wanted", wanted("130822", "W1", "ARRESTED", rev=2, t=T0 + 1000))
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=3, t=T0 + 2000))
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)], t=T0 + 3000))
    assert len(bus.distinct_hits()) == 1


def test_case_link_roles_follow_event_time_not_arrival_order():
    def run(order):
        bus = Bus()
        cases = {"early": incident("120119", "C1", itype="THEFT", phones=["13800138000"], t=T0),
                 "late": incident("130822", "C2", itype="THEFT", phones=["13800138000"], t=T0 + 1000)}
        for name in order:
            bus.publish("incident", cases[name])
        (hit,) = bus.distinct_hits().values()
        return hit
    a, b = run(["early", "late"]), run(["late", "early"])
    assert a["hit_id"] == b["hit_id"] and a["owner_region"] == "120119" and a["hit_region"] == "130822"


def test_a_replayed_message_is_not_a_duplicate_and_its_outputs_are_sent_again():
    bus = Bus()
    record = wanted("130822", "W1")
    msg = Incoming("intel.wanted", 2, 41, b"130822/sys/W1", json.dumps(record).encode())
    first = bus.dedupe.process([msg], T0)
    bus.records.commit()
    again = bus.dedupe.process([msg], T0)  # the same offset read again after a crash
    assert again.counts[("replay", "wanted")] == 1 and not any(k[0] == "duplicate" for k in again.counts)
    assert [o.topic for o in again.outputs] == [o.topic for o in first.outputs]
    resend = bus.dedupe.process([Incoming("intel.wanted", 2, 42, msg.key, msg.value)], T0)  # sent again
    assert resend.counts[("duplicate", "wanted", "sys")] == 1
    assert [o.topic for o in resend.outputs] == ["intel.duplicates"]


def test_an_unexpected_error_on_one_operation_is_a_dead_letter_and_the_rest_goes_on():
    bus = Bus()
    bus.index.put(0, b"PHONE:13800138000", b'{"records": {"x": {"broken": true}}, "recent": []}')  # a corrupt entry
    bus.index.commit()
    bus.publish("wanted", wanted("130822", "W1"))
    bad = Incoming(MATCH_TOPIC, 0, 0, None, json.dumps({"events": {"e": {"event_id": "e"}}, "ops": [
        {"op": "lookup", "id": "PHONE:13800138000", "event": "e", "case": False}]}).encode())
    result = bus.match.process([bad], T0)
    assert [d.stage for d in result.dead_letters] == ["MATCH"] and "internal error" in result.dead_letters[0].reason
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)]))
    assert len(bus.distinct_hits()) == 1


def test_a_sighting_read_before_its_listing_still_hits():
    bus = Bus()
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)], t=T0 + 5000))  # read first
    bus.publish("wanted", wanted("130822", "W1", t=T0))                                      # listed earlier
    assert len(bus.distinct_hits()) == 1


def test_the_lookback_forgets_after_its_time():
    now = [0.0]
    bus = Bus()
    bus.match.lookback.clock = lambda: now[0]
    bus.publish("incident", incident("120119", "C1", persons=[person(ID18)], t=T0 + 5000))
    now[0] = bus.match.lookback.seconds + 1
    bus.publish("wanted", wanted("130822", "W1", t=T0))
    assert bus.distinct_hits() == {}


def test_a_listing_batched_behind_many_sightings_of_its_person_hits_every_one():
    # One dedupe batch (the input topics are read side by side): nine checks of the person
    # come before the listing in it. The listing is indexed before the batch's lookups run
    # (with the look-back of four lookups an identifier it once had, five hits were lost).
    bus = Bus()
    checks = [("incident", incident("120119", f"C{i}", persons=[person(ID18)], t=T0 + 1000 * (i + 1))) for i in range(9)]
    bus.publish_batch(checks + [("wanted", wanted("130822", "W1", t=T0))])
    assert len(bus.distinct_hits()) == 9


def test_a_listing_read_after_twenty_sightings_of_its_person_in_earlier_batches_hits_every_one():
    # The integration run that found it: 20 checks of the person read in batches before the
    # listing's; a look-back of four lookups an identifier gave 15 hits (the newest four
    # of the nine read before the listing, and the eleven read after).
    bus = Bus()
    for start in (0, 5, 10, 15):
        bus.publish_batch([("incident", incident("120119", f"C{i}", persons=[person(ID18)], t=T0 + 1000 * (i + 1)))
                           for i in range(start, start + 5)])
    assert bus.distinct_hits() == {}
    bus.publish("wanted", wanted("130822", "W1", t=T0))
    assert sorted(json.loads(h["trigger"])["source_ref"] for h in bus.distinct_hits().values()) == \
        sorted(f"C{i}" for i in range(20))


def test_a_check_batched_before_the_arrest_that_came_after_it_still_hits_and_one_after_does_not():
    bus = Bus()
    bus.publish("wanted", wanted("130822", "W1", "LISTED", rev=1, t=T0))
    bus.publish_batch([("incident", incident("120119", "C1", persons=[person(ID18)], t=T0 + 1000)),
                       ("incident", incident("120119", "C2", persons=[person(ID18)], t=T0 + 3000)),
                       ("wanted", wanted("130822", "W1", "ARRESTED", rev=2, t=T0 + 2000))])
    assert [json.loads(h["trigger"])["source_ref"] for h in bus.distinct_hits().values()] == ["C1"]


def test_a_record_whose_proof_fails_is_dead_lettered_before_dedupe_and_matches_nothing():
    """The dedupe stage asks its verifier first: a refused record reaches no state, no index, no hit."""
    refused_refs = {"FORGED"}

    def verify(value, headers, source_region):
        ref = json.loads(value)["source_ref"]
        return ("REGION_NOT_ALLOWED", f"{ref}: key may not publish for {source_region}") if ref in refused_refs else None

    bus = Bus()
    bus.dedupe.verify = verify
    bus.publish("wanted", wanted("130822", "W1"))
    bus.publish("incident", incident("110105", "FORGED", persons=[person(ID18)]))
    assert [(d.stage, d.reason, d.source_region) for d in bus.dead] == [
        ("VERIFY", "REGION_NOT_ALLOWED: FORGED: key may not publish for 110105", "110105")]
    assert bus.distinct_hits() == {} and [json.loads(u.value)["source_ref"] for u in bus.unique] == ["W1"]
    assert bus.records.get(zlib.crc32(b"110105/sys/FORGED") % P, b"110105/sys/FORGED") is None  # not remembered
    bus.publish("incident", incident("120119", "GOOD", persons=[person(ID18)]))  # control: a verified sighting hits
    assert len(bus.distinct_hits()) == 1


# --- border duplicates ----------------------------------------------------------------------

MIN = 60_000
BORDER = (40.230, 117.450)  # on the line between Jizhou (Tianjin) and Xinglong (Hebei)
KM = 1 / 111.195            # degrees of latitude in a km


def report(region, ref, *, minutes=0, km_north=0.0, place=True, located_in=None, itype="THEFT",
           phones=("13800138000",), persons=(), **kw):
    """A case report of an agency of `region`, `minutes` and `km_north` from the first."""
    r = incident(region, ref, itype=itype, phones=phones, persons=persons, t=T0 + int(minutes * MIN), **kw)
    r["location"]["region"] = located_in or region
    if place:
        r["location"]["lat"], r["location"]["lon"] = BORDER[0] + km_north * KM, BORDER[1]
    return r


def of_type(bus, hit_type):
    return [h for h in bus.distinct_hits().values() if h["hit_type"] == hit_type]


def test_one_incident_reported_by_jizhou_and_xinglong_is_flagged_to_both_and_neither_is_dropped():
    bus = Bus()
    bus.publish("incident", report("120119", "JZ1"))
    bus.publish("incident", report("130822", "XL1", minutes=8, km_north=2))
    (dup,) = of_type(bus, "BORDER_DUPLICATE")
    assert (dup["owner_region"], dup["hit_region"]) == ("120119", "130822")  # the two reporting agencies
    assert dup["record_key"] == "120119/sys/JZ1" and json.loads(dup["trigger"])["source_ref"] == "XL1"
    assert dup["matched_on"] == {"kind": "PHONE", "value": "13800138000"}
    assert dup["notify_regions"][:2] == ["120119", "130822"]
    assert sorted(k for k, h in bus.hits if h["hit_id"] == dup["hit_id"]) == ["120000", "130000"]
    assert len(bus.unique) == 2  # both reports forwarded (and stored) as they are: never merged
    # their location regions differ too, so they are also a case link: two questions, two hits
    assert len(of_type(bus, "CASE_LINK")) == 1


def test_a_report_located_in_the_other_agencys_region_is_a_border_duplicate_but_no_case_link():
    bus = Bus()
    bus.publish("incident", report("120119", "JZ1"))
    bus.publish("incident", report("130822", "XL1", minutes=3, km_north=1, located_in="120119"))
    assert len(of_type(bus, "BORDER_DUPLICATE")) == 1 and of_type(bus, "CASE_LINK") == []


def test_the_border_duplicate_does_not_depend_on_which_report_is_read_first():
    def run(order):
        bus = Bus()
        reports = {"jz": report("120119", "JZ1", minutes=10), "xl": report("130822", "XL1", minutes=2, km_north=2)}
        for name in order:
            bus.publish("incident", reports[name])
        (dup,) = of_type(bus, "BORDER_DUPLICATE")
        return dup
    a, b = run(["jz", "xl"]), run(["xl", "jz"])
    assert a["hit_id"] == b["hit_id"] and a["record_key"] == "130822/sys/XL1"  # the earlier report is the record


def test_reports_sharing_two_identifiers_make_one_border_duplicate_and_a_replay_none():
    bus = Bus()
    suspect = person(ID18, "SUSPECT")
    bus.publish("incident", report("120119", "JZ1", persons=[suspect]))
    result = bus.dedupe.process([Incoming("intel.incident", 0, 77, b"130822/sys/XL1", json.dumps(
        report("130822", "XL1", minutes=5, km_north=1, persons=[suspect])).encode())], T0)
    bus.records.commit()
    requests = [Incoming(MATCH_TOPIC, o.partition, 0, o.key, o.value) for o in result.outputs if o.topic == MATCH_TOPIC]
    bus._run(bus.match, bus.index, requests, T0)
    bus._run(bus.match, bus.index, requests, T0)  # the match requests read again after a crash
    dups = of_type(bus, "BORDER_DUPLICATE")
    assert len(dups) == 1
    assert len([k for k, h in bus.hits if h["hit_type"] == "BORDER_DUPLICATE"]) == 2  # one copy per province, once


@pytest.mark.parametrize("second", [
    dict(minutes=5, km_north=50),    # 50 km apart: two incidents
    dict(minutes=180, km_north=1),   # three hours apart
    dict(minutes=5, km_north=1, place=False),  # no coordinates: cannot judge "a few km"
    dict(minutes=5, km_north=1, itype="CHECKPOINT_CHECK"),  # a check is a sighting, not a report
])
def test_no_border_duplicate_when_far_apart_late_without_a_place_or_not_a_report(second):
    bus = Bus()
    bus.publish("incident", report("120119", "JZ1"))
    bus.publish("incident", report("130822", "XL1", **second))
    assert of_type(bus, "BORDER_DUPLICATE") == []


def test_no_border_duplicate_between_a_county_and_its_own_province():
    bus = Bus()
    bus.publish("incident", report("130822", "XL1"))
    bus.publish("incident", report("130000", "HB1", minutes=2, km_north=1))
    assert of_type(bus, "BORDER_DUPLICATE") == []


def test_a_report_typed_in_hours_later_still_meets_the_report_of_its_time():
    bus = Bus()
    bus.publish("incident", report("120119", "JZ1", minutes=0), now=T0)
    bus.publish("incident", report("130822", "XL1", minutes=-20, km_north=1), now=T0 + 4 * 3600_000)
    assert len(of_type(bus, "BORDER_DUPLICATE")) == 1


def test_the_reports_kept_per_identifier_are_pruned_by_event_time_and_bounded():
    bus = Bus()
    bus.match.reports_per_identifier = 5
    key = b"PHONE:13800138000"
    part = zlib.crc32(key) % P

    def kept():
        return [r["key"] for r in json.loads(bus.index.get(part, key))["reports"]]
    bus.publish("incident", report("120119", "OLD", minutes=0))
    bus.publish("incident", report("120119", "NEW", minutes=61))  # more than twice 30 minutes later
    assert kept() == ["120119/sys/NEW"]
    for i in range(8):
        bus.publish("incident", report("120119", f"R{i}", minutes=62 + i))
    assert len(kept()) == 5 and kept()[-1] == "120119/sys/R7"
    # a report older than what is kept is compared, not kept
    bus.publish("incident", report("130822", "XL-OLD", minutes=-100))
    assert "130822/sys/XL-OLD" not in kept()


@pytest.mark.parametrize("cfg", [
    dict(seed=4, count=3000),
    # accidental border duplicates: two neighbouring districts, many linked cases, no deliberate pairs
    dict(seed=5, count=3000, regions=("110105", "110108"), border_duplicate_rate=0.0, case_link_rate=0.5),
])
def test_the_simulators_traffic_through_the_three_stages_gives_exactly_its_truth(cfg):
    from producers.simulator import SimConfig, Simulation
    from schemas.records import validate_record

    sim = Simulation(SimConfig(start_ms=T0, **cfg))
    bus = Bus()
    for item in sim.records():
        if not item.invalid:
            bus.publish(item.kind, validate_record(item.kind, item.record, now_ms=T0))
    assert sim.truth.summary()["hits_by_type"].get("BORDER_DUPLICATE")
    assert set(bus.distinct_hits()) == set(sim.truth.hits)


def test_the_border_duplicate_window_and_distance_are_settings():
    from ops.settings import load_settings
    from stream_jobs.app import border_duplicate_settings

    assert border_duplicate_settings(load_settings(environ={})) == {"border_window_ms": 30 * MIN, "border_km": 5.0}
    tighter = border_duplicate_settings(load_settings(environ={"INTELBUS_BORDER_DUPLICATE_WINDOW_MIN": "10",
                                                               "INTELBUS_BORDER_DUPLICATE_KM": "2.5"}))
    assert tighter == {"border_window_ms": 10 * MIN, "border_km": 2.5}
    bus = Bus()
    bus.match.border_window_ms, bus.match.border_km = tighter["border_window_ms"], tighter["border_km"]
    bus.publish("incident", report("120119", "JZ1"))
    bus.publish("incident", report("130822", "XL1", minutes=8, km_north=3))  # 3 km: beyond 2.5
    bus.publish("incident", report("130822", "XL2", minutes=12, km_north=1))  # 12 min: beyond 10
    assert of_type(bus, "BORDER_DUPLICATE") == []


def test_a_batch_of_large_records_splits_its_match_requests_and_every_sighting_still_hits(monkeypatch):
    # A 2,000-event backlog batch of incidents made one match request per partition of several MB:
    # over the topic's 1 MB limit, MSG_SIZE_TOO_LARGE, and the worker exited at every restart.
    import stream_jobs.stages as stages

    monkeypatch.setattr(stages, "REQUEST_BYTES", 8 * 1024)
    bus = Bus()
    sent = []
    original = bus._run

    def run(stage, state, batch, now):
        result = original(stage, state, batch, now)
        sent.extend(o for o in result.outputs if o.topic == MATCH_TOPIC)
        return result

    bus._run = run
    notes = "x" * 1500  # a long free-text field: every record about 2 KB
    checks = [("incident", {**incident("120119", f"C{i}", persons=[person(ID18)], t=T0 + 1000 * (i + 1)),
                            "description": notes}) for i in range(40)]
    bus.publish_batch(checks[:20] + [("wanted", wanted("130822", "W1", t=T0))] + checks[20:])
    by_partition = {}
    for out in sent:
        by_partition.setdefault(out.partition, []).append(len(out.value))
    assert max(len(v) for v in by_partition.values()) > 1, by_partition  # split
    assert max(max(v) for v in by_partition.values()) < 8 * 1024 + 4 * 1500 * 2, by_partition  # each about the limit
    assert sorted(json.loads(h["trigger"])["source_ref"] for h in bus.distinct_hits().values()) == \
        sorted(f"C{i}" for i in range(40))


def test_split_match_requests_read_in_separate_batches_still_hit_every_sighting(monkeypatch):
    import stream_jobs.stages as stages

    monkeypatch.setattr(stages, "REQUEST_BYTES", 4 * 1024)
    bus = Bus()
    original = bus._run

    def run(stage, state, batch, now):  # the matcher reads each request message in a batch of its own
        if stage is bus.match and len(batch) > 1:
            for one in batch:
                original(stage, state, [one], now)
            return None
        return original(stage, state, batch, now)

    bus._run = run
    checks = [("incident", {**incident("120119", f"C{i}", persons=[person(ID18)], t=T0 + 1000 * (i + 1)),
                            "description": "y" * 1500}) for i in range(30)]
    bus.publish_batch(checks[:15] + [("wanted", wanted("130822", "W1", t=T0))] + checks[15:])
    assert len(bus.distinct_hits()) == 30


@pytest.mark.parametrize("kind, record, field", [
    ("incident", incident("120119", "C2", plates=["京A12345", "not a plate!"]), "vehicles[1].plate"),
    ("incident", incident("120119", "C3", phones=["13800000000", "12"]), "phones[1]"),
    ("incident", incident("120119", "C4", persons=[person(ID18), person("110105194912310021")]), "persons[1].id_number"),
    ("wanted", wanted("110000", "W1", id_number="110105194912310021"), "person.id_number"),
])
def test_a_dead_letter_names_the_field_of_the_bad_identifier(kind, record, field):
    bus = Bus()
    bus.publish(kind, record)
    assert [d.stage for d in bus.dead] == ["VALIDATE"] and bus.dead[0].field == field
