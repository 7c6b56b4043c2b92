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

# a policy in seconds like the integration test's: an hour of the default policy is 8 s (accept); step 4 s;
# joint action in 40 s; a hit confirmed in 8 s (urgent) or 24 s; a stale listing after 16 s
POLICY = policy_from_document({
    "assistance_request": {"deadlines": {p: {"accept": 8, "answer": 32, "act": 40}
                                         for p in ("ROUTINE", "URGENT", "CRITICAL")}},
    "directive": {"acknowledge": 8},
    "escalation": {"step": 4},
    "hit_follow_up": {"confirm_urgent": 8, "confirm_routine": 24, "stale_listing_after": 16},
})
REGIONS = load_regions()


def plan_of(seed=5, **kw):
    cfg = ws.WorkflowSimConfig(seed=seed, scale=ws.scale_of(POLICY), day_hours=kw.pop("day_hours", 6),
                               requests=kw.pop("requests", 14), directives=kw.pop("directives", 4),
                               hits=kw.pop("hits", 8), **kw)
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
    sent = {e.item_id: e.at for e in events if e.event_type in ("SENT", "ISSUED", "OPENED")}
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
    """Answers like the workflow API; `lag` calls of 409 before an answer (the history behind). Also the
    bus behind it for hits: a published sighting opens its follow-up `detect` seconds later."""

    def __init__(self, clock, latency=0.05, lag=0, records=None, detect=0.3):
        self.clock, self.latency, self.lag, self.calls, self.n = clock, latency, lag, [], 0
        self.refused: dict[str, int] = {}
        self.by_sighting = {r.sighting["source_ref"]: r.hit_id for r in (records or {}).values()}
        self.detect, self.opened, self.published = detect, {}, []

    def publish(self, kind, record, now_ms):
        self.published.append((now_ms, kind, record))
        if record["source_ref"] in self.by_sighting:
            self.opened[self.by_sighting[record["source_ref"]]] = now_ms + int(self.detect * 1000)

    def client(self, agency):
        gw = self

        class C:
            def get(self, path):
                from gateway.client import ClientError

                gw.clock.now += gw.latency
                at = gw.opened.get(path.rsplit("/", 1)[1])
                if at is None or gw.clock.now * 1000 < at:
                    raise ClientError("no such item yet", 404)
                return {"events": [{"event_type": "OPENED", "at_ms": at}]}

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


def played_fake(plan, **kw):
    clock = FakeClock()
    records = ws.attach_records(plan, "WFT1-")
    gw = FakeGateway(clock, records=records, **kw)
    out = ws.play(plan, gw, lead_s=1.0, clock=clock, sleep=clock.sleep, workers=0, records=records,
                  publisher=gw.publish)
    return out, gw, records


def test_play_sends_each_action_at_its_time_as_its_agency():
    plan = plan_of(5, hits=0)
    out, gw, _ = played_fake(plan)
    assert not out["failed"] and not out["slips"] and out["actions"] == len(ws.actions(plan))
    t0 = out["started_ms"] / 1000
    assert len(gw.calls) == len(ws.actions(plan))
    for (at, agency, path, body), a in zip(gw.calls, ws.actions(plan)):
        assert agency == a.agency
        assert abs(at - (t0 + a.at_ms / 1000)) < 0.1 + 0.05 * len(gw.calls)  # sequential, 50 ms each
        if a.verb == "refuse":
            assert body["reason_code"] in ws.REFUSAL_REASONS
        if a.verb == "act":
            assert path.endswith("/joint")
    sends = [c for c in gw.calls if c[2] == "/api/v1/requests"]
    assert all(len(b["to"]) >= 1 and b["subjects"][0].startswith("PHONE:") for _t, _a, _p, b in sends)
    issued = [c for c in gw.calls if c[2] == "/api/v1/directives"]
    assert set(out["due_at"]) == {it.ref for it in plan.items if it.kind == "DIRECTIVE"} and len(issued) == 4
    assert set(out["item_ids"]) == {it.ref for it in plan.items}


def test_play_publishes_the_listings_first_and_acts_on_a_hit_at_its_offsets_from_its_opening():
    plan = plan_of(5, requests=0, directives=0)
    out, gw, records = played_fake(plan, detect=0.4)  # one at a time: a long wait for an opening holds up the rest
    assert not out["failed"] and not out["slips"], out
    listings = [r["source_ref"] for _t, _k, r in gw.published[:len(records)]]
    assert listings == [r.listing["source_ref"] for r in records.values()]
    assert set(out["item_ids"]) == set(records) and set(out["anchors"]) == set(records)
    by_hit = {r.hit_id: ref for ref, r in records.items()}
    acted = 0
    for at, agency, path, body in gw.calls:
        ref = by_hit[path.split("/")[4]]
        h = next(it for it in plan.items if it.ref == ref).hit
        planned = h.action_ms if path.endswith("/report") else h.need_ms if body["answer"] == "NEED_TIME" \
            else h.answer_ms
        if path.endswith("/report"):
            assert agency == f"{h.sighted_in}/COMMAND_CENTER" and body["action"] == h.action
        else:
            assert agency == f"{h.owner}/COMMAND_CENTER" and body["answer"] in ("CONFIRMED", "NOT_VALID", "NEED_TIME")
        # at its offset from the opening, never before (one at a time here: up to a few calls after it)
        assert 0 <= at * 1000 - (out["anchors"][ref] + planned) < plan.margin_ms, (ref, path)
        acted += 1
    assert acted == sum(x is not None for it in plan.items for x in (it.hit.action_ms, it.hit.need_ms, it.hit.answer_ms))
    arrests = [(t, r) for t, k, r in gw.published if k == "wanted" and r["action"] == "ARRESTED"]
    assert len(arrests) == sum(it.hit.arrest_ms is not None for it in plan.items) > 0
    for t, r in arrests:
        ref = next(ref for ref, x in records.items() if x.record_key.endswith("/" + r["source_ref"]))
        it = next(it for it in plan.items if it.ref == ref)
        assert r["occurred_at"] == t and t - out["anchors"][ref] == it.hit.arrest_ms  # stamped at its plan
    # the truth of the play counts from the openings as they happened
    played = ws.as_played(plan, out)
    assert all(it.anchor_ms == out["anchors"][it.ref] - out["started_ms"] for it in played.items)


def test_play_waits_for_the_history_within_the_margin_and_reports_what_it_could_not_place():
    plan = plan_of(5, hits=0)
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
    from ops.verify import compare_scorecard, compare_sql_scorecard, named_scorecard, workflow_rows
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
        # someone else's item in the same period: the stack's history is shared, the named query's copy is not
        other = ws.machine_events(plan_of(6), POLICY, REGIONS, T0)
        ex.insert("workflow_events", WORKFLOW_COLUMNS, [workflow_row(e.to_avro(), topic="intel.workflow", partition=0,
                                                                      offset=i, ingested_ms=T0)
                                                         for i, e in enumerate(other)])
        stored = workflow_rows(None, list(ids.values()), idle_seconds=0.5, timeout=10, executor=ex)
        card, period = ws.expected_scorecard(plan, POLICY, REGIONS, T0, ids, due_at), ws.scorecard_period(plan, T0)
        from_history = named_scorecard(ex, "intelbus", period, list(ids.values()))
        avro = [e.to_avro() for e in events]
        # as a consumer decodes them: timestamp-millis as datetimes
        from datetime import datetime, timezone

        def as_decoded(e):
            return {**e, **{k: datetime.fromtimestamp(e[k] / 1000, timezone.utc) for k in ("at", "due_at", "scheduled_at")
                            if e.get(k) is not None}}

        from_topic = named_scorecard(ex, "intelbus", period, list(ids.values()), events=[as_decoded(e) for e in avro])
        refused = next(e for e in avro if e["event_type"] == "REFUSED")
        short = named_scorecard(ex, "intelbus", period, list(ids.values()), events=[e for e in avro if e is not refused])
        left = ex.query("SHOW DATABASES")[1]
    finally:
        ex.close()
    assert len(stored) == len(events)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    records = ws.truth_records(plan, steps, POLICY, ids, {"due_at": due_at})
    items = [r for r in records if r["type"] == "workflow_item"]
    v = compare_workflow(items, [r for r in records if r["type"] == "workflow_step"], stored)
    compare_scorecard(v, card, stored, period, 1.0)
    compare_sql_scorecard(v, card, from_history, 1.0, "chDB, from the history")
    compare_sql_scorecard(v, card, from_topic, 1.0, "chDB, from the events")
    assert v.exact and v.found_steps == len(steps) and v.scorecard_rows == v.scorecard_sql_rows > 5, v.lines()
    assert sum(r["hits_owed"] for r in from_topic) == sum(it.kind == "HIT_FOLLOW_UP" for it in plan.items) > 0
    assert not [d for (d,) in left if d.startswith("verify_")]  # the scratch databases are dropped
    # a refusal missing from the events: the named query's row of that agency differs, by column
    compare_sql_scorecard(v, card, short, 1.0, "chDB, one refusal short")
    diffs = {(d["agency"], d["column"], d["source"]) for d in v.scorecard_diffs}
    assert {(refused["party"], "refusals", "named query"),
            (refused["party"], f"refused_{refused['code'].lower()}", "named query")} <= diffs
    assert {(a, s) for a, _c, s in diffs} == {(refused["party"], "named query")}  # that agency's row only
    assert not v.exact


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


# --- hit follow-ups and joint action ------------------------------------------------------------


def test_a_day_has_hits_answered_in_time_late_never_with_need_time_and_joint_action_in_time_late_never():
    plan = plan_of(5, requests=40, directives=4, hits=40, day_hours=24)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    hits = [it for it in plan.items if it.kind == "HIT_FOLLOW_UP"]
    fates = collections.Counter(it.parties[0].fate for it in hits)
    assert {"hit: CONFIRMED", "hit: NOT_VALID", "hit: never answers", "hit: NEED_TIME, then CONFIRMED"} <= set(fates)
    reminded = {s.ref for s in steps if s.deadline == "confirm"}
    answered = {it.ref for it in hits if it.hit.answer is not None}
    assert answered - reminded and answered & reminded  # in time, and late (after a reminder)
    # both deadline classes: the urgent window (danger HIGH, alert URGENT/CRITICAL) and the routine one
    first_due = {s.ref: s.due_ms for s in steps if s.deadline == "confirm" and s.set_by == "OPENED"}
    assert {8000, 24000} <= set(first_due.values()), first_due
    by = collections.Counter(s.set_by for s in steps if s.deadline == "confirm")
    assert by["NEED_TIME"] and by["DETAINED"] and by["OPENED"], by  # moved by a NEED_TIME and by a detention
    assert any(s.event_type == "STALE_LISTING" for s in steps)
    arrested_in_time = [it for it in hits if it.hit.answer == "CONFIRMED" and it.hit.action == "DETAINED"
                        and it.ref not in {s.ref for s in steps if s.deadline == "stale"}]
    assert arrested_in_time  # a confirmed detention whose ARRESTED revision came before the stale listing
    # joint action: acted within its deadline, acted after its reminder, never
    joint = [(it, p) for it in plan.items if it.joint for p in it.parties if p.answer_ms is not None]
    act_steps = {(s.ref, s.party) for s in steps if s.deadline.startswith("act:")}
    acted = [(it.ref, p.who) for it, p in joint if p.act_ms is not None]
    assert set(acted) - act_steps and set(acted) & act_steps
    never = [(it.ref, p.who) for it in plan.items if it.joint for p in it.parties if p.act_ms is None]
    assert set(never) & act_steps  # reminded and escalated for a joint action never reported


def test_a_hits_escalations_climb_the_owners_ladder_and_a_need_time_gets_its_own_reminder():
    plan = plan_of(5, requests=0, directives=0, hits=30, day_hours=24)
    steps = ws.expected_steps(plan, POLICY, REGIONS)
    for it in plan.items:
        mine = [s for s in steps if s.ref == it.ref and s.deadline == "confirm"]
        for s in mine:
            assert s.to == ((it.hit.owner,), *ws.ladder(it.hit.owner, REGIONS))[s.level] and s.party == it.hit.owner
        if it.hit.need_ms is not None and it.hit.answer is None:
            late = [s for s in mine if s.set_by == "NEED_TIME"]
            assert late[0].level == 0 and late[0].due_ms == it.hit.need_ms + it.hit.need_minutes * 60_000


@pytest.mark.parametrize("seed", range(1, 21))
def test_every_hit_action_keeps_the_margin_from_every_step_of_every_due_time(seed):
    plan = plan_of(seed, requests=0, directives=0, hits=12)
    for it in plan.items:
        h = it.hit
        steps = [d.due + k * d.step for d in ws.hit_deadlines(h, POLICY, REGIONS) for k in range(len(d.levels) + 1)]
        times = [t for t in (h.action_ms, h.need_ms, h.answer_ms, h.arrest_ms) if t is not None]
        assert times == sorted(times) and (not times or times[0] >= 4000), (it.ref, h)
        assert all(b - a >= 3000 for a, b in zip(times, times[1:])), (it.ref, h)
        assert all(abs(t - f) >= plan.margin_ms for t in times for f in steps), (it.ref, h)
        if h.hit_type == "WANTED_PERSON":
            assert h.arrest_ms is not None  # every listing is closed: the other jobs' clocks stop too


@pytest.mark.parametrize("sighting", ["incident", "alert"])
def test_the_days_records_make_exactly_its_hits_through_the_matching_stages(sighting):
    """The listings and sightings (identity checks and traffic stops, or the sighting regions' warnings),
    validated as publishing validates them, through the three stages in memory: every planned hit, with
    the id, type and regions the play expects, and no other."""
    from schemas.records import validate_record
    from tests.unit.stream_jobs.test_stages import Bus

    plan = plan_of(5, requests=0, directives=0, hits=12)
    records = ws.attach_records(plan, "WFT2-", sighting)
    bus = Bus()
    now = T0
    for r in records.values():
        bus.publish(r.listing_kind, validate_record(r.listing_kind, {**r.listing, "occurred_at": now}, now_ms=now), now=now)
    for r in records.values():
        now += 1000
        assert r.sighting_kind == sighting
        bus.publish(sighting, validate_record(sighting, {**r.sighting, "occurred_at": now}, now_ms=now), now=now)
    got = bus.distinct_hits()
    want = {r.hit_id: it for it in plan.items for ref, r in records.items() if ref == it.ref}
    assert set(got) == set(want)
    for hid, it in want.items():
        assert (got[hid]["hit_type"], got[hid]["owner_region"], got[hid]["hit_region"]) == (
            it.hit.hit_type, it.hit.owner, it.hit.sighted_in)
        assert got[hid]["record_key"] == it.hit.record_key
    # another run's records share nothing with these: its hits are its own
    other = ws.attach_records(plan_of(5, requests=0, directives=0, hits=12), "WFT3-")
    assert not {r.matched for r in other.values()} & {r.matched for r in records.values()}


def test_verify_checks_a_moved_hit_deadline_against_what_moved_it():
    items, steps, rows = truth_and_rows()
    moved = [s for s in steps if s.get("set_by") == "NEED_TIME"]
    assert moved
    iid = moved[0]["item_id"]
    # the NEED_TIME stored a second later than the bus's deadline says: the due time is off by that second
    rows = [({**r, "at_ms": r["at_ms"] + 1000} if r["item_id"] == iid and r["event_type"] == "NEED_TIME" else r)
            for r in rows]
    v = compare_workflow(items, steps, rows)
    assert any(w["item_id"] == iid and "after its NEED_TIME, not" in w["problems"][0] for w in v.wrong), v.wrong


def test_a_hit_that_never_opens_is_reported_and_left_out_of_the_truth():
    plan = plan_of(5, requests=0, directives=0, hits=4)
    clock = FakeClock()
    records = ws.attach_records(plan, "WFT4-")
    gw = FakeGateway(clock, records=records)
    lost = next(iter(records.values())).hit_id
    seen = []

    def opened(hit_id, timeout_s):  # the job's own output topic: one follow-up never shows up there
        seen.append(hit_id)
        clock.sleep(0.3)
        return None if hit_id == lost else int(clock() * 1000) - 100

    out = ws.play(plan, gw, lead_s=1.0, clock=clock, sleep=clock.sleep, workers=0, records=records,
                  publisher=gw.publish, opened=opened)
    assert sorted(seen) == sorted(r.hit_id for r in records.values())  # asked the injected reader, not the gateway
    ref = next(ref for ref, r in records.items() if r.hit_id == lost)
    assert [(f["ref"], f["verb"]) for f in out["failed"] if f["verb"] == "sight"] == [(ref, "sight")]
    assert all(f["ref"] == ref for f in out["failed"])  # its actions were not sent; the others' were
    assert ref not in [it.ref for it in ws.as_played(plan, out).items]
