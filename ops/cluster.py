"""The cluster profile's shape: three KRaft brokers, ZooKeeper and two ClickHouse replicas on one machine.

`intelbus up --profile cluster` (INTELBUS_STACK_PROFILE=cluster) derives every node's address from
the ordinary settings, so a client given the same settings reaches all of them:
  Kafka       INTELBUS_KAFKA lists the three brokers; one address p means p, p+1, p+2.
              Each broker's controller listens on its port + 100.
  ClickHouse  replica 1 at INTELBUS_CLICKHOUSE_URL / _HTTP, replica 2 on the next ports (tcp+1, http+1),
              named in the URL's alt_hosts, so clickhouse-driver fails over to it; replication
              between them on http port + 2 and + 3.
  ZooKeeper   INTELBUS_ZOOKEEPER (coordinates the replicas and the migrations' ON CLUSTER DDL).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

PROFILES = ("single", "cluster")
BROKERS = 3
CONTROLLER_OFFSET = 100
CLICKHOUSE_REPLICAS = 2
CLUSTER_NAME = "intelbus"
PROFILE_FILE = "profile"  # <stack dir>/profile: what `up --profile` chose, read by later commands


@dataclass(frozen=True)
class BrokerNode:
    node_id: int
    host: str
    port: int

    @property
    def controller_port(self) -> int:
        return self.port + CONTROLLER_OFFSET


@dataclass(frozen=True)
class ClickHouseReplica:
    index: int  # 1-based, the `replica` macro is r<index>
    host: str
    tcp_port: int
    http_port: int
    interserver_port: int


def _host_port(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.strip().rpartition(":")
    return (host or "127.0.0.1", int(port or default_port))


def cluster_defaults(settings) -> dict:
    """The settings the cluster profile changes: every broker, the second replica, the cluster name,
    production topics. Idempotent (the supervisor and the services get the expanded values back)."""
    changes = {}
    brokers = [a for a in settings.kafka.split(",") if a.strip()]
    if len(brokers) == 1:
        host, port = _host_port(brokers[0], 9092)
        changes["kafka"] = ",".join(f"{host}:{port + i}" for i in range(BROKERS))
    parts = urlsplit(settings.clickhouse_url)
    query = parse_qs(parts.query)
    if "alt_hosts" not in query:
        host, port = parts.hostname or "127.0.0.1", parts.port or 9000
        extra = urlencode({"alt_hosts": f"{host}:{port + 1}"})
        changes["clickhouse_url"] = urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))
    if not settings.clickhouse_cluster:
        changes["clickhouse_cluster"] = CLUSTER_NAME
    if settings.profile == "local":
        changes["profile"] = "production"  # ops/topics.yaml: replication 3, min.insync.replicas 2
    return changes


def brokers(settings) -> list[BrokerNode]:
    """The cluster's brokers, node ids 1..3, from settings.kafka."""
    nodes = []
    for i, addr in enumerate(a for a in settings.kafka.split(",") if a.strip()):
        host, port = _host_port(addr, 9092)
        nodes.append(BrokerNode(i + 1, host, port))
    if len(nodes) != BROKERS:
        raise ValueError(f"the cluster profile runs {BROKERS} brokers; INTELBUS_KAFKA names {len(nodes)}: {settings.kafka}")
    return nodes


def clickhouse_replicas(settings) -> list[ClickHouseReplica]:
    """The two ClickHouse servers: the URL's host and its first alt_host."""
    parts = urlsplit(settings.clickhouse_url)
    http = urlsplit(settings.clickhouse_http).port or 8123
    first = (parts.hostname or "127.0.0.1", parts.port or 9000)
    alt = parse_qs(parts.query).get("alt_hosts", [""])[0].split(",")[0]
    second = _host_port(alt, 9000) if alt else (first[0], first[1] + 1)
    return [ClickHouseReplica(i + 1, host, port, http + i, http + 2 + i) for i, (host, port) in enumerate((first, second))]


def remembered_profile(stack_dir: Path) -> str | None:
    try:
        value = (Path(stack_dir) / PROFILE_FILE).read_text().strip()
    except OSError:
        return None
    return value if value in PROFILES else None


def remember_profile(stack_dir: Path, profile: str) -> None:
    Path(stack_dir).mkdir(parents=True, exist_ok=True)
    (Path(stack_dir) / PROFILE_FILE).write_text(profile + "\n")
