"""The workflow job's pure glue: commands on the wire, routing hits and revisions, the due index."""
from __future__ import annotations

import io
import json

import fastavro
import pytest

from schemas.catalog import parsed_schema
from stream_jobs.workflow_job import (
    BadCommand, DueIndex, answers_step, decode_command, decode_envelope, encode_envelope, hit_route, index_message,
    RecentHits, lookup_message, needs_answers, refusal_dead_letter, route_by_record, wanted_route,
)
from workflows import model as m
from workflows.machine import apply, next_due
from workflows.policy import Policy
from workflows.testing import T0, person

ALICE = person("120000")
BOB = person("130822", "CRIMINAL_INVESTIGATION")


def gateway_message(command, issued_at=T0) -> bytes:
    """What the gateway writes on intel.workflow.commands."""
    return json.dumps({"command": m.to_json(command), "command_id": command.command_id, "issued_at": issued_at,
                       "via": "gateway"}).encode()


COMMANDS = [
    m.SendRequest("c1", "R-1", ALICE, ("130822/CRIMINAL_INVESTIGATION",), "URGENT",
                  (m.Identifier("PHONE", "13800138000"), m.Identifier("PLATE", "冀H12345")), "where is he?",
                  joint_action=True,
                  earlier_answers=(m.EarlierAnswer("R-0", "130800/CRIMINAL_INVESTIGATION", T0 - 1,
                                                   m.Identifier("PHONE", "13800138000"), "seen"),)),
    m.AcceptRequest("c2", "R-1", BOB),
    m.AnswerRequest("c3", "R-1", BOB, "found", reuse_of=("R-0",)),
    m.RefuseRequest("c4", "R-1", BOB, "OTHER", "no"),
    m.ReportJointAction("c5", "R-1", BOB),
    m.CloseRequest("c6", "R-1", ALICE, "done"),
    m.ConfirmHit("c7", "H-1", person("130822"), "NEED_TIME", minutes=30),
    m.ReportAction("c8", "H-1", person("120119"), "DETAINED"),
    m.IssueDirective("c9", "D-1", person("130000"), ("130822", "JJJ"), "check hotels", T0 + 3_600_000),
    m.AcknowledgeDirective("c10", "D-1", person("130822")),
    m.ReportDirective("c11", "D-1", person("130822"), "CANNOT", "no staff"),
    m.CancelDirective("c12", "D-1", person("130000")),
    m.OpenHit("h", "h", m.Actor.bus(), "WANTED_PERSON", "130822", "120119", m.Identifier("RESIDENT_ID", "1"), "k"),
    m.WantedRevision("e", "h", m.Actor.bus(), "k", "ARRESTED", 2),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_survives_the_wire(command):
    env = decode_envelope(gateway_message(command, T0 + 5))
    assert env.command == command
    assert env.issued_at == T0 + 5 and env.via == "gateway" and env.command_id == command.command_id
    assert isinstance(env.command.actor.roles, frozenset)


def test_the_envelope_command_id_wins():
    doc = json.loads(gateway_message(COMMANDS[1]))
    doc["command_id"] = "gw-42"
    assert decode_envelope(json.dumps(doc)).command.command_id == "gw-42"


@pytest.mark.parametrize("raw, says", [
    (b"not json", "not JSON"),
    (b"{}", "no 'command'"),
    (json.dumps({"command": {"__type__": "HitFollowUp"}, "issued_at": 1}).encode(), "not a workflow command"),
    (json.dumps({"command": {"__type__": "AcceptRequest", "command_id": "c", "item_id": "R"}, "issued_at": 1}).encode(),
     "AcceptRequest"),
    (json.dumps({"command": {"__type__": "AcceptRequest", "command_id": "c", "item_id": "R",
                             "actor": {"__type__": "Nobody"}}, "issued_at": 1}).encode(), "unknown type"),
])
def test_what_is_not_a_command_is_refused_saying_why(raw, says):
    with pytest.raises(BadCommand, match=says):
        decode_envelope(raw)


def test_issued_at_must_be_milliseconds():
    doc = json.loads(gateway_message(COMMANDS[1]))
    doc["issued_at"] = "2026-11-30T00:00:00Z"
    with pytest.raises(BadCommand, match="issued_at"):
        decode_envelope(json.dumps(doc))


def test_decode_command_needs_an_actor_object():
    raw = m.to_json(COMMANDS[1])
    raw["actor"] = "bob"
    with pytest.raises(BadCommand):
        decode_command(raw)


def hit(hit_type="WANTED_PERSON", hit_id="H-1", record=None):
    return {"hit_id": hit_id, "hit_type": hit_type, "owner_region": "130822", "hit_region": "120119",
            "matched_on": {"kind": "RESIDENT_ID", "value": "130822197701010011"}, "record_key": "130822/ztry/W-1",
            "record": json.dumps(record or {"danger_level": "HIGH"}), "classification": "INTERNAL",
            "detected_at": T0 + 7}


def test_a_wanted_hit_is_routed_by_record_key_and_opened_with_its_time():
    key, message = hit_route(hit())
    assert key == "130822/ztry/W-1"
    hits, forwards = route_by_record(key, [], message)
    assert hits == ["H-1"] and [f[0] for f in forwards] == ["H-1"]
    env = decode_envelope(forwards[0][1])
    assert isinstance(env.command, m.OpenHit) and env.issued_at == T0 + 7 and env.command.danger_level == "HIGH"
    assert env.command.command_id == "H-1"


def test_a_case_link_opens_nothing():
    assert hit_route(hit("CASE_LINK")) is None


def test_the_second_copy_of_a_hit_is_opened_once():
    key, message = hit_route(hit())
    hits, _ = route_by_record(key, [], message)
    hits2, forwards = route_by_record(key, hits, message)
    assert hits2 == ["H-1"]  # listed once
    state, events, _ = apply(None, decode_envelope(forwards[0][1]).command, T0, Policy())
    again, events2, _ = apply(state, decode_envelope(forwards[0][1]).command, T0 + 1, Policy())
    assert len(events) == 1 and events2 == [] and again is state


def wanted(action, revision=2):
    return {"event_id": f"ev-{revision}", "source_region": "130822", "source_system": "ztry", "source_ref": "W-1",
            "action": action, "revision": revision, "reported_at": T0 + 100, "occurred_at": T0}


def test_revisions_go_to_every_open_hit_and_a_closing_one_ends_the_list():
    key, message = wanted_route(wanted("UPDATED"))
    assert key == "130822/ztry/W-1"
    hits, forwards = route_by_record(key, ["H-1", "H-2"], message)
    assert hits == ["H-1", "H-2"] and [f[0] for f in forwards] == ["H-1", "H-2"]
    _, closing = wanted_route(wanted("ARRESTED", 3))
    hits, forwards = route_by_record(key, hits, closing)
    assert hits == []
    cmd = decode_envelope(forwards[1][1]).command
    assert isinstance(cmd, m.WantedRevision) and cmd.item_id == "H-2" and cmd.action == "ARRESTED"
    assert cmd.command_id == "ev-3" and cmd.revision == 3 and cmd.actor.is_bus
    assert decode_envelope(forwards[1][1]).issued_at == T0 + 100


def test_a_revision_before_any_hit_routes_nowhere():
    key, message = wanted_route(wanted("ARRESTED"))
    assert route_by_record(key, [], message) == ([], [])


def test_due_index_pops_what_is_due_once_in_time_order():
    ix = DueIndex()
    ix.set("a", 0, 300)
    ix.set("b", 1, 100)
    ix.set("c", 2, 200)
    ix.set("c", 2, 500)  # moved later: the old heap entry is ignored
    assert len(ix) == 3 and ix.next_at() == 100
    assert ix.pop_due(350) == [("b", 1), ("a", 0)]
    assert ix.pop_due(350) == []
    ix.set("d", 3, None)  # nothing pending: not indexed
    assert len(ix) == 1 and ix.pop_due(1000) == [("c", 2)]


def test_due_index_drops_revoked_partitions():
    ix = DueIndex()
    ix.set("a", 0, 100)
    ix.set("b", 1, 100)
    ix.drop_partitions([1])
    assert ix.pop_due(200) == [("a", 0)]


def test_the_due_index_follows_the_machine():
    policy = Policy().with_seconds(request_ROUTINE_accept_s=5)
    send = decode_envelope(gateway_message(m.SendRequest("c1", "R-1", ALICE, ("130822/CRIMINAL_INVESTIGATION",),
                                                         "ROUTINE", (), "where?"))).command
    state, _, _ = apply(None, send, T0, policy)
    assert next_due(state, policy) == T0 + 5000


def test_a_refusal_is_a_dead_letter_of_stage_workflow_with_a_stable_id():
    raw = gateway_message(COMMANDS[1])
    dl = refusal_dead_letter(raw, "not yours", COMMANDS[1], at=T0)
    assert dl == refusal_dead_letter(raw, "not yours", COMMANDS[1], at=T0)  # a replay writes the same letter
    assert dl["stage"] == "WORKFLOW" and dl["source_region"] == "130822" and "c2" in dl["source"]
    assert f"by {BOB.name} of 130822/CRIMINAL_INVESTIGATION" in dl["reason"]
    fastavro.schemaless_writer(io.BytesIO(), parsed_schema("dead_letter"), {**dl, "dlq_id": dl["dlq_id"]})


def test_an_undecodable_command_is_a_dead_letter_too():
    dl = refusal_dead_letter(b"garbage", "not JSON")
    assert dl["stage"] == "WORKFLOW" and dl["source_region"] is None and "unknown" in dl["reason"]


def test_encode_envelope_is_what_decode_reads():
    env = decode_envelope(encode_envelope(COMMANDS[6], T0, "cli"))
    assert env.command == COMMANDS[6] and env.via == "cli"


@pytest.mark.parametrize("command", COMMANDS[:12], ids=lambda c: type(c).__name__)
def test_what_the_gateway_writes_is_what_the_job_reads(command):
    workflow_api = pytest.importorskip("gateway.workflow_api")
    key, value = workflow_api.command_record(command, T0 + 9)
    env = decode_envelope(value)
    assert key.decode() == env.command.item_id and env.command == command and env.issued_at == T0 + 9


PHONE, PLATE = m.Identifier("PHONE", "13800138000"), m.Identifier("PLATE", "冀H12345")


def earlier(request_id, identifier, by="130800/CRIMINAL_INVESTIGATION", at=T0 - 1000):
    return m.EarlierAnswer(request_id, by, at, identifier, f"findings of {request_id}")


def test_a_request_with_subjects_visits_each_subjects_answers_then_its_item():
    index = {}
    for answer in (earlier("R-0", PHONE), earlier("R-00", PLATE), earlier("R-0", PHONE)):  # the last: a replay
        key, msg = index_message(answer)
        index[key], out = answers_step(key, index.get(key, []), msg)
        assert out == []
    assert len(index[str(PHONE)]) == 1 and len(index[str(PLATE)]) == 1

    send = m.SendRequest("c1", "R-1", ALICE, ("130822/CRIMINAL_INVESTIGATION",), "ROUTINE", (PHONE, PLATE), "who?")
    raw = gateway_message(send)
    env = decode_envelope(raw)
    assert needs_answers(env)
    key, msg = lookup_message(raw, env)
    hops = []
    while True:
        _, out = answers_step(key, index.get(key, []), msg)
        (where, key, msg), = out
        hops.append(where)
        if where == "items":
            break
    assert hops == ["answers", "items"] and key == "R-1"
    done = decode_envelope(msg)
    assert {a.request_id for a in done.command.earlier_answers} == {"R-0", "R-00"}
    assert done.issued_at == T0 and done.command.subjects == (PHONE, PLATE) and done.enriched
    state, events, effects = apply(None, done.command, done.issued_at, Policy())
    assert [e.event_type for e in events] == ["SENT", "ANSWERS_OFFERED"]
    assert set(events[1].refs) == {"R-0", "R-00"}


def test_a_request_without_subjects_goes_straight_to_its_item():
    env = decode_envelope(gateway_message(m.SendRequest("c1", "R-1", ALICE, ("130822/CRIMINAL_INVESTIGATION",),
                                                        "ROUTINE", (), "who?")))
    assert not needs_answers(env)
    assert not needs_answers(decode_envelope(gateway_message(COMMANDS[1])))


def test_the_index_keeps_the_newest_answers():
    kept = []
    for i in range(5):
        key, msg = index_message(earlier(f"R-{i}", PHONE))
        kept, _ = answers_step(key, kept, msg, limit=3)
    assert [a["request_id"] for a in kept] == ["R-2", "R-3", "R-4"]


def test_a_starting_worker_opens_only_recent_hits():
    from stream_jobs.workflow_job import hit_is_recent

    h = hit()  # detected at T0 + 7
    assert hit_is_recent(h, T0 + 7 + 86_400_000, 86_400)
    assert not hit_is_recent(h, T0 + 8 + 86_400_000, 86_400)
    assert hit_is_recent(h, T0 + 10**12, 0)  # 0: every hit, however old


def test_recent_hits_routes_the_first_copy_of_a_hit_and_skips_the_next():
    recent = RecentHits(capacity=3)
    # Beijing's copy, then Hebei's copy of the same hit: one follow-up to open, one no-op to spare
    assert recent.first("hit-1") is True
    assert recent.first("hit-1") is False
    assert recent.first("hit-2") is True


def test_recent_hits_forgets_the_oldest_and_then_routes_its_copy_again():
    recent = RecentHits(capacity=2)
    for hit_id in ("a", "b", "c"):  # "a" is forgotten when "c" comes
        assert recent.first(hit_id)
    # routed again: the no-op it always was (command id = hit id), never a follow-up lost
    assert recent.first("a") is True
    assert recent.first("c") is False
    assert len(recent._ids) == 2
