"""The local stack's infrastructure components: how each is prepared, started and checked."""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ops import cluster, install
from ops.cluster import BrokerNode, ClickHouseReplica
from ops.processes import port_open
from ops.settings import REPO_ROOT, Settings

OPS = REPO_ROOT / "ops"

# What makes a killed component come back sooner (issue 18; bench/bench_recovery.py measures each):
#   restart  the supervisor restarts a crashed component at once (then 1 s, 2 s ...) and looks twice a second
#   cds      the JVMs map a class-data-sharing archive of their own classes, written at their first clean stop
#   kafka    a broker's old registration expires sooner (broker.session.timeout.ms), logs recover in 2 threads
#   c1       the brokers compile with C1 only: 3-4 s sooner back, but 1.6-2 times the broker's CPU for the
#            same requests once running (docs/deploy.md, "Recovery after SIGKILL"), so not a default
# INTELBUS_STARTUP_TUNING turns them on and off for a before/after measurement: restart,cds,kafka (the
# default), "all", "none", or a comma-separated list of the ones wanted.
STARTUP_TUNINGS = ("restart", "cds", "kafka", "c1")


def startup_tunings(source=None) -> frozenset[str]:
    """The tunings wanted, from a Settings' startup_tuning; given an environment mapping (or None:
    this process's), from the Settings it makes."""
    if not isinstance(source, Settings):
        from ops.settings import load_settings

        source = load_settings(environ=source)
    return parse_startup_tunings(source.startup_tuning)


def parse_startup_tunings(raw: str) -> frozenset[str]:
    raw = raw.strip().lower()
    if raw in ("", "all"):
        return frozenset(STARTUP_TUNINGS)
    if raw == "none":
        return frozenset()
    wanted = {t.strip() for t in raw.split(",") if t.strip()}
    unknown = wanted - set(STARTUP_TUNINGS)
    if unknown:
        raise ValueError(f"INTELBUS_STARTUP_TUNING: unknown {', '.join(sorted(unknown))} "
                         f"(known: all, none, {', '.join(STARTUP_TUNINGS)})")
    return frozenset(wanted)


_JAVA: dict[tuple[int, str], install.Java] = {}


def find_java(minimum: int, what: str) -> install.Java:
    """install.find_java, remembered for this process: each lookup runs `java -version` (seconds
    on a loaded machine), and the supervisor would pay that before every restart."""
    key = (minimum, what)
    if key not in _JAVA:
        _JAVA[key] = install.find_java(minimum, what)
    return _JAVA[key]


@dataclass
class Component:
    """One server of the local stack. Subclasses say how to prepare, launch and probe it."""

    name: str
    settings: Settings
    start_timeout: float = 90.0
    is_service = False  # intelbus's own process (started after the servers are ready)
    quorum = None  # components of one quorum are started together, then waited for
    nice = 0  # CPU priority of its process (ops/processes.py spawn); intelbus's services may set one

    @property
    def stack(self) -> Path:
        return self.settings.stack_path

    @property
    def log(self) -> Path:
        return self.stack / "logs" / f"{self.name}.log"

    @property
    def stdout_log(self) -> Path:
        """Where the process's stdout and stderr go (its own log file may be elsewhere)."""
        return self.log

    @property
    def host_port(self) -> tuple[str, int]:
        raise NotImplementedError

    @property
    def address(self) -> str:
        host, port = self.host_port
        return f"{host}:{port}"

    @property
    def ports(self) -> list[int]:
        return [self.host_port[1]]

    def prepare(self) -> None:
        """Fetch, render configuration, format storage: idempotent."""

    def command(self) -> tuple[list[str], dict]:
        """argv and extra environment of the server process."""
        raise NotImplementedError

    @property
    def marker(self) -> str:
        """A command-line substring that identifies our process."""
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def is_local(self) -> bool:
        return self.host_port[0] in ("127.0.0.1", "localhost", "::1")


class JavaServer(Component):
    """A component that runs on a JVM: class-data sharing for a quicker start (the `cds` tuning).

    A JVM spends most of its start loading and verifying classes (thousands for Kafka, Quarkus).
    The classes a server loaded are archived when it exits cleanly (`intelbus down`, `down NAME`:
    SIGTERM), into <stack>/cds/ (-XX:ArchiveClassesAtExit; JDK 19 and later:
    -XX:+AutoCreateSharedArchive, which also replaces an archive that no longer fits), and every
    later start maps them (-XX:SharedArchiveFile), a SIGKILLed one's restart included. The archive
    is per JDK and class path (named by a hash of both): a new Kafka or JDK makes a new one. A JVM
    that cannot use an archive starts without it (-Xshare:auto).

    Not `jcmd <pid> VM.cds dynamic_dump` after the first start, which would give an archive
    without a clean stop: the server goes on running after that dump, and the registry (JDK 25)
    died of it with a SIGSEGV in LambdaProxyClassDictionary while it served its next requests."""

    java: install.Java | None = None
    classpath: str = ""

    def cds_archive(self) -> Path:
        import hashlib

        h = hashlib.sha256(f"{self.java.path}|{self.java.major}|{self.classpath}".encode())
        for entry in sorted(_classpath_files(self.classpath)):
            st = entry.stat()
            h.update(f"|{entry.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return self.stack / "cds" / f"{self.name}-{h.hexdigest()[:12]}.jsa"

    def cds_flags(self) -> list[str]:
        if "cds" not in startup_tunings(self.settings):
            return []
        archive = self.cds_archive()
        archive.parent.mkdir(parents=True, exist_ok=True)
        if self.java.major >= 19:
            return [f"-XX:SharedArchiveFile={archive}", "-XX:+AutoCreateSharedArchive", "-Xlog:cds=off",
                    "-Xlog:cds+dynamic=off"]
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto"]
        # the dump lists every class it leaves out as a warning: thousands of lines in the log
        return [f"-XX:ArchiveClassesAtExit={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]


def _classpath_files(classpath: str) -> list[Path]:
    files = []
    for entry in classpath.split(os.pathsep):
        if entry.endswith("*"):
            folder = Path(entry[:-1])
            files.extend(folder.glob("*.jar") if folder.is_dir() else [])
        elif entry and Path(entry).exists():
            files.append(Path(entry))
    return files


def tls_enabled(settings: Settings) -> bool:
    """`intelbus up --tls` made the stack's CA: the broker also listens with SASL_SSL (ops/tls.py)."""
    return (settings.stack_path / "tls" / "broker.pem").exists()


def _host_port(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host or "127.0.0.1", int(port or default_port))


class Kafka(JavaServer):
    @property
    def host_port(self):
        return _host_port(self.settings.kafka.split(",")[0], 9092)

    @property
    def controller_port(self) -> int:
        return self.host_port[1] + 1

    @property
    def home(self) -> Path:
        return self.stack / "kafka"

    @property
    def marker(self) -> str:
        return str(self.home / "server.properties")

    @property
    def tls_port(self) -> int:
        return self.settings.kafka_tls_port or self.host_port[1] + 2

    @property
    def ports(self):
        return [self.host_port[1], self.controller_port] + ([self.tls_port] if tls_enabled(self.settings) else [])

    def prepare(self) -> None:
        from ops.acls import load_acls
        from ops.kafka_auth import ADMIN, SERVICES
        from ops.secrets import ensure_kafka_passwords

        self.logs_dir.mkdir(parents=True, exist_ok=True)
        libs = install.fetch_kafka(Path(self.settings.dist_dir))
        self.java = find_java(17, "Kafka")
        self.home.mkdir(parents=True, exist_ok=True)
        # every principal's password, so the credentials exist from the broker's first start
        passwords = ensure_kafka_passwords(self.settings, sorted({*SERVICES, *load_acls().principals}))
        tls_listener, tls_settings = "", ""
        if tls_enabled(self.settings):
            from ops.tls import tls_dir

            tls_listener = f",SASL_SSL://127.0.0.1:{self.tls_port}"
            tls_settings = ("# TLS (intelbus up --tls): the broker's key and certificate, signed by the stack's CA\n"
                            "listener.name.sasl_ssl.ssl.keystore.type=PEM\n"
                            f"listener.name.sasl_ssl.ssl.keystore.location={tls_dir(self.settings) / 'broker.pem'}\n")
        text = self.server_properties(passwords[ADMIN], tls_listener, tls_settings)
        # the file holds the admin's password: 0600 from its first byte
        from ops.secrets import _write_private

        _write_private(self.home / "server.properties", text)
        shutil.copy(OPS / "kafka" / "log4j.properties", self.home / "log4j.properties")
        self.classpath = f"{libs}/*"
        formatted = self.home / "data" / "meta.properties"
        authenticated = self.home / "data" / "intelbus-scram"
        if formatted.exists() and not authenticated.exists():
            raise install.Missing(
                f"the local broker's data ({self.home / 'data'}) was formatted before the broker took credentials "
                "(SASL/SCRAM): its principals have none. Start afresh with `intelbus down --purge && intelbus up` "
                "(this deletes the local stack's data)")
        if not formatted.exists():
            cluster_id = self.cluster_id()
            # SCRAM credentials are metadata records: written at format time, so the admin can
            # connect on the first start (later principals: `acls apply`, through the Admin API)
            scram = [arg for user, pw in sorted(passwords.items())
                     for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={pw}]")]
            proc = subprocess.run(
                [self.java.path, "-cp", self.classpath, f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
                 f"-Dkafka.logs.dir={self.logs_dir}", "kafka.tools.StorageTool", "format",
                 # "--cluster-id=": a base64 id may start with "-", which argparse would take for an option
                 f"--cluster-id={cluster_id}", "-c", str(self.home / "server.properties"), *scram],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                out = (proc.stderr or proc.stdout).strip()
                for pw in passwords.values():
                    out = out.replace(pw, "***")
                raise install.Missing(f"formatting Kafka storage failed: {out[-300:]}")
            authenticated.write_text("SCRAM-SHA-512 credentials added at format time\n")

    def server_properties(self, admin_password: str, tls_listener: str = "", tls_settings: str = "") -> str:
        """ops/kafka/server.properties.in rendered for this broker."""
        from ops.kafka_auth import ADMIN

        text = (OPS / "kafka" / "server.properties.in").read_text()
        for key, value in self.layout().items():
            text = text.replace(f"@{key}@", value)
        return (
            text.replace("@STACK@", str(self.stack))
            .replace("@PORT@", str(self.host_port[1]))
            .replace("@CONTROLLER_PORT@", str(self.controller_port))
            .replace("@TLS_LISTENER@", tls_listener)
            .replace("@TLS_SETTINGS@", tls_settings)
            .replace("@ADMIN_PASSWORD@", admin_password)
            .replace("@ADMIN@", ADMIN)
        ) + self.recovery_properties()

    def recovery_properties(self) -> str:
        """The `kafka` start-up tuning, appended to server.properties.

        A broker killed without a clean shutdown stays registered until its session times out
        (broker.session.timeout.ms, 9 s by default): its next incarnation is refused
        (DUPLICATE_BROKER_REGISTRATION, retried up to half the session apart) until then. The
        single broker is its own controller: the controller restarts with it and counts the whole
        session again from its own start, so every restart waited for it (13 s measured at idle,
        most of the 17 s restart). Heartbeats every second, session 4 s: a broker whose heartbeats
        stop for 4 s (a stalled machine, a long GC pause) is fenced, and unfenced at its next
        heartbeat. The unclean shutdown's log recovery runs on both cores."""
        if "kafka" not in startup_tunings(self.settings):
            return ""
        return ("# quicker return after a crash (intelbus: ops/components.py, Kafka.recovery_properties)\n"
                + self.session_properties() + "num.recovery.threads.per.data.dir=2\n")

    def session_properties(self) -> str:
        return "broker.heartbeat.interval.ms=1000\nbroker.session.timeout.ms=4000\n"

    def layout(self) -> dict[str, str]:
        """server.properties.in's placeholders that say where this broker sits in its cluster."""
        return {"NODE_ID": "1", "VOTERS": f"1@127.0.0.1:{self.controller_port}", "DATA": str(self.home / "data"),
                "REPLICATION": "1", "MIN_ISR": "1"}

    def cluster_id(self) -> str:
        return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()

    @property
    def logs_dir(self) -> Path:
        return self.stack / "logs"

    heap = "-Xmx1g"
    # The single broker runs C2 (its CPU is what the jobs and the gateway wait for on a small machine);
    # the cluster profile's three brokers, three JVMs on the same cores at low rates, run C1: a killed
    # one came back in 36.9 s with C2 beside the suite's stack, over the 30-s limit (15.7 s in another run)
    c1_by_default = False

    def command(self):
        tunings = startup_tunings(self.settings)
        argv = [
            self.java.path, "-Xms256m", self.heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            *(["-XX:TieredStopAtLevel=1"] if "c1" in tunings or (self.c1_by_default and tunings) else []),
            *self.cds_flags(),
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp", self.classpath, "kafka.Kafka", str(self.home / "server.properties"),
        ]
        return argv, {}

    @property
    def stdout_log(self) -> Path:
        # the broker logs through log4j into logs/kafka.log; stdout keeps start-up failures
        return self.stack / "logs" / "kafka.out"

    def healthy(self) -> bool:
        if not port_open(*self.host_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            # log_level 0: a probe of a port that is not Kafka must not spray librdkafka logs on stderr
            from ops.kafka_auth import ADMIN

            admin = AdminClient({**self.settings.kafka_config(ADMIN), "socket.timeout.ms": 2000, "log_level": 0})
            meta = admin.list_topics(timeout=3)
            return bool(meta.brokers)
        except Exception:
            return False


@dataclass
class KafkaNode(Kafka):
    """One of the cluster profile's three brokers (each also a controller: a quorum of three)."""

    node: BrokerNode | None = None
    quorum = "kafka"  # `up` starts the three together: one alone never has a quorum to become healthy
    heap = "-Xmx384m"
    c1_by_default = True  # unless INTELBUS_STARTUP_TUNING=none (the before of bench_recovery)

    @property
    def host_port(self):
        return (self.node.host, self.node.port)

    @property
    def controller_port(self) -> int:
        return self.node.controller_port

    @property
    def home(self) -> Path:
        return self.stack / self.name

    @property
    def logs_dir(self) -> Path:
        return self.stack / "logs" / self.name

    @property
    def log(self) -> Path:
        return self.logs_dir / "kafka.log"

    @property
    def stdout_log(self) -> Path:
        return self.stack / "logs" / f"{self.name}.out"

    @property
    def ports(self):
        return [self.node.port, self.controller_port]

    def layout(self) -> dict[str, str]:
        nodes = cluster.brokers(self.settings)
        return {"NODE_ID": str(self.node.node_id),
                "VOTERS": ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes),
                "DATA": str(self.home / "data"),
                "REPLICATION": str(len(nodes)), "MIN_ISR": str(len(nodes) - 1)}

    def session_properties(self) -> str:
        """Kafka's own 9 s: the two other controllers time a killed broker's session out while its
        JVM starts (longer than that on a loaded machine), so it is rarely waited for; a shorter
        session would fence a live broker whose heartbeats a loaded machine delays, and move its
        partitions' leadership for nothing."""
        return ""

    def cluster_id(self) -> str:
        """One id for the three nodes, made by the first one formatted and kept beside them."""
        path = self.stack / "kafka-cluster-id"
        if not path.exists():
            path.write_text(super().cluster_id())
        return path.read_text().strip()

    def healthy(self) -> bool:
        """This broker answers and the cluster lists it (registered and unfenced)."""
        if not port_open(*self.host_port):
            return False
        from confluent_kafka.admin import AdminClient

        from ops.kafka_auth import ADMIN

        try:
            admin = AdminClient({**self.settings.kafka_config(ADMIN), "bootstrap.servers": self.address,
                                 "socket.timeout.ms": 2000, "log_level": 0})
            return self.node.node_id in admin.list_topics(timeout=3).brokers
        except Exception:
            return False


class Registry(JavaServer):
    @property
    def host_port(self):
        url = urlparse(self.settings.registry_url)
        return (url.hostname or "127.0.0.1", url.port or 8081)

    @property
    def management_port(self) -> int:
        # Quarkus' management interface defaults to 0.0.0.0:9000, ClickHouse's native port.
        return self.host_port[1] + 10

    @property
    def home(self) -> Path:
        return self.stack / "registry"

    @property
    def marker(self) -> str:
        return str(self.app / "quarkus-run.jar")

    def prepare(self) -> None:
        self.app = install.fetch_registry(Path(self.settings.dist_dir))
        self.java = find_java(21, "Apicurio Registry 3")
        self.classpath = str(self.app / "quarkus-run.jar")  # what its class-data archive is made for
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self):
        env = {
            # persistent storage: an H2 database file under .stack/registry/
            "APICURIO_STORAGE_KIND": "sql",
            "APICURIO_STORAGE_SQL_KIND": "h2",
            "APICURIO_DATASOURCE_URL": f"jdbc:h2:file:{self.home / 'registry'}",
            "APICURIO_DATASOURCE_USERNAME": "sa",
            "APICURIO_DATASOURCE_PASSWORD": "sa",
            "QUARKUS_HTTP_HOST": self.host_port[0],
            "QUARKUS_HTTP_PORT": str(self.host_port[1]),
            "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
            "QUARKUS_MANAGEMENT_PORT": str(self.management_port),
            "QUARKUS_LOG_LEVEL": "WARN",
            "QUARKUS_LOG_CATEGORY__IO_QUARKUS__LEVEL": "INFO",
        }
        argv = [self.java.path, "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                *self.cds_flags(), "-jar", str(self.app / "quarkus-run.jar")]
        return argv, env

    @property
    def ports(self):
        return [self.host_port[1], self.management_port]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.settings.registry_url.rstrip("/") + "/subjects", timeout=2) as resp:
                return resp.status == 200
        except Exception:
            return False


class ClickHouse(Component):
    @property
    def host_port(self):
        url = urlparse(self.settings.clickhouse_url)
        return (url.hostname or "127.0.0.1", url.port or 9000)

    @property
    def http_port(self) -> int:
        return urlparse(self.settings.clickhouse_http).port or 8123

    @property
    def ports(self):
        return [self.host_port[1], self.http_port]

    @property
    def home(self) -> Path:
        return self.stack / "clickhouse"

    @property
    def marker(self) -> str:
        return str(self.home / "config.xml")

    def prepare(self) -> None:
        self.binary = install.clickhouse_server_binary()
        self._wait_for_status_lock()
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.stack / "logs").mkdir(parents=True, exist_ok=True)
        from ops.secrets import _write_private, ensure_clickhouse_passwords, render_users_xml

        # one password per user (ops/secrets.py): made when missing, kept otherwise; users.xml holds their sha256
        passwords = ensure_clickhouse_passwords(self.settings)
        replica = self.cluster_config(passwords)
        text = self.config_xml(replica)
        if replica:  # a replica's config names the admin's password (for its queries to the other): 0600
            _write_private(self.home / "config.xml", text)
        else:
            (self.home / "config.xml").write_text(text)
        users = self.home / "users.xml"
        fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(render_users_xml(passwords))

    def config_xml(self, cluster_part: str = "") -> str:
        """ops/clickhouse/config.xml.in rendered for this server."""
        text = (OPS / "clickhouse" / "config.xml.in").read_text()
        return (
            text.replace("@LOG@", str(self.stack / "logs" / self.name))
            .replace("@HOME@", str(self.home))
            .replace("@STACK@", str(self.stack))
            .replace("@HTTP_PORT@", str(self.http_port))
            .replace("@TCP_PORT@", str(self.host_port[1]))
            .replace("@CLUSTER@", cluster_part)
        )

    def cluster_config(self, passwords: dict[str, str]) -> str:
        """config.xml's part that makes the server a replica of a cluster: none on its own."""
        return ""

    def _wait_for_status_lock(self, timeout: float = 30.0) -> None:
        """Wait until no server holds data/status. ClickHouse locks it while it runs and a second
        server in the same directory exits at once ("Another server instance in same directory is
        already running"): after a SIGKILL the old server's last threads can hold it a while after
        its pid shows as dead, and an `up` in that window failed where the next one succeeded."""
        import fcntl
        import time

        status = self.home / "data" / "status"
        deadline = time.monotonic() + timeout
        while status.exists():
            with open(status, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    return
                except BlockingIOError:
                    pass
            if time.monotonic() > deadline:
                raise install.Missing(f"another ClickHouse server still holds {status} after {timeout:.0f}s "
                                      f"(`fuser {status}` names it): stop it first")
            time.sleep(0.2)

    def command(self):
        argv = [self.binary]
        if os.path.basename(self.binary) == "clickhouse":
            argv.append("server")
        argv.append(f"--config-file={self.home / 'config.xml'}")
        return argv, {}

    def healthy(self) -> bool:
        # /ping answers without credentials (every user, including default, has a password)
        try:
            with urllib.request.urlopen(f"http://{self.host_port[0]}:{self.http_port}/ping", timeout=2) as resp:
                return resp.read().strip() == b"Ok."
        except Exception:
            return False


@dataclass
class ClickHouseReplicaServer(ClickHouse):
    """One of the cluster profile's two ClickHouse servers: a replica of the cluster's one shard."""

    replica: ClickHouseReplica | None = None

    @property
    def host_port(self):
        return (self.replica.host, self.replica.tcp_port)

    @property
    def http_port(self) -> int:
        return self.replica.http_port

    @property
    def ports(self):
        return [self.replica.tcp_port, self.replica.http_port, self.replica.interserver_port]

    @property
    def home(self) -> Path:
        return self.stack / self.name

    def cluster_config(self, passwords: dict[str, str]) -> str:
        from xml.sax.saxutils import escape

        zk_host, zk_port = _host_port(self.settings.zookeeper, 2181)
        replicas = "".join(
            f"""
                <replica>
                    <host>{r.host}</host>
                    <port>{r.tcp_port}</port>
                    <user>default</user>
                    <password>{escape(passwords["default"])}</password>
                </replica>"""
            for r in cluster.clickhouse_replicas(self.settings))
        name = self.settings.clickhouse_cluster
        return f"""    <!-- the cluster profile (ops/cluster.py): one shard, a replica on each server; ZooKeeper
         holds the replication log and the ON CLUSTER DDL queue -->
    <interserver_http_host>{self.replica.host}</interserver_http_host>
    <interserver_http_port>{self.replica.interserver_port}</interserver_http_port>
    <zookeeper>
        <node>
            <host>{zk_host}</host>
            <port>{zk_port}</port>
        </node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <macros>
        <shard>1</shard>
        <replica>r{self.replica.index}</replica>
    </macros>
    <remote_servers>
        <{name}>
            <shard>
                <internal_replication>true</internal_replication>{replicas}
            </shard>
        </{name}>
    </remote_servers>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
"""


@dataclass
class ZooKeeper(JavaServer):
    """ZooKeeper, standalone, for the cluster profile's ClickHouse 18.16 replicas (no ClickHouse Keeper there)."""

    @property
    def host_port(self):
        return _host_port(self.settings.zookeeper, 2181)

    @property
    def home(self) -> Path:
        return self.stack / "zookeeper"

    @property
    def marker(self) -> str:
        return str(self.home / "zoo.cfg")

    def prepare(self) -> None:
        libs = install.fetch_zookeeper(Path(self.settings.dist_dir))
        self.java = find_java(11, "ZooKeeper")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        (self.stack / "logs").mkdir(parents=True, exist_ok=True)
        text = (OPS / "zookeeper" / "zoo.cfg.in").read_text()
        text = (text.replace("@DATA@", str(self.home / "data"))
                .replace("@HOST@", self.host_port[0]).replace("@PORT@", str(self.host_port[1])))
        (self.home / "zoo.cfg").write_text(text)
        self.classpath = f"{libs}/*"

    def command(self):
        argv = [self.java.path, "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", *self.cds_flags(), "-Djava.awt.headless=true",
                "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.4lw.commands.whitelist=srvr",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-cp", self.classpath, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.home / "zoo.cfg")]
        return argv, {}

    def healthy(self) -> bool:
        """`srvr` (a four-letter word on the client port) tells its mode: it serves requests.
        (`ruok` says imok from a server that refuses every session.)"""
        import socket

        try:
            with socket.create_connection(self.host_port, timeout=2) as conn:
                conn.sendall(b"srvr")
                return b"\nMode: " in conn.recv(4096)
        except OSError:
            return False


def infrastructure(settings: Settings) -> list[Component]:
    """The servers, in start order (the registry keeps its own storage, so order is for readability)."""
    if settings.stack_profile == "cluster":
        return cluster_infrastructure(settings)
    return [Kafka("kafka", settings), Registry("registry", settings), ClickHouse("clickhouse", settings)]


def cluster_infrastructure(settings: Settings) -> list[Component]:
    """The cluster profile: three brokers (started together), the registry, ZooKeeper, then the
    two ClickHouse replicas that need it. `down` stops them in reverse."""
    brokers = [KafkaNode(f"kafka-{n.node_id}", settings, node=n, start_timeout=120.0) for n in cluster.brokers(settings)]
    replicas = [ClickHouseReplicaServer(f"clickhouse-{r.index}", settings, replica=r)
                for r in cluster.clickhouse_replicas(settings)]
    return [*brokers, Registry("registry", settings), ZooKeeper("zookeeper", settings, start_timeout=60.0), *replicas]
