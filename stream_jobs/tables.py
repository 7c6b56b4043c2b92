"""faust tables as `PartitionedState`, written once per batch.

faust writes a table's changelog one message per `table[key] = value`, each through its
own send machinery (about 100 µs a write on the 2-core machines we run on; see
../shared/FAUST-NOTES.md). The stages instead collect a batch's writes and this adapter
puts them in the same places faust would: the table's changelog topic (same partition
as the source message, so faust's recovery and standby replicas work unchanged), then the
table's store, with the changelog offset recorded as the store's persisted offset so a
restart with RocksDB recovers only what is newer than the store.
"""
from __future__ import annotations

import functools
import heapq

from faust.types import TP

from stream_jobs import metrics
from stream_jobs.state import COUNT_KEY, RESERVED, BatchOverlay


# RocksDB's memory per partition store (a worker holds one per partition and table: 18 with
# 6 partitions). faust's defaults are 3 memtables of 64 MiB and a block cache of 2 GiB per
# store: a worker's resident memory grew with every write until the memtables were full
# (1.4-2.6 KiB an event, measured), whatever the table held. The data stays on disk and in
# the OS's page cache; what is hot fits these.
ROCKSDB_OPTIONS = {"write_buffer_size": 8 * 2**20, "max_write_buffer_number": 2, "block_cache_size": 16 * 2**20}

# ... and for the worker as a whole. Per store, the options above still let 18 stores hold
# 18 x (2 x 8 + 16) = 576 MiB, filled slowly (each store gets a sixth of a table's writes):
# 23 MiB more per 100,000 events after the first 100,000 with the tables flat (the stages
# over RocksDB without Kafka, `bench.bench_state --offline`; bench/results/state.md). So every store of the worker
# shares one block cache and one memtable budget (RocksDB's WriteBufferManager: a store past
# its share is flushed early), and index and filter blocks are kept in that cache rather than
# beside it, so that what RocksDB holds is bounded by these two figures however many stores,
# partitions and files there are.
# INTELBUS_JOBS_ROCKSDB_CACHE_MIB / _MEMTABLES_MIB change the two; INTELBUS_JOBS_ROCKSDB_SHARED=0
# goes back to the per-store options alone (the state soak's baseline).
ROCKSDB_WORKER_CACHE_MIB = 32
ROCKSDB_WORKER_MEMTABLES_MIB = 48
_shared: dict = {}


def worker_budget_mib(settings=None) -> tuple[int, int] | None:
    """(block cache, memtables) in MiB for the worker's stores together; None: per store."""
    if settings is None:  # faust makes the stores, without the worker's settings at hand
        from ops.settings import load_settings

        settings = load_settings()
    if not settings.jobs_rocksdb_shared:
        return None
    return settings.jobs_rocksdb_cache_mib, settings.jobs_rocksdb_memtables_mib


# The clock cache sizes its table by this estimate of a cached block (data blocks are 4 KiB
# before compression, index and filter blocks larger).
CLOCK_CACHE_ENTRY_BYTES = 8192


def worker_rocksdb_budget() -> tuple:
    """The worker's one block cache and one write buffer manager (made on first use)."""
    if not _shared:
        import rocksdict

        cache_mib, memtables_mib = worker_budget_mib() or (ROCKSDB_WORKER_CACHE_MIB, ROCKSDB_WORKER_MEMTABLES_MIB)
        # RocksDB's clock cache, not its LRU cache: with the index and filter blocks in it, an LRU
        # cache of 32 MiB (64 shards of 512 KiB) churns them (a records store's filter block is
        # 0.3-0.4 MiB), and a read of a key cost 8.6-9.0 us against 3.5-3.7 us with this cache of
        # the same capacity (offline, copies of a worker's stores, 2026-12-03; bench/results/jobs-loops.md).
        _shared["cache"] = rocksdict.Cache.new_hyper_clock_cache(cache_mib * 2**20, CLOCK_CACHE_ENTRY_BYTES)
        _shared["memtables"] = rocksdict.WriteBufferManager(memtables_mib * 2**20, False)
    return _shared["cache"], _shared["memtables"]


# Bits per key of every store's bloom filter (faust's default is 3: about a quarter of the
# lookups of a key that is not there still read a data block). Most of the jobs' reads are of
# such keys: of an event's identifiers, a few in a hundred are in the index.
BLOOM_BITS_PER_KEY = 10


@functools.cache
def _store_options_class():
    from faust.stores.rocksdb import RocksDBOptions

    class StoreOptions(RocksDBOptions):
        """faust's options for a store, kept when the store is opened again, with the worker's shared
        cache and memtable budget when `budgeted`.

        rocksdict opens a store that exists with the column families' options it loads from the
        store's OPTIONS file when it is given `options` alone (rocksdict 0.3.29, `Rdict.new`), and a
        loaded table keeps neither its bloom filter nor its cache: from a worker's first restart on,
        every store ran with no filter and a cache of 8 MiB of its own (measured 2026-12-02: a look-up
        of a key not in the index 4.2 us against 0.46 us in the same store written afresh; the match
        stage's reads 11-12 us a key in a drain, a tenth of the worker's time). So the default
        column family is given these options by name."""

        budgeted = False

        def as_options(self):
            options = super().as_options()
            if not self.use_rocksdict:  # python-rocksdb: faust's own options (not what we install)
                return options
            import rocksdict

            table = rocksdict.BlockBasedOptions()
            table.set_bloom_filter(max(self.bloom_filter_size, BLOOM_BITS_PER_KEY), False)
            table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            if self.budgeted:
                cache, memtables = worker_rocksdb_budget()
                table.set_block_cache(cache)
                table.set_cache_index_and_filter_blocks(True)
                table.set_pin_l0_filter_and_index_blocks_in_cache(True)
                options.set_write_buffer_manager(memtables)
            else:
                table.set_block_cache(rocksdict.Cache(self.block_cache_size))
            options.set_block_based_table_factory(table)
            return options

        def open(self, path, *, read_only: bool = False):
            if not self.use_rocksdict:
                return super().open(path, read_only=read_only)
            import rocksdict

            options = self.as_options()
            access = rocksdict.AccessType.read_write() if self.ttl is None else rocksdict.AccessType.with_ttl(self.ttl)
            db = rocksdict.Rdict(str(path), options=options, column_families={"default": options}, access_type=access)
            db.set_read_options(rocksdict.ReadOptions())
            return db

    return StoreOptions


def budget_store(store) -> bool:
    """Give a faust RocksDB store (no partition opened yet) our options (`StoreOptions`), with the
    worker's shared budget unless it is turned off; False for a store that is not RocksDB's
    (memory://), that has opened partitions already, or that runs without the shared budget."""
    options = getattr(store, "rocksdb_options", None)
    if options is None or getattr(store, "_dbs", None):
        return False
    cls = _store_options_class()
    if not isinstance(options, cls):
        ours = cls.__new__(cls)
        ours.__dict__.update(options.__dict__)
        store.rocksdb_options = options = ours
    options.budgeted = worker_budget_mib() is not None
    return options.budgeted


class FaustTableState(BatchOverlay):
    def __init__(self, table):
        self.table = table
        if getattr(table, "_data", None) is None:  # the store is made on first use, with the table's options
            table.options = {**ROCKSDB_OPTIONS, **(table.options or {})}
            make_store = table._new_store

            def _new_store():  # faust makes the store on first use, on its own loop: budgeted then
                store = make_store()
                budget_store(store)
                return store

            table._new_store = _new_store
        super().__init__(self._read, self._read_many, self._scan_store)
        metrics.STATE_SIZES.watch(table.name, self)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    @property
    def _store(self):
        return self.table.data

    def _is_rocksdb(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def _read(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if self._is_rocksdb():
            return store._db_for_partition(partition).get(key)
        return store.data.get(key)

    def _read_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        store = self._store
        if self._is_rocksdb():
            return store._db_for_partition(partition).get(keys)  # rocksdict: a list is a multi-get
        data = store.data
        return [data.get(k) for k in keys]

    def _scan_store(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        store = self._store
        if self._is_rocksdb():
            it = store._db_for_partition(partition).iter()
            if after is None:
                it.seek_to_first()
            else:
                it.seek(after)
                if it.valid() and it.key() == after:
                    it.next()
            out = []
            while len(out) < limit and it.valid():
                out.append((it.key(), it.value()))
                it.next()
            return out
        # faust's memory store keeps every partition in one dict: a walk of all of it (tests, tools)
        data, key_partition = store.data, store._key_partition
        keys = heapq.nsmallest(limit, (k for k, p in key_partition.items()
                                       if p == partition and (after is None or k > after) and k in data))
        return [(k, data[k]) for k in keys]

    def entries(self) -> int:
        """Entries in the partitions this worker holds, by each partition's count (COUNT_KEY).
        A partition not counted yet (before the expiry sweep's first pass over a table from
        before counting) gives RocksDB's estimate, which overwrites and deletions make loose.
        Called by Prometheus's scrape thread: a table whose store is not made yet counts 0. Making
        it there tied the table to a new event loop of that thread, which never runs: the table's
        tasks were started on it, and the worker's stop waited for them forever (SIGKILLed)."""
        if getattr(self.table, "_data", None) is None:
            return 0
        store = self._store
        if not self._is_rocksdb():
            return sum(1 for k in list(store.data) if k[:1] != RESERVED)
        total = 0
        for db in list(store._dbs.values()):
            counted = db.get(COUNT_KEY)
            total += int(counted) if counted is not None else max(0, db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    def apply(self, writes: dict[int, dict[bytes, bytes | None]], offsets: dict[int, int]) -> None:
        """Write delivered changelog records into the store; offsets: partition -> last changelog
        offset. Writes drained with `hold` are released: reads find them in the store now."""
        try:
            self._write(writes, offsets)
        finally:
            self.release(writes)

    def _write(self, writes: dict[int, dict[bytes, bytes | None]], offsets: dict[int, int]) -> None:
        store = self._store
        if self._is_rocksdb():
            from rocksdict import WriteBatch

            for partition, items in writes.items():
                batch = WriteBatch(raw_mode=True)
                for key, value in items.items():
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                store._db_for_partition(partition).write(batch)
                if partition in offsets:
                    store.set_persisted_offset(TP(self.changelog_topic, partition), offsets[partition])
            return
        data, key_partition = store.data, store._key_partition
        for partition, items in writes.items():
            for key, value in items.items():
                if value is None:
                    data.pop(key, None)
                    key_partition.pop(key, None)
                else:
                    data[key] = value
                    key_partition[key] = partition
