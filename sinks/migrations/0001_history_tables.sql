-- intelbus history tables. Runs on ClickHouse 18.16 (Debian) and current ClickHouse alike:
-- no DateTime64, TTL, codecs, Map or LowCardinality (18.16 needs a setting for it); times
-- are DateTime (UTC, seconds) for partitioning and ordering plus UInt64 milliseconds.
-- Every table that the sink fills is a ReplacingMergeTree whose ORDER BY contains the id,
-- so a batch delivered twice (crash between insert and commit) collapses to one row;
-- queries read through FINAL or GROUP BY the id, so they never count a row twice.

CREATE TABLE IF NOT EXISTS events
(
    event_id       String,
    kind           String,
    type           String,
    source_region  String,
    source_system  String,
    source_ref     String,
    revision       UInt32,
    occurred_at    DateTime,
    occurred_ms    UInt64,
    reported_ms    UInt64,
    classification String,
    share_scope    Array(String),
    region         String,
    title          String,
    status         String,
    address        String,
    lat            Nullable(Float64),
    lon            Nullable(Float64),
    identifiers    Array(String),
    raw            String,
    topic          String,
    partition      UInt16,
    offset         UInt64,
    ingested_ms    UInt64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (region, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS event_subjects
(
    id_value       String,
    id_kind        String,
    role           String,
    event_id       String,
    kind           String,
    type           String,
    source_region  String,
    region         String,
    occurred_at    DateTime,
    occurred_ms    UInt64,
    classification String,
    share_scope    Array(String),
    ingested_ms    UInt64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (id_value, occurred_at, event_id, id_kind);

CREATE TABLE IF NOT EXISTS hits
(
    hit_id              String,
    hit_type            String,
    matched_kind        String,
    matched_value       String,
    owner_region        String,
    hit_region          String,
    notify_regions      Array(String),
    classification      String,
    detected_at         DateTime,
    detected_ms         UInt64,
    record_kind         String,
    record_key          String,
    record              String,
    trigger_kind        String,
    trigger_event_id    String,
    trigger             String,
    trigger_reported_ms UInt64,
    trigger_occurred_ms UInt64,
    ingested_ms         UInt64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(detected_at)
ORDER BY (owner_region, hit_region, detected_at, hit_id);

CREATE TABLE IF NOT EXISTS dead_letters
(
    dlq_id        String,
    stage         String,
    source        String,
    kind          String,
    field         String,
    reason        String,
    raw           String,
    source_region String,
    source_system String,
    failed_at     DateTime,
    failed_ms     UInt64,
    ingested_ms   UInt64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(failed_at)
ORDER BY (stage, failed_at, dlq_id);

CREATE TABLE IF NOT EXISTS duplicates
(
    event_id      String,
    kind          String,
    record_key    String,
    revision      UInt32,
    source_region String,
    source_system String,
    source        String,
    dropped_at    DateTime,
    dropped_ms    UInt64,
    ingested_ms   UInt64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(dropped_at)
ORDER BY (source_system, dropped_at, source);

CREATE TABLE IF NOT EXISTS audit_log
(
    at          DateTime,
    at_ms       UInt64,
    user        String,
    region      String,
    purpose     String,
    action      String,
    query_name  String,
    query_text  String,
    params      String,
    row_count   UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, user);
