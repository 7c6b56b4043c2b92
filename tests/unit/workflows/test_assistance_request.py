"""Assistance requests (协查): send, accept, answer, refuse, joint action, close; deadlines per priority,
escalation up the addressee's hierarchy, earlier answers offered and each reuse audited."""
from __future__ import annotations

import random

import pytest

from workflows import model as m
from workflows.machine import WorkflowRefusal, due, status_rows
from workflows.testing import HOUR, MIN, Runner, person

REQUESTER = person("110000", "COMMAND_CENTER", name="zhang")
XL_CI = "130822/CRIMINAL_INVESTIGATION"  # Xinglong county, criminal investigation
LF_PO = "131000/PUBLIC_ORDER"  # Langfang city, public order
PHONE = m.Identifier("PHONE", "13800138000")
DAY = 24 * HOUR


def xl(role="command_center", name="wang"):
    return person("130822", "CRIMINAL_INVESTIGATION", role=role, name=name)


def lf():
    return person("131000", "PUBLIC_ORDER", name="liu")


def send(r: Runner, addressees=(XL_CI,), priority="ROUTINE", joint_action=False, earlier=(), item_id="R-12", subjects=(PHONE,)):
    return r.apply(m.SendRequest(r.next_id(), item_id, REQUESTER, tuple(addressees), priority, tuple(subjects),
                                 "who uses this phone, where is he now", joint_action, earlier_answers=tuple(earlier)))


def refusal(r: Runner, command) -> str:
    before = r.state
    with pytest.raises(WorkflowRefusal) as exc:
        r.apply(command)
    assert r.state is before
    return str(exc.value)


def cmd(r: Runner, cls, actor, *args):
    return r.apply(cls(r.next_id(), r.state.item_id, actor, *args))


# --- sending ------------------------------------------------------------------------------

def test_send_names_the_addressees_priority_and_first_deadline():
    r = Runner()
    (sent,), effects = send(r, addressees=(XL_CI, LF_PO, XL_CI), priority="URGENT")
    assert (sent.event_type, sent.to, sent.code, sent.refs) == ("SENT", (XL_CI, LF_PO), "URGENT", ("PHONE:13800138000",))
    assert sent.actor == "zhang" and sent.actor_agency == "110000/COMMAND_CENTER" and sent.due_at == r.clock.now + HOUR
    assert sent.notify == ("110000", "130822", "131000") and effects == []
    assert [row["status"] for row in status_rows(r.state)] == ["SENT", "SENT"]


@pytest.mark.parametrize("kwargs,message", [
    ({"addressees": ()}, "request R-12 has no addressee: name agencies as REGION/BRANCH"),
    ({"addressees": ("999999/COMMAND_CENTER",)}, "addressee '999999/COMMAND_CENTER' is not an agency"),
    ({"addressees": ("130822/DETECTIVES",)}, "addressee '130822/DETECTIVES' is not an agency"),
    ({"addressees": ("110000/COMMAND_CENTER",)}, "request R-12: 110000/COMMAND_CENTER cannot address a request to itself"),
    ({"priority": "HIGH"}, "unknown priority 'HIGH': one of ROUTINE, URGENT, CRITICAL"),
    ({"subjects": (m.Identifier("EMAIL", "a@b"),)}, "subject EMAIL:a@b is not an identifier"),
])
def test_send_refusals(kwargs, message):
    with pytest.raises(WorkflowRefusal) as exc:
        send(Runner(), **kwargs)
    assert str(exc.value).startswith(message)


def test_a_request_id_is_used_once_and_needs_a_question():
    r = Runner()
    send(r)
    assert refusal(r, m.SendRequest("other", "R-12", REQUESTER, (XL_CI,), "ROUTINE", (), "again")).startswith(
        "request R-12 already exists")
    with pytest.raises(WorkflowRefusal, match="has no question"):
        Runner().apply(m.SendRequest("c", "R-13", REQUESTER, (XL_CI,), "ROUTINE", (), "  "))


# --- who may do what ----------------------------------------------------------------------

def test_the_addressee_accepts_answers_and_the_requester_closes():
    r = Runner()
    send(r)
    r.clock.advance(20 * MIN)
    (ev,), _ = cmd(r, m.AcceptRequest, xl())
    assert (ev.event_type, ev.party, ev.party_status, ev.to) == ("ACCEPTED", XL_CI, "ACCEPTED", ("110000/COMMAND_CENTER",))
    assert ev.due_at == r.clock.now - 20 * MIN + 4 * HOUR
    r.clock.advance(HOUR)
    (ev,), effects = cmd(r, m.AnswerRequest, xl(), "the user is Li Si, staying in Xinglong")
    assert (ev.event_type, ev.text, ev.party_status) == ("ANSWERED", "the user is Li Si, staying in Xinglong", "ANSWERED")
    assert effects == [m.IndexAnswer(m.EarlierAnswer("R-12", XL_CI, r.clock.now, PHONE, "the user is Li Si, staying in Xinglong"))]
    (ev,), _ = cmd(r, m.CloseRequest, REQUESTER, "located")
    assert (ev.event_type, ev.status, ev.to, ev.text) == ("CLOSED", "CLOSED", (XL_CI,), "located")
    assert due(r.state, r.policy) == []


def test_refusals_name_what_is_wrong_and_what_is_allowed():
    r = Runner()
    send(r)
    assert refusal(r, m.AcceptRequest("a", "R-12", lf())) == (
        f"request R-12 is addressed to {XL_CI}; {LF_PO} is not one of them and may not ACCEPT it")
    assert refusal(r, m.AnswerRequest("b", "R-12", xl(), "x")) == (
        f"request R-12 is SENT by {XL_CI}; ANSWER is allowed only once it is ACCEPTED (ACCEPT it first)")
    assert refusal(r, m.AcceptRequest("c", "R-12", xl(role="analyst", name="zhao"))) == (
        f"zhao of {XL_CI} may not accept request R-12: role command_center required (has analyst)")
    cmd(r, m.AcceptRequest, xl())
    assert refusal(r, m.AcceptRequest("d", "R-12", xl())) == (
        f"request R-12 is ACCEPTED by {XL_CI}; ACCEPT is allowed only while it is SENT")
    assert refusal(r, m.AnswerRequest("e", "R-12", xl(), "   ")) == "an answer to request R-12 needs findings"
    cmd(r, m.AnswerRequest, xl(), "found")
    # the brief's example: the addressee may not close what the requester asked
    assert refusal(r, m.CloseRequest("f", "R-12", xl())) == (
        f"request R-12 is ANSWERED by {XL_CI}; only the requester 110000/COMMAND_CENTER may CLOSE it")
    assert refusal(r, m.RefuseRequest("g", "R-12", xl(), "NO_CAPACITY")) == (
        f"request R-12 is ANSWERED by {XL_CI}; REFUSE is allowed while it is SENT or ACCEPTED")
    assert refusal(r, m.ReportJointAction("h", "R-12", xl())) == (
        "request R-12 did not ask for joint action; ANSWER and the requester's CLOSE end it")
    cmd(r, m.CloseRequest, REQUESTER)
    assert refusal(r, m.CloseRequest("i", "R-12", REQUESTER)) == "request R-12 is already CLOSED by 110000/COMMAND_CENTER"
    assert refusal(r, m.AnswerRequest("j", "R-12", xl(), "more")) == (
        "request R-12 is CLOSED by 110000/COMMAND_CENTER; nothing more can be done on it")
    with pytest.raises(WorkflowRefusal, match="R-12 is an assistance request, not a directive"):
        r.apply(m.AcknowledgeDirective("k", "R-12", xl()))


def test_refused_needs_a_reason():
    r = Runner()
    send(r, addressees=(XL_CI, LF_PO))
    assert "REFUSED needs a reason: one of NOT_COMPETENT" in refusal(r, m.RefuseRequest("a", "R-12", xl(), "BUSY"))
    assert refusal(r, m.RefuseRequest("b", "R-12", xl(), "OTHER")) == "REFUSED with reason OTHER needs a text saying why"
    (ev,), _ = cmd(r, m.RefuseRequest, xl(), "NOT_COMPETENT", "a matter for the city")
    assert (ev.event_type, ev.code, ev.text, ev.party_status) == ("REFUSED", "NOT_COMPETENT", "a matter for the city", "REFUSED")
    assert r.state.addressee(LF_PO).status == "SENT"  # each addressee on its own
    assert {d.party for d in due(r.state, r.policy)} == {LF_PO}


def test_joint_action_when_asked():
    r = Runner()
    send(r, joint_action=True)
    assert sorted({d.name for d in due(r.state, r.policy)}) == [f"accept:{XL_CI}", f"act:{XL_CI}", f"answer:{XL_CI}"]
    cmd(r, m.AcceptRequest, xl())
    assert refusal(r, m.ReportJointAction("a", "R-12", xl())) == (
        f"request R-12 is ACCEPTED by {XL_CI}; joint action (ACTED) is reported once it is ANSWERED")
    cmd(r, m.AnswerRequest, xl(), "found")
    assert {d.name for d in due(r.state, r.policy)} == {f"act:{XL_CI}"}
    (ev,), _ = cmd(r, m.ReportJointAction, xl(), "arrested jointly")
    assert ev.event_type == "ACTED" and due(r.state, r.policy) == []


# --- deadlines and escalation -------------------------------------------------------------

def test_default_deadlines_are_one_four_and_twenty_four_hours_from_sending():
    r = Runner()
    t0 = r.clock.now
    send(r, joint_action=True)
    first = {d.name: d.at for d in due(r.state, r.policy) if d.step == 0}
    assert first == {f"accept:{XL_CI}": t0 + HOUR, f"answer:{XL_CI}": t0 + 4 * HOUR, f"act:{XL_CI}": t0 + DAY}


def test_deadlines_per_priority_come_from_the_policy():
    policy = Runner().policy.with_seconds(request_CRITICAL_accept_s="10m", request_CRITICAL_answer_s="1h",
                                          request_CRITICAL_act_s="6h")
    r = Runner(policy)
    t0 = r.clock.now
    send(r, priority="CRITICAL", joint_action=True)
    first = {d.name.split(":")[0]: d.at for d in due(r.state, r.policy) if d.step == 0}
    assert first == {"accept": t0 + 10 * MIN, "answer": t0 + HOUR, "act": t0 + 6 * HOUR}
    routine = Runner(policy)
    send(routine, priority="ROUTINE")
    assert min(d.at for d in due(routine.state, policy)) == routine.clock.now + HOUR


def test_an_ignored_request_is_reminded_then_escalated_up_the_addressees_hierarchy_once_each():
    r = Runner()
    t0 = r.clock.now
    send(r)
    seen = []
    for hours in range(1, 20):
        r.clock.at(t0 + hours * HOUR)
        seen += [(hours, e.event_type, e.deadline.split(":")[0], e.level, e.to) for e in r.fire_due()]
        assert r.fire_due() == []
    assert seen == [
        (1, "REMINDED", "accept", 0, (XL_CI,)),
        (2, "ESCALATED", "accept", 1, ("130800/CRIMINAL_INVESTIGATION",)),
        (3, "ESCALATED", "accept", 2, ("130000/CRIMINAL_INVESTIGATION",)),
        (4, "ESCALATED", "accept", 3, ("JJJ",)),
        (4, "REMINDED", "answer", 0, (XL_CI,)),
        (8, "ESCALATED", "answer", 1, ("130800/CRIMINAL_INVESTIGATION",)),
        (12, "ESCALATED", "answer", 2, ("130000/CRIMINAL_INVESTIGATION",)),
        (16, "ESCALATED", "answer", 3, ("JJJ",)),
    ]
    assert r.events[2].text == f"{XL_CI} has not ACCEPTED request R-12 by its deadline"
    assert r.state.escalated_to == ("130800/CRIMINAL_INVESTIGATION", "130000/CRIMINAL_INVESTIGATION", "JJJ")
    assert r.events[-1].notify == ("110000", "130822", "130800", "130000", "JJJ")


def test_answered_in_time_is_never_escalated_and_acceptance_stops_only_the_accept_clock():
    r = Runner()
    t0 = r.clock.now
    send(r, addressees=(XL_CI, LF_PO))
    r.clock.at(t0 + 50 * MIN)
    cmd(r, m.AcceptRequest, xl())
    r.clock.at(t0 + 3 * HOUR)
    cmd(r, m.AnswerRequest, xl(), "found")
    r.clock.at(t0 + 3 * DAY)
    fired = r.fire_due()
    assert {e.party for e in fired} == {LF_PO}  # Langfang ignored it: only Langfang is reminded and escalated
    assert [e.to for e in fired if e.event_type == "ESCALATED"][:2] == [("130000/PUBLIC_ORDER",), ("JJJ", "TWL")]


def test_an_escalation_after_the_party_acted_never_fires():
    r = Runner()
    send(r)
    escalation = next(d for d in due(r.state, r.policy) if d.step == 1)
    r.clock.advance(HOUR + MIN)
    assert r.types(r.fire_due()) == ["REMINDED"]
    cmd(r, m.AcceptRequest, xl())
    r.clock.advance(DAY)
    assert r.fire(escalation) == []


# --- reuse of earlier answers -------------------------------------------------------------

def earlier_answers(now):
    return (
        m.EarlierAnswer("R-3", "131000/CRIMINAL_INVESTIGATION", now - 2 * DAY, PHONE, "seen in Langfang in May"),
        m.EarlierAnswer("R-5", XL_CI, now - DAY, PHONE, "no trace in Xinglong"),
        m.EarlierAnswer("R-7", "120114/PUBLIC_ORDER", now - 100 * DAY, PHONE, "too old to offer"),
        m.EarlierAnswer("R-8", "120114/PUBLIC_ORDER", now - DAY, m.Identifier("PLATE", "京A12345"), "another subject"),
        m.EarlierAnswer("R-12", XL_CI, now - DAY, PHONE, "this very request"),
    )


def test_earlier_answers_about_the_same_identifier_are_offered_and_each_offer_audited():
    r = Runner()
    events, effects = send(r, addressees=(XL_CI, LF_PO), earlier=earlier_answers(r.clock.now))
    assert r.types(events) == ["SENT", "ANSWERS_OFFERED", "ANSWERS_OFFERED"]
    offers = {e.party: e.refs for e in events[1:]}
    # within the reuse window, about a subject of this request, not the addressee's own answer, not this request
    assert offers == {XL_CI: ("R-3",), LF_PO: ("R-3", "R-5")}
    assert all(e.text is None for e in events[1:])  # findings go to the addressee only, not onto the shared topic
    offered = [e for e in effects if isinstance(e, m.OfferAnswers)]
    assert [(o.addressee, [a.request_id for a in o.answers]) for o in offered] == [(XL_CI, ["R-3"]), (LF_PO, ["R-3", "R-5"])]
    audits = [e for e in effects if isinstance(e, m.Audit)]
    assert [(a.action, a.agency, a.purpose, a.what) for a in audits] == [
        ("answer_offered", XL_CI, "R-12", "R-3 PHONE:13800138000"),
        ("answer_offered", LF_PO, "R-12", "R-3 PHONE:13800138000"),
        ("answer_offered", LF_PO, "R-12", "R-5 PHONE:13800138000"),
    ]


def test_reusing_an_offered_answer_is_audited_and_only_offered_answers_may_be_reused():
    r = Runner()
    send(r, earlier=earlier_answers(r.clock.now))
    cmd(r, m.AcceptRequest, xl())
    assert refusal(r, m.AnswerRequest("a", "R-12", xl(), "as before", ("R-7",))) == (
        f"request R-12: answers of R-7 were not offered to {XL_CI} (offered: R-3)")
    (ev,), effects = cmd(r, m.AnswerRequest, xl(), "as R-3 found: seen in Langfang in May", ("R-3",))
    assert (ev.event_type, ev.code, ev.refs) == ("ANSWERED", "REUSED", ("R-3",))
    (audit,) = [e for e in effects if isinstance(e, m.Audit)]
    assert (audit.action, audit.actor, audit.agency, audit.role, audit.purpose, audit.what) == (
        "answer_reused", "wang", XL_CI, "command_center", "R-12", "R-3 PHONE:13800138000")
    assert r.state.addressee(XL_CI).reused_from == ("R-3",)


def test_the_reuse_window_is_policy():
    r = Runner(Runner().policy.with_seconds(reuse_window_s="1d"))
    events, _ = send(r, addressees=(LF_PO,), earlier=earlier_answers(r.clock.now))
    assert [e.refs for e in events if e.event_type == "ANSWERS_OFFERED"] == [("R-5",)]


# --- idempotent replay --------------------------------------------------------------------

def test_the_same_command_or_deadline_twice_changes_nothing_the_second_time():
    r = Runner()
    send(r)
    accept = m.AcceptRequest("acc-1", "R-12", xl())
    r.apply(accept)
    state = r.state
    assert r.apply(accept) == ([], []) and r.state is state
    r.clock.advance(5 * HOUR)
    (reminder,) = r.fire_due()
    answer_reminder = next(d for d in due(state, r.policy) if d.key == reminder.command_id.split(":", 1)[1])
    state = r.state
    assert r.fire(answer_reminder) == [] and r.state is state


@pytest.mark.parametrize("seed", range(40))
def test_random_histories_replayed_twice_equal_once(seed):
    rnd = random.Random(seed)
    actors = [xl(), lf(), REQUESTER]
    steps = []
    for i in range(rnd.randint(1, 14)):
        verb = rnd.choice(["advance", "advance", "accept", "answer", "refuse", "act", "close", "fire"])
        actor = rnd.choice(actors)
        steps.append({
            "advance": ("advance", rnd.choice([10 * MIN, HOUR, 3 * HOUR, DAY])),
            "accept": ("cmd", m.AcceptRequest(f"a{i}", "R-12", actor)),
            "answer": ("cmd", m.AnswerRequest(f"b{i}", "R-12", actor, "found")),
            "refuse": ("cmd", m.RefuseRequest(f"c{i}", "R-12", actor, "NO_CAPACITY")),
            "act": ("cmd", m.ReportJointAction(f"d{i}", "R-12", actor)),
            "close": ("cmd", m.CloseRequest(f"e{i}", "R-12", actor)),
            "fire": ("fire", None),
        }[verb])

    def play(times):
        r = Runner()
        send(r, addressees=(XL_CI, LF_PO), joint_action=True)
        for kind, payload in steps:
            if kind == "advance":
                r.clock.advance(payload)
                continue
            for _ in range(times):
                try:
                    r.apply(payload) if kind == "cmd" else r.fire_due()
                except WorkflowRefusal:
                    pass
        r.fire_due()
        return r

    once, twice = play(1), play(2)
    assert once.state == twice.state and [e.to_avro() for e in once.events] == [e.to_avro() for e in twice.events]
    keys = [e.command_id for e in once.events if e.event_type in ("REMINDED", "ESCALATED")]
    assert len(keys) == len(set(keys))
