"""The console's server side on an embedded ClickHouse (chDB): pages that need a session, history pages
(limit, offset, has_more) and exports (CSV with BOM and CST times, JSON with its mark), each audited.

The console in a real browser is tested on the stack (tests/integration/test_console_browser.py).
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from gateway.app import Services, create_app
from gateway.auth import Authenticator
from gateway.export import csv_chunks, json_chunks
from gateway.history import page_of, page_sql
from identity.store import PrincipalStore
from identity.tokens import TokenIssuer, load_or_create_key
from schemas.regions import load_regions
from sinks.engine import ChdbExecutor
from sinks.migrate import apply_migrations
from sinks.rows import COLUMNS, event_rows

chdb = pytest.importorskip("chdb")
PW = "a long enough password"
T = 1_795_000_000_000  # 2026-11-18 11:06:40 UTC
PERSON = "11010519491231002X"


def incident(region, ref, minutes):
    return {"event_id": f"00000000-0000-0000-0001-{abs(hash(ref)) % 10**12:012d}", "source_region": region,
            "source_system": "s", "source_ref": ref, "revision": 1, "occurred_at": T + minutes * 60_000,
            "reported_at": T + minutes * 60_000, "classification": "INTERNAL", "share_scope": [], "phones": [],
            "vehicles": [], "incident_type": "CHECKPOINT_CHECK", "case_no": None, "title": "核查", "description": None,
            "location": {"region": region, "address": "兴隆站", "lat": None, "lon": None},
            "persons": [{"id_type": "RESIDENT_ID", "id_number": PERSON, "role": "CHECKED"}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    engine = ChdbExecutor(str(base / "chdb"), database="intelbus")
    apply_migrations(engine)
    for n in range(25):  # 25 checks of one person in Xinglong, a minute apart
        row, subjects = event_rows("incident", incident("130822", f"XL-{n:02d}", n), topic="intel.incident.unique",
                                   partition=0, offset=n, ingested_ms=T)
        engine.insert("events", COLUMNS["events"], [row])
        engine.insert("event_subjects", COLUMNS["event_subjects"], subjects)
    store = PrincipalStore(base / "identity" / "principals.db")
    for name, roles in (("hb-analyst", ["analyst"]), ("hb-cc", ["command_center"])):
        store.add(actor="test", name=name, kind="person", region="130000", roles=roles, clearance="INTERNAL", password=PW)
    auth = Authenticator(store.path, TokenIssuer(load_or_create_key(base / "identity" / "key.pem")))
    services = Services(settings=None, regions=load_regions(), auth=auth, audit_executor_factory=lambda: engine,
                        reader_executor_factory=lambda: engine)
    app = create_app(services=services)
    yield app, engine
    engine.close()


def bearer(client, name):
    r = client.post("/api/v1/login", json={"name": name, "password": PW})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def last_audit(engine, **where):
    cond = " AND ".join(f"{k} = '{v}'" for k, v in where.items())
    cols, rows = engine.query(f"SELECT user, action, outcome, reason, purpose, row_count, params, query_name "
                              f"FROM intelbus.audit_log WHERE {cond} ORDER BY at_ms DESC LIMIT 1")
    return dict(zip(cols, rows[0])) if rows else None


# --- pages ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/analyst"])
def test_a_page_without_a_session_sends_the_browser_to_login(gw, path):
    app, _ = gw
    browser = TestClient(app)
    r = browser.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/login?next={path}"
    forged = TestClient(app, cookies={"intelbus_session": "not-a-token"}).get(path, follow_redirects=False)
    assert forged.status_code == 303  # a cookie that is not a valid token is no session
    login = browser.get(r.headers["location"])
    assert login.status_code == 200 and "登录" in login.text
    assert "default-src 'self'" in login.headers["content-security-policy"] and login.headers["x-frame-options"] == "DENY"
    # control: with a session the page is served, with the same headers
    assert browser.post("/api/v1/session", json={"name": "hb-cc", "password": PW}).status_code == 200
    page = browser.get(path, follow_redirects=False)
    assert page.status_code == 200 and "/static/common.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_every_asset_of_the_pages_is_served_by_the_gateway(gw):
    import re

    from gateway.web import STATIC

    app, _ = gw
    client = TestClient(app)
    for html in STATIC.glob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, html.name  # nothing from the internet
        for ref in re.findall(r'(?:src|href)="(/[^"]+)"', text):
            if ref.startswith("/static/"):
                assert client.get(ref).status_code == 200, ref
    for js in STATIC.glob("*.js"):
        assert "https://" not in js.read_text(encoding="utf-8"), js.name


def test_codes_give_region_names_and_places(gw):
    app, _ = gw
    codes = TestClient(app).get("/api/v1/codes").json()
    xl = codes["regions"]["130822"]
    assert xl["name"] == "兴隆县" and 40 < xl["lat"] < 41 and 117 < xl["lon"] < 118
    # a region without a place of its own is drawn at its parent's
    assert codes["regions"]["110100"]["lat"] == codes["regions"]["110000"]["lat"]
    assert codes["offences"]["FRAUD"] == "诈骗" and codes["branches"]["COMMAND_CENTER"] == "指挥中心"


# --- pages of history ----------------------------------------------------------------------------

def test_page_sql_asks_one_row_more_and_keeps_the_query_s_own_limit():
    sql = page_sql("SELECT a FROM t ORDER BY a LIMIT 1 BY a;", 10, 20)
    assert sql.endswith("LIMIT 20, 11") and "LIMIT 1 BY a\n)" in sql
    assert page_of(list(range(11)), 10, 20) == (list(range(10)), True, 30)
    assert page_of(list(range(4)), 10, 20) == (list(range(4)), False, None)


def test_a_named_query_answers_page_by_page(gw):
    app, engine = gw
    client = TestClient(app)
    headers = bearer(client, "hb-analyst")
    body = {"params": {"id": PERSON}, "purpose": "case 2026-201", "limit": 10}
    seen, offset, pages = [], 0, 0
    while offset is not None:
        r = client.post("/api/v1/queries/trail", json={**body, "offset": offset}, headers=headers)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["offset"] == offset and out["has_more"] == (out["next_offset"] is not None)
        seen += [row[out["columns"].index("event_id")] for row in out["rows"]]
        offset, pages = out["next_offset"], pages + 1
    assert pages == 3 and len(seen) == 25 and len(set(seen)) == 25  # no gap, no repeat across pages
    row = last_audit(engine, action="query", user="hb-analyst")
    assert row["row_count"] == 5 and json.loads(row["params"])["page"] == {"limit": 10, "offset": 20}
    # attempt: a page larger than the gateway allows
    r = client.post("/api/v1/queries/trail", json={**body, "limit": 50_000}, headers=headers)
    assert r.status_code == 422 and "10000" in r.text


# --- exports -------------------------------------------------------------------------------------

def test_csv_has_a_bom_china_standard_times_and_chinese_as_it_is():
    chunks = list(csv_chunks(["occurred_at", "title", "ids"], [(None, "二", ()),
                                                               (datetime(2026, 11, 30, 1, 15, 52), "核查", ("a", "b")),
                                                               ("2026-11-30 16:00:00", "text", ())]))
    text = "".join(chunks)
    assert text.startswith("\ufeffoccurred_at (CST),title,ids\r\n")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[1] == ["", "二", ""] and rows[2] == ["2026-11-30 09:15:52", "核查", "a,b"]
    assert rows[3][0] == "2026-12-01 00:00:00"  # times given as UTC text (chDB, HTTP formats) too


def test_json_export_is_one_document_with_its_mark():
    text = "".join(json_chunks(["at", "n"], [(datetime(2026, 11, 30, 16, 0, 0), n) for n in range(2500)], {"id": "x"}))
    doc = json.loads(text)
    assert doc["export"] == {"id": "x"} and len(doc["rows"]) == 2500
    assert doc["rows"][0] == {"at": "2026-12-01T00:00:00+08:00", "n": 0}


def test_an_export_is_audited_as_an_export_and_carries_its_id(gw):
    app, engine = gw
    browser = TestClient(app)
    csrf = browser.post("/api/v1/session", json={"name": "hb-analyst", "password": PW}).json()["csrf_token"]
    body = {"params": {"id": PERSON}, "purpose": "case 2026-202", "limit": 3}
    r = browser.post("/api/v1/queries/trail/export?format=csv", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    export_id = r.headers["x-intelbus-export-id"]
    assert r.headers["content-disposition"].startswith('attachment; filename="intelbus-trail-')
    assert export_id[:8] in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel reads the Chinese
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == 26 and rows[0][0] == "occurred_at (CST)"  # the whole result, not a page of 3
    assert rows[1][0] == "2026-11-18 19:06:40" and rows[1][rows[0].index("title")] == "核查"
    row = last_audit(engine, action="export", user="hb-analyst")
    assert row["outcome"] == "ok" and row["purpose"] == "case 2026-202" and row["row_count"] == 25
    assert row["query_name"] == "trail" and json.loads(row["params"])["export_id"] == export_id
    doc = browser.post("/api/v1/queries/trail/export?format=json", json=body, headers={"X-CSRF-Token": csrf}).json()
    assert doc["export"]["by"] == "hb-analyst" and doc["export"]["rows"] == 25 and len(doc["rows"]) == 25
    assert doc["rows"][0]["occurred_at"] == "2026-11-18T19:06:40+08:00"


@pytest.mark.parametrize("who, body, status, reason", [
    ("hb-analyst", {"params": {"id": PERSON}}, 400, "an export needs a purpose"),
    ("hb-cc", {"params": {"id": PERSON}, "purpose": "case 1"}, 403, "role analyst required for export"),
])
def test_an_export_without_purpose_or_role_is_refused_and_audited(gw, who, body, status, reason):
    app, engine = gw
    client = TestClient(app)
    r = client.post("/api/v1/queries/trail/export?format=csv", json=body, headers=bearer(client, who))
    assert r.status_code == status and reason in r.json()["detail"]
    row = last_audit(engine, action="export", user=who)
    assert row["outcome"] == "refused" and reason in row["reason"]
    if who == "hb-cc":  # control: the same person may run the query itself
        ok = client.post("/api/v1/queries/trail", json=body, headers=bearer(client, who))
        assert ok.status_code == 200 and len(ok.json()["rows"]) == 25


def test_the_cli_exports_into_a_file_and_leaves_nothing_half_written(gw, tmp_path, capsys):
    from gateway.cli import _export
    from gateway.client import GatewayClient

    app, engine = gw
    client = GatewayClient("http://testserver")
    client.http = TestClient(app, headers=bearer(TestClient(app), "hb-analyst"))
    body = {"params": {"id": PERSON}, "purpose": "case 2026-203", "region": None}
    assert _export(client, "trail", body, str(tmp_path / "trail.json")) == 0
    doc = json.loads((tmp_path / "trail.json").read_text(encoding="utf-8"))
    assert len(doc["rows"]) == 25 and doc["export"]["id"] in capsys.readouterr().err
    # attempt: no purpose; nothing is written, not even a partial file
    assert _export(client, "trail", {**body, "purpose": ""}, str(tmp_path / "again.csv")) == 2
    assert "an export needs a purpose" in capsys.readouterr().err and list(tmp_path.iterdir()) == [tmp_path / "trail.json"]
