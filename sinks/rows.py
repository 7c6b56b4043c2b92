"""Decoded records -> rows of the history tables (pure functions, column order below).

Records come from `schemas.wire.RawDecoder`: timestamps in epoch milliseconds, dates as
day numbers. ClickHouse DateTime columns get naive UTC datetimes.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from schemas.records import subjects_of

EVENT_COLUMNS = ("event_id", "kind", "type", "source_region", "source_system", "source_ref", "revision",
                 "occurred_at", "occurred_ms", "reported_ms", "classification", "share_scope", "region", "title",
                 "status", "address", "lat", "lon", "identifiers", "raw", "topic", "partition", "offset", "ingested_ms")
SUBJECT_COLUMNS = ("id_value", "id_kind", "role", "event_id", "kind", "type", "source_region", "region",
                   "occurred_at", "occurred_ms", "classification", "share_scope", "ingested_ms", "title", "address")
HIT_COLUMNS = ("hit_id", "hit_type", "matched_kind", "matched_value", "owner_region", "hit_region", "notify_regions",
               "classification", "detected_at", "detected_ms", "record_kind", "record_key", "record", "trigger_kind",
               "trigger_event_id", "trigger", "trigger_reported_ms", "trigger_occurred_ms", "ingested_ms")
DEAD_LETTER_COLUMNS = ("dlq_id", "stage", "source", "kind", "field", "reason", "raw", "source_region",
                       "source_system", "failed_at", "failed_ms", "ingested_ms")
DUPLICATE_COLUMNS = ("event_id", "kind", "record_key", "revision", "source_region", "source_system", "source",
                     "dropped_at", "dropped_ms", "ingested_ms")
AUDIT_COLUMNS = ("at", "at_ms", "user", "region", "purpose", "action", "query_name", "query_text", "params", "row_count",
                 "principal_kind", "agency", "roles", "issuer", "token_id", "door", "outcome", "reason")

WORKFLOW_COLUMNS = ("event_id", "item_id", "item_kind", "event_type", "seq", "at", "at_ms", "status", "actor",
                    "actor_agency", "party", "party_status", "to", "notify", "deadline", "due_ms", "scheduled_ms",
                    "level", "code", "text", "minutes", "refs", "command_id", "classification", "topic", "partition",
                    "offset", "ingested_ms")

COLUMNS = {"events": EVENT_COLUMNS, "event_subjects": SUBJECT_COLUMNS, "hits": HIT_COLUMNS,
           "dead_letters": DEAD_LETTER_COLUMNS, "duplicates": DUPLICATE_COLUMNS, "audit_log": AUDIT_COLUMNS,
           "workflow_events": WORKFLOW_COLUMNS}

_TYPE_FIELD = {"alert": "alert_type", "wanted": "action", "incident": "incident_type"}


def utc(ms: int) -> datetime:
    """Naive UTC datetime (what clickhouse-driver writes to a DateTime column), whole seconds."""
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).replace(tzinfo=None)


def event_rows(kind: str, record: dict, *, topic: str, partition: int, offset: int, ingested_ms: int):
    """(events row, [event_subjects rows]) of one unique event."""
    location = record.get("location") or {}
    region = location.get("region") or record["source_region"]
    occurred_ms = record["occurred_at"]
    occurred_at = utc(occurred_ms)
    subs = subjects_of(kind, record)
    status = record.get("status") or ("CLOSED" if record.get("action") in ("ARRESTED", "SURRENDERED", "CANCELLED")
                                       else "OPEN" if kind == "wanted" else "")
    row = (
        str(record["event_id"]), kind, record[_TYPE_FIELD[kind]], record["source_region"], record["source_system"],
        record["source_ref"], record["revision"], occurred_at, occurred_ms, record["reported_at"],
        record["classification"], list(record.get("share_scope") or ()), region, record.get("title") or "",
        status, location.get("address") or "", location.get("lat"), location.get("lon"),
        [f"{k}:{v}" for k, v, _ in subs], json.dumps(record, ensure_ascii=False, separators=(",", ":")),
        topic, partition, offset, ingested_ms,
    )
    subject_rows = [
        (value, id_kind, role, str(record["event_id"]), kind, record[_TYPE_FIELD[kind]], record["source_region"], region,
         occurred_at, occurred_ms, record["classification"], list(record.get("share_scope") or ()), ingested_ms,
         record.get("title") or "", location.get("address") or "")
        for id_kind, value, role in subs
    ]
    return row, subject_rows


def hit_row(hit: dict, ingested_ms: int) -> tuple:
    try:
        trigger_occurred = json.loads(hit["trigger"]).get("occurred_at")
        trigger_occurred_ms = int(datetime.fromisoformat(trigger_occurred).timestamp() * 1000) if trigger_occurred else 0
    except (ValueError, TypeError, AttributeError):
        trigger_occurred_ms = 0
    return (
        str(hit["hit_id"]), hit["hit_type"], hit["matched_on"]["kind"], hit["matched_on"]["value"],
        hit["owner_region"], hit["hit_region"], list(hit["notify_regions"]), hit["classification"],
        utc(hit["detected_at"]), hit["detected_at"], hit["record_kind"], hit["record_key"], hit["record"],
        hit["trigger_kind"], str(hit["trigger_event_id"]), hit["trigger"], hit["trigger_reported_at"],
        trigger_occurred_ms, ingested_ms,
    )


def dead_letter_row(dl: dict, ingested_ms: int) -> tuple:
    raw = dl["raw"]
    return (
        str(dl["dlq_id"]), dl["stage"], dl["source"], dl.get("kind") or "", dl.get("field") or "", dl["reason"],
        raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw),
        dl.get("source_region") or "", dl.get("source_system") or "", utc(dl["failed_at"]), dl["failed_at"], ingested_ms,
    )


def refused_record_audit_row(dl: dict, ingested_ms: int) -> tuple:
    """The audit row of a record refused for its proof of publisher (stage VERIFY): who claimed to
    publish it, for which region, and why it was refused (AUDIT_COLUMNS order)."""
    import json

    return (
        utc(dl["failed_at"]), dl["failed_at"], f"(publisher) {dl.get('source_system') or 'unknown'}",
        dl.get("source_region") or "", "", "verify", "", dl["source"],
        json.dumps({"dlq_id": str(dl["dlq_id"]), "kind": dl.get("kind")}), 0,
        "system", dl.get("source_region") or "", "", "", "", "jobs", "refused", dl["reason"],
    )


def refused_workflow_audit_row(dl: dict, ingested_ms: int) -> tuple:
    """The audit row of a workflow command the workflow job refused (stage WORKFLOW): who sent it, from
    which agency, and why (AUDIT_COLUMNS order). The dead letter's raw bytes are the command record."""
    import json

    try:
        actor = json.loads(dl["raw"])["command"]["actor"] or {}
    except (ValueError, KeyError, TypeError):
        actor = {}
    if not isinstance(actor, dict):
        actor = {}
    agency = "/".join(x for x in (actor.get("region", ""), actor.get("branch", "")) if x)
    return (
        utc(dl["failed_at"]), dl["failed_at"], dl.get("source_system") or "unknown", dl.get("source_region") or "",
        "", "workflow", dl.get("field") or "", dl["source"], json.dumps({"dlq_id": str(dl["dlq_id"])}), 0,
        actor.get("kind", "person"), agency, ",".join(actor.get("roles") or []), "", "", "jobs", "refused", dl["reason"],
    )


def duplicate_row(dup: dict, ingested_ms: int) -> tuple:
    return (
        dup["event_id"], dup["kind"], dup["record_key"], dup["revision"], dup["source_region"], dup["source_system"],
        dup["source"], utc(dup["dropped_ms"]), dup["dropped_ms"], ingested_ms,
    )


def workflow_row(ev: dict, *, topic: str, partition: int, offset: int, ingested_ms: int) -> tuple:
    """The workflow_events row of one intel.workflow record (WorkflowEvent.to_avro(), decoded), WORKFLOW_COLUMNS order."""
    return (
        str(ev["event_id"]), ev["item_id"], ev["item_kind"], ev["event_type"], int(ev["seq"]), utc(ev["at"]), ev["at"],
        ev["status"], ev.get("actor") or "", ev.get("actor_agency") or "", ev.get("party") or "",
        ev.get("party_status") or "", list(ev.get("to") or ()), list(ev.get("notify") or ()), ev.get("deadline") or "",
        ev.get("due_at"), ev.get("scheduled_at"), int(ev.get("level") or 0), ev.get("code") or "", ev.get("text") or "",
        ev.get("minutes"), list(ev.get("refs") or ()), ev.get("command_id") or "", ev.get("classification") or "INTERNAL",
        topic, partition, offset, ingested_ms,
    )
