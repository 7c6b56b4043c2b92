"""The auditor's view of the audit log: filters rendered as literals, newest first (pure)."""
from __future__ import annotations

from datetime import datetime

from sinks.engine import sql_literal

COLUMNS = ("at", "user", "agency", "roles", "issuer", "door", "action", "outcome", "reason", "region", "purpose",
           "query_name", "row_count", "query_text", "params")


def _time(text: str, name: str) -> str:
    try:
        return sql_literal(datetime.fromisoformat(text.replace("T", " ")).replace(tzinfo=None))
    except ValueError:
        raise ValueError(f"--{name}: {text!r} is not a time (YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)") from None


def audit_sql(q, database: str) -> str:
    where = ["1"]
    for column in ("user", "action", "outcome", "region"):
        value = getattr(q, column)
        if value:
            where.append(f"{column} = {sql_literal(value)}")
    if q.since:
        where.append(f"at >= {_time(q.since, 'since')}")
    if q.until:
        where.append(f"at < {_time(q.until, 'until')}")
    return (f"SELECT {', '.join(COLUMNS)} FROM {database}.audit_log WHERE {' AND '.join(where)} "
            f"ORDER BY at_ms DESC LIMIT {int(q.limit)}")
