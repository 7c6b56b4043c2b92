"""The `intel.dlq` record (schemas/avro/dead_letter.avsc), built in one place for every stage
that refuses an input: the producers (PUBLISH), the stream jobs (DECODE, VERIFY, VALIDATE,
DEDUPE, MATCH), the workflow job (WORKFLOW) and the sink (SINK)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

# the Avro enum `Stage` of dead_letter.avsc
STAGES = ("PUBLISH", "DECODE", "VALIDATE", "DEDUPE", "MATCH", "SINK", "VERIFY", "WORKFLOW")


def dead_letter_record(stage: str, source: str, reason: str, raw: bytes, *, kind: str | None = None,
                       field: str | None = None, source_region: str | None = None, source_system: str | None = None,
                       failed_at_ms: int | None = None, dlq_id: str | None = None) -> dict:
    """The record for intel.dlq: which input (`source`: FILE:LINE or TOPIC/PARTITION/OFFSET), which
    field, why, and the raw bytes as received. A fresh uuid4 and the current time unless given (a
    refusal that must keep its id across replays passes its own)."""
    if stage not in STAGES:
        raise ValueError(f"dead letter stage {stage!r} is not one of {', '.join(STAGES)} (dead_letter.avsc)")
    return {
        "dlq_id": dlq_id or str(uuid.uuid4()),
        "stage": stage,
        "source": source,
        "kind": kind,
        "field": field,
        "reason": reason,
        "raw": bytes(raw),
        "source_region": source_region,
        "source_system": source_system,
        "failed_at": int(time.time() * 1000) if failed_at_ms is None else int(failed_at_ms),
    }


@dataclass(frozen=True)
class DeadLetter:
    """A refusal as a stage returns it; `record()` is what goes on intel.dlq."""
    stage: str  # one of STAGES
    source: str
    reason: str
    raw: bytes
    kind: str | None = None
    field: str | None = None
    source_region: str | None = None
    source_system: str | None = None

    def record(self, failed_at_ms: int | None = None) -> dict:
        return dead_letter_record(self.stage, self.source, self.reason, self.raw, kind=self.kind, field=self.field,
                                  source_region=self.source_region, source_system=self.source_system,
                                  failed_at_ms=failed_at_ms)
