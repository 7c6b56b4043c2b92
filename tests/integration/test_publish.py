"""`intelbus publish --via kafka` as an integrator holding Kafka credentials runs it, against the real broker
and registry. The same command through the gateway (--via gateway, the default when logged in) is in
test_ingest.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient


@pytest.fixture
def run_publish(people):
    """`intelbus publish --via kafka` as a regional system logged in with the integrator role."""
    def run(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--via", "kafka", *args], capture_output=True, text=True,
                              input=stdin, timeout=120, env={**os.environ, **people.env("t-integrator")})
    return run


def checks_file(tmp_path, ids, tag):
    good = [{"source_ref": f"{tag}-{i}", "occurred_at": "2026-11-23T09:00:00+08:00", "incident_type": "CHECKPOINT_CHECK",
             "location": {"region": "120119"}, "persons": [{"id_type": "RESIDENT_ID", "id_number": ids.new("130822")}]}
            for i in range(5)]
    bad_digit = dict(good[0], source_ref=f"{tag}-bad", persons=[{"id_type": "RESIDENT_ID", "id_number": "110105194912310021"}])
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    lines.insert(2, json.dumps(bad_digit))                      # line 3: bad check digit
    lines.insert(4, "{not json")                                # line 5: not JSON
    lines.append(json.dumps(good[1], ensure_ascii=False))       # line 8: duplicate of line 2
    path = tmp_path / "checks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, good


def test_publish_reports_every_bad_line_and_sends_good_ones_once(stack, settings, reader, codec, ids, tmp_path,
                                                                 run_publish):
    tag = f"P{uuid.uuid4().hex[:8]}"
    incidents, dlq = reader("intel.incident"), reader("intel.dlq")
    path, good = checks_file(tmp_path, ids, tag)
    result = run_publish("--kind", "incident", "--region", "120119", "--system", "kakou", str(path))
    assert result.returncode == 1, result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("checks.jsonl:")]
    assert errors == ["checks.jsonl:3: persons[0].id_number: check digit is 1, expected X",
                      "checks.jsonl:5: not valid JSON: Expecting property name enclosed in double quotes at column 2"]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("read 8, published 5, rejected 2, duplicates-in-file 1, elapsed ")

    mine = [m for m in incidents.read(until=lambda got: len([m for m in got if tag in m.key().decode()]) >= 5, settle=1)
            if tag in m.key().decode()]
    assert len(mine) == 5
    registry = SchemaRegistryClient({"url": settings.registry_url})
    for msg in mine:
        assert msg.value()[0] == 0
        schema_id = int.from_bytes(msg.value()[1:5], "big")
        assert json.loads(registry.get_schema(schema_id).schema_str)["name"] == "Incident"
        record = codec.decode(msg.value())
        assert msg.key().decode() == f"120119/kakou/{record['source_ref']}"
    assert sorted(codec.decode(m.value())["source_ref"] for m in mine) == sorted(r["source_ref"] for r in good)

    letters = [codec.decode(m.value()) for m in dlq.read(until=lambda got: len(got) >= 2, settle=1)]
    ours = [d for d in letters if d["source"].startswith("checks.jsonl:")]
    assert {(d["source"], d["stage"], d["field"]) for d in ours} == {
        ("checks.jsonl:3", "PUBLISH", "persons[0].id_number"), ("checks.jsonl:5", "PUBLISH", None)}
    raw3 = next(d for d in ours if d["source"] == "checks.jsonl:3")
    assert f"{tag}-bad" in raw3["raw"].decode() and raw3["reason"] == "check digit is 1, expected X"


def test_strict_sends_nothing_from_a_file_with_one_bad_line(stack, reader, ids, tmp_path, run_publish):
    tag = f"S{uuid.uuid4().hex[:8]}"
    incidents, dlq = reader("intel.incident"), reader("intel.dlq")
    path, _ = checks_file(tmp_path, ids, tag)
    result = run_publish("--kind", "incident", "--region", "120119", "--system", "kakou", "--strict", str(path))
    assert result.returncode == 1
    assert "--strict: 2 bad line(s), nothing sent" in result.stderr
    assert "published 0" in result.stdout
    assert [m for m in incidents.read(until=lambda got: False, timeout=3) if tag in (m.key() or b"").decode()] == []
    assert [m for m in dlq.read(until=lambda got: False, timeout=2) if b"checks.jsonl" in m.value()] == []


def test_csv_wanted_file_and_stdin(stack, reader, codec, ids, tmp_path, run_publish):
    tag = f"C{uuid.uuid4().hex[:8]}"
    wanted = reader("intel.wanted")
    id15 = ids.to_15(ids.new("130822"))
    csv_text = ("source_ref,occurred_at,action,person.id_type,person.id_number,person.name,offence,phones\n"
                f"{tag}-1,2026-11-20 10:00:00,LISTED,RESIDENT_ID,{id15},赵六,fraud,13800138000;+86 139 0013 9000\n")
    path = tmp_path / "wanted.csv"
    path.write_text(csv_text, encoding="utf-8")
    result = run_publish("--kind", "wanted", "--region", "130822", "--system", "ztry", str(path))
    assert result.returncode == 0, result.stderr
    jsonl = json.dumps({"source_ref": f"{tag}-2", "occurred_at": "2026-11-20T10:00:00+08:00", "action": "LISTED",
                        "person": {"id_type": "RESIDENT_ID", "id_number": ids.new("130822")}})
    result = run_publish("--kind", "wanted", "--region", "130822", "--system", "ztry", "-", stdin=jsonl + "\n")
    assert result.returncode == 0, result.stderr
    got = {codec.decode(m.value())["source_ref"]: codec.decode(m.value())
           for m in wanted.read(until=lambda g: len([m for m in g if tag in m.key().decode()]) >= 2, settle=0.5)
           if tag in m.key().decode()}
    first = got[f"{tag}-1"]
    assert first["person"]["id_number"] == id15[:6] + "19" + id15[6:] + first["person"]["id_number"][-1]
    assert first["person"]["id_number_original"] == id15 and first["offence"] == "FRAUD"
    assert first["phones"] == ["13800138000", "13900139000"]


def test_unreachable_broker_is_exit_2_with_one_line(tmp_path, people):
    path = tmp_path / "x.jsonl"
    path.write_text("{}\n")
    env = {**os.environ, **people.env("t-integrator"), "INTELBUS_KAFKA": "127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--via", "kafka", "--kind", "incident", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("%")]
    assert len(lines) == 1 and "cannot reach Kafka at 127.0.0.1:1" in lines[0]


def test_a_registry_lost_mid_file_costs_no_line_and_prints_no_traceback(stack, settings, reader, codec, ids, people):
    """An integrator streams checks into `intelbus publish -` while the schema registry is upgraded. Until
    2026-12-03 the first bad line after the registry went away ended the run with a traceback: the dead
    letters' schema was registered at the first dead letter. Now the run registers what it needs before
    its first line, and a registry lost later costs nothing; the control is the good line sent before."""
    from ops.services import full_stack

    tag = f"R{uuid.uuid4().hex[:8]}"
    incidents, dlq = reader("intel.incident"), reader("intel.dlq")
    good = [{"source_ref": f"{tag}-{i}", "occurred_at": "2026-11-23T09:00:00+08:00", "incident_type": "CHECKPOINT_CHECK",
             "location": {"region": "120119"}, "persons": [{"id_type": "RESIDENT_ID", "id_number": ids.new("130822")}]}
            for i in (1, 2)]
    bad = dict(good[0], source_ref=f"{tag}-bad", persons=[{"id_type": "RESIDENT_ID", "id_number": "110105194912310021"}])
    run = subprocess.Popen([sys.executable, "-m", "ops.cli", "publish", "--via", "kafka", "--kind", "incident",
                            "--region", "120119", "--system", "kakou", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, **people.env("t-integrator")})
    services = full_stack(settings, out=lambda m: None)

    def mine(got, n):
        return len([m for m in got if tag in (m.key() or b"").decode()]) >= n

    try:
        run.stdin.write(json.dumps(good[0]) + "\n")
        run.stdin.flush()
        first = incidents.read(until=lambda got: mine(got, 1), timeout=60)
        assert mine(first, 1)  # the control: sent while the registry answers
        services.down(only={"registry"})
        out, err = run.communicate(json.dumps(bad) + "\n" + json.dumps(good[1]) + "\n", timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        services.up()
    assert "Traceback" not in err, err
    assert run.returncode == 1, err
    assert "<stdin>:2: persons[0].id_number: check digit is 1, expected X" in err.splitlines()
    assert out.strip().splitlines()[-1].startswith("read 3, published 2, rejected 1, ")
    sent = first + incidents.read(until=lambda got: mine(first + got, 2), timeout=60, settle=1)
    assert sorted(codec.decode(m.value())["source_ref"] for m in sent if tag in m.key().decode()) == [f"{tag}-1", f"{tag}-2"]
    letters = [codec.decode(m.value()) for m in dlq.read(until=lambda got: any(f"{tag}-bad".encode() in m.value() for m in got),
                                                         timeout=60)]
    assert [(d["source"], d["stage"]) for d in letters if f"{tag}-bad".encode() in d["raw"]] == [("<stdin>:2", "PUBLISH")]
