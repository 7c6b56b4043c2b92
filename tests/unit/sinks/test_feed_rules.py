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
