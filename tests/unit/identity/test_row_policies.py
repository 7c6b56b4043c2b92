"""identity.row_policies: the statements (pure; chDB 4.4 has no writable access storage to run them)."""
from __future__ import annotations

import pytest
import sqlglot

from identity.row_policies import role_name, row_policy_statements

JS = {"events": "source_region LIKE '32%' AND classification IN ('PUBLIC', 'INTERNAL')",
      "hits": "arrayExists(n -> n LIKE '32%', notify_regions)"}


def test_one_role_and_per_table_grant_and_policy():
    assert row_policy_statements({"320000": JS}, "intelbus") == [
        "CREATE ROLE IF NOT EXISTS agency_320000",
        "GRANT SELECT ON intelbus.events TO agency_320000",
        "CREATE ROW POLICY IF NOT EXISTS agency_320000_events ON intelbus.events FOR SELECT USING "
        "source_region LIKE '32%' AND classification IN ('PUBLIC', 'INTERNAL') TO agency_320000",
        "GRANT SELECT ON intelbus.hits TO agency_320000",
        "CREATE ROW POLICY IF NOT EXISTS agency_320000_hits ON intelbus.hits FOR SELECT USING "
        "arrayExists(n -> n LIKE '32%', notify_regions) TO agency_320000",
    ]


def test_on_cluster_goes_after_the_name():
    stmts = row_policy_statements({"130000": {"hits": "1"}}, "intelbus", cluster="c1")
    assert stmts == ["CREATE ROLE IF NOT EXISTS agency_130000 ON CLUSTER c1",
                     "GRANT ON CLUSTER c1 SELECT ON intelbus.hits TO agency_130000",
                     "CREATE ROW POLICY IF NOT EXISTS agency_130000_hits ON CLUSTER c1 ON intelbus.hits "
                     "FOR SELECT USING 1 TO agency_130000"]


def test_role_names_are_plain_and_collisions_refused():
    assert role_name("320500-JY") == "agency_320500_JY"
    with pytest.raises(ValueError, match="share the role"):
        row_policy_statements({"a-b": {}, "a.b": {}}, "intelbus")
    with pytest.raises(ValueError, match="not a plain identifier"):
        row_policy_statements({"1": {}}, "intel bus")


def test_the_predicates_parse_in_the_statements():
    for stmt in row_policy_statements({"320000": JS}, "intelbus"):
        if stmt.startswith("CREATE ROW POLICY"):
            predicate = stmt.split(" USING ", 1)[1].rsplit(" TO ", 1)[0]
            assert sqlglot.parse_one(predicate, dialect="clickhouse") is not None


def test_clickhouse_26_parses_every_statement():
    """chDB cannot run them (no writable access storage in clickhouse-local), but its parser reads them."""
    chdb = pytest.importorskip("chdb")
    from sinks.engine import sql_literal

    session = chdb.session.Session()
    try:
        for stmt in row_policy_statements({"320000": JS, "130000": {"event_subjects": "1"}}, "intelbus", cluster="c1"):
            formatted = str(session.query(f"SELECT formatQuerySingleLine({sql_literal(stmt)})", "TSVRaw")).strip()
            assert formatted.split()[0] == stmt.split()[0]
    finally:
        session.close()
