"""Sink benchmark: unique incidents from Kafka into ClickHouse, decoding included, against a baseline.

One fresh topic (`bench.sink.incident.<run>`) is filled with n valid incidents in the
Confluent wire format (untimed), then read twice by each of two paths, alternately
(sink, baseline, sink, baseline: the machine is shared with the broker and ClickHouse, and
the best round of each path counts):

(i)  intelbus: the real `sinks.sink.Sink` (RowBuilder, ClickHouseWriter, batching, at most
     two inserts in flight, commits), as `run_sink` assembles it, reading only the bench
     topic with a fresh group. Its messages are shown to RowBuilder under the name
     `intel.incident.unique` (a thin view of the message; offsets and commits use the real
     topic), so the sink needs no change;
(ii) baseline: one plain loop, confluent Consumer (fresh group) -> RawDecoder (fastavro) ->
     `sinks.rows.event_rows` -> raw clickhouse_driver inserts of the same columns, in batches
     of the sink's size (INTELBUS_SINK_BATCH_ROWS, 50,000 rows), synchronously, no commits.

Both write `events` and `event_subjects` of a database of their own, `intelbus_bench`
(the project's migrations applied, both tables truncated before each round). The clock of
a round runs from the first message received (the group join before it is reported apart)
until the last row of the n events is inserted: rows/s = n / seconds. The topic, the
registry subject, the consumer groups and the database are removed at the end.
"""
from __future__ import annotations

import sys
import threading
import time
import uuid

from ops.secrets import clickhouse_url_as  # the benchmarks connect as the ClickHouse admin
from schemas.catalog import unique_topic

DATABASE = "intelbus_bench"
AS_TOPIC = unique_topic("incident")   # what the sink is told the bench topic is


class AsTopic:
    """A Kafka message that reports another topic name (for RowBuilder's topic -> kind lookup)."""

    __slots__ = ("_msg", "_topic")

    def __init__(self, msg, topic: str):
        self._msg, self._topic = msg, topic

    def topic(self):
        return self._topic

    def partition(self):
        return self._msg.partition()

    def offset(self):
        return self._msg.offset()

    def value(self):
        return self._msg.value()

    def key(self):
        return self._msg.key()

    def error(self):
        return self._msg.error()


def best_of(rounds: list[float]) -> float:
    """The shortest of the rounds' seconds (the least disturbed)."""
    return min(rounds)


def _log(message: str) -> None:
    print(f"[bench sink] {message}", file=sys.stderr, flush=True)


def _database_url(url: str, database: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url)._replace(path=f"/{database}").geturl()


# --- preparing ------------------------------------------------------------------------------

def _load_topic(settings, topic: str, n: int) -> dict:
    """Create the topic and fill it with n valid incidents; returns what the rounds check against."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from bench.bench_producer import incidents
    from schemas.catalog import parsed_schema
    from schemas.records import subjects_of, validate_record
    from schemas.wire import SchemaCodec, encode_with_id

    started = time.perf_counter()
    valid = [validate_record("incident", r) for r in incidents(n)]
    if len(valid) != n:
        raise RuntimeError(f"the simulator gave {len(valid)} incidents, {n} asked")
    subjects = sum(len(subjects_of("incident", v)) for v in valid)
    codec = SchemaCodec(url=settings.registry_url)
    schema_id = codec.register(topic)  # subject <topic>-value: schema_for_topic maps '.incident' to the incident schema
    parsed = parsed_schema("incident")
    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    for f in admin.create_topics([NewTopic(topic, num_partitions=settings.partitions, replication_factor=1)]).values():
        f.result(30)
    producer = Producer({**settings.kafka_config("intelbus-admin"), "acks": "all", "compression.type": "lz4", "linger.ms": 20,
                         "batch.size": 1_000_000, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576})
    failed = []
    for v in valid:
        value = encode_with_id(schema_id, parsed, v)
        key = f"{v['source_region']}/{v['source_system']}/{v['source_ref']}".encode()
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=lambda err, _m: err and failed.append(err))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0 or failed:
        raise RuntimeError(f"loading {topic}: {len(failed)} failed deliveries ({failed[:1]})")
    return {"subjects": subjects, "load_seconds": round(time.perf_counter() - started, 2), "codec": codec}


def _prepare_database(settings) -> str:
    from sinks.engine import DriverExecutor
    from sinks.migrate import apply_migrations

    url = _database_url(clickhouse_url_as(settings, "default"), DATABASE)
    executor = DriverExecutor(url, database=DATABASE)
    try:
        apply_migrations(executor)
    finally:
        executor.close()
    return url


def _truncate(client) -> None:
    for table in ("events", "event_subjects"):
        client.execute(f"TRUNCATE TABLE {DATABASE}.{table}")


def _stored(client) -> dict:
    """Row counts and a content checksum of what a round stored (without the per-round ingest times)."""
    events, digest = client.execute(
        f"SELECT count(), sum(cityHash64(event_id, kind, type, region, occurred_ms, title, raw, topic, partition, offset)) "
        f"FROM {DATABASE}.events")[0]
    subjects, sdigest = client.execute(
        f"SELECT count(), sum(cityHash64(id_value, id_kind, role, event_id, region, occurred_ms)) FROM {DATABASE}.event_subjects")[0]
    return {"events": events, "event_subjects": subjects, "digest": (digest, sdigest)}


# --- (i) the sink --------------------------------------------------------------------------

def _sink_round(settings, topic: str, group: str, url: str, n: int, subjects: int, timeout: float) -> dict:
    from confluent_kafka import Consumer

    from schemas.wire import RawDecoder
    from sinks.rows import COLUMNS
    from sinks.sink import ClickHouseWriter, RowBuilder, Sink, consumer_config

    state = {"first": None, "done": None, "dead_letters": []}
    lock = threading.Lock()
    inserted = {"events": 0, "event_subjects": 0}

    class CountingWriter(ClickHouseWriter):
        """The sink's writer, noting when the last of the expected rows is in."""

        def insert(self, table, rows):
            super().insert(table, rows)
            with lock:
                inserted[table] = inserted.get(table, 0) + len(rows)
                if state["done"] is None and inserted["events"] >= n and inserted["event_subjects"] >= subjects:
                    state["done"] = time.perf_counter()
                    sink.stop()

    builder = RowBuilder(RawDecoder.for_registry(settings.registry_url))

    def to_rows(msg):
        if state["first"] is None:
            state["first"] = time.perf_counter()
        return builder(AsTopic(msg, AS_TOPIC))

    consumer = Consumer({**consumer_config(settings), **settings.kafka_config("intelbus-admin"), "group.id": group})
    consumer.subscribe([topic])
    sink = Sink(settings, consumer=consumer, writer=CountingWriter(url, COLUMNS), to_rows=to_rows,
                dead_letter=lambda stage, source, reason, raw: state["dead_letters"].append((source, reason)))
    watchdog = threading.Timer(timeout, sink.stop)
    watchdog.daemon = True
    started = time.perf_counter()
    watchdog.start()
    try:
        sink.run(max_idle_seconds=30)
    finally:
        watchdog.cancel()
        sink.pool.shutdown(wait=True)
        consumer.close()
    if state["done"] is None:
        raise RuntimeError(f"sink round: {inserted} rows inserted of {n} events / {subjects} subjects "
                           f"(dead letters: {state['dead_letters'][:3]})")
    return {"seconds": state["done"] - state["first"], "join_seconds": state["first"] - started,
            "dead_letters": len(state["dead_letters"])}


# --- (ii) the baseline ---------------------------------------------------------------------

def _baseline_round(settings, topic: str, group: str, url: str, n: int, timeout: float) -> dict:
    from clickhouse_driver import Client
    from confluent_kafka import Consumer

    from schemas.wire import RawDecoder
    from sinks.rows import COLUMNS, event_rows
    from sinks.sink import consumer_config

    batch_rows = settings.sink_batch_rows
    client = Client.from_url(url)
    decode = RawDecoder.for_registry(settings.registry_url)
    consumer = Consumer({**consumer_config(settings), **settings.kafka_config("intelbus-admin"), "group.id": group})
    consumer.subscribe([topic])
    event_sql = f"INSERT INTO events ({', '.join(COLUMNS['events'])}) VALUES"
    subject_sql = f"INSERT INTO event_subjects ({', '.join(COLUMNS['event_subjects'])}) VALUES"
    events: list[tuple] = []
    subjects: list[tuple] = []

    def flush():
        if events:
            client.execute(event_sql, events)
        if subjects:
            client.execute(subject_sql, subjects)
        events.clear()
        subjects.clear()

    started = time.perf_counter()
    first = None
    consumed = 0
    try:
        while consumed < n:
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"baseline round: {consumed} of {n} messages after {timeout:.0f} s")
            messages = consumer.consume(1000, 1.0)
            if not messages:
                continue
            if first is None:
                first = time.perf_counter()
            for msg in messages:
                if msg.error():
                    continue
                event, subject_rows = event_rows("incident", decode(msg.value()), topic=AS_TOPIC, partition=msg.partition(),
                                                 offset=msg.offset(), ingested_ms=int(time.time() * 1000))
                events.append(event)
                subjects.extend(subject_rows)
                consumed += 1
            if len(events) + len(subjects) >= batch_rows:
                flush()
        flush()
        done = time.perf_counter()
    finally:
        consumer.close()
        client.disconnect()
    return {"seconds": done - first, "join_seconds": first - started}


# --- the benchmark -------------------------------------------------------------------------

def run(settings, n: int) -> dict:
    from clickhouse_driver import Client
    from confluent_kafka.admin import AdminClient

    from schemas.catalog import subject

    run_id = uuid.uuid4().hex[:8]
    topic = f"bench.sink.incident.{run_id}"
    groups: list[str] = []
    codec = None
    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    client = Client.from_url(_database_url(clickhouse_url_as(settings, "default"), "default"))
    timeout = max(120.0, n / 500)
    rounds: dict[str, list[dict]] = {"sink": [], "baseline": []}
    stored: dict[str, list[dict]] = {"sink": [], "baseline": []}
    try:
        _log(f"loading {n:,} incidents into {topic}")
        loaded = _load_topic(settings, topic, n)
        codec = loaded.pop("codec")
        url = _prepare_database(settings)
        _log(f"loaded in {loaded['load_seconds']} s ({loaded['subjects']:,} subjects); database {DATABASE} ready")
        for i in range(2):
            for path in ("sink", "baseline"):
                _truncate(client)
                group = f"bench-sink-{run_id}-{path}-{i}"
                groups.append(group)
                if path == "sink":
                    result = _sink_round(settings, topic, group, url, n, loaded["subjects"], timeout)
                else:
                    result = _baseline_round(settings, topic, group, url, n, timeout)
                got = _stored(client)
                if got["events"] != n or got["event_subjects"] != loaded["subjects"]:
                    raise RuntimeError(f"{path} round {i + 1} stored {got['events']} events and {got['event_subjects']} "
                                       f"subjects; expected {n} and {loaded['subjects']}")
                rounds[path].append(result)
                stored[path].append(got)
                _log(f"round {i + 1} {path}: {n / result['seconds']:,.0f} rows/s ({result['seconds']:.2f} s, "
                     f"group join {result['join_seconds']:.1f} s)")
    finally:
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            try:
                future.result(30)
            except Exception:
                pass
        if groups:
            try:
                for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
                    future.result(30)
            except Exception:
                pass
        if codec is not None:
            for permanent in (False, True):
                try:
                    codec.registry.delete_subject(subject(topic), permanent=permanent)
                except Exception:
                    pass
        client.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        client.disconnect()
    sink_s = best_of([r["seconds"] for r in rounds["sink"]])
    base_s = best_of([r["seconds"] for r in rounds["baseline"]])
    digests = {g["digest"] for g in stored["sink"] + stored["baseline"]}
    return {"events": n, "event_subjects": loaded["subjects"], "batch_rows": settings.sink_batch_rows,
            "sink_rows_per_s": round(n / sink_s, 1), "baseline_rows_per_s": round(n / base_s, 1),
            "ratio": round(base_s / sink_s, 3), "sink_seconds": round(sink_s, 3), "baseline_seconds": round(base_s, 3),
            "rounds_seconds": {p: [round(r["seconds"], 3) for r in rs] for p, rs in rounds.items()},
            "rounds_rows_per_s": {p: [round(n / r["seconds"]) for r in rs] for p, rs in rounds.items()},
            "group_join_seconds": {p: [round(r["join_seconds"], 2) for r in rs] for p, rs in rounds.items()},
            "sink_dead_letters": sum(r["dead_letters"] for r in rounds["sink"]),
            "same_rows_stored": len(digests) == 1, "load_seconds": loaded["load_seconds"]}


if __name__ == "__main__":  # python -m bench.bench_sink N
    import json

    from ops.settings import load_settings

    print(json.dumps(run(load_settings(), int(sys.argv[1]) if len(sys.argv) > 1 else 20_000), indent=2))
