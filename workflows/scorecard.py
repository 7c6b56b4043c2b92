"""The accountability scorecard (DOMAIN.md section 10, issue 16): per agency and period, a pure
function over workflow events (rows of `workflow_events`, or `WorkflowEvent.to_avro()` dicts).

    scorecard(events, start_ms=..., end_ms=..., by=("region", "branch")) -> [row, ...]

`sinks/queries/scorecard.sql` computes the same rows on ClickHouse; the simulator's truth calls
this function for the scorecard a correct bus must show. The definitions (docs/workflows.md,
"Scorecard"):

- **Period.** An item belongs to the period in which it started (request `SENT`, hit follow-up
  `OPENED`, directive `ISSUED`; start_ms <= at < end_ms), and its whole history counts, whenever
  it happens: a request sent on the period's last evening and accepted the next morning is in
  this period's figures. A period's figures are final once its last items' deadlines have passed.
- **Per addressee.** A request sent to three agencies is three requests received, one per
  addressee, each judged by its own events (`party` = the addressee).
- **On time** is judged by the deadlines the events carry, never a fixed hour: accepted on time
  when the addressee's first `ACCEPTED` is at or before the `SENT` event's due time (the accept
  deadline, 1 h by default); answered on time when its first `ANSWERED` is at or before the due
  time its `ACCEPTED` event carries (the answer deadline, 4 h after sending by default). The
  share is of the requests received (unanswered ones count as not on time); null when none.
- **Response time**: from `SENT` to the addressee's first `ACCEPTED`, `REFUSED` or `ANSWERED`,
  in seconds; addressees that never responded are not in it (`responded` says how many are).
  Median and p90 are order statistics by nearest rank over the sorted times v[1..n]: the median
  is v[ceil(n/2)] (the lower median), p90 is v[ceil(9n/10)]; null when n = 0.
- **Escalations**: `ESCALATED` events whose party is the agency, on items of the period (each
  level is one event; requests, hit follow-ups and directives alike).
- **Refusals**: addressees whose request they `REFUSED`, by the reason (the event's code).
- **Hits**: follow-ups opened in the period whose owner region is the agency (`hits_owed`);
  confirmed on time when the owner's first `CONFIRMED` or `NOT_VALID` is at or before the
  confirmation deadline last set for the follow-up: the due time of its last event carrying one
  (`OPENED`, a `DETAINED` report, `NEED_TIME`, a reminder or escalation of it), stale-listing
  events excepted. `stale_listings`: `STALE_LISTING` events of those follow-ups.
- **Agencies.** Requests are owed by an agency (REGION/BRANCH); hit follow-ups and directives by a
  region, so their figures (hits, stale listings, their escalations) are on a row of the region
  alone (branch ""). by=("region",) adds every branch of a region, and those rows, into one row.

Events are ordered within an item by (seq, at, event_id); an event id seen twice counts once.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

REFUSAL_REASONS = ("NOT_COMPETENT", "INSUFFICIENT_INFORMATION", "NO_LEGAL_BASIS", "DUPLICATE", "NO_CAPACITY", "OTHER")
START_TYPES = {"ASSISTANCE_REQUEST": "SENT", "HIT_FOLLOW_UP": "OPENED", "DIRECTIVE": "ISSUED"}
RESPONSES = ("ACCEPTED", "REFUSED", "ANSWERED")
OWNER_ANSWERS = ("CONFIRMED", "NOT_VALID")

COLUMNS = (
    "agency", "region", "branch",
    "requests_received", "accepted_on_time", "accepted_on_time_share", "answered_on_time", "answered_on_time_share",
    "responded", "response_median_s", "response_p90_s",
    "escalations", "refusals", *(f"refused_{r.lower()}" for r in REFUSAL_REASONS),
    "hits_owed", "hits_confirmed_on_time", "hits_confirmed_on_time_share", "stale_listings",
)
BY_CHOICES = (("region", "branch"), ("region",))


def _get(ev: Mapping, *names):
    """The first of the columns present and set ('' and None both mean unset, as the sink stores them)."""
    for name in names:
        value = ev.get(name)
        if value is not None and value != "":
            return value
    return None


def _at(ev: Mapping) -> int:
    value = ev.get("at_ms")
    return int(value if value is not None else ev["at"])


def _due(ev: Mapping) -> int | None:
    value = _get(ev, "due_ms", "due_at")
    return int(value) if value else None


def _key(ev: Mapping):
    return (int(ev.get("seq") or 0), _at(ev), str(ev["event_id"]))


def nearest_rank(sorted_values: Sequence, numerator: int, denominator: int):
    """v[ceil(n * numerator / denominator)] of sorted values v[1..n] (None when empty): median 1/2, p90 9/10."""
    n = len(sorted_values)
    if n == 0:
        return None
    k = (n * numerator + denominator - 1) // denominator
    return sorted_values[max(k, 1) - 1]


def _share(part: int, whole: int):
    return part / whole if whole else None


class _Tally:
    def __init__(self):
        self.received = self.accepted_on_time = self.answered_on_time = 0
        self.response_ms: list[int] = []
        self.escalations = 0
        self.refusals = {r: 0 for r in REFUSAL_REASONS}
        self.refusals_total = 0
        self.hits_owed = self.hits_on_time = self.stale = 0


def scorecard(events: Iterable[Mapping], *, start_ms: int, end_ms: int,
              by: Sequence[str] = ("region", "branch")) -> list[dict]:
    """One row per agency (sorted by agency) for the items started in [start_ms, end_ms); see the module doc."""
    by = tuple(by)
    if by not in BY_CHOICES:
        raise ValueError(f"by must be region,branch or region, not {','.join(by)!r}")
    per_item: dict[str, list[Mapping]] = {}
    seen: set[str] = set()
    for ev in events:
        event_id = str(ev["event_id"])
        if event_id in seen:
            continue
        seen.add(event_id)
        per_item.setdefault(ev["item_id"], []).append(ev)

    tallies: dict[str, _Tally] = {}

    def tally(party: str) -> _Tally:
        key = party if by == ("region", "branch") else party.split("/", 1)[0]
        return tallies.setdefault(key, _Tally())

    for item_events in per_item.values():
        item_events.sort(key=_key)
        starts = [e for e in item_events if e["event_type"] in START_TYPES.values()]
        if not starts:
            continue  # its start is not among the events (another period's item seen in part, or a reader's scope)
        start = starts[0]
        if not start_ms <= _at(start) < end_ms:
            continue
        kind = start["event_type"]
        for e in item_events:
            if e["event_type"] == "ESCALATED" and _get(e, "party"):
                tally(_get(e, "party")).escalations += 1
        if kind == "SENT":
            _request(start, item_events, tally)
        elif kind == "OPENED":
            _hit(start, item_events, tally)

    rows = []
    for key in sorted(tallies):
        t = tallies[key]
        times = sorted(t.response_ms)
        median, p90 = nearest_rank(times, 1, 2), nearest_rank(times, 9, 10)
        region, _, branch = key.partition("/")
        rows.append({
            "agency": key, "region": region, "branch": branch,
            "requests_received": t.received,
            "accepted_on_time": t.accepted_on_time, "accepted_on_time_share": _share(t.accepted_on_time, t.received),
            "answered_on_time": t.answered_on_time, "answered_on_time_share": _share(t.answered_on_time, t.received),
            "responded": len(times),
            "response_median_s": None if median is None else median / 1000,
            "response_p90_s": None if p90 is None else p90 / 1000,
            "escalations": t.escalations,
            "refusals": t.refusals_total,
            **{f"refused_{r.lower()}": t.refusals[r] for r in REFUSAL_REASONS},
            "hits_owed": t.hits_owed, "hits_confirmed_on_time": t.hits_on_time,
            "hits_confirmed_on_time_share": _share(t.hits_on_time, t.hits_owed),
            "stale_listings": t.stale,
        })
    return rows


def _request(sent: Mapping, item_events: list[Mapping], tally) -> None:
    sent_ms, accept_due = _at(sent), _due(sent)
    for addressee in dict.fromkeys(sent.get("to") or ()):
        t = tally(addressee)
        t.received += 1
        mine = [e for e in item_events if _get(e, "party") == addressee]
        first = {}
        for e in mine:
            first.setdefault(e["event_type"], e)
        accepted, answered, refused = first.get("ACCEPTED"), first.get("ANSWERED"), first.get("REFUSED")
        if accepted is not None and accept_due and _at(accepted) <= accept_due:
            t.accepted_on_time += 1
        answer_due = _due(accepted) if accepted is not None else None
        if answered is not None and answer_due and _at(answered) <= answer_due:
            t.answered_on_time += 1
        response = next((e for e in mine if e["event_type"] in RESPONSES), None)
        if response is not None:
            t.response_ms.append(_at(response) - sent_ms)
        if refused is not None:
            t.refusals_total += 1
            reason = _get(refused, "code")
            if reason in t.refusals:
                t.refusals[reason] += 1


def _hit(opened: Mapping, item_events: list[Mapping], tally) -> None:
    to = list(opened.get("to") or ())
    if not to:
        return
    t = tally(to[0])  # OPENED is addressed to (owner region, hit region)
    t.hits_owed += 1
    answer = next((e for e in item_events if e["event_type"] in OWNER_ANSWERS), None)
    set_dues = [e for e in item_events if _due(e) and _get(e, "deadline") != "stale" and e["event_type"] != "STALE_LISTING"]
    due = _due(set_dues[-1]) if set_dues else None
    if answer is not None and due and _at(answer) <= due:
        t.hits_on_time += 1
    t.stale += sum(1 for e in item_events if e["event_type"] == "STALE_LISTING")
