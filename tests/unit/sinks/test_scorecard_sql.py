"""sinks/queries/scorecard.sql on chDB equals workflows.scorecard row by row (equal, not approximately),
over workflow traffic the state machine really emits: requests to one to three agencies answered
after random delays (some late, some refused, some never), hit follow-ups confirmed early, late or
never, directives nobody acknowledges; every event stored twice."""
from __future__ import annotations

import random

import pytest

from gateway.history import UNSCOPED, in_database, kind_scopes
from identity.entitlement import Entitlement
from identity.principals import Identity
from schemas.regions import load_regions
from sinks.engine import ChdbExecutor
from sinks.migrate import apply_migrations
from sinks.queries import load_queries
from sinks.rows import WORKFLOW_COLUMNS, workflow_row
from workflows import model as m
from workflows.machine import WorkflowRefusal
from workflows.scorecard import COLUMNS, REFUSAL_REASONS, scorecard
from workflows.testing import HOUR, MIN, T0, Runner, person

chdb = pytest.importorskip("chdb")
REGIONS = load_regions()
AGENCIES = ("130822/CRIMINAL_INVESTIGATION", "130822/PUBLIC_ORDER", "131000/PUBLIC_ORDER",
            "120119/COMMAND_CENTER", "110112/CRIMINAL_INVESTIGATION")
REQUESTER = person("110000", "COMMAND_CENTER", name="zhang")
DAY = 24 * HOUR


def _actor(agency: str):
    return person(m.region_of(agency), m.branch_of(agency), name=f"p-{agency}")


def _run(runner: Runner, plan: list, until: int):
    """Apply (time, command-maker) in time order, firing every deadline step due on the way."""
    for at, make in sorted(plan, key=lambda p: p[0]):
        runner.clock.at(at)
        runner.fire_due()
        try:
            runner.apply(make(runner))
        except WorkflowRefusal:
            pass  # e.g. an answer planned after the requester closed it: the bus refuses it too
    runner.clock.at(until)
    runner.fire_due()


def traffic(seed: int, requests: int = 60, hits: int = 25, directives: int = 3) -> list[dict]:
    """Events (WorkflowEvent.to_avro()) of random items over three days from T0."""
    rng = random.Random(seed)
    until = T0 + 4 * DAY
    events = []
    for i in range(requests):
        r, plan, item = Runner(), [], f"R-{seed}-{i}"
        sent = T0 + rng.randrange(3 * DAY)
        addressees = tuple(rng.sample(AGENCIES, rng.choice((1, 1, 2, 3))))
        plan.append((sent, lambda r, a=addressees, it=item: m.SendRequest(
            r.next_id(), it, REQUESTER, a, rng.choice(m.PRIORITIES), (m.Identifier("PHONE", "13800138000"),), "where")))
        for a in addressees:
            fate = rng.random()
            accept_at = sent + rng.randrange(1, 3 * HOUR)
            if fate < 0.15:
                continue  # never responds
            if fate < 0.3:
                reason = rng.choice(REFUSAL_REASONS)
                plan.append((accept_at, lambda r, a=a, it=item, why=reason: m.RefuseRequest(
                    r.next_id(), it, _actor(a), why, "not ours" if why == "OTHER" else "")))
                continue
            plan.append((accept_at, lambda r, a=a, it=item: m.AcceptRequest(r.next_id(), it, _actor(a))))
            if fate < 0.9:
                plan.append((accept_at + rng.randrange(1, 5 * HOUR), lambda r, a=a, it=item: m.AnswerRequest(
                    r.next_id(), it, _actor(a), "found")))
        _run(r, plan, until)
        events += r.events
    for i in range(hits):
        r, plan, item = Runner(), [], f"H-{seed}-{i}"
        owner = rng.choice(("130822", "131000", "120119"))
        opened = T0 + rng.randrange(3 * DAY)
        plan.append((opened, lambda r, o=owner, it=item: m.OpenHit(
            it, it, m.Actor.bus(), "WANTED_PERSON", o, "110112", m.Identifier("RESIDENT_ID", "11010519491231002X"),
            f"{o}/s/{it}", danger_level=rng.choice(("HIGH", "LOW")))))
        if rng.random() < 0.5:
            plan.append((opened + rng.randrange(1, 20 * MIN), lambda r, it=item: m.ReportAction(
                r.next_id(), it, person("110112"), "DETAINED")))
        fate = rng.random()
        if fate < 0.2:
            plan.append((opened + rng.randrange(1, 10 * MIN), lambda r, o=owner, it=item: m.ConfirmHit(
                r.next_id(), it, person(o), "NEED_TIME", 30)))
        if fate < 0.85:
            plan.append((opened + rng.randrange(10 * MIN, 90 * MIN), lambda r, o=owner, it=item: m.ConfirmHit(
                r.next_id(), it, person(o), rng.choice(("CONFIRMED", "CONFIRMED", "NOT_VALID")))))
        _run(r, plan, until)
        events += r.events
    for i in range(directives):
        r, item = Runner(), f"D-{seed}-{i}"
        issued = T0 + rng.randrange(3 * DAY)
        _run(r, [(issued, lambda r, it=item, at=issued: m.IssueDirective(
            r.next_id(), it, person("130000"), ("130822", "131000"), "checkpoints", at + 2 * HOUR))], issued + 6 * HOUR)
        events += r.events
    return [e.to_avro() for e in events]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb")), database="intelbus")
    apply_migrations(ex)
    events = traffic(7)
    rows = [workflow_row(e, topic="intel.workflow", partition=0, offset=i, ingested_ms=T0) for i, e in enumerate(events)]
    ex.execute("SYSTEM STOP MERGES intelbus.workflow_events")
    ex.insert("workflow_events", WORKFLOW_COLUMNS, rows)
    ex.insert("workflow_events", WORKFLOW_COLUMNS, rows[::3])  # a third redelivered: FINAL reads each once
    yield ex, events
    ex.execute("SYSTEM START MERGES intelbus.workflow_events")
    ex.close()


def run_sql(ex, scopes=UNSCOPED, **values) -> list[dict]:
    q = load_queries()["scorecard"]
    columns, rows = ex.query(in_database(q.render(values, scopes), "intelbus"))
    assert tuple(columns) == (*COLUMNS, "period_from", "period_to")  # the period, for a monthly CSV
    return [dict(zip(COLUMNS, r)) for r in rows]


def utc(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize("by", ["region,branch", "region"])
@pytest.mark.parametrize("period", [(0, 5 * DAY), (DAY, 2 * DAY), (DAY + 7 * HOUR, DAY + 19 * HOUR)])
def test_the_sql_scorecard_equals_the_pure_function_row_by_row(loaded, by, period):
    ex, events = loaded
    start, end = T0 - T0 % 1000 + period[0], T0 - T0 % 1000 + period[1]
    want = scorecard(events, start_ms=start, end_ms=end, by=tuple(by.split(",")))
    got = run_sql(ex, **{"from": utc(start), "to": utc(end), "by": by})
    assert got == want
    # the traffic exercises every column: not a comparison of empty tables
    total = {c: sum(r[c] or 0 for r in want) for c in COLUMNS[3:]}
    assert all(total[c] > 0 for c in ("requests_received", "accepted_on_time", "answered_on_time", "escalations",
                                      "refusals", "hits_owed", "hits_confirmed_on_time")), total
    if period == (0, 5 * DAY):
        assert total["stale_listings"] > 0 and total["accepted_on_time"] < total["requests_received"]


def test_a_reader_sees_the_scorecard_of_the_items_it_may_see(loaded):
    ex, events = loaded
    ent = Entitlement(Identity(name="a", kind="person", region="120000", branch="INTELLIGENCE",
                               roles=frozenset({"analyst"}), clearance="INTERNAL"), REGIONS)
    got = run_sql(ex, kind_scopes(ent, "120000"), by="region")
    visible = [e for e in events if REGIONS.may_see("120000", e["notify"])]
    want = [r for r in scorecard(visible, start_ms=0, end_ms=2**62, by=("region",)) if r["region"].startswith("12")]
    assert got == want and [r["agency"] for r in got] == ["120119"]  # not Hebei's or Beijing's agencies
    everyone = {r["agency"]: r for r in run_sql(ex, by="region")}
    assert got[0] == everyone["120119"] and len(everyone) > 1  # Tianjin's own row is whole: it sees every event of it
