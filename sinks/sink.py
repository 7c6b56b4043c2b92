"""`intelbus sink`: the unique event topics, intel.hit and intel.dlq into ClickHouse.

    consume ─▶ decode ─▶ rows per table ─▶ batch (N rows or T s) ─▶ insert (≤ 2 in flight) ─▶ commit

Offsets are committed only after the rows of a batch are in ClickHouse. A crash between
insert and commit re-delivers the batch; the tables are ReplacingMergeTree keyed on
event_id / hit_id / dlq_id and the queries read the latest row, so nothing is counted
twice. When ClickHouse is unreachable the sink pauses its partitions, retries with
backoff and keeps its place; a row ClickHouse refuses goes to intel.dlq with the reason
and the rest of the batch goes on.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from schemas import catalog
from schemas.dead_letters import dead_letter_record
from schemas.wire import RegistryUnavailable
from sinks import metrics
from sinks.batching import Backoff, Batch, FlushPolicy, RowRejected, bisect_rejects

log = logging.getLogger("intelbus.sink")

EVENT_TOPICS = {catalog.unique_topic(k): k for k in catalog.KINDS}
HIT_TOPIC, DLQ_TOPIC, DUPLICATES_TOPIC = catalog.HIT_TOPIC, catalog.DLQ_TOPIC, catalog.DUPLICATES_TOPIC
WORKFLOW_TOPIC = catalog.WORKFLOW_TOPIC  # the workflow transitions (issue 16) -> workflow_events
TOPICS = (*EVENT_TOPICS, HIT_TOPIC, DLQ_TOPIC, DUPLICATES_TOPIC, WORKFLOW_TOPIC)
GROUP = "intelbus-sink"
SINK_PRINCIPAL = "intelbus-sink"  # its Kafka principal (ops/acls.yaml: role sink)
MAX_IN_FLIGHT = 2


class ClickHouseWriter:
    """Columnar inserts through clickhouse-driver; separates refused data from outages."""

    def __init__(self, url: str, columns: dict[str, tuple[str, ...]]):
        from clickhouse_driver import Client

        self._client_factory = lambda: Client.from_url(url)
        self._local = threading.local()
        self.columns = columns

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._client_factory()
        return client

    def insert(self, table: str, rows: list[tuple]) -> None:
        from clickhouse_driver.errors import Error as DriverError, ServerException

        cols = self.columns[table]
        started = time.perf_counter()
        try:
            self._client().execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES", rows)
        except (ServerException,) as exc:
            if _is_data_error(exc):
                raise RowRejected(_short(exc)) from None
            self._reset()
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # the driver refuses a value client-side
            raise RowRejected(f"{type(exc).__name__}: {exc}") from None
        except (DriverError, OSError, EOFError):
            self._reset()
            raise
        metrics.INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        metrics.ROWS.labels(table).inc(len(rows))

    def _reset(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass
        self._local.client = None


# ClickHouse error codes that mean "this data", not "this server": type mismatch, cannot
# parse, value out of range, too large string, and similar.
_DATA_ERROR_CODES = {6, 27, 32, 38, 41, 53, 69, 70, 72, 131, 321, 344}


def _is_data_error(exc) -> bool:
    return getattr(exc, "code", None) in _DATA_ERROR_CODES


def _short(exc) -> str:
    text = str(exc).strip().splitlines()[0]
    return text[:500]


class Sink:
    def __init__(self, settings, *, consumer=None, writer=None, to_rows=None, dead_letter=None,
                 policy: FlushPolicy | None = None, backoff: Backoff | None = None):
        self.settings = settings
        self.policy = policy or FlushPolicy(settings.sink_batch_rows, settings.sink_batch_seconds)
        self.backoff = backoff or Backoff()
        self.consumer = consumer
        self.writer = writer
        self.to_rows = to_rows          # message -> [(table, row)]; raises ValueError(reason) for bad input
        self.dead_letter = dead_letter  # (stage, source, reason, raw) -> None
        self.pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="ch-insert")
        self.in_flight: deque[tuple[Batch, Future]] = deque()
        self.stopping = False

    # --- the loop ------------------------------------------------------------------------
    def run(self, *, max_idle_seconds: float | None = None) -> None:
        batch = Batch()
        idle_since = time.monotonic()
        while not self.stopping:
            messages = self.consumer.consume(num_messages=10_000, timeout=0.1)
            for msg in messages:
                if msg.error():
                    log.warning("consumer error: %s", msg.error())
                    continue
                self._add(batch, msg)
            if messages:
                idle_since = time.monotonic()
            elif max_idle_seconds is not None and time.monotonic() - idle_since > max_idle_seconds and batch.messages == 0 and not self.in_flight:
                break
            if batch.due(self.policy):
                self._submit(batch)
                batch = Batch()
            self._reap(block=False)
        if batch.messages:
            self._submit(batch)
        while self.in_flight:
            self._reap(block=True)

    def _add(self, batch: Batch, msg) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        try:
            for table, row in self._rows_of(msg):
                batch.add(table, row)
        except ValueError as exc:
            self.dead_letter("SINK", f"{topic}/{partition}/{offset}", f"cannot store: {exc}", msg.value() or b"")
        batch.advance(topic, partition, offset)
        metrics.MESSAGES.labels(topic).inc()

    def _rows_of(self, msg) -> list:
        """The message's rows; while the schema registry does not answer (a schema id not cached
        yet), asked again with the ClickHouse outages' backoff, keeping our place: the record is
        not the one at fault, so it is not dead-lettered."""
        attempt = 0
        while True:
            try:
                return list(self.to_rows(msg))
            except RegistryUnavailable as exc:
                attempt += 1
                if self.stopping:
                    raise
                delay = self.backoff.delay(attempt)
                log.warning("%s/%d/%d: %s; retry %d in %.1fs, keeping our place", msg.topic(), msg.partition(),
                            msg.offset(), exc, attempt, delay)
                time.sleep(delay)

    def _submit(self, batch: Batch) -> None:
        while len(self.in_flight) >= MAX_IN_FLIGHT:
            self._reap(block=True)
        metrics.BATCH_ROWS.observe(batch.row_count)
        self.in_flight.append((batch, self.pool.submit(self._write, batch)))

    def _write(self, batch: Batch) -> None:
        """Insert every table of the batch, retrying outages until it succeeds (or we stop)."""
        for table, rows in batch.rows.items():
            attempt = 0
            while True:
                try:
                    _, refused = bisect_rejects(rows, lambda r, t=table: self.writer.insert(t, r))
                    for row, reason in refused:
                        metrics.REFUSED.labels(table).inc()
                        self.dead_letter("SINK", f"clickhouse:{table}", f"ClickHouse refused the row: {reason}", repr(row).encode())
                    break
                except Exception as exc:
                    attempt += 1
                    delay = self.backoff.delay(attempt)
                    metrics.CLICKHOUSE_ERRORS.inc()
                    metrics.CLICKHOUSE_UP.set(0)
                    log.warning("ClickHouse insert into %s failed (%s); retry %d in %.1fs, keeping our place",
                                table, _short(exc), attempt, delay)
                    if self.stopping and attempt > 3:
                        raise
                    time.sleep(delay)
            metrics.CLICKHOUSE_UP.set(1)

    def _reap(self, *, block: bool) -> None:
        """Commit, in order, the offsets of batches whose inserts finished."""
        while self.in_flight:
            batch, future = self.in_flight[0]
            if not future.done():
                if not block:
                    return
                # Waiting on ClickHouse (perhaps for long): librdkafka's own thread keeps the
                # group membership alive, and max.poll.interval.ms is an hour (see consumer_config).
                while not future.done():
                    future_wait(future, 0.2)
            self.in_flight.popleft()
            future.result()  # a failure here is a stop request after retries: nothing is committed
            self._commit(batch)
            block = False

    def _commit(self, batch: Batch) -> None:
        from confluent_kafka import TopicPartition

        if self.settings.sink_fault == "exit-before-commit" and batch.row_count:  # tests only
            # Fault injection for the tests: die like a killed process, with the batch's rows
            # in ClickHouse and its offsets not committed.
            log.critical("INTELBUS_SINK_FAULT=exit-before-commit: exiting after inserting %d rows, before the commit",
                         batch.row_count)
            logging.shutdown()
            os._exit(70)

        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        if offsets:
            commit_with_retries(self.consumer, offsets, self.backoff, stopping=lambda: self.stopping)
        metrics.LAG_SECONDS.set(max(0.0, time.monotonic() - batch.started))

    def stop(self, *_args) -> None:
        self.stopping = True


COMMIT_ATTEMPTS = 8  # with the backoff: a minute or so of a broker (the coordinator) away


def commit_with_retries(consumer, offsets, backoff, *, stopping=lambda: False, sleep=time.sleep) -> None:
    """Commit synchronously; a retriable error (the group coordinator's broker killed: REQUEST_TIMED_OUT,
    NOT_COORDINATOR, ...) is tried again with the backoff instead of ending the sink (it did, in the cluster
    profile's broker SIGKILL test: the supervisor brought it back in 14 s). Anything else (the partitions
    were taken away: ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID), or retries run out, is raised: the sink restarts
    from its committed offsets and ClickHouse's replacing tables fold the replayed rows."""
    from confluent_kafka import KafkaException

    attempt = 0
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            attempt += 1
            if not (hasattr(err, "retriable") and err.retriable()) or attempt >= COMMIT_ATTEMPTS or stopping():
                raise
            delay = backoff.delay(attempt)
            log.warning("commit of %d partitions failed (%s); retry %d in %.1fs", len(offsets), err, attempt, delay)
            sleep(delay)


def future_wait(future: Future, timeout: float) -> None:
    try:
        future.exception(timeout=timeout)
    except Exception:
        pass


def consumer_config(settings) -> dict:
    return {
        **settings.kafka_config(SINK_PRINCIPAL),
        "group.id": GROUP,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # While ClickHouse is down the loop waits on its inserts without polling; an hour
        # keeps the group from evicting us (librdkafka's thread keeps the heartbeats going).
        "max.poll.interval.ms": 3_600_000,
        # A crashed sink's partitions are released after this long, so the restarted one (the
        # supervisor's, 1 s later) is assigned in about 10 s rather than librdkafka's 45 s.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.max.bytes": 52_428_800,
        "queued.max.messages.kbytes": 262_144,
        "fetch.min.bytes": settings.sink_fetch_min_bytes,
        "fetch.wait.max.ms": settings.sink_fetch_max_wait_ms,
    }


class RowBuilder:
    """A Kafka message of any sink topic -> [(table, row)]."""

    def __init__(self, decode):
        self.decode = decode

    def __call__(self, msg) -> list[tuple[str, tuple]]:
        import json as _json

        from sinks import rows

        topic, value = msg.topic(), msg.value()
        now_ms = int(time.time() * 1000)
        if value is None:
            raise ValueError("message has no value")
        if topic == DUPLICATES_TOPIC:
            return [("duplicates", rows.duplicate_row(_json.loads(value), now_ms))]
        record = self.decode(value)
        if topic in EVENT_TOPICS:
            event, subjects = rows.event_rows(EVENT_TOPICS[topic], record, topic=topic, partition=msg.partition(),
                                              offset=msg.offset(), ingested_ms=now_ms)
            return [("events", event), *(("event_subjects", s) for s in subjects)]
        if topic == HIT_TOPIC:
            return [("hits", rows.hit_row(record, now_ms))]
        if topic == WORKFLOW_TOPIC:
            return [("workflow_events", rows.workflow_row(record, topic=topic, partition=msg.partition(),
                                                          offset=msg.offset(), ingested_ms=now_ms))]
        if topic == DLQ_TOPIC:
            out = [("dead_letters", rows.dead_letter_row(record, now_ms))]
            if record["stage"] == "VERIFY":  # a record refused for its proof of publisher is an audit event too
                out.append(("audit_log", rows.refused_record_audit_row(record, now_ms)))
            elif record["stage"] == "WORKFLOW":  # a person's command the workflow job refused, likewise
                out.append(("audit_log", rows.refused_workflow_audit_row(record, now_ms)))
            return out
        raise ValueError(f"the sink does not read {topic}")


def run_sink(settings, *, max_idle_seconds: float | None = None, log_level: str = "info") -> int:
    from confluent_kafka import Consumer, Producer
    from prometheus_client import start_http_server

    from schemas.wire import RawDecoder, SchemaCodec
    from sinks.engine import DriverExecutor
    from sinks.migrate import apply_migrations
    from sinks.rows import COLUMNS

    from ops.secrets import clickhouse_url_as, redact_url

    url = clickhouse_url_as(settings, "intelbus_sink")
    executor = DriverExecutor(url)
    apply_migrations(executor, log=log.info, cluster=settings.clickhouse_cluster)  # Replicated + Distributed on a cluster
    executor.close()
    codec = SchemaCodec(url=settings.registry_url)
    dlq_producer = Producer({**settings.kafka_config(SINK_PRINCIPAL), "acks": "all", "enable.idempotence": True})

    def dead_letter(stage, source, reason, raw):
        record = dead_letter_record(stage, source, reason, raw, source_system=SINK_PRINCIPAL)
        dlq_producer.produce(DLQ_TOPIC, codec.encode(DLQ_TOPIC, record))
        dlq_producer.poll(0)
        metrics.DLQ.labels(stage).inc()
        log.warning("dead letter from %s: %s", source, reason)

    consumer = Consumer(consumer_config(settings))
    from ops.retention import check_group_in_background

    def on_assign(c, parts):
        # before anything new is committed: what retention deleted before the sink read it is counted
        # and alerted (ops/retention.py, on a thread of its own: the poll does not wait for it); the
        # consumer then goes on from the first offset left
        check_group_in_background(settings.kafka_config(SINK_PRINCIPAL), GROUP, [(p.topic, p.partition) for p in parts])
        metrics.READY.set(1)

    consumer.subscribe(list(TOPICS), on_assign=on_assign)
    writer = ClickHouseWriter(url, COLUMNS)
    sink = Sink(settings, consumer=consumer, writer=writer, to_rows=RowBuilder(RawDecoder.for_registry(settings.registry_url)),
                dead_letter=dead_letter)
    signal.signal(signal.SIGTERM, sink.stop)
    signal.signal(signal.SIGINT, sink.stop)
    start_http_server(settings.metrics_port_base + 20, addr=settings.metrics_bind)
    from ops.metrics import tune_gc, watch_gc

    watch_gc()
    tune_gc(settings.gc_gen0)
    from ops.lag import SINK_TOPICS
    from ops.lag_metrics import LagExporter

    LagExporter(settings, GROUP, SINK_TOPICS, user=SINK_PRINCIPAL).start()
    log.info("sink: kafka=%s clickhouse=%s topics=%s batch=%d rows/%.1fs, at most %d inserts in flight, metrics=:%d",
             settings.kafka, redact_url(url), ",".join(TOPICS), sink.policy.max_rows, sink.policy.max_seconds,
             MAX_IN_FLIGHT, settings.metrics_port_base + 20)
    try:
        sink.run(max_idle_seconds=max_idle_seconds)
    finally:
        consumer.close()
        dlq_producer.flush(10)
    return 0


def add_sink(p):
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds without messages (for batch loads and benchmarks)")
    p.epilog = ("Reads intel.{alert,wanted,incident}.unique, intel.hit, intel.dlq, intel.duplicates and intel.workflow\n"
                "(group intelbus-sink)\n"
                "and writes ClickHouse in batches of INTELBUS_SINK_BATCH_ROWS rows or INTELBUS_SINK_BATCH_SECONDS s.\n"
                "Offsets are committed after the rows are stored; SIGTERM finishes the inserts in flight.")

    def run(args):
        from ops.settings import load_settings

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for quiet in ("httpx", "httpx2", "httpcore", "clickhouse_driver"):
            logging.getLogger(quiet).setLevel(logging.WARNING)
        return run_sink(load_settings(), max_idle_seconds=args.exit_when_idle, log_level=args.log_level)

    return run
