"""The audit log's rows: who (the authenticated principal), which agency and role, why, what,
how much came back, and whether it was served or refused.

Only services write it (the gateway; `intelbus access` for changes of principals); people
have no ClickHouse account and the gateway's API has no way to write or delete a row.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from identity.principals import Identity
from sinks.rows import AUDIT_COLUMNS  # one column list for every writer of the audit log (the sink too)

UNAUTHENTICATED = "(unauthenticated)"


@dataclass(frozen=True)
class AuditEntry:
    action: str                      # feed | query | sql | audit | login | whoami | access:<change> | ...
    identity: Identity | None        # None: the caller could not be authenticated
    outcome: str = "ok"              # ok | refused | failed
    reason: str = ""                 # why refused or failed, as told to the caller
    region: str = ""                 # the region looked at
    purpose: str = ""
    query_name: str = ""
    query_text: str = ""
    params: dict = field(default_factory=dict)
    row_count: int = 0
    claimed_name: str = ""           # whom an unauthenticated request claimed to be
    door: str = "gateway"
    actor: str = ""                  # for changes made locally (`intelbus access`): the OS account


def audit_row(entry: AuditEntry, now: float | None = None) -> tuple:
    """The audit_log row of an entry, in AUDIT_COLUMNS order."""
    now = time.time() if now is None else now
    i = entry.identity
    user = i.name if i else (entry.actor or f"{UNAUTHENTICATED} {entry.claimed_name}".strip())
    return (datetime.fromtimestamp(int(now), tz=timezone.utc).replace(tzinfo=None), int(now * 1000), user,
            entry.region or (i.region if i else ""), entry.purpose, entry.action, entry.query_name, entry.query_text,
            json.dumps(entry.params, ensure_ascii=False, default=str), entry.row_count,
            i.kind if i else "", i.agency if i else "", i.role_text if i else "", i.issuer if i else "",
            i.token_id if i else "", entry.door, entry.outcome, entry.reason)


class AuditLog:
    """Writes entries to ClickHouse's audit_log through an executor (sinks.engine)."""

    def __init__(self, executor):
        self.executor = executor

    def write(self, entry: AuditEntry) -> None:
        self.executor.insert("audit_log", AUDIT_COLUMNS, [audit_row(entry)])


def flush_access_changes(store, executor) -> int:
    """Write the changes of a store (principals, signing keys) that the audit log has not seen yet
    (`intelbus access` or `intelbus keys` while ClickHouse was down)."""
    pending = store.pending_changes()
    if not pending:
        return 0
    log = AuditLog(executor)
    for seq, at_ms, actor, action, subject, detail in pending:
        log.write(AuditEntry(action=f"access:{action}", identity=None, actor=f"{actor} (local operator)", door="access",
                             query_text=f"{action} {subject}",
                             params={"actor": actor, "principal": subject, "at_ms": at_ms, **json.loads(detail)}))
    store.mark_sent([p[0] for p in pending])
    return len(pending)
