"""workflow_events (sinks/migrations/0004_workflow.sql) on chDB: the sink's rows of intel.workflow,
a replayed event stored once, the columns the gateway's queue and item history read."""
from __future__ import annotations

import pytest

from sinks.engine import ChdbExecutor
from sinks.migrate import apply_migrations
from sinks.rows import COLUMNS, WORKFLOW_COLUMNS, workflow_row
from sinks.sink import TOPICS, WORKFLOW_TOPIC, RowBuilder
from workflows.model import WorkflowEvent

chdb = pytest.importorskip("chdb")
T = 1_795_000_000_000


def sent(**extra) -> dict:
    ev = WorkflowEvent(item_id="R-0123456789ab", item_kind="ASSISTANCE_REQUEST", event_type="SENT", seq=1, at=T + 1234,
                       status="OPEN", actor="hb-cc", actor_agency="130000/COMMAND_CENTER",
                       party="130822/CRIMINAL_INVESTIGATION", party_status="SENT",
                       to=("130822/CRIMINAL_INVESTIGATION",), notify=("130000", "130822"), deadline="accept",
                       due_at=T + 3_600_000, code="URGENT", text="where is he?", refs=("RESIDENT_ID:1",),
                       command_id="c-1")
    return {**ev.to_avro(), **extra}


class Msg:
    def __init__(self, topic, value, partition=0, offset=7):
        self._t, self._v, self._p, self._o = topic, value, partition, offset

    def topic(self): return self._t
    def value(self): return self._v
    def partition(self): return self._p
    def offset(self): return self._o


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb")), database="intelbus")
    apply_migrations(ex)
    yield ex
    ex.close()


def test_the_sink_reads_intel_workflow_into_workflow_events():
    assert WORKFLOW_TOPIC == "intel.workflow" and WORKFLOW_TOPIC in TOPICS
    record = sent()
    [(table, row)] = RowBuilder(lambda value: value)(Msg(WORKFLOW_TOPIC, record))
    assert table == "workflow_events" and len(row) == len(WORKFLOW_COLUMNS) == len(COLUMNS["workflow_events"])
    named = dict(zip(WORKFLOW_COLUMNS, row))
    assert named["event_id"] == record["event_id"] and named["at_ms"] == T + 1234 and named["due_ms"] == T + 3_600_000
    assert named["scheduled_ms"] is None and named["minutes"] is None and named["offset"] == 7
    assert named["notify"] == ["130000", "130822"] and named["topic"] == "intel.workflow"


def test_a_replayed_event_is_stored_once_and_nulls_stay_null(engine):
    first = workflow_row(sent(), topic=WORKFLOW_TOPIC, partition=0, offset=1, ingested_ms=T)
    again = workflow_row(sent(), topic=WORKFLOW_TOPIC, partition=0, offset=9, ingested_ms=T + 5)  # redelivered
    other = workflow_row(sent(event_id="00000000-0000-5000-8000-000000000001", event_type="ACCEPTED", seq=2,
                              due_at=None, minutes=15, party_status="ACCEPTED"),
                         topic=WORKFLOW_TOPIC, partition=0, offset=2, ingested_ms=T)
    engine.insert("workflow_events", WORKFLOW_COLUMNS, [first])
    engine.insert("workflow_events", WORKFLOW_COLUMNS, [again, other])
    _, rows = engine.query("SELECT event_type, offset, due_ms, minutes, at, has(notify, '130822') "
                           "FROM intelbus.workflow_events FINAL WHERE item_id = 'R-0123456789ab' ORDER BY seq")
    assert [r[0] for r in rows] == ["SENT", "ACCEPTED"]
    assert rows[0][1] == 9 and rows[0][2] == T + 3_600_000 and rows[0][3] is None and rows[0][5] == 1
    assert rows[1][2] is None and rows[1][3] == 15
    assert str(rows[0][4]).startswith("2026-11-18")  # DateTime in UTC, whole seconds


def test_the_workflow_scope_is_the_rule_of_hits_on_notify(engine):
    """gateway.history.kind_scopes()['workflow'] on chDB: Hebei and Xinglong see the request, Jiangsu does not,
    nor a reader cleared below its classification."""
    from gateway.history import UNSCOPED, kind_scopes
    from identity.entitlement import Entitlement
    from identity.principals import Identity
    from schemas.regions import load_regions

    secret = workflow_row(sent(event_id="00000000-0000-5000-8000-0000000000ff", item_id="R-00000000000s",
                               classification="SECRET"), topic=WORKFLOW_TOPIC, partition=0, offset=3, ingested_ms=T)
    engine.insert("workflow_events", WORKFLOW_COLUMNS, [secret])

    def seen(region, clearance="INTERNAL"):
        ent = Entitlement(Identity(name="a", kind="person", region=region, branch="COMMAND_CENTER",
                                   roles=frozenset({"command_center"}), clearance=clearance), load_regions())
        scope = kind_scopes(ent, region)["workflow"]
        _, rows = engine.query(f"SELECT DISTINCT item_id FROM intelbus.workflow_events FINAL WHERE {scope} ORDER BY item_id")
        return [r[0] for r in rows]

    assert seen("130000") == seen("130822") == ["R-0123456789ab"]
    assert seen("130000", "SECRET") == ["R-00000000000s", "R-0123456789ab"]
    assert seen("320000", "SECRET") == []
    assert UNSCOPED["workflow"] == "1"
