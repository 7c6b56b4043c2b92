"""Timers as the stream job drives them: however often (or rarely) a worker checks, every reminder and
escalation comes out once, and the same ones; a forged or stale deadline object never fires early."""
from __future__ import annotations

import functools
import random

import pytest

from workflows import model as m
from workflows.machine import due, next_due
from workflows.testing import HOUR, MIN, Runner, person

DAY = 24 * HOUR


def start(kind: str) -> Runner:
    r = Runner()
    if kind == "hit":
        r.apply(m.OpenHit("o", "H-1", m.Actor.bus(), "WANTED_PERSON", "130822", "120114", m.Identifier("PLATE", "冀R8F3D6"),
                          "130822/ztry/W-1", "HIGH"))
    elif kind == "request":
        r.apply(m.SendRequest("s", "R-1", person("110000"), ("130822/CRIMINAL_INVESTIGATION", "131000/PUBLIC_ORDER"),
                              "URGENT", (), "check the hotel", joint_action=True))
    else:
        r.apply(m.IssueDirective("i", "D-1", person("130000"), ("130822", "131000"), "checkpoints", r.clock.now + 3 * HOUR))
    return r


def fired_keys(r: Runner) -> list[tuple]:
    return [(e.command_id, e.event_type, e.level, e.to, e.scheduled_at) for e in r.events
            if e.event_type in ("REMINDED", "RESENT", "ESCALATED", "STALE_LISTING")]


HORIZON = 5 * DAY  # past the last escalation of every kind (a request's joint action: 24 h + 3 x 24 h)


@functools.cache
def checked_every_five_minutes(kind: str) -> Runner:
    """Every deadline step of these items falls on a multiple of five minutes."""
    r = start(kind)
    t0 = r.clock.now
    for tick in range(0, HORIZON // (5 * MIN) + 1):
        r.clock.at(t0 + tick * 5 * MIN)
        r.fire_due()
    return r


@pytest.mark.parametrize("kind", ["hit", "request", "directive"])
@pytest.mark.parametrize("seed", range(15))
def test_the_reminders_and_escalations_do_not_depend_on_when_the_worker_checks(kind, seed):
    rnd = random.Random(seed)
    horizon = HORIZON
    every_five = checked_every_five_minutes(kind)
    t0 = every_five.clock.now - horizon
    # a worker that was down for random stretches, and checks some moments twice
    sporadic = start(kind)
    t = t0
    while t < t0 + horizon:
        t = min(t0 + horizon, t + rnd.choice([MIN, 7 * MIN, HOUR, 5 * HOUR, DAY]))
        sporadic.clock.at(t)
        sporadic.fire_due()
        if rnd.random() < 0.3:
            sporadic.fire_due()
    assert fired_keys(sporadic) == fired_keys(every_five) != []
    assert sporadic.state.fired == every_five.state.fired
    assert due(sporadic.state, sporadic.policy) == [] and next_due(sporadic.state, sporadic.policy) is None


def test_a_deadline_object_with_a_wrong_time_fires_at_the_true_time_only():
    r = start("hit")
    real = due(r.state, r.policy)[1]  # the first escalation, 20 minutes after opening
    forged = m.Deadline(r.clock.now, real.item_id, real.name, real.step, real.due, real.party, real.to)
    assert r.fire(forged) == []
    r.clock.advance(20 * MIN)
    assert [e.level for e in r.fire(forged)] == [1]


def test_next_due_is_the_earliest_step():
    r = start("directive")
    assert next_due(r.state, r.policy) == r.clock.now + 15 * MIN
    assert next_due(None, r.policy) is None
