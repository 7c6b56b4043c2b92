"""ClickHouse roles and row policies per agency: the server-side twin of identity.sqlscope.

`row_policy_statements(scopes_by_agency, database)` returns, for each agency (a key such as
'130000' or '320500-JY'; its entitlement per table as `{table: predicate}`), the statements

    CREATE ROLE IF NOT EXISTS agency_130000
    GRANT SELECT ON db.events TO agency_130000
    CREATE ROW POLICY IF NOT EXISTS agency_130000_events ON db.events FOR SELECT USING <predicate> TO agency_130000

Role names: `agency_<key>`, the key with every character outside [A-Za-z0-9_] written as `_`
(two keys that collide that way are an error). Policy names: `<role>_<table>`. With
`cluster`, every statement gets `ON CLUSTER <cluster>`.

Needs a server with SQL-driven access control (ClickHouse 20.4 or later, a user with
access_management); ClickHouse 18.16 has neither roles nor row policies, and chDB 4.4
(clickhouse-local) has no writable access storage, so these cannot be tried there. Note
that once a table has any row policy, a user to whom none applies reads no rows of it:
operators and the sink need their own `USING 1` policy.
"""
from __future__ import annotations

import re

_NAME = re.compile(r"[^A-Za-z0-9_]")


def role_name(agency: str) -> str:
    if not agency:
        raise ValueError("an agency key may not be empty")
    return "agency_" + _NAME.sub("_", agency)


def row_policy_statements(scopes_by_agency: dict[str, dict[str, str]], database: str, *,
                          cluster: str | None = None) -> list[str]:
    """CREATE ROLE, GRANT SELECT and CREATE ROW POLICY statements, agency by agency, table by table."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise ValueError(f"database name {database!r} is not a plain identifier")
    on_cluster = ""
    if cluster is not None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cluster):
            raise ValueError(f"cluster name {cluster!r} is not a plain identifier")
        on_cluster = f" ON CLUSTER {cluster}"
    seen: dict[str, str] = {}
    out: list[str] = []
    for agency, scopes in scopes_by_agency.items():
        role = role_name(agency)
        if role in seen:
            raise ValueError(f"agencies {seen[role]!r} and {agency!r} would share the role {role}")
        seen[role] = agency
        out.append(f"CREATE ROLE IF NOT EXISTS {role}{on_cluster}")
        for table, predicate in scopes.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
                raise ValueError(f"table name {table!r} is not a plain identifier")
            if not predicate.strip():
                raise ValueError(f"{agency}: the predicate for {table} is empty")
            out.append(f"GRANT{on_cluster} SELECT ON {database}.{table} TO {role}")
            out.append(f"CREATE ROW POLICY IF NOT EXISTS {role}_{table}{on_cluster} ON {database}.{table} "
                       f"FOR SELECT USING {predicate} TO {role}")
    return out
