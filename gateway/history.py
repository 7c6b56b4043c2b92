"""History queries as the gateway runs them: named queries and ad-hoc SQL, each limited to
what the caller may see (identity.entitlement), run as ClickHouse's read-only user, audited.

The decisions (what SQL to run for whom) are pure functions here; the gateway's routes do
the I/O.
"""
from __future__ import annotations

import dataclasses
import re

from identity.entitlement import Entitlement
from identity.sqlscope import scope_sql
from sinks.queries import NamedQuery, QueryError

NAMED_TABLES = ("events", "event_subjects", "hits", "dead_letters", "duplicates", "audit_log", "workflow_events")


def identifier_forms(raw: str) -> list[str]:
    """Every normalised form a searched identifier can take (a resident ID, a plate, a phone, ...)."""
    from schemas.normalise import InvalidIdentifier, normalise_identifier

    forms = []
    for kind in ("RESIDENT_ID", "PLATE", "PHONE", "PASSPORT"):
        try:
            forms.append(normalise_identifier(kind, raw))
        except InvalidIdentifier:
            continue
    return list(dict.fromkeys(forms)) or [raw.strip().upper()]


def named_query_sql(q: NamedQuery, values: dict, ent: Entitlement, view: str, purpose: str, database: str) -> str:
    """The SQL of a named query for this caller, or QueryError saying what is missing."""
    if q.purpose_required and not purpose.strip():
        raise QueryError(f"{q.name}: a purpose is required (a case or request reference, for the audit log)")
    values = dict(values)
    if q.name == "trail":
        if not values.get("id"):
            raise QueryError("trail: --id is required (resident ID, plate or phone)")
        values["ids"] = identifier_forms(values["id"])
    # tables qualified in the query's own text, before the caller's values become literals in it
    q = dataclasses.replace(q, sql=in_database(q.sql, database))
    return q.render(values, kind_scopes(ent, view))


# No filter at all: for benchmarks and the operators' own checks on the server, never for a caller.
UNSCOPED = {"event": "1", "hit": "1", "source": "1", "workflow": "1"}


def kind_scopes(ent: Entitlement, view: str) -> dict[str, str]:
    """The caller's predicates by the kind of row a named query's `{scope:ALIAS}` filters."""
    scopes = ent.sql_scopes(view)
    prefix = ent.regions.descendants_prefix(view)
    # dead letters carry no classification; a region sees the rejections of its own systems
    # workflow events: the rule of hits (RegionTable.may_see) on their `notify` regions and zones
    workflow = scopes["hits"].replace("notify_regions", "notify")
    return {"event": scopes["events"], "hit": scopes["hits"], "source": f"(source_region LIKE '{prefix}%')",
            "workflow": workflow}


def in_database(sql: str, database: str) -> str:
    """Named queries name tables bare; run them in the configured database."""
    return re.sub(r"\b(FROM|JOIN|IN)\s+(" + "|".join(NAMED_TABLES) + r")\b",
                  lambda m: f"{m.group(1)} {database}.{m.group(2)}", sql)


def adhoc_sql(sql: str, ent: Entitlement, view: str, database: str) -> str:
    """An analyst's statement with every table reference wrapped in the caller's scope (ScopeError if it cannot be)."""
    return scope_sql(sql, database=database, scopes=ent.sql_scopes(view))


def page_sql(sql: str, limit: int, offset: int) -> str:
    """One page of a query's result, one row more than asked (so the answer knows whether more follow).

    The query runs as a subquery, so its own LIMIT / LIMIT BY and ORDER BY stay as they are; the
    `LIMIT offset, n` form is the one ClickHouse 18.16 knows.
    """
    return f"SELECT * FROM (\n{sql.rstrip().rstrip(';')}\n) LIMIT {int(offset)}, {int(limit) + 1}"


def page_of(rows: list, limit: int, offset: int) -> tuple[list, bool, int | None]:
    """(the page's rows, whether more follow, the next page's offset) from the rows page_sql gave."""
    more = len(rows) > limit
    return rows[:limit], more, (offset + limit if more else None)
