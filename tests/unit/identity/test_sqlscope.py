"""Ad-hoc SQL scoped on the syntax tree (identity.sqlscope), proved on chDB (ClickHouse 26.x).

A Jiangsu analyst (region 320000, cleared to INTERNAL) tries to read Beijing's, Hebei's and
SECRET rows through every SQL shape we could think of; each is either refused with a message
or returns only what Jiangsu may see. `SHAPES` (allowed queries with their expected rows) and
`REFUSED` are module constants so that tests/integration/test_sqlscope_server.py runs the
same shapes on the ClickHouse 18.16 server.
"""
from __future__ import annotations

import re

import pytest
import sqlglot

from identity.sqlscope import ScopeError, scope_sql
from schemas.regions import load_regions
from sinks.engine import sql_literal
from sinks.rows import COLUMNS

DB = "intelbus"
T = 1_795_000_000  # seconds
# (source_ref, kind, source_region, classification, share_scope)
EVENTS = [
    ("BJ-1", "incident", "110105", "INTERNAL", []),
    ("BJ-SHARED", "alert", "110105", "INTERNAL", ["320000"]),  # Beijing shares this one with Jiangsu
    ("HB-1", "wanted", "130822", "INTERNAL", []),
    ("JS-1", "incident", "320500", "INTERNAL", []),
    ("JS-SECRET", "incident", "320500", "SECRET", []),
]
# (record_key, owner_region, notify_regions, classification, trigger: the event's source_ref)
HITS = [
    ("H-BJ", "110105", ["110105"], "INTERNAL", "BJ-1"),
    ("H-HB", "130822", ["130822"], "INTERNAL", "HB-1"),
    ("H-JS", "320500", ["320500", "130822"], "INTERNAL", "JS-1"),
    ("H-JS-SECRET", "320500", ["320500"], "SECRET", "JS-SECRET"),
]
VISIBLE_EVENTS = ["BJ-SHARED", "JS-1"]
VISIBLE_HITS = ["H-JS"]


def event_id(ref: str) -> str:
    return f"E-{ref}"


def sample_rows() -> dict[str, list[tuple]]:
    """Rows per table, in sinks.rows.COLUMNS order (each event has one subject: id_value = source_ref)."""
    events, subjects, hits = [], [], []
    for i, (ref, kind, region, cls, share) in enumerate(EVENTS):
        e = {"event_id": event_id(ref), "kind": kind, "type": kind.upper(), "source_region": region, "source_system": "s",
             "source_ref": ref, "revision": 1, "occurred_at": T + i * 60, "occurred_ms": (T + i * 60) * 1000,
             "reported_ms": (T + i * 60) * 1000, "classification": cls, "share_scope": share, "region": region,
             "title": f"title {ref}", "status": "", "address": "", "lat": None, "lon": None, "identifiers": [ref],
             "raw": "{}", "topic": f"intel.{kind}.unique", "partition": 0, "offset": i, "ingested_ms": T * 1000}
        events.append(tuple(e[c] for c in COLUMNS["events"]))
        s = {"id_value": ref, "id_kind": "RESIDENT_ID", "role": "CHECKED", "event_id": event_id(ref), "kind": kind,
             "type": kind.upper(), "source_region": region, "region": region, "occurred_at": T + i * 60,
             "occurred_ms": (T + i * 60) * 1000, "classification": cls, "share_scope": share, "ingested_ms": T * 1000,
             "title": f"title {ref}", "address": ""}
        subjects.append(tuple(s[c] for c in COLUMNS["event_subjects"]))
    for i, (key, owner, notify, cls, trigger) in enumerate(HITS):
        h = {"hit_id": f"HIT-{key}", "hit_type": "WANTED_PERSON", "matched_kind": "RESIDENT_ID", "matched_value": trigger,
             "owner_region": owner, "hit_region": notify[0], "notify_regions": notify, "classification": cls,
             "detected_at": T + 600 + i, "detected_ms": (T + 600 + i) * 1000, "record_kind": "WANTED", "record_key": key,
             "record": "{}", "trigger_kind": "INCIDENT", "trigger_event_id": event_id(trigger), "trigger": "{}",
             "trigger_reported_ms": T * 1000, "trigger_occurred_ms": T * 1000, "ingested_ms": T * 1000}
        hits.append(tuple(h[c] for c in COLUMNS["hits"]))
    return {"events": events, "event_subjects": subjects, "hits": hits}


def insert_sql(database: str, table: str, rows: list[tuple]) -> str:
    """One INSERT ... VALUES with literals (DateTime columns get toDateTime(seconds))."""
    def lit(col, v):
        return f"toDateTime({v})" if col in ("occurred_at", "detected_at") else sql_literal(v)
    cols = COLUMNS[table]
    values = ", ".join("(" + ", ".join(lit(c, v) for c, v in zip(cols, row)) + ")" for row in rows)
    return f"INSERT INTO {database}.{table} ({', '.join(cols)}) VALUES {values}"


def analyst_scopes(region: str, clearance: str = "INTERNAL", regions=None) -> dict[str, str]:
    """What an analyst of `region` may read, per table: identity.entitlement's predicates, as the gateway uses them."""
    from identity.entitlement import Entitlement
    from identity.principals import Identity

    ent = Entitlement(Identity(name="a", kind="person", region=region, branch="INTELLIGENCE",
                               roles=frozenset({"analyst"}), clearance=clearance), regions or load_regions())
    return ent.sql_scopes(region)


JIANGSU = analyst_scopes("320000")

# Allowed shapes: (name, sql, expected rows, runs on 18.16?). Expected rows are for the Jiangsu analyst.
SHAPES = [
    ("plain", "SELECT source_ref FROM events ORDER BY source_ref", [(r,) for r in VISIBLE_EVENTS], True),
    ("count by kind", "SELECT kind, count() AS n FROM events GROUP BY kind ORDER BY kind",
     [("alert", 1), ("incident", 1)], True),
    ("double-quoted", 'SELECT record_key FROM "hits"', [("H-JS",)], True),
    ("backquoted", "SELECT record_key FROM `hits` AS h", [("H-JS",)], True),
    ("qualified, aliased, FINAL", "SELECT h.record_key FROM intelbus.hits AS h FINAL", [("H-JS",)], True),
    ("qualified, no alias", "SELECT hits.record_key FROM intelbus.hits", [("H-JS",)], True),
    ("asks for Beijing", "SELECT source_ref FROM events WHERE source_region = '110105' OR 1 = 1 ORDER BY source_ref",
     [(r,) for r in VISIBLE_EVENTS], True),
    ("asks for SECRET", "SELECT record_key FROM hits WHERE classification = 'SECRET'", [], True),
    ("case tricks", "sElEcT source_ref fRoM events oRdEr By source_ref", [(r,) for r in VISIBLE_EVENTS], True),
    ("comments", "SELECT source_ref /* FROM system.tables */ FROM events -- UNION ALL SELECT name FROM system.tables\n"
                 "ORDER BY source_ref", [(r,) for r in VISIBLE_EVENTS], True),
    ("comma join", "SELECT e.source_ref, s.id_value FROM events AS e, event_subjects AS s "
                   "WHERE e.event_id = s.event_id ORDER BY e.source_ref", [(r, r) for r in VISIBLE_EVENTS],
     False),  # 18.16 fails a comma join of two subqueries ("Logical error: unknown combination of JOIN")
    ("ANY LEFT JOIN", "SELECT e.source_ref, h.record_key FROM events AS e ANY LEFT JOIN hits AS h "
                      "ON e.event_id = h.trigger_event_id ORDER BY e.source_ref", [("BJ-SHARED", ""), ("JS-1", "H-JS")], True),
    ("GLOBAL ANY INNER JOIN USING", "SELECT source_ref, id_value FROM events GLOBAL ANY INNER JOIN event_subjects "
                                    "USING (event_id) ORDER BY source_ref", [(r, r) for r in VISIBLE_EVENTS], True),
    ("join subjects to hits", "SELECT s.id_value, h.record_key FROM event_subjects AS s ALL INNER JOIN hits AS h "
                              "ON s.event_id = h.trigger_event_id", [("JS-1", "H-JS")], True),
    ("subquery in FROM", "SELECT count() FROM (SELECT source_ref FROM events)", [(2,)], True),
    ("subquery reads all in FROM", "SELECT record_key FROM (SELECT * FROM hits) WHERE 1 OR 1", [("H-JS",)], True),
    ("IN (SELECT ...)", "SELECT record_key FROM hits WHERE trigger_event_id IN (SELECT event_id FROM intelbus.events)",
     [("H-JS",)], True),
    ("NOT IN (SELECT ...)", "SELECT source_ref FROM events WHERE event_id GLOBAL NOT IN "
                            "(SELECT trigger_event_id FROM hits)", [("BJ-SHARED",)], True),
    ("scalar subquery", "SELECT (SELECT count() FROM hits) AS n", [(1,)], True),
    ("UNION ALL", "SELECT r FROM (SELECT source_ref AS r FROM events UNION ALL SELECT record_key AS r FROM hits) ORDER BY r",
     [("BJ-SHARED",), ("H-JS",), ("JS-1",)], True),
    ("ARRAY JOIN", "SELECT source_ref, s FROM events ARRAY JOIN share_scope AS s", [("BJ-SHARED", "320000")], True),
    ("numbers()", "SELECT count() FROM numbers(3)", [(3,)], False),  # 18.16: table functions forbidden to readonly users
    ("no table", "SELECT 1 + 1", [(2,)], True),
    ("old LIMIT", "SELECT source_ref FROM events ORDER BY source_ref LIMIT 1, 1", [("JS-1",)], True),
    ("old functions", "SELECT toStartOfHour(occurred_at) = toStartOfHour(occurred_at), if(lat IS NULL, 0, 1) "
                      "FROM events WHERE occurred_at > toDateTime('2020-01-02 00:00:00') - INTERVAL 1 DAY AND source_ref = 'JS-1'",
     [(1, 0)], True),
    # ClickHouse 18.16 has no CTEs, EXISTS, INTERSECT or EXCEPT: these run on current servers only
    ("CTE", "WITH js AS (SELECT source_ref FROM events) SELECT source_ref FROM js ORDER BY source_ref",
     [(r,) for r in VISIBLE_EVENTS], False),
    ("CTE named like a table", "WITH hits AS (SELECT source_ref AS record_key FROM hits AS h, events) "
                               "SELECT record_key FROM hits ORDER BY record_key", [(r,) for r in VISIBLE_EVENTS], False),
    ("CTE reading itself", "WITH hits AS (SELECT record_key FROM hits) SELECT record_key FROM hits", [("H-JS",)], False),
    ("EXISTS", "SELECT record_key FROM hits WHERE EXISTS (SELECT 1 FROM events WHERE source_region = '110105')",
     [("H-JS",)], False),
    ("INTERSECT", "SELECT event_id FROM events INTERSECT SELECT trigger_event_id FROM hits", [("E-JS-1",)], False),
    ("EXCEPT", "SELECT event_id FROM events EXCEPT SELECT trigger_event_id FROM hits", [("E-BJ-SHARED",)], False),
]

_ONLY = "only events, event_subjects, hits may be read"
# Refused: (sql, the message's text, exactly)
REFUSED = [
    ("SELECT * FROM system.tables", f"refused: system.tables: {_ONLY}"),
    ("SELECT * FrOm SYSTEM.TABLES", f"refused: SYSTEM.TABLES: {_ONLY}"),
    ("SELECT * FROM information_schema.tables", f"refused: information_schema.tables: {_ONLY}"),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", f"refused: INFORMATION_SCHEMA.TABLES: {_ONLY}"),
    ("SELECT * FROM default.hits", f"refused: default.hits: {_ONLY}"),
    ("SELECT * FROM other.hits", f"refused: other.hits: {_ONLY}"),
    ("SELECT * FROM a.intelbus.hits", f"refused: a.intelbus.hits: {_ONLY}"),
    ("SELECT * FROM audit_log", f"refused: audit_log: {_ONLY}"),
    ("SELECT * FROM intelbus.dead_letters", f"refused: intelbus.dead_letters: {_ONLY}"),
    ("SELECT * FROM duplicates", f"refused: duplicates: {_ONLY}"),
    ("SELECT * FROM intelbus.schema_migrations", f"refused: intelbus.schema_migrations: {_ONLY}"),
    ("SELECT * FROM HITS", f"refused: HITS: {_ONLY}"),
    ("SELECT * FROM h\u0456ts", f"refused: h\u0456ts: {_ONLY}"),  # Cyrillic і
    ("SELECT * FROM \uff48\uff49\uff54\uff53", f"refused: \uff48\uff49\uff54\uff53: {_ONLY}"),  # fullwidth ｈｉｔｓ
    ("SELECT * FROM syst\u0435m.tables", f"refused: syst\u0435m.tables: {_ONLY}"),  # Cyrillic е
    ("SELECT * FROM unknown_table", f"refused: unknown_table: {_ONLY}"),
    ("SELECT * FROM events JOIN audit_log USING (user)", f"refused: audit_log: {_ONLY}"),
    ("SELECT * FROM events AS e, system.one", f"refused: system.one: {_ONLY}"),
    ("SELECT * FROM events AS e ANY LEFT JOIN intelbus.audit_log AS a ON 1", f"refused: intelbus.audit_log: {_ONLY}"),
    ("SELECT * FROM events WHERE 1 IN (SELECT 1 FROM system.users)", f"refused: system.users: {_ONLY}"),
    ("SELECT (SELECT count() FROM system.processes)", f"refused: system.processes: {_ONLY}"),
    ("SELECT 1 FROM hits WHERE EXISTS (SELECT 1 FROM intelbus.dead_letters)", f"refused: intelbus.dead_letters: {_ONLY}"),
    ("SELECT source_ref FROM events UNION ALL SELECT query_text FROM audit_log", f"refused: audit_log: {_ONLY}"),
    ("WITH t AS (SELECT name FROM system.tables) SELECT * FROM t", f"refused: system.tables: {_ONLY}"),
    ("WITH t AS (SELECT 1) SELECT * FROM events WHERE 0 UNION ALL SELECT * FROM t2", f"refused: t2: {_ONLY}"),
    ("SELECT * FROM events WHERE event_id IN hits",
     "refused: IN hits reads a whole table; write IN (SELECT col FROM hits)"),
    ("SELECT * FROM events WHERE event_id IN intelbus.hits",
     "refused: IN intelbus.hits reads a whole table; write IN (SELECT col FROM intelbus.hits)"),
    ("SELECT * FROM events WHERE event_id GLOBAL NOT IN (hits)",
     "refused: IN hits reads a whole table; write IN (SELECT col FROM hits)"),
    ("SELECT * FROM remote('127.0.0.1', intelbus.hits)", "refused: table function remote() is not allowed"),
    ("SELECT * FROM remoteSecure('127.0.0.1', intelbus.hits)", "refused: table function remoteSecure() is not allowed"),
    ("SELECT * FROM url('http://x/', CSV, 'a String')", "refused: table function url() is not allowed"),
    ("SELECT * FROM file('/etc/passwd', LineAsString)", "refused: table function file() is not allowed"),
    ("SELECT * FROM merge('intelbus', 'hits')", "refused: table function merge() is not allowed"),
    ("SELECT * FROM cluster('default', intelbus.hits)", "refused: table function cluster() is not allowed"),
    ("SELECT * FROM clusterAllReplicas('default', intelbus.hits)",
     "refused: table function clusterAllReplicas() is not allowed"),
    ("SELECT * FROM mysql('h:3306', 'd', 't', 'u', 'p')", "refused: table function mysql() is not allowed"),
    ("SELECT * FROM s3('http://x/y.csv')", "refused: table function s3() is not allowed"),
    ("SELECT * FROM view(SELECT * FROM intelbus.hits)", "refused: table function view() is not allowed"),
    ("SELECT * FROM dictionary('regions')", "refused: table function dictionary() is not allowed"),
    ("SELECT * FROM generateRandom('a UInt8')", "refused: table function generateRandom() is not allowed"),
    ("SELECT * FROM events AS e JOIN url('http://x/', CSV, 'event_id String') AS u USING (event_id)",
     "refused: table function url() is not allowed"),
    ("SELECT * FROM events SETTINGS readonly = 0", "refused: SETTINGS may not be changed"),
    ("SELECT * FROM events SETTINGS additional_table_filters = {'intelbus.events': '1'}",
     "refused: SETTINGS may not be changed"),
    ("SELECT * FROM (SELECT * FROM events SETTINGS max_threads = 1)", "refused: SETTINGS may not be changed"),
    ("SELECT * FROM events FORMAT JSON", "refused: FORMAT is chosen by the service"),
    ("SELECT * FROM events INTO OUTFILE '/tmp/x'", "refused: INTO OUTFILE is not allowed: the service returns the rows"),
    ("SELECT 1; SELECT * FROM system.tables", "refused: only one SELECT statement (found 2)"),
    ("SELECT 1 /* */; DROP TABLE intelbus.hits", "refused: only one SELECT statement (found 2)"),
    ("SELECT 1 -- x\n;DROP TABLE intelbus.hits", "refused: only one SELECT statement (found 2)"),
    ("SELECT dictGet('regions', 'name', toUInt64(1))", "refused: function dictGet() is not allowed: it reads other tables, files or server state"),
    ("SELECT dictGetString('regions', 'name', toUInt64(1)) FROM events", "refused: function dictGetString() is not allowed: it reads other tables, files or server state"),
    ("SELECT DICTHAS('regions', toUInt64(1))", "refused: function DICTHAS() is not allowed: it reads other tables, files or server state"),
    ("SELECT joinGet('intelbus.hits', 'record_key', 'x')", "refused: function joinGet() is not allowed: it reads other tables, files or server state"),
    ("SELECT hasColumnInTable('system', 'users', 'name')", "refused: function hasColumnInTable() is not allowed: it reads other tables, files or server state"),
    ("SELECT file('/etc/passwd')", "refused: function file() is not allowed: it reads other tables, files or server state"),
    ("SELECT * FROM events WHERE notIn(event_id, hits)", "refused: function notIn() is not allowed: it reads other tables, files or server state"),
    ("SELECT * FROM events WHERE globalIn(event_id, hits)", "refused: function globalIn() is not allowed: it reads other tables, files or server state"),
    ("SELECT sleepEachRow(3) FROM events", "refused: function sleepEachRow() is not allowed: it reads other tables, files or server state"),
    ("SELECT * FROM events PREWHERE kind = 'x'", "refused: PREWHERE is not supported here (tables are read through a subquery); write WHERE"),
    ("SELECT * FROM events SAMPLE 0.1", "refused: SAMPLE is not supported (the tables have no sampling key)"),
    ("SELECT $$x$$ FROM events", "refused: $$ strings are not supported; write '...'"),
    ("INSERT INTO events SELECT * FROM events", "refused: INSERT is not allowed: only one SELECT statement"),
    ("ALTER TABLE hits DELETE WHERE 1", "refused: ALTER is not allowed: only one SELECT statement"),
    ("DROP TABLE hits", "refused: DROP is not allowed: only one SELECT statement"),
    ("CREATE TABLE x ENGINE = Memory AS SELECT * FROM hits", "refused: CREATE is not allowed: only one SELECT statement"),
    ("TRUNCATE TABLE hits", "refused: TRUNCATE is not allowed: only one SELECT statement"),
    ("RENAME TABLE hits TO h2", "refused: RENAME is not allowed: only one SELECT statement"),
    ("SET readonly = 0", "refused: SET is not allowed: only one SELECT statement"),
    ("SYSTEM FLUSH LOGS", "refused: SYSTEM is not allowed: only one SELECT statement"),
    ("KILL QUERY WHERE 1", "refused: KILL is not allowed: only one SELECT statement"),
    ("OPTIMIZE TABLE hits FINAL", "refused: OPTIMIZE is not allowed: only one SELECT statement"),
    ("GRANT SELECT ON *.* TO analyst", "refused: GRANT is not allowed: only one SELECT statement"),
    ("SHOW TABLES", "refused: SHOW is not allowed: only one SELECT statement"),
    ("SHOW CREATE TABLE hits", "refused: SHOW is not allowed: only one SELECT statement"),
    ("DESCRIBE events", "refused: DESCRIBE is not allowed: only one SELECT statement"),
    ("EXPLAIN SELECT * FROM hits", "refused: EXPLAIN is not allowed: only one SELECT statement"),
    ("EXISTS TABLE hits", "refused: EXISTS is not allowed: only one SELECT statement"),
    ("USE system", "refused: USE is not allowed: only one SELECT statement"),
    ("   ", "refused: the query is empty"),
]


# --- pure ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sql, message", REFUSED, ids=[s[:50] for s, _ in REFUSED])
def test_refused_with_a_message(sql, message):
    with pytest.raises(ScopeError) as refused:
        scope_sql(sql, database=DB, scopes=JIANGSU)
    assert str(refused.value) == message


def test_scope_error_is_a_value_error():
    assert issubclass(ScopeError, ValueError)


@pytest.mark.parametrize("name, sql", [(s[0], s[1]) for s in SHAPES[:10]] + [(s[0], s[1]) for s in SHAPES[-6:-2]])
def test_scoped_sql_parses_again_and_reads_only_scoped_subqueries(name, sql):
    out = scope_sql(sql, database=DB, scopes=JIANGSU)
    tree = sqlglot.parse_one(out, dialect="clickhouse")
    for table in tree.find_all(sqlglot.exp.Table):
        if table.args.get("db") is None:
            assert table.name.startswith("intelbus_cte_") or table.name == "numbers"
            continue
        assert (table.text("db"), isinstance(table.parent, sqlglot.exp.Final)) == (DB, True)
        select = table.parent.parent.parent
        assert select.args["where"].this.sql("clickhouse") == sqlglot.exp.Paren(
            this=sqlglot.parse_one(JIANGSU[table.name], dialect="clickhouse")).sql("clickhouse")


def test_output_is_the_analysts_text_with_only_the_tables_replaced():
    sql = ("SELECT toStartOfHour(occurred_at) AS h, count() FROM events AS e ANY LEFT JOIN hits USING (event_id) "
           "WHERE occurred_at > now() - INTERVAL 1 DAY /* note */ GROUP BY h LIMIT 5, 10")
    out = scope_sql(sql, database="db1", scopes={"events": "1", "hits": "2"})
    assert out == ("SELECT toStartOfHour(occurred_at) AS h, count() FROM (SELECT * FROM db1.events FINAL WHERE (1)) AS e "
                   "ANY LEFT JOIN (SELECT * FROM db1.hits FINAL WHERE (2)) AS hits USING (event_id) "
                   "WHERE occurred_at > now() - INTERVAL 1 DAY GROUP BY h LIMIT 5, 10")


def test_the_configured_database_is_the_real_one_and_intelbus_is_then_another():
    assert "FROM db1.hits FINAL" in scope_sql("SELECT * FROM db1.hits", database="db1", scopes={"hits": "1"})
    with pytest.raises(ScopeError, match=r"^refused: intelbus.hits: only hits may be read$"):
        scope_sql("SELECT * FROM intelbus.hits", database="db1", scopes={"hits": "1"})


def test_a_cte_is_renamed_so_a_misread_name_cannot_reach_a_real_table():
    out = scope_sql("WITH x AS (SELECT 1 AS a) SELECT x.a FROM x", database=DB, scopes=JIANGSU)
    assert out == "WITH intelbus_cte_x AS (SELECT 1 AS a) SELECT x.a FROM intelbus_cte_x AS x"
    # a CTE does not see itself: `hits` in its body is the table, scoped
    out = scope_sql("WITH hits AS (SELECT * FROM hits) SELECT * FROM hits", database=DB, scopes={"hits": "0"})
    assert out == ("WITH intelbus_cte_hits AS (SELECT * FROM (SELECT * FROM intelbus.hits FINAL WHERE (0)) AS hits) "
                   "SELECT * FROM intelbus_cte_hits AS hits")
    # nor does an earlier sibling see a later one
    with pytest.raises(ScopeError, match="refused: b: only"):
        scope_sql("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", database=DB, scopes=JIANGSU)


def test_a_caller_with_no_table_and_a_broken_predicate_are_errors():
    with pytest.raises(ScopeError, match="may read no table"):
        scope_sql("SELECT 1", database=DB, scopes={})
    with pytest.raises(ValueError, match="not one expression"):
        scope_sql("SELECT * FROM hits", database=DB, scopes={"hits": "1; DROP TABLE x"})


# --- on chDB -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("chdb")
    from sinks.engine import ChdbExecutor
    from sinks.migrate import apply_migrations

    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb-scope")), database=DB)
    apply_migrations(ex)
    for table, rows in sample_rows().items():
        for _ in range(2):  # delivered twice (at-least-once sink): FINAL shows each row once
            ex.execute(insert_sql(DB, table, rows))
    yield ex
    ex.close()


def test_the_tables_hold_other_regions_and_secret_rows(engine):
    """The control: without the scope, Beijing, Hebei and SECRET rows are there to be leaked."""
    assert engine.query(f"SELECT count() FROM {DB}.events FINAL")[1] == [(5,)]
    assert engine.query(f"SELECT count() FROM {DB}.hits FINAL")[1] == [(4,)]


@pytest.mark.parametrize("name, sql, expected, old_server", SHAPES, ids=[s[0] for s in SHAPES])
def test_allowed_shapes_return_only_what_jiangsu_may_see(engine, name, sql, expected, old_server):
    columns, rows = engine.query(scope_sql(sql, database=DB, scopes=JIANGSU))
    assert [tuple(r) for r in rows] == expected


def test_beijing_sees_its_own_rows_through_the_same_function(engine):
    beijing = analyst_scopes("110000")
    rows = engine.query(scope_sql("SELECT source_ref FROM events ORDER BY source_ref", database=DB, scopes=beijing))[1]
    assert rows == [("BJ-1",), ("BJ-SHARED",)]
    secret = analyst_scopes("320000", "SECRET")
    rows = engine.query(scope_sql("SELECT record_key FROM hits ORDER BY record_key", database=DB, scopes=secret))[1]
    assert rows == [("H-JS",), ("H-JS-SECRET",)]


def test_hebei_sees_a_jiangsu_hit_it_was_notified_of(engine):
    rows = engine.query(scope_sql("SELECT record_key FROM hits ORDER BY record_key", database=DB,
                                  scopes=analyst_scopes("130000")))[1]
    assert rows == [("H-HB",), ("H-JS",)]


def test_refused_shapes_do_read_tables_when_run_raw(engine):
    """A sample of the refused queries, run raw, show what the refusal prevents."""
    with pytest.raises(Exception, match="19 at right"):  # `IN table` reads the table (hits has 19 columns)
        engine.query(f"SELECT count() FROM {DB}.events WHERE event_id IN {DB}.hits")
    assert engine.query(f"SELECT count() FROM merge('{DB}', '^hits$')")[1] == [(8,)]  # both deliveries, all regions
