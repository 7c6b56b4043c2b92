"""`intelbus migrate`: apply sinks/migrations/*.sql in order, once each.

Applied versions are recorded in `schema_migrations` with a checksum; a migration file
changed after it was applied is refused (write a new migration instead).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        """The file's statements (separated by ';' at a line end), without comment lines."""
        body = "\n".join(l for l in self.sql.splitlines() if not l.strip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def load_migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.fullmatch(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return found


def apply_migrations(executor, *, migrations: list[Migration] | None = None, log=None) -> list[str]:
    """Create the database if missing and apply pending migrations; returns what was applied.

    When every migration is applied it only reads schema_migrations, so a service user
    with SELECT and INSERT (the sink checks at start) needs no DDL right.
    """
    db = executor.database
    read = f"SELECT version, name, checksum FROM {db}.schema_migrations ORDER BY version"
    try:
        _, rows = executor.query(read)
    except Exception:  # no database or no schema_migrations yet (a new server): the admin creates them
        executor.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        executor.execute(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, checksum String, applied_at DateTime) ENGINE = MergeTree ORDER BY version"
        )
        _, rows = executor.query(read)
    applied = {int(r[0]): (r[1], r[2]) for r in rows}
    done = []
    for m in migrations if migrations is not None else load_migrations():
        if m.version in applied:
            if applied[m.version][1] != m.checksum:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} changed after it was applied "
                    f"(checksum {applied[m.version][1]} -> {m.checksum}): add a new migration instead")
            continue
        for statement in m.statements():
            executor.execute(_qualify(statement, db))
        executor.insert("schema_migrations", ("version", "name", "checksum", "applied_at"),
                        [(m.version, m.name, m.checksum, datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None))])
        done.append(f"{m.version:04d}_{m.name}")
        if log:
            log(f"applied migration {m.version:04d}_{m.name}")
    return done


_TABLE_STATEMENT = re.compile(r"^(CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+|ALTER\s+TABLE\s+)(\w+)(?=\s)", re.IGNORECASE)


def _qualify(statement: str, db: str) -> str:
    """CREATE TABLE IF NOT EXISTS t / ALTER TABLE t -> ... db.t (migrations name tables without a database)."""
    return _TABLE_STATEMENT.sub(lambda m: f"{m.group(1)}{db}.{m.group(2)}", statement, count=1)


def add_migrate(p):
    p.epilog = "Idempotent: applied versions are recorded in schema_migrations. `intelbus up` runs it too."

    def run(args):
        from ops.secrets import clickhouse_url_as
        from ops.settings import load_settings
        from sinks.engine import DriverExecutor

        executor = DriverExecutor(clickhouse_url_as(load_settings(), "default"))  # the admin: DDL
        try:
            done = apply_migrations(executor, log=print)
        except MigrationError as exc:
            print(f"intelbus migrate: {exc}")
            return 1
        print(f"migrate: {len(done)} applied, database {executor.database} is current")
        return 0

    return run
