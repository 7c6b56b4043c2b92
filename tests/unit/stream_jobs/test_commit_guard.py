"""The commit guard: faust 0.15.3 commits over a single message never processed; guarded, it holds.

faust's own `Consumer._new_offset` runs here on a bare object carrying just the bookkeeping
it reads (acknowledged offsets, committed offset, recorded gaps), so these tests check the
real commit decision, not a copy of it.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
from intervaltree import IntervalTree

from stream_jobs import faust_patches

TP = ("intel.match", 3)


def bookkeeping(committed, acked, gap=None):
    acked = sorted(acked)
    gaps = defaultdict(IntervalTree)
    if gap:
        gaps[TP].addi(*gap)
    return SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}), _acked_index=defaultdict(set, {TP: set(acked)}),
                           _committed_offset=defaultdict(lambda: None, {TP: committed}), _gap=gaps)


@pytest.fixture
def faust_new_offset():
    from faust.transport.consumer import Consumer

    return getattr(Consumer._new_offset, "__wrapped__", Consumer._new_offset)  # faust's, even if guarded


def test_unguarded_faust_commits_over_one_message_never_processed(faust_new_offset):
    # offset 100 is the next to process; 101..104 were processed, 100 never was
    assert faust_new_offset(bookkeeping(100, range(101, 105)), TP) == 105


def test_guarded_the_commit_stays_at_the_message_never_processed(faust_new_offset):
    holes = []
    guarded = faust_patches._guard(faust_new_offset, lambda tp, c, first: holes.append((tp, c, first)))
    assert guarded(bookkeeping(100, range(101, 105)), TP) is None
    assert holes == [(TP, 100, 101)]


def test_guarded_a_hole_inside_the_run_holds_the_commit_once_it_is_reached(faust_new_offset):
    guarded = faust_patches._guard(faust_new_offset, lambda *a: None)
    book = bookkeeping(100, [100, 101, 102, 104, 105])  # 103 never processed
    assert guarded(book, TP) == 103
    book._committed_offset[TP] = 103  # what faust records after committing
    assert guarded(book, TP) is None  # unguarded, faust would commit 106 over 103
    assert faust_new_offset(book, TP) == 106


def test_guarded_commits_as_faust_does_without_a_hole(faust_new_offset):
    guarded = faust_patches._guard(faust_new_offset, lambda *a: pytest.fail("no hole here"))
    assert guarded(bookkeeping(100, range(100, 110)), TP) == 110
    assert guarded(bookkeeping(None, range(0, 5)), TP) == 5  # nothing committed yet
    assert guarded(bookkeeping(100, []), TP) is None  # nothing acknowledged: nothing to commit


def test_guarded_a_gap_faust_recorded_still_counts_as_done(faust_new_offset):
    guarded = faust_patches._guard(faust_new_offset, lambda *a: pytest.fail("a recorded gap is not a hole"))
    # offsets 100..101 are known not to be there (faust's `_add_gap`); 102.. were processed
    assert guarded(bookkeeping(100, range(102, 106), gap=(100, 102)), TP) == 106


def test_the_guard_applies_only_to_the_faust_version_it_was_written_for(monkeypatch):
    import faust
    from faust.transport.consumer import Consumer

    original = Consumer._new_offset
    monkeypatch.setattr(faust_patches, "_guarded", False)
    monkeypatch.setattr(faust, "__version__", "0.99.0")
    assert faust_patches.guard_commits() is False and Consumer._new_offset is original
    monkeypatch.setattr(faust, "__version__", faust_patches.PATCHED_VERSION)
    monkeypatch.setattr(Consumer, "_new_offset", original)
    assert faust_patches.guard_commits() is True
    assert Consumer._new_offset is not original and Consumer._new_offset.__wrapped__ is original


def run_gap_policy(missing_from, fetched):
    """faust's loop calls `_add_gap(tp, read_offset + 1, offset)` when a fetched offset jumps."""
    import asyncio

    recorded, left_open = [], []

    async def faust_add_gap(self, tp, offset_from, offset_to):
        recorded.append((offset_from, offset_to))

    policy = faust_patches._gap_policy(faust_add_gap, lambda tp, first, last: left_open.append((first, last)))
    asyncio.run(policy(None, TP, missing_from, fetched))
    return recorded, left_open


def test_a_gap_of_one_offset_is_recorded_as_faust_does():
    # read 99, fetched 101: offset 100 holds no message (a transaction's commit marker)
    assert run_gap_policy(100, 101) == ([(100, 101)], [])


def test_a_longer_gap_is_left_a_hole_not_taken_as_done():
    # read offset 100 (set back by a rebalance), then a message fetched before it, 141, arrives
    assert run_gap_policy(101, 141) == ([], [(101, 140)])


def test_a_hole_recorded_as_a_gap_is_committed_over(faust_new_offset):
    guarded = faust_patches._guard(faust_new_offset, lambda *a: pytest.fail("recorded: not a hole"))
    book = bookkeeping(100, range(110, 115))
    faust_patches.record_gap(book, TP, 100, 109)
    assert guarded(book, TP) == 115
