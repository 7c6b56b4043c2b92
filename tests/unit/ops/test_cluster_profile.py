"""The cluster profile without servers: addresses, rendered configurations, the cluster DDL, and `up`
starting a quorum together. The single profile renders as it did before the cluster profile."""
from __future__ import annotations

import dataclasses
import re
import time

import pytest

from ops.cluster import brokers, clickhouse_replicas, remember_profile
from ops.components import infrastructure
from ops.services import services
from ops.settings import load_settings
from sinks.migrate import (LOCAL_SUFFIX, apply_migrations, bootstrap_statements, load_migrations, render_statement,
                           sorting_keys)

CLUSTER_ENV = {
    "INTELBUS_STACK_PROFILE": "cluster",
    "INTELBUS_KAFKA": "127.0.0.1:59092",
    "INTELBUS_CLICKHOUSE_URL": "clickhouse://127.0.0.1:59000/intelbus",
    "INTELBUS_CLICKHOUSE_HTTP": "http://127.0.0.1:59123",
    "INTELBUS_ZOOKEEPER": "127.0.0.1:52181",
}


@pytest.fixture
def single(tmp_path):
    return load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path)})


@pytest.fixture
def clustered(tmp_path):
    return load_settings(environ={**CLUSTER_ENV, "INTELBUS_STACK_DIR": str(tmp_path)})


def test_the_single_profile_keeps_its_settings(single):
    assert single.stack_profile == "single"
    assert single.kafka == "127.0.0.1:9092"
    assert single.clickhouse_url == "clickhouse://127.0.0.1:9000/intelbus"
    assert single.clickhouse_cluster == "" and single.profile == "local"
    assert [c.name for c in infrastructure(single)] == ["kafka", "registry", "clickhouse"]


def test_the_cluster_profile_names_every_node_to_every_client(clustered):
    assert clustered.kafka == "127.0.0.1:59092,127.0.0.1:59093,127.0.0.1:59094"
    assert "alt_hosts=127.0.0.1%3A59001" in clustered.clickhouse_url
    assert clustered.clickhouse_cluster == "intelbus"
    assert clustered.profile == "production"  # ops/topics.yaml: replication 3, min.insync.replicas 2
    assert [(b.node_id, b.port, b.controller_port) for b in brokers(clustered)] == [
        (1, 59092, 59192), (2, 59093, 59193), (3, 59094, 59194)]
    assert [(r.tcp_port, r.http_port, r.interserver_port) for r in clickhouse_replicas(clustered)] == [
        (59000, 59123, 59125), (59001, 59124, 59126)]


def test_cluster_settings_survive_the_round_trip_to_a_child_process(clustered):
    """The supervisor and the services get the expanded values back as INTELBUS_*: the same settings."""
    from ops.supervise import settings_environ

    assert load_settings(environ=settings_environ(clustered)) == clustered


def test_every_cluster_component_has_its_own_ports_and_directories(clustered):
    comps = infrastructure(clustered)
    assert [c.name for c in comps] == ["kafka-1", "kafka-2", "kafka-3", "registry", "zookeeper",
                                       "clickhouse-1", "clickhouse-2"]
    ports = [p for c in comps + services(clustered) for p in c.ports]
    assert len(ports) == len(set(ports)), sorted(ports)
    homes = [c.home for c in comps if hasattr(c, "home")]
    assert len(homes) == len(set(homes))
    markers = [c.marker for c in comps if c.name != "registry"]  # (the registry's is known once fetched)
    assert len(markers) == len(set(markers))  # a pid file names one process only
    assert {c.quorum for c in comps[:3]} == {"kafka"} and all(c.quorum is None for c in comps[3:])


def test_the_single_broker_renders_as_before(single):
    kafka = infrastructure(single)[0]
    text = kafka.server_properties("pw")
    assert not re.search(r"@[A-Z_]+@", text)  # every placeholder filled
    for line in ("node.id=1", "controller.quorum.voters=1@127.0.0.1:9093", f"log.dirs={single.stack_dir}/kafka/data",
                 "default.replication.factor=1", "min.insync.replicas=1", "offsets.topic.replication.factor=1",
                 "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
                 "listeners=SASL_PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"):
        assert line in text.splitlines(), line


def test_three_brokers_share_one_quorum_and_replicate_three_times(clustered):
    texts = [k.server_properties("pw") for k in infrastructure(clustered)[:3]]
    voters = "controller.quorum.voters=1@127.0.0.1:59192,2@127.0.0.1:59193,3@127.0.0.1:59194"
    for n, text in enumerate(texts, start=1):
        lines = text.splitlines()
        assert f"node.id={n}" in lines and voters in lines
        assert f"log.dirs={clustered.stack_dir}/kafka-{n}/data" in lines
        assert f"listeners=SASL_PLAINTEXT://127.0.0.1:{59091 + n},CONTROLLER://127.0.0.1:{59191 + n}" in lines
        for line in ("default.replication.factor=3", "min.insync.replicas=2", "offsets.topic.replication.factor=3",
                     "transaction.state.log.replication.factor=3", "transaction.state.log.min.isr=2"):
            assert line in lines, line


def test_the_single_clickhouse_renders_as_before(single):
    ch = infrastructure(single)[2]
    text = ch.config_xml(ch.cluster_config({"default": "pw"}))
    assert not re.search(r"@[A-Z_]+@", text)
    assert f"<path>{single.stack_dir}/clickhouse/data/</path>" in text
    assert f"<log>{single.stack_dir}/logs/clickhouse.log</log>" in text
    assert "<remote_servers>" not in text and "<zookeeper>" not in text
    assert text.rstrip().endswith("</merge_tree>\n</yandex>")


def test_two_replicas_of_one_shard_behind_zookeeper(clustered):
    import xml.etree.ElementTree as ET

    docs = []
    for ch in infrastructure(clustered)[5:]:
        root = ET.fromstring(ch.config_xml(ch.cluster_config({"default": "p<&>w"})))
        docs.append(root)
        assert root.findtext("path") == f"{clustered.stack_dir}/{ch.name}/data/"
        assert root.findtext("zookeeper/node/port") == "52181"
        assert root.findtext("macros/shard") == "1"
        shard = root.find("remote_servers/intelbus/shard")
        assert shard.findtext("internal_replication") == "true"
        assert [r.findtext("port") for r in shard.findall("replica")] == ["59000", "59001"]
        assert {r.findtext("password") for r in shard.findall("replica")} == {"p<&>w"}
        assert root.findtext("distributed_ddl/path")
    assert [d.findtext("macros/replica") for d in docs] == ["r1", "r2"]
    assert [d.findtext("interserver_http_port") for d in docs] == ["59125", "59126"]


def test_the_cluster_ddl_renders_replicated_tables_behind_distributed_ones():
    migrations = load_migrations()
    keys = sorting_keys(migrations)
    assert keys["events"] == "region, occurred_at, event_id" and keys["audit_log"] == "at, user"
    rendered = [r for m in migrations for s in m.statements() for r in render_statement(s, "intelbus", "intelbus")]
    assert all(" ON CLUSTER intelbus" in r for r in rendered)
    creates = [m.group(1) for r in rendered if (m := re.match(r"CREATE TABLE IF NOT EXISTS intelbus\.(\w+) ", r))]
    tables = sorted(keys)
    assert sorted({c for c in creates if not c.endswith(LOCAL_SUFFIX)}) == tables
    for table in tables:
        local = next(r for r in rendered if r.startswith(f"CREATE TABLE IF NOT EXISTS intelbus.{table}{LOCAL_SUFFIX} "))
        assert re.search(rf"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/{{shard}}/intelbus/{table}{LOCAL_SUFFIX}', "
                         r"'\{replica\}'", local)
        dist = [r for r in rendered if r.startswith(f"CREATE TABLE IF NOT EXISTS intelbus.{table} ")]
        assert dist and all(r.endswith(f"ENGINE = Distributed(intelbus, intelbus, {table}{LOCAL_SUFFIX}, "
                                       f"cityHash64({keys[table]}))") for r in dist)
    # an ALTER changes the replicated table and makes the Distributed one again over it
    alters = render_statement("ALTER TABLE hits ADD COLUMN x String DEFAULT ''", "intelbus", "intelbus")
    assert alters[0] == "ALTER TABLE intelbus.hits_local ON CLUSTER intelbus ADD COLUMN x String DEFAULT ''"
    assert alters[1] == "DROP TABLE IF EXISTS intelbus.hits ON CLUSTER intelbus"
    assert alters[2].startswith("CREATE TABLE IF NOT EXISTS intelbus.hits ON CLUSTER intelbus AS intelbus.hits_local")
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/intelbus/schema_migrations', '{replica}')" in \
        bootstrap_statements("intelbus", "intelbus")[1]


def test_the_cluster_ddl_parses_on_chdb():
    """chDB has no ZooKeeper or cluster to run it on: it parses every statement (EXPLAIN AST)."""
    from chdb import session

    s = session.Session()
    try:
        statements = bootstrap_statements("intelbus", "intelbus") + [
            r for m in load_migrations() for st in m.statements() for r in render_statement(st, "intelbus", "intelbus")]
        for statement in statements:
            assert "Query" in str(s.query("EXPLAIN AST " + statement)), statement
    finally:
        s.close()


def test_the_single_ddl_is_the_migration_itself_and_runs_on_chdb(tmp_path):
    from sinks.engine import ChdbExecutor

    statement = load_migrations()[0].statements()[0]
    assert render_statement(statement, "intelbus") == [
        statement.replace("CREATE TABLE IF NOT EXISTS events", "CREATE TABLE IF NOT EXISTS intelbus.events", 1)]
    ex = ChdbExecutor(str(tmp_path / "chdb"))
    try:
        assert len(apply_migrations(ex)) == len(load_migrations())
        _, rows = ex.query("SELECT engine FROM system.tables WHERE database = 'intelbus' AND name = 'events'")
        assert rows == [("ReplacingMergeTree",)]
    finally:
        ex.close()


def test_status_and_down_follow_the_profile_up_chose(tmp_path):
    assert load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path)}).stack_profile == "single"
    remember_profile(tmp_path, "cluster")
    assert load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path)}).stack_profile == "cluster"
    assert load_settings(stack_dir=str(tmp_path)).stack_profile == "cluster"  # the supervisor's --stack-dir
    # the environment (or --profile) wins over what was remembered
    assert load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path),
                                  "INTELBUS_STACK_PROFILE": "single"}).stack_profile == "single"


class _Record:
    def __init__(self, name):
        self.name, self.pid = name, 1

    def alive(self):
        return True


def test_up_launches_a_quorum_whole_before_waiting_for_any(tmp_path):
    """A broker of three is healthy only once a majority runs: started one by one, the first never is."""
    from ops.components import Component
    from ops.stack import Stack

    launched = []

    @dataclasses.dataclass
    class Voter(Component):
        quorum = "q"

        @property
        def host_port(self):
            return ("127.0.0.1", 1)

        def healthy(self):
            return sum(n.startswith("voter") for n in launched) >= 2

    class FakeStack(Stack):
        def launch(self, c, **kwargs):
            launched.append(c.name)
            return _Record(c.name), True

    settings = load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path)})
    comps = [Voter(f"voter-{i}", settings, start_timeout=3.0) for i in range(3)]
    stack = FakeStack(settings, comps, out=lambda m: None)
    t0 = time.monotonic()
    stack.up(supervise=False)
    assert launched == ["voter-0", "voter-1", "voter-2"]
    assert time.monotonic() - t0 < 2.0
