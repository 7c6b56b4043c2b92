"""The workflow routes (gateway/workflow_api.py) on chDB with a fake producer that plays the workflow
job: it decodes each record of intel.workflow.commands (the contract), applies it with
workflows.machine and stores the events as the sink would. Each test: a success and the refusals
(no role, wrong agency, unknown item), with their audit rows."""
from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

import gateway.app as gateway_app
from gateway.app import Services, create_app
from gateway.auth import Authenticator
from gateway.workflow_api import COMMANDS_TOPIC
from identity.store import PrincipalStore
from identity.tokens import TokenIssuer, load_or_create_key
from schemas.regions import load_regions
from sinks.engine import ChdbExecutor
from sinks.migrate import apply_migrations
from sinks.rows import COLUMNS, WORKFLOW_COLUMNS, hit_row, workflow_row
from workflows import model as m
from workflows.machine import WorkflowRefusal, apply
from workflows.policy import Policy

chdb = pytest.importorskip("chdb")
PW = "a long enough password"
HIT = "22222222-2222-5222-8222-222222222222"
CASE_LINK = "33333333-3333-5333-8333-333333333333"


def decode_command(value):
    """The command of a record's JSON (workflows.model.to_json, tagged by __type__) as the job would read it."""
    if isinstance(value, dict) and "__type__" in value:
        cls = getattr(m, value["__type__"])
        fields = {k: decode_command(v) for k, v in value.items() if k != "__type__"}
        if cls is m.Actor:
            fields["roles"] = frozenset(fields["roles"])
        return cls(**fields)
    if isinstance(value, list):
        return tuple(decode_command(v) for v in value)
    return value


class FakeJob:
    """The gateway's producer in these tests: keeps every record and applies it like the workflow job."""

    def __init__(self, engine):
        self.engine, self.sent, self.states, self.refusals = engine, [], {}, []
        self.regions, self.policy = load_regions(), Policy()

    def __call__(self, _config):  # the factory
        return self

    def send(self, topic, key, value, timeout=10.0):
        record = json.loads(value)
        self.sent.append((topic, key.decode(), record))
        self.run(decode_command(record["command"]))

    def run(self, command):
        try:
            state, events, _ = apply(self.states.get(command.item_id), command, int(time.time() * 1000), self.policy,
                                     self.regions)
        except WorkflowRefusal as exc:
            self.refusals.append(str(exc))
            return
        self.states[command.item_id] = state
        rows = [workflow_row(e.to_avro(), topic="intel.workflow", partition=0, offset=0, ingested_ms=0) for e in events]
        self.engine.insert("workflow_events", WORKFLOW_COLUMNS, rows)

    def close(self, timeout=10.0):
        pass


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("wf")
    engine = ChdbExecutor(str(base / "chdb"), database="intelbus")
    apply_migrations(engine)
    for hit_id, hit_type in ((HIT, "WANTED_PERSON"), (CASE_LINK, "CASE_LINK")):
        hit = {"hit_id": hit_id, "hit_type": hit_type, "matched_on": {"kind": "RESIDENT_ID", "value": "11010519491231002X"},
               "owner_region": "130822", "hit_region": "120119", "notify_regions": ["130822", "120119"],
               "classification": "INTERNAL", "detected_at": int(time.time() * 1000), "record_kind": "WANTED",
               "record_key": "130822/s/W1", "record": "{}", "trigger_kind": "INCIDENT", "trigger_event_id": "x",
               "trigger": "{}", "trigger_reported_at": 0}
        engine.insert("hits", COLUMNS["hits"], [hit_row(hit, 0)])
    store = PrincipalStore(base / "identity" / "principals.db")
    for name, region, branch, roles in (("hb-cc", "130000", "COMMAND_CENTER", ["command_center"]),
                                        ("xl-ci", "130822", "CRIMINAL_INVESTIGATION", ["command_center"]),
                                        ("xl-cc", "130822", "COMMAND_CENTER", ["command_center"]),
                                        ("xl-analyst", "130822", "CRIMINAL_INVESTIGATION", ["analyst"]),
                                        ("jz-cc", "120119", "COMMAND_CENTER", ["command_center"]),
                                        ("js-cc", "320000", "COMMAND_CENTER", ["command_center"])):
        store.add(actor="test", name=name, kind="person", region=region, branch=branch, roles=roles, password=PW)
    auth = Authenticator(store.path, TokenIssuer(load_or_create_key(base / "identity" / "key.pem")))
    services = Services(settings=None, regions=load_regions(), auth=auth, audit_executor_factory=lambda: engine,
                        reader_executor_factory=lambda: engine)
    extensions = gateway_app.EXTENSIONS
    if "gateway.workflow_api" not in extensions:  # until the module is registered in gateway/app.py
        gateway_app.EXTENSIONS = (*extensions, "gateway.workflow_api")
    try:
        app = create_app(services=services)
    finally:
        gateway_app.EXTENSIONS = extensions
    job = FakeJob(engine)
    app.state.workflow["factory"] = job
    yield TestClient(app), engine, job
    engine.close()


def login(client, name):
    r = client.post("/api/v1/login", json={"name": name, "password": PW})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def last_audit(engine, **where):
    cond = " AND ".join(f"{k} = '{v}'" for k, v in where.items())
    cols, rows = engine.query(f"SELECT user, action, outcome, reason, query_name, params, agency "
                              f"FROM intelbus.audit_log WHERE {cond} ORDER BY at_ms DESC LIMIT 1")
    return dict(zip(cols, rows[0])) if rows else None


def send(client, who="hb-cc", **body):
    body = {"to": ["130822/CRIMINAL_INVESTIGATION"], "priority": "URGENT", "subjects": ["RESIDENT_ID:11010519491231002X"],
            "question": "Is he at the address on file?", **body}
    return client.post("/api/v1/requests", json=body, headers=login(client, who))


def test_send_request_writes_the_contract_record_and_is_audited(gw):
    client, engine, job = gw
    r = send(client)
    assert r.status_code == 202, r.text
    item_id, command_id = r.json()["item_id"], r.json()["command_id"]
    assert item_id.startswith("R-") and len(item_id) == 14
    topic, key, record = job.sent[-1]
    assert topic == COMMANDS_TOPIC == "intel.workflow.commands" and key == item_id
    assert set(record) == {"command", "command_id", "issued_at", "via"} and record["via"] == "gateway"
    assert record["command_id"] == command_id == record["command"]["command_id"]
    assert abs(record["issued_at"] - time.time() * 1000) < 60_000
    cmd = decode_command(record["command"])
    assert isinstance(cmd, m.SendRequest) and cmd.actor.name == "hb-cc" and cmd.actor.agency == "130000/COMMAND_CENTER"
    assert cmd.actor.roles == frozenset({"command_center"}) and cmd.subjects == (m.Identifier("RESIDENT_ID", "11010519491231002X"),)
    row = last_audit(engine, action="workflow", query_name="request.send", outcome="ok")
    assert row["user"] == "hb-cc" and json.loads(row["params"])["item_id"] == item_id
    # the job's SENT event is the item's history
    item = client.get(f"/api/v1/items/{item_id}", headers=login(client, "hb-cc")).json()
    assert [e["event_type"] for e in item["events"]] == ["SENT"]
    assert item["parties"][0]["party"] == "130822/CRIMINAL_INVESTIGATION" and item["parties"][0]["status"] == "SENT"


@pytest.mark.parametrize("who, body, status, reason", [
    ("xl-analyst", {}, 403, "role command_center required for workflow"),
    ("hb-cc", {"to": ["130000/COMMAND_CENTER"]}, 400, "cannot address a request to itself"),
    ("hb-cc", {"to": ["999999/X"]}, 400, "is not an agency"),
    ("hb-cc", {"priority": "SOON"}, 400, "unknown priority"),
    ("hb-cc", {"subjects": ["SHOE:42"]}, 400, "is not an identifier"),
])
def test_send_request_refusals_are_audited(gw, who, body, status, reason):
    client, engine, job = gw
    before = len(job.sent)
    r = send(client, who, **body)
    assert r.status_code == status and reason in r.json()["detail"]
    assert len(job.sent) == before  # nothing sent
    row = last_audit(engine, action="workflow", outcome="refused", user=who)
    assert reason in row["reason"]


def test_accept_answer_close_and_the_queue(gw):
    client, engine, job = gw
    item_id = send(client).json()["item_id"]
    xl = login(client, "xl-ci")
    queue = client.get("/api/v1/queue", headers=xl).json()
    mine = [i for i in queue["items"] if i["item_id"] == item_id]
    assert mine and mine[0]["todo"] == "accept" and mine[0]["overdue"] is False and mine[0]["due_ms"] > queue["now_ms"]
    assert last_audit(engine, action="workflow", query_name="queue", user="xl-ci")["outcome"] == "ok"
    # the requester may not accept; another branch of the same region is not the addressee either
    for who in ("hb-cc", "xl-cc"):
        r = client.post(f"/api/v1/requests/{item_id}/accept", headers=login(client, who))
        assert r.status_code == 403 and "is not one of them and may not ACCEPT it" in r.json()["detail"]
        assert last_audit(engine, query_name="request.accept", outcome="refused", user=who)
    # answering before accepting is refused with what is allowed
    r = client.post(f"/api/v1/requests/{item_id}/answer", json={"findings": "x"}, headers=xl)
    assert r.status_code == 409 and "ANSWER is allowed only while it is ACCEPTED" in r.json()["detail"]
    assert client.post(f"/api/v1/requests/{item_id}/accept", headers=xl).status_code == 202
    assert client.post(f"/api/v1/requests/{item_id}/answer", json={"findings": "seen at home"}, headers=xl).status_code == 202
    r = client.post(f"/api/v1/requests/{item_id}/close", json={"outcome": "done"}, headers=xl)
    assert r.status_code == 403 and "only the requester 130000/COMMAND_CENTER may CLOSE it" in r.json()["detail"]
    assert client.post(f"/api/v1/requests/{item_id}/close", json={"outcome": "done"},
                       headers=login(client, "hb-cc")).status_code == 202
    item = client.get(f"/api/v1/items/{item_id}", headers=xl).json()
    assert [e["event_type"] for e in item["events"]] == ["SENT", "ACCEPTED", "ANSWERED", "CLOSED"]
    assert item["status"] == "CLOSED" and item["parties"][0]["status"] == "ANSWERED"
    assert not job.refusals
    assert item_id not in [i["item_id"] for i in client.get("/api/v1/queue", headers=xl).json()["items"]]


def test_refuse_needs_a_reason_and_unknown_items_are_404(gw):
    client, engine, job = gw
    item_id = send(client).json()["item_id"]
    xl = login(client, "xl-ci")
    r = client.post(f"/api/v1/requests/{item_id}/refuse", json={"reason_code": "BUSY"}, headers=xl)
    assert r.status_code == 400 and "REFUSED needs a reason" in r.json()["detail"]
    r = client.post(f"/api/v1/requests/{item_id}/refuse", json={"reason_code": "NOT_COMPETENT"}, headers=xl)
    assert r.status_code == 202
    r = client.post("/api/v1/requests/R-000000000000/accept", headers=xl)
    assert r.status_code == 404 and "there is no assistance request R-000000000000" in r.json()["detail"]
    assert last_audit(engine, query_name="request.accept", outcome="refused", user="xl-ci")["reason"].startswith("there is no")
    # an item of another province is as unknown as one that does not exist
    r = client.get(f"/api/v1/items/{item_id}", headers=login(client, "js-cc"))
    assert r.status_code == 404 and last_audit(engine, query_name="item", outcome="refused", user="js-cc")
    r = client.get(f"/api/v1/items/{item_id}", headers=login(client, "xl-analyst"))
    assert r.status_code == 403 and "role command_center required" in r.json()["detail"]


def test_hit_report_and_confirm(gw):
    client, engine, job = gw
    job.run(m.OpenHit(command_id=f"hit:{HIT}", item_id=HIT, actor=m.Actor.bus(), hit_type="WANTED_PERSON",
                      owner_region="130822", hit_region="120119",
                      matched_on=m.Identifier("RESIDENT_ID", "11010519491231002X"), record_key="130822/s/W1",
                      danger_level="HIGH"))
    xl, jz = login(client, "xl-cc"), login(client, "jz-cc")
    assert any(i["item_id"] == HIT and i["todo"] == "confirm" for i in client.get("/api/v1/queue", headers=xl).json()["items"])
    r = client.post(f"/api/v1/hits/{HIT}/report", json={"action": "DETAINED"}, headers=xl)
    assert r.status_code == 403 and "only that region reports what it did" in r.json()["detail"]
    assert client.post(f"/api/v1/hits/{HIT}/report", json={"action": "DETAINED"}, headers=jz).status_code == 202
    r = client.post(f"/api/v1/hits/{HIT}/confirm", json={"answer": "CONFIRMED"}, headers=jz)
    assert r.status_code == 403 and "only its owner 130822 may CONFIRMED it" in r.json()["detail"]
    r = client.post(f"/api/v1/hits/{HIT}/confirm", json={"answer": "NEED_TIME"}, headers=xl)
    assert r.status_code == 400 and "NEED_TIME needs minutes" in r.json()["detail"]
    assert client.post(f"/api/v1/hits/{HIT}/confirm", json={"answer": "CONFIRMED"}, headers=xl).status_code == 202
    r = client.post(f"/api/v1/hits/{HIT}/confirm", json={"answer": "NOT_VALID"}, headers=xl)
    assert r.status_code == 409 and "hit AWAITING_CONFIRMATION" in r.json()["detail"]
    assert last_audit(engine, query_name="hit.confirm", outcome="ok", user="xl-cc")
    item = client.get(f"/api/v1/items/{HIT}", headers=jz).json()
    assert [e["event_type"] for e in item["events"]] == ["OPENED", "ACTION_REPORTED", "CONFIRMED"]
    r = client.post(f"/api/v1/hits/{CASE_LINK}/confirm", json={"answer": "CONFIRMED"}, headers=xl)
    assert r.status_code == 409 and "only WANTED_PERSON, WATCH_MATCH hits are followed up" in r.json()["detail"]
    r = client.post("/api/v1/hits/44444444-4444-5444-8444-444444444444/report", json={"action": "OBSERVED"}, headers=jz)
    assert r.status_code == 404 and last_audit(engine, query_name="hit.report", outcome="refused", user="jz-cc")
    r = client.post(f"/api/v1/hits/{HIT}/report", json={"action": "OBSERVED"}, headers=login(client, "js-cc"))
    assert r.status_code == 404  # a hit Jiangsu may not see


def test_directive_issue_ack_report_and_status(gw):
    client, engine, job = gw
    hb = login(client, "hb-cc")
    due = int(time.time() * 1000) + 3_600_000
    r = client.post("/api/v1/directives", json={"to": ["320500"], "task": "checkpoints", "due_at": due}, headers=hb)
    assert r.status_code == 403 and "320500 is not inside 130000" in r.json()["detail"]
    assert last_audit(engine, query_name="directive.issue", outcome="refused", user="hb-cc")
    r = client.post("/api/v1/directives", json={"to": ["130822"], "task": "checkpoints", "due_at": due - 7_200_000}, headers=hb)
    assert r.status_code == 400 and "not in the future" in r.json()["detail"]
    r = client.post("/api/v1/directives", json={"to": ["130822"], "task": "checkpoints on G45", "due_at": due}, headers=hb)
    assert r.status_code == 202
    item_id = r.json()["item_id"]
    assert item_id.startswith("D-")
    xl = login(client, "xl-cc")
    r = client.post(f"/api/v1/directives/{item_id}/report", json={"outcome": "DONE"}, headers=xl)
    assert r.status_code == 409 and "ACKNOWLEDGE it first" in r.json()["detail"]
    r = client.post(f"/api/v1/directives/{item_id}/ack", headers=login(client, "jz-cc"))
    assert r.status_code == 404  # Tianjin's Jizhou does not see Hebei's directive
    assert client.post(f"/api/v1/directives/{item_id}/ack", headers=xl).status_code == 202
    r = client.post(f"/api/v1/directives/{item_id}/report", json={"outcome": "CANNOT"}, headers=xl)
    assert r.status_code == 400 and "CANNOT needs a reason" in r.json()["detail"]
    assert client.post(f"/api/v1/directives/{item_id}/report", json={"outcome": "DONE"}, headers=xl).status_code == 202
    item = client.get(f"/api/v1/items/{item_id}", headers=hb).json()
    assert [e["event_type"] for e in item["events"]][:3] == ["ISSUED", "ACKNOWLEDGED", "DONE"]
    assert item["parties"] == [{"party": "130822", "status": "DONE", "due_ms": due, "since_ms": item["parties"][0]["since_ms"]}]
    assert not job.refusals


def test_the_cli_sends_waits_for_the_event_and_lists_the_queue(gw, monkeypatch, capsys):
    """intelbus request send / list / show and directive --help, on this app instead of a gateway process."""
    import argparse

    from gateway import workflow_cli
    from gateway.client import GatewayClient

    client, engine, job = gw

    class Borrowed(GatewayClient):
        def close(self):  # the module's TestClient stays open
            pass

    def as_person(name):
        def make(_settings, **_kw):
            c = Borrowed("http://testserver")
            c.http = client
            client.headers.update(login(client, name))
            return c
        return make

    monkeypatch.setattr(workflow_cli, "_settings", lambda: None)
    parser = argparse.ArgumentParser(prog="intelbus")
    top = parser.add_subparsers(dest="command")
    for name, add in (("hit", workflow_cli.add_hit), ("request", workflow_cli.add_request),
                      ("directive", workflow_cli.add_directive)):
        top.add_parser(name).set_defaults(_handler=add(top.choices[name]))

    def run(who, *argv):
        monkeypatch.setattr(workflow_cli, "_client", as_person(who))
        args = parser.parse_args(list(argv))
        code = args._handler(args)
        return code, capsys.readouterr()

    code, out = run("hb-cc", "request", "send", "--to", "130822/CRIMINAL_INVESTIGATION", "--priority", "URGENT",
                    "--subject", "PLATE:冀H12345", "--question", "车辆是否在辖区?", "--wait", "2")
    assert code == 0 and "now OPEN" in out.out and "SENT" in out.out and "URGENT" in out.out and "CST" in out.out
    item_id = out.out.split(":")[0]
    code, out = run("xl-ci", "request", "list")
    assert code == 0 and item_id in out.out and "accept" in out.out
    code, out = run("xl-ci", "request", "accept", item_id)
    assert code == 0 and "ACCEPTED" in out.out
    code, out = run("hb-cc", "request", "accept", item_id)
    assert code == 3 and "may not ACCEPT it" in out.err
    code, out = run("hb-cc", "request", "show", item_id)
    assert code == 0 and "130822/CRIMINAL_INVESTIGATION" in out.out and "ACCEPTED" in out.out
    job_send = job.send
    monkeypatch.setattr(job, "send", lambda *a, **k: None)  # a job that has not answered yet
    code, out = run("xl-ci", "request", "answer", item_id, "--findings", "在", "--wait", "0")
    assert code == 0 and "sent; not yet processed" in out.out
    monkeypatch.setattr(job, "send", job_send)
    with pytest.raises(SystemExit):
        parser.parse_args(["directive", "issue", "--help"])
    assert "--due" in capsys.readouterr().out
    assert workflow_cli.parse_due("2026-12-01 18:00") == 1_796_119_200_000  # 10:00 UTC
    client.headers.pop("Authorization", None)


def test_the_queue_page_needs_a_session_and_its_assets_are_served(gw):
    client, engine, job = gw
    app = client.app
    browser = TestClient(app)
    r = browser.get("/queue", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/queue"
    assert browser.post("/api/v1/session", json={"name": "xl-ci", "password": PW}).status_code == 200
    page = browser.get("/queue")
    assert page.status_code == 200 and "/static/queue.js" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/queue.js", "/static/queue.css", "/static/common.js"):
        assert browser.get(asset).status_code == 200, asset
    assert 'href="/queue"' in browser.get("/").text  # linked from the wall's header
    # the page's one-click accept: a cookie session needs the CSRF header, as every console POST
    item_id = send(client).json()["item_id"]
    r = browser.post(f"/api/v1/requests/{item_id}/accept")
    assert r.status_code == 403 and "CSRF token missing" in r.json()["detail"]
    r = browser.post(f"/api/v1/requests/{item_id}/accept", headers={"X-CSRF-Token": browser.cookies["intelbus_csrf"]})
    assert r.status_code == 202


def test_in_the_browser_a_countdown_and_a_one_click_accept(gw):
    """The queue page in Debian's chromium (Playwright), the app served by uvicorn on chDB: the request waiting
    for Xinglong's criminal investigation shows its time left, ticking; one click accepts it."""
    import os
    import re
    import shutil
    import socket
    import threading

    playwright = pytest.importorskip("playwright.sync_api")
    import uvicorn

    chromium = os.environ.get("INTELBUS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip(f"no chromium at {chromium}")
    client, engine, job = gw
    item_id = send(client).json()["item_id"]
    now = int(time.time() * 1000)
    late = m.WorkflowEvent(item_id="R-00000000late", item_kind="ASSISTANCE_REQUEST", event_type="SENT", seq=1,
                           at=now - 7_200_000, status="OPEN", actor="hb-cc", actor_agency="130000/COMMAND_CENTER",
                           to=("130822/CRIMINAL_INVESTIGATION",), notify=("130000", "130822"), due_at=now - 3_600_000,
                           code="ROUTINE", text="an hour late", command_id="late-1")
    engine.insert("workflow_events", WORKFLOW_COLUMNS, [workflow_row(late.to_avro(), topic="intel.workflow", partition=0,
                                                                     offset=0, ingested_ms=0)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with playwright.sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = b.new_context(locale="zh-CN", timezone_id="UTC").new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/queue")
            playwright.expect(page).to_have_url(re.compile(r"/login\?next="))
            page.get_by_label("用户名 Name").fill("xl-ci")
            page.get_by_label("密码 Password").fill(PW)
            page.get_by_role("button", name="登录 Log in").click()
            playwright.expect(page).to_have_url(url + "/queue")
            row = page.locator(f"tr.item[data-id='{item_id}']")
            playwright.expect(row).to_be_visible(timeout=10_000)
            left = row.locator("td.left")
            playwright.expect(left).to_have_text(re.compile(r"^\d+m\d\ds$"))  # within the hour to accept
            first = left.text_content()
            playwright.expect(left).not_to_have_text(first, timeout=3000)  # it ticks
            assert "CST" in row.text_content()
            overdue = page.locator("tr.item[data-id='R-00000000late']")
            playwright.expect(overdue).to_have_class(re.compile(r"\boverdue\b"))
            playwright.expect(overdue.locator("td.left")).to_have_text(re.compile(r"^超时 -1h0\dm"))
            row.locator("button[data-action=accept]").click()
            playwright.expect(page.locator("#msg")).to_contain_text("已发送 sent")
            playwright.expect(page.locator("#history")).to_contain_text("ACCEPTED", timeout=10_000)
            # accepted: the row stays, now waiting for the answer, with no accept button
            playwright.expect(row.locator(".todo")).to_have_text("反馈 answer", timeout=15_000)
            playwright.expect(row.locator("button[data-action=accept]")).to_have_count(0)
            b.close()
        assert not errors, errors
    finally:
        server.should_exit = True
        thread.join(10)
    events = client.get(f"/api/v1/items/{item_id}", headers=login(client, "hb-cc")).json()["events"]
    assert [e["event_type"] for e in events] == ["SENT", "ACCEPTED"] and events[1]["actor"] == "xl-ci"


def test_without_the_history_table_the_routes_say_so_and_audit_it(gw, tmp_path):
    """A gateway whose ClickHouse lacks workflow_events (migration 0004 not applied): 503 naming the fix, audited."""
    _, engine, _ = gw

    class Unmigrated:  # the reader of a database without the workflow tables
        database = "unmigrated"

        def query(self, sql, readonly=False):
            return engine.query(sql, readonly=readonly)

    store = PrincipalStore(tmp_path / "principals.db")
    store.add(actor="test", name="hb-cc2", kind="person", region="130000", branch="COMMAND_CENTER",
              roles=["command_center"], password=PW)
    services = Services(settings=None, regions=load_regions(),
                        auth=Authenticator(store.path, TokenIssuer(load_or_create_key(tmp_path / "key.pem"))),
                        audit_executor_factory=lambda: engine, reader_executor_factory=Unmigrated)
    extensions = gateway_app.EXTENSIONS
    if "gateway.workflow_api" not in extensions:
        gateway_app.EXTENSIONS = (*extensions, "gateway.workflow_api")
    try:
        client = TestClient(create_app(services=services))
    finally:
        gateway_app.EXTENSIONS = extensions
    headers = login(client, "hb-cc2")
    for method, path in (("GET", "/api/v1/queue"), ("GET", "/api/v1/items/R-0123456789ab"),
                         ("POST", "/api/v1/requests/R-0123456789ab/close")):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 503 and "is migration 0004 applied" in r.json()["detail"], (path, r.text)
    assert last_audit(engine, action="workflow", query_name="queue", user="hb-cc2")["outcome"] == "failed"
    assert last_audit(engine, action="workflow", query_name="request.close", user="hb-cc2")["outcome"] == "refused"
