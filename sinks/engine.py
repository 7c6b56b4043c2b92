"""One small interface over the two ClickHouse engines we run: a server (clickhouse-driver)
and chDB (embedded ClickHouse, used by the test suite to prove the SQL on a current engine).
"""
from __future__ import annotations

import json
from datetime import date, datetime
from typing import Protocol
from urllib.parse import urlparse


class Executor(Protocol):
    database: str

    def execute(self, sql: str) -> None: ...
    def query(self, sql: str, *, readonly: bool = False) -> tuple[list[str], list[tuple]]: ...
    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None: ...


def database_of(url: str) -> str:
    return urlparse(url).path.lstrip("/") or "default"


class DriverExecutor:
    """A ClickHouse server through clickhouse-driver's native protocol."""

    def __init__(self, url: str, *, database: str | None = None):
        from clickhouse_driver import Client

        self.database = database or database_of(url)
        self._parsed = urlparse(url)
        # connect to the database itself: a service user may use no other (on 18.16 the server
        # just drops the connection of a user that names a database outside its allow_databases)
        self.client = Client.from_url(self._parsed._replace(path=f"/{self.database}").geturl())
        self._connected = False

    def _execute(self, *args, **kwargs):
        from clickhouse_driver.errors import ErrorCodes, ServerException

        if self._connected:
            return self.client.execute(*args, **kwargs)
        try:
            result = self.client.execute(*args, **kwargs)
        except ServerException as exc:
            if exc.code != ErrorCodes.UNKNOWN_DATABASE or self.client.connection.connected:
                raise
            # the database does not exist yet (migrations create it): the admin connects to `default`
            self.client.disconnect()
            self.client = type(self.client).from_url(self._parsed._replace(path="/default").geturl())
            result = self.client.execute(*args, **kwargs)
        self._connected = True
        return result

    def execute(self, sql: str) -> None:
        self._execute(sql)

    def query(self, sql: str, *, readonly: bool = False) -> tuple[list[str], list[tuple]]:
        # readonly=1, not 2: a user whose profile is readonly=1 (intelbus_reader) may be sent 1 but not 2
        # (current servers refuse "Cannot modify 'readonly' setting in readonly mode"; 18.16 ignores it)
        settings = {"readonly": 1} if readonly else {}
        rows, columns = self._execute(sql, with_column_types=True, settings=settings)
        return [c[0] for c in columns], rows

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        self._execute(f"INSERT INTO {self.database}.{table} ({', '.join(columns)}) VALUES", rows)

    def close(self) -> None:
        self.client.disconnect()


class ChdbExecutor:
    """chDB: ClickHouse 26.x in-process, in a directory (or a temporary one)."""

    def __init__(self, path: str | None = None, *, database: str = "intelbus"):
        from chdb import session

        self.database = database
        self.session = session.Session(path) if path else session.Session()

    def execute(self, sql: str) -> None:
        self.session.query(sql)

    def query(self, sql: str, *, readonly: bool = False) -> tuple[list[str], list[tuple]]:
        result = self.session.query(sql, "JSONCompact")
        text = result.bytes().decode() if hasattr(result, "bytes") else str(result)
        if not text.strip():
            return [], []
        doc = json.loads(text)
        columns = [c["name"] for c in doc["meta"]]
        return columns, [tuple(row) for row in doc["data"]]

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        if not rows:
            return
        values = ", ".join("(" + ", ".join(sql_literal(v) for v in row) + ")" for row in rows)
        self.session.query(f"INSERT INTO {self.database}.{table} ({', '.join(columns)}) VALUES {values}")

    def close(self) -> None:
        self.session.close()


def sql_literal(value) -> str:
    """A Python value as a ClickHouse SQL literal (for rendering parameters and chDB inserts)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f"toDateTime('{value.strftime('%Y-%m-%d %H:%M:%S')}', 'UTC')"
    if isinstance(value, date):
        return f"toDate('{value.isoformat()}')"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"
