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
from collections import OrderedDict, deque
from typing import Callable, Iterable

from stream_jobs.state import loads

log = logging.getLogger("intelbus.jobs")


def freeze(event: dict) -> tuple:
    """An event summary as one flat tuple of keys and plain values (a list becomes a tuple, made
    first: the collector untracks a tuple only once what it holds is untracked)."""
    flat = []
    for k, v in event.items():
        flat.append(k)
        flat.append(tuple(v) if type(v) is list else v)
    return tuple(flat)


def thaw(frozen: tuple) -> dict:
    it = iter(frozen)
    return {k: list(v) if type(v) is tuple else v for k, v in zip(it, it)}


class Lookback:
    """Recent lookups by partition and identifier: (when, event summary), newest last.

    Time is wall-clock seconds, so that lookups read back from Kafka (message timestamps)
    and live ones compare. An event is remembered once per identifier, however often its
    request is read (replays after a crash or a repair).

    What bounds it is time: every lookup of the last `seconds` is kept, up to
    `per_identifier` of one identifier (a guard against one identifier sighted hundreds of
    times in two minutes, not a working limit: with four, a listing read after more than
    four sightings of its person lost the hits of the older ones).

    At 2,000 events/s two minutes are some 240,000 events. Kept as dicts (with a list in
    each), they would be three quarters of a million objects for Python's collector to walk
    in every full collection (300 ms measured, a stall of every hit in flight); kept as
    tuples of plain values they are untracked by the collector after their first young
    collection (24 ms for the same look-back). `remember` freezes an event summary, `recent`
    thaws it: summaries hold plain values and lists of plain values.
    """

    def __init__(self, seconds: float = 120.0, per_identifier: int = 256, identifiers: int = 20_000,
                 clock: Callable[[], float] = time.time):
        self.seconds = seconds
        self.per_identifier = per_identifier
        self.identifiers = identifiers  # per partition; the least recently used are forgotten first
        self.clock = clock
        self._by_partition: dict[int, OrderedDict[str, deque]] = {}

    def remember(self, partition: int, ident: str, event: dict, at: float | None = None) -> None:
        now = self.clock()
        at = now if at is None else at
        seen_by_id = self._by_partition.setdefault(partition, OrderedDict())
        seen = seen_by_id.get(ident)
        if seen is None:
            seen = seen_by_id[ident] = deque(maxlen=self.per_identifier)
            if len(seen_by_id) > self.identifiers:
                seen_by_id.popitem(last=False)
        else:
            seen_by_id.move_to_end(ident)
            horizon = now - self.seconds
            while seen and seen[0][0] < horizon:
                seen.popleft()
            if any(event_id == event["event_id"] for _, event_id, _ in seen):
                return
        seen.append((at, event["event_id"], freeze(event)))

    def recent(self, partition: int, ident: str) -> list[dict]:
        horizon = self.clock() - self.seconds
        seen = self._by_partition.get(partition, {}).get(ident, ())
        return [thaw(frozen) for at, _, frozen in seen if at >= horizon]

    def forget(self, partition: int) -> None:
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
                doc = loads(value)
                events = doc["events"]
                for op in doc["ops"]:
                    if op.get("op") == "lookup":
                        self.remember(partition, op["id"], events[op["event"]], at)
                        n += 1
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
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
        log.info("%s %s: look-back restored, %d lookups of the last %.0f s read back in %.1f s",
                 self.topic, sorted(stops), restored, self.lookback.seconds, time.monotonic() - started)


def read_since(kafka_config: dict, topic: str, stops: dict[int, int], since_ms: int,
               timeout: float = 60.0) -> dict[int, list[tuple[float, bytes]]]:
    """The messages of `topic`'s partitions from the first one at or after `since_ms` (by
    timestamp) up to, not including, `stops[partition]`: (timestamp in seconds, value).

    A plain assigned consumer (no group membership, nothing committed). What cannot be read
    within `timeout` is left out, with a warning: the look-back is then shorter, nothing else."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_config, "group.id": "intelbus-jobs-lookback", "enable.auto.commit": False,
                         "enable.partition.eof": False, "fetch.max.bytes": 64 * 1024 * 1024})
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in stops], timeout=timeout)
        starts = {tp.partition: tp.offset for tp in found
                  if tp.error is None and 0 <= tp.offset < stops[tp.partition]}
        out: dict[int, list[tuple[float, bytes]]] = {p: [] for p in starts}
        if not starts:
            return out
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        remaining = set(starts)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.5):
                if msg.error():
                    continue
                p = msg.partition()
                if p not in remaining:
                    continue
                if msg.offset() >= stops[p]:
                    remaining.discard(p)
                    continue
                out[p].append((msg.timestamp()[1] / 1000, msg.value()))
                if msg.offset() >= stops[p] - 1:
                    remaining.discard(p)
        if remaining:
            log.warning("%s %s: look-back not read to its end within %.0f s; it is shorter for them",
                        topic, sorted(remaining), timeout)
        return out
    finally:
        consumer.close()
