"""From a decoded intel.hit record to the command that opens its follow-up (pure)."""
from __future__ import annotations

import json

from workflows.model import HIT_TYPES, Actor, Identifier, OpenHit


def open_hit_command(hit: dict) -> OpenHit | None:
    """The OpenHit for a WANTED_PERSON or WATCH_MATCH hit (None for CASE_LINK: a candidate, not a hit to confirm).

    The wanted record's danger_level and the watch alert's priority come from the matched
    record the hit carries whole; the command id is the hit id, so a hit seen twice opens once.
    """
    if hit.get("hit_type") not in HIT_TYPES:
        return None
    try:
        record = json.loads(hit.get("record") or "{}")
    except ValueError:
        record = {}
    matched = hit.get("matched_on") or {}
    hit_id = str(hit["hit_id"])
    return OpenHit(
        command_id=hit_id, item_id=hit_id, actor=Actor.bus(), hit_type=hit["hit_type"],
        owner_region=hit["owner_region"], hit_region=hit["hit_region"],
        matched_on=Identifier(matched.get("kind", ""), matched.get("value", "")), record_key=hit.get("record_key", ""),
        danger_level=record.get("danger_level") if hit["hit_type"] == "WANTED_PERSON" else None,
        priority=record.get("priority") if hit["hit_type"] == "WATCH_MATCH" else None,
        classification=hit.get("classification") or "INTERNAL",
    )
