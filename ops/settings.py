"""Every address and tunable of intelbus, in one place.

Each field has a default for the local stack (`intelbus up`) and an environment
override named in its metadata. `intelbus config` prints the effective values.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, doc: str, default):
    return field(default=default, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class Settings:
    kafka: str = _env("INTELBUS_KAFKA", "Kafka bootstrap servers", "127.0.0.1:9092")
    kafka_security: str = _env(
        "INTELBUS_KAFKA_SECURITY",
        "extra librdkafka settings, 'k=v,k=v', applied last (TLS: security.protocol=SASL_SSL,ssl.ca.location=ca.pem)",
        "",
    )
    kafka_auth: str = _env(
        "INTELBUS_KAFKA_AUTH",
        "how clients prove who they are to the broker: scram-sha-512 (each process as its own principal, "
        "password from INTELBUS_KAFKA_PASSWORD_<USER> or <secrets dir>/kafka/<user>; ops/kafka_auth.py) or none",
        "scram-sha-512",
    )
    kafka_user: str = _env(
        "INTELBUS_KAFKA_USER",
        "the Kafka principal the publishing tools (publish, simulate, RegionalProducer) act as; "
        "a regional system sets its own (ops/acls.yaml)",
        "local",
    )
    kafka_tls_port: int = _env(
        "INTELBUS_KAFKA_TLS_PORT",
        "`intelbus up --tls`: the local broker's second listener, SASL_SSL with a CA made under <stack dir>/tls "
        "(0: the Kafka port + 2)",
        0,
    )
    registry_url: str = _env(
        "INTELBUS_REGISTRY_URL",
        "Confluent-compatible schema registry URL",
        "http://127.0.0.1:8081/apis/ccompat/v7",
    )
    clickhouse_url: str = _env(
        "INTELBUS_CLICKHOUSE_URL",
        "ClickHouse native URL (clickhouse-driver form), without a user: each process adds its own "
        "(ops.secrets.clickhouse_url_as)",
        "clickhouse://127.0.0.1:9000/intelbus",
    )
    clickhouse_http: str = _env(
        "INTELBUS_CLICKHOUSE_HTTP", "ClickHouse HTTP address (health probe; people query through the gateway)", "http://127.0.0.1:8123"
    )
    stack_dir: str = _env("INTELBUS_STACK_DIR", "where the local stack keeps data, logs and pids", str(REPO_ROOT / ".stack"))
    secrets_dir: str = _env(
        "INTELBUS_SECRETS_DIR",
        "where passwords live: clickhouse/<user>, 0600, made by `intelbus up` when missing (default <stack dir>/secrets); "
        "INTELBUS_CLICKHOUSE_PASSWORD_<USER> overrides a file",
        "",
    )
    dist_dir: str = _env(
        "INTELBUS_DIST_DIR", "where fetched Kafka and registry builds are unpacked (kept by `down --purge`)", str(REPO_ROOT / ".cache" / "dist")
    )
    profile: str = _env("INTELBUS_PROFILE", "topic profile: local (replication 1) or production (replication 3)", "local")
    stack_profile: str = _env(
        "INTELBUS_STACK_PROFILE",
        "what `intelbus up` runs: single (one broker, one ClickHouse) or cluster (three brokers, ZooKeeper, two "
        "ClickHouse replicas; topics of the production profile; docs/deploy.md). Unset: the last `up --profile` of "
        "this stack dir",
        "single",
    )
    zookeeper: str = _env("INTELBUS_ZOOKEEPER", "cluster profile: the ZooKeeper that coordinates the ClickHouse replicas",
                          "127.0.0.1:2181")
    clickhouse_cluster: str = _env(
        "INTELBUS_CLICKHOUSE_CLUSTER",
        "the ClickHouse cluster the migrations create their tables ON (Replicated tables behind Distributed ones); "
        "empty: plain tables on one server (the cluster profile: intelbus)",
        "",
    )
    partitions: int = _env("INTELBUS_PARTITIONS", "partitions of each intelbus topic", 6)
    dedupe_window_days: int = _env("INTELBUS_DEDUPE_WINDOW_DAYS", "how long an event id is remembered", 7)
    case_link_window_days: int = _env("INTELBUS_CASE_LINK_WINDOW_DAYS", "window for CASE_LINK hits", 30)
    border_duplicate_window_min: float = _env("INTELBUS_BORDER_DUPLICATE_WINDOW_MIN", "BORDER_DUPLICATE hits: two "
                                              "regions' case reports at most this many minutes apart", 30.0)
    border_duplicate_km: float = _env("INTELBUS_BORDER_DUPLICATE_KM", "BORDER_DUPLICATE hits: ... and at most this many "
                                      "km apart", 5.0)
    jobs_workers: int = _env("INTELBUS_JOBS_WORKERS", "stream-job workers started by `intelbus up`", 1)
    sink_batch_rows: int = _env("INTELBUS_SINK_BATCH_ROWS", "sink flushes at this many rows", 50_000)
    sink_batch_seconds: float = _env("INTELBUS_SINK_BATCH_SECONDS", "sink flushes after this many seconds", 1.0)
    sink_fetch_min_bytes: int = _env("INTELBUS_SINK_FETCH_MIN_BYTES", "sink: the broker holds its fetch until this many "
                                     "bytes are there or INTELBUS_SINK_FETCH_MAX_WAIT_MS have passed (librdkafka's "
                                     "fetch.min.bytes; 1: answered as soon as a message is there; it flushes every "
                                     "INTELBUS_SINK_BATCH_SECONDS anyway: docs/architecture.md)", 262_144)
    sink_fetch_max_wait_ms: int = _env("INTELBUS_SINK_FETCH_MAX_WAIT_MS", "sink: the longest the broker holds its fetch "
                                       "(librdkafka's fetch.wait.max.ms)", 250)
    sink_fault: str = _env("INTELBUS_SINK_FAULT", "tests only: exit-before-commit makes the sink exit after an insert, "
                           "before committing its offsets", "")
    jobs_rocksdb_shared: bool = _env("INTELBUS_JOBS_ROCKSDB_SHARED", "jobs: every RocksDB store of a worker shares one "
                                     "block cache and one memtable budget (0: per-store options, the state soak's "
                                     "baseline; stream_jobs/tables.py)", True)
    jobs_rocksdb_cache_mib: int = _env("INTELBUS_JOBS_ROCKSDB_CACHE_MIB", "jobs: the worker's shared RocksDB block "
                                       "cache, MiB", 32)
    jobs_rocksdb_memtables_mib: int = _env("INTELBUS_JOBS_ROCKSDB_MEMTABLES_MIB", "jobs: the worker's shared RocksDB "
                                           "memtable budget, MiB", 48)
    jobs_consumer_loop: str = _env("INTELBUS_JOBS_CONSUMER_LOOP", "jobs: batch (each stage gets a fetch's records of "
                                   "its topics as one batch) or faust (faust's own loop, the fallback); empty: batch",
                                   "batch")
    jobs_gil_switch_s: float = _env("INTELBUS_JOBS_GIL_SWITCH_S", "jobs: the worker's GIL switch interval, s (Python's "
                                    "default 0.005 made the event loop wait for aiokafka's thread hundreds of times a "
                                    "second)", 0.0005)
    jobs_fetch_min_bytes: int = _env("INTELBUS_JOBS_FETCH_MIN_BYTES", "jobs: the broker holds the worker's fetch "
                                     "until this many bytes are there or INTELBUS_JOBS_FETCH_MAX_WAIT_MS have passed "
                                     "(1: answered as soon as a message is there, the lowest latency; 16384 with 10 ms "
                                     "cut the worker's CPU by 13-45% at 1,000-200 events/s and added about 5 ms a hop "
                                     "at low rates: docs/architecture.md)", 1)
    jobs_fetch_max_wait_ms: int = _env("INTELBUS_JOBS_FETCH_MAX_WAIT_MS", "jobs: the longest the broker holds the "
                                       "worker's fetch for INTELBUS_JOBS_FETCH_MIN_BYTES, ms (used only with that "
                                       "above 1; else faust's own 1500 ms, for a fetch that finds nothing)", 10)
    jobs_batch_depth: int = _env("INTELBUS_JOBS_BATCH_DEPTH", "jobs (batch loop): batches of a stage begun and not yet "
                                 "acknowledged, at most: one is processed while the others wait for their delivery "
                                 "reports (docs/architecture.md)", 2)
    jobs_nice: int = _env("INTELBUS_JOBS_NICE", "jobs: the workers' CPU priority on the local stack (nice value, "
                          "applied to the process and its autogroup; below 0 needs root or RLIMIT_NICE, else it "
                          "stays 0): the detection path goes first when the components of one machine want more "
                          "than its cores (docs/deploy.md)", -10)
    jobs_lookback_s: float = _env("INTELBUS_JOBS_LOOKBACK_S", "jobs: how much of a partition's match requests a worker "
                                  "reads back when it is assigned the partition, s", 120.0)
    jobs_stuck_after_s: float = _env("INTELBUS_JOBS_STUCK_AFTER_S", "jobs: the commit watchdog repairs a partition "
                                     "whose committed offset has not moved for this long while messages past it wait, "
                                     "s", 30.0)
    jobs_hole_after_s: float = _env("INTELBUS_JOBS_HOLE_AFTER_S", "jobs: the commit watchdog judges a hole at a "
                                    "partition's commit point (a message not acknowledged while later ones were) "
                                    "after this long, s", 5.0)
    jobs_stuck_not_ready_s: float = _env("INTELBUS_JOBS_STUCK_NOT_READY_S", "jobs: a worker not ready (a rebalance "
                                         "or a table recovery) with nothing moving for this long, or whose consumer "
                                         "has not ended a seek to the committed offsets for this long, exits, and "
                                         "its supervisor restarts it, s (0: never)", 120.0)
    workflows_session_s: float = _env("INTELBUS_WORKFLOWS_SESSION_S", "workflow job: consumer session timeout, s", 10.0)
    workflows_offset_reset: str = _env("INTELBUS_WORKFLOWS_OFFSET_RESET", "workflow job: where a new group starts "
                                       "reading its inputs (earliest, latest)", "earliest")
    workflows_tick_s: float = _env("INTELBUS_WORKFLOWS_TICK_S", "workflow job: the timers' period, s", 1.0)
    workflows_watermark_s: float = _env("INTELBUS_WORKFLOWS_WATERMARK_S", "workflow job: the command watermark's "
                                        "marker period, s (docs/workflows.md)", 0.2)
    workflows_watermark_skew_ms: int = _env("INTELBUS_WORKFLOWS_WATERMARK_SKEW_MS", "workflow job: the watermark's "
                                            "allowance for command stamps behind the marker, ms", 100)
    workflows_hold_s: float = _env("INTELBUS_WORKFLOWS_HOLD_S", "workflow job: the bounded hold of a commands "
                                   "partition whose watermark does not advance, s", 30.0)
    workflows_hit_backfill_s: float = _env("INTELBUS_WORKFLOWS_HIT_BACKFILL_S", "workflow job: how far back a new "
                                           "group reads intel.hit to open follow-ups, s", 86_400.0)
    workflows_fetch_min_bytes: int = _env("INTELBUS_WORKFLOWS_FETCH_MIN_BYTES", "workflow job: the broker holds its "
                                          "fetch until this many bytes are there or INTELBUS_WORKFLOWS_FETCH_MAX_WAIT_MS "
                                          "have passed (1: answered as soon as a message is there, and an empty fetch "
                                          "waits faust's 1.5 s; 65536 with 50 ms cut the job's CPU by a quarter at "
                                          "1,000 events/s and cost the job and Kafka 0.02-0.05 cores each at idle: "
                                          "docs/workflows.md)", 1)
    workflows_fetch_max_wait_ms: int = _env("INTELBUS_WORKFLOWS_FETCH_MAX_WAIT_MS", "workflow job: the longest the broker "
                                            "holds its fetch for INTELBUS_WORKFLOWS_FETCH_MIN_BYTES, ms (used only with "
                                            "that above 1)", 50)
    workflows_only: str = _env("INTELBUS_WORKFLOWS_ONLY", "workflow job, tests and benchmarks: handle only commands "
                               "and hits matching this regex (empty: all)", "")
    workflows_output_topic: str = _env("INTELBUS_WORKFLOWS_OUTPUT_TOPIC", "workflow job, benchmarks: write the events "
                                       "to this topic of the job's own (<app id>-...) instead of intel.workflow", "")
    gc_gen0: int = _env("INTELBUS_GC_GEN0", "jobs and sink: Python's collector takes its youngest generation every "
                        "this many allocations (Python's default: 700)", 50_000)
    gateway_url: str = _env("INTELBUS_GATEWAY_URL", "the gateway people's commands talk to (login, feed, query, sql, "
                            "audit); `up` serves it on this address", "http://127.0.0.1:8080")
    gateway_gil_switch_s: float = _env("INTELBUS_GATEWAY_GIL_SWITCH_S", "gateway: the process's GIL switch interval, "
                                       "s (the live feed hub's consume thread waits for the event loop's GIL; "
                                       "Python's default is 0.005)", 0.0005)
    gateway_nice: int = _env("INTELBUS_GATEWAY_NICE", "gateway: its CPU priority on the local stack (nice value, "
                             "process and autogroup, as INTELBUS_JOBS_NICE): the live feed's last hop to people",
                             -10)
    gateway_http: str = _env("INTELBUS_GATEWAY_HTTP", "the gateway's HTTP implementation in uvicorn: auto (httptools "
                             "when installed, else h11), h11 or httptools (bench/bench_fanout.py compares them)", "auto")
    # the gateway's live feed (gateway/hub.py, gateway/events.py; docs/architecture.md "The live feed"); the switches
    # that restore an earlier behaviour are for bench_fanout's same-run comparisons
    live_buffer_s: float = _env("INTELBUS_LIVE_BUFFER_S", "live feed: how far back the hub's buffer reaches, s", 3600.0)
    live_buffer_items: int = _env("INTELBUS_LIVE_BUFFER_ITEMS", "live feed: the most items the hub's buffer keeps", 50_000)
    live_ring_ms: float = _env("INTELBUS_LIVE_RING_MS", "live feed: streams are rung at most once per this many ms "
                               "(leading edge; 0: at every append)", 10.0)
    live_ring_select: bool = _env("INTELBUS_LIVE_RING_SELECT", "live feed: a round rings only the view groups it may "
                                  "show something to (0: every stream)", True)
    live_workflow_consumer: bool = _env("INTELBUS_LIVE_WORKFLOW_CONSUMER", "live feed: intel.workflow read by a "
                                        "consumer and thread of its own", True)
    live_gc_light: bool = _env("INTELBUS_LIVE_GC_LIGHT", "live feed: the light heap and frozen start-up heap (0: as "
                               "before, for bench_fanout)", True)
    live_gc_thresholds: str = _env("INTELBUS_LIVE_GC_THRESHOLDS", "live feed: the collector's thresholds once the hub "
                                   "has caught up", "700,10,100")
    live_hub_lazy: bool = _env("INTELBUS_LIVE_HUB_LAZY", "live feed: hits and alerts decoded on the event loop when a "
                               "round first looks at them, not on the hub's thread", False)
    live_audit_interval_s: float = _env("INTELBUS_LIVE_AUDIT_INTERVAL_S", "live feed: a client's items wait at most "
                                        "this long for its next audit record (0: none)", 0.0)
    live_first_wait_s: float = _env("INTELBUS_LIVE_FIRST_WAIT_S", "live feed: how long a first connection waits for a "
                                    "starting hub to read its buffer before it reads by itself, s", 30.0)
    live_audit_fsync: bool = _env("INTELBUS_LIVE_AUDIT_FSYNC", "live feed: fsync the audit journal at each append",
                                  False)
    live_send_stamp: bool = _env("INTELBUS_LIVE_SEND_STAMP", "live feed, benchmarks: each batch starts with a comment "
                                 "of the gateway's send and poll times", False)
    live_audit_group: bool = _env("INTELBUS_LIVE_AUDIT_GROUP", "live feed: one journal write per round in the streams' "
                                  "own path (each waits for it before it sends)", False)
    live_broadcast: bool = _env("INTELBUS_LIVE_BROADCAST", "live feed: a round reads, walks and audits once for the "
                                "streams of a view group in step (0: every stream in its own turn)", True)
    token_ttl_s: int = _env("INTELBUS_TOKEN_TTL_S", "how long a login's token is valid, in seconds", 3600)
    oidc_config: str = _env("INTELBUS_OIDC_CONFIG", "YAML file naming an OIDC provider whose tokens the gateway accepts "
                            "(see ops/identity/oidc.example.yaml); empty: local logins only", "")
    metrics_port_base: int = _env("INTELBUS_METRICS_PORT_BASE", "first Prometheus metrics port", 9400)
    metrics_bind: str = _env("INTELBUS_METRICS_BIND", "the address the jobs, workflow job and sink serve /metrics on "
                             "(0.0.0.0: reachable from other hosts and pods, for a Prometheus that is not local)",
                             "127.0.0.1")
    verify_records: bool = _env("INTELBUS_VERIFY_RECORDS", "jobs: check every input record's proof of publisher "
                                "(docs/integrators.md) and refuse those without a valid one (0 only to measure its cost)",
                                True)
    signing_key_file: str = _env("INTELBUS_SIGNING_KEY_FILE", "the key file RegionalProducer, `publish` and `simulate` "
                                 "sign records with (`intelbus keys create --out`; default <stack dir>/identity/keys/local.json, "
                                 "made by `up`); missing: records go unsigned and the bus refuses them", "")
    startup_tuning: str = _env("INTELBUS_STARTUP_TUNING", "what makes a killed component come back sooner "
                               "(ops/components.py): all, none, or a comma-separated list of restart, cds, kafka, c1 "
                               "(bench/bench_recovery.py's before/after); `up` replaces a supervisor started with "
                               "another", "restart,cds,kafka")

    def __post_init__(self):
        if not self.secrets_dir:
            object.__setattr__(self, "secrets_dir", str(Path(self.stack_dir) / "secrets"))
        if not self.signing_key_file:
            object.__setattr__(self, "signing_key_file", str(Path(self.stack_dir) / "identity" / "keys" / "local.json"))
        if self.stack_profile == "cluster":
            from ops.cluster import cluster_defaults

            for name, value in cluster_defaults(self).items():
                object.__setattr__(self, name, value)

    @property
    def stack_path(self) -> Path:
        return Path(self.stack_dir)

    def kafka_config(self, user: str) -> dict:
        """librdkafka client settings for a client acting as the Kafka principal `user`
        (ops/kafka_auth.py: bootstrap, SASL credentials, then INTELBUS_KAFKA_SECURITY)."""
        from ops.kafka_auth import client_config

        return client_config(self, user)

    def describe(self) -> list[tuple[str, str, object, str]]:
        """(name, env var, value, doc) for every setting, for `intelbus config`."""
        from ops.secrets import redact_setting

        return [  # a password an operator put in a URL or in Kafka's settings is not printed
            (f.name, f.metadata["env"], redact_setting(getattr(self, f.name)), f.metadata["doc"])
            for f in dataclasses.fields(self)
        ]


def _coerce(raw: str, like):
    if isinstance(like, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    return raw


def load_settings(environ: dict | None = None, **overrides) -> Settings:
    """Settings from defaults, then the environment, then explicit overrides."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(f.metadata["env"])
        if raw is not None and raw != "":
            try:
                values[f.name] = _coerce(raw, f.default)
            except ValueError:
                raise SystemExit(f"intelbus: {f.metadata['env']}={raw!r} is not a valid {type(f.default).__name__}")
    if "stack_profile" not in values and "stack_profile" not in overrides:
        # `intelbus status`, `down` and the clients see what `up --profile` chose for this stack dir
        from ops.cluster import remembered_profile

        remembered = remembered_profile(Path(overrides.get("stack_dir") or values.get("stack_dir", Settings.stack_dir)))
        if remembered:
            values["stack_profile"] = remembered
    values.update(overrides)
    return Settings(**values)
