"""Ingest over HTTP on the real stack: systems without Kafka POST records to a gateway of this checkout
(`own_gateway`), which checks, signs with the system's key and produces them; the jobs make the hit.

Each attempt (no token, a person without the integrator role, a record for a region the system
may not publish for, a bad line) is made beside a control that succeeds: its refusal, its audit
row, and for a line its dead letter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from ops.lag import JOBS_TOPICS, SINK_TOPICS, wait_for_zero_lag

CST = timezone(timedelta(hours=8))


def iso(minutes):
    return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def admin_ch(settings, sql):
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(sql)[1]
    finally:
        ex.close()


def settle(settings):
    time.sleep(1.5)
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=300)
    time.sleep(1.5)


def token_of(people, name) -> str:
    return json.loads(open(people.env(name)["INTELBUS_CREDENTIALS"]).read())["token"]


@pytest.fixture(scope="module")
def system_keys(stack, settings):
    """The test systems' signing keys in the stack's key store (the gateway signs with them)."""
    from identity.keys import KeyStore, keys_path

    made = {}
    with KeyStore(keys_path(settings)) as store:
        for system, regions in (("t-xl-system", ["130822"]),
                                ("t-integrator", ["110000", "120000", "130000", "150000", "320000", "440000"])):
            active = store.active(system)
            made[system] = active[0] if active else store.create(system, regions, actor="pytest")
    time.sleep(1.5)  # the jobs read the key store again within a second
    return made


def post(gateway, token, kind, body: bytes, content_type="application/x-ndjson", **params):
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(f"{gateway.url}/api/v1/events/{kind}", content=body, headers=headers, params=params, timeout=60)


def ndjson(*items) -> bytes:
    return "".join((i if isinstance(i, str) else json.dumps(i, ensure_ascii=False)) + "\n" for i in items).encode()


def test_an_ndjson_batch_with_one_bad_line_reports_it_and_the_good_records_make_a_hit(
        own_gateway, people, system_keys, settings, reader, codec, ids):
    tag, person = uuid.uuid4().hex[:8], ids.new("130822")
    hits, dlq = reader("intel.hit"), reader("intel.dlq")
    wanted = {"source_region": "130822", "source_ref": f"W-{tag}", "occurred_at": iso(-60), "action": "LISTED",
              "person": {"id_type": "RESIDENT_ID", "id_number": person, "name": "赵六"}}
    bad = dict(wanted, source_ref=f"BAD-{tag}", person={"id_type": "RESIDENT_ID", "id_number": "110105194912310021"})
    beijing = dict(wanted, source_ref=f"BJ-{tag}", source_region="110105")
    body = ndjson(wanted, bad, beijing)
    xl = token_of(people, "t-xl-system")
    r = post(own_gateway, xl, "wanted", body, system="ztry", source="wanted.ndjson")
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["accepted"] == 1 and out["dead_lettered"] == 2 and len(out["event_ids"]) == 1
    assert out["refused"] == [
        {"line": 2, "field": "person.id_number", "reason": "check digit is 1, expected X"},
        {"line": 3, "field": "source_region", "reason": "t-xl-system may not publish for 110105 (publishes for 130822)"}]

    check = {"source_region": "120119", "source_system": "kakou", "source_ref": f"C-{tag}", "occurred_at": iso(-5),
             "incident_type": "CHECKPOINT_CHECK", "location": {"region": "120119"},
             "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]}
    r = post(own_gateway, token_of(people, "t-integrator"), "incident", json.dumps(check).encode(), "application/json")
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text

    def ours(got):
        return [h for h in (codec.decode(m.value()) for m in got) if h["record_key"] == f"130822/ztry/W-{tag}"]
    found = list({h["hit_id"]: h for h in ours(hits.read(until=lambda got: bool(ours(got)), timeout=60, settle=1))}.values())
    assert [json.loads(h["trigger"])["source_ref"] for h in found] == [f"C-{tag}"]  # one hit (by hit_id)
    assert found[0]["hit_region"] == "120119" and found[0]["owner_region"] == "130822"

    letters = [(m, codec.decode(m.value())) for m in dlq.read(until=lambda got: len(got) >= 2, settle=1)]
    mine = {d["source"]: (m, d) for m, d in letters if tag.encode() in d["raw"]}
    assert sorted(mine) == ["wanted.ndjson:2", "wanted.ndjson:3"]
    msg, letter = mine["wanted.ndjson:2"]
    assert letter["stage"] == "PUBLISH" and letter["field"] == "person.id_number" and f"BAD-{tag}".encode() in letter["raw"]
    assert dict(msg.headers())["intelbus-key-id"] == system_keys["t-xl-system"].key_id.encode()  # signed for the system

    row = admin_ch(settings, "SELECT outcome, row_count, params FROM intelbus.audit_log WHERE user = 't-xl-system' "
                             f"AND action = 'publish' AND params LIKE '%wanted.ndjson%' "
                             f"AND at_ms >= {int(time.time() * 1000) - 600_000} ORDER BY at_ms DESC LIMIT 1")
    outcome, count, params = row[0]
    assert outcome == "ok" and count == 1 and json.loads(params)["refused_lines"] == [2, 3] and person not in params

    # the same batch again: the same event id, and the bus keeps one copy
    again = post(own_gateway, xl, "wanted", body, system="ztry", source="wanted.ndjson")
    assert again.status_code == 202 and again.json()["event_ids"] == out["event_ids"]
    settle(settings)
    assert admin_ch(settings, f"SELECT count() FROM intelbus.events WHERE source_ref = 'W-{tag}'") == [(1,)]


def test_refusals_of_the_ingest_door_are_audited(own_gateway, people, system_keys, settings):
    tag = uuid.uuid4().hex[:8]
    body = ndjson({"source_region": "130822", "source_ref": f"R-{tag}", "occurred_at": iso(-1),
                   "incident_type": "HOTEL_CHECKIN", "location": {"region": "130822"}})
    since = int(time.time() * 1000) - 1000
    nobody = post(own_gateway, None, "incident", body)
    assert nobody.status_code == 401 and "not logged in" in nobody.json()["detail"]
    analyst = post(own_gateway, token_of(people, "t-xl-analyst"), "incident", body)
    assert analyst.status_code == 403
    assert analyst.json()["detail"] == "role integrator required for publish (t-xl-analyst holds analyst)"
    rows = admin_ch(settings, "SELECT user, action, reason FROM intelbus.audit_log WHERE outcome = 'refused' "
                              f"AND at_ms >= {since} AND query_text = '/api/v1/events/incident' ORDER BY at_ms")
    assert ("t-xl-analyst", "publish", analyst.json()["detail"]) in rows
    assert any(u.startswith("(unauthenticated)") and "not logged in" in reason for u, _, reason in rows)
    control = post(own_gateway, token_of(people, "t-xl-system"), "incident", body)
    assert control.status_code == 202 and control.json()["accepted"] == 1


def test_intelbus_publish_through_the_gateway_reports_lines_as_straight_to_kafka(
        own_gateway, people, system_keys, reader, codec, ids, tmp_path):
    from tests.integration.test_publish import checks_file

    tag = f"G{uuid.uuid4().hex[:8]}"
    incidents, dlq = reader("intel.incident"), reader("intel.dlq")
    path, good = checks_file(tmp_path, ids, tag)
    env = {**os.environ, **people.env("t-integrator"), "INTELBUS_GATEWAY_URL": own_gateway.url,
           "INTELBUS_TOKEN": token_of(people, "t-integrator"), "INTELBUS_KAFKA_USER": "nobody-without-credentials"}
    result = subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--kind", "incident", "--region", "120119",
                             "--system", "kakou", str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("checks.jsonl:")]
    assert errors == ["checks.jsonl:3: persons[0].id_number: check digit is 1, expected X",
                      "checks.jsonl:5: not valid JSON: Expecting property name enclosed in double quotes at column 2"]
    assert result.stdout.strip().splitlines()[-1].startswith("read 8, published 5, rejected 2, duplicates-in-file 1, ")
    mine = [m for m in incidents.read(until=lambda got: len([m for m in got if tag in m.key().decode()]) >= 5, settle=1)
            if tag in m.key().decode()]
    assert sorted(codec.decode(m.value())["source_ref"] for m in mine) == sorted(r["source_ref"] for r in good)
    assert {dict(m.headers())["intelbus-key-id"] for m in mine} == {system_keys["t-integrator"].key_id.encode()}
    letters = [codec.decode(m.value()) for m in dlq.read(until=lambda got: len(got) >= 2, settle=1)]
    assert sorted(d["source"] for d in letters if tag in d["raw"].decode(errors="replace")) == ["checks.jsonl:3"]
    assert "checks.jsonl:5" in {d["source"] for d in letters}

    strict = subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--kind", "incident", "--region", "120119",
                             "--system", "kakou", "--strict", str(path)], capture_output=True, text=True, timeout=120,
                            env=env)
    assert strict.returncode == 1 and "--strict: 2 bad line(s), nothing sent" in strict.stderr
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in good[:2]) + "\n", encoding="utf-8")
    clean = subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--kind", "incident", "--region", "120119",
                            "--system", "kakou", "--strict", str(path)], capture_output=True, text=True, timeout=120,
                           env=env)
    assert clean.returncode == 0 and clean.stdout.strip().splitlines()[-1].startswith("read 2, published 2, rejected 0")
