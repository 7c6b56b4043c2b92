"""A partition whose committed offset stopped moving while there is work past it gets read again.

Seen on the local stack with faust-streaming 0.15.3 (faust's own consumer loop): a second
worker left the group (SIGTERM) while traffic flowed; the remaining worker took its
partitions back, and of one input partition it never processed 30 messages that were
produced during the rebalance, while it processed everything after them. faust commits
only up to the first message not acknowledged, so that partition's committed offset stayed
where it was for good (its lag grew with every new message), and the 30 events reached
neither the unique topic nor the matcher until the worker was restarted. This is the shape
of faust-streaming's 166 ("partitions never processed") and 175/640 ("consumers slowly
stop").

The cure does not depend on which race in faust drops the messages: a worker that sees a
partition's committed offset unchanged for `stuck_after` seconds while messages past it
were acknowledged (or while the partition has messages past it at all) reads its partitions
again from their committed offsets, the way faust does around a rebalance
(`stream_jobs.app.repair_stuck_partitions`). What was already processed is a replay, a
no-op for every stage (dedupe state, index revisions, seen hit ids), and the missing
messages are processed, acknowledged and committed.

A hole at the commit point (a message not acknowledged while later ones of its partition
were: within a partition a stage acknowledges in order, so it was dropped, not slow) is
judged after `hole_after` seconds (5), not 30: one message dropped by a rebalance held a
two-worker benchmark run for 30 s. Holes right after a rebalance, of messages fetched
before it and still on their way, fill within a second.

A partition with nothing acknowledged past its commit is also what a saturated worker's
fetcher does to a partition it does not serve for a while (aiokafka keeps serving one it could
not empty): reading the partitions again then helps nothing and, every partition doing it in
turn, kept a worker with a 2.9M backlog seeking back every few seconds (the dev stack, 2026-11-30
10:42, offsets of three partitions unmoved across four repairs). So a repair of such a partition
that did not move its commit doubles its next delay (30, 60, 120 ... at most `stuck_after` x 16);
a partition whose commit moves starts again at `stuck_after`. Holes and commits held behind
acknowledged messages are never backed off: those are messages lost, not slow.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class PartitionView:
    committed: int | None  # the group's committed offset as the worker knows it (next to read)
    acked_pending: int     # acknowledged messages the worker could not commit yet
    highwater: int | None  # the partition's end offset as last fetched (None: unknown)
    hole: bool = False     # the message at the committed offset is not acknowledged, later ones are

    @property
    def has_work(self) -> bool:
        if self.acked_pending:
            return True
        return self.highwater is not None and self.highwater > (self.committed or 0)


class CommitWatchdog:
    """Which partitions have had work past an unchanged committed offset for `stuck_after`
    seconds, or a hole at it for `hole_after` seconds.

    Pure bookkeeping over snapshots (`check`); the worker takes the snapshots from faust's
    consumer and does the seeking (`stream_jobs.app`). A reported partition is reported
    again only after another delay (`stuck_after`, or `hole_after` for a hole) without progress.
    """

    MAX_BACKOFF = 16  # times stuck_after, for a partition with nothing acknowledged whose repairs did not help

    def __init__(self, stuck_after: float = 30.0, clock=time.monotonic, hole_after: float | None = None):
        self.stuck_after = stuck_after
        self.hole_after = stuck_after if hole_after is None else min(hole_after, stuck_after)
        self.clock = clock
        self._since: dict[Hashable, tuple[int | None, float]] = {}
        self._strikes: dict[Hashable, tuple[int | None, int]] = {}  # tp -> (committed at the last report, repairs since)

    def delay(self, view: PartitionView, tp: Hashable = None) -> float:
        if view.hole:
            return self.hole_after
        if view.acked_pending:
            return self.stuck_after
        at, strikes = self._strikes.get(tp, (None, 0))
        if at != view.committed:
            strikes = 0
        return self.stuck_after * min(2 ** strikes, self.MAX_BACKOFF)

    def reset(self) -> None:
        """Forget every partition (a rebalance or recovery is under way: nothing can be judged)."""
        self._since.clear()
        self._strikes.clear()

    def check(self, partitions: dict[Hashable, PartitionView]) -> list[Hashable]:
        now = self.clock()
        stuck = []
        for tp in list(self._since):
            if tp not in partitions:
                del self._since[tp]  # no longer assigned
                self._strikes.pop(tp, None)
        for tp, view in partitions.items():
            if not view.has_work:
                self._since.pop(tp, None)
                self._strikes.pop(tp, None)
                continue
            seen = self._since.get(tp)
            if seen is None or seen[0] != view.committed:
                self._since[tp] = (view.committed, now)  # progress (or first sight): the clock starts
            elif now - seen[1] >= self.delay(view, tp):
                stuck.append(tp)
                self._since[tp] = (view.committed, now)
                at, strikes = self._strikes.get(tp, (None, 0))
                self._strikes[tp] = (view.committed, strikes + 1 if at == view.committed else 1)
        return stuck


class StuckNotReady:
    """A worker that has been not ready for `after` seconds with nothing moving.

    A rebalance ends in seconds; a table recovery can take minutes, but the changelog records it
    has left to read go down. What the worker reports each look is its reason for not being ready
    and a `progress` value that changes whenever either moves (faust's rebalance count, the group's
    generation, the records left to recover). The worker exits when `check` says so
    (`stream_jobs.app.exit_stuck`, which logs where its threads and tasks waited), and its
    supervisor restarts it: state is in RocksDB and the changelogs, and what it had not committed
    is read again.

    A safety net, as the commit watchdog is. What it was built after (CI and two of four local
    suite runs, 2026-12-01): when the second worker left, the recovery of the partitions handed
    back never read six of its changelog partitions, their records dropped by the batch loop
    (fixed: `faust_patches._drain_batch_loop`), and the worker stayed "rebalancing" for good, the
    group stable, every thread idle; only a restart brought it back.

    Pure bookkeeping over the looks; the clock is injected."""

    def __init__(self, after: float, clock=time.monotonic):
        self.after = after
        self.clock = clock
        self._seen: tuple | None = None
        self._since = 0.0

    def check(self, reason: str | None, progress: Hashable = None) -> float | None:
        """The seconds the worker has been stuck, once they reach `after`; else None."""
        now = self.clock()
        if reason is None:
            self._seen = None
            return None
        if self._seen != (reason, progress):
            self._seen, self._since = (reason, progress), now
            return None
        stuck = now - self._since
        return stuck if stuck >= self.after else None


class SeeksNotEnding:
    """Since when the commit watchdog's seeks to the committed offsets have been timing out, one
    after the other (`stream_jobs.app.repair_stuck_partitions` bounds each by `seek_timeout`).

    Seen in the broker-kill ground-truth test (a clean-clone `make test`, 2026-12-02): the broker
    came back 30 s after its SIGKILL, and for the next 10 minutes every seek of the worker's
    repairs timed out, its consumer fetched nothing ("last inbound 10.60 minutes ago"), and it
    stayed "ready". The seek's own bound let the flow resume, but nothing flowed. A worker in that
    state exits once the seeks have not ended for `after` seconds (the same setting as
    `StuckNotReady`), and its supervisor restarts it: a new consumer joins the group and reads from
    the committed offsets, and what was processed since is a replay. The count starts again when a
    seek ends or when the worker's committed offsets move (`look`): a seek that once hung while
    the worker went on processing says nothing about a later one. Pure bookkeeping; the clock is
    injected."""

    def __init__(self, after: float, clock=time.monotonic):
        self.after = after
        self.clock = clock
        self._since: float | None = None
        self._progress: Hashable = None

    def look(self, progress: Hashable) -> None:
        """The worker's committed offsets now (any hashable): moved since the first timeout, the count starts again."""
        if self._since is not None and progress != self._progress:
            self._since = None

    def timed_out(self, waited_s: float, progress: Hashable = None) -> float | None:
        """A seek gave up after `waited_s`: the seconds the seeks have not ended, once they reach `after`."""
        now = self.clock()
        if self._since is None:
            self._since, self._progress = now - waited_s, progress
        stuck = now - self._since
        return stuck if self.after > 0 and stuck >= self.after else None

    def ended(self) -> None:
        """A seek ended: the consumer answers."""
        self._since = None
