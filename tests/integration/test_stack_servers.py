"""The three real servers of the local stack answer as their clients expect."""
from __future__ import annotations

import json
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def test_produce_and_consume_on_the_real_broker(stack, settings, topic_name):
    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    admin.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])[topic_name].result(15)
    producer = Producer({**settings.kafka_config("intelbus-admin"), "acks": "all", "enable.idempotence": True})
    payload = json.dumps({"hello": "冀R8F3D6"}, ensure_ascii=False).encode()
    producer.produce(topic_name, key=b"130822/sys/1", value=payload)
    assert producer.flush(15) == 0

    consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic_name])
    try:
        msg = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                break
        assert msg is not None and not msg.error()
        assert msg.key() == b"130822/sys/1"
        assert json.loads(msg.value()) == {"hello": "冀R8F3D6"}
    finally:
        consumer.close()


def test_auto_topic_creation_is_disabled(stack, settings, topic_name):
    producer = Producer({**settings.kafka_config("intelbus-admin"), "message.timeout.ms": 3000})
    errors = []
    producer.produce(topic_name, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None
    assert topic_name not in AdminClient(settings.kafka_config("intelbus-admin")).list_topics(timeout=10).topics


def test_schema_registered_and_read_back_by_id(stack, settings):
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": settings.registry_url})
    subject = f"test-{uuid.uuid4().hex[:8]}-value"
    schema_str = json.dumps(
        {"type": "record", "name": "Ping", "namespace": "intelbus.test", "fields": [{"name": "n", "type": "int", "doc": "a number"}]}
    )
    schema_id = client.register_schema(subject, Schema(schema_str, "AVRO"))
    fetched = SchemaRegistryClient({"url": settings.registry_url}).get_schema(schema_id)
    assert json.loads(fetched.schema_str)["name"] == "Ping"
    assert subject in client.get_subjects()
    client.delete_subject(subject, permanent=False)


def test_clickhouse_create_insert_select(stack, settings):
    from clickhouse_driver import Client

    from ops.secrets import clickhouse_url_as

    client = Client.from_url(clickhouse_url_as(settings, "default").rsplit("/", 1)[0] + "/default")  # the admin
    db = f"test_{uuid.uuid4().hex[:8]}"
    client.execute(f"CREATE DATABASE {db}")
    try:
        client.execute(f"CREATE TABLE {db}.t (region String, n UInt32) ENGINE = MergeTree ORDER BY region")
        client.execute(f"INSERT INTO {db}.t (region, n) VALUES", [("120119", 1), ("130822", 2)])
        rows = client.execute(f"SELECT region, n FROM {db}.t ORDER BY region")
        assert rows == [("120119", 1), ("130822", 2)]
    finally:
        client.execute(f"DROP DATABASE {db}")
