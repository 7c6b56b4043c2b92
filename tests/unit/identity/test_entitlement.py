"""What an identity may do and see: roles, narrowing, hits, alerts, and the SQL scopes on chDB."""
from __future__ import annotations

import itertools

import pytest

from identity.entitlement import Entitlement, NotEntitled
from identity.principals import Identity
from schemas.regions import load_regions

REGIONS = load_regions()


def ent(region="130000", roles=("command_center",), clearance="INTERNAL"):
    return Entitlement(Identity(name="p", kind="person", region=region, branch="COMMAND_CENTER", roles=frozenset(roles),
                                clearance=clearance), REGIONS)


@pytest.mark.parametrize("roles, action, allowed", [
    (("command_center",), "feed", True), (("command_center",), "sql", False), (("analyst",), "sql", True),
    (("analyst",), "audit", False), (("auditor",), "audit", True), (("auditor",), "query", False),
    (("operator",), "feed", False), (("operator",), "query", False), (("integrator",), "publish", True),
    (("integrator",), "feed", False), ((), "feed", False),
])
def test_roles_allow_their_actions_only(roles, action, allowed):
    e = ent(roles=roles)
    assert e.allows(action) is allowed
    if not allowed:
        with pytest.raises(NotEntitled, match=f"required for {action}"):
            e.require(action)


def test_region_may_narrow_but_never_widen():
    assert ent("130000").view_region(None) == "130000"
    assert ent("130000").view_region("130822") == "130822"       # Hebei looks at Xinglong
    with pytest.raises(NotEntitled, match="not entitled to region 130000"):
        ent("130822").view_region("130000")                      # Xinglong cannot look at all Hebei
    with pytest.raises(NotEntitled, match="not entitled to region 110000"):
        ent("320000").view_region("110000")                      # Jiangsu cannot look at Beijing
    with pytest.raises(NotEntitled, match="6-digit"):
        ent("320000").view_region("11")


def hit(notify, classification="INTERNAL"):
    return {"notify_regions": notify, "classification": classification}


def test_hits_follow_region_zone_and_clearance():
    assert ent("130000").may_see_hit(hit(["130822", "120119"]), "130000")      # a province sees its county's hit
    assert not ent("320000").may_see_hit(hit(["130822", "120119"]), "320000")  # Jiangsu does not
    assert ent("120119").may_see_hit(hit(["JJJ"]), "120119")                   # a zone member sees the zone's
    assert not ent("130000").may_see_hit(hit(["130822"], "SECRET"), "130000")  # INTERNAL does not read SECRET
    assert ent("130000", clearance="SECRET").may_see_hit(hit(["130822"], "SECRET"), "130000")


# --- the SQL scopes, on a real engine ------------------------------------------------------------

chdb = pytest.importorskip("chdb")

EVENTS = [  # (ref, source_region, region, share_scope, classification)
    ("BJ", "110105", "110105", [], "INTERNAL"),
    ("XL", "130822", "130822", [], "INTERNAL"),
    ("XL-SECRET", "130822", "130822", [], "SECRET"),
    ("JZ", "120119", "120119", [], "INTERNAL"),
    ("BJ-TO-XL", "110105", "110105", ["130822"], "INTERNAL"),   # shared with a county
    ("BJ-TO-JJJ", "110105", "110105", ["JJJ"], "INTERNAL"),     # shared with the zone
    ("LF-TO-TWL", "131000", "131000", ["TWL"], "INTERNAL"),     # Langfang shares with Tongzhou-Wuqing-Langfang
    ("SZ", "320500", "320500", [], "INTERNAL"),
]
HITS = [("H-XL-JZ", ["130822", "120119"], "INTERNAL"), ("H-SZ", ["320500", "320582"], "INTERNAL"),
        ("H-SECRET", ["130822", "120119"], "SECRET"), ("H-TWL", ["TWL"], "INTERNAL")]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from sinks.engine import ChdbExecutor, sql_literal

    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb-ent")), database="ent")
    ex.execute("CREATE DATABASE IF NOT EXISTS ent")
    ex.execute("CREATE TABLE ent.events (source_ref String, source_region String, region String, "
               "share_scope Array(String), classification String) ENGINE = MergeTree ORDER BY source_ref")
    ex.execute("CREATE TABLE ent.hits (hit_id String, notify_regions Array(String), classification String) "
               "ENGINE = MergeTree ORDER BY hit_id")
    ex.execute("INSERT INTO ent.events VALUES " + ", ".join(f"({', '.join(map(sql_literal, e))})" for e in EVENTS))
    ex.execute("INSERT INTO ent.hits VALUES " + ", ".join(f"({', '.join(map(sql_literal, h))})" for h in HITS))
    yield ex
    ex.close()


def visible(engine, e: Entitlement, view: str):
    s = e.sql_scopes(view)
    refs = {r[0] for r in engine.query(f"SELECT source_ref FROM ent.events WHERE {s['events']}")[1]}
    hits = {r[0] for r in engine.query(f"SELECT hit_id FROM ent.hits WHERE {s['hits']}")[1]}
    return refs, hits


@pytest.mark.parametrize("region, clearance, events, hits", [
    ("130000", "INTERNAL", {"XL", "BJ-TO-XL", "BJ-TO-JJJ", "LF-TO-TWL"}, {"H-XL-JZ", "H-TWL"}),  # a province: its counties
    ("130000", "SECRET", {"XL", "XL-SECRET", "BJ-TO-XL", "BJ-TO-JJJ", "LF-TO-TWL"}, {"H-XL-JZ", "H-SECRET", "H-TWL"}),
    ("130822", "INTERNAL", {"XL", "BJ-TO-XL", "BJ-TO-JJJ"}, {"H-XL-JZ"}),
    ("120114", "INTERNAL", {"BJ-TO-JJJ", "LF-TO-TWL"}, {"H-TWL"}),      # Wuqing: what is shared with its zones
    ("320000", "INTERNAL", {"SZ"}, {"H-SZ"}),                            # Jiangsu: nothing of the north
])
def test_sql_scopes(engine, region, clearance, events, hits):
    assert visible(engine, ent(region, ("analyst",), clearance), region) == (events, hits)


def test_narrowing_never_widens(engine):
    codes = ["110000", "110105", "110112", "120000", "120114", "120119", "130000", "130800", "130822", "131000",
             "320000", "320500"]
    for own, view in itertools.product(codes, codes):
        if not REGIONS.is_within(view, own):
            continue
        e = ent(own, ("analyst",), "SECRET")
        wide, narrow = visible(engine, e, own), visible(engine, e, view)
        assert narrow[0] <= wide[0] and narrow[1] <= wide[1], (own, view)
