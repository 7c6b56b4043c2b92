"""FaustTableState over faust's own RocksDB store (rocksdict, in a temporary directory)."""
from __future__ import annotations

import faust

from stream_jobs.tables import ROCKSDB_OPTIONS, FaustTableState
from stream_jobs.state import COUNT_KEY, CURSOR_KEY, KEEP, Sweeper


def table_state(tmp_path, name="records"):
    app = faust.App(f"test-{name}", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table(name, partitions=6)
    table.key_serializer = table.value_serializer = "raw"
    return FaustTableState(table)


def test_the_stores_memory_is_bounded_by_the_tables_options(tmp_path):
    state = table_state(tmp_path)
    options = state.table.data.rocksdb_options
    assert (options.write_buffer_size, options.max_write_buffer_number, options.block_cache_size) == (
        ROCKSDB_OPTIONS["write_buffer_size"], ROCKSDB_OPTIONS["max_write_buffer_number"], ROCKSDB_OPTIONS["block_cache_size"])


def test_a_sweep_over_rocksdb_deletes_counts_and_resumes_from_its_cursor(tmp_path):
    state = table_state(tmp_path)
    for i in range(30):
        state.put(3, b"k%02d" % i, b"%d" % i)
    state.put(4, b"other", b"0")
    state.apply(state.drain(), {})
    state.table.data._db_for_partition(3).put(b"__faust\x00offset__", b"41")  # faust's own key, as recovery leaves it
    sweeper = Sweeper(lambda value, clock: None if int(value) < clock else KEEP, minimum=12)
    while True:
        sweeper.sweep(state, 3, messages=1, clock_ms=20)
        writes = state.drain()
        state.apply(writes, {})
        if CURSOR_KEY in writes.get(3, {}) and writes[3][CURSOR_KEY] is None:
            break
    assert [k for k, _ in state.scan(3, None, 100) if k[:1] != b"\x00"] == [b"__faust\x00offset__"] + [
        b"k%02d" % i for i in range(20, 30)]  # the offset key is never judged, so never deleted
    assert state.scan(3, b"k25", 2) == [(b"k26", b"26"), (b"k27", b"27")]
    assert state._read(3, COUNT_KEY) == b"10" and state.entries() == 10 + 1  # partition 4 has no count: estimated
    state.put(3, b"k20", None)
    state.put(3, b"new", b"1")
    state.apply(state.drain(), {})
    assert state._read(3, COUNT_KEY) == b"10"
    assert state._read(3, b"k20") is None and state._read(3, b"new") == b"1"


def test_a_scrape_before_the_worker_starts_leaves_the_table_to_the_workers_event_loop(tmp_path):
    """/metrics is served (and scraped: readiness polls, Prometheus) before faust starts the tables.
    A scrape that made the store from its own thread tied the table to a new event loop of that
    thread, which never runs: the worker's stop then waited for the table's tasks forever."""
    import asyncio
    import threading

    state = table_state(tmp_path)
    counted = []
    scrape = threading.Thread(target=lambda: counted.append(state.entries()))
    scrape.start()
    scrape.join(10)
    assert counted == [0]  # nothing held yet

    async def started_by_the_worker():
        return state.table.loop is asyncio.get_running_loop()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(started_by_the_worker())
    finally:
        loop.close()
    state.put(1, b"k", b"v")
    state.apply(state.drain(), {})
    assert state.entries() == 1
