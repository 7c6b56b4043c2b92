"""Every migration and every named query on chDB (ClickHouse 26.x, embedded): the SQL that
runs on the Debian 18.16 server in the integration tests must run on a current engine too."""
from __future__ import annotations

import json

import pytest

from schemas.regions import load_regions
from sinks.engine import ChdbExecutor
from sinks.migrate import apply_migrations, load_migrations
from gateway.history import UNSCOPED, in_database, kind_scopes
from identity.entitlement import Entitlement
from identity.principals import Identity
from sinks.queries import load_queries
from sinks.rows import COLUMNS, event_rows, hit_row

chdb = pytest.importorskip("chdb")
REGIONS = load_regions()
T = 1_795_000_000_000
PERSON = "11010519491231002X"


def event(kind, region, ref, minutes, **extra):
    base = {"event_id": f"00000000-0000-0000-0000-{abs(hash(ref)) % 10**12:012d}", "source_region": region,
            "source_system": "s", "source_ref": ref, "revision": 1, "occurred_at": T + minutes * 60_000,
            "reported_at": T + minutes * 60_000, "classification": "INTERNAL", "share_scope": [], "phones": [], "vehicles": []}
    if kind == "wanted":
        base.update(action="LISTED", person={"id_type": "RESIDENT_ID", "id_number": PERSON, "role": "WANTED"},
                    offence="FRAUD", warrant_ref=None, danger_level="HIGH")
    else:
        base.update(incident_type="CHECKPOINT_CHECK", case_no=None, title="核查", description=None,
                    location={"region": region, "address": "站", "lat": None, "lon": None},
                    persons=[{"id_type": "RESIDENT_ID", "id_number": PERSON, "role": "CHECKED"}])
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb")), database="intelbus")
    assert [m for m in apply_migrations(ex)] == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert apply_migrations(ex) == []  # idempotent
    events = [("wanted", event("wanted", "130822", "W1", 0)), ("incident", event("incident", "120119", "C1", 30)),
              ("incident", event("incident", "110112", "C2", 10))]
    for kind, rec in events:
        row, subjects = event_rows(kind, rec, topic=f"intel.{kind}.unique", partition=0, offset=0, ingested_ms=T)
        for _ in range(2):  # delivered twice: FINAL shows it once
            ex.insert("events", COLUMNS["events"], [row])
            ex.insert("event_subjects", COLUMNS["event_subjects"], subjects)
    hit = {"hit_id": "11111111-1111-5111-8111-111111111111", "hit_type": "WANTED_PERSON",
           "matched_on": {"kind": "RESIDENT_ID", "value": PERSON}, "owner_region": "130822", "hit_region": "120119",
           "notify_regions": ["130822", "120119"], "classification": "INTERNAL", "detected_at": T + 31 * 60_000,
           "record_kind": "WANTED", "record_key": "130822/s/W1", "record": "{}", "trigger_kind": "INCIDENT",
           "trigger_event_id": events[1][1]["event_id"], "trigger": json.dumps({"occurred_at": "2026-11-19T00:00:00+00:00"}),
           "trigger_reported_at": T + 30 * 60_000}
    ex.insert("hits", COLUMNS["hits"], [hit_row(hit, T)])
    yield ex
    ex.close()


def analyst(region: str, clearance: str = "INTERNAL") -> Entitlement:
    return Entitlement(Identity(name="a", kind="person", region=region, branch="INTELLIGENCE",
                                roles=frozenset({"analyst"}), clearance=clearance), REGIONS)


def run(engine, name, region=None, **values):
    """A named query as the gateway renders it for an analyst of `region` (None: unfiltered)."""
    q = load_queries()[name]
    scopes = UNSCOPED if region is None else kind_scopes(analyst(region), region)
    return engine.query(in_database(q.render(values, scopes), "intelbus"))


@pytest.mark.parametrize("name", sorted(load_queries()))
def test_every_named_query_runs(engine, name):
    values = {"ids": [PERSON]} if name == "trail" else {}
    for region in (None, "130000", "120119"):
        columns, _ = run(engine, name, region, **values)
        assert columns


def test_trail_in_time_order_and_once_each(engine):
    columns, rows = run(engine, "trail", None, ids=[PERSON])
    regions = [dict(zip(columns, r))["region"] for r in rows]
    assert regions == ["130822", "110112", "120119"]


def test_trail_region_filter_hides_other_regions(engine):
    columns, rows = run(engine, "trail", "120000", ids=[PERSON])
    assert [dict(zip(columns, r))["region"] for r in rows] == ["120119"]
    assert run(engine, "trail", "440000", ids=[PERSON])[1] == []


def test_hits_and_time_to_hit(engine):
    columns, rows = run(engine, "hits")
    assert [dict(zip(columns, r))["hits"] for r in rows] == [1]
    assert run(engine, "hits", "110000")[1] == []
    columns, rows = run(engine, "time-to-hit")
    assert dict(zip(columns, rows[0]))["p50_s"] == 60.0


def test_ad_hoc_sql_is_scoped_to_the_region_and_refuses_other_tables(engine):
    from gateway.history import adhoc_sql

    sql = adhoc_sql("SELECT region FROM events ORDER BY region", analyst("110000"), "110000", "intelbus")
    assert [r[0] for r in engine.query(sql)[1]] == ["110112"]  # Tongzhou only, once: Beijing sees nothing else
    with pytest.raises(ValueError, match="audit_log"):
        adhoc_sql("SELECT * FROM audit_log", analyst("110000"), "110000", "intelbus")


def test_ad_hoc_sql_reads_each_event_once_although_the_sink_stored_it_twice(engine):
    from gateway.history import adhoc_sql

    rec = event("incident", "110112", "TWICE", 40, persons=[])
    row, subjects = event_rows("incident", rec, topic="intel.incident.unique", partition=0, offset=1, ingested_ms=T)
    engine.execute("SYSTEM STOP MERGES intelbus.events")
    try:
        for _ in range(2):  # a crash between insert and commit: the sink inserts the batch again
            engine.insert("events", COLUMNS["events"], [row])
        raw = "SELECT count() FROM intelbus.events WHERE source_ref = 'TWICE'"
        assert engine.query(raw)[1] == [(2,)]
        scoped = adhoc_sql("SELECT count() FROM events WHERE source_ref = 'TWICE' AND title != 'FROM events'",
                           analyst("110000"), "110000", "intelbus")
        assert engine.query(scoped)[1] == [(1,)]
    finally:
        engine.execute("SYSTEM START MERGES intelbus.events")
