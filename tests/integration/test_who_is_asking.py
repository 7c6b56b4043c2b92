"""Who is asking: identities, logins and access enforced by the servers, on the real stack.

Each test is something a person could try through the real CLI and gateway: it asserts the
refusal, its message and its audit row, beside a control that succeeds in the same test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from ops.lag import JOBS_TOPICS, SINK_TOPICS, wait_for_zero_lag

CST = timezone(timedelta(hours=8))


def iso(minutes):
    return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def intelbus(*args, env=None, stdin=None, timeout=120):
    base = {k: v for k, v in os.environ.items() if k not in ("INTELBUS_TOKEN", "INTELBUS_OPERATOR", "INTELBUS_CREDENTIALS")}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, input=stdin)


def admin_ch(settings, sql):
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(sql)[1]
    finally:
        ex.close()


def audit_rows(settings, user, since_ms, **where):
    cond = "".join(f" AND {k} = '{v}'" for k, v in where.items())
    return admin_ch(settings, f"SELECT action, outcome, reason, region, purpose, row_count, agency, roles, params "
                              f"FROM intelbus.audit_log WHERE user = '{user}' AND at_ms >= {since_ms}{cond} "
                              f"ORDER BY at_ms")


def now_ms():
    return int(time.time() * 1000) - 1000


def lines(result):
    return [json.loads(l) for l in result.stdout.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def story(stack, settings):
    """Wanted in Xinglong, checked in Jizhou and in Suzhou; a SECRET Xinglong check; a Beijing theft;
    an alert Langfang shares with the Tongzhou-Wuqing-Langfang zone."""
    from producers.regional import RegionalProducer
    from schemas.normalise import resident_id_check_digit

    tag = uuid.uuid4().hex[:8]
    first17 = f"1308221977{int(tag[:2], 16) % 12 + 1:02d}{int(tag[2:4], 16) % 28 + 1:02d}{int(tag[4:7], 16) % 1000:03d}"
    person = first17 + resident_id_check_digit(first17)

    def check(region, ref, minutes, classification="INTERNAL"):
        return {"source_region": region, "source_system": "kakou", "source_ref": ref, "occurred_at": iso(minutes),
                "incident_type": "CHECKPOINT_CHECK", "location": {"region": region}, "classification": classification,
                "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]}

    with RegionalProducer(settings=settings) as p:
        p.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"W-{tag}",
                             "occurred_at": iso(-60), "action": "LISTED", "offence": "FRAUD",
                             "person": {"id_type": "RESIDENT_ID", "id_number": person, "name": "孙八"}})
        p.publish("incident", check("120119", f"JZ-{tag}", -30))
        p.publish("incident", check("130822", f"XLS-{tag}", -20, "SECRET"))
        p.publish("incident", check("320500", f"SZ-{tag}", -10))
        p.publish("incident", {"source_region": "110105", "source_system": "jwzh", "source_ref": f"BJ-{tag}",
                               "occurred_at": iso(-5), "incident_type": "THEFT", "location": {"region": "110105"}})
        p.publish("alert", {"source_region": "131000", "source_system": "bk", "source_ref": f"TWL-{tag}",
                            "occurred_at": iso(-1), "alert_type": "WATCH", "title": "通武廊布控", "status": "OPEN",
                            "phones": ["13912345678"], "share_scope": ["TWL"]})
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=300)
    time.sleep(1.5)
    return {"tag": tag, "person": person}


def feed_refs(result, tag):
    """What a feed showed of this story: hits as record@sighting region, alerts by their reference."""
    return sorted((f"{i['record_key']}@{i['hit_region']}" if i["feed_item"] == "hit" else i["source_ref"]) + ":" +
                  i["feed_item"] for i in lines(result) if tag in json.dumps(i, ensure_ascii=False))


# --- feeds ---------------------------------------------------------------------------------------

def test_another_region_s_feed_is_refused_and_audited(story, people, settings):
    tag, since = story["tag"], now_ms()
    refused = intelbus("feed", "--region", "130000", "--json", "--since", "2h", env=people.env("t-js-cc"))
    assert refused.returncode != 0
    assert "not entitled to region 130000" in refused.stderr and "t-js-cc may see 320000" in refused.stderr
    rows = audit_rows(settings, "t-js-cc", since, action="feed", outcome="refused")
    assert rows and rows[-1][3] == "130000" and rows[-1][6] == "320000/COMMAND_CENTER"
    own = intelbus("feed", "--json", "--since", "2h", env=people.env("t-js-cc"))  # its own: the Suzhou sighting only
    assert own.returncode == 0 and feed_refs(own, tag) == [f"130822/ztry/W-{tag}@320500:hit"]
    hebei = intelbus("feed", "--json", "--since", "2h", env=people.env("t-hb-cc"))  # control: the owner's province
    assert feed_refs(hebei, tag) == [f"130822/ztry/W-{tag}@120119:hit", f"130822/ztry/W-{tag}@320500:hit",
                                     f"TWL-{tag}:alert"]  # and Langfang, in Hebei, shares with its zone
    ok = audit_rows(settings, "t-hb-cc", since, action="feed", outcome="ok")
    assert sum(r[5] for r in ok) >= 1 and ok[-1][7] == "command_center"


def test_region_may_narrow_but_not_widen(story, people, settings):
    tag, since = story["tag"], now_ms()
    wider = intelbus("feed", "--region", "120000", "--json", "--since", "2h", env=people.env("t-jz-cc"))
    assert wider.returncode != 0 and "not entitled to region 120000" in wider.stderr
    assert audit_rows(settings, "t-jz-cc", since, action="feed", outcome="refused")
    narrowed = intelbus("feed", "--region", "120119", "--json", "--since", "2h", env=people.env("t-tj-cc"))
    assert feed_refs(narrowed, tag) == [f"130822/ztry/W-{tag}@120119:hit"]  # Tianjin looking at Jizhou


def test_a_zone_member_sees_what_is_shared_with_the_zone(story, people):
    tag = story["tag"]
    wuqing = intelbus("feed", "--json", "--since", "2h", env=people.env("t-wq-cc"))
    assert [i["source_ref"] for i in lines(wuqing) if i["feed_item"] == "alert" and tag in i["source_ref"]] == [f"TWL-{tag}"]
    jiangsu = intelbus("feed", "--json", "--since", "2h", env=people.env("t-js-cc"))
    assert f"TWL-{tag}:alert" not in feed_refs(jiangsu, tag)


# --- spoofing and tokens ---------------------------------------------------------------------------

def test_user_flag_and_operator_switch_grant_nothing(story, people, settings):
    since, me = now_ms(), people.env("t-js-analyst")
    spoof = intelbus("query", "trail", "--id", story["person"], "--purpose", "p", "--user", "t-hb-analyst", env=me)
    assert spoof.returncode != 0 and "--user t-hb-analyst grants nothing" in spoof.stderr
    op = intelbus("query", "trail", "--id", story["person"], "--purpose", "p", env={**me, "INTELBUS_OPERATOR": "1"})
    assert op.returncode != 0 and "INTELBUS_OPERATOR grants nothing" in op.stderr
    reasons = [r[2] for r in audit_rows(settings, "t-js-analyst", since, outcome="refused")]
    assert any("--user t-hb-analyst" in r for r in reasons) and any("INTELBUS_OPERATOR" in r for r in reasons)
    anon = intelbus("query", "hits", env={**people.nobody(), "INTELBUS_OPERATOR": "1"})
    assert anon.returncode != 0 and "not logged in" in anon.stderr
    assert admin_ch(settings, f"SELECT count() FROM intelbus.audit_log WHERE at_ms >= {since} AND outcome = 'refused' "
                              "AND user = '(unauthenticated)' AND params LIKE '%claimed_operator%'")[0][0] >= 1
    own = intelbus("query", "trail", "--id", story["person"], "--purpose", "p", "--format", "json", env=me)  # control
    assert own.returncode == 0 and [r["region"] for r in lines(own)] == ["320500"]


def _token(settings, name, *, ttl=3600.0, issued_ago=0.0, other_key=False):
    """A token as the gateway would issue it (the test holds the key as an operator would), or forged."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from identity.store import PrincipalStore, store_path
    from identity.tokens import TokenIssuer, key_path, load_or_create_key

    key = Ed25519PrivateKey.generate() if other_key else load_or_create_key(key_path(settings))
    store = PrincipalStore(store_path(settings))
    try:
        identity = store.get(name).identity()
    finally:
        store.close()
    return TokenIssuer(key, ttl_s=ttl, clock=lambda: time.time() - issued_ago).issue(identity)[0]


@pytest.mark.parametrize("kind, message", [("expired", "token expired"), ("forged", "signature does not verify")])
def test_expired_and_forged_tokens_are_refused_and_audited(story, people, settings, kind, message):
    since = now_ms()
    token = (_token(settings, "t-hb-secret", ttl=60, issued_ago=600) if kind == "expired"
             else _token(settings, "t-hb-secret", other_key=True))
    r = intelbus("sql", "SELECT count() FROM events", env={"INTELBUS_TOKEN": token})
    assert r.returncode != 0 and message in r.stderr
    rows = admin_ch(settings, f"SELECT user, reason FROM intelbus.audit_log WHERE at_ms >= {since} AND outcome = 'refused'")
    assert any(user == "(unauthenticated) t-hb-secret" and message in reason for user, reason in rows)
    good = intelbus("sql", "SELECT count() AS n FROM events", "--format", "json",
                    env={"INTELBUS_TOKEN": _token(settings, "t-hb-secret")})  # control: a current token of the same key
    assert good.returncode == 0 and lines(good)[0]["n"] > 0


def test_a_disabled_user_is_refused_at_once_and_the_change_is_audited(story, people, settings):
    since, env = now_ms(), people.env("t-xl-analyst")
    assert intelbus("whoami", env=env).returncode == 0  # control before
    assert intelbus("access", "disable", "t-xl-analyst").returncode == 0
    try:
        r = intelbus("query", "trail", "--id", story["person"], "--purpose", "p", env=env)
        assert r.returncode != 0 and "account t-xl-analyst is disabled" in r.stderr
        login = intelbus("login", "t-xl-analyst", "--password-stdin", stdin=people.passwords["t-xl-analyst"] + "\n",
                         env={"INTELBUS_CREDENTIALS": str(people.folder / "again.json")})
        assert login.returncode != 0 and "disabled" in login.stderr
    finally:
        assert intelbus("access", "enable", "t-xl-analyst").returncode == 0
    assert intelbus("query", "trail", "--id", story["person"], "--purpose", "p", env=env).returncode == 0
    changes = admin_ch(settings, f"SELECT action, query_text FROM intelbus.audit_log WHERE at_ms >= {since} "
                                 "AND door = 'access' ORDER BY at_ms")
    assert ("access:disable", "disable t-xl-analyst") in changes and ("access:enable", "enable t-xl-analyst") in changes


def test_login_logout_whoami(people):
    env = {"INTELBUS_CREDENTIALS": str(people.folder / "lw.json")}
    bad = intelbus("login", "t-tj-cc", "--password-stdin", stdin="not the password\n", env=env)
    assert bad.returncode != 0 and "wrong name or password" in bad.stderr
    ok = intelbus("login", "t-tj-cc", "--password-stdin", stdin=people.passwords["t-tj-cc"] + "\n", env=env)
    assert ok.returncode == 0 and "120000" in ok.stdout
    assert oct(os.stat(env["INTELBUS_CREDENTIALS"]).st_mode & 0o777) == "0o600"
    me = intelbus("whoami", "--json", env=env)
    assert json.loads(me.stdout)["roles"] == ["command_center"]
    assert intelbus("logout", env=env).returncode == 0
    after = intelbus("whoami", env=env)
    assert after.returncode != 0 and "not logged in" in after.stderr


# --- history: roles, provinces and counties, clearance ---------------------------------------------

def test_each_role_does_its_job_and_no_other(story, people, settings):
    person, since = story["person"], now_ms()
    trail = intelbus("query", "trail", "--id", person, "--purpose", "协查 T-1", "--format", "json",
                     env=people.env("t-hb-analyst"))
    assert [r["region"] for r in lines(trail)] == ["130822"]  # the province sees its county's listing, not SECRET
    cc_sql = intelbus("sql", "SELECT count() FROM events", env=people.env("t-hb-cc"))
    assert cc_sql.returncode != 0 and "role analyst required for sql" in cc_sql.stderr
    op = intelbus("query", "hits", env=people.env("t-operator"))
    assert op.returncode != 0 and "required for query" in op.stderr  # operators read no personal data
    aud = intelbus("audit", "--user", "t-hb-analyst", "--action", "query", "--format", "json", "--purpose", "review",
                   env=people.env("t-auditor"))
    assert aud.returncode == 0, aud.stderr
    mine = [r for r in lines(aud) if r["purpose"] == "协查 T-1"]
    assert mine and mine[0]["row_count"] == 1 and mine[0]["agency"] == "130000/INTELLIGENCE"
    no_audit = intelbus("audit", env=people.env("t-hb-analyst"))
    assert no_audit.returncode != 0 and "role auditor required" in no_audit.stderr
    assert audit_rows(settings, "t-operator", since, outcome="refused")


def test_internal_clearance_does_not_see_secret_records(story, people):
    def refs(name):
        r = intelbus("sql", f"SELECT source_ref FROM events WHERE source_ref LIKE '%-{story['tag']}' ORDER BY source_ref",
                     "--format", "json", env=people.env(name))
        assert r.returncode == 0, r.stderr
        return [x["source_ref"] for x in lines(r)]
    tag = story["tag"]
    assert refs("t-hb-analyst") == [f"TWL-{tag}", f"W-{tag}"]  # Langfang's alert and Xinglong's listing
    assert refs("t-hb-secret") == [f"TWL-{tag}", f"W-{tag}", f"XLS-{tag}"]
    assert refs("t-js-analyst") == [f"SZ-{tag}"]


@pytest.mark.parametrize("sql", [
    "SELECT source_ref FROM intelbus.events WHERE source_ref LIKE '%-{tag}'",
    "SELECT source_ref FROM \"events\" WHERE source_ref LIKE '%-{tag}'",
    "SELECT e.source_ref FROM events AS e JOIN hits AS h ON h.trigger_event_id = e.event_id WHERE e.source_ref LIKE '%-{tag}'",
    "SELECT source_ref FROM (SELECT * FROM intelbus.events) WHERE source_ref LIKE '%-{tag}'",
    "WITH x AS (SELECT source_ref FROM events) SELECT source_ref FROM x WHERE source_ref LIKE '%-{tag}'",
    "SELECT source_ref FROM events WHERE source_ref LIKE '%-{tag}' UNION ALL SELECT source_ref FROM intelbus.events "
    "WHERE source_ref LIKE '%-{tag}'",
    "SELECT source_ref FROM events WHERE event_id IN (SELECT event_id FROM event_subjects) AND source_ref LIKE '%-{tag}'",
])
def test_jiangsu_reads_no_beijing_or_hebei_row_through_any_sql_shape(story, people, sql):
    r = intelbus("sql", sql.format(tag=story["tag"]), "--format", "json", env=people.env("t-js-analyst"))
    if sql.startswith("WITH x AS (SELECT") and r.returncode != 0:
        assert "Syntax error" in r.stderr, r.stderr  # ClickHouse 18.16 has no CTE of a subquery; current ones do
        return
    assert r.returncode == 0, r.stderr
    assert {x["source_ref"] for x in lines(r)} <= {f"SZ-{story['tag']}"}


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM system.users", "system"),
    ("SELECT * FROM remote('127.0.0.1', intelbus.events)", "remote"),
    ("SELECT * FROM intelbus.audit_log", "audit_log"),
    ("SELECT * FROM events SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT * FROM default.events", "default"),
])
def test_sql_that_cannot_be_scoped_is_refused_by_the_gateway_and_audited(story, people, settings, sql, message):
    since = now_ms()
    r = intelbus("sql", sql, env=people.env("t-js-analyst"))
    assert r.returncode != 0 and message in r.stderr
    assert any(message in row[2] for row in audit_rows(settings, "t-js-analyst", since, action="sql", outcome="refused"))


# --- publishing --------------------------------------------------------------------------------------

def test_a_system_publishes_only_for_its_own_regions(story, people, tmp_path):
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (
        {"source_region": "130822", "source_system": "kakou", "source_ref": f"OWN-{tag}", "occurred_at": iso(-1),
         "incident_type": "HOTEL_CHECKIN", "location": {"region": "130822"}},
        {"source_region": "110105", "source_system": "kakou", "source_ref": f"BJ-{tag}", "occurred_at": iso(-1),
         "incident_type": "HOTEL_CHECKIN", "location": {"region": "110105"}})) + "\n")
    r = intelbus("publish", "--via", "kafka", "--kind", "incident", "--metrics-port", "0", str(path), env=people.env("t-xl-system"))
    assert r.returncode == 1
    assert "mixed.jsonl:2: source_region: t-xl-system may not publish for 110105 (publishes for 130822)" in r.stderr
    assert "published 1, rejected 1" in r.stdout
    wrong = intelbus("publish", "--via", "kafka", "--kind", "incident", "--region", "110105", "--metrics-port", "0", str(path),
                     env=people.env("t-xl-system"))
    assert wrong.returncode == 2 and "not entitled to publish for region 110105" in wrong.stderr
    person = intelbus("publish", "--via", "kafka", "--kind", "incident", "--metrics-port", "0", str(path), env=people.env("t-hb-cc"))
    assert person.returncode == 2 and "role integrator required to publish" in person.stderr
