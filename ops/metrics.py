"""Metrics every intelbus process shares (one definition, one registry)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

READY = Gauge("intelbus_service_ready", "1 once the process has started and joined its consumer group")
DLQ = Counter("intelbus_dlq_writes_total", "Messages sent to intel.dlq", ["stage"])
