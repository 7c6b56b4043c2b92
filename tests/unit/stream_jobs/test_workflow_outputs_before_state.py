"""The workflow job produces an item's events before its new state: a crash between the two
can never leave the item's state saying a command was applied while its events are not in
Kafka (the machine, idempotent by command id, would then emit nothing on the replay)."""
from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaException

from stream_jobs.app import DeliveryWaiter
from stream_jobs.state import MemoryState
from stream_jobs.workflow_job import publish_outputs_then_state
from tests.unit.stream_jobs.test_outputs_before_state import FakeProducer

ITEMS_CHANGELOG = "intelbus-jobs-workflows-items-changelog"


class ItemsTable(MemoryState):
    changelog_topic = ITEMS_CHANGELOG


def publish(producer, table, messages):
    async def main():
        await publish_outputs_then_state(producer, DeliveryWaiter(producer, interval=0), messages, table,
                                         KafkaException)
    asyncio.run(main())


def test_the_items_new_state_is_produced_only_once_its_events_were_delivered():
    producer, table = FakeProducer(), ItemsTable()
    table.put(2, b"hit-1", b'{"status": "CONFIRMED", "applied": ["cmd-1"]}')
    publish(producer, table, [("intel.workflow", b"hit-1", b"avro", None)])
    assert producer.log == [("produced", "intel.workflow"), ("delivered", "intel.workflow"),
                            ("produced", ITEMS_CHANGELOG), ("delivered", ITEMS_CHANGELOG)]
    assert table.data[2][b"hit-1"].startswith(b'{"status": "CONFIRMED"')  # in the store after both


def test_an_event_not_delivered_leaves_the_state_unwritten_so_the_replay_applies_the_command_again():
    producer, table = FakeProducer(fail_topic="intel.workflow"), ItemsTable()
    table.put(2, b"hit-1", b'{"status": "CONFIRMED", "applied": ["cmd-1"]}')
    with pytest.raises(KafkaException, match="outputs undelivered"):
        publish(producer, table, [("intel.workflow", b"hit-1", b"avro", None)])
    assert ("produced", ITEMS_CHANGELOG) not in producer.log
    assert table.data == {}


def test_a_state_write_not_delivered_is_not_written_into_the_store():
    producer, table = FakeProducer(fail_topic=ITEMS_CHANGELOG), ItemsTable()
    table.put(2, b"hit-1", b"{}")
    with pytest.raises(KafkaException, match="state writes undelivered"):
        publish(producer, table, [("intel.workflow", b"hit-1", b"avro", None)])
    assert producer.log[:2] == [("produced", "intel.workflow"), ("delivered", "intel.workflow")]
    assert table.data == {}


def test_messages_without_a_table_are_produced_and_awaited_alone():
    producer = FakeProducer()
    publish(producer, None, [("intelbus-jobs-workflows-items", b"hit-1", b"cmd", 4)])
    assert producer.log == [("produced", "intelbus-jobs-workflows-items"), ("delivered", "intelbus-jobs-workflows-items")]
