"""The matcher's look-back: the lookups of the last minutes, per partition.

The three input topics are not read in publication order, so a check can reach the
matcher before the listing it sights: the matcher remembers recent lookups and, when a
record is indexed, matches it against them too (`MatchStage._add`).

The memory is a worker's, not a table's: writing every lookup to a changelog would cost a
state write per identifier of every event. It is rebuilt instead from the topic the
lookups came from. When a worker gets a partition of `intel.match.requests` (at start,
after a crash, in a rebalance), `LookbackRestorer` reads that partition's requests of the
last `seconds` (2 minutes by default) again, up to the first one the worker is about to process, and remembers
their lookups before the batch runs. So a listing read after a restart still hits a
sighting looked up before it, as it would have without the restart.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from schemas import catalog
from stream_jobs.internal import InternalFormatError, LookupOp, decode_match_request
from stream_jobs.state import dumps, loads

log = logging.getLogger("intelbus.jobs")


ENTRY, FIELD = b"\x1e", b"\x1f"  # control bytes: JSON writes them escaped, never raw


class Lookback:
    """Recent lookups by partition and identifier, newest last.

    Time is wall-clock seconds, so that lookups read back from Kafka (message timestamps)
    and live ones compare. An event is remembered once per identifier, however often its
    request is read (replays after a crash or a repair).

    What bounds it is time: every lookup of the last `seconds` is kept (a look-back of the
    last four lookups of an identifier lost hits: a listing read after more than four
    sightings of its person). Guards: `per_identifier` lookups of one identifier (one
    identifier sighted hundreds of times in two minutes), and `max_entries` in all (when
    they are reached the oldest slice of time is forgotten early, with a warning).

    Nothing in it is an object Python's collector tracks. Two minutes at 2,000 events/s
    are some 300,000 lookups; kept as dicts, tuples and a deque per identifier they made the
    worker's young collections walk 100,000-300,000 new objects each (0.1-0.8 s, every
    hit in flight waiting: measured in the e2e benchmark's runs). So time is cut into
    `slices` slices; a slice maps an identifier (str) to its lookups packed in one bytes
    value (`at FIELD event_id FIELD summary-json`, entries joined by ENTRY), and a slice
    past the look-back is dropped whole. A dict of str to bytes is never tracked.
    """

    def __init__(self, seconds: float = 120.0, per_identifier: int = 256, max_entries: int = 1_000_000,
                 slices: int = 4, clock: Callable[[], float] = time.time):
        self.seconds = seconds
        self.per_identifier = per_identifier
        self.max_entries = max_entries
        self.width = seconds / slices
        self.clock = clock
        # partition -> slice number (int(at / width)) -> identifier -> packed lookups
        self._by_partition: dict[int, dict[int, dict[str, bytes]]] = {}
        self._counts: dict[tuple[int, int], int] = {}  # (partition, slice) -> entries
        self.entries = 0

    def _expire(self, now: float) -> None:
        oldest = int((now - self.seconds) // self.width)
        for partition, slices in self._by_partition.items():
            for n in [n for n in slices if n < oldest]:
                self._drop(partition, n)

    def _drop(self, partition: int, n: int) -> None:
        del self._by_partition[partition][n]
        self.entries -= self._counts.pop((partition, n), 0)

    def remember(self, partition: int, ident: str, event: dict, at: float | None = None) -> None:
        now = self.clock()
        horizon = now - self.seconds
        at = now if at is None else at
        if at < horizon:
            return
        slices = self._by_partition.setdefault(partition, {})
        if slices and min(slices) < int(horizon // self.width):
            self._expire(now)
        marker = FIELD + event["event_id"].encode() + FIELD
        seen = 0
        for sl in slices.values():
            packed = sl.get(ident)
            if packed is not None:
                found = packed.find(marker)
                if found >= 0 and float(packed[packed.rfind(ENTRY, 0, found) + 1:found]) >= horizon:
                    return
                seen += packed.count(ENTRY) + 1
        if seen >= self.per_identifier:  # the guard: the oldest lookup of a hot identifier makes room
            self._drop_oldest(partition, ident)
        n = int(at // self.width)
        sl = slices.setdefault(n, {})
        entry = b"%.3f" % at + marker + dumps(event)
        have = sl.get(ident)
        sl[ident] = entry if have is None else have + ENTRY + entry
        self._counts[(partition, n)] = self._counts.get((partition, n), 0) + 1
        self.entries += 1
        if self.entries > self.max_entries:
            self._shorten()

    def _drop_oldest(self, partition: int, ident: str) -> None:
        slices = self._by_partition[partition]
        n = min(n for n, sl in slices.items() if ident in sl)
        rest = slices[n][ident].split(ENTRY, 1)[1:]
        if rest:
            slices[n][ident] = rest[0]
        else:
            del slices[n][ident]
        self._counts[(partition, n)] -= 1
        self.entries -= 1

    def _shorten(self) -> None:
        """Forget the oldest slice of every partition until there is room again."""
        while self.entries > self.max_entries * 0.9 and any(self._by_partition.values()):
            oldest = min(n for slices in self._by_partition.values() for n in slices)
            for partition, slices in self._by_partition.items():
                if oldest in slices:
                    self._drop(partition, oldest)
        log.warning("look-back full (%d lookups): the oldest lookups were forgotten early; it covers less than %.0f s "
                    "(Lookback.max_entries)", self.max_entries, self.seconds)

    def recent(self, partition: int, ident: str) -> list[dict]:
        horizon = self.clock() - self.seconds
        out = []
        for n in sorted(self._by_partition.get(partition, {})):
            packed = self._by_partition[partition][n].get(ident)
            if packed is None:
                continue
            for entry in packed.split(ENTRY):
                at, _, summary = entry.split(FIELD, 2)
                if float(at) >= horizon:
                    out.append(loads(summary))
        return out

    def forget(self, partition: int) -> None:
        for n in list(self._by_partition.get(partition, ())):
            self._drop(partition, n)
        self._by_partition.pop(partition, None)

    def restore(self, partition: int, requests: Iterable[tuple[float, bytes]]) -> int:
        """Remember the lookups of match requests read back (timestamp in seconds, value), oldest
        first; returns how many. A request that does not parse is skipped: the match stage
        dead-lettered it when it was first read."""
        n = 0
        horizon = self.clock() - self.seconds
        for at, value in requests:
            if at < horizon:
                continue
            try:
                req = decode_match_request(value)
            except InternalFormatError:
                continue
            for op in req.ops:
                if type(op) is LookupOp:
                    self.remember(partition, op.id, req.events[op.event], at)
                    n += 1
        return n


class LookbackRestorer:
    """Rebuilds the look-back of a match-request partition the worker did not have before.

    `on_assigned` takes the worker's new assignment of the topic (faust's signal after every
    rebalance); a partition gained is forgotten and marked, one lost is forgotten. `before`
    runs ahead of each match batch: for the marked partitions in it, the requests of the
    last `lookback.seconds` up to the batch's first offset there are read (`read`, in a
    thread, so faust's consumer and heartbeats go on) and restored.

    read(partition -> stop offset, since epoch ms) -> partition -> [(timestamp s, value)]
    """

    def __init__(self, lookback: Lookback, read, *, topic: str):
        self.lookback = lookback
        self.read = read
        self.topic = topic
        self.owned: set[int] = set()
        self.pending: set[int] = set()

    def on_assigned(self, partitions: Iterable[int]) -> None:
        now = set(partitions)
        for p in self.owned - now:
            self.lookback.forget(p)
            self.pending.discard(p)
        for p in now - self.owned:
            self.lookback.forget(p)
            self.pending.add(p)
        self.owned = now

    async def before(self, batch) -> None:
        stops: dict[int, int] = {}
        for msg in batch:
            if msg.partition in self.pending:
                stops[msg.partition] = min(msg.offset, stops.get(msg.partition, msg.offset))
        if not stops:
            return
        started = time.monotonic()
        since_ms = int((self.lookback.clock() - self.lookback.seconds) * 1000)
        loop = asyncio.get_running_loop()
        self.pending.difference_update(stops)
        try:
            found = await loop.run_in_executor(None, self.read, stops, since_ms)
        except Exception:  # Kafka away, say: the worker goes on with a shorter look-back
            log.warning("%s %s: the look-back could not be read back; it starts empty", self.topic, sorted(stops),
                        exc_info=True)
            return
        restored = sum(self.lookback.restore(p, found.get(p, ())) for p in stops)
        waited = time.monotonic() - started
        from stream_jobs import metrics

        metrics.LOOKBACK_RESTORED.inc(restored)
        metrics.LOOKBACK_RESTORE_SECONDS.inc(waited)
        log.info("%s %s: look-back restored, %d lookups of the last %.0f s read back in %.1f s",
                 self.topic, sorted(stops), restored, self.lookback.seconds, waited)


def read_since(kafka_config: dict, topic: str, stops: dict[int, int] | None, since_ms: int,
               timeout: float = 60.0, *, group: str = "intelbus-jobs-lookback", take=None,
               short: str = "the look-back is shorter for them") -> dict[int, list]:
    """The messages of `topic`'s partitions from the first one at or after `since_ms` (by
    timestamp) up to, not including, `stops[partition]` (None: every partition, to its current
    end), each as `take(msg)` (default: (timestamp in seconds, value)).

    A plain assigned consumer (no group membership, nothing committed). What cannot be read
    within `timeout` is left out, with a warning ending in `short` (what that costs). A refusal
    (the principal may not read the topic) raises KafkaException at once: waiting for the
    timeout would only hold the caller up."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    refused = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
               KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError._AUTHENTICATION)
    take = take or (lambda msg: (msg.timestamp()[1] / 1000, msg.value()))
    consumer = Consumer({**kafka_config, "group.id": group, "enable.auto.commit": False,
                         "enable.partition.eof": False, "fetch.max.bytes": 64 * 1024 * 1024})
    try:
        if stops is None:
            described = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if described.error is not None and described.error.code() in refused:
                raise KafkaException(described.error)
            partitions = described.partitions
            stops = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in partitions}
        starts = where_since_begins(consumer, topic, stops, since_ms, timeout, refused=refused, short=short)
        out: dict[int, list] = {p: [] for p in starts}
        if not starts:
            return out
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        remaining = set(starts)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.5):
                if msg.error():
                    if msg.error().code() in refused:  # waiting would not help: say so at once
                        raise KafkaException(msg.error())
                    continue
                p = msg.partition()
                if p not in remaining:
                    continue
                if msg.offset() >= stops[p]:
                    remaining.discard(p)
                    continue
                out[p].append(take(msg))
                if msg.offset() >= stops[p] - 1:
                    remaining.discard(p)
        if remaining:
            log.warning("%s %s: not read to its end within %.0f s; %s", topic, sorted(remaining), timeout, short)
        return out
    finally:
        consumer.close()


def where_since_begins(consumer, topic: str, stops: dict[int, int], since_ms: int, timeout: float, *,
                       refused=(), short: str = "", pause_s: float = 0.5, clock=time.monotonic, sleep=time.sleep
                       ) -> dict[int, int]:
    """partition -> the offset of its first message at or after `since_ms`, for the partitions
    that have one before their stop (`offsets_for_times`, asked again for the partitions it
    answered with an error until `timeout`). A partition whose leader is moving (a broker just
    restarted) answers with an error for a moment (until 2026-12-02 it was skipped silently: its
    look-back restored nothing, and a listing indexed after the restart missed the sighting read
    before it). What is still unanswered at the timeout is logged with `short`; a refusal raises
    at once."""
    from confluent_kafka import KafkaException, TopicPartition

    deadline = clock() + timeout
    asking, starts = dict(stops), {}
    while True:
        errors = {}
        for tp in consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in asking],
                                             timeout=max(1.0, deadline - clock())):
            if tp.error is not None:
                if tp.error.code() in refused:
                    raise KafkaException(tp.error)
                errors[tp.partition] = tp.error
                continue
            asking.pop(tp.partition, None)
            if 0 <= tp.offset < stops[tp.partition]:
                starts[tp.partition] = tp.offset
        if not asking or clock() + pause_s >= deadline:
            break
        sleep(pause_s)
    if asking:
        log.warning("%s %s: where the messages since %d begin was not found within %.0f s (%s); %s", topic,
                    sorted(asking), since_ms, timeout, "; ".join(sorted({str(e) for e in errors.values()})) or "no answer",
                    short)
    return starts


class ReadBack:
    """What of a worker's output is already on its topic, read when the worker gets input
    partitions it did not have (a start, a restart after a crash, a rebalance): the last
    `seconds` of the output, once per such assignment, before the next batch that may emit.

    The worker writes its state only after its outputs were delivered, so after a crash an input
    read again may have had its outputs delivered just before the crash: those found here are not
    sent again (no output lost, none twice). read(since epoch ms) -> a set; `what` names the
    output topic and `items` what is counted, in the log lines."""

    def __init__(self, read, *, seconds: float, what: str, items: str, clock=time.time):
        self.read = read
        self.seconds = seconds
        self.what = what
        self.items = items
        self.clock = clock
        self.owned: set[int] = set()
        self.pending = False

    def on_assigned(self, partitions: Iterable[int]) -> None:
        now = set(partitions)
        if now - self.owned:
            self.pending = True
        self.owned = now

    async def read_back(self) -> set | None:
        """What is on the topic, if this assignment has not been read yet and the read works; else None."""
        if not self.pending:
            return None
        self.pending = False
        started = time.monotonic()
        since_ms = int((self.clock() - self.seconds) * 1000)
        try:
            found = set(await asyncio.get_running_loop().run_in_executor(None, self.read, since_ms))
        except Exception:
            # without it a crash's last outputs could be sent twice (never lost): say so, go on
            log.warning("%s could not be read back; %s delivered just before a crash may be sent again",
                        self.what, self.items, exc_info=True)
            return None
        log.info("%s: %d %s of the last %.0f s read back in %.1f s (not sent again)", self.what, len(found),
                 self.items, self.seconds, time.monotonic() - started)
        return found


class EmittedHits(ReadBack):
    """The hit stage's read-back of `intel.hit` (ReadBack), on new candidate partitions.

    The hit stage writes a hit's seen-id only after every copy of the hit was delivered. After a
    crash, a candidate read again whose seen-id is missing had its copies either not (all)
    delivered, or delivered just before the crash and its seen-id not: the copies on
    `intel.hit` in the last `seconds` tell which, so the stage sends exactly the missing ones.
    `before` runs ahead of each hits batch; read(since epoch ms) -> {(hit id, province key)}."""

    def __init__(self, stage, read, *, seconds: float, clock=time.time):
        super().__init__(read, seconds=seconds, what=catalog.HIT_TOPIC, items="hit copies", clock=clock)
        self.stage = stage

    async def before(self, batch) -> None:
        if not batch:
            return
        found = await self.read_back()
        if found is not None:
            self.stage.emitted = found


def first_string(value: bytes) -> str | None:
    """The first field of a Confluent-framed Avro record when it is a string (a hit's `hit_id`)."""
    if not value or len(value) < 6 or value[0] != 0:
        return None
    pos, shift, n = 5, 0, 0
    while pos < len(value):
        b = value[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    length = (n >> 1) ^ -(n & 1)
    if length < 0 or pos + length > len(value):
        return None
    return value[pos:pos + length].decode("utf-8", "replace")


def read_first_strings_since(kafka_config: dict, topic: str, since_ms: int, timeout: float = 60.0, *,
                             group: str, short: str) -> set[str]:
    """The first field (a string: the workflow events' `event_id`) of every message of `topic`
    from `since_ms` (by timestamp) to its current end, all partitions (`read_since`)."""
    found = read_since(kafka_config, topic, None, since_ms, timeout, group=group,
                       take=lambda msg: first_string(msg.value()), short=short)
    return {s for values in found.values() for s in values if s is not None}


def read_hit_copies_since(kafka_config: dict, topic: str, since_ms: int, timeout: float = 60.0) -> set[tuple[str, str]]:
    """(hit id, message key) of every message of `topic` from `since_ms` (by timestamp) to its
    current end, all partitions (`read_since`)."""
    def copy(msg):
        hid = first_string(msg.value())
        return (hid, msg.key().decode()) if hid is not None and msg.key() is not None else None

    found = read_since(kafka_config, topic, None, since_ms, timeout, group="intelbus-jobs-emitted", take=copy,
                       short="hits of theirs sent before a crash may be sent again")
    return {c for copies in found.values() for c in copies if c is not None}
