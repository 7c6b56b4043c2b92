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
