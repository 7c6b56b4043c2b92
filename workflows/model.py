"""The three kinds of workflow item, their commands, events and effects: immutable data.

- `HitFollowUp`: a WANTED_PERSON or WATCH_MATCH hit; the sighting region reports what it did,
  the record's owner confirms (NCIC/SIRENE practice, DOMAIN.md section 10).
- `AssistanceRequest` (协查): an agency asks one or more agencies; each addressee has its own
  `Addressee` state.
- `Directive` (指令): a higher command tells regions (or the members of zones) to act by a
  time; each recipient has its own `Recipient` state.

Times are UTC epoch milliseconds. Agencies are written 'REGION/BRANCH' (Identity.agency).
Nothing here does I/O; `workflows.machine` holds the transitions.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
import uuid
from dataclasses import dataclass

from schemas.ids import NAMESPACE

ITEM_KINDS = ("HIT_FOLLOW_UP", "ASSISTANCE_REQUEST", "DIRECTIVE")

# Hit follow-up
HIT_TYPES = ("WANTED_PERSON", "WATCH_MATCH")
SIGHTING_ACTIONS = ("DETAINED", "OBSERVED", "RELEASED", "NOT_FOUND")
CONFIRMATIONS = ("CONFIRMED", "NOT_VALID", "NEED_TIME")
HIT_STATUSES = ("AWAITING_CONFIRMATION", "CONFIRMED", "NOT_VALID", "CLOSED")
CLOSING_REVISIONS = ("ARRESTED", "SURRENDERED", "CANCELLED")  # a wanted record's revisions that end the listing

# Assistance request
PRIORITIES = ("ROUTINE", "URGENT", "CRITICAL")
REQUEST_STATUSES = ("OPEN", "CLOSED")
ADDRESSEE_STATUSES = ("SENT", "ACCEPTED", "ANSWERED", "ACTED", "REFUSED")
REFUSAL_REASONS = ("NOT_COMPETENT", "INSUFFICIENT_INFORMATION", "NO_LEGAL_BASIS", "DUPLICATE", "NO_CAPACITY", "OTHER")
IDENTIFIER_KINDS = ("RESIDENT_ID", "PLATE", "PHONE", "PASSPORT")

# Directive
DIRECTIVE_STATUSES = ("OPEN", "CANCELLED", "COMPLETED")
RECIPIENT_STATUSES = ("SENT", "ACKNOWLEDGED", "DONE", "CANNOT")

COMMAND_CENTER = "COMMAND_CENTER"

# every WorkflowEvent.event_type (schemas/avro/workflow.avsc adds UNKNOWN, its default)
EVENT_TYPES = (
    "OPENED", "ACTION_REPORTED", "CONFIRMED", "NOT_VALID", "NEED_TIME", "LISTING_CLOSED", "STALE_LISTING",
    "SENT", "ANSWERS_OFFERED", "ACCEPTED", "ANSWERED", "ACTED", "REFUSED", "CLOSED",
    "ISSUED", "ACKNOWLEDGED", "DONE", "CANNOT", "COMPLETED", "CANCELLED",
    "REMINDED", "RESENT", "ESCALATED",
)


def agency(region: str, branch: str) -> str:
    """'130822/CRIMINAL_INVESTIGATION': the text every event and message uses for an agency."""
    return f"{region}/{branch}" if branch else region


def region_of(agency_text: str) -> str:
    return agency_text.split("/", 1)[0]


def branch_of(agency_text: str) -> str:
    return agency_text.split("/", 1)[1] if "/" in agency_text else ""


@dataclass(frozen=True)
class Actor:
    """Who issues a command: a person or system of an agency with roles (identity.principals.Identity
    fits: `Actor.of(identity)`), or the bus itself (`Actor.bus()`) for what the stream job derives."""

    name: str
    region: str
    branch: str
    roles: frozenset = frozenset()
    kind: str = "person"

    @classmethod
    def of(cls, identity) -> "Actor":
        return cls(identity.name, identity.region, identity.branch, frozenset(identity.roles), identity.kind)

    @classmethod
    def bus(cls) -> "Actor":
        return cls("intelbus", "", "", frozenset(), "bus")

    @property
    def agency(self) -> str:
        return agency(self.region, self.branch)

    @property
    def is_bus(self) -> bool:
        return self.kind == "bus"


@dataclass(frozen=True)
class Identifier:
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


# --- items --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HitFollowUp:
    item_id: str  # the hit_id
    hit_type: str
    owner_region: str
    hit_region: str
    matched_on: Identifier
    record_key: str
    opened_at: int
    danger_level: str | None = None  # of the wanted record
    priority: str | None = None  # of the watch alert
    classification: str = "INTERNAL"
    status: str = "AWAITING_CONFIRMATION"
    action: str | None = None  # the sighting region's last report
    action_at: int | None = None
    detained_at: int | None = None  # first DETAINED report
    confirm_due: int = 0  # when the owner's confirmation is due
    confirm_window_s: int = 0  # the window confirm_due was counted with (escalation steps use it)
    confirmed_at: int | None = None
    need_time_count: int = 0
    listing_closed_at: int | None = None  # an ARRESTED/SURRENDERED/CANCELLED revision seen
    escalated_to: tuple = ()  # regions and zones told so far, in order
    fired: frozenset = frozenset()  # keys of deadlines already fired (idempotence)
    applied: frozenset = frozenset()  # command ids already applied (idempotence)
    seq: int = 0  # events emitted so far

    kind: typing.ClassVar[str] = "HIT_FOLLOW_UP"


@dataclass(frozen=True)
class Addressee:
    agency: str
    status: str = "SENT"
    accepted_at: int | None = None
    answered_at: int | None = None
    acted_at: int | None = None
    refused_at: int | None = None
    findings: str = ""
    refusal_reason: str | None = None
    refusal_text: str = ""
    reused_from: tuple = ()  # request ids whose answers this addressee reused
    offered: tuple = ()  # EarlierAnswer offered to it when the request arrived


@dataclass(frozen=True)
class EarlierAnswer:
    """A finding given earlier about an identifier (the stream job's index feeds these in)."""

    request_id: str
    answered_by: str  # agency
    answered_at: int
    identifier: Identifier
    findings: str
    classification: str = "INTERNAL"


@dataclass(frozen=True)
class AssistanceRequest:
    item_id: str
    requester: str  # agency
    addressees: tuple  # of Addressee, in the order sent
    priority: str
    subjects: tuple  # of Identifier
    question: str
    sent_at: int
    joint_action: bool = False  # the requester asks for joint action (24 h by default)
    classification: str = "INTERNAL"
    status: str = "OPEN"
    closed_at: int | None = None
    closed_by: str | None = None
    outcome: str = ""
    escalated_to: tuple = ()
    fired: frozenset = frozenset()
    applied: frozenset = frozenset()
    seq: int = 0

    kind: typing.ClassVar[str] = "ASSISTANCE_REQUEST"

    def addressee(self, agency_text: str) -> Addressee | None:
        return next((a for a in self.addressees if a.agency == agency_text), None)


@dataclass(frozen=True)
class Recipient:
    region: str
    status: str = "SENT"
    acknowledged_at: int | None = None
    reported_at: int | None = None
    reason: str = ""  # CANNOT's reason, DONE's note


@dataclass(frozen=True)
class Directive:
    item_id: str
    issuer: str  # agency
    recipients: tuple  # of Recipient
    addressed_to: tuple  # regions and zones as issued (zones expand into recipients)
    task: str
    due_at: int
    issued_at: int
    classification: str = "INTERNAL"
    status: str = "OPEN"
    escalated_to: tuple = ()
    fired: frozenset = frozenset()
    applied: frozenset = frozenset()
    seq: int = 0

    kind: typing.ClassVar[str] = "DIRECTIVE"

    def recipient(self, region: str) -> Recipient | None:
        return next((r for r in self.recipients if r.region == region), None)


Item = typing.Union[HitFollowUp, AssistanceRequest, Directive]


# --- commands -----------------------------------------------------------------------------
# Every command names its item and carries a command_id (the gateway's request id, the Kafka
# record's id): applying a command id a second time changes nothing and emits nothing.


@dataclass(frozen=True)
class OpenHit:
    """From the hit stream (actor: the bus); item_id is the hit_id."""

    command_id: str
    item_id: str
    actor: Actor
    hit_type: str
    owner_region: str
    hit_region: str
    matched_on: Identifier
    record_key: str
    danger_level: str | None = None
    priority: str | None = None
    classification: str = "INTERNAL"


@dataclass(frozen=True)
class ReportAction:
    command_id: str
    item_id: str
    actor: Actor
    action: str  # SIGHTING_ACTIONS
    note: str = ""


@dataclass(frozen=True)
class ConfirmHit:
    command_id: str
    item_id: str
    actor: Actor
    answer: str  # CONFIRMATIONS
    minutes: int | None = None  # NEED_TIME
    note: str = ""


@dataclass(frozen=True)
class WantedRevision:
    """A later revision of the hit's wanted record (the stream job routes it by record_key)."""

    command_id: str  # the revision's event_id
    item_id: str
    actor: Actor
    record_key: str
    action: str  # LISTED|UPDATED|ARRESTED|SURRENDERED|CANCELLED
    revision: int = 1


@dataclass(frozen=True)
class SendRequest:
    command_id: str
    item_id: str
    actor: Actor
    addressees: tuple  # agencies 'REGION/BRANCH'
    priority: str
    subjects: tuple  # of Identifier
    question: str
    joint_action: bool = False
    classification: str = "INTERNAL"
    earlier_answers: tuple = ()  # EarlierAnswer about the subjects, looked up by the stream job


@dataclass(frozen=True)
class AcceptRequest:
    command_id: str
    item_id: str
    actor: Actor


@dataclass(frozen=True)
class AnswerRequest:
    command_id: str
    item_id: str
    actor: Actor
    findings: str
    reuse_of: tuple = ()  # request ids of offered earlier answers this answer reuses


@dataclass(frozen=True)
class RefuseRequest:
    command_id: str
    item_id: str
    actor: Actor
    reason: str  # REFUSAL_REASONS
    text: str = ""


@dataclass(frozen=True)
class ReportJointAction:
    command_id: str
    item_id: str
    actor: Actor
    note: str = ""


@dataclass(frozen=True)
class CloseRequest:
    command_id: str
    item_id: str
    actor: Actor
    outcome: str = ""


@dataclass(frozen=True)
class IssueDirective:
    command_id: str
    item_id: str
    actor: Actor
    to: tuple  # regions and zone names
    task: str
    due_at: int
    classification: str = "INTERNAL"


@dataclass(frozen=True)
class AcknowledgeDirective:
    command_id: str
    item_id: str
    actor: Actor


@dataclass(frozen=True)
class ReportDirective:
    command_id: str
    item_id: str
    actor: Actor
    outcome: str  # DONE | CANNOT
    reason: str = ""


@dataclass(frozen=True)
class CancelDirective:
    command_id: str
    item_id: str
    actor: Actor
    reason: str = ""


Command = typing.Union[
    OpenHit, ReportAction, ConfirmHit, WantedRevision,
    SendRequest, AcceptRequest, AnswerRequest, RefuseRequest, ReportJointAction, CloseRequest,
    IssueDirective, AcknowledgeDirective, ReportDirective, CancelDirective,
]


# --- timers, events, effects --------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Deadline:
    """One step of one deadline: step 0 is the reminder (RESENT for a directive's acknowledgement),
    step k >= 1 the escalation to level k of the responsible party's ladder.

    `key` names it for ever (name, the time the deadline is counted from, step): a fired key is
    kept in the item, so firing it again, or after a replay, does nothing.
    """

    at: int  # when it fires (UTC ms); first so deadlines sort by time
    item_id: str
    name: str  # confirm | stale | accept:<agency> | answer:<agency> | act:<agency> | ack:<region> | due:<region>
    step: int
    due: int  # the deadline itself (step 0 fires at it)
    party: str  # the agency or region that has to act
    to: tuple = ()  # who the reminder or escalation goes to (regions, agencies or zones)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.due}#{self.step}"


@dataclass(frozen=True)
class WorkflowEvent:
    """One transition, as published on intel.workflow (keyed by item_id); see to_avro()."""

    item_id: str
    item_kind: str
    event_type: str
    seq: int
    at: int
    status: str  # the item's status after the event
    actor: str | None = None
    actor_agency: str | None = None
    party: str | None = None  # the addressee / recipient / region the event is about
    party_status: str | None = None  # that party's status after the event
    to: tuple = ()  # agencies, regions or zones it is addressed to (reminders, escalations, sends)
    notify: tuple = ()  # regions and zones that may see it (RegionTable.may_see)
    deadline: str | None = None
    due_at: int | None = None
    scheduled_at: int | None = None  # reminders and escalations: when the step was due (at - scheduled_at: lateness)
    level: int = 0  # escalation level (1: the party's parent, ...)
    code: str | None = None  # action, answer, refusal reason, priority, outcome
    text: str | None = None  # question, findings, reason, task, note
    minutes: int | None = None
    refs: tuple = ()  # related ids: hit record key, reused request ids, wanted revision
    command_id: str | None = None  # the command or deadline key that caused it
    classification: str = "INTERNAL"
    part: int = 0  # its place among the events of one transition (not on the wire; part of the id)

    @property
    def event_id(self) -> str:
        """UUIDv5 of (item, cause, part): the same cause replayed gets the same id, two causes never
        share one, even when a worker that crashed between publishing and saving reuses a seq."""
        return str(uuid.uuid5(NAMESPACE, f"workflow|{self.item_id}|{self.command_id}|{self.part}"))

    def to_avro(self) -> dict:
        """The record for schemas/avro/workflow.avsc (timestamps as epoch ms)."""
        return {
            "event_id": self.event_id,
            "item_id": self.item_id,
            "item_kind": self.item_kind,
            "event_type": self.event_type,
            "seq": self.seq,
            "at": self.at,
            "status": self.status,
            "actor": self.actor,
            "actor_agency": self.actor_agency,
            "party": self.party,
            "party_status": self.party_status,
            "to": list(self.to),
            "notify": list(self.notify),
            "deadline": self.deadline,
            "due_at": self.due_at,
            "scheduled_at": self.scheduled_at,
            "level": self.level,
            "code": self.code,
            "text": self.text,
            "minutes": self.minutes,
            "refs": list(self.refs),
            "command_id": self.command_id,
            "classification": self.classification,
        }


@dataclass(frozen=True)
class Audit:
    """An audit row the stream job writes (DOMAIN.md section 7): who, which agency, what, why."""

    action: str  # answer_offered | answer_reused
    actor: str
    agency: str
    purpose: str  # the request id the data was offered or used for
    what: str  # the earlier request id and identifier
    at: int
    count: int = 1
    role: str = ""  # the role the actor acted in (bus: the bus offering)


@dataclass(frozen=True)
class OfferAnswers:
    """Deliver earlier findings to an addressee's queue (not on the shared topic)."""

    item_id: str
    addressee: str
    answers: tuple  # of EarlierAnswer


@dataclass(frozen=True)
class IndexAnswer:
    """Remember a finding under an identifier, so later requests about it are offered it."""

    answer: EarlierAnswer


Effect = typing.Union[Audit, OfferAnswers, IndexAnswer]


# --- state as JSON (for faust tables) -----------------------------------------------------

_CLASSES = {c.__name__: c for c in (HitFollowUp, AssistanceRequest, Directive, Addressee, Recipient, EarlierAnswer, Identifier)}


def to_json(value):
    """A JSON-ready form of an item (dataclasses tagged by class; frozensets as sorted lists)."""
    if dataclasses.is_dataclass(value):
        out = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["__type__"] = type(value).__name__
        return out
    if isinstance(value, frozenset):
        return sorted(to_json(v) for v in value)
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    return value


@functools.cache
def _fields_and_hints(cls) -> tuple[tuple, dict]:
    """A class's fields and resolved annotations, once per class: typing.get_type_hints compiles every
    string annotation on each call (792 us a directive, against 40 us cached: bench/results/workflow-timers.md)."""
    return dataclasses.fields(cls), typing.get_type_hints(cls)


def from_json(value):
    """The inverse of to_json."""
    if isinstance(value, dict) and "__type__" in value:
        cls = _CLASSES[value["__type__"]]
        fields, hints = _fields_and_hints(cls)
        kwargs = {}
        for f in fields:
            if f.name not in value:
                continue  # a field added later keeps its default
            raw = from_json(value[f.name])
            hint = hints.get(f.name)
            if hint is frozenset:
                raw = frozenset(raw)
            elif hint is tuple:
                raw = tuple(raw)
            kwargs[f.name] = raw
        return cls(**kwargs)
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
