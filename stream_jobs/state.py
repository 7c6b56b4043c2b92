"""Keyed, partitioned state for the stages, written once per batch.

A stage reads with `get` and writes with `put`; nothing leaves the process until `drain()`
hands the batch's writes to whoever persists them (the faust table adapter in
`stream_jobs.tables` writes them to the table's changelog topic and store). Reads see the
batch's own writes, so a duplicate inside one batch is still a duplicate.
"""
from __future__ import annotations

import bisect
import json
import logging
from typing import Callable, Protocol

log = logging.getLogger("intelbus.jobs")


class PartitionedState(Protocol):
    def get(self, partition: int, key: bytes) -> bytes | None: ...
    def prefetch(self, partition: int, keys) -> None: ...
    def put(self, partition: int, key: bytes, value: bytes | None) -> None: ...
    def scan(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes | None]]: ...
    def drain(self) -> dict[int, dict[bytes, bytes | None]]: ...


RESERVED = b"\x00"  # first byte of the tables' own keys; state keys (record keys, identifiers, hit ids) are printable
COUNT_KEY = RESERVED + b"entries"  # a partition's number of entries, a write of every batch that changes it


class BatchOverlay:
    """Buffers a batch's writes over a read function; `drain()` returns and clears them.

    `prefetch` reads the keys a batch is about to ask for in one call (RocksDB's multi-get:
    the store releases and retakes the GIL once per batch instead of once per key, and
    the worker's consumer thread wants the GIL too). What was fetched serves `get` until
    the batch is drained.

    Each partition counts its entries (COUNT_KEY): a write that adds a key or deletes one
    changes the count, and the batch writes the new count with its other writes, so it is
    recovered with them. A partition without a count yet (a table from before counting)
    gets one from the expiry sweep's first full pass (`Sweeper`).
    """

    def __init__(self, read, read_many=None, scan=None):
        self._read = read  # (partition, key) -> bytes | None, the persisted value
        self._read_many = read_many  # (partition, [key]) -> [bytes | None], or None: one by one
        self._scan = scan  # (partition, after, limit) -> [(key, value)], persisted, in key order
        self._pending: dict[int, dict[bytes, bytes | None]] = {}
        self._fetched: dict[int, dict[bytes, bytes | None]] = {}
        self._added: dict[int, int] = {}  # partition -> entries added minus deleted by this batch
        # earlier batches' writes drained with `hold=True`, oldest first, until `release`d: on
        # their way to Kafka while the next batch runs (they are in the store only after that)
        self._held: list[dict[int, dict[bytes, bytes | None]]] = []

    def get(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None and key in pending:
            return pending[key]
        if self._held:
            for held in reversed(self._held):
                part = held.get(partition)
                if part is not None and key in part:
                    return part[key]
        fetched = self._fetched.setdefault(partition, {})
        if key in fetched:
            return fetched[key]
        value = fetched[key] = self._read(partition, key)
        return value

    def prefetch(self, partition: int, keys) -> None:
        fetched = self._fetched.setdefault(partition, {})
        wanted = [k for k in dict.fromkeys(keys) if k not in fetched]
        if not wanted:
            return
        if self._read_many is None:
            for k in wanted:
                fetched[k] = self._read(partition, k)
        else:
            fetched.update(zip(wanted, self._read_many(partition, wanted)))

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if key[:1] != RESERVED:
            delta = (value is not None) - (self.get(partition, key) is not None)  # the stages read before they write
            if delta:
                self._added[partition] = self._added.get(partition, 0) + delta
        self._pending.setdefault(partition, {})[key] = value

    def count(self, partition: int) -> int | None:
        """The partition's entries as this batch sees them; None if it has no count yet."""
        raw = self.get(partition, COUNT_KEY)
        return None if raw is None else int(raw) + self._added.get(partition, 0)

    def scan(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes | None]]:
        """Up to `limit` persisted keys of the partition after `after` (None: from the first), in
        key order, each with its value as this batch sees it (None: deleted in this batch). Fewer
        than `limit`: the partition's end was reached. Keys the batch added are not in it."""
        if self._scan is None:
            return []
        items = self._scan(partition, after, limit)
        if items:  # the store's values, as `get` would read them: a sweep's `put` of one reads no more
            fetched = self._fetched.setdefault(partition, {})
            for k, v in items:
                fetched.setdefault(k, v)
        for layer in (*self._held, self._pending):
            written = layer.get(partition)
            if written:
                items = [(k, written[k]) if k in written else (k, v) for k, v in items]
        return items

    def drain(self, *, hold: bool = False) -> dict[int, dict[bytes, bytes | None]]:
        """The batch's writes, cleared from the overlay. With `hold`, later batches still read
        them until `release(writes)`: the caller processes its next batch while these are
        delivered, and releases them once they are in the store (or the worker exits)."""
        for partition, added in self._added.items():
            counted = self.get(partition, COUNT_KEY) if added else None
            if counted is not None:
                self._pending.setdefault(partition, {})[COUNT_KEY] = b"%d" % (int(counted) + added)
        pending, self._pending = self._pending, {}
        self._fetched, self._added = {}, {}
        if hold and pending:
            self._held.append(pending)
        return pending

    def release(self, writes: dict) -> None:
        """Writes drained with `hold` are in the store now: reads go to the store for them again."""
        for i, held in enumerate(self._held):
            if held is writes:
                del self._held[i]
                return


class MemoryState(BatchOverlay):
    """Plain dict state: for unit tests and tools; `commit()` applies drained writes."""

    def __init__(self):
        self.data: dict[int, dict[bytes, bytes]] = {}
        self._sorted: dict[int, list[bytes]] = {}  # each partition's keys in order, for scan
        self.deleted: list[tuple[int, bytes]] = []  # every deletion committed, in order (tests read it)
        super().__init__(lambda p, k: self.data.get(p, {}).get(k), scan=self._scan_sorted)

    def _scan_sorted(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        keys = self._sorted.get(partition, [])
        start = 0 if after is None else bisect.bisect_right(keys, after)
        part = self.data[partition] if keys else {}
        return [(k, part[k]) for k in keys[start:start + limit]]

    def commit(self) -> int:
        return self.apply(self.drain())

    def apply(self, writes: dict[int, dict[bytes, bytes | None]], offsets=None) -> int:
        """Write drained writes into the dict (releasing them if they were held)."""
        self.release(writes)
        for partition, items in writes.items():
            part = self.data.setdefault(partition, {})
            keys = self._sorted.setdefault(partition, [])
            for key, value in items.items():
                if value is None:
                    if part.pop(key, None) is not None:
                        del keys[bisect.bisect_left(keys, key)]
                        self.deleted.append((partition, key))
                else:
                    if key not in part:
                        bisect.insort(keys, key)
                    part[key] = value
        return sum(len(v) for v in writes.values())

    def entries(self) -> int:
        return sum(1 for p in self.data.values() for k in p if k[:1] != RESERVED)


# --- expiry -------------------------------------------------------------------------------

CURSOR_KEY = RESERVED + b"sweep"  # where the sweep is: b"<entries kept so far in this pass>:<last key walked>"
FAUST_OFFSET_KEY = b"__faust\x00offset__"  # faust's RocksDB store keeps a partition's changelog offset here
KEEP = object()


class Sweeper:
    """Deletes what is past its window from a table, a bounded slice of keys per batch.

    A stage calls `sweep` for each partition of a batch after its own work, so the deletions
    are writes of that batch: produced to the changelog as tombstones (value None) with the
    batch's other writes and applied with them, or not at all. Compaction then drops the
    key, and a recovery (which replays the changelog) does not bring it back.

    Which keys are old is found by walking the partition in key order, `per_message` keys
    for each message of the batch (at least `minimum` once a `floor_every_ms` of the batches'
    clock, see below), from a cursor kept in the table
    itself (CURSOR_KEY, a write of the batch): a batch read again after a crash walks the
    same slice and decides the same, and a restarted worker goes on where it was. Nothing is
    kept in memory per key. A table gains at most one key per message, so with two keys
    walked per message a pass over a partition takes at most half as many messages as the
    partition holds keys, and an entry outlives its window by at most that pass.

    A partition without an entry count (COUNT_KEY; a table from before counting) gets the
    number of entries its first full pass kept (keys added behind the cursor during that
    pass are missed once); from then on every batch's writes keep it exact.

    The floor of `minimum` keys keeps a quiet partition's sweep going (a bus busy last week and
    quiet now still has last week's entries to delete), but only once a `floor_every_ms` of
    the clock the batches bring, per partition: applied to every batch, a quiet bus's many
    batches of a message or two each walked and JSON-decoded 64 keys a partition, 43% of a
    worker's CPU at 200 events/s (py-spy, 2026-12-01), and each batch passed its hits on that
    much later. When the floor last applied is kept in memory: a new process applies it
    at once, which only walks further (what goes is decided by the entry alone).

    decide(value, clock_ms) -> KEEP, None (delete) or new bytes (the entry shrunk).
    """

    def __init__(self, decide: Callable, *, per_message: int = 2, minimum: int = 64, floor_every_ms: int = 1000):
        self.decide = decide
        self.per_message = per_message
        self.minimum = minimum
        self.floor_every_ms = floor_every_ms
        self._floor_at: dict[int, int] = {}  # partition -> the batch clock the floor last applied at

    def slice_for(self, partition: int, messages: int, clock_ms: int) -> int:
        """How many keys this batch walks in the partition: `per_message` a message, or the floor
        if that is more and the partition has not had it within `floor_every_ms`."""
        limit = self.per_message * messages
        if limit < self.minimum:
            last = self._floor_at.get(partition)
            if last is None or clock_ms - last >= self.floor_every_ms or clock_ms < last:
                self._floor_at[partition] = clock_ms
                limit = self.minimum
        return limit

    def sweep(self, state: PartitionedState, partition: int, messages: int, clock_ms: int) -> tuple[int, int]:
        """Walk the next slice of the partition; returns (keys examined, keys deleted)."""
        limit = self.slice_for(partition, messages, clock_ms)
        if limit <= 0:  # a batch that adds no key, within the floor's second: nothing to walk
            return 0, 0
        raw = state.get(partition, CURSOR_KEY)
        kept_before, cursor = (0, None) if raw is None else (int(raw.partition(b":")[0]), raw.partition(b":")[2])
        items = state.scan(partition, cursor, limit)
        deleted = kept = 0
        for key, value in items:
            if value is None or key[:1] == RESERVED or key == FAUST_OFFSET_KEY:
                continue
            try:
                verdict = self.decide(value, clock_ms)
            except Exception:  # an entry we cannot read is left as it is, never a stalled partition
                log.warning("state entry %r of partition %d could not be judged for expiry; kept", key[:80],
                            partition, exc_info=True)
                verdict = KEEP
            if verdict is not KEEP:
                state.put(partition, key, verdict)
            if verdict is None:
                deleted += 1
            else:
                kept += 1
        if len(items) >= limit:
            after = b"%d:" % (kept_before + kept) + items[-1][0]
        else:  # the end: the next pass starts over
            after = None
            if state.count(partition) is None:
                state.put(partition, COUNT_KEY, b"%d" % (kept_before + kept))
        if after != raw:
            state.put(partition, CURSOR_KEY, after)
        return len(items), deleted


try:  # faust-streaming's [orjson] extra: the same JSON, 5-10 times faster both ways
    import orjson

    _orjson_dumps, _NON_STR_KEYS = orjson.dumps, orjson.OPT_NON_STR_KEYS

    def dumps(obj) -> bytes:
        # OPT_NON_STR_KEYS makes every call 2-3 times slower (measured: 0.27 against 0.66 us for a
        # dedupe entry), and the jobs' documents have string keys: the option only when one has not
        try:
            return _orjson_dumps(obj)
        except TypeError:  # orjson.JSONEncodeError: a key that is not a string (or a value JSON has no form for)
            return _orjson_dumps(obj, option=_NON_STR_KEYS)

    def loads(data: bytes | None):
        return None if data is None else orjson.loads(data)

except ImportError:  # pragma: no cover - the project installs it
    def dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | None):
        return None if data is None else json.loads(data)
