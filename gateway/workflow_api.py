"""The people's side of the workflows (issue 16, docs/workflows.md "People's commands").

Routes (each authenticated by the gateway's `caller`, each audited as action `workflow`):

    POST /api/v1/requests                        send an assistance request (协查)  -> 202 {item_id, command_id}
    POST /api/v1/requests/{id}/accept|answer|refuse|joint|close
    POST /api/v1/hits/{hit_id}/report|confirm     the hit follow-up
    POST /api/v1/directives                      issue a directive (指令)          -> 202 {item_id, command_id}
    POST /api/v1/directives/{id}/ack|report
    GET  /api/v1/queue                           what waits for the caller's agency, with its deadline
    GET  /api/v1/items/{id}                      an item's history and its parties' states
    GET  /api/v1/requests/{id}/offered           earlier answers offered to the caller's agency (audited: reuse)

A command is checked here where the gateway can (the caller's role; from the item's history in
ClickHouse's workflow_events, that the caller's agency is a party who may do this), then written to
intel.workflow.commands as the gateway's own Kafka principal; the workflow job re-checks it
authoritatively (workflows.machine.apply) and publishes the resulting events on intel.workflow,
which the sink stores in workflow_events.

The record on intel.workflow.commands (the contract the job reads): key = item id (UTF-8), value =
UTF-8 JSON {"command": workflows.model.to_json(command), "command_id": uuid4, "issued_at": epoch ms,
"via": "gateway"}; the command's Actor is Actor.of(the authenticated identity).
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from identity.principals import Identity
from schemas import catalog
from workflows import model as m

COMMANDS_TOPIC = catalog.WORKFLOW_COMMANDS_TOPIC
ACTION = "workflow"  # ops/identity/roles.yaml
REUSE = "reuse"  # the audit action of an earlier answer shown to, or reused by, an addressee
ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
OPEN_PARTY = {"SENT", "ACCEPTED", "ACKNOWLEDGED"}  # a party that still has something to do
QUEUE_DAYS = 30  # how far back the queue looks for open items


# --- bodies -------------------------------------------------------------------------------

class SendRequestIn(BaseModel):
    to: list[str] = Field(description="addressee agencies, REGION/BRANCH (130822/CRIMINAL_INVESTIGATION)")
    priority: str = Field("ROUTINE", description="ROUTINE | URGENT | CRITICAL")
    subjects: list[str] = Field(default_factory=list, description="identifiers KIND:VALUE (RESIDENT_ID:1101...)")
    question: str
    joint_action: bool = False
    classification: str = "INTERNAL"


class AnswerIn(BaseModel):
    findings: str
    reuse_of: list[str] = Field(default_factory=list)


class RefuseIn(BaseModel):
    reason_code: str = Field(description="NOT_COMPETENT | INSUFFICIENT_INFORMATION | NO_LEGAL_BASIS | DUPLICATE | "
                                         "NO_CAPACITY | OTHER")
    text: str = ""


class JointIn(BaseModel):
    outcome: str = ""


class CloseIn(BaseModel):
    outcome: str = ""


class ReportHitIn(BaseModel):
    action: str = Field(description="DETAINED | OBSERVED | RELEASED | NOT_FOUND")
    note: str = ""


class ConfirmHitIn(BaseModel):
    answer: str = Field(description="CONFIRMED | NOT_VALID | NEED_TIME")
    minutes: int | None = None
    note: str = ""


class IssueDirectiveIn(BaseModel):
    to: list[str] = Field(description="region codes and zone names")
    task: str
    due_at: int = Field(description="UTC epoch milliseconds")
    classification: str = "INTERNAL"


class DirectiveReportIn(BaseModel):
    outcome: str = Field(description="DONE | CANNOT")
    reason: str = ""


# --- an item's state, folded from its events ------------------------------------------------

EVENT_FIELDS = ("event_id", "item_id", "item_kind", "event_type", "seq", "at_ms", "status", "actor", "actor_agency",
                "party", "party_status", "to", "notify", "deadline", "due_ms", "scheduled_ms", "level", "code", "text",
                "minutes", "refs", "command_id", "classification")


@dataclass
class ItemView:
    """What the gateway knows of an item from workflow_events (the job's state is authoritative)."""

    item_id: str
    kind: str = ""
    status: str = ""
    classification: str = "INTERNAL"
    origin: str = ""              # requester / issuer agency
    owner_region: str = ""        # hits
    hit_region: str = ""          # hits
    action: str = ""              # hits: the last reported action
    joint_action: bool = False
    due_ms: int | None = None     # the item's own latest deadline (hits: confirmation; directives: due)
    parties: dict = field(default_factory=dict)  # party -> {"status", "due_ms", "at_ms"}
    notify: list = field(default_factory=list)
    escalated_to: list = field(default_factory=list)
    summary: str = ""             # question / task / matched identifier
    code: str = ""                # priority / hit type
    events: list = field(default_factory=list)


def fold(events: list[dict]) -> ItemView | None:
    """The item's view from its events in seq order (None if there are none)."""
    if not events:
        return None
    events = sorted(events, key=lambda e: e["seq"])
    v = ItemView(item_id=events[0]["item_id"], kind=events[0]["item_kind"], events=events)
    for e in events:
        t = e["event_type"]
        v.status, v.classification, v.notify = e["status"], e["classification"], list(e["notify"])
        if t == "OPENED":
            v.owner_region, v.hit_region = (list(e["to"]) + ["", ""])[:2]
            v.code, v.summary, v.due_ms = e["code"], e["text"], e["due_ms"]
        elif t == "SENT":
            v.origin, v.code, v.summary = e["actor_agency"], e["code"], e["text"]
            for a in e["to"]:
                v.parties[a] = {"status": "SENT", "due_ms": e["due_ms"], "at_ms": e["at_ms"]}
        elif t == "ISSUED":
            v.origin, v.summary, v.due_ms = e["actor_agency"], e["text"], e["due_ms"]
            for r in e["to"]:
                v.parties[r] = {"status": "SENT", "due_ms": e["due_ms"], "at_ms": e["at_ms"]}
        elif t == "ACTION_REPORTED":
            v.action = e["code"]
            if e["due_ms"]:
                v.due_ms = e["due_ms"]
        elif t == "NEED_TIME":
            v.due_ms = e["due_ms"]
        elif t == "ESCALATED":
            v.escalated_to += [x for x in e["to"] if x not in v.escalated_to]
        if t == "ACTED":
            v.joint_action = True
        p = e.get("party")
        if p and p in v.parties and e.get("party_status"):
            entry = v.parties[p]
            entry.update(status=e["party_status"], at_ms=e["at_ms"])
            if e["due_ms"]:
                entry["due_ms"] = e["due_ms"]
    return v


def waiting_for(v: ItemView, agency: str, region: str) -> str | None:
    """What the agency has to do on this item now ('' when nothing), as a verb."""
    if v.kind == "HIT_FOLLOW_UP":
        if v.status == "AWAITING_CONFIRMATION" and region == v.owner_region:
            return "confirm"
        if v.status in ("AWAITING_CONFIRMATION", "CONFIRMED") and region == v.hit_region and not v.action:
            return "report"
        return None
    if v.kind == "ASSISTANCE_REQUEST":
        if v.status != "OPEN":
            return None
        st = v.parties.get(agency, {}).get("status")
        if st == "SENT":
            return "accept"
        if st == "ACCEPTED":
            return "answer"
        if agency == v.origin and v.parties and all(p["status"] in ("ANSWERED", "ACTED", "REFUSED")
                                                    for p in v.parties.values()):
            return "close"
        return None
    if v.kind == "DIRECTIVE":
        if v.status != "OPEN":
            return None
        st = v.parties.get(region, {}).get("status")
        return {"SENT": "ack", "ACKNOWLEDGED": "report"}.get(st)
    return None


def item_events_sql(database: str, item_id: str) -> str:
    """An item's events, each once (FINAL), in order (ClickHouse 18.16 and current)."""
    from sinks.engine import sql_literal

    return (f"SELECT {', '.join(EVENT_FIELDS)} FROM {database}.workflow_events FINAL "
            f"WHERE item_id = {sql_literal(item_id)} ORDER BY seq")


def hit_sql(database: str, hit_id: str) -> str:
    from sinks.engine import sql_literal

    return (f"SELECT hit_id, hit_type, owner_region, hit_region, notify_regions, classification "
            f"FROM {database}.hits FINAL WHERE hit_id = {sql_literal(hit_id)} LIMIT 1")


def queue_sql(database: str, agency: str, region: str, since_ms: int) -> str:
    """Every event of the items an agency took part in since `since_ms` (sent to it or its region, about it
    as a party, or sent by it); the gateway folds them per item and keeps what the caller may see."""
    from sinks.engine import sql_literal

    a, r = sql_literal(agency), sql_literal(region)
    mine = f"has(to, {a}) OR has(to, {r}) OR party IN ({a}, {r}) OR actor_agency = {a}"
    return (f"SELECT {', '.join(EVENT_FIELDS)} FROM {database}.workflow_events FINAL WHERE item_id IN "
            f"(SELECT item_id FROM {database}.workflow_events WHERE at_ms >= {int(since_ms)} AND ({mine})) "
            f"ORDER BY item_id, seq")


def offered_ids(v: ItemView, agency: str) -> list[str]:
    """The earlier requests whose answers the bus offered to `agency` on this request (ANSWERS_OFFERED refs)."""
    return list(dict.fromkeys(r for e in v.events if e["event_type"] == "ANSWERS_OFFERED" and e.get("party") == agency
                              for r in e["refs"]))


def earlier_answers_sql(database: str, request_ids: list[str]) -> str:
    """The SENT and ANSWERED events of earlier requests (ClickHouse 18.16 and current)."""
    from sinks.engine import sql_literal

    ids = ", ".join(sql_literal(i) for i in request_ids)
    return (f"SELECT {', '.join(EVENT_FIELDS)} FROM {database}.workflow_events FINAL "
            f"WHERE item_id IN ({ids}) AND event_type IN ('SENT', 'ANSWERED') ORDER BY item_id, seq")


def offered_answers(v: ItemView, agency: str, earlier_events: list[dict]) -> list[dict]:
    """The answers offered to `agency` on request v, one per earlier request and answering agency: the
    earlier requests named by the ANSWERS_OFFERED events, their ANSWERED events given by the time of the
    offer and not by `agency` itself (as workflows.machine offers them), with the identifiers both share."""
    offers = [e for e in v.events if e["event_type"] == "ANSWERS_OFFERED" and e.get("party") == agency]
    if not offers:
        return []
    offered_at = max(e["at_ms"] for e in offers)
    sent = next((e for e in v.events if e["event_type"] == "SENT"), None)
    subjects = set(sent["refs"]) if sent else set()
    by_request: dict[str, list] = {}
    for e in earlier_events:
        by_request.setdefault(e["item_id"], []).append(e)
    out = []
    for rid in offered_ids(v, agency):
        events = sorted(by_request.get(rid, []), key=lambda e: e["seq"])
        earlier_sent = next((e for e in events if e["event_type"] == "SENT"), None)
        shared = sorted(subjects & set(earlier_sent["refs"] if earlier_sent else ()))
        for e in events:
            if e["event_type"] != "ANSWERED" or e.get("party") == agency or e["at_ms"] > offered_at:
                continue
            out.append({"request_id": rid, "answered_by": e["party"], "answered_by_person": e["actor"],
                        "answered_at_ms": e["at_ms"], "identifiers": shared, "findings": e["text"] or "",
                        "classification": e["classification"]})
    return out


def party_rows(v: ItemView) -> list[dict]:
    return [{"party": p, "status": s["status"], "due_ms": s["due_ms"], "since_ms": s["at_ms"]}
            for p, s in v.parties.items()]


# --- Kafka ----------------------------------------------------------------------------------

class CommandProducer:
    """One long-lived idempotent producer (acks=all) as intelbus-gateway; send() waits for the broker."""

    def __init__(self, config: dict):
        from confluent_kafka import Producer

        self.producer = Producer({**config, "acks": "all", "enable.idempotence": True,
                                  "client.id": "intelbus-gateway-workflow", "linger.ms": 2})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="workflow-producer-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def send(self, topic: str, key: bytes, value: bytes, timeout: float = 10.0) -> None:
        done, outcome = threading.Event(), {}

        def report(err, _msg):
            outcome["error"] = err
            done.set()

        self.producer.produce(topic, key=key, value=value, on_delivery=report)
        if not done.wait(timeout):
            raise RuntimeError(f"Kafka did not confirm the command within {timeout:.0f} s")
        if outcome.get("error") is not None:
            raise RuntimeError(f"Kafka refused the command: {outcome['error']}")

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.producer.flush(timeout)


def command_record(command, issued_at: int) -> tuple[bytes, bytes]:
    """(key, value) of a command on intel.workflow.commands (the contract in this module's docstring)."""
    value = {"command": m.to_json(command), "command_id": command.command_id, "issued_at": issued_at, "via": "gateway"}
    return command.item_id.encode(), json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def new_item_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- the routes -----------------------------------------------------------------------------

class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def register(app, ctx) -> None:
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    from gateway.audit import AuditEntry

    services = ctx.services
    router = APIRouter(tags=["workflows"])
    state: dict = {}
    lock = threading.Lock()
    app.state.workflow = state  # tests put a "factory" of a fake producer here

    def producer():
        with lock:
            if "producer" not in state:
                state["producer"] = state.get("factory", CommandProducer)(dict(services.kafka_config or {}))
            return state["producer"]

    def close_producer():
        p = state.get("producer")
        if p is not None:
            p.close()

    app.router.on_shutdown.append(close_producer)

    def refuse(request, identity, status, reason, what, params):
        return ctx.refuse(request, status, reason, AuditEntry(
            action=ACTION, identity=identity, outcome="refused", reason=reason, query_name=what,
            query_text=request.url.path, params=params))

    def query(sql: str) -> list[dict]:
        """Rows as dicts, or Refused(503) naming the server's error (the routes audit it)."""
        try:
            cols, rows = services.reader.query(sql, readonly=True)
        except Exception as exc:
            from gateway.app import server_error_text

            services._local.reader = None
            raise Refused(503, f"the workflow history cannot be read ({server_error_text(exc)[:200]}); "
                               "is migration 0004 applied (`intelbus migrate`)?") from None
        return [dict(zip(cols, r)) for r in rows]

    def events_of(item_id: str) -> list[dict]:
        return query(item_events_sql(services.reader.database, item_id))

    def hit_of(hit_id: str) -> dict | None:
        rows = query(hit_sql(services.reader.database, hit_id))
        return rows[0] if rows else None

    def may_see(ent, view: str, notify, classification: str) -> bool:
        return classification in ent.classifications and services.regions.may_see(view, notify or [])

    def check_id(item_id: str, prefix: str | None, noun: str):
        if not ITEM_ID.match(item_id) or (prefix and not item_id.startswith(prefix + "-")):
            raise Refused(400, f"{item_id!r} is not {noun} id" + (f" ({prefix}-<12 hex>)" if prefix else ""))

    def known(item_id: str, kind: str, ent, view: str, noun: str) -> ItemView:
        """The item's view, or a 404 that says the same for an unknown item and one the caller may not see."""
        v = fold(events_of(item_id))
        if v is None or not may_see(ent, view, v.notify, v.classification):
            raise Refused(404, f"there is no {noun} {item_id} that {ent.identity.agency} may see "
                               f"(or the workflow job has not recorded it yet)")
        if v.kind != kind:
            raise Refused(409, f"{item_id} is {v.kind.lower().replace('_', ' ')}, not {noun}")
        return v

    def run_command(request: Request, identity: Identity, what: str, params: dict, build, status: int = 202,
                    also_audit=None):
        """Check the role, run the route's own checks (build -> command or Refused), send, audit
        (also_audit(command, command_id, view): more audit entries once the command is sent)."""
        ent, view = ctx.entitled(identity, request, ACTION, None, "", what, params)
        actor = m.Actor.of(identity)
        command_id = str(uuid.uuid4())
        try:
            command = build(ent, view, actor, command_id)
        except Refused as exc:
            raise refuse(request, identity, exc.status, exc.reason, what, params) from None
        try:
            sender = producer()
            # stamped just before the send: the workflow job holds a step until every command stamped
            # before it has been read (its watermark allows only a small skew between stamp and append)
            key, value = command_record(command, int(time.time() * 1000))
            sender.send(COMMANDS_TOPIC, key, value)
        except Exception as exc:
            reason = f"the command could not be sent: {str(exc)[:200]}"
            raise ctx.refuse(request, 503, reason, AuditEntry(
                action=ACTION, identity=identity, outcome="failed", reason=reason, query_name=what,
                query_text=request.url.path, params={**params, "item_id": command.item_id}))
        services.audit(AuditEntry(action=ACTION, identity=identity, region=view, query_name=what,
                                  query_text=request.url.path,
                                  params={**params, "item_id": command.item_id, "command_id": command_id}, row_count=1))
        for entry in (also_audit(command, command_id, view) if also_audit else []):
            services.audit(entry)
        return JSONResponse({"item_id": command.item_id, "command_id": command_id, "status": "sent",
                             "command": type(command).__name__}, status_code=status)

    # --- assistance requests ------------------------------------------------------------------

    @router.post("/api/v1/requests", status_code=202)
    def send_request(body: SendRequestIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """Send an assistance request (协查) to one or more agencies (REGION/BRANCH)."""
        params = body.model_dump()

        def build(ent, view, actor, command_id):
            if body.priority not in m.PRIORITIES:
                raise Refused(400, f"unknown priority {body.priority!r}: one of {', '.join(m.PRIORITIES)}")
            if not body.question.strip():
                raise Refused(400, "the request has no question: say what the addressee should check, locate or do")
            if not body.to:
                raise Refused(400, "the request has no addressee: name agencies as REGION/BRANCH")
            for a in body.to:
                if "/" not in a or not services.regions.is_known(m.region_of(a)):
                    raise Refused(400, f"addressee {a!r} is not an agency: REGION/BRANCH with a known region code")
                if a == actor.agency:
                    raise Refused(400, f"{a} cannot address a request to itself")
            if body.classification not in ent.classifications:
                raise Refused(403, f"{identity.name} is cleared to {identity.clearance}; it cannot send "
                                   f"a {body.classification} request")
            subjects = []
            for s in body.subjects:
                kind, _, value = s.partition(":")
                if kind.upper() not in m.IDENTIFIER_KINDS or not value.strip():
                    raise Refused(400, f"subject {s!r} is not an identifier: KIND:VALUE with KIND one of "
                                       f"{', '.join(m.IDENTIFIER_KINDS)}")
                subjects.append(m.Identifier(kind.upper(), value.strip()))
            return m.SendRequest(command_id=command_id, item_id=new_item_id("R"), actor=actor,
                                 addressees=tuple(dict.fromkeys(body.to)), priority=body.priority,
                                 subjects=tuple(subjects), question=body.question, joint_action=body.joint_action,
                                 classification=body.classification)

        return run_command(request, identity, "request.send", params, build)

    def addressee_command(verb: str, make, check=None):
        def build_for(item_id):
            def build(ent, view, actor, command_id):
                check_id(item_id, None, "a request")
                v = known(item_id, "ASSISTANCE_REQUEST", ent, view, "assistance request")
                if v.status != "OPEN":
                    raise Refused(409, f"request {item_id} is {v.status}; nothing more can be done on it")
                st = v.parties.get(actor.agency, {}).get("status")
                if st is None:
                    raise Refused(403, f"request {item_id} is addressed to {', '.join(v.parties)}; "
                                       f"{actor.agency} is not one of them and may not {verb} it")
                allowed = {"ACCEPT": ("SENT",), "ANSWER": ("ACCEPTED",), "REFUSE": ("SENT", "ACCEPTED"),
                           "ACT": ("ANSWERED",)}[verb]
                if st not in allowed:
                    raise Refused(409, f"request {item_id} is {st} by {actor.agency}; {verb} is allowed only while "
                                       f"it is {' or '.join(allowed)}")
                if check is not None:
                    check(v, actor)
                return make(command_id, item_id, actor)
            return build
        return build_for

    @router.post("/api/v1/requests/{item_id}/accept", status_code=202)
    def accept_request(item_id: str, request: Request, identity: Identity = Depends(ctx.caller)):
        """Accept a request addressed to your agency (within 1 hour by default)."""
        build = addressee_command("ACCEPT", lambda cid, iid, actor: m.AcceptRequest(cid, iid, actor))(item_id)
        return run_command(request, identity, "request.accept", {"item_id": item_id}, build)

    @router.post("/api/v1/requests/{item_id}/answer", status_code=202)
    def answer_request(item_id: str, body: AnswerIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """Answer an accepted request with findings."""
        reuse = list(dict.fromkeys(body.reuse_of))

        def make(cid, iid, actor):
            if not body.findings.strip():
                raise Refused(400, f"an answer to request {iid} needs findings")
            return m.AnswerRequest(cid, iid, actor, body.findings, tuple(reuse))

        def check(v, actor):
            # only answers offered to this agency can be reused (the job's rule, said here first)
            offered = offered_ids(v, actor.agency)
            unknown = [x for x in reuse if x not in offered]
            if unknown:
                raise Refused(409, f"request {v.item_id}: answers of {', '.join(unknown)} were not offered to "
                                   f"{actor.agency} (offered: {', '.join(offered) or 'none'})")

        def reused(command, command_id, view):
            return [AuditEntry(action=REUSE, identity=identity, region=view, query_name="request.answer",
                               query_text=request.url.path, row_count=1,
                               params={"item_id": item_id, "earlier_request": rid, "command_id": command_id})
                    for rid in reuse]

        return run_command(request, identity, "request.answer", {"item_id": item_id, **body.model_dump()},
                           addressee_command("ANSWER", make, check)(item_id), also_audit=reused)

    @router.get("/api/v1/requests/{item_id}/offered")
    def offered(item_id: str, request: Request, identity: Identity = Depends(ctx.caller)):
        """The earlier answers about this request's identifiers that the bus offered to your agency (an
        addressee), with their findings; each answer shown is an audit row (action `reuse`). Answers of a
        classification above your clearance are listed without their findings."""
        ent, view = ctx.entitled(identity, request, ACTION, None, "", "request.offered", {"item_id": item_id})
        agency = identity.agency
        try:
            check_id(item_id, None, "a request")
            v = known(item_id, "ASSISTANCE_REQUEST", ent, view, "assistance request")
            if agency not in v.parties:
                raise Refused(403, f"the answers offered on request {item_id} are for its addressees "
                                   f"({', '.join(v.parties)}); {agency} is not one of them and may not view them")
            ids = offered_ids(v, agency)
            answers = offered_answers(v, agency, query(earlier_answers_sql(services.reader.database, ids)) if ids else [])
        except Refused as exc:
            raise ctx.refuse(request, exc.status, exc.reason, AuditEntry(
                action=REUSE, identity=identity, outcome="refused", reason=exc.reason, query_name="request.offered",
                query_text=request.url.path, params={"item_id": item_id})) from None
        out = []
        for a in answers:
            params = {"item_id": item_id, "earlier_request": a["request_id"], "answered_by": a["answered_by"],
                      "identifiers": a["identifiers"]}
            if a["classification"] not in ent.classifications:
                reason = (f"answer of {a['request_id']} by {a['answered_by']} is {a['classification']}; "
                          f"{identity.name} is cleared to {identity.clearance}")
                services.audit(AuditEntry(action=REUSE, identity=identity, region=view, outcome="refused", reason=reason,
                                          query_name="request.offered", query_text=request.url.path, params=params))
                out.append({**{k: v_ for k, v_ in a.items() if k != "findings"}, "withheld": reason})
                continue
            services.audit(AuditEntry(action=REUSE, identity=identity, region=view, query_name="request.offered",
                                      query_text=request.url.path, params=params, row_count=1))
            out.append(a)
        if not answers:
            services.audit(AuditEntry(action=ACTION, identity=identity, region=view, query_name="request.offered",
                                      query_text=request.url.path, params={"item_id": item_id}, row_count=0))
        return {"item_id": item_id, "agency": agency, "offered": ids, "answers": out}

    @router.post("/api/v1/requests/{item_id}/refuse", status_code=202)
    def refuse_request(item_id: str, body: RefuseIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """Refuse a request, with a reason code (and a text for OTHER)."""
        def make(cid, iid, actor):
            if body.reason_code not in m.REFUSAL_REASONS:
                raise Refused(400, f"REFUSED needs a reason: one of {', '.join(m.REFUSAL_REASONS)}, not {body.reason_code!r}")
            if body.reason_code == "OTHER" and not body.text.strip():
                raise Refused(400, "REFUSED with reason OTHER needs a text saying why")
            return m.RefuseRequest(cid, iid, actor, body.reason_code, body.text)
        return run_command(request, identity, "request.refuse", {"item_id": item_id, **body.model_dump()},
                           addressee_command("REFUSE", make)(item_id))

    @router.post("/api/v1/requests/{item_id}/joint", status_code=202)
    def joint_action(item_id: str, body: JointIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """Report the joint action on an answered request that asked for one."""
        build = addressee_command("ACT", lambda cid, iid, actor: m.ReportJointAction(cid, iid, actor, body.outcome))
        return run_command(request, identity, "request.joint", {"item_id": item_id, **body.model_dump()},
                           build(item_id))

    @router.post("/api/v1/requests/{item_id}/close", status_code=202)
    def close_request(item_id: str, request: Request, body: CloseIn | None = None,
                      identity: Identity = Depends(ctx.caller)):
        """Close your agency's request (the requester only)."""
        body = body or CloseIn()

        def build(ent, view, actor, command_id):
            check_id(item_id, None, "a request")
            v = known(item_id, "ASSISTANCE_REQUEST", ent, view, "assistance request")
            if actor.agency != v.origin:
                raise Refused(403, f"request {item_id} was sent by {v.origin}; only the requester {v.origin} may "
                                   f"CLOSE it, not {actor.agency}")
            if v.status == "CLOSED":
                raise Refused(409, f"request {item_id} is already CLOSED")
            return m.CloseRequest(command_id, item_id, actor, body.outcome)

        return run_command(request, identity, "request.close", {"item_id": item_id, **body.model_dump()}, build)

    # --- hit follow-up ---------------------------------------------------------------------------

    def hit_context(hit_id: str, ent, view: str) -> tuple[dict, ItemView | None]:
        check_id(hit_id, None, "a hit")
        hit = hit_of(hit_id)
        v = fold(events_of(hit_id))
        if hit is None and v is not None:
            hit = {"hit_type": v.code, "owner_region": v.owner_region, "hit_region": v.hit_region,
                   "notify_regions": v.notify, "classification": v.classification}
        if hit is None or not may_see(ent, view, hit["notify_regions"], hit["classification"]):
            raise Refused(404, f"there is no hit {hit_id} that {ent.identity.agency} may see")
        if hit["hit_type"] not in m.HIT_TYPES:
            raise Refused(409, f"hit {hit_id} is a {hit['hit_type']}: only {', '.join(m.HIT_TYPES)} hits are followed up")
        return hit, v

    @router.post("/api/v1/hits/{hit_id}/report", status_code=202)
    def report_hit(hit_id: str, body: ReportHitIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """The sighting region reports what it did: DETAINED, OBSERVED, RELEASED or NOT_FOUND."""
        def build(ent, view, actor, command_id):
            if body.action not in m.SIGHTING_ACTIONS:
                raise Refused(400, f"unknown action {body.action!r}: report one of {', '.join(m.SIGHTING_ACTIONS)}")
            hit, v = hit_context(hit_id, ent, view)
            if actor.region != hit["hit_region"]:
                raise Refused(403, f"hit {hit_id} was sighted in {hit['hit_region']}; only that region reports what it "
                                   f"did, not {actor.agency}")
            if v is not None and v.status in ("NOT_VALID", "CLOSED"):
                raise Refused(409, f"hit {hit_id} is {v.status}; actions are reported while it is "
                                   f"AWAITING_CONFIRMATION or CONFIRMED")
            return m.ReportAction(command_id, hit_id, actor, body.action, body.note)

        return run_command(request, identity, "hit.report", {"item_id": hit_id, **body.model_dump()}, build)

    @router.post("/api/v1/hits/{hit_id}/confirm", status_code=202)
    def confirm_hit(hit_id: str, body: ConfirmHitIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """The record's owner answers: CONFIRMED, NOT_VALID, or NEED_TIME with minutes."""
        def build(ent, view, actor, command_id):
            if body.answer not in m.CONFIRMATIONS:
                raise Refused(400, f"unknown answer {body.answer!r}: confirm with one of {', '.join(m.CONFIRMATIONS)}")
            if body.answer == "NEED_TIME" and (body.minutes is None or body.minutes < 1):
                raise Refused(400, "NEED_TIME needs minutes (1 or more)")
            hit, v = hit_context(hit_id, ent, view)
            if actor.region != hit["owner_region"]:
                raise Refused(403, f"hit {hit_id} matched a record of {hit['owner_region']}; only its owner "
                                   f"{hit['owner_region']} may {body.answer} it, not {actor.agency}")
            if v is not None and v.status != "AWAITING_CONFIRMATION":
                raise Refused(409, f"hit {hit_id} is {v.status}; CONFIRMED, NOT_VALID and NEED_TIME are answers to a "
                                   f"hit AWAITING_CONFIRMATION")
            return m.ConfirmHit(command_id, hit_id, actor, body.answer,
                                body.minutes if body.answer == "NEED_TIME" else None, body.note)

        return run_command(request, identity, "hit.confirm", {"item_id": hit_id, **body.model_dump()}, build)

    # --- directives --------------------------------------------------------------------------------

    @router.post("/api/v1/directives", status_code=202)
    def issue_directive(body: IssueDirectiveIn, request: Request, identity: Identity = Depends(ctx.caller)):
        """Issue a directive (指令) to regions inside yours and to zones your region belongs to."""
        def build(ent, view, actor, command_id):
            regions = services.regions
            if not body.task.strip():
                raise Refused(400, "the directive has no task: say what the recipients must do")
            if body.due_at <= int(time.time() * 1000):
                raise Refused(400, f"the directive is due at {body.due_at}, which is not in the future")
            if not body.to:
                raise Refused(400, "the directive has no recipient: name regions or zones")
            for entry in body.to:
                if regions.is_zone(entry):
                    if entry not in regions.zones_of(actor.region):
                        raise Refused(403, f"{actor.agency} is not in zone {entry}; it may direct its own zones "
                                           f"({', '.join(sorted(regions.zones_of(actor.region))) or 'none'}) and "
                                           f"regions inside {actor.region}")
                elif regions.is_known(entry):
                    if entry == actor.region or not regions.is_within(entry, actor.region):
                        raise Refused(403, f"{entry} is not inside {actor.region}; {actor.agency} may direct regions "
                                           f"inside {actor.region} and its zones")
                else:
                    raise Refused(400, f"{entry!r} is neither a known region code nor a zone")
            if body.classification not in ent.classifications:
                raise Refused(403, f"{identity.name} is cleared to {identity.clearance}; it cannot issue "
                                   f"a {body.classification} directive")
            return m.IssueDirective(command_id, new_item_id("D"), actor, tuple(dict.fromkeys(body.to)), body.task,
                                    body.due_at, body.classification)

        return run_command(request, identity, "directive.issue", body.model_dump(), build)

    def recipient_command(item_id: str, verb: str, allowed: tuple, make):
        def build(ent, view, actor, command_id):
            check_id(item_id, None, "a directive")
            v = known(item_id, "DIRECTIVE", ent, view, "directive")
            st = v.parties.get(actor.region, {}).get("status")
            if st is None:
                raise Refused(403, f"directive {item_id} is for {', '.join(v.parties)}; {actor.agency} may not "
                                   f"{verb} it")
            if v.status != "OPEN":
                raise Refused(409, f"directive {item_id} is {v.status}; nothing more can be reported on it")
            if st not in allowed:
                hint = "ACKNOWLEDGE it first" if st == "SENT" else f"it is {st} already"
                raise Refused(409, f"directive {item_id} is {st} by {actor.region}; {verb} is allowed only while it is "
                                   f"{' or '.join(allowed)} ({hint})")
            return make(command_id, item_id, actor)
        return build

    @router.post("/api/v1/directives/{item_id}/ack", status_code=202)
    def ack_directive(item_id: str, request: Request, identity: Identity = Depends(ctx.caller)):
        """Acknowledge a directive addressed to your region (within 15 minutes by default)."""
        build = recipient_command(item_id, "ACKNOWLEDGE", ("SENT",),
                                  lambda cid, iid, actor: m.AcknowledgeDirective(cid, iid, actor))
        return run_command(request, identity, "directive.ack", {"item_id": item_id}, build)

    @router.post("/api/v1/directives/{item_id}/report", status_code=202)
    def report_directive(item_id: str, body: DirectiveReportIn, request: Request,
                         identity: Identity = Depends(ctx.caller)):
        """Report DONE, or CANNOT with a reason, on an acknowledged directive."""
        def make(cid, iid, actor):
            if body.outcome not in ("DONE", "CANNOT"):
                raise Refused(400, f"unknown outcome {body.outcome!r}: report DONE or CANNOT (with a reason)")
            if body.outcome == "CANNOT" and not body.reason.strip():
                raise Refused(400, "CANNOT needs a reason")
            return m.ReportDirective(cid, iid, actor, body.outcome, body.reason)
        build = recipient_command(item_id, body.outcome if body.outcome in ("DONE", "CANNOT") else "report on",
                                  ("ACKNOWLEDGED",), make)
        return run_command(request, identity, "directive.report", {"item_id": item_id, **body.model_dump()}, build)

    # --- reading -------------------------------------------------------------------------------------

    @router.get("/api/v1/queue")
    def queue(request: Request, identity: Identity = Depends(ctx.caller), all: bool = False):
        """What waits for the caller's agency: open items with what to do, the deadline and whether it is
        overdue; items escalated to its region too. Newest deadline first."""
        ent, view = ctx.entitled(identity, request, ACTION, None, "", "queue", {})
        agency, region = identity.agency, identity.region
        since = int(time.time() * 1000) - QUEUE_DAYS * 86_400_000
        try:
            rows = query(queue_sql(services.reader.database, agency, region, since))
        except Refused as exc:
            raise ctx.refuse(request, exc.status, exc.reason, AuditEntry(
                action=ACTION, identity=identity, outcome="failed", reason=exc.reason, query_name="queue")) from None
        by_item: dict[str, list] = {}
        for r in rows:
            by_item.setdefault(r["item_id"], []).append(r)
        now = int(time.time() * 1000)
        items = []
        for events in by_item.values():
            v = fold(events)
            if v is None or not may_see(ent, view, v.notify, v.classification):
                continue
            todo = waiting_for(v, agency, region)
            escalated = region in v.escalated_to or agency in v.escalated_to
            if not todo and not escalated and not (all and v.status in ("OPEN", "AWAITING_CONFIRMATION")):
                continue
            party = v.parties.get(agency) or v.parties.get(region) or {}
            due = party.get("due_ms") if party.get("status") in OPEN_PARTY else None
            due = due or v.due_ms
            items.append({"item_id": v.item_id, "kind": v.kind, "status": v.status, "todo": todo or "",
                          "escalated_to_you": escalated, "party_status": party.get("status") or "",
                          "due_ms": due, "overdue": bool(due and due < now and todo),
                          "from": v.origin or v.owner_region, "summary": v.summary or "", "code": v.code or "",
                          "last_event": v.events[-1]["event_type"], "last_at_ms": v.events[-1]["at_ms"]})
        items.sort(key=lambda i: i["due_ms"] or 0, reverse=True)
        services.audit(AuditEntry(action=ACTION, identity=identity, region=view, query_name="queue",
                                  query_text=request.url.path, row_count=len(items),
                                  params={"item_ids": [i["item_id"] for i in items][:100]}))
        return {"agency": agency, "now_ms": now, "items": items}

    @router.get("/api/v1/items/{item_id}")
    def item(item_id: str, request: Request, identity: Identity = Depends(ctx.caller)):
        """An item's events in order (its history) and its parties' states (a directive's recipients,
        a request's addressees), if the caller may see it."""
        ent, view = ctx.entitled(identity, request, ACTION, None, "", "item", {"item_id": item_id})
        try:
            check_id(item_id, None, "an item")
            v = fold(events_of(item_id))
            if v is None or not may_see(ent, view, v.notify, v.classification):
                raise Refused(404, f"there is no workflow item {item_id} that {identity.agency} may see "
                                   f"(or the workflow job has not recorded it yet)")
        except Refused as exc:
            raise refuse(request, identity, exc.status, exc.reason, "item", {"item_id": item_id}) from None
        services.audit(AuditEntry(action=ACTION, identity=identity, region=view, query_name="item",
                                  query_text=request.url.path, params={"item_id": item_id}, row_count=len(v.events)))
        return {"item_id": v.item_id, "kind": v.kind, "status": v.status, "classification": v.classification,
                "from": v.origin or v.owner_region, "owner_region": v.owner_region, "hit_region": v.hit_region,
                "due_ms": v.due_ms, "escalated_to": v.escalated_to, "summary": v.summary, "code": v.code,
                "todo": waiting_for(v, identity.agency, identity.region) or "",
                "offered_to_you": offered_ids(v, identity.agency),  # GET /api/v1/requests/{id}/offered shows them
                "parties": party_rows(v), "events": [{k: e[k] for k in EVENT_FIELDS} for e in v.events]}

    app.include_router(router)
