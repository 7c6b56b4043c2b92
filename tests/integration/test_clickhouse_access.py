"""ClickHouse is no longer an open door: what a person on this machine can try, and what the server says.

Every attempt is refused by ClickHouse itself (not by intelbus code), and each test makes
the same request with the right credentials as a control, so a refusal cannot come from a
broken request. Messages are 18.16's (the local server); current servers word some of
them differently ("Authentication failed: password is incorrect, or there is no user with
such name"), hence the alternatives.
"""
from __future__ import annotations

import base64
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

NO_PASSWORD = r"Password required for user default|Authentication failed"
WRONG_PASSWORD = r"Wrong password for user default|Authentication failed"


def http(settings, sql: str, *, user: str | None = None, password: str | None = None, params: dict | None = None):
    """POST sql to the HTTP port as a person would (curl -d, urllib); (status, body)."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    url = settings.clickhouse_http.rstrip("/") + "/" + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(url, data=sql.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def password(settings, user):
    from ops.secrets import clickhouse_password

    return clickhouse_password(settings, user)


def native(settings, user: str | None, secret: str | None, *, database: str = "intelbus"):
    """A clickhouse-driver client on the native port (user None: the driver's default, `default` with no password)."""
    from urllib.parse import urlsplit

    from clickhouse_driver import Client

    where = urlsplit(settings.clickhouse_url)
    kwargs = {} if user is None else {"user": user, "password": secret or ""}
    return Client(where.hostname, port=where.port or 9000, database=database, send_receive_timeout=15, **kwargs)


def refused(client, sql, *args, **kwargs) -> str:
    """The server's message for a statement it refuses (fails the test if it runs)."""
    from clickhouse_driver.errors import ServerException

    with pytest.raises(ServerException) as err:
        client.execute(sql, *args, **kwargs)
    return str(err.value)


def tables(settings, name_like: str) -> list[str]:
    client = native(settings, "default", password(settings, "default"))
    try:
        return [r[0] for r in client.execute(f"SELECT name FROM system.tables WHERE database = 'intelbus' AND name LIKE '{name_like}'")]
    finally:
        client.disconnect()


@pytest.fixture
def table_name():
    """A fresh name in intelbus; dropped (as the admin) after the test, whatever created it."""
    name = f"x_{uuid.uuid4().hex[:10]}"
    yield name
    from ops.secrets import clickhouse_url_as
    from ops.settings import load_settings

    from clickhouse_driver import Client

    Client.from_url(clickhouse_url_as(load_settings(), "default")).execute(f"DROP TABLE IF EXISTS intelbus.{name}")


def is_18(settings) -> bool:
    client = native(settings, "default", password(settings, "default"))
    try:
        return client.execute("SELECT version()")[0][0].startswith("18.")
    finally:
        client.disconnect()


# --- over HTTP (port 8123), as anyone on the machine ------------------------------------------

def test_http_create_table_needs_the_admin_password(stack, settings, table_name):
    create = f"CREATE TABLE intelbus.{table_name} (a UInt8) ENGINE = Memory"

    status, body = http(settings, create)                                    # no credentials: user default
    assert status == 401 and re.search(NO_PASSWORD, body), body
    status, body = http(settings, create, user="default", password="guess")  # a wrong password
    assert status == 401 and re.search(WRONG_PASSWORD, body), body
    assert tables(settings, table_name) == []

    status, body = http(settings, create, user="default", password=password(settings, "default"))   # control
    assert status == 200, body
    assert tables(settings, table_name) == [table_name]


def test_http_select_needs_a_password(stack, settings):
    status, body = http(settings, "SELECT count() FROM intelbus.events")
    assert status == 401 and re.search(NO_PASSWORD, body), body
    status, body = http(settings, "SELECT count() FROM intelbus.events", params={"user": "default", "password": "guess"})
    assert status == 401 and re.search(WRONG_PASSWORD, body), body

    status, body = http(settings, "SELECT count() FROM intelbus.events", user="intelbus_reader",
                        password=password(settings, "intelbus_reader"))       # control
    assert status == 200 and body.strip().isdigit(), body


# --- over the native port (9000) ---------------------------------------------------------------

def test_native_default_needs_its_password(stack, settings):
    from clickhouse_driver.errors import ErrorCodes

    client = native(settings, None, None)                   # what Client('127.0.0.1') does
    assert re.search(NO_PASSWORD, refused(client, "SELECT 1"))
    client = native(settings, "default", "guess")
    message = refused(client, "SELECT 1")
    assert re.search(WRONG_PASSWORD, message)
    assert f"Code: {ErrorCodes.WRONG_PASSWORD}" in message or "Code: 516" in message  # 193 on 18.16, 516 on current

    client = native(settings, "default", password(settings, "default"))              # control
    assert client.execute("SELECT 1") == [(1,)]
    client.disconnect()


def test_a_user_that_does_not_exist_is_refused(stack, settings):
    message = refused(native(settings, "analyst", "anything"), "SELECT 1")
    assert re.search(r"Unknown user analyst|Authentication failed", message)


def test_every_service_user_logs_in_with_its_own_password_only(stack, settings):
    users = ("default", "intelbus_sink", "intelbus_gateway", "intelbus_reader")
    for user in users:
        assert native(settings, user, password(settings, user)).execute("SELECT 1") == [(1,)]
        other = next(u for u in users if u != user)
        assert re.search(rf"Wrong password for user {user}|Authentication failed",
                         refused(native(settings, user, password(settings, other)), "SELECT 1"))


# --- intelbus_reader: the gateway's user for people's queries -----------------------------------

def test_reader_selects_but_cannot_write_nor_leave_readonly(stack, settings, table_name):
    reader = native(settings, "intelbus_reader", password(settings, "intelbus_reader"))
    assert reader.execute("SELECT count() FROM intelbus.events")[0][0] >= 0                      # control
    assert reader.execute("SELECT value FROM system.settings WHERE name = 'readonly'") == [("1",)]

    assert "Cannot insert into table in readonly mode" in refused(
        reader, "INSERT INTO intelbus.audit_log (query_text) VALUES", [("forged",)])
    assert "readonly mode" in refused(reader, f"CREATE TABLE intelbus.{table_name} (a UInt8) ENGINE = Memory")
    assert "readonly mode" in refused(reader, "ALTER TABLE intelbus.audit_log DELETE WHERE 1")
    assert "readonly mode" in refused(reader, "SET readonly = 0")
    assert "readonly mode" in refused(reader, "SELECT 1 SETTINGS readonly = 0")
    assert "readonly mode" in refused(reader, "SELECT 1 SETTINGS max_memory_usage = 0")
    # settings a native client sends with the query: 18.16 ignores them for a readonly=1 user
    # (current servers refuse them); either way the insert is refused
    assert "readonly mode" in refused(reader, "INSERT INTO intelbus.audit_log (query_text) VALUES", [("forged",)],
                                      settings={"readonly": 0})
    assert tables(settings, table_name) == []

    secret = password(settings, "intelbus_reader")
    status, body = http(settings, "INSERT INTO intelbus.audit_log (query_text) VALUES ('forged')",
                        user="intelbus_reader", password=secret, params={"readonly": "0"})
    assert status != 200 and "readonly" in body, body
    status, body = http(settings, "SET readonly = 0", user="intelbus_reader", password=secret)
    assert status != 200 and "Cannot execute SET query in readonly mode" in body, body
    status, body = http(settings, "SELECT count() FROM intelbus.audit_log", user="intelbus_reader", password=secret)
    assert status == 200, body                                                                    # control
    reader.disconnect()


# --- allow_databases: the service users see database intelbus (and, on 18.16, system) ------------

@pytest.mark.parametrize("user", ["intelbus_sink", "intelbus_gateway", "intelbus_reader"])
def test_service_users_cannot_use_another_database(stack, settings, user):
    admin = native(settings, "default", password(settings, "default"))
    admin.execute("CREATE TABLE IF NOT EXISTS default.operators_only (a UInt8) ENGINE = Memory")
    client = native(settings, user, password(settings, user))
    assert f"Access denied to database default for user {user}" in refused(client, "SELECT count() FROM default.operators_only")
    assert re.search("Access denied to database|readonly mode", refused(client, f"CREATE DATABASE IF NOT EXISTS {user}_own"))
    assert client.execute("SELECT count() FROM intelbus.schema_migrations")[0][0] >= 1             # control
    assert admin.execute("SELECT count() FROM default.operators_only") == [(0,)]                   # control
    admin.execute("DROP TABLE default.operators_only")


def test_system_database_on_18_16_is_open_to_every_user(stack, settings):
    """18.16's allow_databases does not cover `system` (every user reads it); system.tables lists only
    the databases a user may use, but system.processes shows every user's running queries."""
    if not is_18(settings):
        pytest.skip("measured on ClickHouse 18.16 (current servers check SHOW/SELECT grants on system tables)")
    import threading
    import time

    sink = native(settings, "intelbus_sink", password(settings, "intelbus_sink"))
    assert sink.execute("SELECT count() FROM system.one") == [(1,)]
    assert {r[0] for r in sink.execute("SELECT DISTINCT database FROM system.tables")} <= {"system", "intelbus"}
    marker = f"marker_{uuid.uuid4().hex[:8]}"
    admin = native(settings, "default", password(settings, "default"))
    slow = threading.Thread(target=lambda: admin.execute(f"SELECT sleep(2), '{marker}'"))
    slow.start()
    time.sleep(0.7)
    seen = sink.execute(f"SELECT user FROM system.processes WHERE query LIKE '%{marker}%' AND user != 'intelbus_sink'")
    slow.join()
    assert seen == [("default",)]


def test_what_18_16_does_not_enforce_ddl_inside_intelbus(stack, settings, table_name):
    """No GRANT on 18.16: a service user with readonly=0 may create and drop tables in its database.
    Production uses SQL access control (ops/clickhouse/grants.sql) to limit the sink to INSERT."""
    if not is_18(settings):
        pytest.skip("measured on ClickHouse 18.16")
    sink = native(settings, "intelbus_sink", password(settings, "intelbus_sink"))
    sink.execute(f"CREATE TABLE intelbus.{table_name} (a UInt8) ENGINE = Memory")
    assert tables(settings, table_name) == [table_name]
    sink.execute(f"DROP TABLE intelbus.{table_name}")
    assert tables(settings, table_name) == []
