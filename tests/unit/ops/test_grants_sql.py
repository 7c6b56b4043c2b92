"""ops/clickhouse/grants.sql: the production users and grants for a current ClickHouse.

chDB (ClickHouse 26) refuses to run CREATE USER / GRANT (ACCESS_DENIED: it has no writable
access storage), so the statements are checked with its parser (EXPLAIN AST), and the tables
they name are checked against the migrated schema on chDB.
"""
from __future__ import annotations

import re

import pytest

from ops.secrets import GRANTS, render_grants_sql, sha256_hex

PASSWORDS = {"intelbus_sink": "s1nk", "intelbus_gateway": "g4teway", "intelbus_reader": "r3ader"}


def statements(text: str) -> list[str]:
    body = "\n".join(l for l in text.splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def grants(text: str) -> list[tuple[set[str], str, str]]:
    """(privileges, table, user) of every GRANT."""
    out = []
    for s in statements(text):
        m = re.fullmatch(r"GRANT (.+) ON intelbus\.(\w+|\*) TO (\w+)", s)
        if m:
            out.append(({p.strip() for p in m.group(1).split(",")}, m.group(2), m.group(3)))
    return out


@pytest.fixture(scope="module")
def chdb_session(tmp_path_factory):
    from sinks.engine import ChdbExecutor
    from sinks.migrate import apply_migrations

    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb")))
    apply_migrations(ex)
    yield ex
    ex.close()


def test_rendered_with_hashes_never_passwords():
    text = render_grants_sql(PASSWORDS)
    assert "'@SHA256_" not in text
    for user, password in PASSWORDS.items():
        assert f"'{sha256_hex(password)}'" in text and password not in text


def test_every_statement_parses_on_current_clickhouse(chdb_session):
    stmts = statements(render_grants_sql(PASSWORDS))
    assert len(stmts) >= 10
    for s in stmts:
        chdb_session.session.query(f"EXPLAIN AST {s}")          # raises on a syntax error


def test_chdb_refuses_to_run_create_user(chdb_session):
    """Why the statements are only parsed here (if this ever passes, run them and test the grants)."""
    first = statements(render_grants_sql(PASSWORDS))[0]
    with pytest.raises(Exception, match="ACCESS_DENIED|Not enough privileges"):
        chdb_session.session.query(first)


def test_grants_name_real_tables_and_keep_the_audit_log_append_only(chdb_session):
    _, rows = chdb_session.query("SELECT name FROM system.tables WHERE database = 'intelbus'")
    tables = {r[0] for r in rows}
    given = grants(render_grants_sql(PASSWORDS))
    assert {t for _, t, _ in given} <= tables
    assert all(t != "*" for _, t, _ in given)                          # table by table, no intelbus.*
    on_audit = {(user, p) for privs, t, user in given if t == "audit_log" for p in privs}
    # the gateway writes and reads it; the sink writes the rows of records refused for their proof; nobody alters it
    assert on_audit == {("intelbus_gateway", "INSERT"), ("intelbus_gateway", "SELECT"), ("intelbus_sink", "INSERT")}
    history = tables - {"audit_log", "schema_migrations"}
    assert {t for privs, t, u in given if u == "intelbus_sink" and privs == {"INSERT"}} == history | {"audit_log"}
    assert {t for privs, t, u in given if u == "intelbus_reader"} == history
    assert all(privs == {"SELECT"} for privs, _, u in given if u == "intelbus_reader")
    assert "SETTINGS readonly = 1 CONST" in next(s for s in statements(GRANTS.read_text()) if "intelbus_reader" in s)
