"""Directives (指令): issued to regions or zones, acknowledged, reported DONE or CANNOT; resent, then escalated."""
from __future__ import annotations

import pytest

from workflows import model as m
from workflows.machine import WorkflowRefusal, due, status_rows
from workflows.testing import HOUR, MIN, Runner, person

HEBEI = person("130000", name="hb-zhihui")


def issue(r: Runner, to=("130822", "131000"), due_in=2 * HOUR, actor=HEBEI, item_id="D-1"):
    return r.apply(m.IssueDirective(r.next_id(), item_id, actor, tuple(to), "set up checkpoints on G1", r.clock.now + due_in))


def cmd(r: Runner, cls, actor, *args):
    return r.apply(cls(r.next_id(), r.state.item_id, actor, *args))


def refusal(r: Runner, command) -> str:
    before = r.state
    with pytest.raises(WorkflowRefusal) as exc:
        r.apply(command)
    assert r.state is before
    return str(exc.value)


def test_issued_to_regions_inside_the_issuers():
    r = Runner()
    (ev,), _ = issue(r)
    assert (ev.event_type, ev.to, ev.due_at, ev.text) == ("ISSUED", ("130822", "131000"), r.clock.now + 2 * HOUR,
                                                          "set up checkpoints on G1")
    assert [row["status"] for row in status_rows(r.state)] == ["SENT", "SENT"]


def test_a_zone_expands_to_its_members_except_the_issuer():
    r = Runner()
    (ev,), _ = issue(r, to=("JJJ",), actor=person("110000"))
    assert ev.to == ("120000", "130000") and ev.refs == ("JJJ",)
    tw = Runner()
    (ev,), _ = issue(tw, to=("TWL",), actor=person("110112"))
    assert ev.to == ("120114", "131000")
    with pytest.raises(WorkflowRefusal, match="110000/COMMAND_CENTER is not in zone TWL"):
        issue(Runner(), to=("TWL", "110117"), actor=person("110000"))  # Beijing holds a member, but is not one


@pytest.mark.parametrize("to,actor,message", [
    (("120114",), HEBEI, "directive D-1: 120114 is not inside 130000; 130000/COMMAND_CENTER may direct regions inside "
                         "130000 and its zones (JJJ)"),
    (("130000",), HEBEI, "directive D-1: 130000 is not inside 130000"),
    (("JY29",), HEBEI, "directive D-1: 130000/COMMAND_CENTER is not in zone JY29; it may direct its own zones (JJJ)"),
    (("XYZ",), HEBEI, "directive D-1: 'XYZ' is neither a known region code nor a zone"),
    ((), HEBEI, "directive D-1 has no recipient: name regions or zones"),
])
def test_issue_refusals(to, actor, message):
    with pytest.raises(WorkflowRefusal) as exc:
        issue(Runner(), to=to, actor=actor)
    assert str(exc.value).startswith(message)


def test_issue_needs_a_future_due_time_and_a_task():
    with pytest.raises(WorkflowRefusal, match="which is not after now"):
        issue(Runner(), due_in=0)
    r = Runner()
    with pytest.raises(WorkflowRefusal, match="has no task"):
        r.apply(m.IssueDirective("x", "D-2", HEBEI, ("130822",), " ", r.clock.now + HOUR))


def test_each_recipient_acknowledges_then_reports_and_status_shows_each():
    r = Runner()
    issue(r)
    assert refusal(r, m.ReportDirective("a", "D-1", person("130822"), "DONE")) == (
        "directive D-1 is SENT by 130822; DONE is reported once it is ACKNOWLEDGED (ACKNOWLEDGE it first)")
    assert refusal(r, m.AcknowledgeDirective("b", "D-1", person("120114"))) == (
        "directive D-1 is for 130822, 131000; 120114/COMMAND_CENTER may not ACKNOWLEDGE it")
    r.clock.advance(5 * MIN)
    (ev,), _ = cmd(r, m.AcknowledgeDirective, person("130822"))
    assert (ev.event_type, ev.party, ev.party_status, ev.to) == ("ACKNOWLEDGED", "130822", "ACKNOWLEDGED", ("130000/COMMAND_CENTER",))
    assert refusal(r, m.AcknowledgeDirective("c", "D-1", person("130822"))) == (
        "directive D-1 is ACKNOWLEDGED by 130822; ACKNOWLEDGE is allowed only while it is SENT")
    cmd(r, m.AcknowledgeDirective, person("131000"))
    assert refusal(r, m.ReportDirective("d", "D-1", person("131000"), "CANNOT")) == (
        "CANNOT needs a reason: say why 131000 cannot carry out directive D-1")
    assert "report DONE or CANNOT" in refusal(r, m.ReportDirective("e", "D-1", person("131000"), "MAYBE"))
    r.clock.advance(HOUR)
    (ev,), _ = cmd(r, m.ReportDirective, person("130822"), "DONE")
    assert ev.event_type == "DONE" and r.state.status == "OPEN"
    rows = status_rows(r.state)
    assert [(x["region"], x["status"]) for x in rows] == [("130822", "DONE"), ("131000", "ACKNOWLEDGED")]
    assert rows[0]["acknowledged_at"] == r.clock.now - HOUR - 5 * MIN + 5 * MIN and rows[0]["reported_at"] == r.clock.now
    events, _ = cmd(r, m.ReportDirective, person("131000"), "CANNOT", "no officers free")
    assert [(e.event_type, e.status) for e in events] == [("CANNOT", "COMPLETED"), ("COMPLETED", "COMPLETED")]
    assert events[1].code == "1 DONE" and due(r.state, r.policy) == []
    assert refusal(r, m.ReportDirective("f", "D-1", person("130822"), "DONE")) == (
        "directive D-1 is COMPLETED; nothing more can be reported on it")


def test_not_acknowledged_in_15_minutes_is_resent_then_escalated_once_each():
    r = Runner()
    t0 = r.clock.now
    issue(r, to=("130822",), due_in=24 * HOUR)
    seen = []
    for minutes in range(1, 120):
        r.clock.at(t0 + minutes * MIN)
        seen += [(minutes, e.event_type, e.level, e.to) for e in r.fire_due()]
    assert seen == [(15, "RESENT", 0, ("130822",)), (30, "ESCALATED", 1, ("130800",)),
                    (45, "ESCALATED", 2, ("130000",)), (60, "ESCALATED", 3, ("JJJ",))]


def test_acknowledging_after_the_resend_stops_the_escalation():
    r = Runner()
    issue(r, to=("130822", "131000"))
    r.clock.advance(16 * MIN)
    assert [(e.event_type, e.party) for e in r.fire_due()] == [("RESENT", "130822"), ("RESENT", "131000")]
    cmd(r, m.AcknowledgeDirective, person("130822"))
    r.clock.advance(15 * MIN)
    assert [(e.event_type, e.party, e.to) for e in r.fire_due()] == [("ESCALATED", "131000", ("130000",))]


def test_a_recipient_not_done_by_the_due_time_is_reminded_then_escalated():
    r = Runner()
    t0 = r.clock.now
    issue(r, to=("130822",), due_in=2 * HOUR)
    r.clock.advance(10 * MIN)
    cmd(r, m.AcknowledgeDirective, person("130822"))
    r.clock.at(t0 + 2 * HOUR)
    (ev,) = r.fire_due()
    assert (ev.event_type, ev.deadline, ev.text) == ("REMINDED", "due:130822",
                                                     "130822 has not reported DONE or CANNOT directive D-1 by its due time")
    r.clock.at(t0 + 3 * HOUR)  # overdue step: 1 hour by default
    (ev,) = r.fire_due()
    assert (ev.event_type, ev.to, ev.level) == ("ESCALATED", ("130800",), 1)
    cmd(r, m.ReportDirective, person("130822"), "DONE")
    r.clock.advance(24 * HOUR)
    assert r.fire_due() == []


def test_only_the_issuer_cancels_and_a_cancelled_directive_stops_its_clocks():
    r = Runner()
    issue(r)
    assert refusal(r, m.CancelDirective("a", "D-1", person("130822"))) == (
        "directive D-1 was issued by 130000/COMMAND_CENTER; only the issuer may CANCEL it, not 130822/COMMAND_CENTER")
    (ev,), _ = cmd(r, m.CancelDirective, HEBEI, "superseded by D-2")
    assert ev.event_type == "CANCELLED" and ev.to == ("130822", "131000") and due(r.state, r.policy) == []
    assert refusal(r, m.CancelDirective("b", "D-1", HEBEI)) == "directive D-1 is CANCELLED; only an OPEN directive can be CANCELLED"
    assert refusal(r, m.AcknowledgeDirective("c", "D-1", person("130822"))) == (
        "directive D-1 is CANCELLED; nothing more can be reported on it")


def test_replayed_commands_and_timers_emit_nothing_the_second_time():
    r = Runner()
    issue(r)
    ack = m.AcknowledgeDirective("ack-1", "D-1", person("130822"))
    r.apply(ack)
    state = r.state
    assert r.apply(ack) == ([], []) and r.state is state
    r.clock.advance(HOUR)
    first = r.fire_due()
    assert first and r.fire_due() == []
    # the same timers fired again from a restored table (the stream job after a rebalance)
    for d in due(state, r.policy):
        assert r.fire(d) == []
