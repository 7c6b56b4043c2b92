"""Changes to faust-streaming 0.15.3's consumer: a commit guard (always on) and the batch
consumer loop (the default; a fetch's records to each stage as one batch: "The batch loop"
further down; INTELBUS_JOBS_CONSUMER_LOOP=faust keeps faust's own loop).

## The commit guard: a message never processed is never committed over

faust commits, per partition, the end of the first run of consecutive acknowledged offsets
(`Consumer._new_offset`). Its check for a hole at the head of that run is off by one: it
gives up only when `min(acked) - committed > 1`, where `committed` is Kafka's committed
offset, the next message to process. So when exactly one message was skipped (committed
offset c, message c never acknowledged, c+1 and later acknowledged), faust commits past
it and the message is lost for good, silently. A hole of two or more holds the commit
instead, which `stream_jobs.watchdog` detects and repairs by reading the partition again.
Messages are skipped in faust's loop around a rebalance (faust-streaming 166, 175/640;
see docs/architecture.md); a single skipped message of the match-request or hit-candidate
topic is a hit lost. `guard_commits()` makes the one-message hole hold the commit too (a
gap that faust recorded, `Consumer._gap`, still counts as done), so the watchdog repairs
it like any other.

Gaps: when a fetched message's offset is more than one past the partition's read offset,
faust records the offsets in between as a gap, absent (`Consumer._add_gap`), i.e. done, and
commits over them. That is right for offsets that hold no message (a transaction's
commit marker: one offset) and wrong after a rebalance, when messages fetched before it
still arrive after faust set the read offset back to the committed one: measured here, a
join of a second worker recorded gaps of 20 to 40 offsets on ten partitions at once and
the run lost 105 events and 29 hits. `guard_commits()` therefore records a gap only when
it is a single offset; a longer one is left a hole (logged, `on_gap`), which holds the
commit until the watchdog reads the partition again. Before it does, the watchdog asks
Kafka whether the hole holds messages at all (`stream_jobs.app.probe_hole`); if it holds
none (markers of a transactional producer, say), it is recorded as the gap it is.

The guard and the batch loop reach into faust's, mode's and aiokafka's internals, so they are written for
exact versions (pinned in pyproject.toml and constraints.txt): `require_pinned()` refuses to
start a worker on any other version, with a message naming the package, rather than run
faust unguarded.
"""
from __future__ import annotations

import asyncio
from collections import deque
import logging
from typing import Any

log = logging.getLogger("intelbus.jobs")

PATCHED_VERSION = "0.15.3"
# The framework versions the patches were written and tested against (pyproject.toml pins them).
PINNED = {"faust-streaming": PATCHED_VERSION, "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class UnsupportedFramework(RuntimeError):
    """A stream framework package is not the version intelbus's patches were written for."""


def version_mismatches(installed) -> list[str]:
    """'package X is not Y' for every pinned package whose installed version differs.

    installed(name) -> version string or None (not installed)."""
    out = []
    for name, want in PINNED.items():
        have = installed(name)
        if have != want:
            out.append(f"{name} {have or '(not installed)'} is not {want}")
    return out


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def require_pinned(installed=None) -> None:
    """Refuse to run the stream jobs on framework versions the patches were not written for."""
    wrong = version_mismatches(installed or _installed_version)
    if wrong:
        raise UnsupportedFramework(
            "intelbus's stream jobs refuse to start: " + "; ".join(wrong) + ". The commit guard and the "
            "consumer loop patch (stream_jobs/faust_patches.py) reach into these packages' internals and "
            "were written for exactly these versions. Reinstall the locked environment with `make install` "
            "(pip install -c constraints.txt -e .), or port and re-test the patches before changing the pins.")
_guarded = False


def hole_at_commit_point(consumer: Any, tp: Any) -> tuple[int, int] | None:
    """(committed, first acknowledged) when the message at the committed offset was never
    acknowledged while later ones were, and is not in a gap faust recorded; else None."""
    acked = consumer._acked.get(tp)
    committed = consumer._committed_offset.get(tp)
    if not acked or committed is None:
        return None
    first = min(acked)
    if first <= committed:
        return None
    gap = consumer._gap.get(tp)
    if gap is not None and gap.overlaps(committed):
        return None  # faust's own gap bookkeeping (offsets it knows are not there) fills it
    return committed, first


def _guard(new_offset, on_hole):
    def _new_offset(self, tp):
        hole = hole_at_commit_point(self, tp)
        if hole is not None:
            on_hole(tp, *hole)
            return None  # the commit stays where it is until the message is processed
        return new_offset(self, tp)

    _new_offset.__wrapped__ = new_offset
    return _new_offset


def _gap_policy(add_gap, on_gap):
    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        # faust's interval is [offset_from, offset_to]: the offsets not seen, and the message
        # just fetched (offset_to), which is processed anyway.
        if offset_to - offset_from <= 1:
            return await add_gap(self, tp, offset_from, offset_to)
        on_gap(tp, offset_from, offset_to - 1)  # not recorded: a hole, until read or probed

    _add_gap.__wrapped__ = add_gap
    return _add_gap


def record_gap(consumer, tp, first: int, last: int) -> None:
    """Record offsets [first, last] as absent, for a hole found to hold no message. (faust's
    own `_add_gap` starts a gap one past the committed offset at the earliest, so it could
    not record a hole that begins at it.)"""
    gap = consumer._gap[tp]
    gap.addi(first, last + 1)
    gap.merge_overlaps()


def guard_commits(on_hole=None, on_gap=None) -> bool:
    """Install the commit guard (see the module doc) if faust is the version it was written for.

    on_hole(tp, committed, first_acknowledged) is called each time the guard holds a commit;
    on_gap(tp, first, last) for each gap of more than one offset that is left a hole.
    """
    global _guarded
    from faust.transport.consumer import Consumer

    require_pinned()
    if not _guarded:
        Consumer._new_offset = _guard(Consumer._new_offset, on_hole or (lambda *a: None))
        Consumer._add_gap = _gap_policy(Consumer._add_gap, on_gap or (lambda *a: None))
        _guarded = True
    return True


def _ended_as_faust_ends(drain):
    """A drain loop (`drain(consumer, fetcher)`) with faust 0.15.3's `Consumer._drain_messages`
    endings: a consumer stopped by the broker or a cancel while the app stops ends it quietly,
    anything else is logged and raised, and the FETCHING flag is cleared in every case."""
    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised by the integration tests
        from faust.transport.consumer import CONSUMER_FETCHING

        try:
            await drain(self, fetcher)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    _drain_messages.__wrapped__ = drain
    return _drain_messages


# ## The batch loop (the default; INTELBUS_JOBS_CONSUMER_LOOP=faust turns it off)
#
# faust hands each fetched message to its conductor: a ConsumerMessage, the conductor's lock
# and queue, the stream iterator, `wait_first`'s four tasks, and an acknowledgement per
# message. The batch loop hands each stage the records of one fetch (every partition of its
# topics, as one batch) and acknowledges them in bulk once the stage's outputs are delivered.
# faust still owns the group, the assignment, the commits and the tables: the loop fetches
# through faust's own consumer (`_wait_next_records`), keeps faust's read offsets, gaps and
# acknowledgement bookkeeping as faust's loop would, and routes the records of any other
# topic (the tables' changelogs while they recover) through faust's own path, unchanged.
# What is checked once per message in faust's loop is checked once per batch here, right
# when the batch is handed to its stage: the flow, flow control, the generation, the
# partition still active, and no seek since the fetch (a seek sets the read offsets back:
# records fetched before it are stale). A stage runs one batch at a time, in fetch order, so
# a partition's batches run in order; what is handed to a busy stage waits in its queue and
# runs next, as one batch. The loop does not wait for a stage (only for one `max_queued`
# records behind): the three stages' batches overlap (one waits for Kafka while another
# computes), and the next fetch goes out while a batch's outputs are being delivered (a
# fetch waited for the slowest stage before, and a hit for three rounds of fetch, process
# and delivery). On a revoke, the batches in flight and queued are awaited, so a partition
# moves to another worker only when nothing of it is half done here.


class SeekMarks:
    """When faust last seeked each partition (or all), on a counter; a fetch remembers the
    counter when it starts, and its records of a partition seeked since are stale."""

    def __init__(self):
        self.clock = 0
        self.all = 0
        self.by_tp: dict = {}

    def now(self) -> int:
        return self.clock

    def mark(self, tp=None) -> None:
        self.clock += 1
        if tp is None:
            self.all = self.clock
        else:
            self.by_tp[tp] = self.clock

    def seeked_since(self, tp, then: int) -> bool:
        return max(self.all, self.by_tp.get(tp, 0)) > then


def fresh_records(records, read_offset: int | None):
    """faust's per-message read-offset checks (`Consumer._drain_messages`) over one partition's
    records of a fetch: (the records faust would deliver, the gaps it would record before them
    as (from, to) in `_add_gap`'s terms, the read offset after them)."""
    kept, gaps, r = [], [], read_offset
    for rec in records:
        offset = rec.offset
        if r is None or offset >= r:
            if r and offset - r > 1:
                gaps.append((r + 1, offset))
            kept.append(rec)
            r = offset
    return kept, gaps, r


def ack_offsets(consumer: Any, tp: Any, offsets) -> int:
    """faust's `Consumer.ack` for a partition's processed offsets at once: each offset at or past
    the committed one and not acknowledged before joins `_acked`; returns how many did."""
    committed = consumer._committed_offset[tp]
    index = consumer._acked_index[tp]
    new = [o for o in dict.fromkeys(offsets) if (committed is None or o >= committed) and o not in index]
    if new:
        index.update(new)
        consumer._acked[tp].extend(new)
        consumer._n_acked += len(new)
    return len(new)


def why_not_start(*, stopping: bool, flow_active: bool, flow_control_active: bool) -> str | None:
    """Why a fetched batch must not start now (None: it may). Its records are then dropped
    unacknowledged; whoever stopped the flow (a rebalance, the watchdog) seeks the partitions
    back to their committed offsets, as with faust's own loop."""
    if stopping:
        return "stopping"
    if not flow_active or not flow_control_active:
        return "flow stopped"
    return None


def stale(first_offset: int, read_offset: int | None, *, seeked: bool, rebalanced: bool) -> bool:
    """Whether a partition's records of a fetch, beginning at `first_offset`, may come from before
    a seek or a rebalance that happened while the fetch was under way: then they are dropped, and
    read again from where the seek put the partition.

    Records that begin exactly at the read offset the seek set (faust sets it to the committed
    offset, the next to read) are what a fetch after the seek returns: kept, since the fetch
    position is already past them and dropping them would leave a hole (seen: a joining worker
    dropped the first fetch after its recovery's seek and left holes of 50-700 messages on seven
    partitions). A rebalance without a seek since (faust seeks once it has recovered the tables)
    leaves nothing to compare with: dropped. A partition without a read offset is judged as faust
    judges it, not at all."""
    if not seeked:
        return rebalanced
    return read_offset is not None and first_offset != read_offset


class StageBatches:
    """The stage handlers, which topics feed which, and each stage's batch in flight.

    handlers: stage name -> async handler(records) that makes the batch's effects durable (or
    raises); topics: topic -> stage name."""

    def __init__(self, handlers: dict, topics: dict[str, str], max_queued: int = 10_000, depth: int = 2,
                 observe=None):
        self.handlers = handlers
        # observe(stage, step, seconds): where records waited before their stage (None: not measured);
        # steps "fetched" (Kafka timestamp to hand-over) and "queued" (hand-over to the batch's start)
        self.observe = observe
        self.handed_at: dict[str, float] = {}  # stage -> when the oldest batch waiting in its queue was handed over
        self.depth = depth  # batches of a stage begun and not yet acknowledged, at most (see `_run`)
        self.stage_of = topics
        self.in_flight: dict[str, asyncio.Task] = {}  # each stage's runner, while it has batches to run
        self.queued: dict[str, list[tuple[list, dict]]] = {}  # batches handed over, not begun yet
        self.queued_records: dict[str, int] = {}
        self.max_queued = max_queued  # a stage this far behind holds the loop (and so the fetches) up
        self._wakes: dict[str, asyncio.Event] = {}  # a stage's runner waiting for a delivery, woken by a new batch
        self.marks = SeekMarks()
        self.dropped = 0  # records fetched but not started (flow stopped, rebalance, seek)

    def split(self, records: dict) -> tuple[dict, dict]:
        """A fetch's records: {stage: {tp: records}} for the stages' topics, {tp: records} for others."""
        by_stage: dict = {}
        other: dict = {}
        stage_of = self.stage_of.get
        for tp, recs in records.items():
            stage = stage_of(tp.topic)
            if stage is None:
                other[tp] = recs
            else:
                by_stage.setdefault(stage, {})[tp] = recs
        return by_stage, other

    def busy(self) -> bool:
        return any(not t.done() for t in self.in_flight.values())

    async def wait_in_flight(self, timeout: float | None = None) -> bool:
        """Wait for the batches in flight (never cancels them); False if some outlived `timeout`."""
        pending = [t for t in self.in_flight.values() if not t.done()]
        if not pending:
            return True
        done, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def submit(self, consumer: Any, stage: str, parts: dict, generation: int, then: int, active) -> int:
        """Hand the stage its batch of one fetch; returns its size. The stage's runner takes it
        after the batches handed over before (all of them at once, as one batch, if several
        wait): the loop goes on fetching meanwhile, so the other stages' records and the next
        fetch do not wait for this stage's delivery. Only a stage `max_queued` records behind
        holds the loop up, until its runner has caught up."""
        runner = self.in_flight.get(stage)
        if runner is not None and not runner.done() and self.queued_records.get(stage, 0) >= self.max_queued:
            await asyncio.wait((runner,))  # not `await runner`: a cancelled loop must not cancel it
        app = consumer.app
        reason = why_not_start(stopping=consumer.should_stop, flow_active=consumer.flow_active,
                               flow_control_active=app.flow_control.is_active())
        if reason is not None:
            for tp, recs in parts.items():
                self._drop(tp, recs, reason)
            return 0
        # From here to the task's creation nothing awaits: the checks above still hold.
        read_offset = consumer._read_offset
        buffered = consumer._buffered_partitions
        monitor = app.monitor
        now = _monotonic()
        batch: list = []
        offsets: dict = {}
        gaps: list = []
        rebalanced = generation != app.consumer_generation_id
        for tp, recs in parts.items():
            if not recs:
                continue
            r = read_offset[tp]
            if active is not None and tp not in active and tp not in buffered:
                self._drop(tp, recs, "partition paused")
                continue
            seeked = self.marks.seeked_since(tp, then)
            if stale(recs[0].offset, r, seeked=seeked, rebalanced=rebalanced):
                self._drop(tp, recs, f"fetched before a {'seek' if seeked else 'rebalance'}; read offset {r}")
                continue
            kept, tp_gaps, last = fresh_records(recs, r)
            if len(kept) < len(recs):
                log.info("%s[%d]: %d fetched records below the read offset %s not delivered again (as faust)",
                         tp.topic, tp.partition, len(recs) - len(kept), r)
            if not kept:
                continue
            read_offset[tp] = last
            offsets[tp] = [r.offset for r in kept]
            batch.extend(kept)
            gaps.extend((tp, a, b) for a, b in tp_gaps)
            if monitor is not None:
                monitor.track_tp_end_offset(tp, consumer.highwater(tp))
                monitor.stream_inbound_time[tp] = now  # faust's livelock detector: this partition is processed
        if batch:
            if self.observe is not None:
                wall_ms = _wall_ms()
                for recs in parts.values():
                    if recs and recs[0].timestamp is not None:
                        self.observe(stage, "fetched", max(0.0, (wall_ms - recs[0].timestamp) / 1000))
            queue = self.queued.setdefault(stage, [])
            if not queue:
                self.handed_at[stage] = now
            queue.append((batch, offsets))
            self.queued_records[stage] = self.queued_records.get(stage, 0) + len(batch)
            runner = self.in_flight.get(stage)
            if runner is None or runner.done():
                self.in_flight[stage] = asyncio.get_running_loop().create_task(
                    self._run(consumer, stage), name=f"intelbus-batch-{stage}")
            else:
                self._wake(stage).set()
        for tp, a, b in gaps:
            if app.topics.acks_enabled_for(tp.topic):
                await consumer._add_gap(tp, a, b)
        return len(batch)

    def drop_queued(self, reason: str, tp: Any = None) -> int:
        """Drop what waits in the stages' queues (of partition `tp`, or all), unacknowledged: a
        seek, a revoke or the stop is under way, after which faust reads those partitions again
        from their committed offsets (so they are not processed twice, nor after their
        partitions moved). The batches already begun are left to finish. Returns how many."""
        dropped = 0
        for stage, queue in self.queued.items():
            kept = []
            for batch, offsets in queue:
                gone = {t: o for t, o in offsets.items() if tp is None or t == tp}
                for t, offs in gone.items():
                    self.dropped += len(offs)
                    dropped += len(offs)
                    log.info("%s[%d]: %d records (%d-%d) waiting for the %s stage not processed: %s; the partition "
                             "is read again from where faust seeks it", t.topic, t.partition, len(offs), offs[0],
                             offs[-1], stage, reason)
                if len(gone) < len(offsets):
                    kept.append(([r for r in batch if (r.topic, r.partition) != (tp.topic, tp.partition)],
                                 {t: o for t, o in offsets.items() if t not in gone}))
            queue[:] = kept
            self.queued_records[stage] = sum(len(b) for b, _ in kept)
        return dropped

    def _drop(self, tp: Any, recs: list, reason: str) -> None:
        if not recs:
            return
        self.dropped += len(recs)
        log.info("%s[%d]: %d fetched records (%d-%d) not processed: %s; the partition is read again from where "
                 "faust seeks it", tp.topic, tp.partition, len(recs), recs[0].offset, recs[-1].offset, reason)

    async def _run(self, consumer: Any, stage: str) -> None:
        """The stage's runner: what was handed over, in order, one batch at a time, until none waits.

        Up to `depth` batches are begun and not yet acknowledged: a batch is processed and its
        outputs produced while the batches before it wait for their delivery reports (two
        round trips each: the outputs, then the state writes). The default, 2, lets one batch
        be processed while one is delivered (`INTELBUS_JOBS_BATCH_DEPTH`). 4 took 200 events/s
        from p50 128-149 to 121-124 ms (2026-12-01 morning); a clean-clone run with it then hung
        jobs-0 after a worker left the group, which was the generation check of `_drain_batch_loop`
        (it hung CI with 2 as well, fixed since). Measured again that afternoon, 4 did not pay: a
        60,000-event backlog 2,048 and 1,691 events/s against 1,751 and 1,850 with 2, and at 200
        events/s the wait for a batch's start (`intelbus_jobs_arrival_seconds`, queued) 5.5-9.3 ms
        against 4.0-8.3 ms. So 2 stays.
        The batches write their state in the order they started (`BatchRunner`), and are
        acknowledged in that order here, whatever order their reports come in."""
        from faust.types.tuples import ack_lock
        from mode.utils.futures import notify

        def ack(offsets: dict) -> None:
            with ack_lock:
                for tp, offs in offsets.items():
                    ack_offsets(consumer, tp, offs)
                notify(consumer._waiting_for_ack)

        queue = self.queued[stage]
        wake = self._wake(stage)
        delivering: deque = deque()  # the batches begun and not acknowledged: (finishing task, offsets), oldest first

        def acknowledge_delivered() -> None:
            while delivering and delivering[0][0].done():
                task, offsets = delivering.popleft()
                task.result()  # a batch not delivered ended the worker (`_run_or_exit`); re-raises a cancel
                ack(offsets)

        try:
            while queue or delivering:
                acknowledge_delivered()
                if not queue or len(delivering) >= self.depth:
                    if not delivering:
                        continue
                    # wait for the oldest delivery, or (with room for one more) for a next batch
                    wake.clear()
                    if not delivering[0][0].done():
                        await wake.wait()
                    continue
                batch, offsets = take_queued(queue)
                self.queued_records[stage] = 0
                if self.observe is not None and stage in self.handed_at:
                    self.observe(stage, "queued", _monotonic() - self.handed_at[stage])
                # a handler returns once the batch is processed and its outputs produced, with an
                # awaitable for their delivery (or None: it waited itself)
                finishing = await self.handlers[stage](batch)
                if finishing is None:
                    while delivering:  # acknowledged after the ones before it
                        await asyncio.wait((delivering[0][0],))
                        acknowledge_delivered()
                    ack(offsets)
                else:
                    task = asyncio.get_running_loop().create_task(finishing, name=f"intelbus-delivery-{stage}")
                    task.add_done_callback(lambda _: wake.set())
                    delivering.append((task, offsets))
        finally:
            while delivering and not delivering[0][0].cancelled():
                await asyncio.wait((delivering[0][0],))
                acknowledge_delivered()

    def _wake(self, stage: str) -> asyncio.Event:
        wake = self._wakes.get(stage)
        if wake is None:
            wake = self._wakes[stage] = asyncio.Event()
        return wake


def take_queued(queue: list[tuple[list, dict]]) -> tuple[list, dict]:
    """Every batch waiting in a stage's queue, as one (records in the order handed over, and each
    partition's offsets in that order); the queue is left empty."""
    if len(queue) == 1:
        batch, offsets = queue.pop()
        return batch, offsets
    batch: list = []
    offsets: dict = {}
    for records, offs in queue:
        batch.extend(records)
        for tp, o in offs.items():
            offsets.setdefault(tp, []).extend(o)
    queue.clear()
    return batch, offsets


def _monotonic() -> float:
    import time

    return time.monotonic()


def _wall_ms() -> float:
    import time

    return time.time() * 1000


_batches: StageBatches | None = None


async def _drain_batch_loop(self, fetcher) -> None:  # pragma: no cover - exercised by the integration tests
    """faust 0.15.3's `Consumer._drain_messages` and `getmany` loops in one, handing stage batches to `_batches`."""
    from faust.transport.consumer import CONSUMER_FETCHING

    batches = _batches
    app = self.app
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = app.topics.acks_enabled_for
    to_message = self._to_message
    marks = batches.marks
    while not (consumer_should_stop() or fetcher_should_stop()):
        set_flag(CONSUMER_FETCHING)
        generation = app.consumer_generation_id
        then = marks.now()
        records, active = await self._wait_next_records(1.0)
        # The generation the records were handed over in, read as faust's getmany reads it: a fetch
        # waits up to a second, and a rebalance may begin and its recovery seek and resume the changelogs
        # meanwhile. Those records are the recovery's (aiokafka hands out only partitions active when
        # it returns); judged by the generation from before the fetch, they were dropped, and since
        # nothing seeks a changelog back but the next rebalance, the recovery never reached its
        # highwater: the worker stayed "rebalancing" for good (CI and two of four local suite runs, 2026-12-01).
        # The stages' records keep the stricter test (`generation`): faust seeks their partitions
        # back to the committed offsets when the recovery ends.
        handed_in = app.consumer_generation_id
        await self.sleep(0)
        if records is None or self.should_stop:
            continue
        if not self.flow_active:
            # as faust's getmany: fetched while the flow stopped, read again from the committed offsets
            batches.dropped += sum(map(len, records.values()))
            try:
                await self.perform_seek()
            except Exception as ex:
                log.warning("exception performing seek when flow not active %r", ex)
            continue
        if records:
            _rotate(self, records)
        by_stage, other = batches.split(records)
        for tp, recs in other.items():  # faust's own path, message by message (changelogs in recovery)
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            for i, record in enumerate(recs):
                if not self.flow_active or app.consumer_generation_id != handed_in:
                    log.info("%s[%d]: %d fetched records not handed to faust: a rebalance began meanwhile (its "
                             "recovery reads the changelogs again from the tables' offsets)", tp.topic, tp.partition,
                             len(recs) - i)
                    break
                message = to_message(tp, record)
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
        for stage, parts in by_stage.items():
            await batches.submit(self, stage, parts, generation, then, active)
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        unset_flag(CONSUMER_FETCHING)


_drain_batches = _ended_as_faust_ends(_drain_batch_loop)


def _rotate(consumer: Any, records: dict) -> None:
    """Send the partitions just served to the back of aiokafka's queue of fetched records.

    aiokafka (0.14) hands out its fetched records partition by partition in the order they
    arrived, up to `max_records` a call, and a partition it could not empty stays in front:
    with 8 MiB a partition (`consumer_max_fetch_size`), a backlog of one input partition was
    served for tens of seconds before a partition behind it got a record (seen: every
    `intel.match.requests` partition untouched for 30 s after a restart, until the watchdog
    read them again). Moved to the back, the partitions take turns, one fetch each."""
    try:
        queued = consumer._thread._consumer._fetcher._records
    except AttributeError:  # not aiokafka's consumer (tests)
        return
    for tp in records:
        try:
            queued.move_to_end(tp)
        except KeyError:  # emptied by this fetch (aiokafka then fetches it again)
            pass


def _marking_seeks(perform_seek, seek):
    async def _perform_seek(self):
        marks = _batches.marks if _batches is not None else None
        if marks is not None:
            marks.mark()
            _batches.drop_queued("the consumer seeks every partition to its committed offset")
        try:
            return await perform_seek(self)
        finally:
            if marks is not None:
                marks.mark()  # and after: a fetch that started during the seek may hold records from before it

    async def _seek(self, partition, offset):
        marks = _batches.marks if _batches is not None else None
        if marks is not None:
            marks.mark(partition)
            _batches.drop_queued(f"the consumer seeks the partition to {offset}", partition)
        try:
            return await seek(self, partition, offset)
        finally:
            if marks is not None:
                marks.mark(partition)

    return _perform_seek, _seek


def _finishing_batches(on_partitions_revoked, on_stop):
    async def _on_partitions_revoked(self, revoked):
        batches = _batches
        if batches is not None and batches.busy():
            # No batch starts from here (faust stops the flow too, right after), and the queued
            # ones are dropped; the ones in flight finish while this worker still owns their
            # partitions, so their state and outputs are in Kafka before another worker reads
            # the partitions. Not committed here: a commit from inside aiokafka's revoke
            # callback hung the rebalance for good (seen once); the new owner reads the
            # uncommitted rest again, a replay.
            self.stop_flow()
            batches.drop_queued("the partitions are revoked (a rebalance)")
            timeout = self.app.conf.broker_session_timeout * 0.5
            if not await batches.wait_in_flight(timeout):
                log.warning("batches still in flight %.0f s into a rebalance: their partitions move on without "
                            "them (the new owner reads them again)", timeout)
        return await on_partitions_revoked(self, revoked)

    async def _on_stop(self):
        batches = _batches
        if batches is not None and batches.busy():
            self.stop_flow()
            batches.drop_queued("the worker stops")
            await batches.wait_in_flight(30.0)  # then faust commits what they acknowledged
        return await on_stop(self)

    return _on_partitions_revoked, _on_stop


_batch_installed = False


def install_batch_loop(batches: StageBatches) -> bool:
    """Replace faust's consumer loop with the batch loop (see above) for `batches`' topics."""
    global _batches, _batch_installed
    from faust.transport.consumer import Consumer

    require_pinned()
    _batches = batches
    if not _batch_installed:
        Consumer._drain_messages = _drain_batches
        Consumer.perform_seek, Consumer.seek = _marking_seeks(Consumer.perform_seek, Consumer.seek)
        Consumer.on_partitions_revoked, Consumer.on_stop = _finishing_batches(Consumer.on_partitions_revoked,
                                                                              Consumer.on_stop)
        _batch_installed = True
    return True


# --- the worker consumer's fetch wait ------------------------------------------------------------
#
# faust 0.15.3 builds the worker's AIOKafkaConsumer with fetch_max_wait_ms=1500 and passes no
# fetch_min_bytes (aiokafka's default, 1 byte): the broker answers a fetch as soon as one message
# is there. At low rates each answer carried a message or two, and each became a batch of its own
# in every stage: a batch's cost is mostly fixed (the fetch response's parsing in aiokafka's thread,
# the state's prefetch and apply, the sweep's floor, two delivery round trips), so the worker used
# as much CPU at 200 events/s as at 2,000 (docs/architecture.md, "Where a hit's latency goes",
# 2026-12-03). Off unless INTELBUS_JOBS_FETCH_MIN_BYTES is above 1: it costs a hop about half
# the wait at low rates.

def with_fetch_wait(create, min_bytes: int, max_wait_ms: int):
    """faust's worker-consumer factory `create(self, transport)`, its consumer asking the broker to
    hold each fetch until `min_bytes` are there or `max_wait_ms` have passed."""
    def _create_worker_consumer(self, transport):
        consumer = create(self, transport)
        # aiokafka 0.14.0 hands these to its Fetcher when the consumer starts (AIOKafkaConsumer.start)
        consumer._fetch_min_bytes = min_bytes
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    _create_worker_consumer.intelbus_fetch_wait = (min_bytes, max_wait_ms)
    return _create_worker_consumer


def install_fetch_wait(min_bytes: int, max_wait_ms: int) -> bool:
    """The worker consumer's fetch.min.bytes and fetch.max.wait.ms (once per process; the values of
    the first call)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    require_pinned()
    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "intelbus_fetch_wait", None) is None:
        AIOKafkaConsumerThread._create_worker_consumer = with_fetch_wait(create, min_bytes, max_wait_ms)
    return True
