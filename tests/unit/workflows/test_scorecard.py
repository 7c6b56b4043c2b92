"""The scorecard (workflows.scorecard) over events the state machine really emits: on time and late,
escalated, refused with reasons, several addressees, duplicates, period boundaries, hits and stale
listings, by region or by region and branch."""
from __future__ import annotations

import pytest

from workflows import model as m
from workflows.policy import Policy
from workflows.scorecard import COLUMNS, nearest_rank, scorecard
from workflows.testing import HOUR, MIN, T0, Runner, person

REQUESTER = person("110000", "COMMAND_CENTER", name="zhang")
XL_CI = "130822/CRIMINAL_INVESTIGATION"
XL_PO = "130822/PUBLIC_ORDER"
LF_PO = "131000/PUBLIC_ORDER"
ACTORS = {XL_CI: person("130822", "CRIMINAL_INVESTIGATION", name="wang"),
          XL_PO: person("130822", "PUBLIC_ORDER", name="zhao"),
          LF_PO: person("131000", "PUBLIC_ORDER", name="liu")}
PHONE = m.Identifier("PHONE", "13800138000")
DAY = 24 * HOUR
ALL = dict(start_ms=0, end_ms=2**62)


class Traffic:
    """Several items on one clock: each command at its time, every due deadline step fired on the way."""

    def __init__(self, policy: Policy | None = None, start: int = T0):
        self.policy = policy or Policy()
        self.runners: dict[str, Runner] = {}
        self.now = start

    def at(self, ms: int):
        """Move the clock to T0 + ms, firing every step due by then in every item."""
        self.now = T0 + ms
        for r in self.runners.values():
            r.clock.at(self.now)
            r.fire_due()

    def _runner(self, item_id):
        r = self.runners.setdefault(item_id, Runner(self.policy))
        r.clock.at(self.now)
        r.fire_due()
        return r

    def send(self, item_id, *addressees, priority="ROUTINE"):
        r = self._runner(item_id)
        r.apply(m.SendRequest(r.next_id(), item_id, REQUESTER, addressees, priority, (PHONE,), "where is he"))

    def do(self, item_id, agency, cls, *args):
        r = self._runner(item_id)
        r.apply(cls(r.next_id(), item_id, ACTORS[agency], *args))

    def open_hit(self, item_id, owner="130822", hit_region="120119", danger="LOW"):
        r = self._runner(item_id)
        r.apply(m.OpenHit(item_id, item_id, m.Actor.bus(), "WANTED_PERSON", owner, hit_region,
                          m.Identifier("RESIDENT_ID", "11010519491231002X"), f"{owner}/s/W-{item_id}", danger_level=danger))

    def hit(self, item_id, cls, region, *args):
        r = self._runner(item_id)
        r.apply(cls(r.next_id(), item_id, person(region), *args))

    def events(self) -> list[dict]:
        return [e.to_avro() for r in self.runners.values() for e in r.events]


def by_agency(rows):
    assert [r["agency"] for r in rows] == sorted(r["agency"] for r in rows)
    assert all(tuple(r) == COLUMNS for r in rows)
    return {r["agency"]: r for r in rows}


def test_one_request_to_two_addressees_counts_once_for_each_judged_by_its_own_events():
    t = Traffic()
    t.send("R-1", XL_CI, LF_PO)
    t.at(30 * MIN)
    t.do("R-1", XL_CI, m.AcceptRequest)
    t.at(3 * HOUR)
    t.do("R-1", XL_CI, m.AnswerRequest, "seen at the station")
    t.do("R-1", LF_PO, m.AcceptRequest)  # 3 h: reminded at 1 h, escalated at 2 and 3 h
    t.at(5 * HOUR)
    t.do("R-1", LF_PO, m.AnswerRequest, "not here")  # after the 4-hour answer deadline: reminded at 4 h
    rows = by_agency(scorecard(t.events(), **ALL))
    assert set(rows) == {XL_CI, LF_PO}  # the requester owes nothing
    xl, lf = rows[XL_CI], rows[LF_PO]
    assert (xl["requests_received"], xl["accepted_on_time"], xl["answered_on_time"]) == (1, 1, 1)
    assert (xl["accepted_on_time_share"], xl["answered_on_time_share"], xl["escalations"]) == (1.0, 1.0, 0)
    assert xl["response_median_s"] == xl["response_p90_s"] == 1800.0
    assert (lf["requests_received"], lf["accepted_on_time"], lf["answered_on_time"]) == (1, 0, 0)
    assert lf["accepted_on_time_share"] == 0.0 and lf["response_median_s"] == 3 * 3600.0
    escalated = [e for e in t.events() if e["event_type"] == "ESCALATED"]
    assert len(escalated) == lf["escalations"] == 2 and {e["party"] for e in escalated} == {LF_PO}
    assert (xl["region"], xl["branch"], lf["region"]) == ("130822", "CRIMINAL_INVESTIGATION", "131000")


def test_on_time_is_the_deadline_the_events_carry_so_seconds_policies_read_the_same():
    fast = Policy().with_seconds(request_ROUTINE_accept_s=2, request_ROUTINE_answer_s=5)
    t = Traffic(fast)
    t.send("R-1", XL_CI)
    t.send("R-2", LF_PO)
    t.at(2000)  # exactly at the accept deadline: within it
    t.do("R-1", XL_CI, m.AcceptRequest)
    t.at(2001)
    t.do("R-2", LF_PO, m.AcceptRequest)  # a millisecond late
    t.at(5000)
    t.do("R-1", XL_CI, m.AnswerRequest, "found")
    t.at(5001)
    t.do("R-2", LF_PO, m.AnswerRequest, "found")
    rows = by_agency(scorecard(t.events(), **ALL))
    assert (rows[XL_CI]["accepted_on_time"], rows[XL_CI]["answered_on_time"]) == (1, 1)
    assert (rows[LF_PO]["accepted_on_time"], rows[LF_PO]["answered_on_time"]) == (0, 0)
    assert rows[XL_CI]["response_median_s"] == 2.0 and rows[LF_PO]["response_median_s"] == 2.001


def test_refusals_by_reason_and_the_refusal_is_the_response():
    t = Traffic()
    reasons = ["NOT_COMPETENT", "NOT_COMPETENT", "NO_CAPACITY", "OTHER"]
    for i, reason in enumerate(reasons):
        t.send(f"R-{i}", XL_CI)
    t.at(10 * MIN)
    for i, reason in enumerate(reasons):
        if i == 3:
            t.do(f"R-{i}", XL_CI, m.AcceptRequest)
            t.at(20 * MIN)
        t.do(f"R-{i}", XL_CI, m.RefuseRequest, reason, "not ours" if reason == "OTHER" else "")
    row = by_agency(scorecard(t.events(), **ALL))[XL_CI]
    assert row["requests_received"] == 4 and row["refusals"] == 4
    assert (row["refused_not_competent"], row["refused_no_capacity"], row["refused_other"]) == (2, 1, 1)
    assert row["refused_duplicate"] == row["refused_no_legal_basis"] == row["refused_insufficient_information"] == 0
    assert row["accepted_on_time"] == 1 and row["answered_on_time"] == 0  # accepted, then refused
    assert row["responded"] == 4 and row["response_median_s"] == 600.0  # the acceptance at 10 min, not the refusal


def test_an_addressee_that_never_responds_is_received_escalated_and_not_in_the_response_times():
    t = Traffic()
    t.send("R-1", XL_CI)
    t.at(DAY)  # accept: reminder 1 h, levels 1-3 at 2, 3, 4 h; answer: reminder 4 h, levels at 8, 12, 16 h
    row = by_agency(scorecard(t.events(), **ALL))[XL_CI]
    assert (row["requests_received"], row["responded"], row["escalations"]) == (1, 0, 6)
    assert row["accepted_on_time_share"] == 0.0 and row["response_median_s"] is None and row["response_p90_s"] is None
    assert row["hits_confirmed_on_time_share"] is None


def test_median_and_p90_are_nearest_rank_order_statistics():
    assert nearest_rank([], 1, 2) is None
    assert [nearest_rank(list(range(1, n + 1)), 1, 2) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert [nearest_rank(list(range(1, n + 1)), 9, 10) for n in (1, 9, 10, 11, 20)] == [1, 9, 9, 10, 18]
    t = Traffic()
    minutes = [7, 1, 9, 3, 10, 2, 8, 4, 6, 5]  # accepted after these minutes
    for i in range(len(minutes)):
        t.send(f"R-{i}", XL_CI)
    for i, mins in sorted(enumerate(minutes), key=lambda x: x[1]):
        t.at(mins * MIN)
        t.do(f"R-{i}", XL_CI, m.AcceptRequest)
    row = by_agency(scorecard(t.events(), **ALL))[XL_CI]
    assert (row["response_median_s"], row["response_p90_s"]) == (5 * 60.0, 9 * 60.0)


def test_duplicates_by_event_id_count_once():
    t = Traffic()
    t.send("R-1", XL_CI, LF_PO)
    t.at(2 * HOUR)
    t.do("R-1", XL_CI, m.RefuseRequest, "DUPLICATE")
    once = scorecard(t.events(), **ALL)
    assert scorecard(t.events() * 3, **ALL) == once
    assert by_agency(once)[LF_PO]["escalations"] == 1 and by_agency(once)[XL_CI]["refused_duplicate"] == 1


def test_items_count_in_the_period_they_started_with_their_whole_history():
    t = Traffic()
    t.send("R-before", XL_CI)  # T0
    t.at(HOUR)
    t.send("R-first", XL_CI)  # exactly at the period's start: in
    t.at(HOUR + 30 * MIN)
    t.do("R-before", XL_CI, m.AcceptRequest)  # acts inside the period on a request of the period before: not counted
    t.at(2 * HOUR - 1)
    t.send("R-last", XL_CI)  # the last millisecond of the period
    t.at(2 * HOUR)
    t.send("R-after", XL_CI)  # exactly at the period's end: out
    t.at(2 * HOUR + 10 * MIN)
    t.do("R-last", XL_CI, m.AcceptRequest)  # after the period, on time: counted
    t.at(3 * HOUR)
    rows = by_agency(scorecard(t.events(), start_ms=T0 + HOUR, end_ms=T0 + 2 * HOUR))
    xl = rows[XL_CI]
    assert (xl["requests_received"], xl["accepted_on_time"], xl["responded"]) == (2, 1, 1)
    assert xl["escalations"] == 1  # R-first, not accepted: reminded at 2 h, escalated at 3 h (R-before's do not count)
    assert scorecard(t.events(), start_ms=T0 + 3 * HOUR, end_ms=T0 + 4 * HOUR) == []


def test_hits_confirmed_on_time_by_the_deadline_in_force_and_stale_listings():
    t = Traffic()
    t.open_hit("H-ok")  # routine: 1 h
    t.open_hit("H-late")
    t.open_hit("H-needtime")
    t.open_hit("H-detained")
    t.open_hit("H-other", owner="131000")
    t.at(5 * MIN)
    t.hit("H-detained", m.ReportAction, "120119", "DETAINED")  # the owner now has until 15 min
    t.hit("H-needtime", m.ConfirmHit, "130822", "NEED_TIME", 120)  # until 2 h 5 min
    t.at(30 * MIN)
    t.hit("H-ok", m.ConfirmHit, "130822", "CONFIRMED")
    t.hit("H-detained", m.ConfirmHit, "130822", "CONFIRMED")  # late: 15 min had passed (reminded at 15, escalated at 25)
    t.at(90 * MIN)
    t.hit("H-late", m.ConfirmHit, "130822", "NOT_VALID")  # after its hour: reminded at 1 h
    t.hit("H-needtime", m.ConfirmHit, "130822", "CONFIRMED")  # within the time it asked for
    t.at(4 * DAY)  # H-detained: confirmed detention, no ARRESTED revision: stale listing at 30 min + 3 days
    rows = by_agency(scorecard(t.events(), **ALL))
    owner = rows["130822"]
    assert (owner["branch"], owner["hits_owed"], owner["hits_confirmed_on_time"]) == ("", 4, 2)
    assert owner["hits_confirmed_on_time_share"] == 0.5 and owner["stale_listings"] == 1
    assert owner["escalations"] == 1 and owner["requests_received"] == 0 and owner["accepted_on_time_share"] is None
    other = rows["131000"]  # never confirmed: reminded and escalated twice (131000's ladder: 130000, JJJ/TWL)
    assert (other["hits_owed"], other["hits_confirmed_on_time"], other["escalations"]) == (1, 0, 2)
    assert "120119" not in rows  # the sighting region owes no confirmation


def test_by_region_adds_the_branches_and_the_region_row_together():
    t = Traffic()
    t.send("R-1", XL_CI, XL_PO)
    t.open_hit("H-1")
    t.at(10 * MIN)
    t.do("R-1", XL_CI, m.AcceptRequest)
    t.at(20 * MIN)
    t.do("R-1", XL_PO, m.AcceptRequest)
    t.hit("H-1", m.ConfirmHit, "130822", "CONFIRMED")
    split = by_agency(scorecard(t.events(), **ALL))
    assert set(split) == {"130822", XL_CI, XL_PO}
    [row] = scorecard(t.events(), **ALL, by=("region",))
    assert (row["agency"], row["region"], row["branch"]) == ("130822", "130822", "")
    assert (row["requests_received"], row["accepted_on_time"], row["hits_owed"], row["hits_confirmed_on_time"]) == (2, 2, 1, 1)
    assert (row["response_median_s"], row["response_p90_s"]) == (600.0, 1200.0)
    with pytest.raises(ValueError, match="by must be region,branch or region"):
        scorecard(t.events(), **ALL, by=("branch",))


def test_rows_as_the_sink_stores_them_give_the_same_scorecard():
    from sinks.rows import WORKFLOW_COLUMNS, workflow_row

    t = Traffic()
    t.send("R-1", XL_CI, LF_PO)
    t.open_hit("H-1")
    t.at(3 * HOUR)
    t.do("R-1", LF_PO, m.RefuseRequest, "NO_LEGAL_BASIS")
    t.hit("H-1", m.ConfirmHit, "130822", "CONFIRMED")
    stored = [dict(zip(WORKFLOW_COLUMNS, workflow_row(e, topic="intel.workflow", partition=0, offset=i, ingested_ms=0)))
              for i, e in enumerate(t.events())]
    assert scorecard(stored, **ALL) == scorecard(t.events(), **ALL)
    assert by_agency(scorecard(stored, **ALL))[LF_PO]["refused_no_legal_basis"] == 1
