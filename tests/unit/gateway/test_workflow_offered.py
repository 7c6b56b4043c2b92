"""Earlier answers offered to an addressee (issue 16: "each reuse audited"), through the gateway's routes
on chDB, with a fake job that keeps the workflow job's earlier-answers index (IndexAnswer effects in,
SendRequest.earlier_answers out). Each refusal next to a control that succeeds, with the audit rows."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from tests.unit.gateway.test_workflow_api import FakeJob, gw, login  # noqa: F401  (gw: the fixture)
from workflows import model as m
from workflows.machine import WorkflowRefusal, apply
from sinks.rows import WORKFLOW_COLUMNS, workflow_row

pytest.importorskip("chdb")


class IndexingJob(FakeJob):
    """FakeJob plus the job's index of answers by identifier (stream_jobs.workflow_job's answers agent)."""

    def __init__(self, engine):
        super().__init__(engine)
        self.index: dict = {}

    def run(self, command):
        if isinstance(command, m.SendRequest) and command.subjects:
            command = replace(command, earlier_answers=tuple(a for s in command.subjects for a in self.index.get(s, ())))
        try:
            state, events, effects = apply(self.states.get(command.item_id), command, int(time.time() * 1000),
                                           self.policy, self.regions)
        except WorkflowRefusal as exc:
            self.refusals.append(str(exc))
            return
        self.states[command.item_id] = state
        for e in effects:
            if isinstance(e, m.IndexAnswer):
                self.index.setdefault(e.answer.identifier, []).append(e.answer)
        rows = [workflow_row(e.to_avro(), topic="intel.workflow", partition=0, offset=0, ingested_ms=0) for e in events]
        self.engine.insert("workflow_events", WORKFLOW_COLUMNS, rows)


@pytest.fixture
def job(gw):  # noqa: F811
    client, engine, _ = gw
    j = IndexingJob(engine)
    client.app.state.workflow.pop("producer", None)
    client.app.state.workflow["factory"] = j
    return j


def audits(engine, **where):
    cond = " AND ".join(f"{k} = '{v}'" for k, v in where.items())
    cols, rows = engine.query(f"SELECT user, action, outcome, reason, query_name, params FROM intelbus.audit_log "
                              f"WHERE {cond} ORDER BY at_ms")
    return [dict(zip(cols, r)) for r in rows]


def request(client, to, phone, who="hb-cc"):
    r = client.post("/api/v1/requests", json={"to": [to], "subjects": [f"PHONE:{phone}"], "question": "where is he?"},
                    headers=login(client, who))
    assert r.status_code == 202, r.text
    return r.json()["item_id"]


def answered_earlier(client, phone, findings="lives at 兴隆县 X路 3号"):
    """R1 to Xinglong's criminal investigation, accepted and answered."""
    r1 = request(client, "130822/CRIMINAL_INVESTIGATION", phone)
    xl = login(client, "xl-ci")
    assert client.post(f"/api/v1/requests/{r1}/accept", headers=xl).status_code == 202
    assert client.post(f"/api/v1/requests/{r1}/answer", json={"findings": findings}, headers=xl).status_code == 202
    return r1


def test_the_addressee_sees_the_offered_answer_and_each_reading_is_audited(gw, job):  # noqa: F811
    client, engine, _ = gw
    phone = f"139{time.time_ns() % 10**8:08d}"
    r1 = answered_earlier(client, phone)
    r2 = request(client, "120119/COMMAND_CENTER", phone)
    jz = login(client, "jz-cc")
    assert client.get(f"/api/v1/items/{r2}", headers=jz).json()["offered_to_you"] == [r1]

    r = client.get(f"/api/v1/requests/{r2}/offered", headers=jz)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["offered"] == [r1] and len(body["answers"]) == 1
    a = body["answers"][0]
    assert (a["request_id"], a["answered_by"], a["answered_by_person"]) == (r1, "130822/CRIMINAL_INVESTIGATION", "xl-ci")
    assert a["findings"] == "lives at 兴隆县 X路 3号" and a["identifiers"] == [f"PHONE:{phone}"]
    rows = [x for x in audits(engine, action="reuse", user="jz-cc") if json.loads(x["params"])["item_id"] == r2]
    assert len(rows) == 1 and rows[0]["outcome"] == "ok" and rows[0]["query_name"] == "request.offered"
    assert json.loads(rows[0]["params"])["earlier_request"] == r1
    assert client.get(f"/api/v1/requests/{r2}/offered", headers=jz).status_code == 200  # read again: audited again
    assert len([x for x in audits(engine, action="reuse", user="jz-cc") if json.loads(x["params"])["item_id"] == r2]) == 2


def test_anyone_but_the_addressee_is_refused_and_the_attempt_audited(gw, job):  # noqa: F811
    client, engine, _ = gw
    phone = f"138{time.time_ns() % 10**8:08d}"
    answered_earlier(client, phone, findings="secret-ish finding")
    r2 = request(client, "120119/COMMAND_CENTER", phone)
    # the requester sees the request but is not its addressee
    r = client.get(f"/api/v1/requests/{r2}/offered", headers=login(client, "hb-cc"))
    assert r.status_code == 403, r.text
    assert "130000/COMMAND_CENTER is not one of them and may not view them" in r.json()["detail"]
    assert "secret-ish finding" not in r.text
    refused = [x for x in audits(engine, action="reuse", user="hb-cc", outcome="refused")
               if json.loads(x["params"])["item_id"] == r2]
    assert len(refused) == 1 and "may not view them" in refused[0]["reason"]
    # the earlier answerer may not see this request at all: it reads as unknown
    r = client.get(f"/api/v1/requests/{r2}/offered", headers=login(client, "xl-ci"))
    assert r.status_code == 404 and "secret-ish finding" not in r.text
    assert [x for x in audits(engine, action="reuse", user="xl-ci", outcome="refused")
            if json.loads(x["params"])["item_id"] == r2]
    # control: the addressee gets it
    r = client.get(f"/api/v1/requests/{r2}/offered", headers=login(client, "jz-cc"))
    assert r.status_code == 200 and r.json()["answers"][0]["findings"] == "secret-ish finding"


def test_an_answer_reuses_only_what_was_offered_and_each_reuse_is_audited(gw, job):  # noqa: F811
    client, engine, _ = gw
    phone = f"137{time.time_ns() % 10**8:08d}"
    r1 = answered_earlier(client, phone)
    r2 = request(client, "120119/COMMAND_CENTER", phone)
    jz = login(client, "jz-cc")
    assert client.post(f"/api/v1/requests/{r2}/accept", headers=jz).status_code == 202
    r = client.post(f"/api/v1/requests/{r2}/answer", json={"findings": "same", "reuse_of": ["R-000000000000"]}, headers=jz)
    assert r.status_code == 409 and f"answers of R-000000000000 were not offered to 120119/COMMAND_CENTER (offered: {r1})" \
        in r.json()["detail"]
    assert not [x for x in audits(engine, action="reuse", query_name="request.answer", outcome="ok")
                if json.loads(x["params"])["item_id"] == r2]
    r = client.post(f"/api/v1/requests/{r2}/answer", json={"findings": "confirmed, as 130822 found", "reuse_of": [r1]},
                    headers=jz)
    assert r.status_code == 202, r.text
    rows = [x for x in audits(engine, action="reuse", query_name="request.answer", user="jz-cc")
            if json.loads(x["params"])["item_id"] == r2]
    assert len(rows) == 1 and json.loads(rows[0]["params"])["earlier_request"] == r1
    assert json.loads(rows[0]["params"])["command_id"] == r.json()["command_id"]
    answered = [e for e in client.get(f"/api/v1/items/{r2}", headers=jz).json()["events"] if e["event_type"] == "ANSWERED"]
    assert answered[0]["code"] == "REUSED" and answered[0]["refs"] == [r1]


def test_nothing_offered_is_an_empty_list_not_an_error(gw, job):  # noqa: F811
    client, engine, _ = gw
    r2 = request(client, "120119/COMMAND_CENTER", f"136{time.time_ns() % 10**8:08d}")
    r = client.get(f"/api/v1/requests/{r2}/offered", headers=login(client, "jz-cc"))
    assert r.status_code == 200 and r.json()["answers"] == [] and r.json()["offered"] == []
