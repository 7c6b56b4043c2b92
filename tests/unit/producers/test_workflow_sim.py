"""The workflow simulator's plan and truth (producers/workflow_sim.py), pure: an injected clock, a
fake gateway, the pure workflow core as a second opinion on the truth."""
from __future__ import annotations

import collections
import json

import pytest

from ops.verify import compare_workflow, load_truth, load_workflow_truth
from producers import workflow_sim as ws
from schemas.regions import load_regions
from workflows.policy import policy_from_document
from workflows.testing import T0

# the policy of the integration test: an hour of the default policy is 8 s (accept); step 4 s
POLICY = policy_from_document({
    "assistance_request": {"deadlines": {p: {"accept": 8, "answer": 32, "act": 600}
                                         for p in ("ROUTINE", "URGENT", "CRITICAL")}},
    "directive": {"acknowledge": 8},
    "escalation": {"step": 4},
})
REGIONS = load_regions()


def plan_of(seed=5, **kw):
    cfg = ws.WorkflowSimConfig(seed=seed, scale=ws.scale_of(POLICY), day_hours=kw.pop("day_hours", 6),
                               requests=kw.pop("requests", 14), directives=kw.pop("directives", 4), **kw)
    return ws.make_plan(cfg, POLICY, REGIONS)


def test_the_same_seed_gives_the_same_day_and_truth_and_another_seed_another():
    a, b, c = plan_of(5), plan_of(5), plan_of(6)
    assert ws.actions(a) == ws.actions(b)
    assert ws.expected_steps(a, POLICY, REGIONS) == ws.expected_steps(b, POLICY, REGIONS)
    assert ws.actions(a) != ws.actions(c)


def test_the_scale_follows_the_policy():
    assert ws.scale_of(POLICY) == 450.0  # an hour's acceptance in 8 s
    assert ws.scale_of(policy_from_document({})) == 1.0  # ops/workflows.yaml's own: real time


@pytest.mark.parametrize("seed", range(1, 41))
def test_the_truth_is_what_the_workflow_core_sends_for_the_plan(seed):
    """Two computations of the same rules: the simulator's (docs/workflows.md) and workflows.machine."""
    plan = plan_of(seed)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    events = ws.machine_events(plan, POLICY, REGIONS, T0)
    sent = {e.item_id: e.at for e in events if e.event_type in ("SENT", "ISSUED")}
    core = sorted((e.item_id, e.deadline, e.level, e.event_type, e.party, tuple(e.to), e.scheduled_at - sent[e.item_id],
                   e.due_at - sent[e.item_id]) for e in events if e.event_type in ws.STEP_EVENTS)
    truth = sorted((s.ref, s.deadline, s.level, s.event_type, s.party, s.to, s.at_ms, s.due_ms) for s in steps)
    assert truth == core


def test_a_day_has_answers_in_time_late_never_and_refused_and_each_kind_of_step():
    plan = plan_of(5, requests=40, directives=10, day_hours=24)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    fates = collections.Counter(p.fate for it in plan.items for p in it.parties)
    assert {"answered", "refused", "never", "reported DONE", "reported CANNOT"} <= set(fates), fates
    kinds = collections.Counter(s.event_type for s in steps)
    assert kinds["REMINDED"] and kinds["ESCALATED"] and kinds["RESENT"], kinds
    # late: answered after a reminder (the reminder is in the truth, the answer in the plan)
    late = {s.ref for s in steps if s.deadline.startswith("accept:")} & {
        it.ref for it in plan.items for p in it.parties if p.fate == "answered"}
    assert late
    # never: the whole ladder, up to the zone's office
    xl = [s for s in steps if s.party == "130822/CRIMINAL_INVESTIGATION" and s.deadline.startswith("answer:")]
    for s in xl:
        assert s.to == (("130822/CRIMINAL_INVESTIGATION",), ("130800/CRIMINAL_INVESTIGATION",),
                        ("130000/CRIMINAL_INVESTIGATION",), ("JJJ",))[s.level]


@pytest.mark.parametrize("seed", range(1, 21))
def test_every_action_keeps_the_margin_from_every_step_and_the_gap_from_the_last_action(seed):
    plan = plan_of(seed, requests=30, directives=8)
    assert plan.margin_ms == 1000  # 0.25 of the 4 s step
    for it in plan.items:
        boundaries = [due + k * step for _n, due, step, lad in ws.deadline_steps(it, POLICY, REGIONS)
                      for k in range(len(lad) + 1)]
        for p in it.parties:
            times = [t for t in (p.accept_ms, p.refuse_ms, p.answer_ms) if t is not None]
            prev = 0
            for t in times:
                assert t - prev >= 3000, (it.ref, p)
                assert min(abs(t - b) for b in boundaries) >= plan.margin_ms, (it.ref, p, t)
                prev = t
        if it.close_ms is not None:
            assert it.close_ms > max(boundaries)  # closed only after every step could have fired


def test_the_truth_file_keeps_the_old_reader_working_and_has_the_workflow_records(tmp_path):
    plan = plan_of(5)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    path = tmp_path / "truth.jsonl"
    ws.write_truth(str(path), plan, steps, POLICY, {"item_ids": {it.ref: f"X-{it.ref}" for it in plan.items}})
    summary, hits = load_truth(str(path))  # the hit reader: a summary, no hits, no crash
    assert summary["mode"] == "workflow" and hits == {}
    summary, items, recs = load_workflow_truth(str(path))
    assert summary["steps"] == len(steps) == len(recs) and len(items) == len(plan.items)
    assert all(r["item_id"] == f"X-{r['ref']}" for r in recs)
    assert json.loads(path.read_text().splitlines()[0])["policy"]["escalation_step_s"] == 4


# --- verify's comparison ------------------------------------------------------------------------


def rows_of(events) -> list[dict]:
    """WorkflowEvents as workflow_events rows (what the sink stores)."""
    return [ws.event_row(e) for e in events]


def truth_and_rows(seed=5):
    plan = plan_of(seed)
    ids = {it.ref: f"R-{n:012x}" for n, it in enumerate(plan.items)}
    due_at = {it.ref: T0 + it.at_ms + it.due_after_ms for it in plan.items if it.kind == "DIRECTIVE"}
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    records = ws.truth_records(plan, steps, POLICY, ids, {"due_at": due_at})
    items = [r for r in records if r["type"] == "workflow_item"]
    recs = [r for r in records if r["type"] == "workflow_step"]
    rows = rows_of(ws.machine_events(plan, POLICY, REGIONS, T0, item_ids=ids, due_at=due_at))
    return items, recs, rows


def test_verify_is_exact_on_what_a_correct_bus_stores():
    items, steps, rows = truth_and_rows()
    v = compare_workflow(items, steps, rows)
    assert v.exact, v.lines()
    assert v.expected_steps == v.found_steps == len(steps) > 20


def test_verify_lists_a_missing_an_extra_a_doubled_and_a_misaddressed_step_by_item():
    items, steps, rows = truth_and_rows()
    step_rows = [r for r in rows if r["event_type"] in ws.STEP_EVENTS]
    gone, extra, doubled, wrong = step_rows[0], step_rows[1], step_rows[2], step_rows[3]
    rows = [r for r in rows if r is not gone]
    steps = [s for s in steps if not (s["item_id"] == extra["item_id"] and s["deadline"] == extra["deadline"]
                                      and s["level"] == extra["level"])]
    rows.append({**doubled, "event_id": "another-id"})
    rows = [({**r, "to": ["110000/COMMAND_CENTER"]} if r is wrong else r) for r in rows]
    v = compare_workflow(items, steps, rows)
    assert not v.exact
    assert [(m["item_id"], m["deadline"], m["level"]) for m in v.missing] == [
        (gone["item_id"], gone["deadline"], gone["level"])]
    assert [(m["item_id"], m["deadline"], m["level"]) for m in v.extra] == [
        (extra["item_id"], extra["deadline"], extra["level"])]
    assert len(v.twice) == 1 and "another-id" in v.twice[0]["event_ids"]
    assert len(v.wrong) == 1 and "to ['110000/COMMAND_CENTER']" in v.wrong[0]["problems"][0]
    assert any(line.startswith("missing: ") and gone["item_id"] in line for line in v.lines())


def test_verify_reports_a_step_scheduled_at_another_time_and_an_item_never_sent():
    items, steps, rows = truth_and_rows()
    i = next(n for n, r in enumerate(rows) if r["event_type"] == "REMINDED")
    rows[i] = {**rows[i], "scheduled_ms": rows[i]["scheduled_ms"] + 1, "due_ms": rows[i]["due_ms"] + 1}
    items[0] = {**items[0], "item_id": None}
    v = compare_workflow(items, steps, rows)
    assert any("ms after sending" in p for w in v.wrong for p in w["problems"]), v.wrong
    assert v.unplayed == [items[0]["ref"]]


# --- the play, on a fake gateway and clock ------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1_790_000_000.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += max(s, 0)


class FakeGateway:
    """Answers like the workflow API; `lag` calls of 409 before an answer (the history behind)."""

    def __init__(self, clock, latency=0.05, lag=0):
        self.clock, self.latency, self.lag, self.calls, self.n = clock, latency, lag, [], 0
        self.refused: dict[str, int] = {}

    def client(self, agency):
        gw = self

        class C:
            def post(self, path, body):
                from gateway.client import ClientError

                gw.clock.now += gw.latency
                gw.calls.append((gw.clock.now, agency, path, body))
                if path.endswith("/answer") and gw.refused.get(path, 0) < gw.lag:
                    gw.refused[path] = gw.refused.get(path, 0) + 1
                    raise ClientError("not yet ACCEPTED", 409)
                if path in ("/api/v1/requests", "/api/v1/directives"):
                    gw.n += 1
                    return {"item_id": f"{'R' if 'requests' in path else 'D'}-{gw.n:012x}"}
                return {"status": "sent"}
        return C()


def test_play_sends_each_action_at_its_time_as_its_agency():
    plan = plan_of(5)
    clock = FakeClock()
    gw = FakeGateway(clock)
    out = ws.play(plan, gw, lead_s=1.0, clock=clock, sleep=clock.sleep, workers=0)
    assert not out["failed"] and not out["slips"] and out["actions"] == len(ws.actions(plan))
    t0 = out["started_ms"] / 1000
    assert len(gw.calls) == len(ws.actions(plan))
    for (at, agency, path, body), a in zip(gw.calls, ws.actions(plan)):
        assert agency == a.agency
        assert abs(at - (t0 + a.at_ms / 1000)) < 0.1 + 0.05 * len(gw.calls)  # sequential, 50 ms each
        if a.verb == "refuse":
            assert body["reason_code"] in ws.REFUSAL_REASONS
    sends = [c for c in gw.calls if c[2] == "/api/v1/requests"]
    assert all(len(b["to"]) >= 1 and b["subjects"][0].startswith("PHONE:") for _t, _a, _p, b in sends)
    issued = [c for c in gw.calls if c[2] == "/api/v1/directives"]
    assert set(out["due_at"]) == {it.ref for it in plan.items if it.kind == "DIRECTIVE"} and len(issued) == 4
    assert set(out["item_ids"]) == {it.ref for it in plan.items}


def test_play_waits_for_the_history_within_the_margin_and_reports_what_it_could_not_place():
    plan = plan_of(5)
    clock = FakeClock()
    out = ws.play(plan, FakeGateway(clock, lag=2), lead_s=1.0, clock=clock, sleep=clock.sleep, workers=0)
    assert not out["failed"] and not out["slips"]  # two 409s (0.3 s) stay within the 1 s margin
    clock = FakeClock()
    out = ws.play(plan, FakeGateway(clock, latency=0.6), lead_s=1.0, clock=clock, sleep=clock.sleep, workers=0)
    assert out["slips"] and all(s["planned_ms"] > 0 for s in out["slips"])  # a slow gateway: the truth is uncertain


def test_the_truth_of_a_play_whose_accept_was_refused_holds_the_ladder_that_follows():
    plan = plan_of(5)
    it, p = next((it, p) for it in plan.items for p in it.parties
                 if it.kind == "ASSISTANCE_REQUEST" and p.fate == "answered" and p.accept_ms < 8000)
    before = [s for s in ws.expected_steps(plan, POLICY, REGIONS) if s.ref == it.ref and s.party == p.who]
    played = {"item_ids": {x.ref: x.ref for x in plan.items},
              "failed": [{"ref": it.ref, "verb": "accept", "agency": p.who, "status": 409},
                         {"ref": it.ref, "verb": "answer", "agency": p.who, "status": 409}]}
    after = [s for s in ws.expected_steps(ws.as_played(plan, played), POLICY, REGIONS)
             if s.ref == it.ref and s.party == p.who]
    assert not [s for s in before if s.deadline.startswith("accept:")]
    # never accepted now: reminded at 8 s, then escalated every 4 s until the requester closes
    assert [(s.deadline.split(":")[0], s.level, s.at_ms) for s in after if s.deadline.startswith("accept:")][:2] == [
        ("accept", 0, 8000), ("accept", 1, 12000)]
    assert plan_of(5).items == plan.items  # the plan itself is unchanged
    gone = ws.as_played(plan, {"item_ids": {x.ref: x.ref for x in plan.items[1:]}, "failed": []})
    assert [x.ref for x in gone.items] == [x.ref for x in plan.items[1:]]  # an item never sent has no truth


def test_verify_tells_an_action_stored_across_a_step_from_a_fault_of_the_bus():
    items, steps, rows = truth_and_rows()
    it = next(i for i in items if i["item_kind"] == "ASSISTANCE_REQUEST"
              and any(a["verb"] == "accept" and a["planned_ms"] < 8000 for a in i["actions"]))
    accept = next(a for a in it["actions"] if a["verb"] == "accept")
    sent = next(r["at_ms"] for r in rows if r["item_id"] == it["item_id"] and r["event_type"] == "SENT")
    # the gateway stamped the acceptance 9 s after sending: after the 8 s reminder the truth does not expect
    rows = [({**r, "at_ms": sent + 9000} if r["item_id"] == it["item_id"] and r["event_type"] == "ACCEPTED"
             and r["party"] == accept["agency"] else r) for r in rows]
    v = compare_workflow(items, steps, rows)
    assert [(o["item_id"], o["verb"], o["deadline"], o["level"]) for o in v.off_plan] == [
        (it["item_id"], "accept", f"accept:{accept['agency']}", 0)]
    assert not v.exact and not v.missing
    rows = [r for r in rows if not (r["item_id"] == it["item_id"] and r["event_type"] == "ACCEPTED")]
    v = compare_workflow(items, steps, rows)
    assert [(x["item_id"], x["verb"]) for x in v.lost] == [(it["item_id"], "accept")]


# --- the scorecard truth ------------------------------------------------------------------------


def test_the_expected_scorecard_counts_the_plan():
    from workflows.scorecard import scorecard

    plan = plan_of(5)
    card = {r["agency"]: r for r in ws.expected_scorecard(plan, POLICY, REGIONS, T0)}
    received = collections.Counter(p.who for it in plan.items if it.kind == "ASSISTANCE_REQUEST" for p in it.parties)
    assert {a: r["requests_received"] for a, r in card.items() if r["requests_received"]} == dict(received)
    accept_s = POLICY.request("ROUTINE").accept_s * 1000
    on_time = collections.Counter(p.who for it in plan.items if it.kind == "ASSISTANCE_REQUEST" for p in it.parties
                                  if p.accept_ms is not None and p.accept_ms <= accept_s)
    assert {a: r["accepted_on_time"] for a, r in card.items() if r["accepted_on_time"]} == dict(on_time)
    refused = collections.Counter(p.who for it in plan.items for p in it.parties if p.refuse_ms is not None)
    assert {a: r["refusals"] for a, r in card.items() if r["refusals"]} == dict(refused)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    escalated = collections.Counter(s.party for s in steps if s.event_type == "ESCALATED")
    assert {a: r["escalations"] for a, r in card.items() if r["escalations"]} == dict(escalated)
    assert scorecard([], start_ms=0, end_ms=1) == []


def scored(seed=5):
    items, steps, rows = truth_and_rows(seed)
    plan = plan_of(seed)
    ids = {r["ref"]: r["item_id"] for r in items}
    due_at = {it.ref: T0 + it.at_ms + it.due_after_ms for it in plan.items if it.kind == "DIRECTIVE"}
    card = ws.expected_scorecard(plan, POLICY, REGIONS, T0, ids, due_at)
    return items, steps, rows, card, ws.scorecard_period(plan, T0)


def test_verify_finds_the_scorecard_equal_and_tells_a_count_from_a_response_time_within_the_margin():
    from ops.verify import compare_scorecard

    items, steps, rows, card, period = scored()
    v = compare_workflow(items, steps, rows)
    compare_scorecard(v, card, rows, period, 1.0)
    assert v.exact and v.scorecard_rows == len(card) > 5, v.lines()
    # every response stamped 0.8 s later: medians move by 0.8 s, within the 1 s margin; on time stays on time
    late = [({**r, "at_ms": r["at_ms"] + 800} if r["event_type"] in ("ACCEPTED", "REFUSED", "ANSWERED") else r)
            for r in rows]
    v = compare_workflow(items, steps, late)
    compare_scorecard(v, card, late, period, 1.0)
    assert not v.scorecard_diffs, v.scorecard_diffs
    # a refusal the bus lost: the agency's refusals differ, and the verdict names the agency and the column
    refused = next(r for r in rows if r["event_type"] == "REFUSED")
    fewer = [r for r in rows if r is not refused]
    v = compare_workflow(items, steps, fewer)
    compare_scorecard(v, card, fewer, period, 1.0)
    cols = {(d["agency"], d["column"]) for d in v.scorecard_diffs}
    assert (refused["party"], "refusals") in cols and (refused["party"], f"refused_{refused['code'].lower()}") in cols
    assert not v.exact


def test_verify_reads_a_workflow_topic_record_as_the_sink_stores_it():
    from ops.verify import avro_row

    events = ws.machine_events(plan_of(5), POLICY, REGIONS, T0)
    for e in events:
        row, stored = avro_row(e.to_avro()), ws.event_row(e)
        assert row == {k: stored[k] for k in row}, e


def test_verify_says_when_an_extra_reminder_fired_before_an_earlier_stamped_action_reached_the_job():
    items, steps, rows = truth_and_rows()
    accepted = next(r for r in rows if r["event_type"] == "ACCEPTED")
    sent = next(r for r in rows if r["item_id"] == accepted["item_id"] and r["event_type"] == "SENT")
    due = sent["at_ms"] + 8000
    # the job fired the reminder at 8 s, then applied the acceptance stamped at (say) 5 s: seq after it
    reminder = {**accepted, "event_id": "late-reminder", "event_type": "REMINDED", "deadline": f"accept:{accepted['party']}",
                "level": 0, "to": [accepted["party"]], "due_ms": due, "scheduled_ms": due, "at_ms": due,
                "seq": accepted["seq"]}
    later = [({**r, "seq": r["seq"] + 1} if r["item_id"] == accepted["item_id"] and r["seq"] >= accepted["seq"] else r)
             for r in rows]
    v = compare_workflow(items, steps, later + [reminder])
    extra = [e for e in v.extra if e["item_id"] == accepted["item_id"]]
    assert len(extra) == 1 and "reached the workflow job after the step's time" in extra[0]["why"], v.extra


def test_verify_reads_the_stored_history_on_chdb_and_finds_it_exact(tmp_path):
    """The SQL of verify's stored-history path on chDB (the stack's ClickHouse 18.16 runs it in the
    integration tests), over workflow_events rows as the sink writes them, some delivered twice."""
    pytest.importorskip("chdb")
    from ops.verify import compare_scorecard, workflow_rows
    from sinks.engine import ChdbExecutor
    from sinks.migrate import apply_migrations
    from sinks.rows import WORKFLOW_COLUMNS, workflow_row

    plan = plan_of(5)
    ids = {it.ref: f"R-{n:012x}" for n, it in enumerate(plan.items)}
    due_at = {it.ref: T0 + it.at_ms + it.due_after_ms for it in plan.items if it.kind == "DIRECTIVE"}
    events = ws.machine_events(plan, POLICY, REGIONS, T0, item_ids=ids, due_at=due_at)
    ex = ChdbExecutor(str(tmp_path / "chdb"), database="intelbus")
    try:
        apply_migrations(ex)
        rows = [workflow_row(e.to_avro(), topic="intel.workflow", partition=0, offset=i, ingested_ms=T0)
                for i, e in enumerate(events)]
        ex.insert("workflow_events", WORKFLOW_COLUMNS, rows)
        ex.insert("workflow_events", WORKFLOW_COLUMNS, rows[::4])  # redelivered: one row per event id
        stored = workflow_rows(None, list(ids.values()), idle_seconds=0.5, timeout=10, executor=ex)
    finally:
        ex.close()
    assert len(stored) == len(events)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    records = ws.truth_records(plan, steps, POLICY, ids, {"due_at": due_at})
    items = [r for r in records if r["type"] == "workflow_item"]
    v = compare_workflow(items, [r for r in records if r["type"] == "workflow_step"], stored)
    compare_scorecard(v, ws.expected_scorecard(plan, POLICY, REGIONS, T0, ids, due_at), stored,
                      ws.scorecard_period(plan, T0), 1.0)
    assert v.exact and v.found_steps == len(steps) and v.scorecard_rows > 5, v.lines()


def test_the_delays_are_lognormal_with_the_documented_median_and_spread():
    import math
    import random
    import statistics

    rng = random.Random(3)
    cfg = ws.WorkflowSimConfig()
    draws = sorted(cfg.accept.draw(rng) for _ in range(4000))
    assert 0.95 * 35 < statistics.median(draws) < 1.05 * 35  # minutes
    assert 0.85 * 0.9 < statistics.pstdev(math.log(x) for x in draws) < 1.15 * 0.9
    assert cfg.to_ms(60) == 1000 * 3600 / cfg.scale  # an hour of the day, compressed 3600 times: 1 s
