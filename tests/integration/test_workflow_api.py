"""The people's side of the workflows on the real stack: `intelbus request send` as a test principal
through a gateway running this checkout's code, the command on intel.workflow.commands exactly as the
workflow job reads it, the audit row; then, when the stack runs the workflow job and the sink stores
intel.workflow, the addressee accepts and ACCEPTED comes back on intel.workflow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.integration.conftest import TopicReader


@pytest.fixture(scope="module")
def gateway(own_gateway):
    """A gateway of this checkout (gateway.workflow_api is one of gateway.app.EXTENSIONS)."""
    return own_gateway


def token_of(people, name) -> str:
    return json.loads(open(people.env(name)["INTELBUS_CREDENTIALS"]).read())["token"]


def cli(gateway, people, name, *argv, timeout=60):
    """`intelbus ARGV` as `name` against this gateway."""
    env = {**os.environ, "INTELBUS_GATEWAY_URL": gateway.url, "INTELBUS_TOKEN": token_of(people, name)}
    return subprocess.run([sys.executable, "-m", "ops.cli", *argv], capture_output=True, text=True, timeout=timeout, env=env)


def admin_ch(settings, sql):
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(sql)[1]
    finally:
        ex.close()


def send_request(gateway, people, settings, wait="1"):
    commands = TopicReader(settings, "intel.workflow.commands")
    try:
        r = cli(gateway, people, "t-hb-cc", "request", "send", "--to", "120119/COMMAND_CENTER", "--priority", "URGENT",
                "--subject", "PLATE:津A12345", "--question", "该车是否在蓟州辖区?", "--wait", wait)
        assert r.returncode == 0, r.stderr
        item_id = r.stdout.split(":")[0].strip()
        assert item_id.startswith("R-"), r.stdout
        got = commands.read(until=lambda ms: any(m.key() == item_id.encode() for m in ms), timeout=30, settle=0.5)
    finally:
        commands.close()
    mine = [m for m in got if m.key() == item_id.encode()]
    return item_id, r, mine


def test_request_send_through_the_cli_puts_the_contract_record_on_the_commands_topic(gateway, people, settings):
    item_id, r, mine = send_request(gateway, people, settings)
    assert len(mine) == 1, f"{len(mine)} records for {item_id}"
    record = json.loads(mine[0].value().decode("utf-8"))
    assert set(record) == {"command", "command_id", "issued_at", "via"} and record["via"] == "gateway"
    cmd = record["command"]
    assert cmd["__type__"] == "SendRequest" and cmd["item_id"] == item_id and cmd["command_id"] == record["command_id"]
    assert cmd["actor"]["name"] == "t-hb-cc" and cmd["actor"]["region"] == "130000"
    assert cmd["actor"]["branch"] == "COMMAND_CENTER" and cmd["actor"]["roles"] == ["command_center"]
    assert cmd["addressees"] == ["120119/COMMAND_CENTER"] and cmd["priority"] == "URGENT"
    assert cmd["subjects"] == [{"kind": "PLATE", "value": "津A12345", "__type__": "Identifier"}]
    assert abs(record["issued_at"] - time.time() * 1000) < 120_000
    assert "sent; not yet processed" in r.stdout or "SENT" in r.stdout
    rows = admin_ch(settings, "SELECT user, outcome, params FROM intelbus.audit_log WHERE action = 'workflow' "
                              f"AND query_name = 'request.send' AND params LIKE '%{item_id}%'")
    assert rows and rows[0][0] == "t-hb-cc" and rows[0][1] == "ok"


def test_an_analyst_may_not_send_and_the_refusal_is_audited(gateway, people, settings):
    r = cli(gateway, people, "t-js-analyst", "request", "send", "--to", "120119/COMMAND_CENTER",
            "--question", "?", "--wait", "0")
    assert r.returncode == 3 and "role command_center required for workflow" in r.stderr
    rows = admin_ch(settings, "SELECT count() FROM intelbus.audit_log WHERE action = 'workflow' AND outcome = 'refused' "
                              "AND user = 't-js-analyst' AND at_ms > toUInt64(now() - 120) * 1000")
    assert rows[0][0] >= 1


def test_the_addressee_accepts_and_the_job_says_accepted(gateway, people, settings, codec):
    """Needs the stack's workflow job (stream_jobs/workflow_job.py) and a sink that stores intel.workflow."""
    events = TopicReader(settings, "intel.workflow")
    try:
        item_id, _, _ = send_request(gateway, people, settings, wait="0")
        seen = events.read(until=lambda ms: any(m.key() == item_id.encode() for m in ms), timeout=20, settle=0.2)
        if not any(m.key() == item_id.encode() for m in seen):
            pytest.skip("no workflow job on this stack answered the request within 20 s (intel.workflow)")
        headers = {"Authorization": f"Bearer {token_of(people, 't-jz-cc')}"}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if httpx.get(f"{gateway.url}/api/v1/items/{item_id}", headers=headers, timeout=10).status_code == 200:
                break
            time.sleep(0.5)
        else:
            pytest.skip("the sink on this stack does not store intel.workflow in workflow_events yet (restart it)")
        r = cli(gateway, people, "t-jz-cc", "request", "accept", item_id, "--wait", "10")
        assert r.returncode == 0 and "ACCEPTED" in r.stdout, r.stdout + r.stderr
        got = events.read(until=lambda ms: any(m.key() == item_id.encode() and
                                               codec.decode(m.value())["event_type"] == "ACCEPTED" for m in ms),
                          timeout=30, settle=0.2)
        accepted = [codec.decode(m.value()) for m in got if m.key() == item_id.encode()]
        accepted = [e for e in accepted if e["event_type"] == "ACCEPTED"]
        assert len(accepted) == 1 and accepted[0]["party"] == "120119/COMMAND_CENTER"
        assert accepted[0]["actor"] == "t-jz-cc"
    finally:
        events.close()


def test_the_workflow_sql_runs_on_the_stack_server(stack, settings):
    """Migration 0004 and the routes' SQL (item history, hit, queue) on the stack's ClickHouse (18.16 locally),
    in a scratch database: a replayed event stored once, Nullable times, arrays, FINAL with IN."""
    import uuid

    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor
    from sinks.migrate import apply_migrations
    from sinks.rows import WORKFLOW_COLUMNS, workflow_row
    from gateway.workflow_api import fold, hit_sql, item_events_sql, queue_sql, waiting_for
    from workflows.model import WorkflowEvent

    db = f"wf_{uuid.uuid4().hex[:12]}"
    ex = DriverExecutor(clickhouse_url_as(settings, "default"), database=db)
    try:
        assert "0004_workflow" in apply_migrations(ex)
        now = int(time.time() * 1000)
        sent = WorkflowEvent(item_id="R-0123456789ab", item_kind="ASSISTANCE_REQUEST", event_type="SENT", seq=1, at=now,
                             status="OPEN", actor="hb-cc", actor_agency="130000/COMMAND_CENTER",
                             to=("120119/COMMAND_CENTER",), notify=("130000", "120119"), due_at=now + 3_600_000,
                             code="URGENT", text="在吗", refs=("PLATE:津A12345",), command_id="c-1")
        row = workflow_row(sent.to_avro(), topic="intel.workflow", partition=0, offset=1, ingested_ms=now)
        ex.insert("workflow_events", WORKFLOW_COLUMNS, [row])
        ex.insert("workflow_events", WORKFLOW_COLUMNS, [row[:-1] + (now + 1,)])  # redelivered
        cols, rows = ex.query(item_events_sql(db, "R-0123456789ab"))
        events = [dict(zip(cols, r)) for r in rows]
        assert len(events) == 1 and events[0]["due_ms"] == now + 3_600_000 and events[0]["minutes"] is None
        assert list(events[0]["to"]) == ["120119/COMMAND_CENTER"] and events[0]["text"] == "在吗"
        cols, rows = ex.query(queue_sql(db, "120119/COMMAND_CENTER", "120119", now - 60_000))
        v = fold([dict(zip(cols, r)) for r in rows])
        assert v.item_id == "R-0123456789ab" and waiting_for(v, "120119/COMMAND_CENTER", "120119") == "accept"
        assert ex.query(queue_sql(db, "320000/COMMAND_CENTER", "320000", now - 60_000))[1] == []
        assert ex.query(hit_sql(db, "no-such-hit"))[1] == []
    finally:
        ex.execute(f"DROP DATABASE IF EXISTS {db}")
        ex.close()


def test_an_earlier_answer_is_offered_to_the_next_addressee_and_each_reading_is_audited(gateway, people, settings):
    """Needs the stack's workflow job and sink: R1 answered by Jizhou; R2 about the same phone to Wuqing is offered
    Jizhou's answer; Wuqing reads it (`intelbus request offered`, one audit row `reuse`), the requester may not."""
    import random

    phone = f"PHONE:139{random.randrange(10**8):08d}"

    def item_as(name, item_id):
        return httpx.get(f"{gateway.url}/api/v1/items/{item_id}", headers={"Authorization": f"Bearer {token_of(people, name)}"},
                         timeout=10)

    def wait_for(name, item_id, ok, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = item_as(name, item_id)
            if r.status_code == 200 and ok(r.json()):
                return r.json()
            time.sleep(0.5)
        return None

    r = cli(gateway, people, "t-hb-cc", "request", "send", "--to", "120119/COMMAND_CENTER", "--subject", phone,
            "--question", "此号码机主现住何处?", "--wait", "0")
    assert r.returncode == 0, r.stderr
    r1 = r.stdout.split(":")[0].strip()
    if wait_for("t-jz-cc", r1, lambda item: item["parties"]) is None:
        pytest.skip("no workflow job and sink on this stack recorded the request within 30 s")
    for argv in (("accept", r1), ("answer", r1, "--findings", "机主住蓟州区渔阳镇, 已核实")):
        r = cli(gateway, people, "t-jz-cc", "request", *argv, "--wait", "15")
        assert r.returncode == 0 and "not yet processed" not in r.stdout, r.stdout + r.stderr
    time.sleep(2)  # the answer's index message reaches the answers index
    r = cli(gateway, people, "t-hb-cc", "request", "send", "--to", "120114/COMMAND_CENTER", "--subject", phone,
            "--question", "此号码机主是否在武清?", "--wait", "0")
    r2 = r.stdout.split(":")[0].strip()
    item = wait_for("t-wq-cc", r2, lambda item: item["offered_to_you"])
    assert item is not None and item["offered_to_you"] == [r1], item_as("t-wq-cc", r2).text

    # control: the addressee reads the offered answer, audited as a reuse
    r = cli(gateway, people, "t-wq-cc", "request", "offered", r2)
    assert r.returncode == 0 and "机主住蓟州区渔阳镇, 已核实" in r.stdout and r1 in r.stdout, r.stdout + r.stderr
    assert "120119/COMMAND_CENTER (t-jz-cc)" in r.stdout
    rows = admin_ch(settings, "SELECT user, outcome, params FROM intelbus.audit_log WHERE action = 'reuse' "
                              f"AND query_name = 'request.offered' AND params LIKE '%{r2}%' ORDER BY at_ms")
    assert [(u, o) for u, o, _ in rows] == [("t-wq-cc", "ok")] and json.loads(rows[0][2])["earlier_request"] == r1

    # attempt: the requester sees the request but is not its addressee
    r = httpx.get(f"{gateway.url}/api/v1/requests/{r2}/offered",
                  headers={"Authorization": f"Bearer {token_of(people, 't-hb-cc')}"}, timeout=10)
    assert r.status_code == 403 and "130000/COMMAND_CENTER is not one of them and may not view them" in r.json()["detail"]
    assert "渔阳镇" not in r.text
    rows = admin_ch(settings, "SELECT user, outcome, reason FROM intelbus.audit_log WHERE action = 'reuse' "
                              f"AND query_name = 'request.offered' AND params LIKE '%{r2}%' AND outcome = 'refused'")
    assert [(u, o) for u, o, _ in rows] == [("t-hb-cc", "refused")] and "may not view them" in rows[0][2]
