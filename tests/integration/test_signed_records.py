"""Proof of publisher on the real stack: each record carries an HMAC of its exact bytes under a
system's key (schemas/proof.py); the dedupe stage refuses, before anything else, what is
unsigned, altered, signed with a revoked key or claims a region its key may not publish for.

Each attempt is a record a person could send, in the same run as a correctly signed control
that makes its hit: the refusal goes to intel.dlq (stage VERIFY, with its code), the audit log
gets a row, the metric counts it, and it makes no hit.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

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


def unverified(settings) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port_base + 1}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("intelbus_jobs_unverified_total{"):
            code = line.split('code="')[1].split('"')[0]
            out[code] = float(line.rsplit(" ", 1)[1])
    return out


def check(region, ref, person, system="kakou"):
    return {"source_region": region, "source_system": system, "source_ref": ref, "occurred_at": iso(-5),
            "incident_type": "CHECKPOINT_CHECK", "location": {"region": region},
            "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]}


def settle(settings):
    time.sleep(1.5)
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=300)
    time.sleep(1.5)


@pytest.fixture(scope="module")
def keys(stack, settings):
    """Keys of three systems made for this module: Xinglong's, Tianjin's, and one already revoked."""
    from identity.keys import KeyStore, keys_path

    tag = uuid.uuid4().hex[:6]
    with KeyStore(keys_path(settings)) as store:
        xl = store.create(f"xl{tag}", ["130822"])
        tj = store.create(f"tj{tag}", ["120000"])
        old = store.create(f"old{tag}", ["120000"])
        store.revoke(old.key_id)
    time.sleep(1.5)  # a worker reads the key store again within a second
    return {"xl": xl, "tj": tj, "revoked": old, "tag": tag}


def test_refused_records_go_to_the_dead_letters_with_their_reason_and_make_no_hit(keys, settings, reader, codec, ids):
    from confluent_kafka import Producer

    from producers.regional import RegionalProducer
    from schemas.proof import sign_headers

    tag, person = uuid.uuid4().hex[:8], ids.new("130822")
    before = unverified(settings)
    dlq, hits = reader("intel.dlq"), reader("intel.hit")
    with RegionalProducer(settings=settings, signer=keys["xl"]) as xl:
        xl.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"W-{tag}",
                              "occurred_at": iso(-60), "action": "LISTED",
                              "person": {"id_type": "RESIDENT_ID", "id_number": person}})
        xl.publish("incident", check("110105", f"CLAIMS-BJ-{tag}", person))       # Xinglong's key, Beijing's record
    with RegionalProducer(settings=settings, signer=keys["tj"]) as tj:
        tj.publish("incident", check("120119", f"GOOD-{tag}", person))            # the control: a hit
        valid = tj.validate("incident", check("120119", f"ALTERED-{tag}", person))
    with RegionalProducer(settings=settings, signer=False) as unsigned:
        unsigned.publish("incident", check("120119", f"UNSIGNED-{tag}", person))
    with RegionalProducer(settings=settings, signer=keys["revoked"]) as old:
        old.publish("incident", check("120119", f"REVOKED-{tag}", person))
    # signed, then the checked person changed on the way (another ID of the same length: still valid Avro)
    value = codec.encode("intel.incident", valid)
    headers = sign_headers(value, keys["tj"])
    altered = value.replace(person.encode(), ids.new("130822").encode())
    assert altered != value and len(altered) == len(value)
    raw = Producer(settings.kafka_config("intelbus-admin"))
    raw.produce("intel.incident", value=altered, key=f"120119/kakou/ALTERED-{tag}".encode(), headers=headers)
    raw.flush(10)
    settle(settings)

    letters = [codec.decode(m.value()) for m in dlq.read(until=lambda got: len(got) >= 4, settle=2)]
    ours = sorted((d["reason"].split(":")[0], d["source_region"])
                  for d in letters if d["stage"] == "VERIFY" and tag.encode() in d["raw"])
    assert ours == [("BAD_SIGNATURE", "120119"), ("REGION_NOT_ALLOWED", "110105"), ("REVOKED_KEY", "120119"),
                    ("UNSIGNED", "120119")]
    reasons = {d["reason"].split(":")[0]: d["reason"] for d in letters if d["stage"] == "VERIFY" and tag.encode() in d["raw"]}
    assert "may publish for 130822, not for 110105" in reasons["REGION_NOT_ALLOWED"]
    mine = [codec.decode(m.value()) for m in hits.read(until=lambda got: False, timeout=3)]
    mine = {h["hit_id"]: h for h in mine if h["record_key"] == f"130822/ztry/W-{tag}"}
    assert [json.loads(h["trigger"])["source_ref"] for h in mine.values()] == [f"GOOD-{tag}"]
    after = unverified(settings)
    for code in ("BAD_SIGNATURE", "REGION_NOT_ALLOWED", "REVOKED_KEY", "UNSIGNED"):
        assert after.get(code, 0) >= before.get(code, 0) + 1, code
    audit = admin_ch(settings, "SELECT reason FROM intelbus.audit_log WHERE action = 'verify' AND outcome = 'refused' "
                               f"AND query_text LIKE 'intel.incident/%' AND at_ms >= {int(time.time() * 1000) - 600_000}")
    codes = sorted({r[0].split(":")[0] for r in audit})
    assert {"BAD_SIGNATURE", "REGION_NOT_ALLOWED", "REVOKED_KEY", "UNSIGNED"} <= set(codes)
    stored = admin_ch(settings, f"SELECT source_ref FROM intelbus.events FINAL WHERE source_ref LIKE '%-{tag}' ORDER BY source_ref")
    assert stored == [(f"GOOD-{tag}",), (f"W-{tag}",)]  # refused records never reach the history


def test_a_key_rotation_loses_nothing(keys, settings, ids):
    from identity.keys import KeyStore, keys_path
    from producers.regional import RegionalProducer

    tag = uuid.uuid4().hex[:8]
    with KeyStore(keys_path(settings)) as store:
        first = store.create(f"rot{tag}", ["120000"])
    time.sleep(1.5)
    with RegionalProducer(settings=settings, signer=first) as p:
        p.publish("incident", check("120114", f"R1-{tag}", ids.new("120114"), system=f"rot{tag}"))
    with KeyStore(keys_path(settings)) as store:
        second = store.rotate(f"rot{tag}")
    time.sleep(1.5)
    with RegionalProducer(settings=settings, signer=second) as p:
        p.publish("incident", check("120114", f"R2-{tag}", ids.new("120114"), system=f"rot{tag}"))
    with RegionalProducer(settings=settings, signer=first) as p:  # a system not switched over yet
        p.publish("incident", check("120114", f"R3-{tag}", ids.new("120114"), system=f"rot{tag}"))
    settle(settings)
    stored = admin_ch(settings, f"SELECT source_ref FROM intelbus.events FINAL WHERE source_ref LIKE 'R%-{tag}' "
                                "ORDER BY source_ref")
    assert stored == [(f"R1-{tag}",), (f"R2-{tag}",), (f"R3-{tag}",)]
    with KeyStore(keys_path(settings)) as store:
        store.revoke(first.key_id)
    time.sleep(1.5)
    with RegionalProducer(settings=settings, signer=first) as p:
        p.publish("incident", check("120114", f"R4-{tag}", ids.new("120114"), system=f"rot{tag}"))
    settle(settings)
    assert admin_ch(settings, f"SELECT count() FROM intelbus.events FINAL WHERE source_ref = 'R4-{tag}'") == [(0,)]
    assert admin_ch(settings, "SELECT count() FROM intelbus.dead_letters FINAL WHERE stage = 'VERIFY' "
                              f"AND raw LIKE '%R4-{tag}%' AND reason LIKE 'REVOKED_KEY%'") == [(1,)]


@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="no Node.js toolchain on this machine")
def test_the_node_example_publishes_a_record_that_makes_a_hit(keys, settings, ids, tmp_path):
    """examples/node-publisher (kafkajs + avsc, installed by npm from its lock file) signs as docs/integrators.md says."""
    from identity.keys import export_key_file
    from ops.settings import REPO_ROOT
    from producers.regional import RegionalProducer

    work = tmp_path / "node"
    shutil.copytree(REPO_ROOT / "examples" / "node-publisher", work, ignore=shutil.ignore_patterns("node_modules"))
    npm = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=work, capture_output=True, text=True, timeout=300)
    assert npm.returncode == 0, npm.stderr[-2000:]
    tag, person = uuid.uuid4().hex[:8], ids.new("130822")
    with RegionalProducer(settings=settings, signer=keys["xl"]) as xl:
        xl.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"NW-{tag}",
                              "occurred_at": iso(-60), "action": "LISTED",
                              "person": {"id_type": "RESIDENT_ID", "id_number": person}})
    key_file = export_key_file(keys["tj"], tmp_path / "tj-key.json")
    record = json.loads((work / "record.example.json").read_text())
    record.update(source_region="120119", source_system=keys["tj"].system, source_ref=f"NODE-{tag}",
                  occurred_at=iso(-5), location={"region": "120119", "address": None, "lat": None, "lon": None})
    record["persons"][0]["id_number"] = person
    (tmp_path / "record.json").write_text(json.dumps(record, ensure_ascii=False))
    from ops.secrets import kafka_password, kafka_password_env_var

    # as Xinglong's system principal (ops/acls.yaml: a publisher), through the TLS listener
    from ops.tls import tls_dir

    env = {**os.environ, "INTELBUS_KAFKA": f"127.0.0.1:{settings.kafka_tls_port or int(settings.kafka.rsplit(':', 1)[1]) + 2}",
           "INTELBUS_REGISTRY_URL": settings.registry_url, "INTELBUS_KAFKA_USER": "xl-ztry",
           kafka_password_env_var("xl-ztry"): kafka_password(settings, "xl-ztry"),
           "INTELBUS_KAFKA_CA": str(tls_dir(settings) / "ca.pem")}
    node = subprocess.run(["node", "publish.js", str(key_file), str(tmp_path / "record.json")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert node.returncode == 0, node.stderr[-2000:]
    settle(settings)
    hits = admin_ch(settings, f"SELECT hit_region FROM intelbus.hits FINAL WHERE record_key = '130822/ztry/NW-{tag}'")
    assert hits == [("120119",)]
