"""Workflow traffic for `intelbus simulate --workflow`: a seeded day of assistance requests and
directives, people answering after realistic delays (some late, some never), and the ground
truth: every reminder, resend and escalation a correct bus must send.

Three parts, the first two pure (no I/O, no clock but the one given):

- `make_plan(config, policy, regions)`: the day's items and every person's action, as offsets
  in bus milliseconds from the start of the play (requests) or from the item's sending;
- `expected_steps(plan, policy, regions)`: the truth, computed from the documented rules
  (docs/workflows.md, "Deadlines" and "Escalation ladder"), independently of
  `workflows.machine` (the unit tests check that the two agree);
- `play(plan, ...)`: the actions through the gateway's workflow API as logged-in principals of
  each agency, at their times (`PrincipalPool` makes and logs in those principals).

**Time.** The plan is drawn in real-world minutes and compressed by `scale` (3600: an hour of
the day passes in one second). The deadlines are the policy's, in the seconds the bus's
workflow job runs with (`INTELBUS_WORKFLOWS_FILE`): the truth is computed against that same
policy, so a test runs a worker with a policy of seconds and plays a day compressed to match.

**Delays** (real-world minutes, lognormal: median m, shape s; the log of the delay is normal
with mean ln m and deviation s): an addressee accepts (or refuses) a request after m=35, s=0.9;
answers after m=120, s=0.7 from its acceptance; a directive's recipient acknowledges after
m=20, s=0.9 and reports after m=90, s=0.6 from its acknowledgement. Some never act
(`never_share`), some accept and never answer, some refuse with a reason, some report CANNOT.
Items are sent at uniformly random times of the day.

**Margins.** Every action is placed at least `margin` of the escalation step away from every
deadline step of its item (reminder, resend, each escalation level), and at least `min_gap_s`
after the item's previous action (the gateway checks each command against the history the
sink has stored, about a second behind). A draw that falls closer is drawn again (at most 200
times; then the party never acts). So real-time jitter smaller than the margin on a loaded
machine cannot move an action across a deadline: the truth does not depend on it, and `play`
reports every action it could not place within the margin (`slips`).
"""
from __future__ import annotations

import json
import math
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

MS = 1000
STEP_EVENTS = ("REMINDED", "RESENT", "ESCALATED", "STALE_LISTING")

# Agencies of DOMAIN.md's regions: Beijing, Tianjin, Hebei (cities, counties, districts).
REQUEST_REGIONS = ("110105", "110112", "120119", "120114", "130822", "131000", "131002", "130600", "130800",
                   "110000", "120000")
REQUEST_BRANCHES = ("CRIMINAL_INVESTIGATION", "PUBLIC_ORDER", "COMMAND_CENTER")
# who directs whom (regions inside the issuer's)
DIRECTIVE_ISSUERS = {"130000": ("130800", "131000", "130600"), "130800": ("130822",),
                     "110000": ("110105", "110112"), "120000": ("120119", "120114"), "131000": ("131002",)}
REFUSAL_REASONS = ("NOT_COMPETENT", "INSUFFICIENT_INFORMATION", "NO_LEGAL_BASIS", "DUPLICATE", "NO_CAPACITY")
BRANCH_SHORT = {"COMMAND_CENTER": "cc", "CRIMINAL_INVESTIGATION": "ci", "PUBLIC_ORDER": "po", "TRAFFIC": "tr",
                "EXIT_ENTRY": "ee", "COUNTER_TERRORISM": "ct", "INTELLIGENCE": "in", "POLICE_STATION": "ps"}
QUESTIONS = ("核查该人员是否在辖区内落脚", "协助查找该车辆近期行驶轨迹", "核实该手机号机主身份及活动区域",
             "协助调取旅馆登记记录", "协助比对该人员同行关系")


@dataclass(frozen=True)
class Lognormal:
    """A delay in real-world minutes: median `median`, shape `sigma` (deviation of its log)."""

    median: float
    sigma: float

    def draw(self, rng: random.Random) -> float:
        return math.exp(math.log(self.median) + self.sigma * rng.gauss(0.0, 1.0))


@dataclass(frozen=True)
class WorkflowSimConfig:
    seed: int = 1
    scale: float = 3600.0            # real-world seconds per bus second
    day_hours: float = 24.0          # length of the simulated day, real-world hours
    requests: int = 30
    directives: int = 6
    margin: float = 0.25             # share of the escalation step kept clear on each side of every step
    min_gap_s: float = 3.0           # bus seconds between an item's consecutive actions (the history's lag)
    never_share: float = 0.15        # addressees / recipients that never act
    refuse_share: float = 0.12       # addressees that refuse (with a reason)
    silent_after_accept: float = 0.1  # addressees that accept and never answer
    cannot_share: float = 0.15       # recipients that report CANNOT (with a reason)
    close: bool = True               # the requester closes each request after its last step
    accept: Lognormal = Lognormal(35, 0.9)
    answer: Lognormal = Lognormal(120, 0.7)
    ack: Lognormal = Lognormal(20, 0.9)
    report: Lognormal = Lognormal(90, 0.6)
    directive_due_min: float = 120   # a directive is due this many real-world minutes after issue ...
    directive_due_max: float = 240   # ... up to this many
    joint_share: float = 0.3         # requests that ask for joint action
    act: Lognormal = Lognormal(90, 0.6)   # joint action, after answering
    never_act_share: float = 0.2     # addressees that answer a joint request and never report the action
    hits: int = 0                    # WANTED_PERSON / WATCH_MATCH hits the day makes (real records, real matching)
    watch_share: float = 0.3         # of them, watch-alert hits on a plate
    hit_day_share: float = 0.5       # the sightings happen in this first share of the day (NEED_TIME's minutes are
                                     # not compressed: a follow-up needs room after it)
    hit_lead_s: float = 4.0          # bus seconds after a follow-up opens before anyone acts on it (the play
                                     # learns the opening from the gateway's history)
    sighting_report: Lognormal = Lognormal(15, 0.8)  # the sighting region reports what it did, after opening
    confirm: Lognormal = Lognormal(30, 1.0)          # the owner answers, after opening
    need_time: Lognormal = Lognormal(90, 0.5)        # the time a NEED_TIME asks for (real minutes)
    no_report_share: float = 0.2     # sighting regions that never report
    never_confirm_share: float = 0.15
    need_time_share: float = 0.2
    not_valid_share: float = 0.1
    arrest_in_time_share: float = 0.5  # confirmed detentions followed by ARRESTED before the stale-listing step

    def to_ms(self, real_minutes: float) -> int:
        """Real-world minutes -> bus milliseconds."""
        return int(round(real_minutes * 60 / self.scale * MS))


@dataclass
class Party:
    """An addressee (agency) of a request or a recipient (region) of a directive, and what it does when."""

    who: str                               # REGION/BRANCH for requests, REGION for directives
    accept_ms: int | None = None           # from the item's sending (requests); ack for directives
    answer_ms: int | None = None           # answer (requests) / report (directives)
    refuse_ms: int | None = None
    reason: str | None = None              # refusal reason / CANNOT reason
    outcome: str | None = None             # DONE | CANNOT (directives)
    fate: str = ""
    act_ms: int | None = None              # joint action reported (requests asking for it)


@dataclass
class HitPlan:
    """A hit the day makes (a real listing and a real sighting) and what its two regions do, in bus ms from
    the moment its follow-up opens (the hit's detection)."""

    hit_type: str                          # WANTED_PERSON | WATCH_MATCH
    owner: str                             # the record's region (confirms)
    sighted_in: str                        # the check's region (reports what it did)
    danger_level: str | None = None        # wanted record
    priority: str | None = None            # watch alert
    action: str | None = None              # DETAINED | OBSERVED | RELEASED | NOT_FOUND
    action_ms: int | None = None
    need_minutes: int | None = None        # NEED_TIME n (minutes of the bus's clock)
    need_ms: int | None = None
    answer: str | None = None              # CONFIRMED | NOT_VALID
    answer_ms: int | None = None
    arrest_ms: int | None = None           # the wanted record's ARRESTED revision
    record_key: str = ""                   # set by attach_records: the listing's key, REGION/SYSTEM/REF
    matched: str = ""                      # ... and the identifier the sighting shares with it, KIND:value


@dataclass
class PlannedItem:
    ref: str                               # the plan's name of the item (the gateway names it at play time)
    kind: str                              # ASSISTANCE_REQUEST | DIRECTIVE
    origin: str                            # requester agency / issuer agency
    at_ms: int                             # sent / issued, from the start of the play
    parties: list[Party]
    priority: str = "ROUTINE"
    subject: str = ""
    text: str = ""
    due_after_ms: int | None = None        # directives: due this long after issue
    close_ms: int | None = None            # requests: closed by the requester, from sending
    joint: bool = False                    # requests: joint action asked for
    hit: HitPlan | None = None             # hit follow-ups
    anchor_ms: int | None = None           # hits: when the follow-up opened, from the start of the play (planned:
                                           # the sighting's time plus an estimate; after the play: as it opened)

    @property
    def t0_ms(self) -> int:
        """What the item's offsets count from, from the start of the play: its sending, or its opening."""
        return self.anchor_ms if self.anchor_ms is not None else self.at_ms


@dataclass
class Plan:
    config: WorkflowSimConfig
    items: list[PlannedItem]
    unplaced: int = 0                      # draws given up (the party then never acts)
    margin_ms: int = 0                     # kept clear on each side of every deadline step

    def agencies(self) -> list[str]:
        """Every REGION/BRANCH that acts in the plan (a directive's recipient acts as its command center)."""
        out = []
        for it in self.items:
            out.append(it.origin)
            for p in it.parties:
                out.append(p.who if "/" in p.who else f"{p.who}/COMMAND_CENTER")
        return sorted(set(out))

    @property
    def end_ms(self) -> int:
        """When the last planned action is due, from the start of the play."""
        end = 0
        for it in self.items:
            offs = [it.close_ms or 0] + [x for p in it.parties
                                         for x in (p.accept_ms, p.answer_ms, p.refuse_ms, p.act_ms) if x]
            if it.hit is not None:
                h = it.hit
                offs += [x for x in (h.action_ms, h.need_ms, h.answer_ms, h.arrest_ms) if x]
            end = max(end, it.t0_ms + max(offs))
        return end


# --- the rules, as docs/workflows.md states them ------------------------------------------------------


def ladder(region: str, regions) -> list[tuple[str, ...]]:
    """Enclosing regions nearest first (no 市辖区 pseudo-city), then all the region's zones."""
    levels = [(a,) for a in regions.ancestors(region) if regions.name(a) != "市辖区"]
    zones = tuple(sorted(regions.zones_of(region)))
    return levels + ([zones] if zones else [])


def agency_ladder(agency: str, regions) -> list[tuple[str, ...]]:
    region, branch = agency.split("/", 1)
    return [tuple(x if regions.is_zone(x) else f"{x}/{branch}" for x in level) for level in ladder(region, regions)]


@dataclass(frozen=True)
class Step:
    """One reminder, resend, escalation or stale-listing reminder a correct bus must send."""

    ref: str
    item_kind: str
    deadline: str           # accept:<agency>, answer:<agency>, act:<agency>, ack:<region>, due:<region>, confirm, stale
    level: int              # 0: the reminder / resend; k: escalation to the k-th level of the ladder
    event_type: str         # REMINDED | RESENT | ESCALATED | STALE_LISTING
    party: str
    to: tuple[str, ...]
    at_ms: int              # when, from the item's sending (a hit: from its follow-up's opening)
    due_ms: int             # the deadline, from the item's sending (opening)
    occurrence: int = 0     # a hit's confirmation deadline moved by DETAINED or NEED_TIME: 1, 2, ... (0 the first)
    set_by: str | None = None   # what set the deadline: OPENED, DETAINED, NEED_TIME, STALE (hits)
    window_ms: int | None = None  # the deadline, after what set it

    def key(self) -> tuple:
        return (self.ref, self.deadline, self.level, self.occurrence)


def _ladder_steps(it: PlannedItem, name: str, due: int, step: int, party: str, first: str, levels, end, **extra):
    """Step 0 at `due`, level k at due + k*step; each fires when the deadline still applies then."""
    out = []
    for level, to in enumerate([(party,), *levels]):
        at = due + level * step
        if end is not None and at >= end:
            break
        out.append(Step(it.ref, it.kind, name, level, first if level == 0 else "ESCALATED", party, tuple(to), at, due,
                        **extra))
    return out


@dataclass(frozen=True)
class HitDeadline:
    """One due time of a hit follow-up: the confirmation deadline (as opened, as DETAINED shortened it, as
    NEED_TIME moved it) or the stale-listing reminder; `end` is when it stopped applying (None: never)."""

    name: str               # confirm | stale
    due: int                # from the opening
    step: int
    levels: list
    set_by: str             # OPENED | DETAINED | NEED_TIME | STALE
    window: int             # due - the time of what set it
    end: int | None


def hit_deadlines(h: HitPlan, policy, regions) -> list[HitDeadline]:
    """The rules of docs/workflows.md ("Hit follow-up", "Deadlines"), from the plan's actions alone.

    The confirmation deadline is the opening + 10 min (danger HIGH, alert URGENT/CRITICAL) or 1 h
    (the policy's); a DETAINED report while it waits makes it report + 10 min if that is sooner; a
    NEED_TIME n makes it now + n min; CONFIRMED, NOT_VALID or the record's ARRESTED revision stop it.
    A WANTED_PERSON follow-up CONFIRMED with a DETAINED report and no ARRESTED revision reminds its
    owner once, stale-listing time after the later of the two. Steps every `step` (0: the window).
    """
    lad = ladder(h.owner, regions)
    urgent = policy.hit_confirm_urgent_s * MS
    window = urgent if (h.danger_level == "HIGH" or h.priority in ("URGENT", "CRITICAL")) \
        else policy.hit_confirm_routine_s * MS
    out: list[HitDeadline] = []
    cur = ["confirm", window, window, "OPENED", window]  # name, due, window, set_by, window-after-setter
    waiting, detained_at, confirmed_at = True, None, None

    def close(at):
        out.append(HitDeadline(cur[0], cur[1], policy.step_s(cur[2] // MS) * MS, lad, cur[3], cur[4], at))

    moves = sorted((t, kind) for t, kind in ((h.action_ms, "report"), (h.need_ms, "need"), (h.answer_ms, "answer"),
                                             (h.arrest_ms, "arrest")) if t is not None)
    for t, kind in moves:
        if kind == "report" and h.action == "DETAINED":
            detained_at = detained_at if detained_at is not None else t
            if waiting and t + urgent < cur[1]:
                close(t)
                cur = ["confirm", t + urgent, urgent, "DETAINED", urgent]
        elif kind == "need" and waiting:
            close(t)
            n = h.need_minutes * 60 * MS
            cur = ["confirm", t + n, n, "NEED_TIME", n]
        elif kind == "answer" and waiting:
            close(t)
            waiting, confirmed_at = False, t if h.answer == "CONFIRMED" else None
        elif kind == "arrest" and waiting:
            close(t)
            waiting = False
    if waiting:
        close(None)
    if h.hit_type == "WANTED_PERSON" and confirmed_at is not None and detained_at is not None:
        since = max(confirmed_at, detained_at)
        stale = policy.stale_listing_s * MS
        out.append(HitDeadline("stale", since + stale, 0, [], "STALE", stale, h.arrest_ms))
    return out


def deadline_steps(it: PlannedItem, policy, regions) -> list[tuple[str, int, int, list]]:
    """(name, due, step, ladder) of every deadline of the item, from its sending (whether or not it fires)."""
    out = []
    if it.kind == "HIT_FOLLOW_UP":
        return [(d.name, d.due, d.step, d.levels) for d in hit_deadlines(it.hit, policy, regions)]
    if it.kind == "ASSISTANCE_REQUEST":
        d = policy.request(it.priority)
        for p in it.parties:
            lad = agency_ladder(p.who, regions)
            out.append((f"accept:{p.who}", d.accept_s * MS, policy.step_s(d.accept_s) * MS, lad))
            out.append((f"answer:{p.who}", d.answer_s * MS, policy.step_s(d.answer_s) * MS, lad))
            if it.joint:
                out.append((f"act:{p.who}", d.act_s * MS, policy.step_s(d.act_s) * MS, lad))
    else:
        for p in it.parties:
            lad = ladder(p.who, regions)
            out.append((f"ack:{p.who}", policy.directive_ack_s * MS, policy.step_s(policy.directive_ack_s) * MS, lad))
            out.append((f"due:{p.who}", it.due_after_ms,
                        (policy.escalation_step_s or policy.directive_overdue_step_s) * MS, lad))
    return out


def _first(*values):
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _hit_steps(it: PlannedItem, policy, regions) -> list[Step]:
    out: list[Step] = []
    seen: dict[str, int] = {}
    for d in hit_deadlines(it.hit, policy, regions):
        if d.name == "stale":
            steps = [] if d.end is not None and d.due >= d.end else [
                Step(it.ref, it.kind, "stale", 0, "STALE_LISTING", it.hit.owner, (it.hit.owner,), d.due, d.due,
                     0, "STALE", d.window)]
        else:
            steps = _ladder_steps(it, "confirm", d.due, d.step, it.hit.owner, "REMINDED", d.levels, d.end,
                                  occurrence=seen.get(d.name, 0), set_by=d.set_by, window_ms=d.window)
        if steps:
            seen[d.name] = seen.get(d.name, 0) + 1  # the stored history tells due times apart only when one fired
        out += steps
    return out


def expected_steps(plan: Plan, policy, regions) -> list[Step]:
    """Every reminder, resend, escalation and stale-listing reminder of the plan, in time order (the truth)."""
    steps: list[Step] = []
    for it in plan.items:
        if it.kind == "HIT_FOLLOW_UP":
            steps += _hit_steps(it, policy, regions)
            continue
        deadlines = {name: (due, step, lad) for name, due, step, lad in deadline_steps(it, policy, regions)}
        for p in it.parties:
            if it.kind == "ASSISTANCE_REQUEST":
                # accept applies while SENT; answer while SENT or ACCEPTED; act (asked for) until ACTED or
                # REFUSED; every clock stops at CLOSE
                ends = {"accept": _first(p.accept_ms, p.refuse_ms, it.close_ms),
                        "answer": _first(p.answer_ms, p.refuse_ms, it.close_ms)}
                if it.joint:
                    ends["act"] = _first(p.act_ms, p.refuse_ms, it.close_ms)
                first = {"accept": "REMINDED", "answer": "REMINDED", "act": "REMINDED"}
            else:
                # ack applies while SENT; due while SENT or ACKNOWLEDGED (the directive is open until all reported)
                ends = {"ack": p.accept_ms, "due": p.answer_ms}
                first = {"ack": "RESENT", "due": "REMINDED"}
            for kind, end in ends.items():
                name = f"{kind}:{p.who}"
                due, step, lad = deadlines[name]
                steps += _ladder_steps(it, name, due, step, p.who, first[kind], lad, end)
    return sorted(steps, key=lambda s: (s_abs(plan, s), s.ref, s.deadline, s.occurrence, s.level))


def s_abs(plan: Plan, s: Step) -> int:
    """When the step is due, from the start of the play."""
    return next(it.t0_ms for it in plan.items if it.ref == s.ref) + s.at_ms


# --- the plan -----------------------------------------------------------------------------------------


class _Placer:
    """Draws an action's time clear of every deadline step of its item by the margin."""

    def __init__(self, forbidden: list[int], margin_ms: int, min_gap_ms: int):
        self.forbidden, self.margin, self.gap = sorted(forbidden), margin_ms, min_gap_ms

    def ok(self, t: int, after: int) -> bool:
        return t >= after + self.gap and all(abs(t - f) >= self.margin for f in self.forbidden)

    def place(self, rng: random.Random, draw, after: int, limit: int | None = None) -> int | None:
        for _ in range(200):
            t = after + draw()
            if (limit is None or t < limit) and self.ok(t, after):
                return t
        return None


def make_plan(config: WorkflowSimConfig, policy, regions) -> Plan:
    """The seeded day: who sends what when, and when (if ever) each party acts."""
    rng = random.Random(config.seed)
    day_ms = config.to_ms(config.day_hours * 60)
    agencies = [f"{r}/{b}" for r in REQUEST_REGIONS for b in REQUEST_BRANCHES]
    items: list[PlannedItem] = []
    unplaced = 0
    for n in range(config.requests):
        requester = rng.choice(agencies)
        others = [a for a in agencies if a != requester]
        to = rng.sample(others, 2 if rng.random() < 0.25 else 1)
        items.append(PlannedItem(
            ref=f"wf-req-{n:04d}", kind="ASSISTANCE_REQUEST", origin=requester, at_ms=rng.randrange(0, max(day_ms, 1)),
            parties=[Party(a) for a in to], priority=rng.choice(("ROUTINE", "ROUTINE", "URGENT")),
            subject=f"PHONE:1{rng.choice('3589')}{rng.randrange(10**9):09d}", text=rng.choice(QUESTIONS)))
    issuers = sorted(DIRECTIVE_ISSUERS)
    for n in range(config.directives):
        issuer = rng.choice(issuers)
        inside = DIRECTIVE_ISSUERS[issuer]
        to = sorted(rng.sample(inside, min(len(inside), rng.choice((1, 2, 2, 3)))))
        due_after = config.to_ms(rng.uniform(config.directive_due_min, config.directive_due_max))
        items.append(PlannedItem(
            ref=f"wf-dir-{n:04d}", kind="DIRECTIVE", origin=f"{issuer}/COMMAND_CENTER",
            at_ms=rng.randrange(0, max(day_ms, 1)), parties=[Party(r) for r in to], due_after_ms=due_after,
            text=rng.choice(("对辖区旅馆开展清查", "加强进京通道查控", "排查涉案车辆落脚点"))))
    # joint action and hits draw from generators of their own: a day without them is the day it was
    jrng, hrng = random.Random(f"joint-{config.seed}"), random.Random(f"hits-{config.seed}")
    for it in items:
        if it.kind == "ASSISTANCE_REQUEST":
            it.joint = jrng.random() < config.joint_share
    for n in range(config.hits):
        items.append(_hit_item(hrng, config, n, day_ms))
    items.sort(key=lambda it: (it.at_ms, it.ref))
    margin = int(config.margin * _step_ms(policy))
    gap = int(config.min_gap_s * MS)
    for it in items:
        if it.kind == "HIT_FOLLOW_UP":
            unplaced += _hit_fate(hrng, config, it, policy, regions, margin, gap)
            continue
        forbidden = []
        for _name, due, step, lad in deadline_steps(it, policy, regions):
            forbidden += [due + k * step for k in range(len(lad) + 1)]
        placer = _Placer(forbidden, margin, gap)
        for p in it.parties:
            unplaced += _fate(rng, config, it, p, placer)
            if it.joint and p.answer_ms is not None:
                unplaced += _joint_fate(jrng, config, p, placer)
        if it.kind == "ASSISTANCE_REQUEST" and config.close:
            # after every step of the request could have fired, and after its last action
            last = max(forbidden + [x for p in it.parties
                                    for x in (p.accept_ms, p.answer_ms, p.refuse_ms, p.act_ms) if x])
            it.close_ms = last + max(margin, gap)
    return Plan(config, items, unplaced, margin)


def _joint_fate(rng, config: WorkflowSimConfig, p: Party, placer: _Placer) -> int:
    """An addressee that answered a request asking for joint action reports it (ACTED) later, or never."""
    if rng.random() < config.never_act_share:
        p.fate += " (joint action: never)"
        return 0
    p.act_ms = placer.place(rng, lambda: config.to_ms(config.act.draw(rng)), p.answer_ms)
    p.fate += " (joint action: acted)" if p.act_ms is not None else " (joint action: never)"
    return int(p.act_ms is None)


# Hits: the record's owner and the sighting region are of two provinces (a region inside the other never hits)
HIT_OWNERS = ("130822", "131000", "130600", "120119", "120114", "110105", "110112")
HIT_LAG_MS = 1000   # planned time from a sighting's publication to its follow-up opening (the play learns the real one)
SIGHTING_ACTIONS = ("DETAINED", "DETAINED", "DETAINED", "OBSERVED", "RELEASED", "NOT_FOUND")


def _hit_item(rng, config: WorkflowSimConfig, n: int, day_ms: int) -> PlannedItem:
    owner = rng.choice(HIT_OWNERS)
    sighted_in = rng.choice([r for r in REQUEST_REGIONS if r[:2] != owner[:2]])
    watch = rng.random() < config.watch_share
    h = HitPlan("WATCH_MATCH" if watch else "WANTED_PERSON", owner, sighted_in,
                danger_level=None if watch else rng.choice(("LOW", "MEDIUM", "HIGH")),
                priority=rng.choice(("ROUTINE", "URGENT", "CRITICAL")) if watch else None)
    at = rng.randrange(0, max(int(day_ms * config.hit_day_share), 1))
    return PlannedItem(ref=f"wf-hit-{n:04d}", kind="HIT_FOLLOW_UP", origin=f"{owner}/COMMAND_CENTER", at_ms=at,
                       parties=[Party(owner), Party(sighted_in)], hit=h, anchor_ms=at + HIT_LAG_MS)


def _hit_fate(rng, config: WorkflowSimConfig, it: PlannedItem, policy, regions, margin: int, gap: int) -> int:
    """What the two regions of a hit do, and when: the sighting region reports (or not), the owner answers
    (CONFIRMED, NOT_VALID, NEED_TIME then an answer or silence, or never); a wanted record is ARRESTED
    after a confirmed detention (before the stale-listing reminder, or after it) or at the end of the
    follow-up (which stops the clocks of every workflow job that opened it). The times are drawn
    again (at most 200 times) until every one keeps the margin from every step of every due time the
    follow-up has, and the gap after the one before. Returns 1 when they had to be given up."""
    h, owner, sighting = it.hit, it.parties[0], it.parties[1]
    draw = lambda dist: config.to_ms(dist.draw(rng))  # noqa: E731
    h.action = None if rng.random() < config.no_report_share else rng.choice(SIGHTING_ACTIONS)
    u = rng.random()
    c = config
    if u < c.never_confirm_share:
        fate = "never answers"
    elif u < c.never_confirm_share + c.need_time_share:
        fate = "NEED_TIME, then CONFIRMED" if rng.random() < 0.7 else "NEED_TIME, then silent"
    elif u < c.never_confirm_share + c.need_time_share + c.not_valid_share:
        fate = "NOT_VALID"
    else:
        fate = "CONFIRMED"
    in_time_arrest = rng.random() < c.arrest_in_time_share
    lead = max(int(c.hit_lead_s * MS), gap)
    need_minutes = max(1, math.ceil(draw(c.need_time) / 60_000)) if fate.startswith("NEED_TIME") else None
    for _ in range(200):
        t = lead
        h.action_ms = h.need_ms = h.answer_ms = h.arrest_ms = h.need_minutes = h.answer = None
        if h.action:
            h.action_ms = t = max(t, draw(c.sighting_report))
        if fate != "never answers":
            first = max(t + (gap if h.action else 0), draw(c.confirm))
            if need_minutes:
                h.need_ms, h.need_minutes = first, need_minutes
                if fate.endswith("CONFIRMED"):
                    h.answer, h.answer_ms = "CONFIRMED", first + int(rng.uniform(0.2, 0.8) * need_minutes * 60 * MS)
            else:
                h.answer, h.answer_ms = fate, first
        acts = [x for x in (h.action_ms, h.need_ms, h.answer_ms) if x is not None]
        if any(b - a < gap for a, b in zip(acts, acts[1:])):
            continue
        if h.hit_type == "WANTED_PERSON" and in_time_arrest and h.answer == "CONFIRMED" and h.action == "DETAINED":
            since = max(h.action_ms, h.answer_ms)
            h.arrest_ms = since + int(rng.uniform(0.2, 0.8) * policy.stale_listing_s * MS)
        forbidden = _hit_forbidden(h, policy, regions)
        if h.hit_type == "WANTED_PERSON" and h.arrest_ms is None:
            h.arrest_ms = max(forbidden + acts) + max(margin, gap)  # at the end: after every step could have fired
        acts = [x for x in (h.action_ms, h.need_ms, h.answer_ms, h.arrest_ms) if x is not None]
        if all(abs(t - f) >= margin for t in acts for f in forbidden) \
                and all(b - a >= gap for a, b in zip(acts, acts[1:])):
            break
    else:
        h.action = h.action_ms = h.need_ms = h.need_minutes = h.answer = h.answer_ms = None
        h.arrest_ms = (max(_hit_forbidden(h, policy, regions)) + max(margin, gap)) \
            if h.hit_type == "WANTED_PERSON" else None
        owner.fate, sighting.fate = "hit: never answers (no draw kept the margin)", "hit: no report"
        return 1
    owner.fate = f"hit: {fate}"
    sighting.fate = f"hit: {h.action or 'no report'}"
    return 0


def _hit_forbidden(h: HitPlan, policy, regions) -> list[int]:
    """Every time a step of the follow-up could fire, whether it fires or not."""
    out = []
    for d in hit_deadlines(h, policy, regions):
        out += [d.due + k * d.step for k in range(len(d.levels) + 1)]
    return out


def scale_of(policy) -> float:
    """How many times faster than real time a policy runs: an hour over its ROUTINE accept deadline
    (1 for ops/workflows.yaml, 450 for a policy accepting in 8 seconds)."""
    return 3600.0 / policy.request("ROUTINE").accept_s


def _step_ms(policy) -> int:
    """The smallest distance between two steps of a deadline: the margin is a share of it."""
    windows = [policy.directive_ack_s, *(d.accept_s for d in policy.requests.values()),
               *(d.answer_s for d in policy.requests.values()), *(d.act_s for d in policy.requests.values()),
               policy.hit_confirm_urgent_s, policy.hit_confirm_routine_s]
    steps = [policy.step_s(w) for w in windows] + [policy.escalation_step_s or policy.directive_overdue_step_s]
    return min(steps) * MS


def _fate(rng, config: WorkflowSimConfig, it: PlannedItem, p: Party, placer: _Placer) -> int:
    """Decide what the party does, and when. Returns 1 when a draw had to be given up."""
    draw = lambda dist: (lambda: config.to_ms(dist.draw(rng)))  # noqa: E731
    u = rng.random()
    if u < config.never_share:
        p.fate = "never"
        return 0
    if it.kind == "ASSISTANCE_REQUEST":
        if u < config.never_share + config.refuse_share:
            p.refuse_ms = placer.place(rng, draw(config.accept), 0)
            p.reason = rng.choice(REFUSAL_REASONS)
            p.fate = "refused" if p.refuse_ms is not None else "never"
            return int(p.refuse_ms is None)
        p.accept_ms = placer.place(rng, draw(config.accept), 0)
        if p.accept_ms is None:
            p.fate = "never"
            return 1
        if rng.random() < config.silent_after_accept:
            p.fate = "accepted, never answered"
            return 0
        p.answer_ms = placer.place(rng, draw(config.answer), p.accept_ms)
        p.fate = "answered" if p.answer_ms is not None else "accepted, never answered"
        return int(p.answer_ms is None)
    p.accept_ms = placer.place(rng, draw(config.ack), 0)
    if p.accept_ms is None:
        p.fate = "never"
        return 1
    p.answer_ms = placer.place(rng, draw(config.report), p.accept_ms)
    if p.answer_ms is None:
        p.fate = "acknowledged, never reported"
        return 1
    if rng.random() < config.cannot_share:
        p.outcome, p.reason = "CANNOT", rng.choice(("警力不足", "不在辖区", "条件不具备"))
    else:
        p.outcome = "DONE"
    p.fate = f"reported {p.outcome}"
    return 0


# --- actions, in time order ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    at_ms: int          # from the start of the play
    ref: str
    verb: str           # send | accept | answer | refuse | act | close | issue | ack | report; hits: sight |
                        # report | need_time | confirm | arrest
    agency: str         # who acts (REGION/BRANCH)
    planned_ms: int     # from the item's sending (0 for send/issue)


def actions(plan: Plan) -> list[Action]:
    """Every action of the plan in time order. A hit's are the sighting (the identity check or traffic stop
    that makes it: `sight`, from its sighting region), then `report` (the sighting region), `need_time` and
    `confirm` (the owner), and `arrest` (the owner's wanted-records system), planned from the opening."""
    out = []
    for it in plan.items:
        if it.kind == "HIT_FOLLOW_UP":
            h = it.hit
            out.append(Action(it.at_ms, it.ref, "sight", f"{h.sighted_in}/COMMAND_CENTER", 0))
            for verb, who, t in (("report", h.sighted_in, h.action_ms), ("need_time", h.owner, h.need_ms),
                                 ("confirm", h.owner, h.answer_ms), ("arrest", h.owner, h.arrest_ms)):
                if t is not None:
                    out.append(Action(it.t0_ms + t, it.ref, verb, f"{who}/COMMAND_CENTER", t))
        elif it.kind == "ASSISTANCE_REQUEST":
            out.append(Action(it.at_ms, it.ref, "send", it.origin, 0))
            for p in it.parties:
                for verb, t in (("accept", p.accept_ms), ("answer", p.answer_ms), ("refuse", p.refuse_ms),
                                ("act", p.act_ms)):
                    if t is not None:
                        out.append(Action(it.at_ms + t, it.ref, verb, p.who, t))
            if it.close_ms is not None:
                out.append(Action(it.at_ms + it.close_ms, it.ref, "close", it.origin, it.close_ms))
        else:
            out.append(Action(it.at_ms, it.ref, "issue", it.origin, 0))
            for p in it.parties:
                for verb, t in (("ack", p.accept_ms), ("report", p.answer_ms)):
                    if t is not None:
                        out.append(Action(it.at_ms + t, it.ref, verb, f"{p.who}/COMMAND_CENTER", t))
    return sorted(out, key=lambda a: (a.at_ms, a.ref, a.verb))


# --- the plan on the pure core -----------------------------------------------------------------------


def commands_of(plan: Plan, t0_ms: int, prefix: str = "wfsim", item_ids: dict | None = None, due_at: dict | None = None):
    """The plan as `workflows.model` commands with their times: [(at_ms, command)], in time order.

    t0_ms: when the play started; item_ids / due_at: what the play got and sent (default: the refs,
    and due times computed from t0).
    """
    from workflows import model as m

    def actor(agency):
        region, branch = agency.split("/", 1)
        return m.Actor(principal_name(prefix, agency), region, branch, frozenset({"command_center"}))

    item_ids, due_at = item_ids or {}, due_at or {}
    by_ref = {it.ref: it for it in plan.items}
    out = []
    for n, a in enumerate(actions(plan)):
        it = by_ref[a.ref]
        iid, cid, who = item_ids.get(a.ref, a.ref), f"{a.ref}-{n}", actor(a.agency)
        p = next((x for x in it.parties if x.who == a.agency or f"{x.who}/COMMAND_CENTER" == a.agency), None)
        if it.kind == "HIT_FOLLOW_UP":
            out.append((t0_ms + (it.t0_ms if a.verb == "sight" else a.at_ms), _hit_command(it, a, iid, cid, who)))
            continue
        kind = {
            "send": lambda: m.SendRequest(cid, iid, who, tuple(x.who for x in it.parties), it.priority,
                                          (m.Identifier(*it.subject.split(":", 1)),), f"{it.text} ({it.ref})",
                                          joint_action=it.joint),
            "act": lambda: m.ReportJointAction(cid, iid, who, f"联合处置完毕 ({it.ref})"),
            "accept": lambda: m.AcceptRequest(cid, iid, who),
            "answer": lambda: m.AnswerRequest(cid, iid, who, f"已核查 ({it.ref})"),
            "refuse": lambda: m.RefuseRequest(cid, iid, who, p.reason),
            "close": lambda: m.CloseRequest(cid, iid, who, "simulated day over"),
            "issue": lambda: m.IssueDirective(cid, iid, who, tuple(x.who for x in it.parties), f"{it.text} ({it.ref})",
                                              due_at.get(a.ref, t0_ms + it.at_ms + it.due_after_ms)),
            "ack": lambda: m.AcknowledgeDirective(cid, iid, who),
            "report": lambda: m.ReportDirective(cid, iid, who, p.outcome, p.reason or ""),
        }[a.verb]
        out.append((t0_ms + a.at_ms, kind()))
    return out


def hit_record_key(it: PlannedItem) -> str:
    """The matched record's key (REGION/SYSTEM/REF): set by `attach_records`, else one made up from the ref."""
    h = it.hit
    return h.record_key or f"{h.owner}/{'xczx' if h.hit_type == 'WATCH_MATCH' else 'ztry'}/{it.ref}"


def _hit_command(it: PlannedItem, a: Action, iid: str, cid: str, who):
    from workflows import model as m

    h = it.hit
    if a.verb == "sight":  # what the matching jobs and the workflow job make of the sighting
        kind, value = (h.matched or ("PLATE:x" if h.hit_type == "WATCH_MATCH" else "RESIDENT_ID:x")).split(":", 1)
        return m.OpenHit(iid, iid, m.Actor.bus(), h.hit_type, h.owner, h.sighted_in, m.Identifier(kind, value),
                         hit_record_key(it), danger_level=h.danger_level, priority=h.priority)
    if a.verb == "report":
        return m.ReportAction(cid, iid, who, h.action)
    if a.verb == "need_time":
        return m.ConfirmHit(cid, iid, who, "NEED_TIME", h.need_minutes)
    if a.verb == "confirm":
        return m.ConfirmHit(cid, iid, who, h.answer)
    return m.WantedRevision(f"{it.ref}-arrested", iid, m.Actor.bus(), hit_record_key(it), "ARRESTED", 2)


def machine_events(plan: Plan, policy, regions, t0_ms: int, **kw) -> list:
    """Every `WorkflowEvent` the pure core emits for the plan, its timers fired when they fall due
    (each command after the steps due before it: the margins keep them apart)."""
    from workflows.machine import apply, fire_due

    states: dict = {}
    events: list = []
    for at, cmd in commands_of(plan, t0_ms, **kw):
        st = states.get(cmd.item_id)
        st, ev, _ = fire_due(st, at, policy, regions)
        events += ev
        st, ev, _ = apply(st, cmd, at, policy, regions)
        events += ev
        states[cmd.item_id] = st
    far = t0_ms + plan.end_ms + 10 * 86400 * MS
    for iid, st in states.items():
        # every step left, each at its own time (fire_due at `far` would stamp them all with `far`)
        from workflows.machine import due as pending

        for d in pending(st, policy, regions):
            if d.at > far:
                break
            st, ev, _ = fire_due(st, d.at, policy, regions)
            events += ev
        states[iid] = st
    return events


def event_row(e) -> dict:
    """A `WorkflowEvent` as a `workflow_events` row (what the sink stores; '' for unset text)."""
    return {"event_id": e.event_id, "item_id": e.item_id, "item_kind": e.item_kind, "event_type": e.event_type,
            "seq": e.seq, "at_ms": e.at, "status": e.status, "actor": e.actor or "", "actor_agency": e.actor_agency or "",
            "party": e.party or "", "party_status": e.party_status or "", "to": list(e.to), "notify": list(e.notify),
            "deadline": e.deadline or "", "due_ms": e.due_at, "scheduled_ms": e.scheduled_at, "level": e.level,
            "code": e.code or "", "minutes": e.minutes}


def scorecard_period(plan: Plan, t0_ms: int) -> tuple[int, int]:
    """A period holding every item of the play (an hour either side: the stamped times drift a little),
    in whole seconds (the named query's `from` and `to` are DateTimes)."""
    start, end = t0_ms - 3600 * MS, t0_ms + plan.end_ms + 3600 * MS
    return start // MS * MS, -(-end // MS) * MS


# --- the records that make the day's hits -------------------------------------------------------------


@dataclass(frozen=True)
class HitRecords:
    """What the owner's and the sighting region's systems publish for one planned hit (integrators' JSON)."""

    listing_kind: str       # wanted | alert
    listing: dict
    sighting: dict          # an incident: an identity check (a person) or a traffic stop (a plate)
    arrest: dict | None     # the wanted record's ARRESTED revision
    record_key: str
    matched: str            # KIND:value
    hit_id: str
    sighting_kind: str = "incident"


def attach_records(plan: Plan, ref_prefix: str, sighting_kind: str = "incident") -> dict[str, HitRecords]:
    """The records of every planned hit, by ref, with identifiers of this run's own (drawn from the
    prefix, so two runs on one bus never share a person or a plate: each run's hits are its own); sets
    each HitPlan's record_key and matched. The hit id is the matching jobs' (schemas.ids.hit_id of the
    record key, the sighting's event id and the hit type): the play knows it before the hit exists.

    sighting_kind: `incident` (an identity check or a traffic stop, most of the bus's traffic) or `alert`
    (the sighting region's WARNING naming the person or the plate, on intel.alert: lighter traffic,
    for a bus whose jobs carry an incident backlog)."""
    from schemas.ids import derive_event_id, hit_id
    from schemas.normalise import resident_id_check_digit

    rng = random.Random(f"records-{ref_prefix}-{plan.config.seed}")
    out = {}
    for n, it in enumerate(x for x in plan.items if x.kind == "HIT_FOLLOW_UP"):
        h = it.hit
        base = {"revision": 1, "classification": "INTERNAL"}
        if h.hit_type == "WANTED_PERSON":
            first17 = f"{h.owner}{rng.randrange(1960, 2000)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}" \
                      f"{rng.randrange(900, 1000):03d}"
            person = first17 + resident_id_check_digit(first17)
            listing = {**base, "source_region": h.owner, "source_system": "ztry", "source_ref": f"{ref_prefix}ZT{n:04d}",
                       "action": "LISTED", "offence": rng.choice(("THEFT", "FRAUD", "ROBBERY", "DRUGS")),
                       "danger_level": h.danger_level, "warrant_ref": f"{ref_prefix}W{n:04d}",
                       "person": {"id_type": "RESIDENT_ID", "id_number": person, "name": "模拟在逃人员",
                                  "gender": rng.choice("MF"), "role": "WANTED"}}
            sighting = {**base, "source_region": h.sighted_in, "source_system": "jwzh",
                        "source_ref": f"{ref_prefix}JQ{n:04d}", "incident_type": "CHECKPOINT_CHECK", "title": "卡口核查",
                        "location": {"region": h.sighted_in, "address": f"{h.sighted_in} 检查站"},
                        "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "name": "模拟在逃人员",
                                     "role": "CHECKED"}]}
            matched, kind = f"RESIDENT_ID:{person}", "wanted"
            arrest = {**listing, "revision": 2, "action": "ARRESTED"}
        else:
            plate = "冀" + rng.choice("ABCDEFGHJKLMNPQRSTUVWXY") + "".join(
                rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))
            listing = {**base, "source_region": h.owner, "source_system": "xczx", "source_ref": f"{ref_prefix}BK{n:04d}",
                       "alert_type": "WATCH", "title": f"布控车辆 {plate}", "priority": h.priority, "status": "OPEN",
                       "vehicles": [{"plate": plate, "color": "白"}]}
            sighting = {**base, "source_region": h.sighted_in, "source_system": "jwzh",
                        "source_ref": f"{ref_prefix}JT{n:04d}", "incident_type": "TRAFFIC_STOP", "title": "交通检查",
                        "location": {"region": h.sighted_in, "address": f"{h.sighted_in} 检查站"},
                        "vehicles": [{"plate": plate}]}
            matched, kind, arrest = f"PLATE:{plate}", "alert", None
        if sighting_kind == "alert":
            sighting = {**base, "source_region": h.sighted_in, "source_system": "xczx",
                        "source_ref": f"{ref_prefix}YJ{n:04d}", "alert_type": "WARNING", "title": "卡口预警",
                        "priority": "ROUTINE", "status": "OPEN",
                        **({"persons": [{**sighting["persons"][0], "role": "SUSPECT"}]} if "persons" in sighting
                           else {"vehicles": sighting["vehicles"]})}
        key = f"{listing['source_region']}/{listing['source_system']}/{listing['source_ref']}"
        trigger = derive_event_id(sighting["source_region"], sighting["source_system"], sighting["source_ref"], 1)
        h.record_key, h.matched = key, matched
        out[it.ref] = HitRecords(kind, listing, sighting, arrest if h.arrest_ms is not None else None, key, matched,
                                 hit_id(key, trigger, h.hit_type), "alert" if "alert_type" in sighting else "incident")
    return out


def expected_scorecard(plan: Plan, policy, regions, t0_ms: int, item_ids: dict | None = None,
                       due_at: dict | None = None) -> list[dict]:
    """The scorecard a correct bus shows for the play (workflows.scorecard over the events the core
    emits for the plan as played from t0_ms), one row per agency."""
    from workflows.scorecard import scorecard

    rows = [event_row(e) for e in machine_events(plan, policy, regions, t0_ms, item_ids=item_ids, due_at=due_at)]
    start, end = scorecard_period(plan, t0_ms)
    return scorecard(rows, start_ms=start, end_ms=end)


# --- the truth file -----------------------------------------------------------------------------------


def truth_records(plan: Plan, steps: list[Step], policy, item_ids: dict[str, str] | None = None,
                  played: dict | None = None) -> list[dict]:
    """JSON Lines records of the truth: one `workflow_item` per item, one `workflow_step` per step.

    item_ids: plan ref -> the gateway's item id (after the play); played: the play's report.
    """
    item_ids = item_ids or {}
    by_ref = {it.ref: it for it in plan.items}
    out = []
    acts: dict[str, list] = {}
    for a in actions(plan):
        if a.verb not in ("send", "issue"):
            acts.setdefault(a.ref, []).append({"verb": a.verb, "agency": a.agency, "planned_ms": a.planned_ms})
    for it in plan.items:
        out.append({"type": "workflow_item", "ref": it.ref, "item_id": item_ids.get(it.ref), "item_kind": it.kind,
                    "origin": it.origin, "at_ms": it.at_ms, "priority": it.priority if it.kind != "DIRECTIVE" else None,
                    "due_after_ms": it.due_after_ms, "close_ms": it.close_ms,
                    "parties": [{k: v for k, v in asdict(p).items() if v is not None and v != ""} for p in it.parties],
                    "actions": acts.get(it.ref, []), "deadlines": _deadline_records(it, policy),
                    **({"joint_action": True} if it.joint else {}),
                    **({"hit": {k: v for k, v in asdict(it.hit).items() if v not in (None, "")},
                        "anchor_ms": it.anchor_ms} if it.hit is not None else {})})
    for s in steps:
        rec = {"type": "workflow_step", "ref": s.ref, "item_id": item_ids.get(s.ref), "item_kind": s.item_kind,
               "deadline": s.deadline, "level": s.level, "event_type": s.event_type, "party": s.party,
               "to": list(s.to), "after_ms": s.at_ms, "due_after_ms": s.due_ms}
        if s.set_by is not None:  # a hit's: its due time counts from what set it (as stamped), not the opening
            rec.update(occurrence=s.occurrence, set_by=s.set_by, window_ms=s.window_ms)
        if by_ref[s.ref].kind == "DIRECTIVE" and s.deadline.startswith("due:") and played:
            rec["due_at_ms"] = played.get("due_at", {}).get(s.ref)
        out.append(rec)
    return out


def _deadline_records(it: PlannedItem, policy) -> list[dict]:
    """Every due time of the item, whether it fires or not (verify checks each action against each step)."""
    if it.kind == "HIT_FOLLOW_UP":
        return [{"name": d.name, "due_after_ms": d.due, "step_ms": d.step, "levels": len(d.levels),
                 "set_by": d.set_by, "window_ms": d.window} for d in hit_deadlines(it.hit, policy, regions_of(policy))]
    return [{"name": n, "due_after_ms": due, "step_ms": step, "levels": len(lad)}
            for n, due, step, lad in deadline_steps(it, policy, regions_of(policy))]


def regions_of(_policy):
    from schemas.regions import load_regions

    return load_regions()


def as_played(plan: Plan, played: dict) -> Plan:
    """The plan as it was sent: an item the gateway never took is left out; an action it refused
    (4xx: the history did not allow it in time) is one the party never took, so the truth then
    holds the steps that follow from that. Other failures are kept (the command may have gone out)."""
    import copy

    sent = set(played.get("item_ids", {}))
    refused = {(f["ref"], f["verb"], f["agency"]) for f in played.get("failed", [])
               if 400 <= int(f.get("status") or 0) < 500}
    items = []
    anchors = played.get("anchors", {})
    for it in plan.items:
        if it.ref not in sent:
            continue
        it = copy.deepcopy(it)
        if it.kind == "HIT_FOLLOW_UP":
            h = it.hit
            if it.ref in anchors and "started_ms" in played:
                it.anchor_ms = int(anchors[it.ref]) - int(played["started_ms"])
            for verb, who, attrs in (("report", h.sighted_in, ("action", "action_ms")),
                                     ("need_time", h.owner, ("need_minutes", "need_ms")),
                                     ("confirm", h.owner, ("answer", "answer_ms")), ("arrest", h.owner, ("arrest_ms",))):
                if (it.ref, verb, f"{who}/COMMAND_CENTER") in refused:
                    for attr in attrs:
                        setattr(h, attr, None)
                    it.parties[0 if who == h.owner else 1].fate += f" (its {verb} was refused at play time)"
            items.append(it)
            continue
        for p in it.parties:
            agency = p.who if "/" in p.who else f"{p.who}/COMMAND_CENTER"
            verbs = (("accept", "accept_ms"), ("answer", "answer_ms"), ("refuse", "refuse_ms"), ("act", "act_ms")) \
                if it.kind == "ASSISTANCE_REQUEST" else (("ack", "accept_ms"), ("report", "answer_ms"))
            for verb, attr in verbs:
                if (it.ref, verb, agency) in refused and getattr(p, attr) is not None:
                    setattr(p, attr, None)
                    p.fate += f" (its {verb} was refused at play time)"
        if (it.ref, "close", it.origin) in refused:
            it.close_ms = None
        items.append(it)
    return Plan(plan.config, items, plan.unplaced, plan.margin_ms)


def workflow_summary(plan: Plan, steps: list[Step], policy, played: dict | None = None) -> dict:
    """The summary line of a workflow truth file (type "summary", mode "workflow")."""
    from collections import Counter

    c = plan.config
    fates = Counter(p.fate for it in plan.items for p in it.parties)
    return {"type": "summary", "mode": "workflow", "seed": c.seed, "scale": c.scale, "day_hours": c.day_hours,
            "margin_ms": plan.margin_ms, "min_gap_ms": int(c.min_gap_s * MS),
            "items": len(plan.items), "requests": sum(it.kind == "ASSISTANCE_REQUEST" for it in plan.items),
            "directives": sum(it.kind == "DIRECTIVE" for it in plan.items),
            "hits": sum(it.kind == "HIT_FOLLOW_UP" for it in plan.items),
            "joint_requests": sum(it.joint for it in plan.items), "steps": len(steps),
            "steps_by_type": dict(Counter(s.event_type for s in steps)), "fates": dict(fates),
            "unplaced": plan.unplaced, "policy": policy_summary(policy),
            "played": {k: v for k, v in (played or {}).items() if k not in ("due_at", "item_ids", "anchors")}}


def policy_summary(policy) -> dict:
    return {"requests": {p: asdict(d) for p, d in policy.requests.items()}, "directive_ack_s": policy.directive_ack_s,
            "hit_confirm_urgent_s": policy.hit_confirm_urgent_s, "hit_confirm_routine_s": policy.hit_confirm_routine_s,
            "stale_listing_s": policy.stale_listing_s,
            "directive_overdue_step_s": policy.directive_overdue_step_s, "escalation_step_s": policy.escalation_step_s}


def write_truth(path: str, plan: Plan, steps: list[Step], policy, played: dict | None = None) -> None:
    """The summary, the items, the steps and, after a play, the expected scorecard (`workflow_scorecard`
    rows, one per agency, over the period in the summary's `scorecard_period`)."""
    played = played or {}
    ids = played.get("item_ids", {})
    summary = workflow_summary(plan, steps, policy, played)
    card = []
    if "started_ms" in played:
        summary["scorecard_period"] = list(scorecard_period(plan, played["started_ms"]))
        card = expected_scorecard(plan, policy, regions_of(policy), played["started_ms"], ids, played.get("due_at"))
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, ensure_ascii=False) + "\n")
        for rec in truth_records(plan, steps, policy, ids, played):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        for row in card:
            f.write(json.dumps({"type": "workflow_scorecard", **row}, ensure_ascii=False) + "\n")


# --- principals and the play --------------------------------------------------------------------------


def principal_name(prefix: str, agency: str) -> str:
    region, branch = agency.split("/", 1)
    return f"{prefix}-{region}-{BRANCH_SHORT.get(branch, branch.lower())}"


class PrincipalPool:
    """One command-center principal per acting agency (`<prefix>-<region>-<branch>`, role command_center),
    made in the stack's principal store as `intelbus access add` would, with passwords kept in
    <stack>/identity/workflow-sim-passwords.json (0600), logged in at the gateway's /api/v1/login."""

    def __init__(self, settings, gateway_url: str, prefix: str = "wfsim"):
        self.settings, self.url, self.prefix = settings, gateway_url.rstrip("/"), prefix
        self.clients: dict[str, object] = {}

    def ensure(self, agencies) -> None:
        import os

        from identity.store import PrincipalStore, store_path

        path = self.settings.stack_path / "identity" / "workflow-sim-passwords.json"
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            known = {}
        store = PrincipalStore(store_path(self.settings))
        try:
            for agency in agencies:
                name = principal_name(self.prefix, agency)
                region, branch = agency.split("/", 1)
                password = known.get(name) or secrets.token_urlsafe(18)
                existing = store.find(name)
                if existing is None:
                    store.add(actor="intelbus-simulate", name=name, kind="person", region=region, branch=branch,
                              roles=["command_center"], clearance="INTERNAL", password=password,
                              display_name="workflow simulator")
                else:
                    if existing.disabled:
                        store.set_disabled(actor="intelbus-simulate", name=name, disabled=False)
                    if name not in known:
                        store.reset_password(actor="intelbus-simulate", name=name, password=password)
                known[name] = password
            try:
                from identity.access_cli import flush_to_audit

                flush_to_audit(store, out=lambda _m: None)
            except Exception:  # the audit log is told when the gateway next starts
                pass
        finally:
            store.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(known, f)
        os.replace(tmp, path)
        from gateway.client import GatewayClient

        for agency in agencies:
            name = principal_name(self.prefix, agency)
            with GatewayClient(self.url) as anon:
                token = anon.post("/api/v1/login", {"name": name, "password": known[name]})["token"]
            self.clients[agency] = GatewayClient(self.url, token, timeout=30)

    def client(self, agency: str):
        return self.clients[agency]

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def _route(a: Action, it: PlannedItem, item_id: str | None, p: Party | None, due_at: int | None):
    if a.verb == "send":
        return "/api/v1/requests", {"to": [x.who for x in it.parties], "priority": it.priority,
                                    "subjects": [it.subject], "question": f"{it.text} ({it.ref})",
                                    "joint_action": it.joint}
    if a.verb == "issue":
        return "/api/v1/directives", {"to": [x.who for x in it.parties], "task": f"{it.text} ({it.ref})",
                                      "due_at": due_at}
    if it.kind == "HIT_FOLLOW_UP":
        h = it.hit
        if a.verb == "report":
            return f"/api/v1/hits/{item_id}/report", {"action": h.action, "note": f"({it.ref})"}
        if a.verb == "need_time":
            return f"/api/v1/hits/{item_id}/confirm", {"answer": "NEED_TIME", "minutes": h.need_minutes}
        return f"/api/v1/hits/{item_id}/confirm", {"answer": h.answer, "note": f"({it.ref})"}
    base = f"/api/v1/requests/{item_id}" if it.kind == "ASSISTANCE_REQUEST" else f"/api/v1/directives/{item_id}"
    body = {"accept": {}, "answer": {"findings": f"已核查 ({it.ref})"}, "close": {"outcome": "simulated day over"},
            "ack": {}}.get(a.verb)
    if a.verb == "refuse":
        body = {"reason_code": p.reason, "text": ""}
    elif a.verb == "report":
        body = {"outcome": p.outcome, "reason": p.reason or ""}
    elif a.verb == "act":
        return f"{base}/joint", {"outcome": f"联合处置完毕 ({it.ref})"}
    return f"{base}/{a.verb}", body


def opened_at(client, hit_id: str, *, timeout_s: float, clock=time.time, sleep=time.sleep) -> int | None:
    """When the hit's follow-up opened (its OPENED event's time: the hit's detection), read from the
    gateway's item view; None when it has not opened within timeout_s."""
    from gateway.client import ClientError

    deadline = clock() + timeout_s
    while True:
        try:
            view = client.get(f"/api/v1/items/{hit_id}")
            opened = [e for e in view.get("events", []) if e.get("event_type") == "OPENED"]
            if opened:
                return int(opened[0]["at_ms"])
        except ClientError as exc:
            if exc.status != 404:
                raise
        if clock() >= deadline:
            return None
        sleep(0.2)


def play(plan: Plan, pool, *, lead_s: float = 2.0, clock=time.time, sleep=time.sleep, log=None,
         workers: int = 16, records: dict | None = None, publisher=None, open_timeout_s: float = 30.0,
         opened=None) -> dict:
    """Carry out every action of the plan through the gateway at its time (bus ms from the start).

    Each action runs on one of `workers` threads, so a slow answer does not hold up the next
    action (0: in this thread, one after the other).

    Hits (`records`, from attach_records; `publisher(kind, record, now_ms)` publishes one record):
    the listings go out before the start; a sighting goes out at its time, and its follow-up's
    actions at their offsets from the moment it opened: `opened(hit_id, timeout_s)` (the OPENED
    event's time, or None), by default read from the gateway (`opened_at`).

    An action the gateway answers 404/409 (the history does not show the previous action yet)
    is tried again until its margin is used up. Returns {item_ids, due_at, anchors, started_ms,
    actions, failed, slips, max_slip_ms, max_open_lag_ms}: a slip is an action whose time, as the
    gateway may have stamped it, can be off its plan by the margin or more (the truth may then be
    wrong for it).
    """
    import threading

    from gateway.client import ClientError

    by_ref = {it.ref: it for it in plan.items}
    records = records or {}
    margin = plan.margin_ms
    publish_lock = threading.Lock()

    def publish(kind: str, record: dict) -> int:
        with publish_lock:
            now = int(clock() * MS)
            publisher(kind, {**record, "occurred_at": now}, now)
            return now

    for ref, rec in records.items():  # the listings, before anything is sighted
        publish(rec.listing_kind, rec.listing)
    t0 = clock() + lead_s
    item_ids: dict[str, str] = {}
    sent_window: dict[str, tuple[float, float]] = {}
    due_at: dict[str, int] = {}
    anchors: dict[str, int] = {}
    failed: list[dict] = []
    slips: list[dict] = []
    max_slip = max_open_lag = 0
    futures = {}

    def do(a: Action):
        try:
            act(a)
        except Exception as exc:  # noqa: BLE001 - a thread's failure is the play's report, not a lost exception
            failed.append({"ref": a.ref, "verb": a.verb, "agency": a.agency, "error": f"{type(exc).__name__}: {exc}"[:300]})

    def act(a: Action):
        nonlocal max_open_lag
        it = by_ref[a.ref]
        if a.verb not in ("send", "issue", "sight"):
            fut = futures.get((a.ref, "origin"))
            if fut is not None:
                fut.result()  # do() keeps its failures in `failed`: the item then has no id
            if a.ref not in item_ids:
                failed.append({"ref": a.ref, "verb": a.verb, "agency": a.agency, "error": "the item was never sent"})
                return
        if a.verb == "sight":
            rec = records[a.ref]
            sighted = publish(rec.sighting_kind, rec.sighting)
            at = opened(rec.hit_id, open_timeout_s) if opened is not None else \
                opened_at(pool.client(a.agency), rec.hit_id, timeout_s=open_timeout_s, clock=clock, sleep=sleep)
            if at is None:
                failed.append({"ref": a.ref, "verb": a.verb, "agency": a.agency, "hit_id": rec.hit_id,
                               "error": f"the hit's follow-up did not open within {open_timeout_s:g} s"})
                return
            max_open_lag = max(max_open_lag, int(clock() * MS) - at)
            anchors[a.ref], item_ids[a.ref] = at, rec.hit_id
            if log:
                log(f"simulate --workflow: hit {rec.hit_id} ({a.ref}) detected {at - sighted} ms after its sighting")
            return
        if it.kind == "HIT_FOLLOW_UP":  # at its offset from the opening, not from the planned start
            wait = (anchors[a.ref] + a.planned_ms) / MS - clock()
            if wait > 0:
                sleep(wait)
            base, give_up = anchors[a.ref] / MS, (anchors[a.ref] + a.planned_ms + margin * 0.8) / MS
        else:
            base, give_up = None, t0 + (a.at_ms + margin * 0.8) / MS
        if a.verb == "arrest":
            stamped = publish("wanted", records[a.ref].arrest) - anchors[a.ref]
            _slip(a, stamped, stamped)
            return
        party = next((p for p in it.parties if p.who == a.agency or f"{p.who}/COMMAND_CENTER" == a.agency), None)
        client = pool.client(a.agency)
        while True:
            started = clock()
            if a.verb == "issue":
                due_at[a.ref] = int(started * MS) + it.due_after_ms
            path, body = _route(a, it, item_ids.get(a.ref), party, due_at.get(a.ref))
            try:
                out = client.post(path, body)
                ended = clock()
                break
            except ClientError as exc:
                if exc.status in (404, 409) and clock() < give_up:
                    sleep(0.15)
                    continue
                failed.append({"ref": a.ref, "verb": a.verb, "agency": a.agency, "status": exc.status,
                               "error": str(exc)[:300]})
                return
        if a.verb in ("send", "issue"):
            item_ids[a.ref] = out["item_id"]
            sent_window[a.ref] = (started, ended)
            return
        s0, s1 = (base, base) if base is not None else sent_window[a.ref]
        _slip(a, (started - s1) * MS, (ended - s0) * MS)

    def _slip(a: Action, low: float, high: float):
        nonlocal max_slip
        slip = max(a.planned_ms - low, high - a.planned_ms, 0)
        max_slip = max(max_slip, int(slip))
        if slip >= margin:
            slips.append({"ref": a.ref, "item_id": item_ids[a.ref], "verb": a.verb, "agency": a.agency,
                          "planned_ms": a.planned_ms, "played_ms": [int(low), int(high)]})

    def submit_at(a: Action) -> int:
        # a follow-up's action is handed to a thread a planned detection lag early: the thread waits
        # for the real opening and then for the action's offset from it
        return a.at_ms - HIT_LAG_MS if by_ref[a.ref].kind == "HIT_FOLLOW_UP" and a.verb != "sight" else a.at_ms

    acts = sorted(actions(plan), key=lambda a: (submit_at(a), a.ref, a.verb))
    n_hit = sum(by_ref[a.ref].kind == "HIT_FOLLOW_UP" for a in acts)
    # a hit's actions wait (for the opening, then for their offset) on threads of their own: on the
    # shared ones they would hold up the requests' and directives' actions behind them
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool_x, \
            ThreadPoolExecutor(max_workers=max(n_hit, 1)) as hits_x:
        for n, a in enumerate(acts):
            wait = t0 + submit_at(a) / MS - clock()
            if wait > 0:
                sleep(wait)
            if workers == 0:  # one at a time, in this thread (tests with an injected clock)
                do(a)
                continue
            fut = (hits_x if by_ref[a.ref].kind == "HIT_FOLLOW_UP" else pool_x).submit(do, a)
            if a.verb in ("send", "issue", "sight"):
                futures[(a.ref, "origin")] = fut
            if log and n and n % 25 == 0:
                log(f"simulate --workflow: {n}/{len(acts)} actions, {len(failed)} failed")
    return {"item_ids": item_ids, "due_at": due_at, "anchors": anchors, "started_ms": int(t0 * MS),
            "actions": len(acts), "failed": failed, "slips": slips, "max_slip_ms": max_slip,
            "max_open_lag_ms": max_open_lag, "margin_ms": margin}


def wait_until(t_ms: int, *, clock=time.time, sleep=time.sleep) -> None:
    wait = t_ms / MS - clock()
    if wait > 0:
        sleep(wait)
