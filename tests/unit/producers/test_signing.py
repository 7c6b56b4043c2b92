"""RegionalProducer signs what it produces; the key comes from signer= or the setting; Node.js signs alike."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import subprocess

import pytest

from ops.settings import REPO_ROOT, Settings
from producers.regional import RegionalProducer
from schemas.catalog import DLQ_TOPIC
from schemas.ids import derive_event_id
from schemas.proof import (HEADER_ALG, HEADER_KEY_ID, HEADER_SIGNATURE, KeyFileError, Keyring, SigningKey,
                           key_file_document, verify)
from schemas.regions import load_regions

KEY = SigningKey("xl-ztry-1", "xl-ztry", bytes(range(32)), frozenset({"130822"}))
RECORD = {"source_ref": "JQ1", "occurred_at": "2026-11-23T09:00:00+08:00", "incident_type": "HOTEL_CHECKIN",
          "location": {"region": "130822"}}


class RecordingKafka:
    """confluent_kafka.Producer as RegionalProducer uses it, recording every produce() call."""

    def __init__(self):
        self.calls = []

    def produce(self, topic, value, key=None, **kw):
        self.calls.append((topic, value, key, kw))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=0):
        return 0

    def __len__(self):
        return 0


class Codec:
    """Wire-format-like bytes that differ per record, without a registry."""

    def encode(self, topic, record):
        return b"\x00\x00\x00\x00\x01" + json.dumps(record, sort_keys=True, default=str).encode()


def producer(tmp_path, **kw) -> tuple[RegionalProducer, RecordingKafka]:
    kafka = RecordingKafka()
    p = RegionalProducer(region="130822", system="ztry", settings=Settings(stack_dir=str(tmp_path), kafka_auth="none"), codec=Codec(),
                         kafka_producer=kafka, **kw)
    return p, kafka


def test_every_input_record_and_dead_letter_carries_a_proof_the_verifier_accepts(tmp_path):
    p, kafka = producer(tmp_path, signer=KEY)
    p.publish("incident", RECORD)
    p.publish("incident", {**RECORD, "source_ref": "JQ2"})
    p.send_dead_letter(stage="PUBLISH", source="f.jsonl:3", reason="bad", raw=b"{}")
    assert [c[0] for c in kafka.calls] == ["intel.incident", "intel.incident", DLQ_TOPIC]
    ring = Keyring([KEY])
    for topic, value, key, kw in kafka.calls:
        headers = kw["headers"]
        assert [h[0] for h in headers] == [HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_ALG]
        assert dict(headers)[HEADER_SIGNATURE] == hmac.new(KEY.secret, value, hashlib.sha256).hexdigest().encode()
        assert verify(value, headers, ring, "130822", load_regions().is_within) == "xl-ztry-1"
    assert kafka.calls[0][2] == b"130822/ztry/JQ1"


def test_the_key_file_of_the_setting_is_used_and_a_missing_one_warns_once(tmp_path, caplog):
    settings = Settings(stack_dir=str(tmp_path), kafka_auth="none")
    with caplog.at_level(logging.WARNING, logger="intelbus.producer"):
        p, kafka = producer(tmp_path)
        producer(tmp_path)
    assert p.signer is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "intelbus.producer"]
    assert len(warnings) == 1 and "INTELBUS_SIGNING_KEY_FILE" in warnings[0] and settings.signing_key_file in warnings[0]
    p.publish("incident", RECORD)
    assert kafka.calls[0][3] == {}  # unsigned: produce() called without headers

    path = tmp_path / "identity" / "keys" / "local.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(key_file_document(KEY)))
    p, kafka = producer(tmp_path)
    assert p.signer == KEY
    p, _ = producer(tmp_path, signer=False)  # deliberately unsigned
    assert p.signer is None


def test_an_explicit_key_file_must_be_usable(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps(key_file_document(KEY)))
    assert producer(tmp_path, signer=str(path))[0].signer == KEY
    with pytest.raises(KeyFileError, match="cannot read key file"):
        producer(tmp_path, signer=tmp_path / "absent.json")


def test_the_setting_has_an_environment_override(tmp_path):
    from ops.settings import load_settings

    assert load_settings({"INTELBUS_STACK_DIR": str(tmp_path)}).signing_key_file == str(
        tmp_path / "identity" / "keys" / "local.json")
    assert load_settings({"INTELBUS_SIGNING_KEY_FILE": "/k.json"}).signing_key_file == "/k.json"


NODE_DIR = REPO_ROOT / "examples" / "node-publisher"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH: the Node.js example cannot be run")
def test_the_node_example_signs_the_same_bytes_the_same_way():
    out = subprocess.run(["node", str(NODE_DIR / "publish.js"), "--self-test"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    got = json.loads(out)
    value = b"\x00" + (1).to_bytes(4, "big") + b"intelbus self-test"
    assert got["value_hex"] == value.hex()
    assert got["signature"] == hmac.new(bytes(range(32)), value, hashlib.sha256).hexdigest()
    assert got["signature"] == "616ca7d162a8f53e75cd9374cd04019a104518b75e90569fd8635482fc59efdc"  # docs/integrators.md
    assert (got["key_id"], got["alg"]) == ("selftest-1", "HMAC-SHA256")
    assert got["event_id"] == derive_event_id("130822", "ztry", "JQ1", 1)
