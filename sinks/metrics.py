"""Prometheus metrics of the sink (names: docs/metrics.md)."""
from __future__ import annotations

from ops.metrics import DLQ, READY  # noqa: F401  (shared by every process)
from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("intelbus_sink_messages_total", "Messages read by the sink", ["topic"])
ROWS = Counter("intelbus_sink_rows_inserted_total", "Rows inserted into ClickHouse", ["table"])
REFUSED = Counter("intelbus_sink_rows_refused_total", "Rows ClickHouse refused (sent to intel.dlq)", ["table"])
BATCH_ROWS = Histogram("intelbus_sink_batch_rows", "Rows per sink batch",
                       buckets=(10, 100, 1000, 5000, 10_000, 25_000, 50_000, 100_000))
INSERT_SECONDS = Histogram("intelbus_sink_insert_seconds", "ClickHouse insert latency per table batch", ["table"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CLICKHOUSE_ERRORS = Counter("intelbus_sink_clickhouse_errors_total", "Failed ClickHouse inserts (each retried)")
CLICKHOUSE_UP = Gauge("intelbus_sink_clickhouse_up", "0 while inserts into ClickHouse fail")
LAG_SECONDS = Gauge("intelbus_sink_commit_delay_seconds", "Age of the last committed batch when it was committed")
