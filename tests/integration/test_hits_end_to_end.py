"""DOMAIN.md's scenarios on the real bus: RegionalProducer -> Kafka -> faust jobs -> intel.hit.

Every test uses fresh source refs and identifiers, and reads intel.hit from the offsets it
had when the test began, so tests do not see each other's hits.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from schemas.regions import load_regions

REGIONS = load_regions()
CST = timezone(timedelta(hours=8))


def iso(minutes: float = 0) -> str:
    return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def ref(tag: str) -> str:
    return f"T{tag}-{uuid.uuid4().hex[:10]}"


def listing(region, source_ref, id_number, action="LISTED", revision=1, minutes=-10):
    return {"source_region": region, "source_system": "ztry", "source_ref": source_ref, "revision": revision,
            "occurred_at": iso(minutes), "action": action, "offence": "THEFT",
            "person": {"id_type": "RESIDENT_ID", "id_number": id_number, "name": "李四"}}


def check(region, id_number, itype="CHECKPOINT_CHECK", minutes=0, source_ref=None):
    return {"source_region": region, "source_system": "kakou", "source_ref": source_ref or ref("C"),
            "occurred_at": iso(minutes), "incident_type": itype, "location": {"region": region, "address": "检查站"},
            "persons": [{"id_type": "RESIDENT_ID", "id_number": id_number, "role": "CHECKED"}]}


def record_key(r) -> str:
    return f"{r['source_region']}/{r['source_system']}/{r['source_ref']}"


def hits_of(messages, codec, rkey):
    """{hit_id: [(partition key, hit), ...]} of the hits on one matched record."""
    found = {}
    for msg in messages:
        hit = codec.decode(msg.value())
        if hit["record_key"] == rkey:
            found.setdefault(str(hit["hit_id"]), []).append((msg.key().decode(), hit))
    return found


def publish_all(producer, kind, records):
    for r in records:
        producer.publish(kind, r)
    assert producer.flush(30) == 0 and producer.stats.failed == 0


def test_xinglong_wanted_checked_in_jizhou_gives_one_hit_to_both(producer, codec, reader, ids):
    hits_topic = reader("intel.hit")
    id18 = ids.new("130822")
    wanted = listing("130822", ref("W"), ids.to_15(id18))   # listed with the old 15-digit number
    publish_all(producer, "wanted", [wanted])
    publish_all(producer, "incident", [check("120119", id18)])
    rkey = record_key(wanted)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=30)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1, hits
    (copies,) = hits.values()
    hit = copies[0][1]
    assert hit["hit_type"] == "WANTED_PERSON"
    assert (hit["owner_region"], hit["hit_region"]) == ("130822", "120119")
    assert hit["matched_on"] == {"kind": "RESIDENT_ID", "value": id18}
    # both command centers are told, each through its own province's key
    assert sorted(k for k, _ in copies) == ["120000", "130000"]
    assert REGIONS.may_see("130822", hit["notify_regions"]) and REGIONS.may_see("120119", hit["notify_regions"])
    assert not REGIONS.may_see("110000", hit["notify_regions"])


def test_resent_listing_and_check_still_give_one_hit(producer, codec, reader, ids):
    hits_topic = reader("intel.hit")
    id18 = ids.new("130822")
    wanted = listing("130822", ref("W"), id18)
    publish_all(producer, "wanted", [wanted] * 3)
    the_check = check("120119", id18)
    publish_all(producer, "incident", [the_check] * 2)
    rkey = record_key(wanted)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=30, settle=3)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1 and len(next(iter(hits.values()))) == 2  # one hit, one copy per province


def test_no_hit_after_arrest(producer, codec, reader, ids):
    hits_topic = reader("intel.hit")
    id18 = ids.new("130822")
    source_ref = ref("W")
    publish_all(producer, "wanted", [listing("130822", source_ref, id18, minutes=-20),
                                     listing("130822", source_ref, id18, "ARRESTED", 2, minutes=-5)])
    publish_all(producer, "incident", [check("120119", id18)])
    # a control that must hit, so the test cannot pass by the bus doing nothing
    control_id = ids.new("130822")
    control = listing("130822", ref("W"), control_id, minutes=-20)
    publish_all(producer, "wanted", [control])
    publish_all(producer, "incident", [check("120119", control_id)])
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, record_key(control))) >= 1, timeout=30, settle=2)
    assert len(hits_of(messages, codec, record_key(control))) == 1
    assert hits_of(messages, codec, f"130822/ztry/{source_ref}") == {}


def test_late_update_after_cancellation_does_not_reopen(producer, codec, reader, ids):
    hits_topic = reader("intel.hit")
    id18 = ids.new("130822")
    source_ref = ref("W")
    publish_all(producer, "wanted", [listing("130822", source_ref, id18, minutes=-30),
                                     listing("130822", source_ref, id18, "CANCELLED", 3, minutes=-20),
                                     listing("130822", source_ref, id18, "UPDATED", 2, minutes=-25)])
    publish_all(producer, "incident", [check("120119", id18)])
    control_id = ids.new("130822")
    control = listing("130822", ref("W"), control_id, minutes=-20)
    publish_all(producer, "wanted", [control])
    publish_all(producer, "incident", [check("120119", control_id)])
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, record_key(control))) >= 1, timeout=30, settle=2)
    assert len(hits_of(messages, codec, record_key(control))) == 1
    assert hits_of(messages, codec, f"130822/ztry/{source_ref}") == {}


def test_watch_on_beijing_plate_matched_by_langfang_stop_written_differently(producer, codec, reader):
    hits_topic = reader("intel.hit")
    watch = {"source_region": "110000", "source_system": "bk", "source_ref": ref("BK"), "occurred_at": iso(-10),
             "alert_type": "WATCH", "title": "布控 京A12345", "status": "OPEN", "priority": "URGENT",
             "vehicles": [{"plate": "京A12345"}]}
    publish_all(producer, "alert", [watch])
    stop = {"source_region": "131000", "source_system": "jg", "source_ref": ref("JT"), "occurred_at": iso(),
            "incident_type": "TRAFFIC_STOP", "location": {"region": "131000"}, "vehicles": [{"plate": "京a 12345"}]}
    publish_all(producer, "incident", [stop])
    rkey = record_key(watch)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=30)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1
    hit = next(iter(hits.values()))[0][1]
    assert hit["hit_type"] == "WATCH_MATCH" and hit["matched_on"] == {"kind": "PLATE", "value": "京A12345"}
    assert hit["hit_region"] == "131000"


def test_check_in_the_owners_own_region_gives_no_hit(producer, codec, reader, ids):
    hits_topic = reader("intel.hit")
    id18 = ids.new("130822")
    wanted = listing("130822", ref("W"), id18)
    publish_all(producer, "wanted", [wanted])
    publish_all(producer, "incident", [check("130822", id18)])
    publish_all(producer, "incident", [check("120119", id18)])  # control: another region does hit
    rkey = record_key(wanted)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=30, settle=2)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1 and next(iter(hits.values()))[0][1]["hit_region"] == "120119"


def test_case_link_between_two_regions(producer, codec, reader):
    hits_topic = reader("intel.hit")
    phone = f"139{uuid.uuid4().int % 10**8:08d}"
    first = {"source_region": "120119", "source_system": "xz", "source_ref": ref("AJ"), "occurred_at": iso(-60),
             "incident_type": "THEFT", "location": {"region": "120119"}, "phones": [phone]}
    second = {"source_region": "130822", "source_system": "xz", "source_ref": ref("AJ"), "occurred_at": iso(-5),
              "incident_type": "FRAUD", "location": {"region": "130822"}, "phones": [f"+86 {phone[:3]}-{phone[3:7]}-{phone[7:]}"]}
    publish_all(producer, "incident", [first, second])
    rkey = record_key(first)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=30)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1
    hit = next(iter(hits.values()))[0][1]
    assert hit["hit_type"] == "CASE_LINK" and hit["matched_on"] == {"kind": "PHONE", "value": phone}
    assert (hit["owner_region"], hit["hit_region"]) == ("120119", "130822")


def test_undecodable_and_invalid_messages_land_in_the_dlq_and_the_job_goes_on(stack, settings, producer, codec, reader, ids):
    from confluent_kafka import Producer

    dlq = reader("intel.dlq")
    hits_topic = reader("intel.hit")
    raw = Producer(settings.kafka_config("intelbus-admin"))
    marker = uuid.uuid4().hex.encode()
    raw.produce("intel.incident", key=b"bad/" + marker, value=b"\x00\x7f\xff\xff\xf0" + marker)  # no such schema id
    raw.produce("intel.incident", key=b"bad2/" + marker, value=b"not avro at all " + marker)
    raw.flush(10)
    # an Avro record from a producer that skipped validation: a bad check digit
    bad = producer.validate("incident", check("120119", ids.new("120119")))
    bad["persons"][0]["id_number"] = bad["persons"][0]["id_number"][:17] + ("0" if bad["persons"][0]["id_number"][17] != "0" else "1")
    producer.publish_valid("incident", bad)
    assert producer.flush(10) == 0

    letters = dlq.read(until=lambda got: len([d for d in (codec.decode(m.value()) for m in got)
                                              if marker in d["raw"] or d.get("source_region") == "120119"]) >= 3, timeout=30)
    decoded = [codec.decode(m.value()) for m in letters]
    ours = [d for d in decoded if marker in d["raw"]]
    assert {d["stage"] for d in ours} == {"DECODE"} and len(ours) == 2
    assert any("magic byte" in d["reason"] for d in ours)
    validate = [d for d in decoded if d["stage"] == "VALIDATE" and d["field"] == "persons[0].id_number"]
    assert validate and "check digit" in validate[-1]["reason"]
    # and the job still matches afterwards
    id18 = ids.new("130822")
    wanted = listing("130822", ref("W"), id18)
    publish_all(producer, "wanted", [wanted])
    publish_all(producer, "incident", [check("120119", id18)])
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, record_key(wanted))) >= 1, timeout=30)
    assert len(hits_of(messages, codec, record_key(wanted))) == 1


def test_a_sighting_read_before_its_listing_still_hits_after_a_worker_restart_in_between(
        stack, settings, producer, codec, reader, ids):
    """The matcher remembers recent lookups, so a listing read after a sighting of it still
    hits (the input topics are not read in publication order). That memory is rebuilt from
    the match requests when a worker gets its partitions: a restart in between loses nothing."""
    from ops.lag import JOBS_TOPICS, wait_for_zero_lag
    from ops.services import full_stack

    hits_topic = reader("intel.hit")
    id18 = ids.new("130822")
    publish_all(producer, "incident", [check("120119", id18)])  # the check is read and looked up first
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=120)
    services = full_stack(settings, out=lambda m: None)
    services.down(only={"jobs-0"})  # SIGTERM: the worker commits what it did and stops
    services.up()                   # returns once the worker recovered its tables and runs
    wanted = listing("130822", ref("W"), id18, minutes=-10)  # listed before the check, read after it
    publish_all(producer, "wanted", [wanted])
    rkey = record_key(wanted)
    messages = hits_topic.read(until=lambda got: len(hits_of(got, codec, rkey)) >= 1, timeout=60)
    hits = hits_of(messages, codec, rkey)
    assert len(hits) == 1, hits
    hit = next(iter(hits.values()))[0][1]
    assert hit["hit_type"] == "WANTED_PERSON" and (hit["owner_region"], hit["hit_region"]) == ("130822", "120119")


def case_report(region, phone, *, minutes, lat, lon, located_in=None, itype="THEFT"):
    return {"source_region": region, "source_system": "jwzh", "source_ref": ref("AJ"), "occurred_at": iso(minutes),
            "incident_type": itype, "location": {"region": located_in or region, "address": "津冀交界", "lat": lat, "lon": lon},
            "phones": [phone]}


def test_one_incident_reported_by_jizhou_and_xinglong_is_one_border_duplicate_to_both(producer, codec, reader):
    """DOMAIN.md 5 and 10: two agencies near a border reporting one incident are flagged to
    both as a possible duplicate, never merged. Controls: the same pair of agencies 50 km
    apart, and 3 hours apart, are case links only (which shows the jobs read them)."""
    hits_topic, unique = reader("intel.hit"), reader("intel.incident.unique")
    phone, far_phone, late_phone = (f"13{n}{uuid.uuid4().int % 10**8:08d}" for n in (5, 6, 7))
    # one theft on the Tianjin-Hebei line, reported by Jizhou and, 8 minutes and 2 km off, by Xinglong
    jizhou = case_report("120119", phone, minutes=-20, lat=40.2300, lon=117.4500)
    xinglong = case_report("130822", f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}", minutes=-12, lat=40.2480, lon=117.4500)
    far = [case_report("120119", far_phone, minutes=-20, lat=40.0460, lon=117.4080),
           case_report("130822", far_phone, minutes=-15, lat=40.4960, lon=117.4080)]   # 50 km apart
    late = [case_report("120119", late_phone, minutes=-200, lat=40.2300, lon=117.4500),
            case_report("130822", late_phone, minutes=-20, lat=40.2480, lon=117.4500)]  # 3 hours apart
    publish_all(producer, "incident", [jizhou, xinglong, *far, *late])
    keys = [record_key(r) for r in (jizhou, far[0], late[0])]

    def arrived(got):
        return hits_of(got, codec, keys[0]) and all(hits_of(got, codec, k) for k in keys[1:])
    messages = hits_topic.read(until=arrived, timeout=60, settle=3)
    ours = {k: [c for copies in hits_of(messages, codec, k).values() for c in copies] for k in keys}
    dups = {str(h["hit_id"]): h for _, h in ours[keys[0]] if h["hit_type"] == "BORDER_DUPLICATE"}
    assert len(dups) == 1, ours[keys[0]]
    (dup,) = dups.values()
    assert (dup["owner_region"], dup["hit_region"]) == ("120119", "130822")  # the two reporting agencies
    assert dup["record_key"] == record_key(jizhou) and dup["trigger_kind"] == "INCIDENT"
    assert '"source_ref":"%s"' % xinglong["source_ref"] in dup["trigger"]  # the hit names both reports
    assert dup["matched_on"] == {"kind": "PHONE", "value": phone}
    # both command centers are told, each through its own province's key, once
    assert sorted(k for k, h in ours[keys[0]] if h["hit_type"] == "BORDER_DUPLICATE") == ["120000", "130000"]
    assert REGIONS.may_see("120119", dup["notify_regions"]) and REGIONS.may_see("130822", dup["notify_regions"])
    assert not REGIONS.may_see("110000", dup["notify_regions"])
    # the controls: read and linked as cases, not flagged as duplicates
    for k in keys[1:]:
        assert {h["hit_type"] for _, h in ours[k]} == {"CASE_LINK"}, ours[k]
    # never merged: both reports went on as they were
    refs = {jizhou["source_ref"], xinglong["source_ref"]}
    stored = unique.read(until=lambda got: refs <= {codec.decode(m.value())["source_ref"] for m in got}, timeout=30)
    assert refs <= {codec.decode(m.value())["source_ref"] for m in stored}
