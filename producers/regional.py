"""`RegionalProducer`: how a regional system publishes to intelbus from Python.

    with RegionalProducer(region="130822", system="ztry") as producer:
        sent = producer.publish("wanted", {"source_ref": "ZT2026-001", "occurred_at": "2026-11-23T09:00:00+08:00",
                                           "action": "LISTED", "person": {"id_type": "RESIDENT_ID", "id_number": "..."}})
    print(producer.stats)   # delivered / failed once flushed

A record is validated and normalised before it is sent (`RecordError` names the field and
the reason); one that fails never reaches the input topic. Messages are Avro in the
Confluent wire format, keyed by the record key so revisions of one record stay ordered.

Every message it produces, input records and its own dead letters alike, carries proof of
its publisher (schemas/proof.py): three headers with the key id and an HMAC-SHA256 of the
exact value bytes: about 2 µs to sign and 2 µs more for librdkafka to take the headers
(both measured offline). The key comes from `signer=` (a SigningKey or a key
file's path) or else from the setting signing_key_file (INTELBUS_SIGNING_KEY_FILE, default
<stack dir>/identity/keys/local.json, made by `intelbus up`). With no key file there, it
publishes unsigned and logs one warning: the stream jobs refuse unsigned records.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import Producer

from ops.settings import Settings, load_settings
from producers import metrics
from schemas.catalog import DLQ_TOPIC, input_topic
from schemas.dead_letters import dead_letter_record
from schemas.ids import record_key
from schemas.proof import SigningKey, load_key_file, sign_headers
from schemas.records import RecordError, validate_record
from schemas.wire import SchemaCodec

__all__ = ["RegionalProducer", "RecordError", "Published", "DeliveryStats", "producer_config", "resolve_signer"]

log = logging.getLogger("intelbus.producer")
_warned: set[str] = set()


def resolve_signer(signer, settings: Settings) -> SigningKey | None:
    """The key to sign with: `signer` itself, the key file it names, or the settings' key file.

    signer=False: deliberately unsigned (no warning). A key file that exists but cannot be
    used raises schemas.proof.KeyFileError; a missing default file gives None and one warning
    per process naming the setting.
    """
    if signer is False:
        return None
    if isinstance(signer, SigningKey):
        return signer
    if signer is not None:
        return load_key_file(signer)
    path = Path(settings.signing_key_file)
    if path.exists():
        return load_key_file(path)
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("no signing key at %s (setting signing_key_file, INTELBUS_SIGNING_KEY_FILE): publishing unsigned "
                    "records, which the bus refuses (`intelbus keys create ... --out FILE`, or `intelbus up` for the "
                    "local stack's key)", path)
    return None


def producer_config(settings: Settings, **overrides) -> dict:
    """librdkafka settings for publishing: durable (acks=all, idempotent), batched and compressed."""
    return {
        **settings.kafka_config(settings.kafka_user),
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        # librdkafka's own default: at low rates a record waits at most 5 ms for others to share its
        # request (20 ms before, a fifth of the 100-ms produce-to-hit budget); at high rates batches
        # fill before that anyway
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # murmur2 like the Java client: integrators in any language put a record key on the same partition
        "partitioner": "murmur2_random",
        **overrides,
    }


class Published(NamedTuple):
    """What was handed to Kafka for one record (delivery is reported through `stats`)."""

    kind: str
    topic: str
    key: str
    event_id: str


@dataclass
class DeliveryStats:
    published: int = 0
    delivered: int = 0
    failed: int = 0
    dead_letters: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.published + self.dead_letters - self.delivered - self.failed


class RegionalProducer:
    def __init__(self, *, region: str | None = None, system: str | None = None, settings: Settings | None = None,
                 codec: SchemaCodec | None = None, kafka_overrides: dict | None = None, on_delivery=None,
                 topic: str | None = None, signer: SigningKey | str | Path | None | bool = None,
                 kafka_producer=None):
        """signer: a SigningKey, a key file's path, None (the setting signing_key_file) or False (unsigned).
        kafka_producer: an object with confluent_kafka.Producer's produce/poll/flush/len in its place
        (tests and offline benchmarks); its delivery reports are then the caller's business."""
        self.settings = settings or load_settings()
        self.signer = resolve_signer(signer, self.settings)
        self.region, self.system = region, system
        self.codec = codec or SchemaCodec(url=self.settings.registry_url)
        # A delivery report per message costs about 3 µs in librdkafka's Python binding,
        # whatever the callback does (bench/bench_producer.py). Without a callback of the
        # caller's, only failures are reported, and what was delivered is counted from what
        # was handed over, what failed and what is still in librdkafka's queue.
        config = producer_config(self.settings, **(kafka_overrides or {}))
        config.setdefault("delivery.report.only.error", on_delivery is None)
        config["on_delivery"] = self._delivered
        self._producer = Producer(config) if kafka_producer is None else kafka_producer
        self._stats = DeliveryStats()
        self._user_callback = on_delivery
        self._closed = False
        self._topic = topic  # None: intel.<kind>; another topic for staging and benchmarks
        self._kind_by_topic: dict[str, str] = {}
        self._sent_by_topic: dict[str, int] = {}  # records handed to librdkafka (not the DLQ)
        self._failed_by_topic: dict[str, int] = {}
        self._counted_by_topic: dict[str, int] = {}  # already in the `published` metric
        self._next_settle = 0.0
        self._until_settle = 64

    @property
    def stats(self) -> DeliveryStats:
        """Counts so far; `delivered` is exact once flushed (pending: still in librdkafka's queue)."""
        self._settle()
        return self._stats

    def _settle(self) -> None:
        """Bring `delivered` and the per-kind `published` metric up to date.

        delivered = handed over - failed - still queued, exact at every moment. Per kind,
        the metric takes the same bound with the whole queue as that kind's: it never counts
        a record Kafka has not acknowledged, is exact whenever the queue is empty (after
        every flush) and, with one kind in flight, always.
        """
        in_flight = len(self._producer)
        st = self._stats
        st.delivered = st.published + st.dead_letters - st.failed - in_flight
        failed, counted = self._failed_by_topic, self._counted_by_topic
        for topic, sent in self._sent_by_topic.items():
            bound = sent - failed.get(topic, 0) - in_flight
            done = counted.get(topic, 0)
            if bound > done:
                metrics.RECORDS.labels(self._kind_of(topic), "published").inc(bound - done)
                counted[topic] = bound
        self._next_settle = time.monotonic() + 1.0

    def _delivered(self, err, msg) -> None:
        """librdkafka's report: every failure, and every success when the caller asked for them."""
        if err is not None:
            topic = msg.topic()
            self._stats.failed += 1
            if topic != DLQ_TOPIC:
                self._failed_by_topic[topic] = self._failed_by_topic.get(topic, 0) + 1
            metrics.RECORDS.labels(self._kind_of(topic), "failed").inc()
            if len(self._stats.errors) < 100:
                self._stats.errors.append(f"{topic} key={msg.key()!r}: {err.str()}")
        if self._user_callback is not None:
            self._user_callback(err, msg)

    def validate(self, kind: str, record: dict, *, now_ms: int | None = None) -> dict:
        """The Avro-ready, normalised record, or RecordError naming the field and the reason."""
        try:
            return validate_record(kind, record, source_region=self.region, source_system=self.system, now_ms=now_ms)
        except RecordError as exc:
            metrics.RECORDS.labels(kind, "rejected").inc()
            metrics.REJECTED.labels(kind, metrics.reason_class(exc.field, exc.reason)).inc()
            raise

    def prepare(self, kind: str) -> None:
        """Register, once, the schemas a run of `kind` records needs (its topic's and intel.dlq's), so
        that a registry lost later in the run costs nothing: the ids are cached. Raises
        RegistryUnavailable if the registry does not answer."""
        self.codec.register(self._topic or input_topic(kind), kind)
        self.codec.register(DLQ_TOPIC)

    def publish(self, kind: str, record: dict, *, now_ms: int | None = None) -> Published:
        """Validate, encode and hand one record to Kafka. Raises RecordError for a bad record."""
        return self.publish_valid(kind, self.validate(kind, record, now_ms=now_ms))

    def publish_valid(self, kind: str, valid: dict) -> Published:
        """Send a record already returned by `validate`."""
        topic = self._topic or input_topic(kind)
        sent = self._sent_by_topic
        if topic not in sent:
            self._kind_by_topic[topic] = kind
            sent[topic] = 0
        key = record_key(valid["source_region"], valid["source_system"], valid["source_ref"])
        value, key_bytes = self.codec.encode(topic, valid), key.encode()
        headers = None
        try:
            if self.signer is None:
                self._producer.produce(topic, value, key_bytes)
            else:
                headers = sign_headers(value, self.signer)
                self._producer.produce(topic, value, key_bytes, headers=headers)
        except BufferError:
            self._produce(topic, value, key_bytes, headers)  # waits for room in librdkafka's queue
        else:
            self._producer.poll(0)
            self._until_settle -= 1
            if not self._until_settle:
                self._settle_now_and_then()
        sent[topic] += 1
        self._stats.published += 1
        return Published(kind, topic, key, valid["event_id"])

    def send_dead_letter(self, *, stage: str, source: str, reason: str, raw: bytes, kind: str | None = None,
                         field: str | None = None, source_region: str | None = None) -> None:
        """Record a refused input on intel.dlq, with the raw bytes and an actionable reason."""
        record = dead_letter_record(stage, source, reason, raw, kind=kind, field=field,
                                    source_region=source_region or self.region, source_system=self.system)
        key = (source_region or self.region or "").encode() or None
        value = self.codec.encode(DLQ_TOPIC, record)
        self._produce(DLQ_TOPIC, value, key, None if self.signer is None else sign_headers(value, self.signer))
        self._stats.dead_letters += 1

    def _kind_of(self, topic: str) -> str:
        return self._kind_by_topic.get(topic, "unknown")

    def _produce(self, topic: str, value: bytes, key: bytes | None, headers=None) -> None:
        while True:
            try:
                if headers is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:  # local queue full: serve deliveries, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)
        self._settle_now_and_then()

    def _settle_now_and_then(self) -> None:
        """`_settle` at most once a second, looked at every 64 records (not per record)."""
        self._until_settle = 64
        if self._next_settle <= time.monotonic():
            self._settle()

    def poll(self, timeout: float = 0) -> int:
        served = self._producer.poll(timeout)
        self._settle()
        return served

    def flush(self, timeout: float = 60.0) -> int:
        """Wait for delivery reports; returns how many messages are still undelivered."""
        remaining = self._producer.flush(timeout)
        self._settle()
        return remaining

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> "RegionalProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
