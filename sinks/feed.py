"""Feed items as people see them: a hit or a shared alert as a readable block or as JSON.

The gateway reads the feed (gateway/feed.py) and decides what the caller may see
(identity.entitlement); `intelbus feed` renders what it is sent with these functions.
"""
from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime

from schemas.times import cst
from sinks.queries import display_width, pad

_DURATION = re.compile(r"(\d+)\s*(s|m|h|d)")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 30m, 2h, 7d)")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def hit_partition(province: str, partitions: int) -> int:
    """The partition librdkafka's murmur2 partitioner gives a province key (Java-compatible)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(province.encode()) & 0x7FFFFFFF) % partitions


def hit_for_display(hit: dict) -> dict:
    """A decoded hit as plain JSON: ids as text, the two records parsed."""
    out = {k: (str(v) if k in ("hit_id", "trigger_event_id") else v) for k, v in hit.items()}
    for name in ("record", "trigger"):
        try:
            out[name] = json.loads(hit[name])
        except (TypeError, ValueError):
            pass
    return out


def _age(at, now: float) -> str:
    stamp = at.timestamp() if hasattr(at, "timestamp") else at / 1000
    seconds = max(0, int(now - stamp))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"


_TYPE_ZH = {"WANTED_PERSON": "在逃人员", "WATCH_MATCH": "布控比中", "CASE_LINK": "串并案线索",
            "BORDER_DUPLICATE": "疑似重复报告"}


def render_block(hit: dict, regions, now: float | None = None) -> str:
    """One readable block per hit; labels padded by display width, so Chinese text lines up."""
    now = time.time() if now is None else now
    record, trigger = hit["record"], hit["trigger"]

    def region(code):
        return f"{code} {regions.name(code)}"

    if hit["hit_type"] == "BORDER_DUPLICATE":
        return _render_duplicate(hit, region, now)
    if hit["record_kind"] == "WANTED":
        person = record.get("person", {})
        what = (f"wanted {record.get('source_ref')} rev {record.get('revision')}: {person.get('name') or ''} "
                f"{person.get('id_number')} · {record.get('offence')} · danger {record.get('danger_level')}")
    elif hit["record_kind"] == "ALERT":
        what = f"watch {record.get('source_ref')}: {record.get('title')} · {record.get('priority')}"
    else:
        what = f"incident {record.get('source_ref')}: {record.get('incident_type')} at {cst(record.get('occurred_at'))}"
    location = trigger.get("location") or {}
    event = (f"{trigger.get('incident_type') or trigger.get('alert_type')} {trigger.get('source_ref')} "
             f"at {cst(trigger.get('occurred_at'))} {location.get('address') or ''}").strip()
    rows = [
        ("命中 hit", f"{hit['hit_type']} {_TYPE_ZH.get(hit['hit_type'], '')} · {hit['classification']} · {_age(hit['detected_at'], now)}"),
        ("记录方 owner", region(hit["owner_region"])),
        ("发现地 seen in", region(hit["hit_region"])),
        ("比中 matched on", f"{hit['matched_on']['kind']} {hit['matched_on']['value']}"),
        ("记录 record", what),
        ("事件 event", event),
        ("通知 notify", ", ".join(hit["notify_regions"])),
    ]
    width = max(display_width(label) for label, _ in rows)
    lines = [f"── {hit['hit_id']} " + "─" * 20]
    lines += [f"  {pad(label, width)}  {value}" for label, value in rows]
    return "\n".join(lines)


def alert_for_display(alert: dict) -> dict:
    return {"feed_item": "alert", **{k: (str(v) if k == "event_id" else v) for k, v in alert.items()}}


def render_alert_block(alert: dict, regions, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [
        ("协查 alert", f"{alert['alert_type']} · {alert['priority']} · {alert['status']} · {alert['classification']} · "
                      f"{_age(alert['reported_at'], now)}"),
        ("发布方 from", f"{alert['source_region']} {regions.name(alert['source_region'])} ({alert['source_system']} "
                       f"{alert['source_ref']} rev {alert['revision']})"),
        ("标题 title", alert["title"]),
        ("对象 subjects", ", ".join([p["id_number"] for p in alert.get("persons") or []]
                                   + [v["plate"] for v in alert.get("vehicles") or []] + list(alert.get("phones") or []))
         or "-"),
        ("共享 shared with", ", ".join(alert["share_scope"])),
    ]
    width = max(display_width(label) for label, _ in rows)
    lines = [f"── alert {alert['event_id']} " + "─" * 14]
    lines += [f"  {pad(label, width)}  {value}" for label, value in rows]
    return "\n".join(lines)


def _report_line(r: dict) -> str:
    loc = r.get("location") or {}
    place = f" ({loc['lat']:.4f}, {loc['lon']:.4f})" if loc.get("lat") is not None and loc.get("lon") is not None else ""
    return (f"{r.get('source_system')}/{r.get('source_ref')}: {r.get('incident_type')} at {cst(r.get('occurred_at'))}"
            f" in {loc.get('region') or '-'}{place} {loc.get('address') or ''}").strip()


def _apart(a: dict, b: dict) -> str:
    """'12 min, 2.1 km apart' between two reports (what the bus judged them by)."""
    parts = []
    try:
        minutes = abs(datetime.fromisoformat(str(b["occurred_at"])) - datetime.fromisoformat(str(a["occurred_at"])))
        parts.append(f"{minutes.total_seconds() / 60:.0f} min")
    except (KeyError, TypeError, ValueError):
        pass
    la, lb = a.get("location") or {}, b.get("location") or {}
    if None not in (la.get("lat"), la.get("lon"), lb.get("lat"), lb.get("lon")):
        p1, p2 = math.radians(la["lat"]), math.radians(lb["lat"])
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lb["lon"] - la["lon"]) / 2) ** 2
        parts.append(f"{2 * 6371.0 * math.asin(min(1.0, math.sqrt(h))):.1f} km")
    return ", ".join(parts) + " apart" if parts else "-"


def _render_duplicate(hit: dict, region, now: float) -> str:
    """A possible border duplicate: the two reports side by side, both kept (never merged)."""
    first, second = hit["record"], hit["trigger"]
    rows = [
        ("命中 hit", f"{hit['hit_type']} {_TYPE_ZH['BORDER_DUPLICATE']} possible duplicate · {hit['classification']} · "
                    f"{_age(hit['detected_at'], now)}"),
        ("报告一 report 1", f"{region(hit['owner_region'])} · {_report_line(first)}"),
        ("报告二 report 2", f"{region(hit['hit_region'])} · {_report_line(second)}"),
        ("相距 apart", _apart(first, second)),
        ("比中 matched on", f"{hit['matched_on']['kind']} {hit['matched_on']['value']}"),
        ("处理 action", "可能为同一警情, 请双方核实; 两份报告均保留 (both reports kept, not merged)"),
        ("通知 notify", ", ".join(hit["notify_regions"])),
    ]
    width = max(display_width(label) for label, _ in rows)
    lines = [f"── {hit['hit_id']} " + "─" * 20]
    lines += [f"  {pad(label, width)}  {value}" for label, value in rows]
    return "\n".join(lines)
