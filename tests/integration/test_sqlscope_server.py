"""The scoped ad-hoc SQL shapes of tests/unit/identity/test_sqlscope.py on the real ClickHouse
server of the stack (18.16 on Debian): same rows, same Jiangsu analyst, same expected results,
in a uuid-named scratch database that the test creates and drops.

Shapes marked as needing a current server (CTEs, EXISTS, INTERSECT, EXCEPT) are skipped on
servers older than 21.
"""
from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

from identity.sqlscope import scope_sql
from sinks.rows import COLUMNS


# --- server access: the only place that knows how to reach ClickHouse as an admin -----------

def admin_executor(settings, database: str):
    """An executor as the admin (`default`), with rights to create and drop a database."""
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    return DriverExecutor(clickhouse_url_as(settings, "default"), database=database)


# -------------------------------------------------------------------------------------------

def _unit_module():
    path = Path(__file__).resolve().parents[1] / "unit" / "identity" / "test_sqlscope.py"
    spec = importlib.util.spec_from_file_location("sqlscope_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


U = _unit_module()


def _as_driver_row(table: str, row: tuple) -> tuple:
    """DateTime columns as datetimes (the unit module keeps them as epoch seconds for SQL literals)."""
    from datetime import datetime, timezone

    return tuple(datetime.fromtimestamp(v, tz=timezone.utc).replace(tzinfo=None)
                 if c in ("occurred_at", "detected_at") else v for c, v in zip(COLUMNS[table], row))


@pytest.fixture(scope="module")
def scratch(stack, settings):
    from sinks.migrate import apply_migrations

    db = f"scope_{uuid.uuid4().hex[:12]}"
    ex = admin_executor(settings, db)
    try:
        apply_migrations(ex)
        for table, rows in U.sample_rows().items():
            for _ in range(2):  # delivered twice: FINAL shows each row once
                # as the sink inserts (rows as data): 18.16's native protocol waits for data after an
                # INSERT whose VALUES are in the query text
                ex.insert(table, COLUMNS[table], [_as_driver_row(table, r) for r in rows])
        major = int(ex.query("SELECT version()")[1][0][0].split(".")[0])
        yield ex, db, major
    finally:
        ex.execute(f"DROP DATABASE IF EXISTS {db}")
        ex.close()


def test_the_scratch_tables_hold_other_regions_and_secret_rows(scratch):
    ex, db, _ = scratch
    assert ex.query(f"SELECT count() FROM {db}.events FINAL")[1] == [(5,)]
    assert ex.query(f"SELECT count() FROM {db}.hits FINAL")[1] == [(4,)]


@pytest.mark.parametrize("name, sql, expected, old_server", U.SHAPES, ids=[s[0] for s in U.SHAPES])
def test_shape_on_the_server(scratch, name, sql, expected, old_server):
    ex, db, major = scratch
    if not old_server and major < 21:
        pytest.skip(f"ClickHouse {major}.x has no {name}")
    scoped = scope_sql(sql.replace("intelbus.", f"{db}."), database=db, scopes=U.JIANGSU)
    _, rows = ex.query(scoped, readonly=True)
    assert [tuple(r) for r in rows] == expected, scoped
