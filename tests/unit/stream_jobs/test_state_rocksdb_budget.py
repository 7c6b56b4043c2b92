"""The worker's RocksDB stores share one block cache and one memtable budget (stream_jobs.tables)."""
from __future__ import annotations

import faust
import pytest

from stream_jobs import tables
from stream_jobs.tables import ROCKSDB_OPTIONS, FaustTableState


def table_state(tmp_path, name):
    app = faust.App(f"test-budget-{name}", store="rocksdb://", datadir=str(tmp_path / name))
    table = app.Table(name, partitions=6)
    table.key_serializer = table.value_serializer = "raw"
    return FaustTableState(table)


def capacity(state, partition):
    return state.table.data._db_for_partition(partition).property_int_value("rocksdb.block-cache-capacity")


@pytest.fixture(autouse=True)
def fresh_budget(monkeypatch):
    monkeypatch.setattr(tables, "_shared", {})
    for name in ("INTELBUS_JOBS_ROCKSDB_SHARED", "INTELBUS_JOBS_ROCKSDB_CACHE_MIB", "INTELBUS_JOBS_ROCKSDB_MEMTABLES_MIB"):
        monkeypatch.delenv(name, raising=False)


def test_every_store_of_the_worker_reads_through_one_cache_of_the_workers_size(tmp_path):
    records, index = table_state(tmp_path, "records"), table_state(tmp_path, "index")
    for p in range(6):
        records.put(p, b"k", b"x" * 5000)
        index.put(p, b"k", b"y" * 5000)
    records.apply(records.drain(), {})
    index.apply(index.drain(), {})
    for state in (records, index):
        for p in range(6):
            db = state.table.data._db_for_partition(p)
            db.flush()  # to a table file, so reads go through the block cache
            assert db.get(b"k") is not None
    assert {capacity(s, p) for s in (records, index) for p in range(6)} == {tables.ROCKSDB_WORKER_CACHE_MIB * 2**20}
    usages = {s.table.data._db_for_partition(p).property_int_value("rocksdb.block-cache-usage")
              for s in (records, index) for p in range(6)}
    assert len(usages) == 1 and usages.pop() >= 12 * 5000  # one cache: each store reports the same usage, all blocks in it
    assert tables.worker_rocksdb_budget()[1].get_buffer_size() == tables.ROCKSDB_WORKER_MEMTABLES_MIB * 2**20


def test_the_budget_is_configurable_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("INTELBUS_JOBS_ROCKSDB_CACHE_MIB", "8")
    assert capacity(table_state(tmp_path, "a"), 0) == 8 * 2**20
    monkeypatch.setenv("INTELBUS_JOBS_ROCKSDB_SHARED", "0")  # per store: faust's options from ROCKSDB_OPTIONS
    assert capacity(table_state(tmp_path, "b"), 0) == ROCKSDB_OPTIONS["block_cache_size"]


def test_a_store_with_open_partitions_keeps_its_options(tmp_path, monkeypatch):
    monkeypatch.setenv("INTELBUS_JOBS_ROCKSDB_SHARED", "0")
    state = table_state(tmp_path, "open")
    store = state.table.data
    assert capacity(state, 0) == ROCKSDB_OPTIONS["block_cache_size"]
    monkeypatch.setenv("INTELBUS_JOBS_ROCKSDB_SHARED", "1")
    before = store.rocksdb_options
    assert tables.budget_store(store) is False  # a partition is open: its options stay those it was opened with
    assert store.rocksdb_options is before and capacity(state, 1) == ROCKSDB_OPTIONS["block_cache_size"]


def filter_policy(state, partition):
    """The filter policy the store runs with, as RocksDB wrote it in the store's newest OPTIONS file."""
    directory = state.table.data.partition_path(partition)
    newest = max(directory.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    return [line.split("=", 1)[1].strip() for line in newest.read_text().splitlines()
            if line.strip().startswith("filter_policy=")]


@pytest.mark.parametrize("shared", ["1", "0"])
def test_a_store_opened_again_keeps_its_bloom_filter_and_cache(tmp_path, monkeypatch, shared):
    # rocksdict 0.3.29 opens a store that exists with the table options it loads from the store's
    # OPTIONS file unless the default column family's are named: the reopened store had no bloom
    # filter and a private 8 MiB cache, so every look-up of a key it does not hold read a data block
    monkeypatch.setenv("INTELBUS_JOBS_ROCKSDB_SHARED", shared)
    expected = tables.ROCKSDB_WORKER_CACHE_MIB * 2**20 if shared == "1" else ROCKSDB_OPTIONS["block_cache_size"]
    first = table_state(tmp_path, "again")
    first.put(0, b"IDENTIFIER", b"x" * 100)
    first.apply(first.drain(), {})
    assert filter_policy(first, 0) == ["bloomfilter"] and capacity(first, 0) == expected  # the control: a new store
    for db in first.table.data._dbs.values():
        db.close()
    first.table.data._dbs.clear()

    again = table_state(tmp_path, "again")  # the worker restarted: same data directory
    assert again.get(0, b"IDENTIFIER") == b"x" * 100
    assert filter_policy(again, 0) == ["bloomfilter"]
    assert capacity(again, 0) == expected
