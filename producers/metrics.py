"""Prometheus metrics of producing processes (`intelbus publish`, `intelbus simulate`, any RegionalProducer).

`intelbus_producer_records_total{kind, outcome}`: outcome `published` (acknowledged by Kafka),
`failed` (delivery failed) or `rejected` (refused by validation, never sent);
`intelbus_producer_rejected_total{kind, reason}`: rejections by a bounded reason class.
"""
from __future__ import annotations

import logging
import re
import sys

from prometheus_client import Counter

RECORDS = Counter("intelbus_producer_records", "Records handled by producers, by outcome", ["kind", "outcome"])
REJECTED = Counter("intelbus_producer_rejected", "Records refused before the bus, by reason class", ["kind", "reason"])

REASONS = ("missing_field", "unknown_field", "wrong_type", "not_in_enum", "bad_identifier", "bad_region", "bad_time",
           "invalid_value")
_IDENTIFIER_FIELD = re.compile(r"(id_number|plate|phones\[\d+\])$")


def reason_class(field: str, reason: str) -> str:
    """A bounded label for a RecordError: the metric keeps its cardinality whatever integrators send."""
    if "is required" in reason:
        return "missing_field"
    if reason.startswith("unknown field"):
        return "unknown_field"
    if _IDENTIFIER_FIELD.search(field or ""):
        return "bad_identifier"
    if "not one of" in reason:
        return "not_in_enum"
    if "region code" in reason or "zone name" in reason:
        return "bad_region"
    if "ISO-8601" in reason or "YYYY-MM-DD" in reason:
        return "bad_time"
    if reason.startswith("must be a") and ", got " in reason:
        return "wrong_type"
    return "invalid_value"


def serve(port: int, what: str) -> int | None:
    """Serve /metrics on 127.0.0.1:port for a producing command; a port in use is a warning, not a failure."""
    if not port:
        return None
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr="127.0.0.1")
        return port
    except OSError as exc:
        logging.getLogger("intelbus").debug("metrics port %d: %s", port, exc)
        print(f"intelbus {what}: metrics port {port} is in use, not serving metrics ({exc.strerror})", file=sys.stderr)
        return None
