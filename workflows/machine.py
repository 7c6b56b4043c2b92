"""Transitions, deadlines and escalation of the workflow items: pure functions.

    apply(state, command, now_ms, policy, regions) -> (new_state, [WorkflowEvent], [effect])
    due(state, policy, regions)                    -> [Deadline]   (every step not fired yet)
    fire(state, deadline, now_ms, policy, regions) -> (new_state, [WorkflowEvent], [effect])
    fire_due(state, now_ms, policy, regions)       -> every step due by now_ms, in time order

The rules that make an at-least-once stream exactly-once (docs/workflows.md):
- a command whose command_id the item has applied changes nothing and emits nothing;
- a deadline step whose key the item has fired, or that no longer applies (the party acted),
  or whose time has not come, changes nothing and emits nothing;
- event ids are derived from (item id, cause, place in the transition), the cause being the
  command id or the deadline step's key, so a replay publishes the same ids again.
A deadline checked late (the worker was down) fires every step that is due by then, each
once, in time order: the reminder and each escalation level that a bus running without a
pause would have sent, with `scheduled_at` saying when each was due.
"""
from __future__ import annotations

from dataclasses import replace

from schemas.regions import RegionTable, load_branches, load_regions
from workflows import model as m
from workflows.model import (
    Actor, Addressee, AssistanceRequest, Audit, Deadline, Directive, EarlierAnswer, HitFollowUp, IndexAnswer,
    OfferAnswers, Recipient, WorkflowEvent,
)
from workflows.policy import Policy

MS = 1000
_PSEUDO_CITY = "市辖区"  # GB/T 2260's container of a municipality's districts: no authority of its own


class WorkflowRefusal(ValueError):
    """A command that may not be applied; str() says what is wrong and what is allowed."""


# --- escalation ladder --------------------------------------------------------------------


def escalation_ladder(region: str, regions: RegionTable) -> list[tuple[str, ...]]:
    """The levels above a region, nearest first: its city, its province, then its zones' offices.

    '130822' -> [('130800',), ('130000',), ('JJJ',)]; a municipality's district skips the
    pseudo-city '市辖区' ('110112' -> [('110000',), ('JJJ', 'TWL')]). A region in several zones
    escalates to all of them at the last level; a region in none stops at its province.
    """
    levels = [(a,) for a in regions.ancestors(region) if regions.name(a) != _PSEUDO_CITY]
    zones = tuple(sorted(regions.zones_of(region)))
    if zones:
        levels.append(zones)
    return levels


def _agency_ladder(agency_text: str, regions: RegionTable) -> list[tuple[str, ...]]:
    """An agency's ladder: the same branch one level up, ..., then the zones' coordination offices."""
    branch = m.branch_of(agency_text)
    return [
        tuple(x if regions.is_zone(x) else m.agency(x, branch) for x in level)
        for level in escalation_ladder(m.region_of(agency_text), regions)
    ]


# --- the output of one transition ---------------------------------------------------------


def _notify(item) -> tuple[str, ...]:
    """Regions and zones that may see the item's events (RegionTable.may_see reads zones)."""
    if isinstance(item, HitFollowUp):
        base = [item.owner_region, item.hit_region]
    elif isinstance(item, AssistanceRequest):
        base = [m.region_of(item.requester), *(m.region_of(a.agency) for a in item.addressees)]
    else:
        base = [m.region_of(item.issuer), *(r.region for r in item.recipients)]
    for entry in item.escalated_to:
        base.append(m.region_of(entry))
    return tuple(dict.fromkeys(base))


def _party_status(item, party: str | None) -> str | None:
    if party is None:
        return None
    if isinstance(item, AssistanceRequest):
        a = item.addressee(party)
        return a.status if a else None
    if isinstance(item, Directive):
        r = item.recipient(party)
        return r.status if r else None
    return None


def _finish(before, after, drafts: list[dict], effects: list, now_ms: int, cause: str, *, mark_applied: bool):
    """Number the drafted events after the item's last one and stamp them with the new state."""
    seq = before.seq if before is not None else 0
    events = []
    for part, draft in enumerate(drafts):
        seq += 1
        party = draft.get("party")
        events.append(WorkflowEvent(
            item_id=after.item_id, item_kind=after.kind, seq=seq, at=now_ms, status=after.status,
            party_status=_party_status(after, party), notify=_notify(after), classification=after.classification,
            command_id=cause, part=part, **draft,
        ))
    changes = {"seq": seq}
    if mark_applied:
        changes["applied"] = after.applied | {cause}
    return replace(after, **changes), events, effects


def _actor_fields(actor: Actor) -> dict:
    return {"actor": actor.name, "actor_agency": actor.agency or None}


def _require_person(actor: Actor, policy: Policy, doing: str):
    if actor.is_bus:
        raise WorkflowRefusal(f"{doing} is done by a person of an agency, not by the bus")
    if not set(actor.roles) & set(policy.acting_roles):
        have = ", ".join(sorted(actor.roles)) or "none"
        raise WorkflowRefusal(
            f"{actor.name} of {actor.agency} may not {doing}: role {' or '.join(policy.acting_roles)} required (has {have})")


def _require_bus(actor: Actor, doing: str):
    if not actor.is_bus:
        raise WorkflowRefusal(f"{doing} comes from the bus's own streams, not from {actor.name} of {actor.agency}")


# --- apply --------------------------------------------------------------------------------


def apply(state, command, now_ms: int, policy: Policy, regions: RegionTable | None = None):
    """One command on one item (None before it exists): (new_state, events, effects).

    Raises WorkflowRefusal for a command that is not allowed now, by this actor; the state is
    then unchanged. A command id already applied returns (state, [], []).
    """
    regions = regions or load_regions()
    if state is not None and command.command_id in state.applied:
        return state, [], []
    if state is not None and state.item_id != command.item_id:
        raise WorkflowRefusal(f"command {command.command_id} is for item {command.item_id}, not {state.item_id}")
    handler, kind, opens = _HANDLERS[type(command)]
    if opens:
        if state is not None:
            if isinstance(command, m.OpenHit):
                return state, [], []  # the same hit seen again: one follow-up per hit id
            raise WorkflowRefusal(f"{_noun(state)} already exists (since {state.seq} events); choose another id")
    else:
        if state is None:
            raise WorkflowRefusal(f"there is no {kind.lower().replace('_', ' ')} {command.item_id}")
        if state.kind != kind:
            raise WorkflowRefusal(f"{command.item_id} is {_a(state.kind)}, not {_a(kind)}")
    after, drafts, effects = handler(state, command, now_ms, policy, regions)
    return _finish(state, after, drafts, effects, now_ms, command.command_id, mark_applied=True)


def _a(kind: str) -> str:
    words = kind.lower().replace("_", " ")
    return ("an " if words[0] in "aeiou" else "a ") + words


def _noun(item) -> str:
    return {"HIT_FOLLOW_UP": "hit", "ASSISTANCE_REQUEST": "request", "DIRECTIVE": "directive"}[item.kind] + f" {item.item_id}"


# --- hit follow-up ------------------------------------------------------------------------


def _open_hit(_state, c: m.OpenHit, now, policy, regions):
    _require_bus(c.actor, "opening a hit follow-up")
    if c.hit_type not in m.HIT_TYPES:
        raise WorkflowRefusal(f"hit {c.item_id} is a {c.hit_type}: only {', '.join(m.HIT_TYPES)} hits are followed up")
    window = policy.hit_window_s(detained=False, danger_level=c.danger_level, priority=c.priority)
    item = HitFollowUp(
        item_id=c.item_id, hit_type=c.hit_type, owner_region=c.owner_region, hit_region=c.hit_region,
        matched_on=c.matched_on, record_key=c.record_key, opened_at=now, danger_level=c.danger_level,
        priority=c.priority, classification=c.classification, confirm_due=now + window * MS, confirm_window_s=window,
    )
    draft = dict(event_type="OPENED", to=(c.owner_region, c.hit_region), code=c.hit_type, text=str(c.matched_on),
                 due_at=item.confirm_due, refs=(c.record_key,), actor="intelbus")
    return item, [draft], []


def _report_action(h: HitFollowUp, c: m.ReportAction, now, policy, regions):
    _require_person(c.actor, policy, f"report an action on hit {h.item_id}")
    if c.action not in m.SIGHTING_ACTIONS:
        raise WorkflowRefusal(f"unknown action {c.action!r}: report one of {', '.join(m.SIGHTING_ACTIONS)}")
    if c.actor.region != h.hit_region:
        raise WorkflowRefusal(
            f"hit {h.item_id} was sighted in {h.hit_region}; only that region reports what it did, not {c.actor.agency}")
    if h.status in ("NOT_VALID", "CLOSED"):
        raise WorkflowRefusal(f"hit {h.item_id} is {h.status}; actions are reported while it is AWAITING_CONFIRMATION or CONFIRMED")
    if h.action == c.action:
        raise WorkflowRefusal(f"hit {h.item_id} already has {c.action} reported; report a different action")
    changes = {"action": c.action, "action_at": now}
    if c.action == "DETAINED":
        changes["detained_at"] = h.detained_at or now
        urgent_due = now + policy.hit_confirm_urgent_s * MS
        if h.status == "AWAITING_CONFIRMATION" and urgent_due < h.confirm_due:
            # a person held cannot wait an hour: the owner now has the urgent window
            changes.update(confirm_due=urgent_due, confirm_window_s=policy.hit_confirm_urgent_s)
    after = replace(h, **changes)
    draft = dict(event_type="ACTION_REPORTED", party=h.hit_region, to=(h.owner_region,), code=c.action,
                 text=c.note or None, due_at=after.confirm_due if after.status == "AWAITING_CONFIRMATION" else None,
                 **_actor_fields(c.actor))
    return after, [draft], []


def _confirm_hit(h: HitFollowUp, c: m.ConfirmHit, now, policy, regions):
    _require_person(c.actor, policy, f"confirm hit {h.item_id}")
    if c.answer not in m.CONFIRMATIONS:
        raise WorkflowRefusal(f"unknown answer {c.answer!r}: confirm with one of {', '.join(m.CONFIRMATIONS)}")
    if c.actor.region != h.owner_region:
        raise WorkflowRefusal(
            f"hit {h.item_id} matched a record of {h.owner_region}; only its owner {h.owner_region} may {c.answer} it, "
            f"not {c.actor.agency}")
    if h.status != "AWAITING_CONFIRMATION":
        raise WorkflowRefusal(
            f"hit {h.item_id} is {h.status}; CONFIRMED, NOT_VALID and NEED_TIME are answers to a hit AWAITING_CONFIRMATION")
    draft = dict(event_type=c.answer, party=h.owner_region, to=(h.hit_region,), text=c.note or None,
                 **_actor_fields(c.actor))
    if c.answer == "NEED_TIME":
        limit = policy.hit_need_time_max_s // 60
        if not isinstance(c.minutes, int) or isinstance(c.minutes, bool) or not 1 <= c.minutes <= limit:
            raise WorkflowRefusal(f"NEED_TIME needs minutes between 1 and {limit}, not {c.minutes!r}")
        after = replace(h, confirm_due=now + c.minutes * 60 * MS, confirm_window_s=c.minutes * 60,
                        need_time_count=h.need_time_count + 1)
        draft.update(minutes=c.minutes, due_at=after.confirm_due)
    elif c.answer == "CONFIRMED":
        after = replace(h, status="CONFIRMED", confirmed_at=now)
    else:
        after = replace(h, status="NOT_VALID", confirmed_at=now)
    return after, [draft], []


def _wanted_revision(h: HitFollowUp, c: m.WantedRevision, now, policy, regions):
    _require_bus(c.actor, "a wanted record's revision")
    if c.record_key != h.record_key:
        raise WorkflowRefusal(f"hit {h.item_id} follows record {h.record_key}, not {c.record_key}")
    if c.action not in m.CLOSING_REVISIONS or h.listing_closed_at is not None:
        return h, [], []  # LISTED/UPDATED change nothing here; the first closing revision wins
    after = replace(h, listing_closed_at=now, status="CLOSED" if h.status != "NOT_VALID" else h.status)
    draft = dict(event_type="LISTING_CLOSED", party=h.owner_region, to=(h.owner_region, h.hit_region), code=c.action,
                 refs=(h.record_key, f"revision {c.revision}"), actor="intelbus")
    return after, [draft], []


# --- assistance requests ------------------------------------------------------------------


def _request_summary(r: AssistanceRequest) -> str:
    if r.status == "CLOSED":
        return f"CLOSED by {r.closed_by}"
    return ", ".join(f"{a.status} by {a.agency}" if a.status != "SENT" else f"SENT to {a.agency}" for a in r.addressees)


def _send_request(_state, c: m.SendRequest, now, policy, regions):
    _require_person(c.actor, policy, f"send request {c.item_id}")
    if c.priority not in m.PRIORITIES:
        raise WorkflowRefusal(f"unknown priority {c.priority!r}: one of {', '.join(m.PRIORITIES)}")
    if not c.question.strip():
        raise WorkflowRefusal(f"request {c.item_id} has no question: say what the addressee should check, locate or do")
    if not c.addressees:
        raise WorkflowRefusal(f"request {c.item_id} has no addressee: name agencies as REGION/BRANCH")
    branches = load_branches()
    addressees = tuple(dict.fromkeys(c.addressees))
    for a in addressees:
        region, branch = m.region_of(a), m.branch_of(a)
        if not regions.is_known(region) or branch not in branches:
            raise WorkflowRefusal(
                f"addressee {a!r} is not an agency: REGION/BRANCH with a known region code and a branch of "
                f"{', '.join(branches)}")
        if a == c.actor.agency:
            raise WorkflowRefusal(f"request {c.item_id}: {a} cannot address a request to itself")
    for s in c.subjects:
        if s.kind not in m.IDENTIFIER_KINDS or not s.value:
            raise WorkflowRefusal(f"subject {s} is not an identifier: kind one of {', '.join(m.IDENTIFIER_KINDS)} and a value")
    subjects = frozenset(c.subjects)
    earliest = now - policy.reuse_window_s * MS
    offered = tuple(
        e for e in c.earlier_answers
        if e.identifier in subjects and e.request_id != c.item_id and e.answered_at >= earliest
    )
    item = AssistanceRequest(
        item_id=c.item_id, requester=c.actor.agency,
        addressees=tuple(Addressee(a, offered=tuple(e for e in offered if e.answered_by != a)) for a in addressees),
        priority=c.priority, subjects=tuple(c.subjects), question=c.question, sent_at=now, joint_action=c.joint_action,
        classification=c.classification,
    )
    deadlines = policy.request(c.priority)
    drafts = [dict(event_type="SENT", to=addressees, code=c.priority, text=c.question,
                   refs=tuple(str(s) for s in c.subjects), due_at=now + deadlines.accept_s * MS, **_actor_fields(c.actor))]
    effects: list = []
    for a in item.addressees:
        if not a.offered:
            continue
        drafts.append(dict(event_type="ANSWERS_OFFERED", party=a.agency, to=(a.agency,),
                           refs=tuple(dict.fromkeys(e.request_id for e in a.offered)), actor="intelbus"))
        effects.append(OfferAnswers(c.item_id, a.agency, a.offered))
        effects += [Audit("answer_offered", "intelbus", a.agency, c.item_id, f"{e.request_id} {e.identifier}", now, role="bus")
                    for e in a.offered]
    return item, drafts, effects


def _addressee_of(r: AssistanceRequest, actor: Actor, verb: str) -> Addressee:
    a = r.addressee(actor.agency)
    if a is None:
        raise WorkflowRefusal(
            f"request {r.item_id} is addressed to {', '.join(x.agency for x in r.addressees)}; "
            f"{actor.agency} is not one of them and may not {verb} it")
    if r.status == "CLOSED":
        raise WorkflowRefusal(f"request {r.item_id} is {_request_summary(r)}; nothing more can be done on it")
    return a


def _with_addressee(r: AssistanceRequest, new: Addressee) -> AssistanceRequest:
    return replace(r, addressees=tuple(new if a.agency == new.agency else a for a in r.addressees))


def _accept_request(r: AssistanceRequest, c: m.AcceptRequest, now, policy, regions):
    _require_person(c.actor, policy, f"accept request {r.item_id}")
    a = _addressee_of(r, c.actor, "ACCEPT")
    if a.status != "SENT":
        raise WorkflowRefusal(f"request {r.item_id} is {a.status} by {a.agency}; ACCEPT is allowed only while it is SENT")
    new = replace(a, status="ACCEPTED", accepted_at=now)
    # the answer deadline counts from sending (4 h after the request, not after the acceptance)
    draft = dict(event_type="ACCEPTED", party=a.agency, to=(r.requester,),
                 due_at=r.sent_at + policy.request(r.priority).answer_s * MS, **_actor_fields(c.actor))
    return _with_addressee(r, new), [draft], []


def _answer_request(r: AssistanceRequest, c: m.AnswerRequest, now, policy, regions):
    _require_person(c.actor, policy, f"answer request {r.item_id}")
    a = _addressee_of(r, c.actor, "ANSWER")
    if a.status != "ACCEPTED":
        hint = "ACCEPT it first" if a.status == "SENT" else "it is answered once"
        raise WorkflowRefusal(
            f"request {r.item_id} is {a.status} by {a.agency}; ANSWER is allowed only once it is ACCEPTED ({hint})")
    if not c.findings.strip():
        raise WorkflowRefusal(f"an answer to request {r.item_id} needs findings")
    offered_ids = list(dict.fromkeys(e.request_id for e in a.offered))
    unknown = [x for x in c.reuse_of if x not in offered_ids]
    if unknown:
        raise WorkflowRefusal(
            f"request {r.item_id}: answers of {', '.join(unknown)} were not offered to {a.agency} "
            f"(offered: {', '.join(offered_ids) or 'none'})")
    reuse = tuple(dict.fromkeys(c.reuse_of))
    new = replace(a, status="ANSWERED", answered_at=now, findings=c.findings, reused_from=reuse)
    draft = dict(event_type="ANSWERED", party=a.agency, to=(r.requester,), text=c.findings, refs=reuse,
                 code="REUSED" if reuse else None, **_actor_fields(c.actor))
    effects: list = [IndexAnswer(EarlierAnswer(r.item_id, a.agency, now, s, c.findings, r.classification)) for s in r.subjects]
    role = ",".join(sorted(set(c.actor.roles) & set(policy.acting_roles)))
    effects += [Audit("answer_reused", c.actor.name, a.agency, r.item_id, f"{e.request_id} {e.identifier}", now, role=role)
                for e in a.offered if e.request_id in reuse]
    return _with_addressee(r, new), [draft], effects


def _refuse_request(r: AssistanceRequest, c: m.RefuseRequest, now, policy, regions):
    _require_person(c.actor, policy, f"refuse request {r.item_id}")
    a = _addressee_of(r, c.actor, "REFUSE")
    if a.status not in ("SENT", "ACCEPTED"):
        raise WorkflowRefusal(f"request {r.item_id} is {a.status} by {a.agency}; REFUSE is allowed while it is SENT or ACCEPTED")
    if c.reason not in m.REFUSAL_REASONS:
        raise WorkflowRefusal(f"REFUSED needs a reason: one of {', '.join(m.REFUSAL_REASONS)}, not {c.reason!r}")
    if c.reason == "OTHER" and not c.text.strip():
        raise WorkflowRefusal("REFUSED with reason OTHER needs a text saying why")
    new = replace(a, status="REFUSED", refused_at=now, refusal_reason=c.reason, refusal_text=c.text)
    draft = dict(event_type="REFUSED", party=a.agency, to=(r.requester,), code=c.reason, text=c.text or None,
                 **_actor_fields(c.actor))
    return _with_addressee(r, new), [draft], []


def _joint_action(r: AssistanceRequest, c: m.ReportJointAction, now, policy, regions):
    _require_person(c.actor, policy, f"report joint action on request {r.item_id}")
    a = _addressee_of(r, c.actor, "report joint action on")
    if not r.joint_action:
        raise WorkflowRefusal(f"request {r.item_id} did not ask for joint action; ANSWER and the requester's CLOSE end it")
    if a.status != "ANSWERED":
        raise WorkflowRefusal(f"request {r.item_id} is {a.status} by {a.agency}; joint action (ACTED) is reported once it is ANSWERED")
    new = replace(a, status="ACTED", acted_at=now)
    draft = dict(event_type="ACTED", party=a.agency, to=(r.requester,), text=c.note or None, **_actor_fields(c.actor))
    return _with_addressee(r, new), [draft], []


def _close_request(r: AssistanceRequest, c: m.CloseRequest, now, policy, regions):
    _require_person(c.actor, policy, f"close request {r.item_id}")
    if c.actor.agency != r.requester:
        raise WorkflowRefusal(
            f"request {r.item_id} is {_request_summary(r)}; only the requester {r.requester} may CLOSE it")
    if r.status == "CLOSED":
        raise WorkflowRefusal(f"request {r.item_id} is already {_request_summary(r)}")
    after = replace(r, status="CLOSED", closed_at=now, closed_by=c.actor.agency, outcome=c.outcome)
    draft = dict(event_type="CLOSED", to=tuple(a.agency for a in r.addressees), text=c.outcome or None,
                 **_actor_fields(c.actor))
    return after, [draft], []


# --- directives ---------------------------------------------------------------------------


def _issue_directive(_state, c: m.IssueDirective, now, policy, regions):
    _require_person(c.actor, policy, f"issue directive {c.item_id}")
    if not c.task.strip():
        raise WorkflowRefusal(f"directive {c.item_id} has no task: say what the recipients must do")
    if c.due_at <= now:
        raise WorkflowRefusal(f"directive {c.item_id} is due at {c.due_at}, which is not after now ({now})")
    if not c.to:
        raise WorkflowRefusal(f"directive {c.item_id} has no recipient: name regions or zones")
    issuer = c.actor.region
    issuer_zones = regions.zones_of(issuer)
    recipients: list[str] = []
    for entry in dict.fromkeys(c.to):
        if regions.is_zone(entry):
            if entry not in issuer_zones:
                raise WorkflowRefusal(
                    f"directive {c.item_id}: {c.actor.agency} is not in zone {entry}; "
                    f"it may direct its own zones ({', '.join(sorted(issuer_zones)) or 'none'}) and regions inside {issuer}")
            recipients += sorted(regions.zone_members(entry))
        elif regions.is_known(entry):
            if not regions.is_within(entry, issuer) or entry == issuer:
                raise WorkflowRefusal(
                    f"directive {c.item_id}: {entry} is not inside {issuer}; {c.actor.agency} may direct regions inside "
                    f"{issuer} and its zones ({', '.join(sorted(issuer_zones)) or 'none'})")
            recipients.append(entry)
        else:
            raise WorkflowRefusal(f"directive {c.item_id}: {entry!r} is neither a known region code nor a zone")
    recipients = [r for r in dict.fromkeys(recipients) if r != issuer]
    if not recipients:
        raise WorkflowRefusal(f"directive {c.item_id}: its zones name no region but the issuer's own")
    item = Directive(
        item_id=c.item_id, issuer=c.actor.agency, recipients=tuple(Recipient(r) for r in recipients),
        addressed_to=tuple(dict.fromkeys(c.to)), task=c.task, due_at=c.due_at, issued_at=now,
        classification=c.classification,
    )
    draft = dict(event_type="ISSUED", to=tuple(recipients), text=c.task, due_at=c.due_at, refs=item.addressed_to,
                 **_actor_fields(c.actor))
    return item, [draft], []


def _recipient_of(d: Directive, actor: Actor, verb: str) -> Recipient:
    r = d.recipient(actor.region)
    if r is None:
        raise WorkflowRefusal(
            f"directive {d.item_id} is for {', '.join(x.region for x in d.recipients)}; {actor.agency} may not {verb} it")
    if d.status != "OPEN":
        raise WorkflowRefusal(f"directive {d.item_id} is {d.status}; nothing more can be reported on it")
    return r


def _with_recipient(d: Directive, new: Recipient) -> Directive:
    return replace(d, recipients=tuple(new if r.region == new.region else r for r in d.recipients))


def _ack_directive(d: Directive, c: m.AcknowledgeDirective, now, policy, regions):
    _require_person(c.actor, policy, f"acknowledge directive {d.item_id}")
    r = _recipient_of(d, c.actor, "ACKNOWLEDGE")
    if r.status != "SENT":
        raise WorkflowRefusal(f"directive {d.item_id} is {r.status} by {r.region}; ACKNOWLEDGE is allowed only while it is SENT")
    new = replace(r, status="ACKNOWLEDGED", acknowledged_at=now)
    draft = dict(event_type="ACKNOWLEDGED", party=r.region, to=(d.issuer,), due_at=d.due_at, **_actor_fields(c.actor))
    return _with_recipient(d, new), [draft], []


def _report_directive(d: Directive, c: m.ReportDirective, now, policy, regions):
    _require_person(c.actor, policy, f"report on directive {d.item_id}")
    r = _recipient_of(d, c.actor, c.outcome if c.outcome in ("DONE", "CANNOT") else "report on")
    if c.outcome not in ("DONE", "CANNOT"):
        raise WorkflowRefusal(f"unknown outcome {c.outcome!r}: report DONE or CANNOT (with a reason)")
    if r.status != "ACKNOWLEDGED":
        hint = "ACKNOWLEDGE it first" if r.status == "SENT" else "it is reported once"
        raise WorkflowRefusal(
            f"directive {d.item_id} is {r.status} by {r.region}; {c.outcome} is reported once it is ACKNOWLEDGED ({hint})")
    if c.outcome == "CANNOT" and not c.reason.strip():
        raise WorkflowRefusal(f"CANNOT needs a reason: say why {r.region} cannot carry out directive {d.item_id}")
    after = _with_recipient(d, replace(r, status=c.outcome, reported_at=now, reason=c.reason))
    drafts = [dict(event_type=c.outcome, party=r.region, to=(d.issuer,), text=c.reason or None, **_actor_fields(c.actor))]
    if all(x.status in ("DONE", "CANNOT") for x in after.recipients):
        after = replace(after, status="COMPLETED")
        drafts.append(dict(event_type="COMPLETED", to=(d.issuer,), actor="intelbus",
                           code=f"{sum(x.status == 'DONE' for x in after.recipients)} DONE"))
    return after, drafts, []


def _cancel_directive(d: Directive, c: m.CancelDirective, now, policy, regions):
    _require_person(c.actor, policy, f"cancel directive {d.item_id}")
    if c.actor.agency != d.issuer:
        raise WorkflowRefusal(f"directive {d.item_id} was issued by {d.issuer}; only the issuer may CANCEL it, not {c.actor.agency}")
    if d.status != "OPEN":
        raise WorkflowRefusal(f"directive {d.item_id} is {d.status}; only an OPEN directive can be CANCELLED")
    after = replace(d, status="CANCELLED")
    draft = dict(event_type="CANCELLED", to=tuple(r.region for r in d.recipients), text=c.reason or None,
                 **_actor_fields(c.actor))
    return after, [draft], []


_HANDLERS = {
    m.OpenHit: (_open_hit, "HIT_FOLLOW_UP", True),
    m.ReportAction: (_report_action, "HIT_FOLLOW_UP", False),
    m.ConfirmHit: (_confirm_hit, "HIT_FOLLOW_UP", False),
    m.WantedRevision: (_wanted_revision, "HIT_FOLLOW_UP", False),
    m.SendRequest: (_send_request, "ASSISTANCE_REQUEST", True),
    m.AcceptRequest: (_accept_request, "ASSISTANCE_REQUEST", False),
    m.AnswerRequest: (_answer_request, "ASSISTANCE_REQUEST", False),
    m.RefuseRequest: (_refuse_request, "ASSISTANCE_REQUEST", False),
    m.ReportJointAction: (_joint_action, "ASSISTANCE_REQUEST", False),
    m.CloseRequest: (_close_request, "ASSISTANCE_REQUEST", False),
    m.IssueDirective: (_issue_directive, "DIRECTIVE", True),
    m.AcknowledgeDirective: (_ack_directive, "DIRECTIVE", False),
    m.ReportDirective: (_report_directive, "DIRECTIVE", False),
    m.CancelDirective: (_cancel_directive, "DIRECTIVE", False),
}


# --- deadlines ----------------------------------------------------------------------------


def _ladder_steps(item_id: str, name: str, due_ms: int, step_s: int, party: str, first_to: tuple, ladder: list):
    """The reminder at the deadline, then one escalation per ladder level, step_s apart."""
    yield Deadline(due_ms, item_id, name, 0, due_ms, party, first_to)
    for level, to in enumerate(ladder, start=1):
        yield Deadline(due_ms + level * step_s * MS, item_id, name, level, due_ms, party, to)


def _all_deadlines(item, policy: Policy, regions: RegionTable) -> list[Deadline]:
    """Every step of every deadline that still applies to the item, fired or not."""
    out: list[Deadline] = []
    if isinstance(item, HitFollowUp):
        if item.status == "AWAITING_CONFIRMATION":
            out += _ladder_steps(item.item_id, "confirm", item.confirm_due, policy.step_s(item.confirm_window_s),
                                 item.owner_region, (item.owner_region,), escalation_ladder(item.owner_region, regions))
        if (item.hit_type == "WANTED_PERSON" and item.status == "CONFIRMED" and item.detained_at is not None
                and item.listing_closed_at is None):
            since = max(item.confirmed_at, item.detained_at)
            due_ms = since + policy.stale_listing_s * MS
            out.append(Deadline(due_ms, item.item_id, "stale", 0, due_ms, item.owner_region, (item.owner_region,)))
    elif isinstance(item, AssistanceRequest):
        if item.status == "OPEN":
            d = policy.request(item.priority)
            for a in item.addressees:
                ladder = _agency_ladder(a.agency, regions)
                if a.status == "SENT":
                    out += _ladder_steps(item.item_id, f"accept:{a.agency}", item.sent_at + d.accept_s * MS,
                                         policy.step_s(d.accept_s), a.agency, (a.agency,), ladder)
                if a.status in ("SENT", "ACCEPTED"):
                    out += _ladder_steps(item.item_id, f"answer:{a.agency}", item.sent_at + d.answer_s * MS,
                                         policy.step_s(d.answer_s), a.agency, (a.agency,), ladder)
                if item.joint_action and a.status in ("SENT", "ACCEPTED", "ANSWERED"):
                    out += _ladder_steps(item.item_id, f"act:{a.agency}", item.sent_at + d.act_s * MS,
                                         policy.step_s(d.act_s), a.agency, (a.agency,), ladder)
    elif isinstance(item, Directive):
        if item.status == "OPEN":
            for r in item.recipients:
                ladder = escalation_ladder(r.region, regions)
                if r.status == "SENT":
                    out += _ladder_steps(item.item_id, f"ack:{r.region}", item.issued_at + policy.directive_ack_s * MS,
                                         policy.step_s(policy.directive_ack_s), r.region, (r.region,), ladder)
                if r.status in ("SENT", "ACKNOWLEDGED"):
                    out += _ladder_steps(item.item_id, f"due:{r.region}", item.due_at,
                                         policy.escalation_step_s or policy.directive_overdue_step_s, r.region,
                                         (r.region,), ladder)
    return out


def due(state, policy: Policy, regions: RegionTable | None = None) -> list[Deadline]:
    """Every deadline step of the item not fired yet, earliest first (the stream job's timers)."""
    if state is None:
        return []
    regions = regions or load_regions()
    return sorted(d for d in _all_deadlines(state, policy, regions) if d.key not in state.fired)


def next_due(state, policy: Policy, regions: RegionTable | None = None) -> int | None:
    """When the item's next timer should wake (UTC ms), or None."""
    pending = due(state, policy, regions)
    return pending[0].at if pending else None


_WHAT = {"confirm": "confirmed", "accept": "ACCEPTED", "answer": "ANSWERED", "act": "reported joint action",
         "ack": "ACKNOWLEDGED", "due": "reported DONE or CANNOT"}


def _explain(item, d: Deadline) -> str:
    what = _WHAT.get(d.name.split(":", 1)[0], d.name)
    if d.name == "stale":
        return (f"the detention on hit {item.item_id} was confirmed, but record {item.record_key} "
                f"has no ARRESTED revision yet: update or close the listing")
    if d.name.startswith("due:"):
        return f"{d.party} has not {what} directive {item.item_id} by its due time"
    return f"{d.party} has not {what} {_noun(item)} by its deadline"


def fire(state, deadline: Deadline, now_ms: int, policy: Policy, regions: RegionTable | None = None):
    """Fire one deadline step: (new_state, events, effects); nothing if fired, not due or moot."""
    regions = regions or load_regions()
    if state is None or deadline.key in state.fired or now_ms < deadline.at:
        return state, [], []
    current = next((d for d in _all_deadlines(state, policy, regions) if d.key == deadline.key), None)
    if current is None or now_ms < current.at:
        return state, [], []  # the party acted (or the item closed) since the timer was set, or not yet due
    if current.step == 0:
        if current.name == "stale":
            event_type = "STALE_LISTING"
        elif current.name.startswith("ack:"):
            event_type = "RESENT"
        else:
            event_type = "REMINDED"
        after = replace(state, fired=state.fired | {current.key})
    else:
        event_type = "ESCALATED"
        after = replace(state, fired=state.fired | {current.key},
                        escalated_to=tuple(dict.fromkeys((*state.escalated_to, *current.to))))
    draft = dict(event_type=event_type, party=current.party, to=current.to, deadline=current.name, due_at=current.due,
                 scheduled_at=current.at, level=current.step, text=_explain(state, current), actor="intelbus")
    return _finish(state, after, [draft], [], now_ms, f"deadline:{current.key}", mark_applied=False)


def fire_due(state, now_ms: int, policy: Policy, regions: RegionTable | None = None, *, until_ms: int | None = None):
    """Fire every step due by now_ms, each once, in time order (a worker back after downtime).

    `until_ms` (at most now_ms): fire only the steps due by then (the stream job's command
    watermark: a later step waits until every command stamped before it has been applied)."""
    regions = regions or load_regions()
    events: list = []
    effects: list = []
    until = now_ms if until_ms is None else min(now_ms, until_ms)
    for d in due(state, policy, regions):
        if d.at > until:
            break
        state, ev, ef = fire(state, d, now_ms, policy, regions)
        events += ev
        effects += ef
    return state, events, effects


# --- status -------------------------------------------------------------------------------


def status_rows(item) -> list[dict]:
    """One row per party: who, their state, and when they acted (for `directive status`, `request list`)."""
    if isinstance(item, Directive):
        return [{"region": r.region, "status": r.status, "acknowledged_at": r.acknowledged_at,
                 "reported_at": r.reported_at, "reason": r.reason} for r in item.recipients]
    if isinstance(item, AssistanceRequest):
        return [{"agency": a.agency, "status": a.status, "accepted_at": a.accepted_at, "answered_at": a.answered_at,
                 "acted_at": a.acted_at, "refusal_reason": a.refusal_reason} for a in item.addressees]
    return [{"region": item.owner_region, "status": item.status, "action": item.action, "confirm_due": item.confirm_due}]
