"""`intelbus up | down | status` on a second, isolated stack (own ports, own .stack dir).

Runs as a subprocess, as a user would, so the exit codes and output are the real ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from ops.settings import load_settings

PORTS = {"kafka": 29092, "registry": 28081, "clickhouse": 29000, "clickhouse_http": 28123}


@pytest.fixture(scope="module")
def isolated_env(tmp_path_factory):
    stack_dir = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "INTELBUS_STACK_DIR": str(stack_dir),
        "INTELBUS_KAFKA": f"127.0.0.1:{PORTS['kafka']}",
        "INTELBUS_REGISTRY_URL": f"http://127.0.0.1:{PORTS['registry']}/apis/ccompat/v7",
        "INTELBUS_CLICKHOUSE_URL": f"clickhouse://default@127.0.0.1:{PORTS['clickhouse']}/intelbus",
        "INTELBUS_CLICKHOUSE_HTTP": f"http://127.0.0.1:{PORTS['clickhouse_http']}",
        # its jobs and sink would answer here: not where the main stack's do
        "INTELBUS_METRICS_PORT_BASE": "29400",
    }
    yield env
    subprocess.run([sys.executable, "-m", "ops.cli", "down", "--purge"], env=env, capture_output=True, timeout=120)


def admin_client(env):
    """ClickHouse of the isolated stack as its admin, with the password its `up` generated."""
    from clickhouse_driver import Client

    from ops.secrets import clickhouse_password
    from ops.settings import load_settings

    return Client("127.0.0.1", port=PORTS["clickhouse"], user="default",
                  password=clickhouse_password(load_settings(environ=env), "default", environ=env))


def intelbus(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_up_twice_down_and_data_survives(isolated_env):
    env = isolated_env
    first = intelbus(env, "up", "--infra-only")
    assert first.returncode == 0, first.stderr + first.stdout
    second = intelbus(env, "up", "--infra-only")
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stdout

    status = intelbus(env, "status", "--json")
    doc = json.loads(status.stdout)
    by_name = {c["name"]: c for c in doc["components"]}
    assert all(by_name[n]["healthy"] for n in ("kafka", "registry", "clickhouse"))
    # --infra-only started no jobs or sink: status says so and exits 1 (0 only when all is healthy)
    assert not by_name["jobs-0"]["healthy"] and not by_name["sink"]["healthy"]
    assert status.returncode == 1 and doc["healthy"] is False
    assert by_name["kafka"]["address"] == f"127.0.0.1:{PORTS['kafka']}"

    # put one topic, one schema and one table row in, then restart the stack
    from confluent_kafka.admin import AdminClient, NewTopic
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    topic = f"test.keep.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(load_settings(environ=env).kafka_config("intelbus-admin"))
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(15)
    registry = SchemaRegistryClient({"url": env["INTELBUS_REGISTRY_URL"]})
    schema = json.dumps({"type": "record", "name": "Keep", "fields": [{"name": "a", "type": "string"}]})
    schema_id = registry.register_schema("keep-value", Schema(schema, "AVRO"))
    ch = admin_client(env)
    ch.execute("CREATE TABLE IF NOT EXISTS default.keep (a String) ENGINE = MergeTree ORDER BY a")
    ch.execute("INSERT INTO default.keep (a) VALUES", [("kept",)])
    ch.disconnect()

    down = intelbus(env, "down")
    assert down.returncode == 0, down.stderr
    assert intelbus(env, "status").returncode != 0
    assert json.loads(intelbus(env, "status", "--json").stdout)["healthy"] is False

    again = intelbus(env, "up", "--infra-only")
    assert again.returncode == 0, again.stderr + again.stdout
    assert topic in AdminClient(load_settings(environ=env).kafka_config("intelbus-admin")).list_topics(timeout=15).topics
    fetched = SchemaRegistryClient({"url": env["INTELBUS_REGISTRY_URL"]}).get_schema(schema_id)
    assert json.loads(fetched.schema_str)["name"] == "Keep"
    ch = admin_client(env)
    assert ch.execute("SELECT a FROM default.keep") == [("kept",)]


def test_port_in_use_is_one_line_error(isolated_env, tmp_path):
    import socket

    env = {**isolated_env, "INTELBUS_STACK_DIR": str(tmp_path / "other"), "INTELBUS_KAFKA": "127.0.0.1:29192"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 29192))
        busy.listen()
        result = intelbus(env, "up", "--infra-only", timeout=120)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "port 29192" in lines[0] and "in use" in lines[0]
    assert "Traceback" not in result.stderr
