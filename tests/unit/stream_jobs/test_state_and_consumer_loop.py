"""Batch state reads (prefetch), the consumer loop's choice, and the batch loop's version check."""
from __future__ import annotations

import asyncio

import pytest

from stream_jobs import faust_patches
from stream_jobs.state import BatchOverlay


class Store:
    def __init__(self, data):
        self.data = data
        self.single, self.many = [], []

    def read(self, partition, key):
        self.single.append((partition, key))
        return self.data.get((partition, key))

    def read_many(self, partition, keys):
        self.many.append((partition, list(keys)))
        return [self.data.get((partition, k)) for k in keys]


def test_prefetch_reads_a_batch_in_one_call_and_serves_gets_until_drained():
    store = Store({(0, b"a"): b"1", (0, b"b"): b"2"})
    state = BatchOverlay(store.read, store.read_many)
    state.prefetch(0, [b"a", b"b", b"a", b"missing"])
    assert store.many == [(0, [b"a", b"b", b"missing"])]  # once each
    assert (state.get(0, b"a"), state.get(0, b"b"), state.get(0, b"missing")) == (b"1", b"2", None)
    assert store.single == []  # all served from the prefetch
    state.put(0, b"a", b"new")
    assert state.get(0, b"a") == b"new"  # the batch's own write wins over what was fetched
    assert state.get(1, b"a") is None and store.single == [(1, b"a")]  # not prefetched: read on its own
    state.prefetch(0, [b"a", b"b"])
    assert len(store.many) == 1  # already fetched in this batch
    assert state.drain() == {0: {b"a": b"new"}}
    store.data[(0, b"b")] = b"changed"
    assert state.get(0, b"b") == b"changed"  # drained: the fetched copy is gone


def test_a_sweep_writes_what_it_scanned_without_reading_it_again_and_keeps_the_count():
    from stream_jobs.state import COUNT_KEY, KEEP, Sweeper

    data = {(0, b"k%d" % i): b"old" if i % 2 else b"new" for i in range(6)}
    data[(0, COUNT_KEY)] = b"6"
    store = Store(data)

    def scan(partition, after, limit):
        keys = sorted(k for p, k in store.data if p == partition and k[:1] != b"\x00" and (after is None or k > after))
        return [(k, store.data[(partition, k)]) for k in keys[:limit]]

    state = BatchOverlay(store.read, store.read_many, scan)
    examined, deleted = Sweeper(lambda value, clock: None if value == b"old" else KEEP).sweep(state, 0, 2, 1_000)
    assert (examined, deleted) == (6, 3)  # the floor of 64 covers the partition
    swept = {k for _, k in store.single}
    assert not swept & {b"k1", b"k3", b"k5"}, "the deleted entries were read again from the store"
    assert state.count(0) == 3  # the deletions still counted: the value scanned is the one before
    state.put(0, b"elsewhere", b"v")
    assert (0, b"elsewhere") in store.single  # the control: a key no scan brought is read from the store


def test_prefetch_without_a_multi_read_falls_back_to_single_reads():
    store = Store({(2, b"k"): b"v"})
    state = BatchOverlay(store.read)
    state.prefetch(2, [b"k", b"x"])
    assert store.single == [(2, b"k"), (2, b"x")]
    assert state.get(2, b"k") == b"v" and len(store.single) == 2


def test_the_batch_loop_is_the_default_and_faust_s_loop_stays_selectable():
    from stream_jobs.app import consumer_loop_from

    assert consumer_loop_from({}) == "batch"  # `intelbus up`'s jobs and the supervisor's restarts set nothing
    assert consumer_loop_from({"INTELBUS_JOBS_CONSUMER_LOOP": ""}) == "batch"
    assert consumer_loop_from({"INTELBUS_JOBS_CONSUMER_LOOP": "faust"}) == "faust"
    assert consumer_loop_from({"INTELBUS_JOBS_CONSUMER_LOOP": "batch"}) == "batch"
    with pytest.raises(ValueError, match="INTELBUS_JOBS_CONSUMER_LOOP='direct': one of batch, faust"):
        consumer_loop_from({"INTELBUS_JOBS_CONSUMER_LOOP": "direct"})  # removed: a worker asked for it does not start


def test_the_batch_loop_refuses_a_faust_version_it_was_not_written_for(monkeypatch):
    from faust.transport.consumer import Consumer

    patched = ("_drain_messages", "perform_seek", "seek", "on_partitions_revoked", "on_stop")
    originals = {name: getattr(Consumer, name) for name in patched}
    for name, value in originals.items():
        monkeypatch.setattr(Consumer, name, value)  # restored after the test, whatever it installs
    monkeypatch.setattr(faust_patches, "_batch_installed", False)
    monkeypatch.setattr(faust_patches, "_batches", None)
    batches = faust_patches.StageBatches({}, {})
    monkeypatch.setattr(faust_patches, "_installed_version", dict(faust_patches.PINNED, **{"faust-streaming": "0.99.0"}).get)
    with pytest.raises(faust_patches.UnsupportedFramework, match="faust-streaming 0.99.0 is not 0.15.3"):
        faust_patches.install_batch_loop(batches)
    assert {name: getattr(Consumer, name) for name in patched} == originals
    monkeypatch.setattr(faust_patches, "_installed_version", dict(faust_patches.PINNED).get)
    assert faust_patches.install_batch_loop(batches) is True
    assert Consumer._drain_messages is faust_patches._drain_batches and faust_patches._batches is batches
    assert all(getattr(Consumer, name) is not originals[name] for name in patched)


def test_batches_wait_for_their_own_delivery_reports_without_blocking_the_loop():
    from stream_jobs.app import DeliveryWaiter

    class Producer:
        """Reports one message per poll, in the order produced."""

        def __init__(self):
            self.queue, self.polls = [], 0

        def poll(self, timeout):
            self.polls += 1
            if self.queue:
                self.queue.pop(0)[0] -= 1

    async def scenario():
        producer = Producer()
        waiter = DeliveryWaiter(producer, interval=0)
        a, b, never = [2], [1], [1]
        producer.queue += [a, b, a]
        ticks = 0

        async def other_work():  # the loop stays free while batches wait
            nonlocal ticks
            for _ in range(20):
                ticks += 1
                await asyncio.sleep(0)

        results = await asyncio.gather(waiter.wait(a, 5), waiter.wait(b, 5), other_work())
        timed_out = await waiter.wait(never, 0.05)
        return results[:2], timed_out, ticks, waiter._waiting

    (left_a, left_b), timed_out, ticks, waiting = asyncio.run(scenario())
    assert (left_a, left_b) == (0, 0)
    assert timed_out == 1 and waiting == []  # nothing reported: the batch is told how many are missing
    assert ticks == 20


def test_intelbus_jobs_refuses_the_removed_direct_loop_before_starting_a_worker(monkeypatch, capsys):
    import argparse

    from stream_jobs import worker

    started = []
    monkeypatch.setattr(worker, "run_worker", lambda settings, index, args: started.append(index) or 0)
    p = argparse.ArgumentParser()
    run = worker.add_jobs(p)
    monkeypatch.setenv("INTELBUS_JOBS_CONSUMER_LOOP", "direct")
    assert run(p.parse_args([])) == 2 and started == []
    assert "intelbus jobs: INTELBUS_JOBS_CONSUMER_LOOP='direct': one of batch, faust (default batch)" in capsys.readouterr().err
    monkeypatch.setenv("INTELBUS_JOBS_CONSUMER_LOOP", "faust")  # the fallback starts
    assert run(p.parse_args([])) == 0 and started == [0]


def test_state_json_writes_string_keys_plainly_and_still_takes_other_keys():
    import json

    from stream_jobs.state import dumps, loads

    entry = {"seen": {"1": ["e-1", 1796188540275, 0]}, "state": {"rev": 1, "open": True, "ids": ["PLATE:津H20013"]}}
    assert loads(dumps(entry)) == entry
    assert dumps(entry) == json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
    assert loads(dumps({3: "a", "b": [1]})) == {"3": "a", "b": [1]}  # a non-string key, as before: written as text
    with pytest.raises(TypeError):
        dumps({"a": object()})


def test_the_worker_consumer_asks_the_broker_to_hold_its_fetches():
    import inspect

    import aiokafka

    async def build():
        made = faust_patches.with_fetch_wait(
            lambda thread, transport: aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1"), 16_384, 10)
        return made(None, None)

    consumer = asyncio.run(build())
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (16_384, 10)  # aiokafka's own: 1 and 500
    # ... and the pinned aiokafka hands exactly these attributes to the fetcher it starts
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_min_bytes=self._fetch_min_bytes" in start and "fetch_max_wait_ms=self._fetch_max_wait_ms" in start


def test_the_fetch_wait_is_installed_once_and_only_on_the_pinned_faust(monkeypatch):
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", original)  # restored after the test
    monkeypatch.setattr(faust_patches, "_installed_version", dict(faust_patches.PINNED, **{"aiokafka": "0.99.0"}).get)
    with pytest.raises(faust_patches.UnsupportedFramework, match="aiokafka 0.99.0"):
        faust_patches.install_fetch_wait(16_384, 10)
    assert AIOKafkaConsumerThread._create_worker_consumer is original
    monkeypatch.setattr(faust_patches, "_installed_version", dict(faust_patches.PINNED).get)
    assert faust_patches.install_fetch_wait(16_384, 10) is True
    installed = AIOKafkaConsumerThread._create_worker_consumer
    assert installed.intelbus_fetch_wait == (16_384, 10)
    faust_patches.install_fetch_wait(1, 500)  # a second call changes nothing (one worker, one consumer factory)
    assert AIOKafkaConsumerThread._create_worker_consumer is installed
