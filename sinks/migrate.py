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


def apply_migrations(executor, *, migrations: list[Migration] | None = None, log=None, cluster: str = "") -> list[str]:
    """Create the database if missing and apply pending migrations; returns what was applied.

    When every migration is applied it only reads schema_migrations, so a service user
    with SELECT and INSERT (the sink checks at start) needs no DDL right. With a cluster name
    (settings.clickhouse_cluster) every statement is rendered for it (`render_statement`).
    """
    db = executor.database
    read = f"SELECT version, name, checksum FROM {db}.schema_migrations ORDER BY version"
    try:
        _, rows = executor.query(read)
    except Exception:  # no database or no schema_migrations yet (a new server): the admin creates them
        for statement in bootstrap_statements(db, cluster):
            executor.execute(statement)
        _, rows = executor.query(read)
    applied = {int(r[0]): (r[1], r[2]) for r in rows}
    done = []
    migrations = migrations if migrations is not None else load_migrations()
    keys = sorting_keys(migrations)
    for m in migrations:
        if m.version in applied:
            if applied[m.version][1] != m.checksum:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} changed after it was applied "
                    f"(checksum {applied[m.version][1]} -> {m.checksum}): add a new migration instead")
            continue
        for statement in m.statements():
            for rendered in render_statement(statement, db, cluster, keys=keys):
                executor.execute(rendered)
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


def bootstrap_statements(db: str, cluster: str = "") -> list[str]:
    """The database and the table of applied versions (replicated on a cluster: any replica can tell)."""
    if not cluster:
        return [f"CREATE DATABASE IF NOT EXISTS {db}",
                f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
                "(version UInt32, name String, checksum String, applied_at DateTime) ENGINE = MergeTree ORDER BY version"]
    return [f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {cluster}",
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER {cluster} "
            "(version UInt32, name String, checksum String, applied_at DateTime) "
            f"ENGINE = {_replicated('MergeTree', '', db, 'schema_migrations')} ORDER BY version"]


LOCAL_SUFFIX = "_local"  # a cluster's replicated table; the migration's own name is the Distributed one over it
_CREATE = re.compile(r"^CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)\s*(\(.*\))\s*ENGINE\s*=\s*(\w+)(?:\(([^)]*)\))?(.*)$",
                     re.IGNORECASE | re.DOTALL)
_ORDER_BY = re.compile(r"ORDER\s+BY\s+(\([^)]*\)|\w+)", re.IGNORECASE)
_ALTER = re.compile(r"^ALTER\s+TABLE\s+(\w+)(\s.*)$", re.IGNORECASE | re.DOTALL)


def sorting_keys(migrations: list[Migration]) -> dict[str, str]:
    """Each table's sorting key (what its Distributed table shards by), from the migrations that create them."""
    keys = {}
    for m in migrations:
        for statement in m.statements():
            create = _CREATE.match(statement.strip())
            order = create and _ORDER_BY.search(create.group(5))
            if order:
                keys[create.group(1)] = order.group(1).strip("()")
    return keys


def _distributed(name: str, db: str, cluster: str, key: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{name}{LOCAL_SUFFIX} "
            f"ENGINE = Distributed({cluster}, {db}, {name}{LOCAL_SUFFIX}, cityHash64({key}))")


def render_statement(statement: str, db: str, cluster: str = "", *, keys: dict[str, str] | None = None) -> list[str]:
    """One migration statement as run: on one server, qualified with the database; on a cluster,
    `CREATE TABLE t (...) ENGINE = XMergeTree(a)` becomes a ReplicatedXMergeTree `t_local` on every
    replica plus a Distributed `t` over it (sharded by the hash of the sorting key, so the copies of a
    row that the Replacing engine collapses always meet on one shard), and `ALTER TABLE t` alters both.
    Readers and the sink keep using `t`."""
    if not cluster:
        return [_qualify(statement, db)]
    create = _CREATE.match(statement.strip())
    if create:
        name, columns, engine, args, rest = create.groups()
        if not engine.endswith("MergeTree"):
            raise MigrationError(f"{name}: engine {engine} has no replicated form; the cluster needs a *MergeTree")
        order = _ORDER_BY.search(rest)
        if order is None:
            raise MigrationError(f"{name}: no ORDER BY to shard by")
        local = name + LOCAL_SUFFIX
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.{local} ON CLUSTER {cluster} {columns} "
            f"ENGINE = {_replicated(engine, args or '', db, local)}{rest}",
            _distributed(name, db, cluster, order.group(1).strip("()")),
        ]
    alter = _ALTER.match(statement.strip())
    if alter:
        # ClickHouse 18.16 runs no ALTER ON CLUSTER of a table that is not replicated ("isn't replicated,
        # but shard #1 is"): the Distributed table, which holds no data, is made again over the altered
        # one (an ALTER of a Replicated table returns once every active replica has applied it)
        name, change = alter.groups()
        local = name + LOCAL_SUFFIX
        key = (keys if keys is not None else sorting_keys(load_migrations())).get(name)
        if key is None:
            raise MigrationError(f"ALTER TABLE {name}: no migration creates it")
        return [f"ALTER TABLE {db}.{local} ON CLUSTER {cluster}{change}",
                f"DROP TABLE IF EXISTS {db}.{name} ON CLUSTER {cluster}",
                _distributed(name, db, cluster, key)]
    raise MigrationError(f"no cluster form for: {statement.strip()[:80]} (migrations may CREATE TABLE or ALTER TABLE)")


def _replicated(engine: str, args: str, db: str, table: str) -> str:
    # {shard} and {replica} are each server's macros (config.xml); the path is the table's in ZooKeeper
    params = [f"'/clickhouse/tables/{{shard}}/{db}/{table}'", "'{replica}'"] + ([args.strip()] if args.strip() else [])
    return f"Replicated{engine}({', '.join(params)})"


def add_migrate(p):
    p.epilog = "Idempotent: applied versions are recorded in schema_migrations. `intelbus up` runs it too."

    def run(args):
        from ops.secrets import clickhouse_url_as
        from ops.settings import load_settings
        from sinks.engine import DriverExecutor

        settings = load_settings()
        executor = DriverExecutor(clickhouse_url_as(settings, "default"))  # the admin: DDL
        try:
            done = apply_migrations(executor, log=print, cluster=settings.clickhouse_cluster)
        except MigrationError as exc:
            print(f"intelbus migrate: {exc}")
            return 1
        print(f"migrate: {len(done)} applied, database {executor.database} is current")
        return 0

    return run
