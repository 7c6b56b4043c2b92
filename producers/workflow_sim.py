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
            offs = [it.close_ms or 0] + [x for p in it.parties for x in (p.accept_ms, p.answer_ms, p.refuse_ms) if x]
            end = max(end, it.at_ms + max(offs))
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
    """One reminder, resend or escalation a correct bus must send."""

    ref: str
    item_kind: str
    deadline: str           # accept:<agency>, answer:<agency>, ack:<region>, due:<region>
    level: int              # 0: the reminder / resend; k: escalation to the k-th level of the ladder
    event_type: str         # REMINDED | RESENT | ESCALATED
    party: str
    to: tuple[str, ...]
    at_ms: int              # when, from the item's sending
    due_ms: int             # the deadline, from the item's sending

    def key(self) -> tuple:
        return (self.ref, self.deadline, self.level)


def _ladder_steps(it: PlannedItem, name: str, due: int, step: int, party: str, first: str, levels, end):
    """Step 0 at `due`, level k at due + k*step; each fires when the deadline still applies then."""
    out = []
    for level, to in enumerate([(party,), *levels]):
        at = due + level * step
        if end is not None and at >= end:
            break
        out.append(Step(it.ref, it.kind, name, level, first if level == 0 else "ESCALATED", party, tuple(to), at, due))
    return out


def deadline_steps(it: PlannedItem, policy, regions) -> list[tuple[str, int, int, list]]:
    """(name, due, step, ladder) of every deadline of the item, from its sending (whether or not it fires)."""
    out = []
    if it.kind == "ASSISTANCE_REQUEST":
        d = policy.request(it.priority)
        for p in it.parties:
            lad = agency_ladder(p.who, regions)
            out.append((f"accept:{p.who}", d.accept_s * MS, policy.step_s(d.accept_s) * MS, lad))
            out.append((f"answer:{p.who}", d.answer_s * MS, policy.step_s(d.answer_s) * MS, lad))
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


def expected_steps(plan: Plan, policy, regions) -> list[Step]:
    """Every reminder, resend and escalation of the plan, in time order (the truth)."""
    steps: list[Step] = []
    for it in plan.items:
        deadlines = {name: (due, step, lad) for name, due, step, lad in deadline_steps(it, policy, regions)}
        for p in it.parties:
            if it.kind == "ASSISTANCE_REQUEST":
                # accept applies while SENT; answer while SENT or ACCEPTED; every clock stops at CLOSE
                ends = {"accept": _first(p.accept_ms, p.refuse_ms, it.close_ms),
                        "answer": _first(p.answer_ms, p.refuse_ms, it.close_ms)}
                first = {"accept": "REMINDED", "answer": "REMINDED"}
            else:
                # ack applies while SENT; due while SENT or ACKNOWLEDGED (the directive is open until all reported)
                ends = {"ack": p.accept_ms, "due": p.answer_ms}
                first = {"ack": "RESENT", "due": "REMINDED"}
            for kind, end in ends.items():
                name = f"{kind}:{p.who}"
                due, step, lad = deadlines[name]
                steps += _ladder_steps(it, name, due, step, p.who, first[kind], lad, end)
    return sorted(steps, key=lambda s: (s_abs(plan, s), s.ref, s.deadline, s.level))


def s_abs(plan: Plan, s: Step) -> int:
    return next(it.at_ms for it in plan.items if it.ref == s.ref) + s.at_ms


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
    items.sort(key=lambda it: (it.at_ms, it.ref))
    margin = int(config.margin * _step_ms(policy))
    gap = int(config.min_gap_s * MS)
    for it in items:
        forbidden = []
        for _name, due, step, lad in deadline_steps(it, policy, regions):
            forbidden += [due + k * step for k in range(len(lad) + 1)]
        placer = _Placer(forbidden, margin, gap)
        for p in it.parties:
            unplaced += _fate(rng, config, it, p, placer)
        if it.kind == "ASSISTANCE_REQUEST" and config.close:
            # after every step of the request could have fired, and after its last action
            last = max(forbidden + [x for p in it.parties for x in (p.accept_ms, p.answer_ms, p.refuse_ms) if x])
            it.close_ms = last + max(margin, gap)
    return Plan(config, items, unplaced, margin)


def scale_of(policy) -> float:
    """How many times faster than real time a policy runs: an hour over its ROUTINE accept deadline
    (1 for ops/workflows.yaml, 450 for a policy accepting in 8 seconds)."""
    return 3600.0 / policy.request("ROUTINE").accept_s


def _step_ms(policy) -> int:
    """The smallest distance between two steps of a deadline: the margin is a share of it."""
    windows = [policy.directive_ack_s, *(d.accept_s for d in policy.requests.values()),
               *(d.answer_s for d in policy.requests.values())]
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
    verb: str           # send | accept | answer | refuse | close | issue | ack | report
    agency: str         # who acts (REGION/BRANCH)
    planned_ms: int     # from the item's sending (0 for send/issue)


def actions(plan: Plan) -> list[Action]:
    out = []
    for it in plan.items:
        if it.kind == "ASSISTANCE_REQUEST":
            out.append(Action(it.at_ms, it.ref, "send", it.origin, 0))
            for p in it.parties:
                for verb, t in (("accept", p.accept_ms), ("answer", p.answer_ms), ("refuse", p.refuse_ms)):
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
        kind = {
            "send": lambda: m.SendRequest(cid, iid, who, tuple(x.who for x in it.parties), it.priority,
                                          (m.Identifier(*it.subject.split(":", 1)),), f"{it.text} ({it.ref})"),
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
    """A period holding every item of the play (an hour either side: the stamped times drift a little)."""
    return t0_ms - 3600 * MS, t0_ms + plan.end_ms + 3600 * MS


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
                    "actions": acts.get(it.ref, []),
                    "deadlines": [{"name": n, "due_after_ms": due, "step_ms": step, "levels": len(lad)}
                                  for n, due, step, lad in deadline_steps(it, policy, regions_of(policy))]})
    for s in steps:
        rec = {"type": "workflow_step", "ref": s.ref, "item_id": item_ids.get(s.ref), "item_kind": s.item_kind,
               "deadline": s.deadline, "level": s.level, "event_type": s.event_type, "party": s.party,
               "to": list(s.to), "after_ms": s.at_ms, "due_after_ms": s.due_ms}
        if by_ref[s.ref].kind == "DIRECTIVE" and s.deadline.startswith("due:") and played:
            rec["due_at_ms"] = played.get("due_at", {}).get(s.ref)
        out.append(rec)
    return out


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
    for it in plan.items:
        if it.ref not in sent:
            continue
        it = copy.deepcopy(it)
        for p in it.parties:
            agency = p.who if "/" in p.who else f"{p.who}/COMMAND_CENTER"
            verbs = (("accept", "accept_ms"), ("answer", "answer_ms"), ("refuse", "refuse_ms")) \
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
            "directives": sum(it.kind == "DIRECTIVE" for it in plan.items), "steps": len(steps),
            "steps_by_type": dict(Counter(s.event_type for s in steps)), "fates": dict(fates),
            "unplaced": plan.unplaced, "policy": policy_summary(policy),
            "played": {k: v for k, v in (played or {}).items() if k not in ("due_at", "item_ids")}}


def policy_summary(policy) -> dict:
    return {"requests": {p: asdict(d) for p, d in policy.requests.items()}, "directive_ack_s": policy.directive_ack_s,
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
                                    "subjects": [it.subject], "question": f"{it.text} ({it.ref})"}
    if a.verb == "issue":
        return "/api/v1/directives", {"to": [x.who for x in it.parties], "task": f"{it.text} ({it.ref})",
                                      "due_at": due_at}
    base = f"/api/v1/requests/{item_id}" if it.kind == "ASSISTANCE_REQUEST" else f"/api/v1/directives/{item_id}"
    body = {"accept": {}, "answer": {"findings": f"已核查 ({it.ref})"}, "close": {"outcome": "simulated day over"},
            "ack": {}}.get(a.verb)
    if a.verb == "refuse":
        body = {"reason_code": p.reason, "text": ""}
    elif a.verb == "report":
        body = {"outcome": p.outcome, "reason": p.reason or ""}
    return f"{base}/{a.verb}", body


def play(plan: Plan, pool, *, lead_s: float = 2.0, clock=time.time, sleep=time.sleep, log=None,
         workers: int = 8) -> dict:
    """Carry out every action of the plan through the gateway at its time (bus ms from the start).

    Each action runs on one of `workers` threads, so a slow answer does not hold up the next
    action (0: in this thread, one after the other).

    An action the gateway answers 404/409 (the history does not show the previous action yet)
    is tried again until its margin is used up. Returns {item_ids, due_at, started_ms, actions,
    failed, slips, max_slip_ms}: a slip is an action whose time, as the gateway may have
    stamped it, can be off its plan by the margin or more (the truth may then be wrong for it).
    """
    from gateway.client import ClientError

    by_ref = {it.ref: it for it in plan.items}
    margin = plan.margin_ms
    t0 = clock() + lead_s
    item_ids: dict[str, str] = {}
    sent_window: dict[str, tuple[float, float]] = {}
    due_at: dict[str, int] = {}
    failed: list[dict] = []
    slips: list[dict] = []
    max_slip = 0
    futures = {}

    def do(a: Action):
        nonlocal max_slip
        it = by_ref[a.ref]
        if a.verb not in ("send", "issue"):
            fut = futures.get((a.ref, "origin"))
            if fut is not None:
                fut.result()
            if a.ref not in item_ids:
                failed.append({"ref": a.ref, "verb": a.verb, "agency": a.agency, "error": "the item was never sent"})
                return
        party = next((p for p in it.parties if p.who == a.agency or f"{p.who}/COMMAND_CENTER" == a.agency), None)
        client = pool.client(a.agency)
        give_up = t0 + (a.at_ms + margin * 0.8) / MS
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
        s0, s1 = sent_window[a.ref]
        low, high = (started - s1) * MS, (ended - s0) * MS
        slip = max(a.planned_ms - low, high - a.planned_ms, 0)
        max_slip = max(max_slip, int(slip))
        if slip >= margin:
            slips.append({"ref": a.ref, "item_id": item_ids[a.ref], "verb": a.verb, "agency": a.agency,
                          "planned_ms": a.planned_ms, "played_ms": [int(low), int(high)]})

    acts = actions(plan)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool_x:
        for n, a in enumerate(acts):
            wait = t0 + a.at_ms / MS - clock()
            if wait > 0:
                sleep(wait)
            if workers == 0:  # one at a time, in this thread (tests with an injected clock)
                do(a)
                continue
            fut = pool_x.submit(do, a)
            if a.verb in ("send", "issue"):
                futures[(a.ref, "origin")] = fut
            if log and n and n % 25 == 0:
                log(f"simulate --workflow: {n}/{len(acts)} actions, {len(failed)} failed")
    return {"item_ids": item_ids, "due_at": due_at, "started_ms": int(t0 * MS), "actions": len(acts),
            "failed": failed, "slips": slips, "max_slip_ms": max_slip, "margin_ms": margin}


def wait_until(t_ms: int, *, clock=time.time, sleep=time.sleep) -> None:
    wait = t_ms / MS - clock()
    if wait > 0:
        sleep(wait)
