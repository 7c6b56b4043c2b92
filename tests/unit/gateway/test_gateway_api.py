"""The gateway's API on an embedded ClickHouse (chDB): each test is something a person could try,
asserting the answer, its message and the audit row, beside a control that succeeds.

The feed reads Kafka and is tested on the real stack (tests/integration/test_who_is_asking.py).
"""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from gateway.app import Services, create_app
from gateway.auth import Authenticator
from identity.store import PrincipalStore
from identity.tokens import TokenIssuer, load_or_create_key
from schemas.regions import load_regions
from sinks.engine import ChdbExecutor
from sinks.migrate import apply_migrations
from sinks.rows import COLUMNS, event_rows

chdb = pytest.importorskip("chdb")
PW = "a long enough password"
T = 1_795_000_000_000
PERSON = "11010519491231002X"


def incident(region, ref, minutes, classification="INTERNAL"):
    return {"event_id": f"00000000-0000-0000-0000-{abs(hash(ref)) % 10**12:012d}", "source_region": region,
            "source_system": "s", "source_ref": ref, "revision": 1, "occurred_at": T + minutes * 60_000,
            "reported_at": T + minutes * 60_000, "classification": classification, "share_scope": [], "phones": [],
            "vehicles": [], "incident_type": "CHECKPOINT_CHECK", "case_no": None, "title": "核查", "description": None,
            "location": {"region": region, "address": "站", "lat": None, "lon": None},
            "persons": [{"id_type": "RESIDENT_ID", "id_number": PERSON, "role": "CHECKED"}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("gw")
    engine = ChdbExecutor(str(base / "chdb"), database="intelbus")
    apply_migrations(engine)
    for ref, region, minutes, cls in (("BJ", "110105", 0, "INTERNAL"), ("XL", "130822", 5, "INTERNAL"),
                                      ("XL-S", "130822", 6, "SECRET"), ("SZ", "320500", 10, "INTERNAL")):
        row, subjects = event_rows("incident", incident(region, ref, minutes, cls), topic="intel.incident.unique",
                                   partition=0, offset=0, ingested_ms=T)
        engine.insert("events", COLUMNS["events"], [row])
        engine.insert("event_subjects", COLUMNS["event_subjects"], subjects)
    store = PrincipalStore(base / "identity" / "principals.db")
    for name, region, roles, clearance in (("hb-cc", "130000", ["command_center"], "INTERNAL"),
                                           ("hb-analyst", "130000", ["analyst"], "SECRET"),
                                           ("xl-analyst", "130822", ["analyst"], "INTERNAL"),
                                           ("js-analyst", "320000", ["analyst"], "INTERNAL"),
                                           ("auditor", "110000", ["auditor"], "INTERNAL"),
                                           ("gone", "130000", ["analyst"], "INTERNAL")):
        store.add(actor="test", name=name, kind="person", region=region, roles=roles, clearance=clearance, password=PW)
    auth = Authenticator(store.path, TokenIssuer(load_or_create_key(base / "identity" / "key.pem")))
    services = Services(settings=None, regions=load_regions(), auth=auth, audit_executor_factory=lambda: engine,
                        reader_executor_factory=lambda: engine)
    client = TestClient(create_app(services=services))
    yield client, engine, store
    engine.close()


def login(client, name, password=PW):
    r = client.post("/api/v1/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def last_audit(engine, **where):
    cond = " AND ".join(f"{k} = '{v}'" for k, v in where.items())
    cols, rows = engine.query(f"SELECT user, action, outcome, reason, region, purpose, row_count, agency, roles, params "
                              f"FROM intelbus.audit_log WHERE {cond} ORDER BY at_ms DESC LIMIT 1")
    return dict(zip(cols, rows[0])) if rows else None


def test_login_wrong_password_is_refused_and_audited(gw):
    client, engine, _ = gw
    r = client.post("/api/v1/login", json={"name": "hb-cc", "password": "guess guess guess"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong name or password"
    row = last_audit(engine, action="login", outcome="refused")
    assert row["user"] == "(unauthenticated) hb-cc" and row["reason"] == "wrong name or password"
    me = client.get("/api/v1/whoami", headers=login(client, "hb-cc")).json()  # control
    assert me["agency"]["region"] == "130000" and me["roles"] == ["command_center"] and "feed" in me["may"]


@pytest.mark.parametrize("headers, message", [
    ({}, "not logged in"),
    ({"Authorization": "Bearer not-a-jwt"}, "not a token this gateway can read"),
    ({"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJpbnRlbGJ1cyIsInN1YiI6ImhiLWNjIn0."}, "token"),
])
def test_requests_without_a_valid_token_are_refused_and_audited(gw, headers, message):
    client, engine, _ = gw
    r = client.post("/api/v1/sql", json={"sql": "SELECT count() FROM events"}, headers=headers)
    assert r.status_code == 401 and message in r.json()["detail"]
    assert last_audit(engine, action="sql", outcome="refused")["reason"] == r.json()["detail"]


def test_a_disabled_account_s_token_stops_working_at_once(gw):
    client, engine, store = gw
    headers = login(client, "gone")
    assert client.get("/api/v1/whoami", headers=headers).status_code == 200  # control
    store.set_disabled(actor="test", name="gone", disabled=True)
    r = client.post("/api/v1/sql", json={"sql": "SELECT count() FROM events"}, headers=headers)
    assert r.status_code == 401 and "account gone is disabled" in r.json()["detail"]
    assert last_audit(engine, action="sql", outcome="refused")["reason"] == "account gone is disabled (ask an operator)"


def test_a_command_center_may_not_run_ad_hoc_sql(gw):
    client, engine, _ = gw
    r = client.post("/api/v1/sql", json={"sql": "SELECT count() FROM events"}, headers=login(client, "hb-cc"))
    assert r.status_code == 403 and r.json()["detail"].startswith("role analyst required for sql")
    row = last_audit(engine, action="sql", outcome="refused", user="hb-cc")
    assert row["agency"] == "130000" and row["roles"] == "command_center"


def test_region_may_narrow_not_widen(gw):
    client, engine, _ = gw
    headers = login(client, "xl-analyst")
    r = client.post("/api/v1/sql", json={"sql": "SELECT source_ref FROM events", "region": "130000"}, headers=headers)
    assert r.status_code == 403 and "not entitled to region 130000" in r.json()["detail"]
    assert last_audit(engine, action="sql", outcome="refused", user="xl-analyst")["region"] == "130000"
    hb = login(client, "hb-analyst")
    r = client.post("/api/v1/sql", json={"sql": "SELECT source_ref FROM events ORDER BY source_ref", "region": "130822"},
                    headers=hb)
    assert r.status_code == 200 and [x[0] for x in r.json()["rows"]] == ["XL", "XL-S"]


@pytest.mark.parametrize("header, value, message", [
    ("X-Intelbus-Claimed-User", "hb-analyst", "--user hb-analyst grants nothing"),
    ("X-Intelbus-Claimed-Operator", "1", "INTELBUS_OPERATOR grants nothing"),
])
def test_spoofing_another_user_or_the_operator_switch_is_refused(gw, header, value, message):
    client, engine, _ = gw
    headers = login(client, "js-analyst")
    r = client.post("/api/v1/sql", json={"sql": "SELECT count() FROM events"}, headers={**headers, header: value})
    assert r.status_code == 403 and message in r.json()["detail"]
    assert message in last_audit(engine, action="sql", outcome="refused", user="js-analyst")["reason"]
    ok = client.post("/api/v1/sql", json={"sql": "SELECT source_ref FROM events"}, headers=headers)
    assert [x[0] for x in ok.json()["rows"]] == ["SZ"]  # control: as itself, Jiangsu's own rows only


def test_trail_is_scoped_by_region_and_clearance_and_audited_with_its_purpose(gw):
    client, engine, _ = gw

    def trail(name):
        r = client.post("/api/v1/queries/trail", json={"params": {"id": PERSON}, "purpose": f"case {name}"},
                        headers=login(client, name))
        assert r.status_code == 200, r.text
        cols = r.json()["columns"]
        return [dict(zip(cols, row))["region"] for row in r.json()["rows"]]

    assert trail("hb-analyst") == ["130822", "130822"]   # SECRET-cleared: both Xinglong events
    assert trail("xl-analyst") == ["130822"]             # INTERNAL: not the SECRET one
    assert trail("js-analyst") == ["320500"]             # Jiangsu sees none of Beijing's or Hebei's
    row = last_audit(engine, action="query", user="js-analyst")
    assert row["purpose"] == "case js-analyst" and row["row_count"] == 1 and row["outcome"] == "ok"
    r = client.post("/api/v1/queries/trail", json={"params": {"id": PERSON}}, headers=login(client, "js-analyst"))
    assert r.status_code == 400 and "purpose is required" in r.json()["detail"]


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM system.tables", "system"),
    ("SELECT * FROM audit_log", "audit_log"),
    ("SELECT * FROM remote('127.0.0.1', intelbus.events)", "remote"),
    ("INSERT INTO events (event_id) VALUES ('x')", ""),
    ("SELECT 1; DROP TABLE intelbus.events", ""),
])
def test_ad_hoc_sql_that_cannot_be_scoped_is_refused_and_audited(gw, sql, message):
    client, engine, _ = gw
    r = client.post("/api/v1/sql", json={"sql": sql}, headers=login(client, "js-analyst"))
    assert r.status_code == 400 and message in r.json()["detail"], r.text
    assert last_audit(engine, action="sql", outcome="refused", user="js-analyst")["reason"] == r.json()["detail"]


def test_jiangsu_cannot_read_beijing_through_a_join_union_or_cte(gw):
    client, _, _ = gw
    headers = login(client, "js-analyst")
    for sql in ("SELECT e.source_ref FROM events AS e JOIN event_subjects AS s ON s.event_id = e.event_id",
                "SELECT source_ref FROM events UNION ALL SELECT source_ref FROM intelbus.events",
                "WITH x AS (SELECT * FROM \"events\") SELECT source_ref FROM x",
                "SELECT source_ref FROM events WHERE event_id IN (SELECT event_id FROM event_subjects)"):
        r = client.post("/api/v1/sql", json={"sql": sql}, headers=headers)
        assert r.status_code == 200, (sql, r.text)
        assert {x[0] for x in r.json()["rows"]} == {"SZ"}, sql


def test_only_auditors_read_the_audit_log_and_reading_it_is_audited(gw):
    client, engine, _ = gw
    r = client.post("/api/v1/audit", json={"outcome": "refused"}, headers=login(client, "js-analyst"))
    assert r.status_code == 403 and "role auditor required" in r.json()["detail"]
    r = client.post("/api/v1/audit", json={"outcome": "refused", "limit": 500, "purpose": "weekly review"},
                    headers=login(client, "auditor"))
    assert r.status_code == 200
    cols = r.json()["columns"]
    rows = [dict(zip(cols, x)) for x in r.json()["rows"]]
    assert rows and all(x["outcome"] == "refused" for x in rows)
    assert any(x["user"] == "js-analyst" and x["action"] == "audit" for x in rows)
    assert last_audit(engine, action="audit", user="auditor")["purpose"] == "weekly review"
    # the API has no route that writes or deletes audit rows (DELETE exists only to end a browser session)
    paths = client.app.openapi()["paths"]
    assert {p for p in paths if "delete" in paths[p]} == {"/api/v1/session"} and "/api/v1/audit" in paths
    assert set(paths["/api/v1/audit"]) == {"post"}


def test_an_unknown_named_query_is_refused_and_audited(gw):
    client, engine, _ = gw
    r = client.post("/api/v1/queries/everything", json={}, headers=login(client, "js-analyst"))
    assert r.status_code == 404 and "no query named 'everything'" in r.json()["detail"]
    assert last_audit(engine, action="query", outcome="refused", user="js-analyst")["reason"].startswith("no query named")


def test_nothing_is_served_when_the_audit_log_cannot_be_written(gw, tmp_path):
    """ClickHouse refusing the audit insert: the query is not answered (503), though it would run."""
    client, engine, store = gw

    class NoAudit:
        database = "intelbus"

        def insert(self, *a):
            raise ConnectionError("Connection refused")

    services = Services(settings=None, regions=load_regions(), auth=client.app.state.services.auth,
                        audit_executor_factory=NoAudit, reader_executor_factory=lambda: engine)
    broken = TestClient(create_app(services=services))
    token = login(client, "js-analyst")
    r = broken.post("/api/v1/sql", json={"sql": "SELECT source_ref FROM events"}, headers=token)
    assert r.status_code == 503 and "audit log cannot be written" in r.json()["detail"] and "SZ" not in r.text
    ok = client.post("/api/v1/sql", json={"sql": "SELECT source_ref FROM events"}, headers=token)  # control
    assert ok.status_code == 200 and ok.json()["rows"] == [["SZ"]]


def test_a_browser_session_lives_in_an_http_only_cookie_and_changes_need_the_csrf_token(gw):
    from fastapi.testclient import TestClient

    client, engine, _ = gw
    browser = TestClient(client.app)
    r = browser.post("/api/v1/session", json={"name": "hb-analyst", "password": PW})
    assert r.status_code == 200, r.text
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("intelbus_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Secure" not in session  # plain http here
    assert "HttpOnly" not in next(c for c in cookies if c.startswith("intelbus_csrf="))  # the page reads it
    csrf = r.json()["csrf_token"]
    assert last_audit(engine, action="login", user="hb-analyst")["outcome"] == "ok"
    # reading with the cookie alone works
    assert browser.get("/api/v1/whoami").json()["name"] == "hb-analyst"
    # attempt: a change (a query: POST) from a page that cannot read the CSRF cookie, e.g. another site's form
    body = {"params": {"id": PERSON}, "purpose": "case 2026-118"}
    forged = browser.post("/api/v1/queries/trail", json=body)
    assert forged.status_code == 403 and "CSRF token missing" in forged.json()["detail"]
    assert last_audit(engine, action="query", user="hb-analyst")["reason"].startswith("CSRF token missing")
    wrong = browser.post("/api/v1/queries/trail", json=body, headers={"X-CSRF-Token": "guessed"})
    assert wrong.status_code == 403 and "CSRF token wrong" in wrong.json()["detail"]
    # control: the console sends the token it was given
    ok = browser.post("/api/v1/queries/trail", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    # logging out clears the cookies; the next request is not logged in
    out = browser.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200 and last_audit(engine, action="logout", user="hb-analyst")["outcome"] == "ok"
    gone = browser.get("/api/v1/whoami")
    assert gone.status_code == 401 and "not logged in" in gone.json()["detail"]


def test_session_cookies_are_secure_under_tls_and_bearer_clients_need_no_csrf(gw):
    from fastapi.testclient import TestClient

    client, _, _ = gw
    r = TestClient(client.app).post("/api/v1/session", json={"name": "hb-analyst", "password": PW},
                                    headers={"X-Forwarded-Proto": "https"})
    assert all("Secure" in c for c in r.headers.get_list("set-cookie"))
    # an API client with a bearer token sends no cookie, so there is nothing to forge: no CSRF token needed
    ok = client.post("/api/v1/queries/trail", json={"params": {"id": PERSON}, "purpose": "case 2026-118"},
                     headers=login(client, "hb-analyst"))
    assert ok.status_code == 200, ok.text
