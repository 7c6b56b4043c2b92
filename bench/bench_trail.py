"""`trail` latency over a large history: the real named query, rendered by the project's code.

The history lives in its own database, `intelbus_bench_trail` (the project's migrations
applied), and is generated server-side with `INSERT ... SELECT ... FROM numbers()` in
chunks of a million events: deterministic events over 12 months in every city and county
of schemas/codes/regions.csv, about 1.5 subjects per event. Resident IDs (valid check
digits, so `identifier_forms` keeps them as typed) come from a population of two million,
5% of the events falling on 20,000 frequent people; plates and phones come from smaller
pools. The database is kept between runs: a run that asks for no more events than are
stored (same generator version) measures straight away; `drop(settings)` removes it.

Measured: `queries` identifiers drawn from the stored subjects, each run through
`load_queries()["trail"]` exactly as `intelbus query trail` renders it (identifier forms,
entitlement scope, tables pointed at the database), once for the operator and once for a
region (130000, Hebei), timed around the driver call as the gateway times it (without the
audit insert). Target: p50 < 200 ms at 10,000,000 events.

Since the gateway (identity issue) the SQL comes from `gateway.history`: the unfiltered
trail uses `UNSCOPED` (no filter: what the operator's check used to be), the regional one
`kind_scopes` of a Hebei analyst cleared to INTERNAL (region and clearance), the filter the
gateway adds for such a caller. `bench.bench_identity` measures the gateway itself.
"""
from __future__ import annotations

import csv
import math
import random
import sys
import time
from datetime import datetime, timezone
from urllib.parse import urlparse

from ops.secrets import clickhouse_url_as  # the benchmarks connect as the ClickHouse admin

DATABASE = "intelbus_bench_trail"
GENERATOR_VERSION = 2          # bump when the generated data changes: stored data is then regenerated
CHUNK = 1_000_000              # events per INSERT ... SELECT
START = 1_764_547_200          # 2025-12-01 00:00:00 UTC; events spread over the 365 days after it
SPAN = 365 * 86_400
POPULATION = 2_000_000         # resident IDs
FREQUENT = 20_000              # the people 5% of the subjects fall on
PLATES = 500_000
PHONES = 300_000
REGION = "130000"              # the region of the region-limited trail
_WEIGHTS = "[7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]"
_PROVINCES = "['京', '津', '冀', '沪', '苏', '浙', '豫', '川']"
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # 24: no I, O
_INCIDENT_TYPES = ("CHECKPOINT_CHECK", "HOTEL_CHECKIN", "RESIDENCE_REGISTRATION", "TRAFFIC_STOP", "THEFT", "FRAUD",
                   "ROBBERY", "DRUGS", "ASSAULT", "OTHER")
_ALERT_TYPES = ("ASSIST_REQUEST", "WATCH", "WARNING")
_TITLES = ("卡口核查", "旅馆入住登记", "流动人口登记", "交通拦截检查", "盗窃案", "诈骗案", "抢劫案", "涉毒案", "伤害案", "其他警情")
_ROLES = ("CHECKED", "CHECKED", "SUSPECT", "WITNESS", "VICTIM", "OTHER")


# --- small pure helpers -------------------------------------------------------------------

def percentile(values, q: float) -> float:
    """The q-quantile (0..1) of values, linear between the closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"q must be within 0..1, not {q}")
    pos = (len(data) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_summary(ms: list[float]) -> dict:
    return {"p50_ms": round(percentile(ms, 0.50), 1), "p95_ms": round(percentile(ms, 0.95), 1),
            "max_ms": round(max(ms), 1), "mean_ms": round(sum(ms) / len(ms), 1)}


def chunks(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    """(first event number, count) of each INSERT ... SELECT."""
    return [(lo, min(size, n - lo)) for lo in range(0, n, size)]


def database_url(url: str, database: str) -> str:
    """The ClickHouse URL with another database (clickhouse://default@host:9000/intelbus -> .../database)."""
    return urlparse(url)._replace(path=f"/{database}").geturl()


def region_codes() -> list[str]:
    """The current city and county codes of schemas/codes/regions.csv (where events happen, people are from)."""
    from schemas.regions import CODES

    with open(CODES / "regions.csv", encoding="utf-8", newline="") as f:
        return [r["code"] for r in csv.DictReader(f) if r["level"] in ("city", "county") and not r["valid_to"]]


def _array(values) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


# --- the generator (SQL for ClickHouse 18.16 and current ClickHouse alike) ------------------

def _event_fields(n_total: int, regions: list[str], tag: str = "BT") -> str:
    """Columns of event `e` (the event number), as `expr AS name`, each a function of e alone.

    `tag` marks a population: source_ref `<tag>-<e>`, its own event ids, and (other than the
    default BT) titles ending in ` [bench <tag>]`, so rows generated into a shared database
    can be told apart and deleted (bench.bench_identity)."""
    r = len(regions)
    salt = "intelbus-bench-trail-" if tag == "BT" else f"intelbus-bench-{tag.lower()}-"
    suffix = "" if tag == "BT" else f" [bench {tag}]"
    return f"""
        UUIDNumToString(MD5(concat('{salt}', toString(e)))) AS event_id,
        cityHash64(e, 1) AS h1, cityHash64(e, 2) AS h2, cityHash64(e, 3) AS h3,
        if(h2 % 20 < 17, 'incident', 'alert') AS kind,
        if(kind = 'incident', {_array(_INCIDENT_TYPES)}[intDiv(h2, 20) % {len(_INCIDENT_TYPES)} + 1],
                              {_array(_ALERT_TYPES)}[intDiv(h2, 20) % {len(_ALERT_TYPES)} + 1]) AS type,
        {_array(regions)}[h1 % {r} + 1] AS region,
        region AS source_region,
        ['jwzh', 'kss', 'zazh'][intDiv(h1, {r}) % 3 + 1] AS source_system,
        concat('{tag}-', toString(e)) AS source_ref,
        toUInt32(1) AS revision,
        toDateTime({START} + intDiv(e * {SPAN}, {n_total}) + h1 % 60) AS occurred_at,
        toUInt64(toUInt32(occurred_at)) * 1000 + h2 % 1000 AS occurred_ms,
        occurred_ms + 1000 + h3 % 60000 AS reported_ms,
        ['INTERNAL', 'INTERNAL', 'INTERNAL', 'PUBLIC', 'SECRET'][h3 % 5 + 1] AS classification,
        if(intDiv(h3, 5) % 10 = 0, ['JJJ'], emptyArrayString()) AS share_scope,
        concat({_array(_TITLES)}[intDiv(h2, 20) % {len(_TITLES)} + 1], '{suffix}') AS title,
        if(kind = 'alert', 'OPEN', '') AS status,
        concat(region, ' 检查站 ', toString(intDiv(h3, 50) % 200)) AS address,
        reported_ms + 500 AS ingested_ms,
        concat('intel.', kind, '.unique') AS topic,
        toUInt16(intDiv(h1, 7) % 6) AS partition"""


def _subject_fields(j: str, sfx: str, regions: list[str]) -> str:
    """Subject number `j` (0 or 1) of event e: id_kind{sfx}, id_value{sfx}, role{sfx}."""
    r = len(regions)
    return f"""
        if({j} = 0, 0, cityHash64(e, 12) % 20) AS kind_code{sfx},
        multiIf(kind_code{sfx} < 12, 'RESIDENT_ID', kind_code{sfx} < 17, 'PLATE', 'PHONE') AS id_kind{sfx},
        if(cityHash64(e, 13, {j}) % 100 < 5, cityHash64(e, 14, {j}) % {FREQUENT}, cityHash64(e, 14, {j}) % {POPULATION}) AS person{sfx},
        concat({_array(regions)}[person{sfx} % {r} + 1],
               toString(1955 + intDiv(intDiv(person{sfx}, {r}), 1000)),  -- birth year, month, day (Date starts in 1970)
               substring(toString(101 + person{sfx} % 12), 2), substring(toString(101 + person{sfx} % 28), 2),
               substring(toString(1000 + intDiv(person{sfx}, {r}) % 1000), 2)) AS first17{sfx},
        cityHash64(e, 15, {j}) AS vehicle_or_phone{sfx},
        multiIf(id_kind{sfx} = 'RESIDENT_ID',
                concat(first17{sfx}, substring('10X98765432', arraySum(arrayMap((i, w) -> toUInt32(substring(first17{sfx}, i + 1, 1)) * w,
                                                                               range(17), {_WEIGHTS})) % 11 + 1, 1)),
                id_kind{sfx} = 'PLATE',
                concat({_PROVINCES}[vehicle_or_phone{sfx} % {PLATES} % 8 + 1],
                       substring('{_LETTERS}', intDiv(vehicle_or_phone{sfx} % {PLATES}, 8) % 24 + 1, 1),
                       substring(toString(100000 + intDiv(vehicle_or_phone{sfx} % {PLATES}, 192)), 2)),
                concat('13', substring(toString(1000000000 + vehicle_or_phone{sfx} % {PHONES} * 3331), 2))) AS id_value{sfx},
        if(id_kind{sfx} = 'RESIDENT_ID', {_array(_ROLES)}[intDiv(vehicle_or_phone{sfx}, 7) % {len(_ROLES)} + 1], '') AS role{sfx}"""


def _two_subjects(e: str = "e") -> str:
    return f"cityHash64({e}, 11) % 2 = 0"


def events_insert_sql(database: str, lo: int, count: int, n_total: int, regions: list[str], tag: str = "BT") -> str:
    from sinks.rows import EVENT_COLUMNS

    columns = [c for c in EVENT_COLUMNS if c not in ("lat", "lon")]  # NULL: the column default
    return f"""INSERT INTO {database}.events ({', '.join(columns)})
SELECT {', '.join(columns)}
FROM
(
    SELECT number AS e, {_two_subjects()} AS two,
        {_event_fields(n_total, regions, tag)},
        {_subject_fields('0', '_0', regions)},
        {_subject_fields('1', '_1', regions)},
        if(two, [concat(id_kind_0, ':', id_value_0), concat(id_kind_1, ':', id_value_1)],
                [concat(id_kind_0, ':', id_value_0)]) AS identifiers,
        concat('{{"event_id":"', event_id, '","source_region":"', source_region, '","source_system":"', source_system,
               '","source_ref":"', source_ref, '","title":"', title, '","identifiers":["', arrayStringConcat(identifiers, '","'),
               '"]}}') AS raw,
        e AS offset
    FROM numbers({lo}, {count})
)"""


def subjects_insert_sql(database: str, lo: int, count: int, n_total: int, regions: list[str], tag: str = "BT") -> str:
    from sinks.rows import SUBJECT_COLUMNS

    return f"""INSERT INTO {database}.event_subjects ({', '.join(SUBJECT_COLUMNS)})
SELECT {', '.join(SUBJECT_COLUMNS)}
FROM
(
    SELECT e, j,
        {_event_fields(n_total, regions, tag)},
        {_subject_fields('j', '', regions)}
    FROM (SELECT number AS e, if({_two_subjects('number')}, [0, 1], [0]) AS js FROM numbers({lo}, {count}))
    ARRAY JOIN js AS j
)"""


# --- preparing, measuring, dropping -------------------------------------------------------

def _client(settings, database: str = "default"):
    from clickhouse_driver import Client

    return Client.from_url(database_url(clickhouse_url_as(settings, "default"), database))


def _log(message: str) -> None:
    print(f"[bench trail] {message}", file=sys.stderr, flush=True)


def _counts(client, db: str) -> dict:
    return {t: client.execute(f"SELECT count() FROM {db}.{t}")[0][0] for t in ("events", "event_subjects")}


def prepare(settings, n_events: int, *, database: str = DATABASE) -> dict:
    """The database holding at least n_events generated events: reused when it does, (re)generated otherwise."""
    from sinks.engine import DriverExecutor
    from sinks.migrate import apply_migrations

    executor = DriverExecutor(database_url(clickhouse_url_as(settings, "default"), database), database=database)
    try:
        apply_migrations(executor)
    finally:
        executor.close()
    client = _client(settings)
    db = database
    client.execute(f"CREATE TABLE IF NOT EXISTS {db}.bench_meta (version UInt32, events UInt64, subjects UInt64, "
                   "seconds Float64, generated_at DateTime) ENGINE = TinyLog")
    meta = client.execute(f"SELECT version, events, subjects, seconds FROM {db}.bench_meta ORDER BY generated_at DESC LIMIT 1")
    counts = _counts(client, db)
    if meta:
        version, events, subjects, seconds = meta[0]
        if version == GENERATOR_VERSION and events >= n_events and counts == {"events": events, "event_subjects": subjects}:
            _log(f"reusing {db}: {events:,} events, {subjects:,} subjects (generated in {seconds:.0f} s)")
            client.disconnect()
            return {"reused": True, "generation_seconds": round(seconds, 1), "generated_events": events, **counts}
    _log(f"generating {n_events:,} events into {db} (had {counts['events']:,})")
    for table in ("events", "event_subjects", "bench_meta"):
        client.execute(f"TRUNCATE TABLE {db}.{table}")
    regions = region_codes()
    started = time.perf_counter()
    for lo, count in chunks(n_events):
        t0 = time.perf_counter()
        client.execute(events_insert_sql(db, lo, count, n_events, regions))
        t1 = time.perf_counter()
        client.execute(subjects_insert_sql(db, lo, count, n_events, regions))
        done = lo + count
        elapsed = time.perf_counter() - started
        _log(f"{done:,}/{n_events:,} events ({done / elapsed:,.0f}/s overall; this chunk: events {t1 - t0:.1f} s, "
             f"subjects {time.perf_counter() - t1:.1f} s)")
    seconds = time.perf_counter() - started
    counts = _counts(client, db)
    client.execute(f"INSERT INTO {db}.bench_meta VALUES",
                   [(GENERATOR_VERSION, counts["events"], counts["event_subjects"], seconds,
                     datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None))])
    client.disconnect()
    return {"reused": False, "generation_seconds": round(seconds, 1), "generated_events": counts["events"], **counts}


def sample_identifiers(client, db: str, k: int, seed: int) -> list[tuple[str, str]]:
    """k distinct (id_value, id_kind) that occur in the stored subjects, drawn at random (by subject row)."""
    rows = client.execute(f"SELECT id_value, any(id_kind) FROM {db}.event_subjects "
                          f"WHERE cityHash64(id_value, {seed}) % 1000 < 5 GROUP BY id_value")
    rows.sort()
    rng = random.Random(seed)
    return rng.sample(rows, min(k, len(rows)))


def region_scope(region: str, regions, clearance: str = "INTERNAL") -> dict[str, str]:
    """The filter the gateway adds for an analyst of `region` cleared to `clearance` (gateway.history.kind_scopes)."""
    from gateway.history import kind_scopes
    from identity.entitlement import Entitlement
    from identity.principals import Identity

    identity = Identity(name=f"bench-analyst-{region}", kind="person", region=region, branch="INTELLIGENCE",
                        roles=frozenset({"analyst"}), clearance=clearance)
    return kind_scopes(Entitlement(identity, regions), region)


def _time_trails(executor, db: str, identifiers, scope) -> dict:
    from gateway.history import identifier_forms, in_database
    from sinks.queries import load_queries

    trail = load_queries()["trail"]
    latencies, returned, read = [], [], []
    for value, _kind in identifiers:
        values = {"id": value, "ids": identifier_forms(value)}
        sql = in_database(trail.render(values, scope), db)
        started = time.perf_counter()
        _columns, rows = executor.query(sql, readonly=True)
        latencies.append((time.perf_counter() - started) * 1000)
        returned.append(len(rows))
        progress = getattr(getattr(executor.client, "last_query", None), "progress", None)
        read.append(getattr(progress, "rows", 0))
    return {**latency_summary(latencies), "queries": len(latencies), "rows_mean": round(sum(returned) / len(returned), 2),
            "rows_max": max(returned), "rows_total": sum(returned), "empty": sum(1 for r in returned if r == 0),
            # rows the server read per query (all tables): near the table sizes means a scan, not an index range
            "rows_read_mean": round(sum(read) / len(read))}


def run(settings, n_events: int, queries: int = 50) -> dict:
    from gateway.history import UNSCOPED, identifier_forms, in_database
    from schemas.regions import load_regions
    from sinks.engine import DriverExecutor
    from sinks.queries import load_queries

    prepared = prepare(settings, n_events)
    db = DATABASE
    client = _client(settings)
    parts = dict(client.execute(f"SELECT table, count() FROM system.parts WHERE database = '{db}' AND active "
                                "AND table IN ('events', 'event_subjects') GROUP BY table"))
    identifiers = sample_identifiers(client, db, queries, seed=20261)
    client.disconnect()
    if not identifiers:
        raise RuntimeError(f"no identifiers found in {db}.event_subjects")
    regions = load_regions()
    executor = DriverExecutor(database_url(clickhouse_url_as(settings, "default"), db), database=db)
    try:
        # one query first, apart: the first read of the tables (marks, caches) is reported alone
        first = in_database(load_queries()["trail"].render({"id": identifiers[0][0], "ids": identifier_forms(identifiers[0][0])},
                                                           UNSCOPED), db)
        started = time.perf_counter()
        executor.query(first, readonly=True)
        first_ms = (time.perf_counter() - started) * 1000
        operator = _time_trails(executor, db, identifiers, UNSCOPED)  # unfiltered (key kept for earlier results)
        regional = _time_trails(executor, db, identifiers, region_scope(REGION, regions))
    finally:
        executor.close()
    kinds: dict[str, int] = {}
    for _value, kind in identifiers:
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"events_requested": n_events, "events": prepared["events"], "event_subjects": prepared["event_subjects"],
            "reused": prepared["reused"], "generation_seconds": prepared["generation_seconds"],
            "active_parts": parts, "identifier_kinds": kinds, "first_query_ms": round(first_ms, 1),
            "trail_operator": operator, f"trail_region_{REGION}": regional,
            "target": "p50 < 200 ms at 10,000,000 events",
            "meets_target": operator["p50_ms"] < 200 and regional["p50_ms"] < 200}


def drop(settings, database: str = DATABASE) -> None:
    client = _client(settings)
    client.execute(f"DROP DATABASE IF EXISTS {database}")
    client.disconnect()


if __name__ == "__main__":  # python -m bench.bench_trail N [QUERIES] | drop
    import json

    from ops.settings import load_settings

    if sys.argv[1:2] == ["drop"]:
        drop(load_settings())
    else:
        print(json.dumps(run(load_settings(), int(sys.argv[1]), *(int(a) for a in sys.argv[2:3])), indent=2, ensure_ascii=False))
