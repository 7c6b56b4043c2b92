"""A batch's state writes reach Kafka only after its outputs: a crash in between can never
leave the state saying "done" for an output that is not in Kafka.

In the cluster profile a CASE_LINK hit was lost after a worker's SIGKILL: the matcher's index
write (the case incident remembered) was delivered and the candidate, on another broker, was
not; the replay took the lookup for one already done. With the writes produced after the
outputs are delivered, the replay finds the state as it was and produces the output again."""
from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaException

from stream_jobs.app import BatchRunner, DeliveryWaiter
from stream_jobs.stages import Incoming, Outgoing, StageResult
from stream_jobs.state import MemoryState


class FakeProducer:
    """librdkafka's produce/poll: messages wait until `poll` reports them (failing `fail_topic`'s)."""

    def __init__(self, fail_topic: str | None = None):
        self.log: list[tuple] = []
        self.queued: list[tuple] = []
        self.fail_topic = fail_topic

    def produce(self, topic, value=None, key=None, partition=None, on_delivery=None):
        self.log.append(("produced", topic))
        self.queued.append((topic, partition, on_delivery))

    def poll(self, timeout=0):
        queued, self.queued = self.queued, []
        for topic, partition, callback in queued:
            self.log.append(("delivered", topic))
            callback("broker down" if topic == self.fail_topic else None, FakeMessage(topic, partition))
        return len(queued)


class FakeMessage:
    def __init__(self, topic, partition):
        self._topic, self._partition = topic, partition if partition is not None else 0

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return 7


class ChangelogState(MemoryState):
    changelog_topic = "intelbus-jobs-index-changelog"


class CaseLinkStage:
    """Writes the index and sends a candidate, as the matcher does for a case link."""

    def __init__(self, state):
        self.state = state

    def process(self, batch, now_ms):
        result = StageResult()
        self.state.put(0, b"13800000000", b'{"recent": ["A", "B"]}')
        result.outputs.append(Outgoing("intel.hit.candidates", b"hit-1", b"{}", 3))
        return result


def run(producer, state):
    async def main():
        runner = BatchRunner(producer, lambda dl: b"", name="match", waiter=DeliveryWaiter(producer, interval=0))
        return await runner.run(CaseLinkStage(state), state, [Incoming("intel.match.requests", 0, 1, b"k", b"v")])
    return asyncio.run(main())


def test_the_state_write_is_produced_only_once_the_output_was_delivered():
    producer, state = FakeProducer(), ChangelogState()
    run(producer, state)
    assert producer.log == [("produced", "intel.hit.candidates"), ("delivered", "intel.hit.candidates"),
                            ("produced", ChangelogState.changelog_topic),
                            ("delivered", ChangelogState.changelog_topic)]
    assert state.data[0][b"13800000000"]  # in the store after both


def test_an_output_not_delivered_leaves_the_state_unwritten_so_the_replay_sends_it_again():
    producer, state = FakeProducer(fail_topic="intel.hit.candidates"), ChangelogState()
    with pytest.raises(KafkaException, match="undelivered"):
        run(producer, state)
    # the control of the test above: nothing of the state went to Kafka nor to the store
    assert ("produced", ChangelogState.changelog_topic) not in producer.log
    assert state.data == {}


def test_without_state_after_outputs_the_writes_go_with_the_outputs_as_before():
    # the behaviour before 2026-11-30 (the switch stays for a before/after): both produced at once
    producer, state = FakeProducer(), ChangelogState()

    async def main():
        runner = BatchRunner(producer, lambda dl: b"", name="hits", waiter=DeliveryWaiter(producer, interval=0),
                             state_after_outputs=False)
        await runner.run(CaseLinkStage(state), state, [Incoming("intel.hit.candidates", 3, 1, b"k", b"v")])

    asyncio.run(main())
    assert producer.log[:2] == [("produced", "intel.hit.candidates"), ("produced", ChangelogState.changelog_topic)]
    assert state.data[0][b"13800000000"]


def test_batches_write_their_state_in_the_order_they_started_whatever_order_their_outputs_arrive_in():
    # a fetch larger than the batch size is started in parts while the previous batch still finishes:
    # the later value of a key must be the last in the changelog and in the store
    class SlowFirst(FakeProducer):
        def poll(self, timeout=0):  # the first batch's output is reported only after the second's
            queued, self.queued = self.queued, []
            order = sorted(queued, key=lambda q: q[0] == "first.out")
            for topic, partition, callback in order:
                self.log.append(("delivered", topic))
                callback(None, FakeMessage(topic, partition))
            return len(queued)

    class Writes:
        def __init__(self, state, value, topic):
            self.state, self.value, self.topic = state, value, topic

        def process(self, batch, now_ms):
            result = StageResult()
            self.state.put(0, b"K", self.value)
            result.outputs.append(Outgoing(self.topic, b"k", b"v", 0))
            return result

    producer, state = SlowFirst(), ChangelogState()

    async def main():
        runner = BatchRunner(producer, lambda dl: b"", name="dedupe", waiter=DeliveryWaiter(producer, interval=0))
        first = runner.start(Writes(state, b"old", "first.out"), state, [Incoming("t", 0, 1, b"k", b"v")])
        second = runner.start(Writes(state, b"new", "second.out"), state, [Incoming("t", 0, 2, b"k", b"v")])
        await asyncio.gather(runner.finish(second), runner.finish(first))

    asyncio.run(main())
    changelog = [e for e in producer.log if e == ("produced", ChangelogState.changelog_topic)]
    assert len(changelog) == 2
    assert state.data[0][b"K"] == b"new"  # without the order, the first batch's b"old" was applied last
