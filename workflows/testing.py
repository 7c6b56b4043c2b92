"""An injected clock and a runner that keeps history: for tests of the workflows and of the stream job that drives them."""
from __future__ import annotations


from schemas.regions import load_regions
from workflows.machine import apply, fire, fire_due
from workflows.model import Actor
from workflows.policy import Policy

T0 = 1_790_000_000_000  # 2026-09-21 UTC, in ms
MIN = 60_000
HOUR = 60 * MIN


class Clock:
    """The only time the tests know: advanced by hand, passed to apply/fire as now_ms."""

    def __init__(self, start: int = T0):
        self.now = start

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now

    def at(self, ms: int) -> int:
        self.now = ms
        return ms


def person(region: str, branch: str = "COMMAND_CENTER", role: str = "command_center", name: str | None = None) -> Actor:
    return Actor(name or f"{region.lower()}-{branch.lower()[:4]}", region, branch, frozenset({role}))


class Runner:
    """One item driven through apply/fire with the clock; every event and effect kept."""

    def __init__(self, policy: Policy | None = None):
        self.clock = Clock()
        self.policy = policy or Policy()
        self.regions = load_regions()
        self.state = None
        self.events: list = []
        self.effects: list = []
        self._n = 0

    def next_id(self) -> str:
        self._n += 1
        return f"cmd-{self._n}"

    def apply(self, command):
        self.state, events, effects = apply(self.state, command, self.clock.now, self.policy, self.regions)
        self.events += events
        self.effects += effects
        return events, effects

    def fire(self, deadline):
        self.state, events, effects = fire(self.state, deadline, self.clock.now, self.policy, self.regions)
        self.events += events
        self.effects += effects
        return events

    def fire_due(self):
        self.state, events, effects = fire_due(self.state, self.clock.now, self.policy, self.regions)
        self.events += events
        self.effects += effects
        return events

    def types(self, events=None) -> list[str]:
        return [e.event_type for e in (self.events if events is None else events)]


