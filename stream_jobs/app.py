"""The faust worker: three agents, each running one stage over batches.

faust owns what it is good at: the consumer group, partition assignment (every topic has
the same partition count, so a worker gets partition p of every topic and of every
table's changelog), offset commits and table recovery. The per-event hot path is ours:
a batch (a fetch's records of the stage's topics with the default batch loop, or from
`take_events` with INTELBUS_JOBS_CONSUMER_LOOP=faust) goes through a stage, its outputs
and state writes are produced with one librdkafka producer, and the batch is acknowledged
only after every message of it was delivered (at-least-once; the stages make a replay a
no-op).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import faust
from confluent_kafka import KafkaException, Producer

from ops.kafka_auth import JOBS, faust_credentials
from ops.settings import Settings
from schemas.catalog import DLQ_TOPIC, HIT_TOPIC, INPUT_TOPICS
from stream_jobs import metrics
from stream_jobs.lookback import EmittedHits, Lookback, LookbackRestorer, read_hit_copies_since, read_since
from stream_jobs.stages import (
    CANDIDATE_TOPIC, DedupeStage, DeadLetter, HitStage, Incoming, MatchStage, MATCH_TOPIC, StageResult,
)
from stream_jobs.tables import FaustTableState
from stream_jobs.watchdog import CommitWatchdog, PartitionView, SeeksNotEnding, StuckNotReady

log = logging.getLogger("intelbus.jobs")

APP_ID = "intelbus-jobs"  # faust's group and table prefix; also the jobs' Kafka principal
CONSUMER_LOOPS = ("batch", "faust")  # the first is the default


def consumer_loop_named(name: str | None) -> str:
    """The consumer loop INTELBUS_JOBS_CONSUMER_LOOP (Settings.jobs_consumer_loop) names: `batch` when empty."""
    loop = name or CONSUMER_LOOPS[0]
    if loop not in CONSUMER_LOOPS:
        raise ValueError(f"INTELBUS_JOBS_CONSUMER_LOOP={loop!r}: one of {', '.join(CONSUMER_LOOPS)} "
                         f"(default {CONSUMER_LOOPS[0]})")
    return loop


def consumer_loop_from(environ) -> str:
    """The consumer loop an environment asks for (what a worker started with it runs)."""
    return consumer_loop_named(environ.get("INTELBUS_JOBS_CONSUMER_LOOP"))


def rocksdb_available() -> bool:
    try:
        import rocksdict  # noqa: F401
    except ImportError:
        return False
    return True


class DeliveryWaiter:
    """Batches wait here for librdkafka's delivery reports without blocking the event loop.

    One task serves the reports (`poll(0)` on the loop's thread) every millisecond while
    any batch waits, and wakes each batch when its count reaches zero. Meanwhile faust's
    consumer fills the stream buffers (so the next batch is larger) and the other stages
    run. A blocking flush held the loop for each batch's acknowledgement round trip (5-10
    ms, three stages a batch); reports served from another thread had to win the GIL back
    from the loop (50-70 ms a batch, measured); a polling loop per waiting batch woke the
    loop up to three times a millisecond.
    """

    def __init__(self, producer: Producer, interval: float = 0.001):
        self.producer = producer
        self.interval = interval
        self._waiting: list[tuple[list[int], asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def wait(self, outstanding: list[int], timeout: float) -> int:
        self.producer.poll(0)
        if outstanding[0] <= 0:
            return 0
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._waiting.append((outstanding, done))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve())
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            self._waiting = [w for w in self._waiting if w[1] is not done]
        return max(0, outstanding[0])

    async def _serve(self) -> None:
        poll, sleep = self.producer.poll, asyncio.sleep
        while self._waiting:
            await sleep(self.interval)
            poll(0)
            still = []
            for outstanding, done in self._waiting:
                if outstanding[0] <= 0:
                    if not done.done():
                        done.set_result(None)
                elif not done.done():
                    still.append((outstanding, done))
            self._waiting = still


class Delivery(NamedTuple):
    """A batch processed, its outputs handed to the producer (and its state writes, or they wait for the outputs)."""
    state: FaustTableState
    batch_size: int
    result: StageResult
    writes: dict
    outstanding: list  # [messages handed to the producer and not yet reported]
    errors: list
    offsets: dict | None  # changelog partition -> last offset delivered; None: the writes are not produced yet
    started: float
    processed: float
    produced: float
    previous: object  # the runner's batch started before this one: its state goes first (a future, or None)
    done: object  # set once this batch's state is written (a future)


class BatchRunner:
    """Runs one stage over a batch and makes its effects durable.

    With `state_after_outputs` (every stage; False is the behaviour before 2026-11-30), a
    batch's outputs and dead letters are produced first and its state writes (the table's
    changelog) only once every output was delivered. A crash can then never leave the state
    saying "done" for an output that is not in Kafka: the replay finds the state as it was
    before the batch and produces the outputs again. Produced together, the state write of a
    batch could be delivered and its output not when they went to different brokers: in the
    cluster profile's chaos test a CASE_LINK candidate, then a WATCH_MATCH and a CASE_LINK hit,
    were lost that way after SIGKILLs. The price is the window between an output's delivery
    and its state write's: a crash there sends the output again, which the dedupe and match
    stages' readers absorb (the unique topics' readers keep an event id once, the matcher
    ignores what it has, the hit stage drops hit ids it has seen), and which the hit stage
    avoids by reading back what is already on `intel.hit` (`stream_jobs.lookback.EmittedHits`).

    `run` does it all before returning. The batch loop splits it: `start` processes the batch
    and hands its outputs to the producer (the state writes stay readable by the stage's next
    batch, `drain(hold=True)`), `finish` waits for them, produces the state writes, waits for
    those and writes the state's store. The loop starts batch n+1 before it finishes batch n, and finishes and
    acknowledges the batches in order: a hit need not wait for the batch before it to be
    delivered. If a batch is not delivered the worker exits, and reading it (and the next)
    again is a replay, as after any crash."""

    def __init__(self, producer: Producer, encode_dead_letter, *, name: str, waiter: DeliveryWaiter | None = None,
                 state_after_outputs: bool = True):
        self.producer = producer
        self.encode_dead_letter = encode_dead_letter
        self.name = name
        self.waiter = waiter or DeliveryWaiter(producer)
        self.state_after_outputs = state_after_outputs
        # Batches write their state in the order they started, whatever order their outputs'
        # deliveries complete in: a later batch's value of a key must be the one the changelog
        # and the store end with (a fetch larger than the batch size is started in parts while
        # the previous batch still finishes).
        self._last_done = None

    async def run(self, stage, state: FaustTableState, batch: list[Incoming]) -> StageResult:
        return await self.finish(self.start(stage, state, batch, hold=False))

    def start(self, stage, state: FaustTableState, batch: list[Incoming], *, hold: bool = True) -> Delivery:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        result = stage.process(batch, now_ms)
        processed = time.perf_counter()
        errors: list[str] = []
        outstanding = [0]  # this batch's messages not yet reported by librdkafka

        def delivered(err, msg):
            outstanding[0] -= 1
            if err is not None:
                errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

        produce = self._produce
        for out in result.outputs:
            produce(out.topic, out.value, out.key, out.partition, delivered)
        for dl in result.dead_letters:
            produce(DLQ_TOPIC, self.encode_dead_letter(dl), (dl.source_region or "").encode() or None, None, delivered)
        outstanding[0] += len(result.outputs) + len(result.dead_letters)
        writes = state.drain(hold=hold)
        offsets = None
        if not self.state_after_outputs:  # the behaviour before 2026-11-30: together with the outputs
            offsets = {}
            self._produce_writes(state, writes, outstanding, errors, offsets)
        previous, done = self._last_done, asyncio.get_running_loop().create_future()
        self._last_done = done
        return Delivery(state, len(batch), result, writes, outstanding, errors, offsets, started, processed,
                        time.perf_counter(), previous, done)

    def _produce_writes(self, state, writes: dict, outstanding: list, errors: list, offsets: dict) -> None:
        """Produce the state writes to the table's changelog, counted in `outstanding`."""
        def changelog_delivered(err, msg):
            outstanding[0] -= 1
            if err is not None:
                errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            else:
                p = msg.partition()
                offsets[p] = max(offsets.get(p, -1), msg.offset())

        changelog = state.changelog_topic
        produce = self._produce
        for partition, items in writes.items():
            for key, value in items.items():
                produce(changelog, value, key, partition, changelog_delivered)
        outstanding[0] += sum(map(len, writes.values()))

    async def finish(self, d: Delivery) -> StageResult:
        try:
            return await self._finish(d)
        finally:
            if not d.done.done():
                d.done.set_result(None)

    async def _finish(self, d: Delivery) -> StageResult:
        waited = time.perf_counter()
        remaining = await self._delivered(d.outstanding)
        if remaining or d.errors:
            # Nothing of this batch is acknowledged (nor written to the state, if the writes
            # wait for the outputs): the worker stops and the batch is read again after restart.
            raise KafkaException(f"{self.name}: {remaining} undelivered, errors: {d.errors[:3]}")
        if d.previous is not None and not d.previous.done():
            await asyncio.wait((d.previous,))  # the batch started before writes its state first
        outputs_at = time.perf_counter()
        offsets = d.offsets
        if offsets is None:  # the state writes, now that every output is in Kafka
            offsets, errors, outstanding = {}, [], [0]
            self._produce_writes(d.state, d.writes, outstanding, errors, offsets)
            remaining = await self._delivered(outstanding)
            if remaining or errors:
                raise KafkaException(f"{self.name}: {remaining} state writes undelivered, errors: {errors[:3]}")
        delivered_at = time.perf_counter()
        d.state.apply(d.writes, offsets)
        done = time.perf_counter()
        # deliver: the waits for the reports once the loop asked for them (the next batch may
        # have been processed in between: that time is not counted twice)
        metrics.observe_phases(self.name, process=d.processed - d.started, produce=d.produced - d.processed,
                               deliver=outputs_at - waited, deliver_state=delivered_at - outputs_at,
                               apply=done - delivered_at)
        metrics.observe_batch(self.name, d.batch_size, done - d.started, d.result)
        return d.result

    async def _delivered(self, outstanding: list[int], timeout: float = 60.0) -> int:
        """Wait until this batch's messages are reported; how many were not, after `timeout`."""
        return await self.waiter.wait(outstanding, timeout)

    def _produce(self, topic, value, key, partition, callback):
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value=value, key=key, on_delivery=callback)
                else:
                    self.producer.produce(topic, value=value, key=key, partition=partition, on_delivery=callback)
                return
            except BufferError:  # local queue full: let librdkafka deliver some, then retry
                self.producer.poll(0.05)


def make_producer(settings: Settings) -> Producer:
    return Producer({
        **settings.kafka_config(JOBS),
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": 2,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        # Java-compatible partitioning of keyed messages (intel.hit is keyed by province).
        "partitioner": "murmur2_random",
    })


def create_app(settings: Settings, *, worker_index: int = 0, batch_size: int = 2000, batch_within: float = 0.02):
    """The faust app with its tables and agents wired to the three stages.

    Built in named steps: faust's app (`build_faust_app`), the stages over its tables
    (`build_stages`), the agents or the batch loop that feed them (`wire_stages`), and the
    worker's housekeeping: the producer's callbacks, the commit watchdog, the loop-lag
    metric and readiness (`add_housekeeping`)."""
    from schemas.regions import load_regions
    from schemas.wire import SchemaCodec
    from stream_jobs import faust_patches

    # INTELBUS_JOBS_CONSUMER_LOOP (stream_jobs/faust_patches.py, docs/architecture.md):
    # batch (default): each stage gets a fetch's records of its topics as one batch, acknowledged
    # in bulk; faust: faust's own loop, a stage's batch from `take_events` (the fallback).
    consumer_loop = consumer_loop_named(settings.jobs_consumer_loop)
    faust_patches.guard_commits(on_hole=_report_commit_hold, on_gap=_report_gap_left_open)
    if settings.jobs_fetch_min_bytes > 1:  # else faust's own fetch: answered as soon as a message is there
        faust_patches.install_fetch_wait(settings.jobs_fetch_min_bytes, settings.jobs_fetch_max_wait_ms)
    regions = load_regions()
    app = build_faust_app(settings, worker_index)
    codec = SchemaCodec(url=settings.registry_url)
    producer = make_producer(settings)
    stages = build_stages(app, settings, codec, regions)
    wire_stages(app, stages, producer, codec, consumer_loop=consumer_loop, batch_size=batch_size,
                batch_within=batch_within, depth=settings.jobs_batch_depth)
    add_housekeeping(app, settings, producer, worker_index)
    app.intelbus_producer = producer
    app.intelbus_consumer_loop = consumer_loop
    return app


def count_retention_losses(app, kafka_config: dict, group: str) -> None:
    """On each assignment, before anything new is committed: the ranges retention deleted before the
    group read them (an outage longer than a topic's retention) are counted, logged and alerted
    (ops/retention.py); faust then goes on from the first offset left (auto.offset.reset). On a
    thread of its own: the assignment does not wait for it (awaited, it held a worker up for as
    long as a restarting broker took to answer)."""
    from ops.retention import check_group_in_background

    @app.on_partitions_assigned.connect
    async def _count_retention_losses(sender, assigned, **kwargs):
        check_group_in_background(kafka_config, group, [(tp.topic, tp.partition) for tp in assigned])


def build_faust_app(settings: Settings, worker_index: int) -> faust.App:
    """faust's app: the group, its consumer and producer settings, RocksDB stores under the worker's directory."""
    datadir = Path(settings.stack_dir) / "jobs" / f"worker-{worker_index}"
    datadir.mkdir(parents=True, exist_ok=True)
    replication = 3 if settings.profile == "production" else 1
    return faust.App(
        APP_ID,
        broker=[f"kafka://{h}" for h in settings.kafka.split(",")],
        broker_credentials=faust_credentials(settings, JOBS),  # SASL/SCRAM as intelbus-jobs (ops/acls.yaml)
        store="rocksdb://" if rocksdb_available() else "memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=replication,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=65536,
        stream_wait_empty=False,
        broker_max_poll_records=5000,
        consumer_max_fetch_size=8 * 1024 * 1024,
        broker_commit_every=10000,
        broker_commit_interval=1.0,
        producer_linger=0.01,
        producer_max_batch_size=1024 * 1024,
        # a killed worker's partitions move after this long (FAUST-NOTES: joins take about half of it)
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        table_standby_replicas=0,
    )


class StageWiring(NamedTuple):
    """One stage and what feeds it: its name, faust topic, table state and the hook run before each batch."""
    name: str
    topic: object
    stage: object
    state: FaustTableState
    before: object = None


def make_stages(settings: Settings, codec, regions, records, index,
                hits_seen) -> tuple[DedupeStage, MatchStage, HitStage]:
    """The three stages with the worker's settings over the states given (records, index, hits-seen):
    the app's tables (`build_stages`), or memory (bench/bench_stages.py)."""
    from schemas.normalise import normalise_identifier
    from schemas.wire import RawDecoder

    decode = RawDecoder.for_registry(settings.registry_url)
    verifier = None
    if settings.verify_records:
        from identity.keys import keys_path
        from stream_jobs.proof import KeyringSource, make_verifier

        verifier = make_verifier(KeyringSource(keys_path(settings)), regions.is_within)
    else:
        log.warning("INTELBUS_VERIFY_RECORDS=0: records are NOT checked for their proof of publisher")
    dedupe = DedupeStage(decode=decode, normalise=normalise_identifier, state=records,
                         partitions=settings.partitions, window_ms=settings.dedupe_window_days * 86_400_000,
                         verify=verifier)
    # 2 minutes by default: the skew between input topics is seconds, a partition the watchdog
    # repairs is read about 35 s late; each assignment reads this much of a partition's requests back.
    lookback = Lookback(seconds=settings.jobs_lookback_s)
    match = MatchStage(state=index, partitions=settings.partitions, is_within=regions.is_within,
                       case_window_ms=settings.case_link_window_days * 86_400_000, decode=decode, lookback=lookback,
                       **border_duplicate_settings(settings))
    hits = HitStage(state=hits_seen, encode_hit=lambda h: codec.encode(HIT_TOPIC, hit_record(h)),
                    provinces_of=lambda notify: provinces_of(notify, regions))
    return dedupe, match, hits


def build_stages(app, settings: Settings, codec, regions) -> list[StageWiring]:
    """The three stages over the app's tables, each with the topic it reads (dedupe, match, hits)."""
    records, index, hits_seen = (FaustTableState(_raw_table(app, name, settings.partitions))
                                 for name in ("records", "index", "hits-seen"))
    dedupe, match, hits = make_stages(settings, codec, regions, records, index, hits_seen)
    kafka_config = settings.kafka_config(JOBS)
    restorer = LookbackRestorer(match.lookback,
                                lambda stops, since_ms: read_since(kafka_config, MATCH_TOPIC, stops, since_ms),
                                topic=MATCH_TOPIC)

    @app.on_partitions_assigned.connect
    async def _match_partitions_assigned(sender, assigned, **kwargs):
        restorer.on_assigned(tp.partition for tp in assigned if tp.topic == MATCH_TOPIC)
    emitted = EmittedHits(hits, lambda since_ms: read_hit_copies_since(kafka_config, HIT_TOPIC, since_ms),
                          seconds=settings.jobs_lookback_s)

    @app.on_partitions_assigned.connect
    async def _hit_partitions_assigned(sender, assigned, **kwargs):
        emitted.on_assigned(tp.partition for tp in assigned if tp.topic == CANDIDATE_TOPIC)
    count_retention_losses(app, kafka_config, APP_ID)
    raw = dict(key_serializer="raw", value_serializer="raw")
    return [
        StageWiring("dedupe", app.topic(*INPUT_TOPICS, **raw), dedupe, records),
        StageWiring("match", app.topic(MATCH_TOPIC, **raw), match, index, restorer.before),
        StageWiring("hits", app.topic(CANDIDATE_TOPIC, **raw), hits, hits_seen, emitted.before),
    ]


def wire_stages(app, stages: list[StageWiring], producer, codec, *, consumer_loop: str, batch_size: int,
                batch_within: float, depth: int = 2) -> None:
    """Feed each stage: an agent per stage (faust's loop), and the batch loop's handlers (the default)."""
    from stream_jobs import faust_patches

    def encode_dead_letter(dl: DeadLetter) -> bytes:
        return codec.encode(DLQ_TOPIC, dl.record())

    waiter = DeliveryWaiter(producer)  # one for the three stages: they share the producer
    handlers, stage_of_topic = {}, {}
    for w in stages:
        runner = BatchRunner(producer, encode_dead_letter, name=w.name, waiter=waiter)
        # The agents subscribe faust's consumer to the topics in every loop; with the batch loop
        # their streams receive nothing (the loop hands the records to `handlers` instead).
        app.agent(w.topic, name=f"intelbus.{w.name}")(_agent(runner, w.stage, w.state, batch_size, batch_within,
                                                             w.before))
        handlers[w.name] = _batch_handler(runner, w.stage, w.state, batch_size, w.before)
        stage_of_topic.update(dict.fromkeys(w.topic.topics, w.name))
    if consumer_loop == "batch":
        faust_patches.install_batch_loop(faust_patches.StageBatches(handlers, stage_of_topic,
                                                                     depth=depth,
                                                                     observe=metrics.observe_arrival))


def add_housekeeping(app, settings: Settings, producer, worker_index: int) -> None:
    """The worker's timers and tasks besides the stages: the producer's delivery callbacks, the
    commit watchdog, the event loop's lag metric and the readiness gauge."""
    kafka_config = settings.kafka_config(JOBS)

    @app.timer(interval=1.0)
    async def _serve_producer_callbacks():
        producer.poll(0)

    watched = {*INPUT_TOPICS, MATCH_TOPIC, CANDIDATE_TOPIC}
    watchdog = CommitWatchdog(stuck_after=settings.jobs_stuck_after_s, hole_after=settings.jobs_hole_after_s)
    seeks = SeeksNotEnding(settings.jobs_stuck_not_ready_s)

    @app.timer(interval=1.0)
    async def _watch_commits():
        try:
            await repair_stuck_partitions(app, watchdog, watched, probe=lambda *where: probe_hole(kafka_config, *where),
                                          seeks=seeks)
        except SeeksStuck as exc:
            exit_stuck_seeking(worker_index, exc.stuck_s, app)
        except Exception:  # the broker away, say: a safety net must not take the worker down
            log.warning("could not check or repair the partitions' commits; trying again in 5 s", exc_info=True)
            watchdog.reset()

    @app.task
    async def _measure_loop_lag():
        interval, clock = 0.05, time.perf_counter
        while True:
            before = clock()
            await asyncio.sleep(interval)
            metrics.LOOP_LAG.observe(max(0.0, clock() - before - interval))

    @app.task
    async def _ready():
        import gc

        # Ready while in the group with its tables recovered; not ready during a rebalance
        # or a recovery. faust starts this task after its first recovery, but that one may
        # have had nothing to recover: a worker joining a busy group can get an empty first
        # assignment and its partitions in the next rebalance, then read their changelogs
        # for minutes if its store is behind.
        frozen, since, reason = False, time.monotonic(), JOINING
        stuck = StuckNotReady(settings.jobs_stuck_not_ready_s)
        while True:
            now_reason = not_ready_because(app)
            if settings.jobs_stuck_not_ready_s > 0:
                # judged in a rebalance or a recovery; not while it waits for its first assignment (Kafka away)
                judged = None if now_reason == JOINING else now_reason
                stuck_s = stuck.check(judged, not_ready_progress(app))
                if stuck_s is not None:
                    exit_stuck(worker_index, now_reason, stuck_s, app)
            if now_reason is None and reason is not None:
                if not frozen:
                    gc.freeze()  # what start-up built (modules, schemas, region tables) lives as long as the worker
                    frozen = True
                    log.info("worker %d ready (in the group, state recovered)", worker_index)
                else:
                    log.info("worker %d ready again after %.1f s", worker_index, time.monotonic() - since)
                metrics.READY.set(1)
            elif now_reason is not None and reason is None:
                metrics.READY.set(0)
                since = time.monotonic()
                log.info("worker %d not ready: %s", worker_index, now_reason)
            reason = now_reason
            await asyncio.sleep(0.25)


def not_ready_because(app) -> str | None:
    """Why the worker is not processing yet, or None when it is: faust's table recovery has
    completed at least once, and no rebalance or recovery is under way."""
    recovery = app.tables.recovery
    if app.rebalancing:
        return "rebalancing"
    if recovery.in_recovery:
        return "recovering its tables from the changelogs"
    if not recovery.completed.is_set():
        return JOINING
    return None


JOINING = "joining the consumer group"


def not_ready_progress(app) -> tuple:
    """What moves while a rebalance or a table recovery gets on: faust's rebalance count, the group's
    generation, whether the tables are recovering and how many changelog records they have left."""
    recovery = app.tables.recovery
    try:
        left = recovery.active_remaining_total() if recovery.in_recovery else None
    except Exception:  # faust's bookkeeping changing under a rebalance
        left = None
    return app.rebalancing_count, app.consumer_generation_id, recovery.in_recovery, left


def exit_stuck(worker_index: int, reason: str, stuck_s: float, app) -> None:
    """End a worker stuck not ready (`StuckNotReady`), after logging where its threads and tasks wait."""
    rebalances, generation, recovering, left = not_ready_progress(app)
    _exit_to_be_restarted(app, "worker %d has been not ready (%s) for %.0f s with nothing moving (rebalance %d, "
                          "generation %s, tables %s; Kafka away, or a rebalance stalled)",
                          worker_index, reason, stuck_s, rebalances, generation,
                          f"recovering, {left} changelog records left" if recovering else "not recovering")


def exit_stuck_seeking(worker_index: int, stuck_s: float, app) -> None:
    """End a worker whose consumer no longer answers its seeks (`SeeksNotEnding`), after logging where
    its threads and tasks wait."""
    _exit_to_be_restarted(app, "worker %d: the seeks to the committed offsets have not ended for %.0f s while it "
                          "counts as ready (its consumer fetches nothing; seen after a broker restart)",
                          worker_index, stuck_s)


def _exit_to_be_restarted(app, what: str, *args) -> None:
    """Log `what` (a %-format over args) and where the worker's threads and tasks wait, then exit with
    status 70, which the supervisor and every restarter of docs/deploy.md restart."""
    log.critical(what + ": it exits so that it is restarted (INTELBUS_JOBS_STUCK_NOT_READY_S). Where it waited:\n%s",
                 *args, where_it_waits(app))
    logging.shutdown()
    os._exit(70)


def where_it_waits(app) -> str:
    """Every thread's stack, and every task's of the event loop and of the consumer thread's loop.
    Code locations only: no local variables, which hold records (people's names and numbers)."""
    import io
    import sys
    import threading
    import traceback

    out = io.StringIO()
    try:
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            out.write(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame, limit=12))}")
        loops = [("event loop", asyncio.get_running_loop())]
        thread_loop = getattr(getattr(app.consumer, "_thread", None), "thread_loop", None)
        if thread_loop is not None:  # aiokafka's consumer runs in a thread with a loop of its own
            loops.append(("consumer thread's loop", thread_loop))
        for name, loop in loops:
            for task in list(asyncio.all_tasks(loop)):
                out.write(f"task of the {name}: {task.get_name()} {task.get_coro()!r}\n")
                task.print_stack(limit=12, file=out)
    except Exception as exc:  # for the post-mortem only: the exit must happen
        out.write(f"(could not be listed further: {exc!r})\n")
    return out.getvalue()


def private_worker(app, **kwargs):
    """faust's Worker for `app`, with mode's SIGUSR1 dump replaced by `where_it_waits`.

    mode's Worker answers SIGUSR1 with `mode.utils.logging.cry`, which pprints every frame's local
    variables: in a stage those are the records (people's names, ID numbers, places), written to
    the worker's log for anyone who reads logs. An operator who sends SIGUSR1 to a worker that
    seems stuck gets the same picture as the stuck-worker exit: every thread's and task's code
    location, no values."""
    import faust

    class Worker(faust.Worker):
        def _on_sigusr1(self) -> None:
            log.warning("SIGUSR1: where every thread and task of this worker waits (code locations only; "
                        "mode's own dump, which prints local variables, is replaced):\n%s", where_it_waits(app))

    return Worker(app, **kwargs)


_held: set = set()


def _report_commit_hold(tp, committed: int, first_acked: int) -> None:
    """Called by the commit guard at every commit attempt it holds: reported once a hole. A
    hole seen right after a rebalance often fills by itself (messages still on their way);
    one that stays is what the watchdog repairs."""
    if (tp, committed) in _held:
        return
    _held.add((tp, committed))
    metrics.COMMIT_HOLDS.labels(tp.topic).inc()
    skipped = first_acked - committed
    log.warning("%s[%d]: %s not processed (yet), but %d and later were; the commit is held at %d%s, and the "
                "watchdog reads the partition again if it stays so", tp.topic, tp.partition,
                f"message {committed} is" if skipped == 1 else f"messages {committed}-{first_acked - 1} are",
                first_acked, committed, " (faust would commit over this one)" if skipped == 1 else "")


def _report_gap_left_open(tp, first: int, last: int) -> None:
    metrics.GAPS_LEFT_OPEN.labels(tp.topic).inc()
    log.warning("%s[%d]: offsets %d-%d were skipped by the fetch (faust would take them as absent and commit over "
                "them); left a hole, so the commit holds there until they are processed or found to hold no "
                "message", tp.topic, tp.partition, first, last)


def probe_hole(kafka_config: dict, topic: str, partition: int, first: int, last: int,
               timeout: float = 10.0) -> bool | None:
    """Does offsets [first, last] of the partition hold any message? None if Kafka did not say
    within `timeout`. Offsets without a message: a transactional producer's markers, or
    messages deleted by retention."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_config, "group.id": "intelbus-jobs-probe", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_uncommitted"})
    try:
        consumer.assign([TopicPartition(topic, partition, first)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(10, 0.5):
                if not msg.error():
                    return msg.offset() <= last
        return None
    finally:
        consumer.close()


class SeeksStuck(Exception):
    """The repairs' seeks have not ended for `stuck_s` seconds (`SeeksNotEnding`)."""

    def __init__(self, stuck_s: float):
        super().__init__(f"the seeks to the committed offsets have not ended for {stuck_s:.0f} s")
        self.stuck_s = stuck_s


async def repair_stuck_partitions(app, watchdog: CommitWatchdog, topics: set[str], settle: float = 0.2,
                                  probe=None, seek_timeout: float = 30.0, seeks: SeeksNotEnding | None = None) -> list:
    """When the watchdog finds a partition stuck (`stream_jobs.watchdog`), read the worker's
    partitions again from their committed offsets; nothing is judged while faust rebalances
    or recovers tables. Returns the stuck partitions.

    A stuck partition whose hole at the commit point holds no message at all (`probe`:
    (topic, partition, first, last) -> bool | None, blocking) is not read again: the hole is
    recorded as a gap, and faust commits over it."""
    consumer = app.consumer
    looked_at = app.rebalancing_count
    if rebalance_since(app, looked_at) or not consumer.flow_active:
        watchdog.reset()
        return []
    from stream_jobs.faust_patches import hole_at_commit_point

    committed, acked = consumer._committed_offset, consumer._acked  # faust 0.15.3 bookkeeping
    views = {}
    for tp in consumer.assignment():
        if tp.topic in topics:
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched yet
                highwater = None
            pending = acked.get(tp)
            views[tp] = PartitionView(committed.get(tp), len(pending) if pending else 0, highwater,
                                      hole=hole_at_commit_point(consumer, tp) is not None)
    progress = tuple(sorted((tp.topic, tp.partition, view.committed or -1) for tp, view in views.items()))
    if seeks is not None:
        seeks.look(progress)
    stuck = watchdog.check(views)
    if stuck and probe is not None:
        stuck = [tp for tp in stuck if not await _hole_without_messages(consumer, tp, probe)]
        if rebalance_since(app, looked_at):  # the probes took seconds: the partitions may have moved
            watchdog.reset()
            return []
    for tp in stuck:
        view = views[tp]
        again = watchdog.delay(view, tp)  # this report counted: a partition with nothing acknowledged backs off
        log.warning("%s[%d]: committed offset %s has not moved for %.0fs or more with %d acknowledged messages past "
                    "it%s (end offset %s): reading the worker's partitions again from their committed offsets "
                    "(what was processed is a replay)%s", tp.topic, tp.partition, view.committed,
                    min(watchdog.stuck_after, watchdog.delay(view)), view.acked_pending,
                    " and not itself" if view.hole else "", view.highwater,
                    f"; if it has not moved in {again:.0f}s, again (a saturated worker's fetcher may just not be "
                    "serving it)" if again > watchdog.stuck_after else "")
        metrics.PARTITION_REPAIRS.labels(tp.topic).inc()
    if stuck:
        # What faust itself does around a rebalance. Stop the flow, so that its fetch loop
        # hands out nothing more of what it fetched before; give the message in flight time
        # to finish; seek every assigned partition to its committed offset, read offsets
        # included; resume. Setting one read offset back while messages fetched before are
        # still being handed out can make faust take the offsets in between for a gap
        # (`Consumer._add_gap`), that is, as done, and commit them unprocessed.
        #
        # The flow is faust's during a rebalance: its revoke stops it, its recovery resumes it
        # once the tables have read their changelogs to the end. A rebalance that begins while
        # the repair waits (the settle, the seek) owns it from then on: the repair neither seeks
        # nor resumes. (Before, a repair that had looked before a rebalance stopped the flow in
        # the middle of the recovery: the changelog records just fetched were dropped, and since
        # nothing seeks a changelog back outside a rebalance, the recovery never reached its
        # highwater and the worker stayed "rebalancing" for good, the group STABLE.)
        consumer.stop_flow()
        try:
            await asyncio.sleep(settle)
            if not rebalance_since(app, looked_at):
                # Bounded: with the broker away (a broker SIGKILLed, the group's coordinator on it) faust's
                # seek to the committed offsets waited for good, and the flow it had stopped with it: the
                # worker read nothing more after the broker came back (seen twice in the broker-kill
                # ground-truth test, 2026-11-30). Given up, the flow resumes and the watchdog looks again.
                try:
                    await asyncio.wait_for(consumer.perform_seek(), seek_timeout)
                except asyncio.TimeoutError:
                    log.warning("the seek to the committed offsets did not end within %.0f s (the broker or the "
                                "group's coordinator away?): the flow resumes, the watchdog looks again", seek_timeout)
                    stuck_s = seeks.timed_out(seek_timeout, progress) if seeks is not None else None
                    if stuck_s is not None:
                        raise SeeksStuck(stuck_s)
                else:
                    if seeks is not None:
                        seeks.ended()
        finally:
            if rebalance_since(app, looked_at):
                log.info("a rebalance began during the partitions' repair: the repair leaves the flow to faust, "
                         "which resumes it once it has recovered the tables")
            else:
                consumer.resume_flow()
    return stuck


def rebalance_since(app, looked_at: int) -> bool:
    """Whether faust is in a rebalance or a table recovery, or began one since the caller read
    `app.rebalancing_count` as `looked_at`: then the consumer's flow, seeks and read offsets
    are faust's until its recovery ends, and a repair that looked before must leave them alone."""
    return app.rebalancing or app.in_recovery or app.rebalancing_count != looked_at


async def _hole_without_messages(consumer, tp, probe) -> bool:
    """True (and the hole recorded as a gap) when the stuck partition's hole holds no message."""
    from stream_jobs.faust_patches import hole_at_commit_point, record_gap

    hole = hole_at_commit_point(consumer, tp)
    if hole is None:
        return False
    first, end = hole
    holds = await asyncio.get_running_loop().run_in_executor(None, probe, tp.topic, tp.partition, first, end - 1)
    if holds is not False:
        return False
    record_gap(consumer, tp, first, end - 1)
    log.warning("%s[%d]: offsets %d-%d hold no message (transaction markers, or deleted by retention): "
                "recorded as a gap, the commit moves on", tp.topic, tp.partition, first, end - 1)
    return True


def _raw_table(app, name: str, partitions: int):
    """A table whose changelog holds our bytes as they are (by default faust JSON-decodes
    changelog records when it recovers a table)."""
    table = app.Table(name, partitions=partitions, help=f"intelbus {name} state")
    table.key_serializer = table.value_serializer = "raw"
    # the changelog topic object was built at construction with the default serializers
    table.changelog_topic = table._new_changelog_topic()
    return table


async def _run_or_exit(name: str, work) -> None:
    """Await a stage's work (a coroutine), or end the worker if it fails.

    faust would leave a crashed agent dead inside a live worker (and the batch loop a stage
    whose handler raised): its partitions would stall unseen. The worker exits instead,
    without committing; `intelbus up` (or any supervisor) restarts it and the batch is read
    again."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        log.critical("stage %s failed; the worker exits so that it is restarted", name, exc_info=True)
        logging.shutdown()
        os._exit(70)


async def _process(runner: BatchRunner, stage, state, batch: list, before=None) -> None:
    if before is not None:
        await before(batch)
    await runner.run(stage, state, batch)


def _agent(runner: BatchRunner, stage, state, batch_size: int, within: float, before=None):
    """The agent of one stage (faust's loop); `before(batch)`, when given, is awaited ahead of each batch."""
    async def batches(stream):
        async for events in stream.take_events(batch_size, within=within):
            batch = [
                Incoming(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                         header_pairs(e.message.headers))
                for e in events
            ]
            await _process(runner, stage, state, batch, before)

    async def agent(stream):
        await _run_or_exit(runner.name, batches(stream))

    agent.__name__ = f"{runner.name}_agent"
    return agent


def _batch_handler(runner: BatchRunner, stage, state, batch_size: int, before=None):
    """The batch loop's handler of one stage: a fetch's records of its topics (or several
    fetches' that waited for the stage), processed and handed to the producer at most
    `batch_size` at a time as in faust's loop (a fetch holds up to `broker_max_poll_records`,
    5,000: the dedupe stage's match requests of 5,000 events, one message a partition, outgrew
    the broker's 1 MB message limit and the worker exited with MSG_SIZE_TOO_LARGE).

    Each part is delivered before the part after the next one starts; the handler returns
    once the last part is processed and produced, with what finishes it (awaited by the loop
    before it acknowledges the records; meanwhile the loop may start the stage's next batch)."""
    async def handle(records):
        delivering = None
        for start in range(0, len(records), batch_size):
            batch = [Incoming(r.topic, r.partition, r.offset, r.key, r.value, header_pairs(r.headers))
                     for r in records[start:start + batch_size]]
            if before is not None:
                await _run_or_exit(runner.name, before(batch))
            begun = _started_or_exit(runner, stage, state, batch)
            if delivering is not None:
                await _run_or_exit(runner.name, runner.finish(delivering))
            delivering = begun
        return None if delivering is None else _run_or_exit(runner.name, runner.finish(delivering))

    return handle


def _started_or_exit(runner: BatchRunner, stage, state, batch: list) -> Delivery:
    """`runner.start`, or the worker ends as in `_run_or_exit`."""
    try:
        return runner.start(stage, state, batch)
    except BaseException:
        log.critical("stage %s failed; the worker exits so that it is restarted", runner.name, exc_info=True)
        logging.shutdown()
        os._exit(70)


def provinces_of(notify: list[str], regions) -> list[str]:
    """Province codes of notified regions and of the members of notified zones."""
    codes: set[str] = set()
    for entry in notify:
        members = regions.zone_members(entry) if regions.is_zone(entry) else (entry,)
        for code in members:
            codes.add(code[:2] + "0000")
    return sorted(codes)


def border_duplicate_settings(settings: Settings) -> dict:
    """The border-duplicate rule's window and distance (`intelbus config`: INTELBUS_BORDER_DUPLICATE_*)."""
    return {"border_window_ms": int(settings.border_duplicate_window_min * 60_000),
            "border_km": float(settings.border_duplicate_km)}


def hit_record(hit: dict) -> dict:
    """The hit as the Avro codec takes it (the codec converts epoch ms itself)."""
    return hit


def header_pairs(headers) -> tuple:
    """A message's headers as (name, bytes) pairs, whether the transport gave a list or a mapping."""
    if not headers:
        return ()
    if hasattr(headers, "items"):
        return tuple(headers.items())
    return tuple(headers)


def counts_summary(counts: Counter) -> str:
    return ", ".join(f"{'/'.join(map(str, k))}={v}" for k, v in sorted(counts.items()))
