from collections import defaultdict

from intervaltree import IntervalTree

from stream_jobs.watchdog import CommitWatchdog, PartitionView


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def watchdog(hole_after=None):
    clock = Clock()
    return CommitWatchdog(stuck_after=30, clock=clock, hole_after=hole_after), clock


def test_a_commit_stuck_behind_acknowledged_messages_is_reported_after_the_delay():
    dog, clock = watchdog()
    stuck = {"p3": PartitionView(committed=566797, acked_pending=2600, highwater=569417)}
    assert dog.check(stuck) == []
    clock.now += 29
    assert dog.check(stuck) == []
    clock.now += 1
    assert dog.check(stuck) == ["p3"]
    clock.now += 5
    assert dog.check(stuck) == []  # once per delay, not at every look
    clock.now += 25
    assert dog.check(stuck) == ["p3"]


def test_a_partition_whose_commit_moves_is_never_reported():
    dog, clock = watchdog()
    for i in range(20):
        assert dog.check({"p0": PartitionView(committed=100 + i * 500, acked_pending=300, highwater=50_000)}) == []
        clock.now += 10


def test_a_partition_with_messages_but_no_progress_at_all_is_reported():
    # faust 166: a partition never processed, nothing acknowledged, lag behind the end
    dog, clock = watchdog()
    view = {"p1": PartitionView(committed=10, acked_pending=0, highwater=500)}
    dog.check(view)
    clock.now += 31
    assert dog.check(view) == ["p1"]


def test_an_idle_caught_up_partition_is_never_reported():
    dog, clock = watchdog()
    for _ in range(10):
        assert dog.check({"p2": PartitionView(committed=500, acked_pending=0, highwater=500),
                          "p4": PartitionView(committed=None, acked_pending=0, highwater=None)}) == []
        clock.now += 60


def test_the_clock_starts_again_after_a_reset_or_a_reassignment():
    dog, clock = watchdog()
    view = {"p3": PartitionView(committed=7, acked_pending=5, highwater=100)}
    dog.check(view)
    clock.now += 25
    dog.reset()  # a rebalance: nothing is judged, the clock restarts afterwards
    dog.check(view)
    clock.now += 25
    assert dog.check(view) == []
    dog.check({})  # the partition moved to another worker
    clock.now += 40
    assert dog.check(view) == []
    clock.now += 30
    assert dog.check(view) == ["p3"]


class FakeTP(tuple):
    topic = property(lambda self: self[0])
    partition = property(lambda self: self[1])


class FakeConsumer:
    """faust 0.15.3's consumer as repair_stuck_partitions reads it."""

    def __init__(self):
        self.flow_active = True
        self.tp = FakeTP(("intel.incident", 3))
        self.other = FakeTP(("intelbus-jobs-records-changelog", 3))
        self._committed_offset = {self.tp: 566797, self.other: 5}
        self._acked = {self.tp: [566821, 566828, 566829], self.other: [9]}
        self._read_offset = {self.tp: 569416}
        self._gap = defaultdict(IntervalTree)
        self.calls = []

    def assignment(self):
        return {self.tp, self.other}

    def highwater(self, tp):
        return 569417

    def stop_flow(self):
        self.flow_active = False
        self.calls.append("stop_flow")

    def resume_flow(self):
        self.flow_active = True
        self.calls.append("resume_flow")

    async def perform_seek(self):
        assert not self.flow_active, "seeking while the fetch loop still hands out old messages"
        self.calls.append("perform_seek")
        self._read_offset.update({tp: off for tp, off in self._committed_offset.items()})


class FakeApp:
    def __init__(self):
        self.consumer = FakeConsumer()
        self.rebalancing = False
        self.in_recovery = False
        self.rebalancing_count = 0

    def begin_rebalance(self):
        """What faust's rebalance listener does first (`App.on_rebalance_start`), then its revoke."""
        self.rebalancing = True
        self.rebalancing_count += 1
        self.consumer.stop_flow()


def test_a_stuck_partition_is_sought_back_to_its_committed_offset_and_read_again():
    import asyncio

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions

    dog, clock = watchdog()
    app = FakeApp()
    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0))
    assert run() == []
    clock.now += 31
    app.rebalancing = True
    assert run() == [] and app.consumer.calls == []  # nothing judged during a rebalance
    app.rebalancing = False
    run()
    clock.now += 31
    assert run() == [app.consumer.tp]  # the changelog partition is not ours to judge
    assert app.consumer.calls == ["stop_flow", "perform_seek", "resume_flow"]
    assert app.consumer._read_offset[app.consumer.tp] == 566797  # faust's loop must not drop what is read again
    assert app.consumer.flow_active


def test_a_seek_that_never_ends_while_the_broker_is_away_does_not_leave_the_flow_stopped(caplog):
    # the group's coordinator was on the SIGKILLed broker: faust's seek to the committed offsets
    # waited for good, and with it the flow it had stopped (the worker read nothing more)
    import asyncio

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions

    dog, clock = watchdog()
    app = FakeApp()

    async def hangs():
        app.consumer.calls.append("perform_seek")
        await asyncio.Event().wait()

    app.consumer.perform_seek = hangs
    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0, seek_timeout=0.2))
    run()
    clock.now += 31
    assert run() == [app.consumer.tp]
    assert app.consumer.calls == ["stop_flow", "perform_seek", "resume_flow"] and app.consumer.flow_active
    assert "did not end within" in caplog.text


def test_a_worker_whose_seeks_keep_not_ending_is_told_to_exit_and_one_whose_seek_ends_is_not():
    """After a broker restart (broker-kill ground-truth test, 2026-12-02) every repair's seek timed out
    for 10 minutes and the worker, "ready", fetched nothing: once the seeks have not ended for the
    stuck-not-ready time the repair says so (the worker exits and its supervisor restarts it)."""
    import asyncio

    import pytest

    from stream_jobs.app import INPUT_TOPICS, SeeksStuck, repair_stuck_partitions
    from stream_jobs.watchdog import SeeksNotEnding

    dog, clock = watchdog()
    seeks = SeeksNotEnding(after=120, clock=clock)
    app = FakeApp()
    hanging = [True]

    async def seek():
        app.consumer.calls.append("perform_seek")
        if hanging[0]:
            await asyncio.Event().wait()

    app.consumer.perform_seek = seek
    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0, seek_timeout=0.05,
                                                      seeks=seeks))
    run()
    for _ in range(4):  # four repairs whose seeks time out, 31 s apart: up to 93 s without a seek ending
        clock.now += 31
        assert run() == [app.consumer.tp]
    clock.now += 31
    with pytest.raises(SeeksStuck) as raised:  # the fifth: 124 s since the first seek began
        run()
    assert raised.value.stuck_s >= 120 and "have not ended for 124 s" in str(raised.value)
    assert app.consumer.flow_active  # the flow was resumed all the same

    # the control: a seek that ends starts the count again
    hanging[0] = False
    clock.now += 31
    assert run() == [app.consumer.tp]
    hanging[0] = True
    for _ in range(4):
        clock.now += 31
        assert run() == [app.consumer.tp]  # 93 s of seeks not ending: not yet
    assert SeeksNotEnding(after=0, clock=clock).timed_out(500) is None  # 0: never

    # and one whose commits moved after a seek hung: the worker processes, the count starts again
    app.consumer._committed_offset[app.consumer.tp] += 10
    clock.now += 31
    run()  # sees the commit moved
    for _ in range(4):
        clock.now += 31
        assert run() == [app.consumer.tp]  # no raise: 93 s since the first timeout after the move


def test_a_stuck_partition_whose_hole_holds_no_message_is_recorded_as_a_gap_and_not_read_again():
    import asyncio

    from faust.transport.consumer import Consumer

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions
    from stream_jobs.faust_patches import _guard

    dog, clock = watchdog()
    app = FakeApp()
    c = app.consumer
    c._acked_index = {c.tp: set(c._acked[c.tp])}
    c._acked[c.tp] = [566797 + 24, 566797 + 25]  # 566797..566820 never seen (markers, say), 566821.. processed
    probed = []

    def probe(topic, partition, first, last):
        probed.append((topic, partition, first, last))
        return False  # Kafka holds no message there

    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0, probe=probe))
    run()
    clock.now += 31
    assert run() == [] and c.calls == []  # not read again ...
    assert probed == [("intel.incident", 3, 566797, 566820)]
    faust_new_offset = getattr(Consumer._new_offset, "__wrapped__", Consumer._new_offset)
    assert _guard(faust_new_offset, lambda *a: None)(c, c.tp) == 566823  # ... and the commit moves on


def test_a_stuck_partition_whose_hole_holds_messages_or_cannot_be_probed_is_read_again():
    import asyncio

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions

    for answer in (True, None):
        dog, clock = watchdog()
        app = FakeApp()
        run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0,
                                                          probe=lambda *where: answer))
        run()
        clock.now += 31
        assert run() == [app.consumer.tp]
        assert app.consumer.calls == ["stop_flow", "perform_seek", "resume_flow"]
        assert not app.consumer._gap[app.consumer.tp]


def test_a_hole_at_the_commit_point_is_reported_sooner_than_a_commit_that_merely_stands_still():
    dog, clock = watchdog(hole_after=5)
    hole = PartitionView(committed=47777, acked_pending=9212, highwater=56990, hole=True)
    still = PartitionView(committed=10, acked_pending=0, highwater=500)
    views = {"p2": hole, "p1": still}
    assert dog.check(views) == []
    clock.now += 4.9
    assert dog.check(views) == []
    clock.now += 0.1
    assert dog.check(views) == ["p2"]
    clock.now += 25
    assert sorted(dog.check(views)) == ["p1", "p2"]  # the hole again (every 5 s without progress), the other at last


def test_a_hole_is_read_again_after_the_hole_delay():
    import asyncio

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions

    dog, clock = watchdog(hole_after=5)
    app = FakeApp()  # incident[3]: committed 566797, acknowledged from 566821 on: a hole
    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0))
    assert run() == []
    clock.now += 4
    assert run() == [] and app.consumer.calls == []
    clock.now += 1
    assert run() == [app.consumer.tp]
    assert app.consumer.calls == ["stop_flow", "perform_seek", "resume_flow"]


def test_a_partition_with_nothing_acknowledged_whose_repairs_do_not_help_is_looked_at_less_and_less_often():
    # a saturated worker's fetcher not serving a partition looks like this: seeking back every 30 s helped
    # nothing and, every partition in turn, kept the worker seeking (dev stack, 2.9M backlog)
    dog, clock = watchdog()
    starved = {"p0": PartitionView(committed=1516234, acked_pending=0, highwater=1968097)}
    reports = []
    dog.check(starved)
    for second in range(1, 500):
        clock.now += 1
        if dog.check(starved):
            reports.append(second)
    assert reports == [30, 90, 210, 450]  # after 30, then 60, 120, 240 s
    # the commit moves: back to the plain delay
    moved = {"p0": PartitionView(committed=1516300, acked_pending=0, highwater=1968097)}
    dog.check(moved)
    clock.now += 30
    assert dog.check(moved) == ["p0"]


def test_a_commit_held_behind_acknowledged_messages_or_a_hole_is_never_backed_off():
    dog, clock = watchdog(hole_after=5)
    held = {"p3": PartitionView(committed=566797, acked_pending=2600, highwater=569417),
            "p5": PartitionView(committed=10, acked_pending=4, highwater=90, hole=True)}
    reports = []
    dog.check(held)
    for second in range(1, 121):
        clock.now += 1
        reports += [(second, tp) for tp in dog.check(held)]
    assert [s for s, tp in reports if tp == "p3"] == [30, 60, 90, 120]
    assert [s for s, tp in reports if tp == "p5"] == list(range(5, 121, 5))


def test_the_repair_yields_to_a_rebalance_judged_on_what_faust_records():
    from types import SimpleNamespace

    from stream_jobs.app import rebalance_since

    def app(rebalancing=False, in_recovery=False, count=7):
        return SimpleNamespace(rebalancing=rebalancing, in_recovery=in_recovery, rebalancing_count=count)

    assert not rebalance_since(app(), 7)
    assert rebalance_since(app(rebalancing=True), 7)
    assert rebalance_since(app(in_recovery=True), 7)
    assert rebalance_since(app(count=8), 7)  # one began and ended meanwhile: its recovery resumed the flow


def test_a_rebalance_that_begins_while_the_repair_probes_a_hole_keeps_the_flow_and_the_seeks_to_faust():
    # The join-and-leave hang of the batch loop: a repair looked (no rebalance), probed a hole in a
    # thread for seconds, and meanwhile the second worker left. Stopping the flow then, in the middle
    # of faust's table recovery, dropped the changelog records just fetched, which nothing seeks back:
    # the recovery never reached its highwater and the worker stayed "rebalancing".
    import asyncio

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions

    dog, clock = watchdog(hole_after=5)
    app = FakeApp()

    def probe(*where):
        app.begin_rebalance()  # while the probe runs
        app.rebalancing, app.in_recovery = False, True  # faust's recovery reading the changelogs
        app.consumer.resume_flow()
        app.consumer.calls.clear()
        return True  # the hole holds messages: it would be read again

    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0, probe=probe))
    run()
    clock.now += 5
    assert run() == []
    assert app.consumer.calls == [] and app.consumer.flow_active  # the recovery's flow, untouched


def test_a_rebalance_that_begins_while_the_repair_settles_is_left_to_resume_the_flow_itself(monkeypatch):
    import asyncio

    from stream_jobs.app import INPUT_TOPICS, repair_stuck_partitions

    dog, clock = watchdog(hole_after=5)
    app = FakeApp()
    run = lambda: asyncio.run(repair_stuck_partitions(app, dog, set(INPUT_TOPICS), settle=0.2))
    run()
    clock.now += 5
    real_sleep = asyncio.sleep

    async def settle(seconds):
        if seconds == 0.2:
            app.begin_rebalance()  # during the repair's settle
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", settle)
    assert run() == [app.consumer.tp]
    # stopped before the rebalance began; neither sought nor resumed after: faust's recovery resumes it
    assert app.consumer.calls == ["stop_flow", "stop_flow"] and not app.consumer.flow_active
