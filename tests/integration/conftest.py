"""Fixtures for tests on the real bus: publishing through RegionalProducer, reading topics."""
from __future__ import annotations

import random
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas.normalise import resident_id_check_digit


def new_resident_id(region: str = "130822", *, year: int | None = None) -> str:
    """A valid, random 18-digit resident ID (born in 19xx, so it also has a 15-digit form)."""
    year = year or random.randint(1950, 1999)
    first17 = f"{region}{year}{random.randint(1, 12):02d}{random.randint(1, 28):02d}{random.randint(0, 999):03d}"
    return first17 + resident_id_check_digit(first17)


def to_15(id18: str) -> str:
    return id18[:6] + id18[8:17]


class TopicReader:
    """Reads a topic from the offsets it had when the reader was made (what a test produced)."""

    def __init__(self, settings, topic: str):
        self.topic = topic
        self.consumer = Consumer({**settings.kafka_config(), "group.id": f"test-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        starts = []
        for p in meta.partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts.append(TopicPartition(topic, p, high))
        self.consumer.assign(starts)

    def read(self, *, until, timeout: float = 30.0, settle: float = 1.0) -> list:
        """Messages until `until(messages)` holds, then `settle` more seconds (to catch extras)."""
        got, deadline, done_at = [], time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(500, 0.2):
                if not msg.error():
                    got.append(msg)
            if done_at is None and until(got):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
        return got

    def close(self):
        self.consumer.close()


@pytest.fixture(scope="session")
def codec(stack, settings):
    from schemas.wire import SchemaCodec

    return SchemaCodec(url=settings.registry_url)


@pytest.fixture
def reader(settings):
    readers = []

    def make(topic: str) -> TopicReader:
        r = TopicReader(settings, topic)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()


@pytest.fixture
def producer(stack, settings, codec):
    from producers.regional import RegionalProducer

    with RegionalProducer(settings=settings, codec=codec) as p:
        yield p


@pytest.fixture
def ids():
    """Resident-ID helpers: ids.new(region) -> 18 digits, ids.to_15(id18) -> the old form."""

    class Ids:
        new = staticmethod(new_resident_id)
        to_15 = staticmethod(to_15)

    return Ids
