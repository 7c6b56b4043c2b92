"""Every decision of the stream jobs as a pure function."""
from __future__ import annotations

import pytest

from schemas.regions import load_regions
from stream_jobs import rules

DAY = rules.DAY_MS


def test_record_key():
    assert rules.record_key_of({"source_region": "130822", "source_system": "ztry", "source_ref": "W1"}) == "130822/ztry/W1"


class TestDedupe:
    def test_same_revision_is_a_duplicate_within_the_window(self):
        seen = rules.SeenRevisions({})
        seen.remember("e1", 1, now_ms=1000, window_ms=7 * DAY)
        assert seen.is_duplicate("other-id", 1, now_ms=2000, window_ms=7 * DAY)

    def test_same_event_id_is_a_duplicate_even_with_another_revision(self):
        seen = rules.SeenRevisions({})
        seen.remember("e1", 1, now_ms=1000, window_ms=7 * DAY)
        assert seen.is_duplicate("e1", 2, now_ms=2000, window_ms=7 * DAY)

    def test_new_revision_is_not_a_duplicate(self):
        seen = rules.SeenRevisions({})
        seen.remember("e1", 1, now_ms=1000, window_ms=7 * DAY)
        assert not seen.is_duplicate("e2", 2, now_ms=2000, window_ms=7 * DAY)

    def test_outside_the_window_it_is_new_again_and_old_entries_are_pruned(self):
        seen = rules.SeenRevisions({})
        seen.remember("e1", 1, now_ms=0, window_ms=7 * DAY)
        later = 8 * DAY
        assert not seen.is_duplicate("e1", 1, now_ms=later, window_ms=7 * DAY)
        seen.remember("e2", 2, now_ms=later, window_ms=7 * DAY)
        assert set(seen.revisions) == {2}


class TestLifecycle:
    @pytest.mark.parametrize("action,open_", [("LISTED", True), ("UPDATED", True), ("ARRESTED", False),
                                               ("SURRENDERED", False), ("CANCELLED", False)])
    def test_wanted_actions(self, action, open_):
        assert rules.is_open("wanted", {"action": action}, now_ms=0) is open_

    def test_alert_open_closed_and_expired(self):
        assert rules.is_open("alert", {"status": "OPEN", "valid_until": None}, now_ms=5)
        assert not rules.is_open("alert", {"status": "CLOSED", "valid_until": None}, now_ms=5)
        assert not rules.is_open("alert", {"status": "OPEN", "valid_until": 5}, now_ms=5)
        assert rules.is_open("alert", {"status": "OPEN", "valid_until": 6}, now_ms=5)

    def test_only_wanted_and_watch_alerts_are_watchable(self):
        assert rules.is_watchable("wanted", {})
        assert rules.is_watchable("alert", {"alert_type": "WATCH"})
        assert not rules.is_watchable("alert", {"alert_type": "ASSIST_REQUEST"})
        assert not rules.is_watchable("incident", {})

    def test_first_revision_indexes_its_identifiers(self):
        t = rules.apply_revision(None, 1, True, ("RESIDENT_ID:1", "PHONE:2"))
        assert t.state.open and t.index_add == ("RESIDENT_ID:1", "PHONE:2") and t.index_remove == ()

    def test_highest_revision_wins_and_dropped_identifiers_are_removed(self):
        first = rules.apply_revision(None, 1, True, ("RESIDENT_ID:1", "PHONE:2")).state
        t = rules.apply_revision(first, 2, True, ("RESIDENT_ID:1", "PLATE:3"))
        assert t.index_add == ("RESIDENT_ID:1", "PLATE:3") and t.index_remove == ("PHONE:2",)

    def test_closing_removes_everything(self):
        first = rules.apply_revision(None, 1, True, ("RESIDENT_ID:1",)).state
        t = rules.apply_revision(first, 2, False, ("RESIDENT_ID:1",))
        assert not t.state.open and t.index_add == () and t.index_remove == ("RESIDENT_ID:1",)

    def test_late_older_revision_never_reopens(self):
        closed = rules.RecordState(revision=3, open=False, identifiers=())
        assert rules.apply_revision(closed, 2, True, ("RESIDENT_ID:1",)) is None
        assert rules.apply_revision(closed, 3, True, ("RESIDENT_ID:1",)) is None


class TestIdentifiers:
    def test_identifiers_of_an_incident(self):
        rec = {"persons": [{"id_type": "RESIDENT_ID", "id_number": "11010519491231002X", "role": "CHECKED"},
                           {"id_type": "OTHER", "id_number": "X", "role": "WITNESS"},
                           {"id_type": "PASSPORT", "id_number": "E1234567", "role": "SUSPECT"}],
               "vehicles": [{"plate": "京A12345"}, {"plate": "京A12345"}], "phones": ["13800138000"]}
        assert rules.identifiers_of("incident", rec) == (
            "RESIDENT_ID:11010519491231002X", "PASSPORT:E1234567", "PLATE:京A12345", "PHONE:13800138000")

    def test_identifiers_of_a_wanted_record_include_its_person(self):
        rec = {"person": {"id_type": "RESIDENT_ID", "id_number": "1"}, "vehicles": [], "phones": ["2"]}
        assert rules.identifiers_of("wanted", rec) == ("RESIDENT_ID:1", "PHONE:2")

    def test_identifiers_of_are_the_subjects_identifiers_once_each_for_the_simulator_s_records(self):
        from producers.simulator import SimConfig, Simulation
        from schemas.records import subjects_of

        seen_kinds = set()
        for item in Simulation(SimConfig(seed=5, count=3000, start_ms=1_790_000_000_000)).records():
            kind, record = item.kind, item.record
            if not isinstance(record, dict) or (kind == "wanted" and not isinstance(record.get("person"), dict)):
                continue
            try:
                subjects = subjects_of(kind, record)
            except (KeyError, TypeError, AttributeError):  # the simulator's invalid records
                continue
            expected = tuple(dict.fromkeys(rules.identifier(k, v) for k, v, _ in subjects))
            assert rules.identifiers_of(kind, record) == expected
            seen_kinds.add(kind)
        assert seen_kinds == {"alert", "wanted", "incident"}

    def test_case_links_use_suspects_plates_phones_of_cases_only(self):
        rec = {"incident_type": "THEFT",
               "persons": [{"id_type": "RESIDENT_ID", "id_number": "1", "role": "SUSPECT"},
                           {"id_type": "RESIDENT_ID", "id_number": "2", "role": "VICTIM"}],
               "vehicles": [{"plate": "P"}], "phones": ["3"]}
        assert rules.case_link_identifiers(rec) == ("RESIDENT_ID:1", "PLATE:P", "PHONE:3")
        assert rules.case_link_identifiers({**rec, "incident_type": "HOTEL_CHECKIN"}) == ()


class TestMatching:
    regions = load_regions()

    @pytest.mark.parametrize("record_region,event_region,hit", [
        ("130822", "120119", True),    # Xinglong wanted, Jizhou check
        ("130822", "130822", False),   # own region
        ("130000", "130822", False),   # Hebei's record, check in a Hebei county: inside it
        ("130822", "130000", True),    # county's record, seen at province level elsewhere in Hebei
        ("110000", "120114", True),
    ])
    def test_cross_region(self, record_region, event_region, hit):
        assert rules.is_cross_region(record_region, event_region, self.regions.is_within) is hit

    def test_hit_types(self):
        assert rules.hit_type_for("wanted") == "WANTED_PERSON"
        assert rules.hit_type_for("alert") == "WATCH_MATCH"

    def test_case_link_window_and_regions(self):
        assert rules.is_case_link("120119", 0, "130822", 29 * DAY, 30 * DAY)
        assert rules.is_case_link("120119", 29 * DAY, "130822", 0, 30 * DAY)
        assert not rules.is_case_link("120119", 0, "130822", 31 * DAY, 30 * DAY)
        assert not rules.is_case_link("120119", 0, "120119", DAY, 30 * DAY)


class TestRouting:
    regions = load_regions()

    @pytest.mark.parametrize("a,b,higher", [("PUBLIC", "INTERNAL", "INTERNAL"), ("SECRET", "INTERNAL", "SECRET"),
                                            ("HIGHLY_SECRET", "SECRET", "HIGHLY_SECRET"), ("PUBLIC", "PUBLIC", "PUBLIC")])
    def test_higher_classification(self, a, b, higher):
        assert rules.higher_classification(a, b) == higher
        assert rules.higher_classification(b, a) == higher

    def test_notify_list_keeps_order_and_drops_repeats(self):
        assert rules.notify_regions("130822", "120119", ["TWL", "130822"], ["JJJ"]) == ["130822", "120119", "TWL", "JJJ"]

    @pytest.mark.parametrize("region,notify,visible", [
        ("130822", ["130822", "120119"], True),
        ("130000", ["130822", "120119"], True),     # a province sees its counties
        ("130800", ["130822", "120119"], True),     # a city sees its counties
        ("110000", ["130822", "120119"], False),    # Beijing is not involved
        ("110112", ["130822", "120119", "TWL"], True),  # Tongzhou is in the TWL zone
        ("110117", ["130822", "120119", "TWL"], False),  # Pinggu is not
        ("110117", ["130822", "120119", "JJJ"], True),   # but Beijing is in JJJ
    ])
    def test_may_see(self, region, notify, visible):
        assert self.regions.may_see(region, notify) is visible


class TestBorderDuplicates:
    """Two agencies of different regions reporting one incident: same subject, minutes and km apart."""

    MIN = 60_000
    JIZHOU, XINGLONG = "120119", "130822"  # Tianjin's and Hebei's counties on either side of the border
    BORDER = (40.230, 117.450)
    KM_NORTH = 1 / 111.195  # degrees of latitude in a km on the rules' sphere

    @classmethod
    def report(cls, region, *, minutes=0, km_north=0.0, place=True, itype="THEFT", phones=("13800138000",),
               persons=(), lat=None, lon=None):
        location = {"region": region, "address": None, "lat": None, "lon": None}
        if place:
            location["lat"] = cls.BORDER[0] + km_north * cls.KM_NORTH if lat is None else lat
            location["lon"] = cls.BORDER[1] if lon is None else lon
        return {"source_region": region, "source_system": "jwzh", "source_ref": f"{region}-{minutes}",
                "occurred_at": 1_790_000_000_000 + minutes * cls.MIN, "incident_type": itype, "location": location,
                "persons": [{"id_type": "RESIDENT_ID", "id_number": i, "role": r} for i, r in persons],
                "vehicles": [], "phones": list(phones)}

    def on(self, a, b, **kw):
        return rules.border_duplicate_on(a, b, is_within=load_regions().is_within, **kw)

    def test_jizhou_and_xinglong_reporting_one_theft_minutes_and_two_km_apart(self):
        a = self.report(self.JIZHOU)
        b = self.report(self.XINGLONG, minutes=12, km_north=2)
        assert self.on(a, b) == ("PHONE:13800138000",)
        assert self.on(b, a) == ("PHONE:13800138000",)  # symmetric

    def test_every_shared_identifier_counts_whatever_the_persons_role(self):
        victim = ("11010519491231002X", "VICTIM")
        a = self.report(self.JIZHOU, phones=(), persons=[victim])
        b = self.report(self.XINGLONG, minutes=3, phones=(), persons=[victim])
        assert self.on(a, b) == ("RESIDENT_ID:11010519491231002X",)

    def test_no_shared_identifier_no_flag(self):
        assert self.on(self.report(self.JIZHOU), self.report(self.XINGLONG, phones=("13900139000",))) == ()

    def test_the_window_includes_its_end(self):
        a = self.report(self.JIZHOU)
        assert self.on(a, self.report(self.XINGLONG, minutes=30))
        late = self.report(self.XINGLONG, minutes=30)
        late["occurred_at"] += 1
        assert self.on(a, late) == ()
        assert self.on(a, self.report(self.XINGLONG, minutes=180)) == ()  # three hours apart: two incidents
        assert self.on(a, self.report(self.XINGLONG, minutes=10), window_ms=5 * self.MIN) == ()  # a shorter setting

    def test_the_distance_includes_its_end(self):
        a = self.report(self.JIZHOU)
        assert self.on(a, self.report(self.XINGLONG, km_north=4.99))
        assert self.on(a, self.report(self.XINGLONG, km_north=5.01)) == ()
        assert self.on(a, self.report(self.XINGLONG, km_north=50)) == ()  # 50 km: not one incident
        b = self.report(self.XINGLONG, km_north=3)
        exactly = rules.haversine_km(*rules.place_of(a), *rules.place_of(b))
        assert self.on(a, b, max_km=exactly) and self.on(a, b, max_km=exactly - 1e-9) == ()

    def test_haversine_on_known_distances(self):
        assert rules.haversine_km(40.0, 117.0, 40.0, 117.0) == 0
        assert rules.haversine_km(0, 0, 1, 0) == pytest.approx(111.195, abs=0.001)  # a degree of a meridian
        # Jizhou's and Xinglong's county seats are about 42 km apart
        assert rules.haversine_km(40.046, 117.408, 40.418, 117.501) == pytest.approx(42.2, abs=0.5)

    @pytest.mark.parametrize("a,b", [("120119", "120119"),   # one agency's region: not a border
                                     ("130822", "130000"),   # a county and its own province
                                     ("130000", "130822"),
                                     ("130822", "130800")])  # a county and its city
    def test_regions_that_are_one_chain_of_command_are_not_a_border(self, a, b):
        assert self.on(self.report(a), self.report(b, minutes=1)) == ()

    def test_two_counties_of_one_province_are_two_agencies(self):
        assert self.on(self.report("130822"), self.report("131002", minutes=1, km_north=1))  # Xinglong, Anci

    def test_without_a_place_there_is_no_flag(self):
        a = self.report(self.JIZHOU)
        assert self.on(a, self.report(self.XINGLONG, place=False)) == ()
        assert self.on(self.report(self.JIZHOU, place=False), self.report(self.XINGLONG, place=False)) == ()
        assert self.on(self.report(self.JIZHOU, lat=0.0, lon=0.0), self.report(self.XINGLONG, lat=0.0, lon=0.0)) == ()
        assert self.on(a, self.report(self.XINGLONG, lat=float("nan"))) == ()
        assert self.on(a, self.report(self.XINGLONG, lat=140.0)) == ()

    def test_identity_checks_and_stops_are_sightings_not_incident_reports(self):
        a = self.report(self.JIZHOU, itype="CHECKPOINT_CHECK")
        b = self.report(self.XINGLONG, itype="CHECKPOINT_CHECK", minutes=5)
        assert rules.border_duplicate_identifiers(a) == () and self.on(a, b) == ()
        assert self.on(self.report(self.JIZHOU, itype="TRAFFIC_STOP"), self.report(self.XINGLONG, minutes=5)) == ()

    def test_two_agencies_may_type_one_incident_differently(self):
        assert self.on(self.report(self.JIZHOU, itype="THEFT"), self.report(self.XINGLONG, itype="ROBBERY", minutes=4))

    def test_notify_both_agencies_first_then_places_and_scopes(self):
        assert rules.border_duplicate_notify("120119", "130822", ["120119", "130822"], ["JJJ"], []) == \
            ["120119", "130822", "JJJ"]
        assert rules.border_duplicate_notify("120119", "130822", ["120119", "120119"]) == ["120119", "130822"]
