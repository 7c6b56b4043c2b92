"""Which alerts a command center's feed shows, and how an alert block lines up."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from schemas.regions import load_regions
from identity.entitlement import Entitlement
from identity.principals import Identity
from sinks.feed import render_alert_block
from sinks.queries import display_width

REGIONS = load_regions()


@pytest.mark.parametrize("viewer, scope, shown", [
    ("130000", ["130822"], True),    # shared with a county: its province sees it
    ("130822", ["130000"], True),    # shared with the province: its counties see it
    ("130822", ["130822"], True),
    ("120119", ["130000"], False),   # Tianjin is not Hebei
    ("120119", ["JJJ"], True),       # Jing-Jin-Ji zone
    ("440300", ["JJJ"], False),
    ("130000", [], False),           # not shared at all
])
def test_alert_shared_with(viewer, scope, shown):
    ent = Entitlement(Identity(name="cc", kind="person", region=viewer, branch="COMMAND_CENTER",
                               roles=frozenset({"command_center"}), clearance="INTERNAL"), REGIONS)
    assert ent.may_see_alert({"share_scope": scope, "classification": "INTERNAL"}, viewer) is shown


def test_alert_block_labels_line_up_in_display_width():
    alert = {"event_id": "e1", "alert_type": "WATCH", "priority": "URGENT", "status": "OPEN", "classification": "INTERNAL",
             "reported_at": datetime.now(tz=timezone.utc), "source_region": "110105", "source_system": "bk",
             "source_ref": "BK-1", "revision": 1, "title": "盗抢车辆布控", "persons": [], "vehicles": [{"plate": "京A12345"}],
             "phones": ["13800138000"], "share_scope": ["JJJ"]}
    lines = render_alert_block(alert, REGIONS).splitlines()[1:]
    value_columns = {display_width(l[:re.match(r"^  \S.*?\s{2,}(?=\S)", l).end()]) for l in lines}
    assert len(value_columns) == 1
    assert "京A12345, 13800138000" in "\n".join(lines)


def test_times_are_shown_in_china_standard_time():
    from schemas.times import cst

    assert cst("2026-11-30T01:15:52.140+00:00") == "2026-11-30 09:15:52 CST"
    assert cst("2026-11-30 20:02:03", suffix=False) == "2026-12-01 04:02:03"  # ClickHouse's naive UTC DateTime
    assert cst(1_795_000_000) == "2026-11-18 19:06:40 CST"
    assert cst(datetime(2026, 11, 30, 20, 0, tzinfo=timezone.utc)) == "2026-12-01 04:00:00 CST"
    assert cst(None) == "-"


def test_a_border_duplicate_block_shows_both_reports_how_far_apart_and_that_both_are_kept():
    from sinks.feed import render_block

    def report(region, ref, at, lat):
        return {"source_region": region, "source_system": "jwzh", "source_ref": ref, "incident_type": "THEFT",
                "occurred_at": at, "location": {"region": region, "address": None, "lat": lat, "lon": 117.45}}
    hit = {"hit_id": "h1", "hit_type": "BORDER_DUPLICATE", "classification": "INTERNAL",
           "detected_at": datetime.now(tz=timezone.utc), "owner_region": "120119", "hit_region": "130822",
           "matched_on": {"kind": "PHONE", "value": "13800138000"}, "notify_regions": ["120119", "130822"],
           "record_kind": "INCIDENT", "record": report("120119", "AJ-1", "2026-11-30T01:00:00.000+00:00", 40.23),
           "trigger": report("130822", "AJ-2", "2026-11-30T01:12:00.000+00:00", 40.248)}
    text = render_block(hit, REGIONS)
    assert "疑似重复报告 possible duplicate" in text
    assert "120119 蓟州区 · jwzh/AJ-1: THEFT at 2026-11-30 09:00:00 CST" in text
    assert "130822 兴隆县 · jwzh/AJ-2: THEFT at 2026-11-30 09:12:00 CST" in text
    assert "12 min, 2.0 km apart" in text and "both reports kept" in text
    lines = text.splitlines()[1:]
    assert len({display_width(l[:re.match(r"^  \S.*?\s{2,}(?=\S)", l).end()]) for l in lines}) == 1
