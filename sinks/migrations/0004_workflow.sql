-- Workflow history (issue 16): every transition of intel.workflow (schemas/avro/workflow.avsc),
-- one row per event. Like 0001 it runs on ClickHouse 18.16 and current servers: no DateTime64,
-- so each time is a DateTime (UTC, seconds) for partitioning and ordering plus UInt64
-- milliseconds (at/at_ms; due_ms and scheduled_ms are Nullable(UInt64), NULL when the event has none).
-- ReplacingMergeTree ordered by (item_id, event_id): a replayed event (the same event_id,
-- whatever its offset or ingestion time) is stored once; readers use FINAL.
-- Who sees a row: a region that may see one of its `notify` regions or zones (RegionTable.may_see,
-- as for hits' notify_regions), at the caller's clearance.

CREATE TABLE IF NOT EXISTS workflow_events
(
    event_id       String,
    item_id        String,
    item_kind      String,
    event_type     String,
    seq            UInt32,
    at             DateTime,
    at_ms          UInt64,
    status         String,
    actor          String,
    actor_agency   String,
    party          String,
    party_status   String,
    to             Array(String),
    notify         Array(String),
    deadline       String,
    due_ms         Nullable(UInt64),
    scheduled_ms   Nullable(UInt64),
    level          UInt8,
    code           String,
    text           String,
    minutes        Nullable(Int32),
    refs           Array(String),
    command_id     String,
    classification String,
    topic          String,
    partition      UInt16,
    offset         UInt64,
    ingested_ms    UInt64
)
ENGINE = ReplacingMergeTree(ingested_ms)
PARTITION BY toYYYYMM(at)
ORDER BY (item_id, event_id);
