"""POST /api/v1/events/{kind} without a broker: the body's parsing, the per-line answer, the signing key,
the refusals and their audit rows (a fake Kafka producer acknowledges at once; chDB holds the audit log).

The same route against the real stack, with a hit, is tests/integration/test_ingest.py.
"""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from gateway.ingest import BodyError, RequestShare, parse_body
from producers.publish import Batch, batches
from schemas.normalise import resident_id_check_digit

chdb = pytest.importorskip("chdb")
PW = "a long enough password"


def rid(region="130822", serial=1):
    first17 = f"{region}19800101{serial:03d}"
    return first17 + resident_id_check_digit(first17)


def check(ref, region="120119", person=None):
    return {"source_ref": ref, "occurred_at": "2026-11-23T09:00:00+08:00", "incident_type": "CHECKPOINT_CHECK",
            "location": {"region": region}, "persons": [{"id_type": "RESIDENT_ID", "id_number": person or rid()}]}


# --- the body ---------------------------------------------------------------------------------

def test_ndjson_lines_are_numbered_blank_lines_counted_and_bad_json_kept_as_a_refusal():
    body = (json.dumps(check("a")) + "\n\n{not json\n" + json.dumps(check("b")) + "\n").encode()
    lines = parse_body("application/x-ndjson; charset=utf-8", body)
    assert [(l.line_no, l.error is None) for l in lines] == [(1, True), (3, False), (4, True)]
    assert lines[1].raw == "{not json" and lines[1].error.startswith("not valid JSON")
    assert [l.line_no for l in parse_body("application/x-ndjson", body, line_offset=500)] == [501, 503, 504]


def test_one_json_record_may_span_lines_and_csv_keeps_its_header():
    pretty = json.dumps(check("a"), indent=2).encode()
    [line] = parse_body("application/json", pretty)
    assert line.line_no == 1 and line.record["source_ref"] == "a"
    [arr] = parse_body("application/json", b"[1, 2]")
    assert "send several records as application/x-ndjson" in arr.error
    csv = "source_ref,occurred_at,incident_type,location.region\nc1,2026-11-23 09:00:00,THEFT,120119\n".encode()
    [row] = parse_body("text/csv", csv, line_offset=10)
    assert row.line_no == 12 and row.record["location"] == {"region": "120119"}


@pytest.mark.parametrize("content_type, body, status, message", [
    ("text/plain", b"{}", 415, "Content-Type text/plain is not accepted"),
    ("", b"{}", 415, "Content-Type (none) is not accepted"),
    ("application/x-ndjson", b"\xff\xfe{}", 400, "not UTF-8"),
    ("application/x-ndjson", b"{}\n" * 10_001, 413, "10001 records in one request, at most 10000"),
])
def test_bodies_that_are_not_records_are_refused_whole(content_type, body, status, message):
    with pytest.raises(BodyError) as err:
        parse_body(content_type, body)
    assert err.value.status == status and message in err.value.reason


def test_the_command_line_cuts_a_file_into_batches_that_keep_its_line_numbers():
    import io

    text = "".join(json.dumps(check(f"r{i}")) + "\n" + ("\n" if i == 2 else "") for i in range(7))
    cut = list(batches("x.jsonl", io.StringIO(text), size=3))
    assert [b.records for b in cut] == [3, 3, 1]
    numbers = [l.line_no for b in cut for l in parse_body(b.content_type, b.body, line_offset=b.line_offset)]
    assert numbers == [1, 2, 3, 5, 6, 7, 8]  # line 4 is blank
    csv = "source_ref,incident_type\n" + "".join(f"c{i},THEFT\n" for i in range(5))
    cut = list(batches("x.csv", io.StringIO(csv), size=2))
    assert all(b.body.startswith(b"source_ref,incident_type\n") for b in cut) and [b.records for b in cut] == [2, 2, 1]
    assert [l.line_no for b in cut for l in parse_body(b.content_type, b.body, line_offset=b.line_offset)] == [2, 3, 4, 5, 6]
    assert isinstance(cut[0], Batch) and cut[0].content_type == "text/csv"


# --- the route, with a fake Kafka -------------------------------------------------------------

class FakeKafka:
    """confluent_kafka.Producer's produce/poll/flush: every message acknowledged at once."""

    def __init__(self):
        self.messages = []

    def produce(self, topic, value, key=None, headers=None, on_delivery=None):
        self.messages.append((topic, value, key, headers))
        if on_delivery:
            on_delivery(None, None)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=0):
        return 0


class FakeShared:
    def __init__(self, config):
        self.config, self.producer = config, FakeKafka()

    def close(self):
        pass


class JsonCodec:
    def encode(self, topic, record):
        return b"\0" + json.dumps(record, default=str).encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from gateway.app import Services, create_app
    from gateway.auth import Authenticator
    from identity.keys import KeyStore, keys_path
    from identity.store import PrincipalStore
    from identity.tokens import TokenIssuer, load_or_create_key
    from ops.settings import load_settings
    from schemas.regions import load_regions
    from sinks.engine import ChdbExecutor
    from sinks.migrate import apply_migrations

    base = tmp_path_factory.mktemp("ingest")
    settings = load_settings(stack_dir=str(base), kafka_auth="none")
    engine = ChdbExecutor(str(base / "chdb"), database="intelbus")
    apply_migrations(engine)
    store = PrincipalStore(base / "identity" / "principals.db")
    for name, kind, region, roles, publish in (("xl-sys", "system", "130822", ["integrator"], ["130822"]),
                                               ("nokey-sys", "system", "130822", ["integrator"], ["130822"]),
                                               ("xl-analyst", "person", "130822", ["analyst"], [])):
        store.add(actor="test", name=name, kind=kind, region=region, roles=roles, clearance="INTERNAL", password=PW,
                  publish_regions=publish)
    with KeyStore(keys_path(settings)) as keys:
        keys.create("xl-sys", ["130822"])
    auth = Authenticator(store.path, TokenIssuer(load_or_create_key(base / "identity" / "key.pem")))
    services = Services(settings=settings, regions=load_regions(), auth=auth, audit_executor_factory=lambda: engine,
                        reader_executor_factory=lambda: engine, codec=JsonCodec(), kafka_config={})
    app = create_app(services=services)
    app.state.ingest["factory"] = FakeShared
    client = TestClient(app)
    yield client, engine, app
    engine.close()


def login(client, name):
    r = client.post("/api/v1/login", json={"name": name, "password": PW})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def last_audit(engine, **where):
    cond = " AND ".join(f"{k} = '{v}'" for k, v in where.items())
    cols, rows = engine.query(f"SELECT user, action, outcome, reason, row_count, params FROM intelbus.audit_log "
                              f"WHERE {cond} ORDER BY at_ms DESC LIMIT 1")
    return dict(zip(cols, rows[0])) if rows else None


def ndjson(*items) -> bytes:
    return "".join((i if isinstance(i, str) else json.dumps(i, ensure_ascii=False)) + "\n" for i in items).encode()


def test_a_batch_with_one_bad_line_is_accepted_and_the_line_reported_and_dead_lettered(gw):
    client, engine, app = gw
    bad = dict(check("b2"), persons=[{"id_type": "RESIDENT_ID", "id_number": "110105194912310021"}])
    body = ndjson(check("b1"), bad, check("b3"), check("b1"))
    r = client.post("/api/v1/events/incident?region=130822&system=kakou&source=checks.jsonl", content=body,
                    headers={**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["accepted"] == 2 and len(out["event_ids"]) == 2 and out["duplicates"] == 1 and out["dead_lettered"] == 1
    assert out["refused"] == [{"line": 2, "field": "persons[0].id_number", "reason": "check digit is 1, expected X"}]
    sent = app.state.ingest["producer"].producer.messages
    topics = [m[0] for m in sent]
    assert topics.count("intel.incident") == 2 and topics.count("intel.dlq") == 1
    for topic, value, key, headers in sent:
        assert dict(headers)["intelbus-key-id"] == b"xl-sys-1"  # signed for the system that called
    letter = json.loads(next(m[1] for m in sent if m[0] == "intel.dlq")[1:])
    assert letter["source"] == "checks.jsonl:2" and letter["stage"] == "PUBLISH" and "b2" in letter["raw"]
    record = json.loads(next(m[1] for m in sent if m[0] == "intel.incident")[1:])
    assert record["source_system"] == "kakou" and record["source_region"] == "130822"
    row = last_audit(engine, action="publish", user="xl-sys", outcome="ok")
    params = json.loads(row["params"])
    assert row["row_count"] == 2 and params["refused"] == 1 and params["refused_lines"] == [2]
    assert "b1" not in row["params"]  # counts, never the records


def test_the_same_lines_again_give_the_same_event_ids(gw):
    client, _, _ = gw
    headers = {**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"}
    body = ndjson(dict(check("same"), source_region="130822"))
    first = client.post("/api/v1/events/incident", content=body, headers=headers).json()
    again = client.post("/api/v1/events/incident", content=body, headers=headers).json()
    assert first["event_ids"] == again["event_ids"] and len(first["event_ids"]) == 1


def test_a_record_for_a_region_the_system_may_not_publish_for_is_refused_as_its_line(gw):
    client, _, _ = gw
    body = ndjson(dict(check("own"), source_region="130822"), dict(check("far"), source_region="320500"))
    r = client.post("/api/v1/events/incident", content=body,
                    headers={**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == 1
    [refused] = r.json()["refused"]
    assert refused["line"] == 2 and refused["field"] == "source_region"
    assert refused["reason"] == "xl-sys may not publish for 320500 (publishes for 130822)"


def test_every_line_refused_is_still_202_with_accepted_0(gw):
    client, _, _ = gw
    r = client.post("/api/v1/events/incident", content=ndjson("{not json", "[1]"),
                    headers={**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == 0 and [x["line"] for x in r.json()["refused"]] == [1, 2]


def test_dry_run_checks_and_sends_nothing(gw):
    client, _, app = gw
    shared = app.state.ingest.get("producer")
    before = len(shared.producer.messages) if shared else 0
    r = client.post("/api/v1/events/incident?dry_run=true&region=130822", content=ndjson(check("d1"), "{x"),
                    headers={**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["dry_run"] and r.json()["accepted"] == 0 and r.json()["dead_lettered"] == 0
    assert len(r.json()["event_ids"]) == 1 and r.json()["refused"][0]["line"] == 2
    shared = app.state.ingest.get("producer")
    assert (len(shared.producer.messages) if shared else 0) == before


@pytest.mark.parametrize("who, path, query, status, message", [
    ("xl-analyst", "incident", "", 403, "role integrator required for publish (xl-analyst holds analyst)"),
    ("nokey-sys", "incident", "", 409, "no signing key for system nokey-sys: "),
    ("xl-sys", "person", "", 404, "no kind 'person'"),
    ("xl-sys", "incident", "?region=320500", 403, "not entitled to publish for region 320500"),
    (None, "incident", "", 401, "not logged in"),
])
def test_refusals_say_what_is_missing_and_are_audited(gw, who, path, query, status, message):
    client, engine, _ = gw
    headers = {"Content-Type": "application/x-ndjson", **(login(client, who) if who else {})}
    r = client.post(f"/api/v1/events/{path}{query}", content=ndjson(check("x")), headers=headers)
    assert r.status_code == status and message in r.json()["detail"], r.text
    row = last_audit(engine, outcome="refused", **({"user": who} if who else {}))
    assert message in row["reason"] and row["action"] in ("publish", "events")
    if who == "nokey-sys":
        assert "`intelbus keys create nokey-sys --region 130822`" in r.json()["detail"]


def test_a_body_over_the_limit_is_refused_413(gw):
    client, _, _ = gw
    from gateway import ingest

    r = client.post("/api/v1/events/incident", content=b"x" * (ingest.MAX_BODY_BYTES + 1),
                    headers={**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 413 and "at most 10,485,760 are taken in one request" in r.json()["detail"]


def test_a_request_waits_for_its_own_delivery_reports_only():
    class Slow(FakeKafka):
        def produce(self, topic, value, key=None, headers=None, on_delivery=None):
            self.messages.append(on_delivery)

    shared = FakeShared({})
    shared.producer = Slow()
    share = RequestShare(shared)
    share.produce("t", b"v")
    share.produce("t", b"w")
    assert len(share) == 2 and share.flush(0.01) == 2
    for report in shared.producer.messages:
        report(None, None)
    assert share.flush(0.01) == 0


def test_the_route_is_in_the_openapi_document_with_its_bodies(gw):
    client, _, _ = gw
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/api/v1/events/{kind}"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/x-ndjson", "application/json", "text/csv"}
    assert "202" in op["responses"] and op["tags"] == ["ingest"]


@pytest.mark.parametrize("env, saved_at, flags, expected", [
    ({"INTELBUS_TOKEN": "t"}, None, [], "gateway"),
    ({}, "gw", [], "gateway"),
    ({}, "elsewhere", [], "kafka"),
    ({}, None, [], "kafka"),
    ({"INTELBUS_TOKEN": "t"}, None, ["--topic", "bench.x"], "kafka"),
    ({"INTELBUS_TOKEN": "t"}, None, ["--via", "kafka"], "kafka"),
])
def test_publish_goes_through_the_gateway_when_logged_in(tmp_path, monkeypatch, env, saved_at, flags, expected):
    import argparse

    from gateway.client import SavedLogin, save_login
    from ops.settings import load_settings
    from producers import publish

    monkeypatch.delenv("INTELBUS_TOKEN", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("INTELBUS_CREDENTIALS", str(tmp_path / "credentials.json"))
    settings = load_settings(gateway_url="http://gw:8080")
    if saved_at:
        save_login(SavedLogin(f"http://{saved_at}:8080", "tok", "x", 9e9))
    chosen = []
    monkeypatch.setattr(publish, "publish_via_gateway", lambda *a: chosen.append("gateway") or 0)
    monkeypatch.setattr(publish, "_publisher", lambda *a: chosen.append("kafka") or (_ for _ in ()).throw(PermissionError("stop")))
    monkeypatch.setattr("ops.settings.load_settings", lambda: settings)
    parser = argparse.ArgumentParser()
    publish.add_publish(parser)
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    publish.publish_command(parser.parse_args(["--kind", "incident", *flags, str(path)]))
    assert chosen == [expected]


def test_a_batch_met_by_a_registry_that_does_not_answer_is_503_to_send_again_and_nothing_is_dead_lettered(gw):
    from schemas.wire import RegistryUnavailable

    client, engine, app = gw
    headers = {**login(client, "xl-sys"), "Content-Type": "application/x-ndjson"}
    services_codec = JsonCodec.encode
    before = len(app.state.ingest["producer"].producer.messages) if app.state.ingest.get("producer") else 0

    def silent(self, topic, record):
        raise RegistryUnavailable("the schema registry did not answer registering intel.incident-value: "
                                  "ConnectError: [Errno 111] Connection refused")

    JsonCodec.encode = silent
    try:
        r = client.post("/api/v1/events/incident?region=130822&system=kakou", content=ndjson(check("reg1"), check("reg2")),
                        headers=headers)
    finally:
        JsonCodec.encode = services_codec
    assert r.status_code == 503 and r.headers["retry-after"] == "60"
    assert "schema registry did not answer" in r.json()["detail"] and "send the batch again" in r.json()["detail"]
    sent = app.state.ingest["producer"].producer.messages[before:]
    assert not [m for m in sent if m[0] == "intel.dlq"]  # the records are not at fault
    row = last_audit(engine, action="publish", user="xl-sys", outcome="failed")
    assert row and "schema registry did not answer" in row["reason"]
    # the control: the registry answers again, the same batch is accepted
    r = client.post("/api/v1/events/incident?region=130822&system=kakou", content=ndjson(check("reg1"), check("reg2")),
                    headers=headers)
    assert r.status_code == 202 and r.json()["accepted"] == 2
