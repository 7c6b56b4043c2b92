"""Trust on the wire, tried against the real broker as a person could: no credentials, a wrong
password, a regional system reaching for the hits, a client that does not trust the stack's
CA. Each attempt asserts the refusal, what the client is told, and the broker's audit line
(.stack/logs/kafka-authorizer.log), next to a control that succeeds in the
same test.
"""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from ops.kafka_auth import ADMIN, GATEWAY


def _log(settings, name: str) -> str:
    path = settings.stack_path / "logs" / name
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for_line(settings, name: str, needle: str, *, since: int = 0, timeout: float = 10.0) -> bool:
    """Does the log get a line with `needle` after its first `since` characters (what this attempt wrote)?"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in _log(settings, name)[since:]:
            return True
        time.sleep(0.2)
    return False


def _logs(errors: list):
    return lambda err: errors.append(err)


def test_an_anonymous_client_is_refused_and_an_authenticated_one_is_served(stack, settings):
    errors, since = [], len(_log(settings, "kafka-authorizer.log"))
    anonymous = AdminClient({"bootstrap.servers": settings.kafka, "socket.timeout.ms": 3000,
                             "error_cb": _logs(errors), "log_level": 0})
    with pytest.raises(KafkaException) as refused:
        anonymous.list_topics(timeout=5)
    anonymous.poll(1)  # serves error_cb
    assert refused.value.args[0].code() in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT)
    # what librdkafka tells the person: the broker hangs up on a client that does not log in
    assert errors and all(e.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) for e in errors), errors
    assert _wait_for_line(settings, "kafka-authorizer.log", "during SASL handshake", since=since)
    # control: the same broker, the admin's credentials
    assert "intel.hit" in AdminClient(settings.kafka_config(ADMIN)).list_topics(timeout=10).topics


def test_a_wrong_password_is_refused_and_logged_by_the_broker(stack, settings):
    errors, since = [], len(_log(settings, "kafka-authorizer.log"))
    wrong = {**settings.kafka_config("local"), "sasl.password": "not-" + uuid.uuid4().hex, "error_cb": _logs(errors),
             "log_level": 0}
    client = AdminClient(wrong)
    with pytest.raises(KafkaException):
        client.list_topics(timeout=5)
    client.poll(1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), [e.str() for e in errors]
    assert any("invalid credentials with SASL mechanism SCRAM-SHA-512" in e.str() for e in errors)
    assert _wait_for_line(settings, "kafka-authorizer.log", "invalid credentials with SASL mechanism SCRAM-SHA-512",
                          since=since)
    # control: the right password of the same principal
    assert "intel.incident" in AdminClient(settings.kafka_config("local")).list_topics(timeout=10).topics


def _read_one(conf: dict, topic: str, *, partition: int = 0, group: str = "probe", timeout: float = 10.0):
    """Assign one partition of `topic` from its start and poll: (first message, [errors seen])."""
    consumer = Consumer({**conf, "group.id": f"{group}-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "log_level": 0})
    errors = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:  # the broker does not even say the topic exists
            errors.append(meta.error.code())
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None:
                return msg, errors
            errors.append(msg.error().code())
            if KafkaError.TOPIC_AUTHORIZATION_FAILED in errors:
                break
        return None, errors
    finally:
        consumer.close()


def _produce(conf: dict, topic: str, value: bytes):
    """Produce one message and flush; the delivery error (None when delivered)."""
    outcome = []
    producer = Producer({**conf, "message.timeout.ms": 10000, "log_level": 0})
    try:
        producer.produce(topic, value, on_delivery=lambda err, msg: outcome.append(err))
    except KafkaException as exc:  # librdkafka may refuse at once when the metadata already says so
        return exc.args[0]
    producer.flush(15)
    return outcome[0] if outcome else "not delivered within 15 s"


def test_a_regional_system_cannot_read_the_hits_but_the_gateway_can(stack, settings, publisher):
    # make sure intel.hit has something for the control to read
    partition = publisher.with_a_hit()
    since = len(_log(settings, "kafka-authorizer.log"))
    message, errors = _read_one(settings.kafka_config("xl-ztry"), "intel.hit", partition=partition)
    assert message is None and KafkaError.TOPIC_AUTHORIZATION_FAILED in errors, errors
    assert _wait_for_line(settings, "kafka-authorizer.log",
                          "Principal = User:xl-ztry is Denied operation = DESCRIBE from host = 127.0.0.1 "
                          "on resource = Topic:LITERAL:intel.hit", since=since)
    served, errors = _read_one(settings.kafka_config(GATEWAY), "intel.hit", partition=partition, group="feed-test")
    assert served is not None and served.value(), errors


def test_a_regional_system_cannot_write_the_hits_but_can_write_its_input(stack, settings):
    conf = settings.kafka_config("xl-ztry")
    since = len(_log(settings, "kafka-authorizer.log"))
    err = _produce(conf, "intel.hit", b"a forged hit")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # the broker does not even tell it where intel.hit lives (DESCRIBE, needed before any WRITE)
    assert _wait_for_line(settings, "kafka-authorizer.log",
                          "Principal = User:xl-ztry is Denied operation = DESCRIBE from host = 127.0.0.1 "
                          "on resource = Topic:LITERAL:intel.hit", since=since)
    # control: the same principal writes an input topic (the jobs dead-letter these unsigned bytes: VERIFY)
    assert _produce(conf, "intel.incident", b"not avro, not signed: dead-lettered by the jobs") is None
    # nor may it read the input back
    message, errors = _read_one(conf, "intel.incident")
    assert message is None and KafkaError.TOPIC_AUTHORIZATION_FAILED in errors, errors


@pytest.fixture
def publisher(settings, codec):
    """Makes sure intel.hit holds a message: a signed wanted listing in Xinglong and a check of the
    same person in Jizhou (a hit for Hebei and Tianjin), once; `with_a_hit()` names a partition that has one."""
    class _P:
        def with_a_hit(self) -> int:
            return _partition_with_a_hit(settings) or _make_a_hit(settings)

    return _P()


def _partition_with_a_hit(settings):
    probe = Consumer({**settings.kafka_config(ADMIN), "group.id": "probe", "log_level": 0})
    try:
        parts = probe.list_topics("intel.hit", timeout=10).topics["intel.hit"].partitions
        for p in sorted(parts):
            low, high = probe.get_watermark_offsets(TopicPartition("intel.hit", p), timeout=10)
            if high > low:
                return p
        return None
    finally:
        probe.close()


def _make_a_hit(settings) -> int:
    from datetime import datetime, timedelta, timezone

    from producers.regional import RegionalProducer
    from tests.integration.conftest import new_resident_id

    cst = timezone(timedelta(hours=8))
    iso = lambda m: (datetime.now(tz=cst) + timedelta(minutes=m)).isoformat(timespec="milliseconds")  # noqa: E731
    tag, person = uuid.uuid4().hex[:8], new_resident_id("130822")
    with RegionalProducer(settings=settings) as p:
        p.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"BT-{tag}",
                             "occurred_at": iso(-60), "action": "LISTED",
                             "person": {"id_type": "RESIDENT_ID", "id_number": person}})
        p.publish("incident", {"source_region": "120119", "source_system": "kakou", "source_ref": f"BT-{tag}",
                               "occurred_at": iso(-5), "incident_type": "CHECKPOINT_CHECK",
                               "location": {"region": "120119"},
                               "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = _partition_with_a_hit(settings)
        if found is not None:
            return found
        time.sleep(0.5)
    raise AssertionError("the Xinglong listing and the Jizhou check made no hit on intel.hit within 120 s")


def test_tls_listener_serves_a_client_that_trusts_the_stack_ca_and_refuses_others(stack, settings):
    from ops.tls import client_settings

    port = settings.kafka_tls_port or int(settings.kafka.rsplit(":", 1)[1]) + 2
    sasl = {k: v for k, v in settings.kafka_config("local").items() if k.startswith("sasl.")}
    tls = {**sasl, **client_settings(settings, port)}
    # control: SASL_SSL with the stack's CA, hostname checked (librdkafka's default: https)
    assert "intel.incident" in AdminClient(tls).list_topics(timeout=10).topics
    # attempt: a client that trusts only the system's CAs does not accept the broker's certificate
    errors = []
    untrusting = {**tls, "error_cb": _logs(errors), "log_level": 0}
    del untrusting["ssl.ca.location"]
    client = AdminClient(untrusting)
    with pytest.raises(KafkaException):
        client.list_topics(timeout=5)
    client.poll(1)
    assert any("certificate verify failed" in e.str() for e in errors), [e.str() for e in errors]
    # attempt: no TLS at all on the TLS port
    errors = []
    with pytest.raises(KafkaException):
        AdminClient({**sasl, "bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": "SCRAM-SHA-512", "error_cb": _logs(errors), "log_level": 0}).list_topics(timeout=5)


def test_a_publisher_reaches_the_jobs_through_tls_and_makes_a_hit(stack, settings, codec):
    """The same RegionalProducer, pointed at the TLS listener by settings only (as production would be)."""
    import dataclasses

    from producers.regional import RegionalProducer
    from tests.integration.conftest import new_resident_id
    from tests.integration.test_signed_records import admin_ch, check, iso, settle

    port = settings.kafka_tls_port or int(settings.kafka.rsplit(":", 1)[1]) + 2
    over_tls = dataclasses.replace(settings, kafka=f"127.0.0.1:{port}",
                                   kafka_security=f"security.protocol=SASL_SSL,ssl.ca.location={settings.stack_path / 'tls' / 'ca.pem'}")
    tag, person = uuid.uuid4().hex[:8], new_resident_id("130822")
    with RegionalProducer(settings=over_tls) as p:
        p.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"TLS-{tag}",
                             "occurred_at": iso(-60), "action": "LISTED",
                             "person": {"id_type": "RESIDENT_ID", "id_number": person}})
        p.publish("incident", check("120119", f"TLS-{tag}", person))
    settle(settings)
    assert admin_ch(settings, f"SELECT hit_region FROM intelbus.hits FINAL "
                              f"WHERE record_key = '130822/ztry/TLS-{tag}'") == [("120119",)]


def _acls(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ops.cli", "acls", *args], capture_output=True, text=True, timeout=120)


def test_acls_apply_reports_a_rule_given_by_hand_and_prune_takes_it_back(stack, settings):
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    admin = AdminClient(settings.kafka_config(ADMIN))
    # someone let Xinglong's system read the hits, by hand, outside ops/acls.yaml
    by_hand = [AclBinding(ResourceType.TOPIC, "intel.hit", ResourcePatternType.LITERAL, "User:xl-ztry", "*", op,
                          AclPermissionType.ALLOW) for op in (AclOperation.READ, AclOperation.DESCRIBE)]
    for fut in admin.create_acls(by_hand, request_timeout=30).values():
        fut.result()
    try:
        meta = Consumer({**settings.kafka_config("xl-ztry"), "group.id": "probe", "log_level": 0})
        try:  # the hand-made rule works: the broker now describes intel.hit to it
            assert meta.list_topics("intel.hit", timeout=10).topics["intel.hit"].error is None
        finally:
            meta.close()
        report = _acls("apply")
        assert report.returncode == 1, report.stdout + report.stderr
        assert "drift: User:xl-ztry             READ             topic intel.hit (on the broker, not in acls.yaml" \
            in report.stderr
        assert "0 created, 2 drifted" in report.stdout
        pruned = _acls("apply", "--prune")
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        assert "removed User:xl-ztry             READ             topic intel.hit" in pruned.stdout
        again = _acls("apply")
        assert again.returncode == 0 and "0 created, 0 drifted, 0 removed" in again.stdout, again.stdout + again.stderr
        message, errors = _read_one(settings.kafka_config("xl-ztry"), "intel.hit")
        assert message is None and KafkaError.TOPIC_AUTHORIZATION_FAILED in errors, errors
    finally:
        from ops.acls import Binding, _to_filter

        admin.delete_acls([_to_filter(Binding("User:xl-ztry", "TOPIC", "intel.hit", "LITERAL", op))
                           for op in ("READ", "DESCRIBE")], request_timeout=30)
