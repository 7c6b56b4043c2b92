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

    def __init__(self, stuck_after: float = 30.0, clock=time.monotonic, hole_after: float | None = None):
        self.stuck_after = stuck_after
        self.hole_after = stuck_after if hole_after is None else min(hole_after, stuck_after)
        self.clock = clock
        self._since: dict[Hashable, tuple[int | None, float]] = {}

    def delay(self, view: PartitionView) -> float:
        return self.hole_after if view.hole else self.stuck_after

    def reset(self) -> None:
        """Forget every partition (a rebalance or recovery is under way: nothing can be judged)."""
        self._since.clear()

    def check(self, partitions: dict[Hashable, PartitionView]) -> list[Hashable]:
        now = self.clock()
        stuck = []
        for tp in list(self._since):
            if tp not in partitions:
                del self._since[tp]  # no longer assigned
        for tp, view in partitions.items():
            if not view.has_work:
                self._since.pop(tp, None)
                continue
            seen = self._since.get(tp)
            if seen is None or seen[0] != view.committed:
                self._since[tp] = (view.committed, now)  # progress (or first sight): the clock starts
            elif now - seen[1] >= self.delay(view):
                stuck.append(tp)
                self._since[tp] = (view.committed, now)
        return stuck
