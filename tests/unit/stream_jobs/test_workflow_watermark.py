"""The workflow job's command watermark: a late command must never find its reminder already sent.

Pure decisions with an injected clock (epoch ms as plain ints): what a commands partition is read
through, what a partition of APP-items may fire up to, and the bounded hold.
"""
from __future__ import annotations

import pytest

from stream_jobs.workflow_job import (
    DueIndex, LocalClaims, WatermarkBook, commands_watermark, decode_marker, hold_release_at, is_marker, items_position,
    marker_value, read_through, step_cutoff, step_fire_at,
)
from workflows import model as m
from workflows.machine import apply, fire_due, next_due
from workflows.policy import Policy
from workflows.testing import T0, person

SKEW = 100
HOLD = 30_000


# --- what a commands partition is read through ------------------------------------------------

def test_a_caught_up_partition_is_read_through_the_time_of_the_question_less_the_skew():
    assert commands_watermark(through=42, high=42, asked_at_ms=T0, last_time_ms=T0 - 60_000, skew_ms=SKEW) == T0 - SKEW


def test_a_partition_behind_its_high_watermark_is_read_through_its_last_command_only():
    # the broker has a record the agent has not forwarded: the clock says nothing about it
    assert commands_watermark(through=41, high=42, asked_at_ms=T0, last_time_ms=T0 - 7000, skew_ms=SKEW) == T0 - 7100


def test_without_a_high_watermark_or_a_command_nothing_is_claimed():
    assert commands_watermark(through=10, high=None, asked_at_ms=T0, last_time_ms=None, skew_ms=SKEW) is None
    assert commands_watermark(through=None, high=10, asked_at_ms=T0, last_time_ms=None, skew_ms=SKEW) is None
    # no high watermark (the broker did not answer): the last command's time, not the clock
    assert commands_watermark(through=10, high=None, asked_at_ms=T0, last_time_ms=T0 - 500, skew_ms=SKEW) == T0 - 600


def test_read_through_prefers_what_the_agent_forwarded_then_the_committed_offset():
    assert read_through(forwarded_next=17, committed=12, untouched_position=None, untouched_position_before=None) == 17
    assert read_through(forwarded_next=None, committed=12, untouched_position=30, untouched_position_before=30) == 12


def test_a_partition_never_read_by_a_new_group_needs_its_position_unchanged_at_two_ticks():
    # a record just handed out by the consumer is on its way to the agent: one sight is not enough
    assert read_through(None, None, untouched_position=88, untouched_position_before=None) is None
    assert read_through(None, None, untouched_position=89, untouched_position_before=88) is None
    assert read_through(None, None, untouched_position=89, untouched_position_before=89) == 89
    assert read_through(None, None, untouched_position=None, untouched_position_before=None) is None


# --- the marker on the wire ---------------------------------------------------------------------

def test_a_marker_carries_every_owned_partition_and_is_told_from_a_command_by_its_header():
    value = marker_value("0-ab", 6, T0, {0: T0 - 100, 3: T0 - 7000})
    assert decode_marker(value) == (6, {0: T0 - 100, 3: T0 - 7000})
    assert is_marker([("intelbus-watermark", b"1")]) and is_marker({"intelbus-watermark": b"1"})
    assert not is_marker(None) and not is_marker([]) and not is_marker([("other", b"x")])


# --- what a partition of APP-items may fire up to ---------------------------------------------

def test_a_step_fires_only_up_to_the_slowest_commands_partition():
    marks = {0: (T0 - 200, T0), 1: (T0 - 5000, T0), 2: (T0 - 150, T0)}
    cutoff, strict = step_cutoff(T0, 3, marks, waiting_since_ms=T0 - 1000, hold_ms=HOLD)
    assert cutoff == strict == T0 - 5000


def test_the_wall_clock_bounds_the_cutoff_even_with_watermarks_ahead_of_it():
    marks = {0: (T0 + 500, T0), 1: (T0 + 900, T0)}
    assert step_cutoff(T0, 2, marks, T0 - 1000, HOLD) == (T0, T0)


def test_a_commands_partition_without_a_marker_holds_every_step():
    marks = {0: (T0 - 100, T0)}  # partition 1 never marked: a new worker, its owner not started
    assert step_cutoff(T0, 2, marks, waiting_since_ms=T0 - 1000, hold_ms=HOLD) == (-1, -1)


def test_a_new_worker_with_no_marker_holds_until_the_hold_limit_then_fires_by_the_clock():
    since = T0
    assert step_cutoff(T0 + 29_999, None, {}, since, HOLD) == (-1, -1)
    cutoff, strict = step_cutoff(T0 + 30_000, None, {}, since, HOLD)
    assert cutoff == T0 + 30_000 and strict == -1  # fired by the hold: counted (due > strict)
    assert hold_release_at(T0 + 5000, None, {}, since, HOLD) == T0 + 30_000


def test_a_stuck_commands_partition_is_left_out_after_the_hold_the_others_still_bound():
    marks = {0: (T0 - 40_000, T0 - 31_000), 1: (T0 - 300, T0 - 100)}  # 0 has not advanced for 31 s
    cutoff, strict = step_cutoff(T0, 2, marks, waiting_since_ms=T0 - 60_000, hold_ms=HOLD)
    assert cutoff == T0 - 300 and strict == T0 - 40_000
    # a step at T0 - 10 s waits for partition 0, which the hold lets go 30 s after it last moved
    assert hold_release_at(T0 - 10_000, 2, marks, T0 - 60_000, HOLD) == T0 - 1000


def test_the_timers_sleep_past_a_due_time_the_commands_have_not_reached_until_a_marker_or_the_hold():
    marks = {0: (T0 - 300, T0 - 100), 1: (T0 - 250, T0 - 100)}
    # the commands are read through T0 - 300: a step due at T0 + 50 cannot fire at its time
    assert step_fire_at(T0 + 50, T0, 2, marks, T0 - 5000, HOLD) == T0 - 100 + HOLD
    # one they have passed fires now (or at its time)
    assert step_fire_at(T0 - 400, T0, 2, marks, T0 - 5000, HOLD) == T0
    # a stuck partition's hold is over: the step fires by the clock, at its time
    stuck = {0: (T0 - 60_000, T0 - 40_000), 1: (T0 + 900, T0)}
    assert step_fire_at(T0 + 50, T0, 2, stuck, T0 - 90_000, HOLD) == T0 + 50
    assert step_fire_at(T0 + 50, T0, None, {}, T0 - 1000, HOLD) == T0 - 1000 + HOLD


# --- the book: markers, rebalances, restarts, pauses --------------------------------------------

def test_a_marker_past_the_deadline_frees_the_step_and_an_older_claim_never_takes_it_back():
    book = WatermarkBook(HOLD)
    book.assign(4, T0)
    deadline = T0 + 12_000
    assert book.observe(4, 2, {0: T0 + 11_000, 1: T0 + 11_500}, T0 + 11_600)
    assert book.cutoff(4, T0 + 12_500)[0] < deadline  # the commands are read through 11 s only: held
    assert book.observe(4, 2, {0: T0 + 12_400}, T0 + 12_500)
    assert book.cutoff(4, T0 + 12_500)[0] < deadline  # partition 1 still at 11.5 s
    assert book.observe(4, 2, {1: T0 + 12_400}, T0 + 12_500)
    assert book.cutoff(4, T0 + 12_500) == (T0 + 12_400, T0 + 12_400)
    # a new owner of partition 1, behind the old one after a rebalance: its lower claim is true but
    # the old one was true too (everything it covered is before it on this partition)
    assert not book.observe(4, 2, {1: T0 + 9000}, T0 + 12_600)
    assert book.cutoff(4, T0 + 12_600)[1] == T0 + 12_400


def test_markers_are_per_partition_of_items_and_a_revoked_one_waits_again_when_it_comes_back():
    book = WatermarkBook(HOLD)
    book.assign(0, T0)
    book.assign(1, T0)
    book.observe(0, 1, {0: T0 + 900}, T0 + 1000)
    assert book.cutoff(0, T0 + 1000)[0] == T0 + 900
    assert book.cutoff(1, T0 + 1000)[0] == -1  # no marker read on partition 1 yet
    book.revoke(0)
    book.assign(0, T0 + 2000)
    assert book.cutoff(0, T0 + 2000) == (-1, -1)  # markers are not state: fresh ones are needed
    assert book.cutoff(0, T0 + 2000 + HOLD)[0] == T0 + 2000 + HOLD  # or the hold


def test_a_paused_worker_does_not_fire_by_the_hold_when_it_resumes():
    book = WatermarkBook(HOLD)
    book.assign(0, T0)
    book.observe(0, 1, {0: T0 - 100}, T0)
    later = T0 + 45_000  # SIGSTOPped for 45 s: nothing advanced, and nothing could
    assert book.cutoff(0, later)[0] == later  # without knowing of the pause, the hold would let it fire
    book.resumed(later)
    assert book.cutoff(0, later) == (T0 - 100, T0 - 100)
    assert book.release_at(0, T0 + 1000, later) == later + HOLD


# --- the due index fires each partition up to its own cutoff ------------------------------------

def test_the_due_index_fires_each_partition_up_to_its_cutoff_in_time_order():
    ix = DueIndex()
    ix.set("a", 0, 100)
    ix.set("b", 1, 150)
    ix.set("c", 0, 200)
    ix.set("d", 1, 250)
    assert ix.pop_due(1000, cutoffs={0: 120, 1: 1000}) == [("a", 0), ("b", 1), ("d", 1)]
    assert ix.heads() == {0: 200} and ix.next_at() == 200
    assert ix.pop_due(1000, cutoffs={0: 199}) == []
    assert ix.pop_due(1000, cutoffs={0: 200}) == [("c", 0)] and len(ix) == 0


# --- the machine fires only up to the cutoff ----------------------------------------------------

def test_fire_due_until_fires_the_reminder_and_leaves_the_escalation_for_later():
    policy = Policy().with_seconds(request_ROUTINE_accept_s=10, request_ROUTINE_answer_s=600,
                                   request_ROUTINE_act_s=1200, escalation_step_s=5)
    send = m.SendRequest("c1", "R-1", person("120000"), ("130822/CRIMINAL_INVESTIGATION",), "ROUTINE", (), "where?")
    item, _, _ = apply(None, send, T0, policy)
    reminder_at = next_due(item, policy)
    now = reminder_at + 7000  # the reminder and the first escalation are both past
    after, events, _ = fire_due(item, now, policy, until_ms=reminder_at + 4000)
    assert [e.event_type for e in events] == ["REMINDED"]
    assert all(e.at == now for e in events)  # fired now, scheduled at its own time
    assert next_due(after, policy) == reminder_at + 5000
    _, events, _ = fire_due(after, now, policy)
    assert [e.event_type for e in events] == ["ESCALATED"]


# --- markers on demand -----------------------------------------------------------------------------

def test_a_held_step_asks_for_a_marker_at_its_due_time_plus_the_skew_unless_one_was_asked_that_late():
    from stream_jobs.workflow_job import marker_wanted_at

    assert marker_wanted_at(10_000, last_asked_ms=9_950, skew_ms=100) == 10_100
    # the last marker was asked after due + skew: it already said "read through >= due"; only the commands
    # moving can free the step now, and the regular tick carries that
    assert marker_wanted_at(10_000, last_asked_ms=10_100, skew_ms=100) is None


def test_the_next_marker_comes_at_the_tick_or_sooner_for_a_wish_but_never_within_the_minimum_gap():
    from stream_jobs.workflow_job import marker_delay

    # no wish: the tick after the last try
    assert marker_delay(1_000, last_tried_ms=900, wanted_at=None, interval_s=0.2) == pytest.approx(0.1)
    # a wish before the tick: then
    assert marker_delay(1_000, last_tried_ms=900, wanted_at=1_030, interval_s=0.2) == pytest.approx(0.03)
    # a wish already past: at once, but not within 20 ms of the last try
    assert marker_delay(1_000, last_tried_ms=995, wanted_at=900, interval_s=0.2) == pytest.approx(0.015)
    assert marker_delay(1_000, last_tried_ms=900, wanted_at=900, interval_s=0.2) == 0.0
    # a wish after the tick changes nothing
    assert marker_delay(1_000, last_tried_ms=900, wanted_at=5_000, interval_s=0.2) == pytest.approx(0.1)
    # right after a try that sent nothing (not ready), a wish in the past still waits the gap: no busy loop
    assert marker_delay(1_000, last_tried_ms=1_000, wanted_at=0, interval_s=0.2) == pytest.approx(0.02)


# --- the local watermark: claims for the worker's own partitions of APP-items ----------------------

def test_a_local_claim_holds_only_once_the_items_agent_has_applied_its_partition_up_to_the_high_watermark():
    claims = LocalClaims()
    # commands 0 and 1 read through T0+5 s; the forwarded accept sits at offset 41 of items partition 3
    claims.add(3, 42, 2, {0: T0 + 5000, 1: T0 + 5000})
    assert claims.release(3, 41) == []  # the accept not applied yet: the reminder stays held
    assert claims.release(2, 99) == []  # another partition's progress frees nothing here
    assert claims.release(3, 42) == [(2, {0: T0 + 5000, 1: T0 + 5000})]
    assert claims.release(3, 42) == []  # released once
    assert len(claims) == 0


def test_local_claims_are_released_in_order_and_an_empty_partition_holds_at_once():
    claims = LocalClaims()
    claims.add(0, 10, 1, {0: T0 + 1000})
    claims.add(0, 12, 1, {0: T0 + 1200})
    claims.add(0, 15, 1, {0: T0 + 1500})
    assert claims.release(0, 12) == [(1, {0: T0 + 1000}), (1, {0: T0 + 1200})]
    assert claims.release(0, None) == []  # position not known: nothing
    claims.add(5, 0, 1, {0: T0 + 2000})  # nothing was ever written to partition 5
    assert claims.release(5, None) == [(1, {0: T0 + 2000})]


def test_claims_waiting_on_a_stuck_items_agent_are_bounded_and_a_revoke_drops_them():
    claims = LocalClaims(limit=3)
    for i in range(10):
        claims.add(1, 100 + i, 1, {0: T0 + i})
    assert len(claims) == 3
    assert claims.release(1, 200) == [(1, {0: T0 + 7}), (1, {0: T0 + 8}), (1, {0: T0 + 9})]  # the newest kept
    claims.add(1, 300, 1, {0: T0 + 50})
    claims.revoke(1)
    assert claims.release(1, 1000) == []


def test_the_items_position_is_what_the_agent_applied_else_the_committed_offset():
    assert items_position(57, 40) == 57
    assert items_position(None, 40) == 40
    assert items_position(None, None) is None


def test_a_local_claim_frees_the_held_reminder_like_a_marker_would():
    book, claims = WatermarkBook(HOLD), LocalClaims()
    book.assign(3, T0)
    due = T0 + 10_000
    claims.add(3, 42, 1, {0: due + 50})
    for n, marks in claims.release(3, 40):
        book.observe(3, n, marks, due + 150)
    assert book.cutoff(3, due + 150)[0] < due  # held: the agent is two messages short
    for n, marks in claims.release(3, 42):
        book.observe(3, n, marks, due + 160)
    assert book.cutoff(3, due + 160)[0] >= due
