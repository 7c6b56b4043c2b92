"""Fixtures for tests on the real bus: publishing through RegionalProducer, reading topics."""
from __future__ import annotations

import random
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas.normalise import resident_id_check_digit


def new_resident_id(region: str = "130822", *, year: int | None = None) -> str:
    """A valid, random 18-digit resident ID (born in 19xx, so it also has a 15-digit form)."""
    year = year or random.randint(1950, 1999)
    first17 = f"{region}{year}{random.randint(1, 12):02d}{random.randint(1, 28):02d}{random.randint(0, 999):03d}"
    return first17 + resident_id_check_digit(first17)


def to_15(id18: str) -> str:
    return id18[:6] + id18[8:17]


class TopicReader:
    """Reads a topic from the offsets it had when the reader was made (what a test produced)."""

    def __init__(self, settings, topic: str):
        self.topic = topic
        self.consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": f"test-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        starts = []
        for p in meta.partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts.append(TopicPartition(topic, p, high))
        self.consumer.assign(starts)

    def read(self, *, until, timeout: float = 30.0, settle: float = 1.0) -> list:
        """Messages until `until(messages)` holds, then `settle` more seconds (to catch extras)."""
        got, deadline, done_at = [], time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(500, 0.2):
                if not msg.error():
                    got.append(msg)
            if done_at is None and until(got):
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
        return got

    def close(self):
        self.consumer.close()


@pytest.fixture(scope="session")
def codec(stack, settings):
    from schemas.wire import SchemaCodec

    return SchemaCodec(url=settings.registry_url)


@pytest.fixture
def reader(settings):
    readers = []

    def make(topic: str) -> TopicReader:
        r = TopicReader(settings, topic)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()


@pytest.fixture
def producer(stack, settings, codec):
    from producers.regional import RegionalProducer

    with RegionalProducer(settings=settings, codec=codec) as p:
        yield p


@pytest.fixture
def ids():
    """Resident-ID helpers: ids.new(region) -> 18 digits, ids.to_15(id18) -> the old form."""

    class Ids:
        new = staticmethod(new_resident_id)
        to_15 = staticmethod(to_15)

    return Ids


# --- people: principals in the stack's store, and logins through the real CLI ------------------

TEST_PRINCIPALS = [  # (name, kind, region, branch, roles, clearance, publish_regions)
    ("t-hb-cc", "person", "130000", "COMMAND_CENTER", ["command_center"], "INTERNAL", []),
    ("t-tj-cc", "person", "120000", "COMMAND_CENTER", ["command_center"], "INTERNAL", []),
    ("t-jz-cc", "person", "120119", "COMMAND_CENTER", ["command_center"], "INTERNAL", []),
    ("t-js-cc", "person", "320000", "COMMAND_CENTER", ["command_center"], "INTERNAL", []),
    ("t-wq-cc", "person", "120114", "COMMAND_CENTER", ["command_center"], "INTERNAL", []),
    ("t-js-analyst", "person", "320000", "INTELLIGENCE", ["analyst"], "INTERNAL", []),
    ("t-hb-analyst", "person", "130000", "INTELLIGENCE", ["analyst"], "INTERNAL", []),
    ("t-hb-secret", "person", "130000", "INTELLIGENCE", ["analyst"], "SECRET", []),
    ("t-tj-analyst", "person", "120000", "INTELLIGENCE", ["analyst"], "INTERNAL", []),
    ("t-bj-analyst", "person", "110000", "INTELLIGENCE", ["analyst"], "INTERNAL", []),
    ("t-xl-analyst", "person", "130822", "INTELLIGENCE", ["analyst"], "INTERNAL", []),
    ("t-auditor", "person", "110000", "", ["auditor"], "INTERNAL", []),
    ("t-operator", "person", "110000", "", ["operator"], "PUBLIC", []),
    ("t-integrator", "system", "110000", "", ["integrator"], "INTERNAL",
     ["110000", "120000", "130000", "150000", "320000", "440000"]),
    ("t-xl-system", "system", "130822", "", ["integrator"], "INTERNAL", ["130822"]),
]


class People:
    """Logs principals in with `intelbus login --password-stdin` (each into its own credentials file)."""

    def __init__(self, settings, passwords: dict, folder):
        self.settings, self.passwords, self.folder = settings, passwords, folder
        self._envs: dict[str, dict] = {}

    def env(self, name: str) -> dict:
        """Environment for a subprocess acting as `name` (logged in once per session)."""
        if name not in self._envs:
            import subprocess
            import sys

            env = {"INTELBUS_CREDENTIALS": str(self.folder / f"{name}.json")}
            r = subprocess.run([sys.executable, "-m", "ops.cli", "login", name, "--password-stdin"],
                               input=self.passwords[name] + "\n", capture_output=True, text=True, timeout=60,
                               env={**__import__("os").environ, **env})
            assert r.returncode == 0, r.stderr
            self._envs[name] = env
        return self._envs[name]

    def nobody(self) -> dict:
        """Environment of someone who never logged in."""
        return {"INTELBUS_CREDENTIALS": str(self.folder / "nobody.json")}


def _stack_test_passwords(settings, names, make) -> dict:
    """The test principals' passwords for this stack, kept in <stack>/identity/test-passwords.json (0600):
    two test sessions on one stack (a developer's and a helper's) log in with the same ones."""
    import json
    import os

    path = settings.stack_path / "identity" / "test-passwords.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        known = {}
    if set(names) - set(known):
        known = {**{n: make(16) for n in names}, **known}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(known, f)
        os.replace(tmp, path)
    return {n: known[n] for n in names}


@pytest.fixture(scope="session")
def people(stack, settings, tmp_path_factory):
    """The test principals in the stack's principal store, with fresh passwords, ready to log in."""
    import secrets

    from identity.store import PrincipalStore, store_path

    store = PrincipalStore(store_path(settings))
    passwords = _stack_test_passwords(settings, [p[0] for p in TEST_PRINCIPALS], secrets.token_urlsafe)
    try:
        for name, kind, region, branch, roles, clearance, publish in TEST_PRINCIPALS:
            password = passwords[name]
            existing = store.find(name)
            if existing is None:
                store.add(actor="pytest", name=name, kind=kind, region=region, branch=branch, roles=roles,
                          clearance=clearance, password=password, publish_regions=publish)
            else:
                store.set_disabled(actor="pytest", name=name, disabled=False)
                store.reset_password(actor="pytest", name=name, password=password)
    finally:
        store.close()
    return People(settings, passwords, tmp_path_factory.mktemp("logins"))


@pytest.fixture(scope="session")
def keycloak():
    """The local Keycloak (ops/keycloak.py), started once for the session and stopped after (left
    alone if it already ran). Skipped, saying why, only when no Java 21+ is installed."""
    from ops import install, keycloak as kc
    from ops.settings import load_settings

    try:
        install.find_java(21, "Keycloak 26")
    except install.Missing as e:
        pytest.skip(str(e))
    settings = load_settings()
    server = kc.start(settings, out=lambda m: print(f"[keycloak] {m}"))
    if server.pid:
        print(f"[keycloak] start {server.started_in_s or 0:.1f}s, {kc.rss_mb(server.pid):.0f} MB resident")
    yield server
    if server.started_in_s is not None:
        kc.stop(settings, out=lambda m: print(f"[keycloak] {m}"))


class GatewayProcess:
    """A gateway of its own (`intelbus gateway --port N`) on the session's stack, for tests that restart
    it or need the code of this checkout (the stack's own gateway runs what `up` started)."""

    def __init__(self, settings, port: int, log_path):
        self.settings, self.port, self.log_path = settings, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self, timeout: float = 60.0) -> "GatewayProcess":
        import os
        import subprocess
        import sys
        import urllib.request

        env = {**os.environ, "INTELBUS_GATEWAY_URL": self.url}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "ops.cli", "gateway", "--port", str(self.port)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.settings.stack_path))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"gateway not ready within {timeout:.0f}s: see {self.log_path}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(20)
        self.proc = None

    def restart(self, *, kill: bool = False) -> "GatewayProcess":
        self.stop(kill=kill)
        return self.start()


@pytest.fixture(scope="session")
def own_gateway(stack, settings, tmp_path_factory):
    """A private gateway process on a free port; `own_gateway.restart()` restarts it (SIGTERM, or kill=True)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = GatewayProcess(settings, port, tmp_path_factory.mktemp("gateway") / "gateway.log").start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright, one per test module (tests/integration/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.integration.browser import launch

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


# --- the cluster-profile stack (issue 18): one for test_chaos_short.py and test_cluster_profile.py ----

CLUSTER_PORT_BASE = 64000  # ports 64180-64650: docs/deploy.md, "Ports of the isolated stacks"
CLUSTER_FIXTURE = "cluster_stack"
# the JVM servers the short chaos run SIGKILLs: stopped cleanly once after `up`, they write the class-data
# archives their restarts map (bench/chaos.py warm_class_archives; docs/deploy.md "Recovery after SIGKILL")
CLUSTER_WARM = ("kafka-2", "registry")


def pytest_collection_modifyitems(config, items):
    """The tests on the cluster-profile stack run last and one after the other: the stack (three brokers,
    ZooKeeper, two ClickHouse replicas, the registry and the services; 1-3 min to start, 2.4 GB) starts
    once, when the first of them needs it, and is stopped at the session's end, right after them."""
    cluster = [i for i in items if CLUSTER_FIXTURE in getattr(i, "fixturenames", ())]
    if cluster:
        keep = set(map(id, cluster))
        items[:] = [i for i in items if id(i) not in keep] + cluster


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory):
    """`intelbus up --profile cluster` on an isolated stack (own directory, ports 64xxx), its JVMs'
    archives written, `down --purge` at the end; yields the environment its commands and clients use.
    INTELBUS_TEST_CLUSTER=0 skips the tests on it (a quick local run; `make test` runs them)."""
    import os

    from bench.chaos import chaos_env, cluster_up, warm_class_archives

    if os.environ.get("INTELBUS_TEST_CLUSTER", "1") == "0":
        pytest.skip("INTELBUS_TEST_CLUSTER=0: the cluster-profile tests are left out of this run")
    env = chaos_env(str(tmp_path_factory.mktemp("cluster")), port_base=CLUSTER_PORT_BASE)
    started = time.monotonic()
    with cluster_up(env, log=lambda m: print(f"[cluster] {m.strip()}", flush=True)):
        up_s = time.monotonic() - started
        assert warm_class_archives(env, servers=CLUSTER_WARM, log=lambda m: print(f"[cluster] {m}", flush=True))
        print(f"[cluster] up {up_s:.0f}s, archives of {', '.join(CLUSTER_WARM)} {time.monotonic() - started - up_s:.0f}s",
              flush=True)
        yield env
