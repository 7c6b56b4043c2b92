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


def test_the_guard_refuses_to_start_on_a_framework_version_it_was_not_written_for(monkeypatch):
    from faust.transport.consumer import Consumer

    original = Consumer._new_offset
    monkeypatch.setattr(faust_patches, "_guarded", False)
    versions = dict(faust_patches.PINNED, **{"mode-streaming": "0.8.0"})
    monkeypatch.setattr(faust_patches, "_installed_version", versions.get)
    with pytest.raises(faust_patches.UnsupportedFramework, match=r"mode-streaming 0.8.0 is not 0.7.1.*make install"):
        faust_patches.guard_commits()
    assert Consumer._new_offset is original  # refused before patching anything
    monkeypatch.setattr(faust_patches, "_installed_version", dict(faust_patches.PINNED).get)
    assert faust_patches.guard_commits() is True
    assert Consumer._new_offset is not original and Consumer._new_offset.__wrapped__ is original


def test_every_pinned_package_is_checked_and_a_missing_one_is_named():
    installed = {"faust-streaming": "0.15.4", "mode-streaming": "0.7.1"}
    assert faust_patches.version_mismatches(installed.get) == [
        "faust-streaming 0.15.4 is not 0.15.3", "aiokafka (not installed) is not 0.14.0"]


def test_the_pins_in_pyproject_are_the_versions_the_patches_accept():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[3] / "pyproject.toml").read_text()
    for name, version in faust_patches.PINNED.items():
        assert re.search(rf'"{name}(\[[a-z0-9,]+\])?=={re.escape(version)}"', text), name
    constraints = (pathlib.Path(__file__).parents[3] / "constraints.txt").read_text().splitlines()
    for name, version in faust_patches.PINNED.items():
        assert f"{name}=={version}" in constraints, name


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


def test_intelbus_jobs_refuses_to_start_on_another_faust_and_says_what_to_do(monkeypatch, capsys):
    import argparse

    from stream_jobs.worker import add_jobs

    p = argparse.ArgumentParser()
    run = add_jobs(p)
    monkeypatch.setattr(faust_patches, "_installed_version", dict(faust_patches.PINNED, aiokafka="0.15.0").get)
    assert run(p.parse_args([])) == 2  # refused before loading settings or starting a worker
    err = capsys.readouterr().err
    assert "intelbus jobs: intelbus's stream jobs refuse to start: aiokafka 0.15.0 is not 0.14.0" in err
    assert "make install" in err
