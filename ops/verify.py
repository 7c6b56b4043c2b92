"""`intelbus verify`: compare what the bus produced with a simulator's ground truth.

Reads intel.hit and the unique event topics from the beginning, keeps what belongs to the
simulated run (its source_ref prefix), and reports recall, false hits, duplicate hits and
the count of distinct events and of input messages dropped as duplicates.

A truth file of `intelbus simulate --workflow` (summary "mode": "workflow") is checked
against the workflow history the bus stored (ClickHouse `workflow_events`, one row per event
id): every reminder, resend and escalation of its items exactly, none missing, none extra,
none twice, each with its addressees and its time relative to the item's sending.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field

from schemas import catalog


@dataclass
class Verdict:
    expected_hits: int
    found_hits: int
    missing: list[dict] = field(default_factory=list)
    false_hits: list[dict] = field(default_factory=list)
    duplicate_hits: int = 0          # the same hit_id on intel.hit more often than its province copies
    expected_events: int = 0
    distinct_events: int = 0
    expected_duplicates: int = 0
    duplicates_dropped: int = 0      # distinct input messages on intel.duplicates (a replayed drop counts once)
    by_type: dict = field(default_factory=dict)  # hit type -> {expected, found, missing, false}

    @property
    def recall(self) -> float:
        return 1.0 if not self.expected_hits else (self.expected_hits - len(self.missing)) / self.expected_hits

    @property
    def exact(self) -> bool:
        return not self.missing and not self.false_hits and not self.duplicate_hits and \
            self.distinct_events == self.expected_events and self.duplicates_dropped == self.expected_duplicates

    def summary(self) -> dict:
        return {"expected_hits": self.expected_hits, "found_hits": self.found_hits, "recall": round(self.recall, 6),
                "missing": len(self.missing), "false_hits": len(self.false_hits),
                "duplicate_hits": self.duplicate_hits, "expected_events": self.expected_events,
                "distinct_events": self.distinct_events, "expected_duplicates": self.expected_duplicates,
                "duplicates_dropped": self.duplicates_dropped, "by_type": self.by_type, "exact": self.exact}


def load_truth(path: str) -> tuple[dict, dict[str, dict]]:
    """(summary, hits by id); records of other types (workflow_item, workflow_step) are left out."""
    summary, hits = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            if item.get("type") == "summary":
                summary = item
            elif item.get("type", "hit") == "hit" and "hit_id" in item:
                hits[item["hit_id"]] = item
    return summary, hits


def load_workflow_scorecard(path: str) -> list[dict]:
    """The truth's expected scorecard rows (type workflow_scorecard), one per agency."""
    with open(path, encoding="utf-8") as f:
        return [{k: v for k, v in rec.items() if k != "type"} for rec in map(json.loads, f)
                if rec.get("type") == "workflow_scorecard"]


def load_workflow_truth(path: str) -> tuple[dict, list[dict], list[dict]]:
    """(summary, workflow_item records, workflow_step records) of a truth file."""
    summary, items, steps = {}, [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            kind = rec.get("type")
            if kind == "summary":
                summary = rec
            elif kind == "workflow_item":
                items.append(rec)
            elif kind == "workflow_step":
                steps.append(rec)
    return summary, items, steps


def _ref_of(record_key: str) -> str:
    return record_key.split("/", 2)[2] if record_key.count("/") >= 2 else ""


def read_topic(settings, topics: list[str], *, idle_seconds: float = 3.0, timeout: float = 600.0):
    """Every message of the topics, from the beginning until `idle_seconds` bring nothing new."""
    from confluent_kafka import Consumer, TopicPartition

    from ops.kafka_auth import ADMIN

    consumer = Consumer({**settings.kafka_config(ADMIN), "group.id": f"verify-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        assignment = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            assignment += [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(assignment)
        last, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - last < idle_seconds and time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.5)
            for msg in batch:
                if not msg.error():
                    yield msg
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()


def verify(settings, truth_path: str, *, idle_seconds: float = 3.0) -> Verdict:
    from schemas.wire import SchemaCodec

    summary, expected = load_truth(truth_path)
    prefix = summary.get("ref_prefix", "")
    codec = SchemaCodec(url=settings.registry_url)
    copies: dict[str, list[str]] = {}
    found: dict[str, dict] = {}
    for msg in read_topic(settings, [catalog.HIT_TOPIC], idle_seconds=idle_seconds):
        hit = codec.decode(msg.value())
        if prefix and not _ref_of(hit["record_key"]).startswith(prefix):
            continue
        hid = str(hit["hit_id"])
        found[hid] = hit
        copies.setdefault(hid, []).append(msg.key().decode() if msg.key() else "")
    verdict = Verdict(expected_hits=len(expected), found_hits=len(found))
    verdict.missing = [h for hid, h in expected.items() if hid not in found]
    verdict.false_hits = [
        {"hit_id": hid, "hit_type": h["hit_type"], "record_key": h["record_key"],
         "trigger_event_id": str(h["trigger_event_id"]), "owner_region": h["owner_region"], "hit_region": h["hit_region"]}
        for hid, h in found.items() if hid not in expected
    ]
    verdict.duplicate_hits = sum(len(keys) - len(set(keys)) for keys in copies.values())
    verdict.by_type = hits_by_type(expected, found)
    events = set()
    unique_topics = list(catalog.UNIQUE_TOPICS)
    for msg in read_topic(settings, unique_topics, idle_seconds=idle_seconds):
        key = (msg.key() or b"").decode()
        if prefix and not _ref_of(key).startswith(prefix):
            continue
        events.add(str(codec.decode(msg.value())["event_id"]))
    verdict.expected_events = summary.get("distinct_events", 0)
    verdict.distinct_events = len(events)
    verdict.expected_duplicates = summary.get("duplicates", 0)
    verdict.duplicates_dropped = count_dropped_duplicates(
        (msg.value() for msg in read_topic(settings, [catalog.DUPLICATES_TOPIC], idle_seconds=idle_seconds)), prefix)
    return verdict


def hits_by_type(expected: dict, found: dict) -> dict:
    """Per hit type: hits expected, found (of that type on the bus), missing and false."""
    out: dict[str, dict] = {}
    for hid, h in expected.items():
        t = out.setdefault(h["hit_type"], {"expected": 0, "found": 0, "missing": 0, "false": 0})
        t["expected"] += 1
        t["missing"] += hid not in found
    for hid, h in found.items():
        t = out.setdefault(h["hit_type"], {"expected": 0, "found": 0, "missing": 0, "false": 0})
        t["found"] += 1
        t["false"] += hid not in expected
    return dict(sorted(out.items()))


def count_dropped_duplicates(values, prefix: str) -> int:
    """Input messages the dedupe stage dropped, counted by where they were read
    (topic/partition/offset): a batch read again after a crash or a rebalance drops its
    duplicates a second time, and those are the same messages."""
    sources = set()
    for value in values:
        try:
            drop = json.loads(value)
            record_key, source = drop["record_key"], drop["source"]
        except (ValueError, TypeError, KeyError):
            continue  # not a dedupe drop (a benchmark's filler, say): no run's duplicate
        if prefix and not _ref_of(record_key).startswith(prefix):
            continue
        sources.add(source)
    return len(sources)


# --- workflow traffic ---------------------------------------------------------------------------

STEP_EVENTS = ("REMINDED", "RESENT", "ESCALATED", "STALE_LISTING")
WORKFLOW_COLUMNS = ("event_id", "item_id", "item_kind", "event_type", "seq", "at_ms", "party", "to", "deadline",
                    "level", "due_ms", "scheduled_ms", "code")
APPROXIMATE = ("response_median_s", "response_p90_s")


@dataclass
class WorkflowVerdict:
    expected_steps: int
    found_steps: int
    items: int
    unplayed: list[str] = field(default_factory=list)          # items of the truth the play never sent
    unseen: list[str] = field(default_factory=list)            # items sent but absent from the history
    missing: list[dict] = field(default_factory=list)          # a step the truth lists and the bus did not send
    extra: list[dict] = field(default_factory=list)            # a step the bus sent and the truth does not list
    wrong: list[dict] = field(default_factory=list)            # sent, but to others, or at another time
    twice: list[dict] = field(default_factory=list)            # the same step under two event ids
    off_plan: list[dict] = field(default_factory=list)         # a person's action stored on the other side of a step
    lost: list[dict] = field(default_factory=list)             # a person's action the history does not hold
    scorecard_rows: int = 0                                    # agencies in the truth's scorecard
    scorecard_diffs: list[dict] = field(default_factory=list)  # an agency's column that differs
    scorecard_sql: str = ""                                    # where the named query ran, over what
    scorecard_sql_rows: int = 0                                # agencies in its result
    scorecard_sql_error: str = ""                              # why it could not run
    tolerance_s: float = 0.0                                   # for the response times (the plan's margin)
    max_displacement_ms: int = 0                               # the largest |stored - planned| of an action

    @property
    def exact(self) -> bool:
        return not (self.unplayed or self.unseen or self.missing or self.extra or self.wrong or self.twice
                    or self.off_plan or self.lost or self.scorecard_diffs or self.scorecard_sql_error)

    def summary(self) -> dict:
        return {"mode": "workflow", "items": self.items, "expected_steps": self.expected_steps,
                "found_steps": self.found_steps, "missing": len(self.missing), "extra": len(self.extra),
                "wrong": len(self.wrong), "twice": len(self.twice), "unplayed": len(self.unplayed),
                "unseen": len(self.unseen), "off_plan": len(self.off_plan), "lost": len(self.lost),
                "times": "exact (relative to the item's SENT/ISSUED event)",
                "scorecard_rows": self.scorecard_rows, "scorecard_diffs": len(self.scorecard_diffs),
                "scorecard_sql": self.scorecard_sql_error and f"not run: {self.scorecard_sql_error}" or self.scorecard_sql,
                "scorecard_sql_rows": self.scorecard_sql_rows,
                "scorecard_sql_diffs": sum(d.get("source") == "named query" for d in self.scorecard_diffs),
                "scorecard": f"counts and shares exact; response median and p90 within {self.tolerance_s:g} s "
                             f"(the larger of the plan's margin and the largest distance of a stored action from "
                             f"its plan, {self.max_displacement_ms / 1000:g} s here: an order statistic moves no "
                             f"more than its values do)",
                "exact": self.exact}

    def lines(self) -> list[str]:
        """What differs, one line each, by item."""
        out = [f"unplayed: {r}" for r in self.unplayed] + [f"not in the history: {i}" for i in self.unseen]
        if self.scorecard_sql_error:
            out.append(f"scorecard (named query): could not run: {self.scorecard_sql_error}")
        for label, rows in (("missing", self.missing), ("extra", self.extra), ("wrong", self.wrong),
                            ("twice", self.twice), ("action off its plan (the truth does not hold for it)", self.off_plan),
                            ("action not in the history", self.lost), ("scorecard", self.scorecard_diffs)):
            out += [f"{label}: {json.dumps(r, ensure_ascii=False)}" for r in
                    sorted(rows, key=lambda r: (r.get("item_id") or "", r.get("deadline") or "", r.get("level") or 0))]
        return out


def _step_view(r: dict) -> dict:
    return {k: r.get(k) for k in ("item_id", "ref", "deadline", "level", "event_type", "party", "to", "after_ms")
            if r.get(k) is not None}


def compare_workflow(items: list[dict], steps: list[dict], rows: list[dict]) -> WorkflowVerdict:
    """The truth's steps against the bus's stored events (dicts of WORKFLOW_COLUMNS, one per event id).

    Exact: a step is the same when its item, deadline and level are; it must then have the
    truth's event type, party and addressees, be scheduled at the truth's offset from the
    item's SENT/ISSUED event (`after_ms`), and its deadline at `due_after_ms` from it (a
    directive's due time: `due_at_ms`, the time the play sent).
    """
    ids = {i["ref"]: i.get("item_id") for i in items}
    v = WorkflowVerdict(expected_steps=len(steps), found_steps=0, items=len(items))
    v.unplayed = sorted(ref for ref, iid in ids.items() if not iid)
    anchor: dict[str, int] = {}
    for r in rows:
        if r["event_type"] in ("SENT", "ISSUED", "OPENED"):
            anchor[r["item_id"]] = int(r["at_ms"])
    v.unseen = sorted(iid for iid in ids.values() if iid and iid not in anchor)
    ref_of = {iid: ref for ref, iid in ids.items() if iid}
    expected = {}
    for s in steps:
        iid = s.get("item_id") or ids.get(s["ref"])
        expected[(iid, s["deadline"], int(s["level"]), int(s.get("occurrence") or 0))] = {**s, "item_id": iid}
    found: dict[tuple, list[dict]] = {}
    occurrence = _occurrences(rows)
    for r in rows:
        if r["event_type"] in STEP_EVENTS and r["item_id"] in ref_of:
            found.setdefault((r["item_id"], r["deadline"], int(r["level"]), occurrence[id(r)]), []).append(r)
    by_item: dict[str, list[dict]] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(r)
    v.found_steps = sum(len(x) for x in found.values())
    for key, want in expected.items():
        got = found.get(key)
        if not got:
            v.missing.append(_step_view(want))
            continue
        if len({g["event_id"] for g in got}) > 1:
            v.twice.append({**_step_view(want), "event_ids": sorted({g["event_id"] for g in got})})
        g = got[0]
        base = anchor.get(key[0])
        problems = []
        if g["event_type"] != want["event_type"]:
            problems.append(f"event {g['event_type']}, not {want['event_type']}")
        if (g.get("party") or "") != want["party"]:
            problems.append(f"party {g.get('party')}, not {want['party']}")
        if list(g["to"]) != list(want["to"]):
            problems.append(f"to {list(g['to'])}, not {want['to']}")
        step_offset = int(want["after_ms"]) - int(want["due_after_ms"])
        if g.get("scheduled_ms") is None or g.get("due_ms") is None:
            problems.append("no scheduled or due time")
        else:
            if int(g["scheduled_ms"]) - int(g["due_ms"]) != step_offset:
                problems.append(f"scheduled {int(g['scheduled_ms']) - int(g['due_ms'])} ms after its deadline, "
                                f"not {step_offset}")
            if want.get("due_at_ms") is not None:
                if int(g["due_ms"]) != int(want["due_at_ms"]):
                    problems.append(f"due at {g['due_ms']}, not {want['due_at_ms']}")
            elif want.get("set_by") not in (None, "OPENED"):
                setter = set_at(by_item.get(key[0], []), want["set_by"], int(g["due_ms"]))
                if setter is None:
                    problems.append(f"no stored {want['set_by']} that set its deadline")
                elif int(g["due_ms"]) - setter != int(want["window_ms"]):
                    problems.append(f"due {int(g['due_ms']) - setter} ms after its {want['set_by']}, "
                                    f"not {want['window_ms']}")
            elif base is not None and int(g["due_ms"]) - base != int(want["due_after_ms"]):
                problems.append(f"due {int(g['due_ms']) - base} ms after sending, not {want['due_after_ms']}")
        if problems:
            v.wrong.append({**_step_view(want), "problems": problems})
    check_actions(v, items, rows, anchor)
    for key, got in found.items():
        if key not in expected:
            g = got[0]
            extra = {"item_id": key[0], "ref": ref_of.get(key[0]), "deadline": key[1], "level": key[2],
                     "event_type": g["event_type"], "to": list(g["to"]), "event_ids": [x["event_id"] for x in got]}
            if key[3]:
                extra["occurrence"] = key[3]
            late = _applied_after(g, [r for r in rows if r["item_id"] == key[0]])
            if late:
                extra["why"] = late
            v.extra.append(extra)
    return v


MOVABLE = ("confirm",)  # the only deadline whose due time moves (DETAINED, NEED_TIME); others keep theirs


def _occurrences(rows: list[dict]) -> dict[int, int]:
    """id(row) -> which due time of its deadline a step row belongs to (0, 1, ... by due time): a hit's
    confirmation deadline moved by DETAINED or NEED_TIME fires the steps of each due time under one name.
    The steps of an earlier due time fire before what moved it, and the later one lies after that, so
    the due times of fired steps are in the order they were set."""
    dues: dict[tuple, set] = {}
    for r in rows:
        if r["event_type"] in STEP_EVENTS and r.get("due_ms") is not None and r["deadline"] in MOVABLE:
            dues.setdefault((r["item_id"], r["deadline"]), set()).add(int(r["due_ms"]))
    rank = {k: {d: n for n, d in enumerate(sorted(v))} for k, v in dues.items()}
    return {id(r): rank.get((r["item_id"], r["deadline"]), {}).get(int(r["due_ms"]) if r.get("due_ms") is not None
                                                                     else -1, 0) for r in rows}


def set_at(item_rows: list[dict], set_by: str, due_ms: int | None = None) -> int | None:
    """When what set a hit's deadline was stored: a DETAINED report or a NEED_TIME carrying that due time
    (their events carry it), or for the stale-listing reminder the later of the first CONFIRMED and the
    first DETAINED report."""
    def first(pred):
        return min((int(r["at_ms"]) for r in item_rows if pred(r)), default=None)

    if set_by == "STALE":
        confirmed = first(lambda r: r["event_type"] == "CONFIRMED")
        detained = first(lambda r: r["event_type"] == "ACTION_REPORTED" and r.get("code") == "DETAINED")
        return None if confirmed is None or detained is None else max(confirmed, detained)
    if set_by == "DETAINED":
        return first(lambda r: r["event_type"] == "ACTION_REPORTED" and r.get("code") == "DETAINED"
                     and (due_ms is None or r.get("due_ms") == due_ms))
    if set_by == "NEED_TIME":
        return first(lambda r: r["event_type"] == "NEED_TIME" and (due_ms is None or r.get("due_ms") == due_ms))
    return first(lambda r: r["event_type"] in ("SENT", "ISSUED", "OPENED"))


def _applied_after(step: dict, item_rows: list[dict]) -> str | None:
    """Why a step may have fired that the truth does not list: the job applied, after firing it, an
    action stamped before the step's time (the command reached the job late)."""
    if step.get("scheduled_ms") is None:
        return None
    for r in sorted(item_rows, key=lambda r: int(r.get("seq") or 0)):
        if int(r.get("seq") or 0) > int(step.get("seq") or 0) and r["event_type"] in _ENDING \
                and (r["event_type"] == "CLOSED" or (r.get("party") or "") == (step.get("party") or "")) \
                and int(r["at_ms"]) < int(step["scheduled_ms"]):
            return (f"fired before the job applied {r['event_type']} stamped "
                    f"{int(step['scheduled_ms']) - int(r['at_ms'])} ms before the step was due: "
                    f"the command reached the workflow job after the step's time")
    return None


_ENDING = ("ACCEPTED", "ANSWERED", "REFUSED", "CLOSED", "ACKNOWLEDGED", "DONE", "CANNOT")


ACTION_EVENTS = {"accept": ("ACCEPTED",), "answer": ("ANSWERED",), "refuse": ("REFUSED",), "close": ("CLOSED",),
                 "act": ("ACTED",), "ack": ("ACKNOWLEDGED",), "report": ("DONE", "CANNOT")}
HIT_ACTION_EVENTS = {"report": ("ACTION_REPORTED",), "need_time": ("NEED_TIME",), "confirm": ("CONFIRMED", "NOT_VALID"),
                     "arrest": ("LISTING_CLOSED",)}


def check_actions(v: WorkflowVerdict, items: list[dict], rows: list[dict], anchor: dict[str, int]) -> None:
    """The truth's premise: each person's action was stored on the planned side of every step of its
    item (the time the gateway stamped, relative to the item's stamped sending). The simulator keeps a
    margin around every step; on a machine loaded beyond it, an action can land across one, and the
    truth is then not the bus's fault: listed here as off its plan."""
    by_item: dict[str, list[dict]] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(r)
    for it in items:
        iid = it.get("item_id")
        if not iid or iid not in anchor:
            continue
        evs = by_item.get(iid, [])
        issued = next((r for r in evs if r["event_type"] in ("SENT", "ISSUED", "OPENED")), None)
        kinds = HIT_ACTION_EVENTS if it["item_kind"] == "HIT_FOLLOW_UP" else ACTION_EVENTS
        for a in it.get("actions", []):
            if a["verb"] not in kinds:
                continue  # a hit's sighting: its follow-up's opening is the anchor
            region = a["agency"].split("/", 1)[0]
            party = a["agency"] if it["item_kind"] == "ASSISTANCE_REQUEST" else region
            got = [r for r in evs if r["event_type"] in kinds[a["verb"]]
                   and (a["verb"] == "close" or (r.get("party") or "") == party)]
            if not got:
                v.lost.append({"item_id": iid, "ref": it["ref"], "verb": a["verb"], "agency": a["agency"]})
                continue
            actual = int(got[0]["at_ms"]) - anchor[iid]
            planned = int(a["planned_ms"])
            v.max_displacement_ms = max(v.max_displacement_ms, abs(actual - planned))
            for d in it.get("deadlines", []):
                due_actual = d["due_after_ms"]
                if d["name"].startswith("due:") and issued is not None and issued.get("due_ms") is not None:
                    due_actual = int(issued["due_ms"]) - anchor[iid]
                elif d.get("set_by") not in (None, "OPENED"):
                    setter = set_at(evs, d["set_by"])
                    if setter is None:
                        continue  # what set it is not stored: listed as lost, or the step as wrong
                    due_actual = setter - anchor[iid] + int(d["window_ms"])
                for k in range(d["levels"] + 1):
                    b_plan, b_real = d["due_after_ms"] + k * d["step_ms"], due_actual + k * d["step_ms"]
                    if (planned < b_plan) != (actual < b_real):
                        v.off_plan.append({"item_id": iid, "ref": it["ref"], "verb": a["verb"], "agency": a["agency"],
                                           "planned_ms": planned, "stored_ms": actual, "deadline": d["name"],
                                           "level": k, "step_ms": b_real})


def compare_scorecard(v: WorkflowVerdict, expected: list[dict], rows: list[dict], period, tolerance_s: float) -> None:
    """The scorecard of the stored events (workflows.scorecard over the truth's items, the truth's
    period) against the truth's: every column of every agency equal, the response times within
    `tolerance_s`. An order statistic moves by no more than the largest move of any one value, so
    the plan's margin bounds how far a correct bus's medians can be from the plan's."""
    from workflows.scorecard import scorecard

    v.scorecard_rows, v.tolerance_s = len(expected), tolerance_s
    if not expected:
        return
    _compare_rows(v, expected, scorecard(rows, start_ms=int(period[0]), end_ms=int(period[1])), tolerance_s,
                  "workflows.scorecard")


def compare_sql_scorecard(v: WorkflowVerdict, expected: list[dict], sql_rows: list[dict], tolerance_s: float,
                          where: str) -> None:
    """The named query's rows (sinks/queries/scorecard.sql, run over the run's events) against the truth's,
    row by row and column by column as compare_scorecard does; a difference names the agency, the column
    and `"source": "named query"`."""
    v.scorecard_sql, v.scorecard_sql_rows = where, len(sql_rows)
    _compare_rows(v, expected, sql_rows, tolerance_s, "named query")


def _compare_rows(v: WorkflowVerdict, expected: list[dict], got_rows: list[dict], tolerance_s: float, source: str):
    got = {r["agency"]: r for r in got_rows}
    want = {r["agency"]: r for r in expected}
    for agency in sorted(set(got) | set(want)):
        g, w = got.get(agency), want.get(agency)
        if g is None or w is None:
            v.scorecard_diffs.append({"agency": agency, "source": source,
                                      "problem": "not in the bus's scorecard" if g is None
                                      else "not in the truth's scorecard"})
            continue
        for col, expected_value in w.items():
            value = g.get(col)
            if col in APPROXIMATE and value is not None and expected_value is not None:
                if abs(float(value) - float(expected_value)) <= tolerance_s:
                    continue
            elif isinstance(expected_value, float) and isinstance(value, (int, float)) and value is not None:
                if abs(value - expected_value) < 1e-9:
                    continue
            elif value == expected_value:
                continue
            v.scorecard_diffs.append({"agency": agency, "column": col, "truth": expected_value, "bus": value,
                                      "source": source})


def named_scorecard(ex, database: str, period, item_ids: list[str], *, events: list[dict] | None = None) -> list[dict]:
    """sinks/queries/scorecard.sql (as the gateway runs it, unscoped, by agency) over exactly the run's
    events, on the server `ex` talks to: they are copied into a scratch database of their own (from
    `database`.workflow_events, or `events`, decoded intel.workflow records, when a workflow job wrote
    them to a topic the sink does not read), the query runs there, and the database is dropped. The
    stack's history holds everyone's items in the same period; the scratch copy holds the run's alone.
    ClickHouse 18.16 and chDB."""
    from datetime import datetime, timezone

    from gateway.history import UNSCOPED, in_database
    from sinks.engine import sql_literal
    from sinks.queries import load_queries
    from sinks.rows import WORKFLOW_COLUMNS as SINK_COLUMNS, workflow_row
    from workflows.scorecard import COLUMNS

    def utc(ms):
        return datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    scratch = f"verify_{uuid.uuid4().hex[:12]}"
    ex.execute(f"CREATE DATABASE {scratch}")
    try:
        ex.execute(f"CREATE TABLE {scratch}.workflow_events AS {database}.workflow_events")
        if events is not None:
            # a decoded record's times may be datetimes (timestamp-millis): the sink's row wants UTC ms
            rows = [workflow_row({**e, "at": _ms(e["at"]), "due_at": _ms(e.get("due_at")),
                                  "scheduled_at": _ms(e.get("scheduled_at"))},
                                 topic="verify", partition=0, offset=n, ingested_ms=0) for n, e in enumerate(events)]
            saved, ex.database = ex.database, scratch
            try:
                for n in range(0, len(rows), 1000):
                    ex.insert("workflow_events", SINK_COLUMNS, rows[n:n + 1000])
            finally:
                ex.database = saved
        elif item_ids:
            ex.execute(f"INSERT INTO {scratch}.workflow_events SELECT * FROM {database}.workflow_events "
                       f"WHERE item_id IN ({', '.join(sql_literal(i) for i in item_ids)})")
        sql = load_queries()["scorecard"].render({"from": utc(period[0]), "to": utc(period[1]), "by": "region,branch"},
                                                 UNSCOPED)
        _cols, raw = ex.query(in_database(sql, scratch))
        return [dict(zip(COLUMNS, r)) for r in raw]
    finally:
        ex.execute(f"DROP DATABASE IF EXISTS {scratch}")


def workflow_rows_sql(database: str, item_ids: list[str]) -> str:
    """The stored events of these items, one per event id (ClickHouse 18.16 and chDB)."""
    from sinks.engine import sql_literal

    return (f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM {database}.workflow_events FINAL "
            f"WHERE item_id IN ({', '.join(sql_literal(i) for i in item_ids)}) ORDER BY item_id, at_ms")


def workflow_rows(settings, item_ids: list[str], *, idle_seconds: float = 3.0, timeout: float = 120.0,
                  executor=None) -> list[dict]:
    """The stored events of these items (ClickHouse workflow_events FINAL), read again until their
    number has not changed for `idle_seconds` (the sink writes about a second behind the bus)."""
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor, database_of

    if not item_ids:
        return []
    own = executor is None
    ex = executor or DriverExecutor(clickhouse_url_as(settings, "default"))
    sql = workflow_rows_sql(database_of(settings.clickhouse_url) if settings is not None else "intelbus", item_ids)
    try:
        last_n, last_change, deadline, rows = -1, time.monotonic(), time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            cols, raw = ex.query(sql)
            rows = [dict(zip(cols, r)) for r in raw]
            if len(rows) != last_n:
                last_n, last_change = len(rows), time.monotonic()
            elif time.monotonic() - last_change >= idle_seconds:
                break
            time.sleep(0.5)
        return rows
    finally:
        if own:
            ex.close()


def _ms(value):
    if value is None:
        return None
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def avro_row(e: dict) -> dict:
    """A decoded intel.workflow record as a workflow_events row (the sink's columns)."""
    return {"event_id": str(e["event_id"]), "item_id": e["item_id"], "item_kind": e["item_kind"],
            "event_type": e["event_type"], "seq": int(e.get("seq") or 0), "at_ms": _ms(e["at"]),
            "party": e.get("party") or "", "to": list(e.get("to") or ()), "deadline": e.get("deadline") or "",
            "level": int(e.get("level") or 0), "due_ms": _ms(e.get("due_at")), "scheduled_ms": _ms(e.get("scheduled_at")),
            "code": e.get("code") or ""}


def topic_workflow_rows(settings, topic: str, item_ids: list[str], *, idle_seconds: float = 3.0,
                        decoded: list | None = None) -> list[dict]:
    """The events of these items on a workflow topic (intel.workflow's Avro), one per event id
    (`decoded`, when given, receives each decoded record too)."""
    from schemas.wire import SchemaCodec

    codec = SchemaCodec(url=settings.registry_url)
    wanted, rows, seen = set(item_ids), [], set()
    for msg in read_topic(settings, [topic], idle_seconds=idle_seconds):
        if (msg.key() or b"").decode(errors="replace") not in wanted:
            continue
        event = codec.decode(msg.value())
        row = avro_row(event)
        if row["item_id"] in wanted and row["event_id"] not in seen:
            seen.add(row["event_id"])
            rows.append(row)
            if decoded is not None:
                decoded.append(event)
    return rows


def verify_workflow(settings, truth_path: str, *, idle_seconds: float = 3.0, topic: str | None = None) -> WorkflowVerdict:
    """The truth against the stored history (workflow_events), or against the events on `topic`."""
    summary, items, steps = load_workflow_truth(truth_path)
    ids = [i["item_id"] for i in items if i.get("item_id")]
    decoded: list = []
    rows = topic_workflow_rows(settings, topic, ids, idle_seconds=idle_seconds, decoded=decoded) if topic else \
        workflow_rows(settings, ids, idle_seconds=idle_seconds)
    verdict = compare_workflow(items, steps, rows)
    if summary.get("scorecard_period"):
        expected = load_workflow_scorecard(truth_path)
        tolerance = max(summary.get("margin_ms", 0), verdict.max_displacement_ms) / 1000
        compare_scorecard(verdict, expected, rows, summary["scorecard_period"], tolerance)
        sql_scorecard(verdict, settings, expected, summary["scorecard_period"], ids, tolerance,
                      events=decoded if topic else None, topic=topic)
    return verdict


def sql_scorecard(v: WorkflowVerdict, settings, expected: list[dict], period, item_ids: list[str], tolerance: float,
                  *, events=None, topic: str | None = None) -> None:
    """Run the named query on the stack's ClickHouse over the run's events and compare it with the truth."""
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor, database_of

    database = database_of(settings.clickhouse_url)
    try:
        ex = DriverExecutor(clickhouse_url_as(settings, "default"))
        try:
            version = ex.query("SELECT version()")[1][0][0]
            rows = named_scorecard(ex, database, period, item_ids, events=events)
        finally:
            ex.close()
    except Exception as exc:  # noqa: BLE001 - the verdict says why, and is not exact
        v.scorecard_sql_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        return
    source = (f"the {len(events)} events of topic {topic} (the sink does not read it)" if events is not None
              else f"{database}.workflow_events (as the sink stored them)")
    compare_sql_scorecard(v, expected, rows, tolerance,
                          f"sinks/queries/scorecard.sql on ClickHouse {version}, over {source} copied into a "
                          f"scratch database")


def add_verify(p):
    p.add_argument("--truth", required=True, help="the ground-truth file written by `intelbus simulate --truth`")
    p.add_argument("--idle", type=float, default=3.0, help="seconds without new messages that end the reading (default 3)")
    p.add_argument("--workflow-topic", metavar="TOPIC",
                   help="a workflow truth: read the events from this topic (a workflow job's own output, "
                        "INTELBUS_WORKFLOWS_OUTPUT_TOPIC) instead of the stored history")
    p.epilog = ("Exit code 0 when the bus produced exactly the expected hits (no missing, no false, no duplicate)\n"
                "and exactly the expected numbers of distinct events and of dropped duplicates; 1 otherwise.\n"
                "A workflow truth (`intelbus simulate --workflow --truth`): exit 0 when the stored history holds\n"
                "exactly its reminders, resends and escalations (item, deadline, level, addressees, times); the\n"
                "differences are listed by item.")

    def run(args):
        from ops.settings import load_settings

        summary, _hits = load_truth(args.truth)
        if summary.get("mode") == "workflow":
            wverdict = verify_workflow(load_settings(), args.truth, idle_seconds=args.idle, topic=args.workflow_topic)
            print(json.dumps(wverdict.summary()))
            lines = wverdict.lines()
            for line in lines[:50]:
                print(line, file=sys.stderr)
            if len(lines) > 50:
                print(f"... and {len(lines) - 50} more", file=sys.stderr)
            print("verdict: exact: every reminder, resend and escalation as the truth lists it" if wverdict.exact
                  else f"verdict: NOT exact: {len(wverdict.missing)} missing, {len(wverdict.extra)} extra, "
                       f"{len(wverdict.wrong)} wrong, {len(wverdict.twice)} twice", file=sys.stderr)
            return 0 if wverdict.exact else 1
        verdict = verify(load_settings(), args.truth, idle_seconds=args.idle)
        print(json.dumps(verdict.summary()))
        for h in verdict.missing[:10]:
            print(f"missing: {json.dumps(h, ensure_ascii=False)}", file=sys.stderr)
        for h in verdict.false_hits[:10]:
            print(f"false hit: {json.dumps(h, ensure_ascii=False)}", file=sys.stderr)
        return 0 if verdict.exact else 1

    return run
