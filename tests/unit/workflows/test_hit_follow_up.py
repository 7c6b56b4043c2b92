"""Hit follow-up: the sighting region reports, the owner confirms; deadlines, reminder, escalation, stale listing."""
from __future__ import annotations

import json
import random

import pytest

from workflows import model as m
from workflows.hits import open_hit_command
from workflows.machine import WorkflowRefusal, apply, due, escalation_ladder, fire, fire_due
from workflows.testing import HOUR, MIN, Runner, person

OWNER, SIGHTED = "130822", "120114"  # Xinglong (Hebei) owns the record; seen in Wuqing (Tianjin)
DAY = 24 * HOUR


def open_hit(r: Runner, hit_type="WANTED_PERSON", danger=None, priority=None, item_id="H-1"):
    r.apply(m.OpenHit(item_id, item_id, m.Actor.bus(), hit_type, OWNER, SIGHTED,
                      m.Identifier("RESIDENT_ID", "130822199001011234"), f"{OWNER}/ztry/W-7", danger, priority))
    return r


def report(r: Runner, action, region=SIGHTED, **kw):
    return r.apply(m.ReportAction(r.next_id(), r.state.item_id, person(region, **kw), action))


def confirm(r: Runner, answer, region=OWNER, minutes=None, **kw):
    return r.apply(m.ConfirmHit(r.next_id(), r.state.item_id, person(region, **kw), answer, minutes))


def refusal(r: Runner, command) -> str:
    before = r.state
    with pytest.raises(WorkflowRefusal) as exc:
        r.apply(command)
    assert r.state is before
    return str(exc.value)


# --- deadlines per danger and priority ----------------------------------------------------

@pytest.mark.parametrize("hit_type,danger,priority,window", [
    ("WANTED_PERSON", "HIGH", None, 10 * MIN),
    ("WANTED_PERSON", "MEDIUM", None, HOUR),
    ("WANTED_PERSON", "LOW", None, HOUR),
    ("WANTED_PERSON", None, None, HOUR),
    ("WATCH_MATCH", None, "CRITICAL", 10 * MIN),
    ("WATCH_MATCH", None, "URGENT", 10 * MIN),
    ("WATCH_MATCH", None, "ROUTINE", HOUR),
])
def test_confirmation_deadline_per_danger_and_priority(hit_type, danger, priority, window):
    r = open_hit(Runner(), hit_type, danger, priority)
    (opened,) = r.events
    assert opened.event_type == "OPENED" and opened.due_at == r.clock.now + window
    assert opened.to == (OWNER, SIGHTED) and opened.code == hit_type and opened.refs == (f"{OWNER}/ztry/W-7",)
    first = due(r.state, r.policy)[0]
    assert (first.name, first.step, first.at, first.to) == ("confirm", 0, r.clock.now + window, (OWNER,))


def test_detention_shortens_the_deadline_to_ten_minutes_from_the_report():
    r = open_hit(Runner())  # routine: 1 hour
    r.clock.advance(5 * MIN)
    (ev,), _ = report(r, "DETAINED")
    assert ev.event_type == "ACTION_REPORTED" and ev.code == "DETAINED" and ev.to == (OWNER,)
    assert r.state.confirm_due == r.clock.now + 10 * MIN == ev.due_at
    r.clock.advance(55 * MIN - 10 * MIN)  # an OBSERVED later never lengthens it again
    report(r, "OBSERVED")
    assert r.state.confirm_due == r.clock.now - 45 * MIN + 10 * MIN


def test_detention_keeps_a_deadline_that_is_already_sooner():
    r = open_hit(Runner(), danger="HIGH")
    due_before = r.state.confirm_due
    r.clock.advance(8 * MIN)
    report(r, "DETAINED")
    assert r.state.confirm_due == due_before


def test_the_policy_sets_the_windows_in_seconds():
    r = Runner(Runner().policy.with_seconds(hit_confirm_urgent_s=2, hit_confirm_routine_s=5))
    open_hit(r, danger="HIGH")
    assert r.state.confirm_due == r.clock.now + 2000


# --- who may do what ----------------------------------------------------------------------

def test_only_the_sighting_region_reports_and_only_the_owner_confirms():
    r = open_hit(Runner())
    msg = refusal(r, m.ReportAction("x", "H-1", person(OWNER), "DETAINED"))
    assert msg == f"hit H-1 was sighted in {SIGHTED}; only that region reports what it did, not {OWNER}/COMMAND_CENTER"
    msg = refusal(r, m.ConfirmHit("y", "H-1", person(SIGHTED), "CONFIRMED"))
    assert msg == (f"hit H-1 matched a record of {OWNER}; only its owner {OWNER} may CONFIRMED it, "
                   f"not {SIGHTED}/COMMAND_CENTER")
    msg = refusal(r, m.ConfirmHit("z", "H-1", person(OWNER, role="analyst", name="li"), "CONFIRMED"))
    assert msg == f"li of {OWNER}/COMMAND_CENTER may not confirm hit H-1: role command_center required (has analyst)"
    assert "not by the bus" in refusal(r, m.ConfirmHit("w", "H-1", m.Actor.bus(), "CONFIRMED"))
    assert "comes from the bus's own streams" in refusal(
        r, m.WantedRevision("v", "H-1", person(OWNER), f"{OWNER}/ztry/W-7", "ARRESTED"))


def test_refused_actions_and_answers_name_what_is_allowed():
    r = open_hit(Runner())
    assert "report one of DETAINED, OBSERVED, RELEASED, NOT_FOUND" in refusal(
        r, m.ReportAction("a", "H-1", person(SIGHTED), "ARRESTED"))
    report(r, "OBSERVED")
    assert refusal(r, m.ReportAction("b", "H-1", person(SIGHTED), "OBSERVED")) == (
        "hit H-1 already has OBSERVED reported; report a different action")
    assert "confirm with one of CONFIRMED, NOT_VALID, NEED_TIME" in refusal(r, m.ConfirmHit("c", "H-1", person(OWNER), "YES"))
    assert refusal(r, m.ConfirmHit("d", "H-1", person(OWNER), "NEED_TIME", 0)) == "NEED_TIME needs minutes between 1 and 720, not 0"
    assert "not 721" in refusal(r, m.ConfirmHit("e", "H-1", person(OWNER), "NEED_TIME", 721))
    assert "not None" in refusal(r, m.ConfirmHit("f", "H-1", person(OWNER), "NEED_TIME"))
    confirm(r, "CONFIRMED")
    assert refusal(r, m.ConfirmHit("g", "H-1", person(OWNER), "NOT_VALID")) == (
        "hit H-1 is CONFIRMED; CONFIRMED, NOT_VALID and NEED_TIME are answers to a hit AWAITING_CONFIRMATION")
    report(r, "DETAINED")  # still reportable once confirmed
    confirm_not_valid = open_hit(Runner(), item_id="H-2")
    confirm(confirm_not_valid, "NOT_VALID")
    assert refusal(confirm_not_valid, m.ReportAction("h", "H-2", person(SIGHTED), "DETAINED")) == (
        "hit H-2 is NOT_VALID; actions are reported while it is AWAITING_CONFIRMATION or CONFIRMED")


def test_case_links_are_not_followed_up_and_commands_need_an_item():
    r = Runner()
    with pytest.raises(WorkflowRefusal, match="only WANTED_PERSON, WATCH_MATCH hits are followed up"):
        open_hit(r, hit_type="CASE_LINK")
    with pytest.raises(WorkflowRefusal, match="there is no hit follow up H-9"):
        apply(None, m.ConfirmHit("c", "H-9", person(OWNER), "CONFIRMED"), 0, r.policy)


def test_a_hit_seen_twice_opens_one_follow_up():
    r = open_hit(Runner())
    state = r.state
    r.apply(m.OpenHit("other-command", "H-1", m.Actor.bus(), "WANTED_PERSON", OWNER, SIGHTED,
                      m.Identifier("RESIDENT_ID", "x"), "k"))
    assert r.state is state and len(r.events) == 1


# --- confirmation ends the clock ----------------------------------------------------------

def test_confirmed_in_time_sends_no_reminder_nor_escalation():
    r = open_hit(Runner(), danger="HIGH")
    r.clock.advance(9 * MIN)
    (ev,), _ = confirm(r, "CONFIRMED")
    assert ev.event_type == "CONFIRMED" and ev.to == (SIGHTED,) and r.state.status == "CONFIRMED"
    r.clock.advance(30 * DAY)
    assert r.fire_due() == [] and due(r.state, r.policy) == []  # not detained: no stale-listing clock either


def test_need_time_moves_the_deadline_and_gets_its_own_reminder():
    r = open_hit(Runner(), danger="HIGH")
    r.clock.advance(10 * MIN)
    assert r.types(r.fire_due()) == ["REMINDED"]
    (ev,), _ = confirm(r, "NEED_TIME", minutes=30)
    assert ev.minutes == 30 and ev.due_at == r.clock.now + 30 * MIN and r.state.status == "AWAITING_CONFIRMATION"
    r.clock.advance(29 * MIN)
    assert r.fire_due() == []
    r.clock.advance(MIN)
    (reminder,) = r.fire_due()
    assert reminder.event_type == "REMINDED" and reminder.due_at == r.clock.now
    r.clock.advance(30 * MIN)  # escalation steps follow the new window (30 min)
    (esc,) = r.fire_due()
    assert esc.event_type == "ESCALATED" and esc.to == ("130800",) and esc.level == 1


# --- reminder, then escalation up the owner's hierarchy, each once ------------------------

def test_missed_confirmation_reminds_then_escalates_county_city_province_zone_once_each():
    r = open_hit(Runner(), danger="HIGH")
    assert escalation_ladder(OWNER, r.regions) == [("130800",), ("130000",), ("JJJ",)]
    t0 = r.clock.now
    expected = [(10, "REMINDED", ("130822",), 0), (20, "ESCALATED", ("130800",), 1),
                (30, "ESCALATED", ("130000",), 2), (40, "ESCALATED", ("JJJ",), 3)]
    r.clock.at(t0 + 10 * MIN - 1)
    assert r.fire_due() == []
    for minutes, event_type, to, level in expected:
        r.clock.at(t0 + minutes * MIN)
        (ev,) = r.fire_due()
        assert (ev.event_type, ev.to, ev.level, ev.deadline) == (event_type, to, level, "confirm")
        assert ev.at == ev.scheduled_at == r.clock.now and ev.due_at == t0 + 10 * MIN and ev.actor == "intelbus"
        assert ev.command_id == f"deadline:confirm@{t0 + 10 * MIN}#{level}"
        assert r.fire_due() == []  # the same moment checked again: nothing more
    assert r.state.escalated_to == ("130800", "130000", "JJJ")
    assert r.events[-1].notify == (OWNER, SIGHTED, "130800", "130000", "JJJ")
    r.clock.advance(365 * DAY)
    assert r.fire_due() == [] and due(r.state, r.policy) == []
    # a confirmation after the escalations still ends it
    (ev,), _ = confirm(r, "CONFIRMED")
    assert ev.event_type == "CONFIRMED" and ev.seq == 6


def test_a_municipal_district_escalates_past_the_pseudo_city_to_its_zones():
    r = Runner()
    r.apply(m.OpenHit("o", "H-3", m.Actor.bus(), "WANTED_PERSON", "110112", "130822", m.Identifier("PLATE", "京A12345"), "k",
                      "HIGH"))
    assert [d.to for d in due(r.state, r.policy)] == [("110112",), ("110000",), ("JJJ", "TWL")]


def test_firing_a_step_twice_or_before_its_time_or_after_the_owner_answered_does_nothing():
    r = open_hit(Runner(), danger="HIGH")
    reminder, escalation = due(r.state, r.policy)[:2]
    r.clock.advance(5 * MIN)
    assert r.fire(reminder) == []  # not yet due
    r.clock.advance(5 * MIN)
    assert r.types(r.fire(reminder)) == ["REMINDED"]
    state = r.state
    assert r.fire(reminder) == [] and r.state is state
    confirm(r, "CONFIRMED")
    r.clock.advance(HOUR)
    assert r.fire(escalation) == []  # moot: the owner confirmed before it was due


def test_a_deadline_passed_while_the_worker_was_down_fires_each_due_step_once_in_order():
    r = open_hit(Runner(), danger="HIGH")
    t0 = r.clock.now
    r.clock.advance(25 * MIN)  # back after 25 minutes: reminder (10) and city (20) were due; province (30) not yet
    events = r.fire_due()
    assert [(e.event_type, e.level, e.scheduled_at) for e in events] == [
        ("REMINDED", 0, t0 + 10 * MIN), ("ESCALATED", 1, t0 + 20 * MIN)]
    assert all(e.at == t0 + 25 * MIN for e in events) and [e.seq for e in events] == [2, 3]
    assert r.fire_due() == []  # a second check after restart (replayed timers) sends nothing more
    r.clock.advance(DAY)
    assert [(e.event_type, e.level) for e in r.fire_due()] == [("ESCALATED", 2), ("ESCALATED", 3)]


def test_a_single_late_deadline_fires_only_itself():
    r = open_hit(Runner(), danger="HIGH")
    escalation = due(r.state, r.policy)[1]
    r.clock.advance(DAY)
    (ev,) = r.fire(escalation)
    assert ev.level == 1 and r.types(r.fire_due()) == ["REMINDED", "ESCALATED", "ESCALATED"]


# --- stale listing ------------------------------------------------------------------------

def test_confirmed_detention_without_arrested_revision_raises_one_stale_listing_reminder():
    r = open_hit(Runner())
    report(r, "DETAINED")
    r.clock.advance(5 * MIN)
    confirm(r, "CONFIRMED")
    confirmed_at = r.clock.now
    (stale,) = due(r.state, r.policy)
    assert (stale.name, stale.at, stale.to) == ("stale", confirmed_at + 3 * DAY, (OWNER,))
    r.clock.advance(3 * DAY - 1)
    assert r.fire_due() == []
    r.clock.advance(1)
    (ev,) = r.fire_due()
    assert ev.event_type == "STALE_LISTING" and ev.to == (OWNER,) and "no ARRESTED revision" in ev.text
    r.clock.advance(30 * DAY)
    assert r.fire_due() == []


def test_stale_listing_counts_n_days_from_policy_and_from_the_later_of_detention_and_confirmation():
    r = open_hit(Runner(Runner().policy.with_seconds(stale_listing_s="1d")))
    confirm(r, "CONFIRMED")
    assert due(r.state, r.policy) == []  # confirmed, but nobody detained: no stale clock
    r.clock.advance(2 * HOUR)
    report(r, "DETAINED")
    assert due(r.state, r.policy)[0].at == r.clock.now + DAY


def test_an_arrested_revision_closes_the_listing_and_stops_the_stale_clock():
    r = open_hit(Runner())
    report(r, "DETAINED")
    confirm(r, "CONFIRMED")
    r.clock.advance(HOUR)
    events, _ = r.apply(m.WantedRevision("ev-2", "H-1", m.Actor.bus(), f"{OWNER}/ztry/W-7", "UPDATED", 2))
    assert events == [] and r.state.status == "CONFIRMED"
    (ev,), _ = r.apply(m.WantedRevision("ev-3", "H-1", m.Actor.bus(), f"{OWNER}/ztry/W-7", "ARRESTED", 3))
    assert ev.event_type == "LISTING_CLOSED" and ev.code == "ARRESTED" and ev.refs == (f"{OWNER}/ztry/W-7", "revision 3")
    assert r.state.status == "CLOSED" and due(r.state, r.policy) == []
    r.clock.advance(10 * DAY)
    assert r.fire_due() == []
    assert "follows record" in refusal(r, m.WantedRevision("ev-4", "H-1", m.Actor.bus(), "other/x/y", "ARRESTED"))


def test_watch_matches_have_no_stale_listing():
    r = open_hit(Runner(), hit_type="WATCH_MATCH", priority="ROUTINE")
    report(r, "DETAINED")
    confirm(r, "CONFIRMED")
    assert due(r.state, r.policy) == []


# --- idempotent replay --------------------------------------------------------------------

def test_the_same_command_twice_changes_nothing_and_emits_nothing_the_second_time():
    r = open_hit(Runner())
    command = m.ConfirmHit("c-1", "H-1", person(OWNER), "CONFIRMED")
    r.apply(command)
    state = r.state
    assert r.apply(command) == ([], []) and r.state is state


def _random_history(seed: int):
    """A random sequence of commands and clock jumps on one hit: (kind, payload) steps."""
    rnd = random.Random(seed)
    steps = []
    for i in range(rnd.randint(1, 12)):
        choice = rnd.random()
        if choice < 0.3:
            steps.append(("advance", rnd.choice([MIN, 5 * MIN, 10 * MIN, HOUR, DAY])))
        elif choice < 0.55:
            steps.append(("command", m.ReportAction(f"r{i}", "H-1", person(rnd.choice([SIGHTED, OWNER])),
                                                    rnd.choice(m.SIGHTING_ACTIONS))))
        elif choice < 0.8:
            answer = rnd.choice(m.CONFIRMATIONS)
            steps.append(("command", m.ConfirmHit(f"c{i}", "H-1", person(rnd.choice([OWNER, SIGHTED])), answer,
                                                  rnd.choice([5, 30]) if answer == "NEED_TIME" else None)))
        elif choice < 0.9:
            steps.append(("command", m.WantedRevision(f"w{i}", "H-1", m.Actor.bus(), f"{OWNER}/ztry/W-7",
                                                      rnd.choice(["UPDATED", "ARRESTED"]))))
        else:
            steps.append(("fire", None))
    return steps


def _play(steps, *, twice: bool):
    r = open_hit(Runner(), danger=None)
    for kind, payload in steps:
        if kind == "advance":
            r.clock.advance(payload)
            continue
        for attempt in range(2 if twice else 1):
            before, count = r.state, len(r.events)
            try:
                if kind == "command":
                    r.apply(payload)
                else:
                    r.fire_due()
            except WorkflowRefusal:
                assert r.state is before
                continue
            if attempt == 1:
                assert r.state == before and len(r.events) == count, "a replay changed the state or emitted"
    r.fire_due()
    return r


@pytest.mark.parametrize("seed", range(60))
def test_replaying_every_step_twice_gives_the_same_history_as_once(seed):
    steps = _random_history(seed)
    once, twice = _play(steps, twice=False), _play(steps, twice=True)
    assert once.state == twice.state
    assert [e.to_avro() for e in once.events] == [e.to_avro() for e in twice.events]
    assert len({e.event_id for e in once.events}) == len(once.events)
    assert [e.seq for e in once.events] == list(range(1, len(once.events) + 1))
    fired = [e.command_id for e in once.events if e.event_type in ("REMINDED", "ESCALATED", "STALE_LISTING")]
    assert len(fired) == len(set(fired)), "a deadline step fired twice"


# --- from intel.hit -----------------------------------------------------------------------

def test_open_hit_command_from_a_decoded_hit():
    hit = {"hit_id": "5c1d...", "hit_type": "WANTED_PERSON", "owner_region": OWNER, "hit_region": SIGHTED,
           "matched_on": {"kind": "RESIDENT_ID", "value": "130822199001011234"}, "record_key": f"{OWNER}/ztry/W-7",
           "record": json.dumps({"danger_level": "HIGH", "priority": "ROUTINE"}), "classification": "SECRET"}
    c = open_hit_command(hit)
    assert (c.item_id, c.command_id, c.danger_level, c.priority, c.classification) == ("5c1d...", "5c1d...", "HIGH", None, "SECRET")
    watch = open_hit_command({**hit, "hit_type": "WATCH_MATCH", "record": json.dumps({"priority": "URGENT"})})
    assert (watch.danger_level, watch.priority) == (None, "URGENT")
    assert open_hit_command({**hit, "hit_type": "CASE_LINK"}) is None
    state, (ev,), _ = apply(None, c, 0, Runner().policy)
    assert ev.due_at == 10 * MIN and ev.classification == "SECRET"
    assert fire(state, due(state, Runner().policy)[0], 10 * MIN, Runner().policy)[1][0].event_type == "REMINDED"
    assert fire_due(state, 0, Runner().policy)[1] == []


def test_event_ids_follow_the_cause_so_a_lost_table_write_never_makes_two_events_share_an_id():
    r = open_hit(Runner(), danger="HIGH")
    saved = r.state  # the table as last written
    r.clock.advance(10 * MIN)
    (reminder,) = r.fire_due()  # published, then the worker dies before writing the table
    r.state = saved
    (again,) = r.fire_due()  # after the restart the reminder comes out again: same id, the sink drops it
    assert again.event_id == reminder.event_id and again.seq == reminder.seq == 2
    r.state = saved
    (report_ev,), _ = report(r, "DETAINED")  # or a command gets there first: same seq, another id
    assert report_ev.seq == 2 and report_ev.event_id != reminder.event_id
