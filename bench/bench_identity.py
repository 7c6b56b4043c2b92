"""The added cost of authentication and row filters (identity issue), measured in one run.

`trail`, over the same identifiers, four ways:
  (a) clickhouse-driver as the admin user, no filter (`gateway.history.UNSCOPED`): the baseline;
  (b) clickhouse-driver as the admin user, with the filter the gateway adds for the bench
      analyst (region 130000 Hebei and the regions inside it, cleared to INTERNAL): the SQL is
      `gateway.history.named_query_sql`, the very text the gateway runs; (b)/(a) is the
      row filter's cost;
  (c) the gateway's HTTP API (`POST /api/v1/queries/trail`, bearer token, one kept-alive
      connection, as a web console would): token check, entitlement, the filtered query as
      `intelbus_reader`, the audit insert, JSON and HTTP; (c)/(a) is the whole added cost;
  (d) `intelbus query trail --format json` as a subprocess, logged in: what a person waits
      for (process start included), fewer repetitions.
(a), (b) and (c) are interleaved per identifier, their order rotating, so that the
machine's noise (the stack runs on the same two cores) falls on all three alike; a few
rounds first warm caches and connections and are not counted.

The data: a generated population like bench_trail's (`bench.bench_trail` generator, tag BI:
source_ref `BI-<n>`, titles ending ` [bench BI]`), 1,000,000 events (about 1.5 M subject rows)
over 12 months in every city and county, in the stack's own database, because the
gateway reads that database only. It is generated on the first run (about 20 s) and kept;
`python -m bench.bench_identity drop` deletes it. Identifiers: half drawn from subjects of
events in Hebei (so the filtered trail returns rows), half from anywhere.

Feed start-up: `GET /api/v1/feed?since=1h` (no follow) as the same analyst, time to the
response's headers, to its first body byte and to its end, against a raw confluent-kafka
consumer doing the same assignment (the view's province partition of intel.hit and all of
intel.alert.unique, from the offsets of one hour ago to the ends seen at the start) and
reading to the end without decoding: the baseline. Interleaved. When the last hour holds
fewer than 200 messages there, the simulator (`intelbus simulate`, 20,000 records) is run
first so that the feed has something to carry; the result says whether it was.

Run: `python -m bench.bench_identity [--quick]` (results in bench/results/identity.{json,md}),
or `python -m bench.run --only identity`. Needs the stack with the gateway up.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ops.secrets import clickhouse_url_as  # the benchmarks connect as the ClickHouse admin

TAG = "BI"
EVENTS = 1_000_000
REGION = "130000"          # the bench analyst's agency and view: Hebei
CLEARANCE = "INTERNAL"
PURPOSE = "bench identity: cost of authentication and row filters"
SEED_BELOW = 200           # messages in the feed's window below which the simulator is run first
RESULTS = Path(__file__).resolve().parent / "results"


# --- small pure helpers -------------------------------------------------------------------

def summary(ms: list[float]) -> dict | None:
    from bench.bench_trail import percentile

    if not ms:
        return None
    return {"n": len(ms), "p50_ms": round(percentile(ms, 0.50), 1), "p99_ms": round(percentile(ms, 0.99), 1),
            "mean_ms": round(sum(ms) / len(ms), 1), "max_ms": round(max(ms), 1)}


def ratio(num: dict | None, den: dict | None, key: str = "p50_ms") -> float | None:
    if not num or not den or not den.get(key):
        return None
    return round(num[key] / den[key], 2)


def rotation(i: int, paths=("a", "b", "c")) -> tuple[str, ...]:
    """The order of the interleaved paths for identifier i: each path goes first, second and third in turn."""
    k = i % len(paths)
    return tuple(paths[k:] + paths[:k])


def tag_predicates(tag: str = TAG) -> dict[str, str]:
    """How the generated rows of a population are told apart, per table."""
    return {"events": f"startsWith(source_ref, '{tag}-')", "event_subjects": f"endsWith(title, ' [bench {tag}]')"}


def markdown_rows(r: dict) -> list[str]:
    """Rows of the results table (bench/results/latest.md layout: benchmark | figure | baseline | ratio)."""
    t, f, pop = r["trail"], r["feed"], r["population"]

    def pp(s):
        return "n/a" if not s else f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms"

    def x(v):
        return "n/a" if v is None else f"{v:.2f}"

    who = f"{r['principal']} ({r['view']}, {r['clearance']})"
    rows = [
        f"| identity: `trail` (a) clickhouse-driver as admin, no filter, {r['identifiers']} identifiers over "
        f"{pop['events']:,} events ({pop['event_subjects']:,} subject rows) | {pp(t['a'])} | baseline | |",
        f"| identity: `trail` (b) the same with the region + clearance filter of {who} | {pp(t['b'])} | (a) | "
        f"{x(r['ratios']['b_over_a'])} |",
        f"| identity: `trail` (c) gateway HTTP API with a bearer token (auth, filter, audit, HTTP); query inside: "
        f"{pp(t['c_server_query'])} | {pp(t['c'])} | (a) | {x(r['ratios']['c_over_a'])} |",
        f"| identity: `trail` (d) `intelbus query trail` as a subprocess ({t['d']['n'] if t['d'] else 0} runs) | "
        f"{pp(t['d'])} | (a) | {x(r['ratios']['d_over_a'])} |",
        f"| identity: feed start-up, `GET /api/v1/feed?since=1h` to the end ({f['items']} items of "
        f"{f['messages']} messages{', simulator run first' if f['seeded'] else ''}); first byte "
        f"{pp(f['gateway_first_byte'])}; headers {pp(f['gateway_headers'])} | {pp(f['gateway_end'])} | raw consumer, "
        f"same assignment, to the end: {pp(f['raw_end'])} (first message {pp(f['raw_first'])}) | "
        f"{x(r['ratios']['feed_over_raw'])} |",
    ]
    return rows


# --- the population ---------------------------------------------------------------------------

def _log(message: str) -> None:
    print(f"[bench identity] {message}", file=sys.stderr, flush=True)


def _admin(settings):
    from clickhouse_driver import Client

    from bench.bench_trail import database_url

    return Client.from_url(database_url(clickhouse_url_as(settings, "default"), "default"))


def _database(settings) -> str:
    from sinks.engine import database_of

    return database_of(settings.clickhouse_url)


def _tagged_counts(client, db: str) -> dict:
    return {t: client.execute(f"SELECT count() FROM {db}.{t} WHERE {p}")[0][0] for t, p in tag_predicates().items()}


def prepare(settings, n_events: int = EVENTS) -> dict:
    """The stack's database holding the tagged population: reused when complete, generated otherwise."""
    from bench.bench_trail import chunks, events_insert_sql, region_codes, subjects_insert_sql

    db = _database(settings)
    client = _admin(settings)
    try:
        counts = _tagged_counts(client, db)
        if counts["events"] == n_events and counts["event_subjects"] > n_events:
            _log(f"reusing the {TAG} population in {db}: {counts['events']:,} events, {counts['event_subjects']:,} subjects")
            return {"database": db, "tag": TAG, "reused": True, "generation_seconds": None, **counts}
        if counts["events"] or counts["event_subjects"]:
            _log(f"an incomplete {TAG} population in {db} ({counts}): deleting it first")
            _delete(client, db)
        _log(f"generating {n_events:,} events into {db} (tag {TAG})")
        regions = region_codes()
        started = time.perf_counter()
        for lo, count in chunks(n_events):
            client.execute(events_insert_sql(db, lo, count, n_events, regions, tag=TAG))
            client.execute(subjects_insert_sql(db, lo, count, n_events, regions, tag=TAG))
            _log(f"{lo + count:,}/{n_events:,} events")
        seconds = time.perf_counter() - started
        counts = _tagged_counts(client, db)
        return {"database": db, "tag": TAG, "reused": False, "generation_seconds": round(seconds, 1), **counts}
    finally:
        client.disconnect()


def _delete(client, db: str, timeout: float = 600) -> None:
    for table, predicate in tag_predicates().items():
        client.execute(f"ALTER TABLE {db}.{table} DELETE WHERE {predicate}")
    deadline = time.monotonic() + timeout
    while client.execute(f"SELECT count() FROM system.mutations WHERE database = '{db}' AND NOT is_done")[0][0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"deleting the {TAG} population from {db}: mutations not done after {timeout:.0f} s")
        time.sleep(0.5)


def drop(settings) -> None:
    db = _database(settings)
    client = _admin(settings)
    try:
        _delete(client, db)
        _log(f"deleted the {TAG} population from {db}")
    finally:
        client.disconnect()


def sample_identifiers(settings, k: int, seed: int = 20262) -> list[str]:
    """k identifiers of the population: half from subjects of events in the view's province, half from anywhere."""
    db = _database(settings)
    client = _admin(settings)
    try:
        pred = tag_predicates()["event_subjects"]
        prefix = REGION[:2]
        local = client.execute(f"SELECT DISTINCT id_value FROM {db}.event_subjects WHERE {pred} "
                               f"AND cityHash64(id_value, {seed}) % 1000 < 20 AND startsWith(source_region, '{prefix}')")
        anywhere = client.execute(f"SELECT DISTINCT id_value FROM {db}.event_subjects WHERE {pred} "
                                  f"AND cityHash64(id_value, {seed}) % 1000 < 2")
    finally:
        client.disconnect()
    rng = random.Random(seed)
    local_ids = sorted(v for (v,) in local)
    chosen = rng.sample(local_ids, min(k // 2, len(local_ids)))
    rest = sorted({v for (v,) in anywhere} - set(chosen))
    chosen += rng.sample(rest, min(k - len(chosen), len(rest)))
    rng.shuffle(chosen)
    return chosen


# --- trail ------------------------------------------------------------------------------------

def _entitlement():
    from identity.entitlement import Entitlement
    from identity.principals import Identity
    from schemas.regions import load_regions

    from bench.logins import analyst_name

    identity = Identity(name=analyst_name(REGION, CLEARANCE), kind="person", region=REGION, branch="INTELLIGENCE",
                        roles=frozenset({"analyst"}), clearance=CLEARANCE)
    return Entitlement(identity, load_regions())


def _intelbus() -> list[str]:
    script = Path(sys.executable).parent / "intelbus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ops.cli"]


def measure_trail(settings, identifiers: list[str], env: dict, token: str, cli_runs: int, warmup: int = 3) -> dict:
    import httpx

    from gateway.history import UNSCOPED, identifier_forms, in_database, named_query_sql
    from sinks.engine import DriverExecutor
    from sinks.queries import load_queries

    db = _database(settings)
    trail = load_queries()["trail"]
    ent = _entitlement()
    sql = {value: {"a": in_database(trail.render({"id": value, "ids": identifier_forms(value)}, UNSCOPED), db),
                   "b": named_query_sql(trail, {"id": value}, ent, REGION, PURPOSE, db)} for value in identifiers}
    executor = DriverExecutor(clickhouse_url_as(settings, "default"))
    http = httpx.Client(base_url=settings.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    ms = {"a": [], "b": [], "c": [], "c_server_query": []}
    rows = {"a": [], "b": [], "c": []}
    mismatches = []

    def once(which: str, value: str) -> tuple[float, int, float | None]:
        started = time.perf_counter()
        if which == "c":
            resp = http.post("/api/v1/queries/trail", json={"params": {"id": value}, "region": None, "purpose": PURPOSE})
            elapsed = (time.perf_counter() - started) * 1000
            if resp.status_code != 200:
                raise RuntimeError(f"gateway trail: HTTP {resp.status_code}: {resp.text[:300]}")
            out = resp.json()
            return elapsed, len(out["rows"]), out["elapsed_ms"]
        _columns, result = executor.query(sql[value][which], readonly=True)
        return (time.perf_counter() - started) * 1000, len(result), None

    try:
        for value in identifiers[:warmup]:
            for which in ("a", "b", "c"):
                once(which, value)
        for i, value in enumerate(identifiers):
            got = {}
            for which in rotation(i):
                elapsed, n, server = once(which, value)
                ms[which].append(elapsed)
                rows[which].append(n)
                got[which] = n
                if server is not None:
                    ms["c_server_query"].append(server)
            if got["b"] != got["c"]:
                mismatches.append({"id": value, "b_rows": got["b"], "c_rows": got["c"]})
    finally:
        http.close()
        executor.close()

    cli = []
    cli_rows = []
    for value in identifiers[:cli_runs]:
        started = time.perf_counter()
        r = subprocess.run([*_intelbus(), "query", "trail", "--id", value, "--purpose", PURPOSE, "--format", "json"],
                           capture_output=True, text=True, timeout=120, env=env)
        cli.append((time.perf_counter() - started) * 1000)
        if r.returncode != 0:
            raise RuntimeError(f"intelbus query trail exited {r.returncode}: {r.stderr.strip()[-300:]}")
        cli_rows.append(_json_rows(r.stdout))
    return {"a": summary(ms["a"]), "b": summary(ms["b"]), "c": summary(ms["c"]),
            "c_server_query": summary(ms["c_server_query"]), "d": summary(cli),
            "rows_mean": {k: round(sum(v) / len(v), 2) for k, v in rows.items() if v},
            "empty": {k: sum(1 for n in v if n == 0) for k, v in rows.items()},
            "d_rows": cli_rows, "b_c_row_mismatches": mismatches}


def _json_rows(stdout: str) -> int:
    """Rows of `--format json` output (one JSON object a line)."""
    return sum(1 for line in stdout.splitlines() if line.strip())


# --- feed -------------------------------------------------------------------------------------

def _assignment(consumer, province: str):
    from confluent_kafka import TopicPartition

    from gateway.feed import ALERT_TOPIC, HIT_TOPIC
    from sinks.feed import hit_partition

    meta = consumer.list_topics(timeout=10).topics
    return ([TopicPartition(HIT_TOPIC, hit_partition(province, len(meta[HIT_TOPIC].partitions)))]
            + [TopicPartition(ALERT_TOPIC, p) for p in sorted(meta[ALERT_TOPIC].partitions)])


def raw_feed(kafka_config: dict, province: str, since_s: float, timeout: float = 60) -> dict:
    """The baseline: the gateway feed's assignment and reading to the ends, no decode, no filter, no HTTP."""
    from confluent_kafka import Consumer, TopicPartition

    from ops.consume import consume_ready

    started = time.perf_counter()
    consumer = Consumer({**kafka_config, "group.id": "bench-identity-raw-feed", "enable.auto.commit": False,
                         "auto.offset.reset": "latest"})
    try:
        tps = _assignment(consumer, province)
        by_time = {(tp.topic, tp.partition): tp.offset for tp in consumer.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, int((time.time() - since_s) * 1000)) for tp in tps], timeout=10)}
        ends, assignment = {}, []
        for tp in tps:
            key = (tp.topic, tp.partition)
            _, end = consumer.get_watermark_offsets(tp, timeout=10)
            start = by_time[key] if by_time[key] >= 0 else end
            ends[key] = end
            assignment.append(TopicPartition(tp.topic, tp.partition, start))
        consumer.assign(assignment)
        read_to = {(tp.topic, tp.partition): tp.offset for tp in assignment}
        messages = sum(ends[k] - read_to[k] for k in ends)
        first, got = None, 0
        while not all(read_to[k] >= end for k, end in ends.items()):
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"raw feed: not at the ends after {timeout:.0f} s")
            for msg in consume_ready(consumer, 500, 0.2):
                if msg.error():
                    continue
                key = (msg.topic(), msg.partition())
                read_to[key] = msg.offset() + 1
                if msg.offset() < ends[key]:
                    got += 1
                    if first is None:
                        first = time.perf_counter()
    finally:
        consumer.close()
    end = time.perf_counter()
    return {"first_ms": None if first is None else (first - started) * 1000, "end_ms": (end - started) * 1000,
            "messages": messages, "read": got}


def gateway_feed(http, since: str) -> dict:
    started = time.perf_counter()
    first, size, lines = None, 0, 0
    with http.stream("GET", "/api/v1/feed", params={"since": since, "follow": "false", "purpose": PURPOSE}) as resp:
        headers = time.perf_counter()
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"gateway feed: HTTP {resp.status_code}: {resp.text[:300]}")
        for chunk in resp.iter_raw():
            if chunk and first is None:
                first = time.perf_counter()
            size += len(chunk)
            lines += chunk.count(b"\n")
    end = time.perf_counter()
    return {"headers_ms": (headers - started) * 1000, "first_ms": None if first is None else (first - started) * 1000,
            "end_ms": (end - started) * 1000, "items": lines, "bytes": size}


def _window_messages(settings, province: str, since_s: float) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": "bench-identity-probe", "enable.auto.commit": False})
    try:
        tps = _assignment(consumer, province)
        at = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, int((time.time() - since_s) * 1000))
                                         for tp in tps], timeout=10)
        total = 0
        for tp, start in zip(tps, at):
            _, end = consumer.get_watermark_offsets(tp, timeout=10)
            total += end - start.offset if start.offset >= 0 else 0
        return total
    finally:
        consumer.close()


def seed_feed(settings, province: str, records: int = 20_000) -> int:
    """Run the simulator once so that the last hour holds hits and alerts; waits until the jobs have turned
    them into hits (the window's message count stops growing). Returns the window's messages."""
    prefix = f"BI{uuid.uuid4().hex[:6]}-"
    _log(f"the feed's window is (nearly) empty: running the simulator ({records:,} records, ref prefix {prefix})")
    r = subprocess.run([*_intelbus(), "simulate", "--count", str(records), "--rate", "0", "--seed", "7",
                        "--ref-prefix", prefix, "--phase-pause", "0", "--quiet", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"intelbus simulate exited {r.returncode}: {r.stderr.strip()[-300:]}")
    last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 90
    while time.monotonic() < deadline:
        n = _window_messages(settings, province, 3600)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since >= 4:
            break
        time.sleep(1)
    return last


def measure_feed(settings, token: str, reps: int, since: str = "1h") -> dict:
    import httpx

    from schemas.regions import load_regions
    from sinks.feed import parse_duration

    province = load_regions().province_of(REGION)
    since_s = parse_duration(since)
    seeded = False
    if _window_messages(settings, province, since_s) < SEED_BELOW:
        seed_feed(settings, province)
        seeded = True
    http = httpx.Client(base_url=settings.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    gw, raw = [], []
    try:
        gateway_feed(http, since)  # warm: connection, first consumer of the process
        raw_feed(settings.kafka_config("intelbus-admin"), province, since_s)
        for i in range(reps):
            for which in ("gateway", "raw") if i % 2 == 0 else ("raw", "gateway"):
                if which == "gateway":
                    gw.append(gateway_feed(http, since))
                else:
                    raw.append(raw_feed(settings.kafka_config("intelbus-admin"), province, since_s))
    finally:
        http.close()
    firsts = [g["first_ms"] for g in gw if g["first_ms"] is not None]
    raw_firsts = [r["first_ms"] for r in raw if r["first_ms"] is not None]
    return {"since": since, "reps": reps, "seeded": seeded, "province_partition_and_alerts": province,
            "messages": raw[-1]["messages"] if raw else 0, "items": gw[-1]["items"] if gw else 0,
            "items_bytes": gw[-1]["bytes"] if gw else 0,
            "gateway_headers": summary([g["headers_ms"] for g in gw]), "gateway_first_byte": summary(firsts),
            "gateway_end": summary([g["end_ms"] for g in gw]),
            "raw_first": summary(raw_firsts), "raw_end": summary([r["end_ms"] for r in raw])}


# --- the run ----------------------------------------------------------------------------------

def run(settings, quick: bool = False) -> dict:
    from bench.logins import analyst_env, analyst_name, token_of

    started = time.perf_counter()
    population = prepare(settings)
    identifiers = sample_identifiers(settings, 40 if quick else 100)
    if not identifiers:
        raise RuntimeError("no identifiers in the generated population")
    with tempfile.TemporaryDirectory(prefix="bench-identity-") as tmp:
        env = analyst_env(settings, REGION, Path(tmp), CLEARANCE)
        token = token_of(env)
        _log(f"trail: {len(identifiers)} identifiers, (a)/(b)/(c) interleaved")
        trail = measure_trail(settings, identifiers, env, token, cli_runs=5 if quick else 10)
        _log("feed start-up")
        feed = measure_feed(settings, token, reps=5 if quick else 10)
    ratios = {"b_over_a": ratio(trail["b"], trail["a"]), "c_over_a": ratio(trail["c"], trail["a"]),
              "c_over_b": ratio(trail["c"], trail["b"]), "d_over_a": ratio(trail["d"], trail["a"]),
              "b_over_a_p99": ratio(trail["b"], trail["a"], "p99_ms"),
              "c_over_a_p99": ratio(trail["c"], trail["a"], "p99_ms"),
              "feed_over_raw": ratio(feed["gateway_end"], feed["raw_end"]),
              "feed_over_raw_p99": ratio(feed["gateway_end"], feed["raw_end"], "p99_ms"),
              "feed_first_byte_over_raw_first": ratio(feed["gateway_first_byte"], feed["raw_first"])}
    return {"population": population, "identifiers": len(identifiers), "view": REGION, "clearance": CLEARANCE,
            "principal": analyst_name(REGION, CLEARANCE), "trail": trail, "feed": feed, "ratios": ratios,
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="the added cost of authentication and row filters (trail, feed start-up)")
    parser.add_argument("action", nargs="?", choices=["run", "drop"], default="run",
                        help="drop: delete the generated population from the stack's database")
    parser.add_argument("--quick", action="store_true", help="fewer identifiers and repetitions")
    args = parser.parse_args(argv)
    from ops.settings import load_settings

    settings = load_settings()
    if args.action == "drop":
        drop(settings)
        return 0
    from bench.run import machine

    result = {"machine": machine(), "quick": args.quick, "identity": run(settings, args.quick)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "identity.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    m = result["machine"]
    text = "\n".join([f"# intelbus benchmark: identity ({'quick' if args.quick else 'full'})", "",
                      f"{m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, commit {m['commit']}, {m['at']}",
                      "", "| benchmark | figure | baseline | ratio |", "|---|---|---|---|",
                      *markdown_rows(result["identity"])]) + "\n"
    (RESULTS / "identity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
