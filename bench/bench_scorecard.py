"""What the scorecard costs on the stack's ClickHouse (18.16 locally), over a copy of the workflow_events it holds.

Three ways to the same rows, alternating in one run, the median of the rounds each:
- `query`: the named query as shipped (sinks/queries/scorecard.sql: only the items that started in the
  period, `item_id IN ...`, partition pruning on `at`);
- `no item filter` (the baseline): the same SQL without those filters (every event read, FINAL, five times);
- `python`: the period's items' rows fetched and workflows.scorecard computed in this process.
Each variant is checked to give the same rows as the query (the bench fails otherwise).

    .venv/bin/python -m bench.bench_scorecard [--month 2026-11] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

from gateway.cli import month_period
from gateway.history import UNSCOPED, in_database
from ops.secrets import clickhouse_url_as
from ops.settings import load_settings
from sinks.engine import DriverExecutor
from sinks.migrate import apply_migrations
from sinks.queries import load_queries
from workflows.scorecard import COLUMNS, scorecard

RESULTS = Path(__file__).resolve().parent / "results" / "scorecard.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--month", default=time.strftime("%Y-%m"), help="a calendar month in CST (default this one)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    settings = load_settings()
    live = DriverExecutor(clickhouse_url_as(settings, "default"))
    # a frozen copy: the stack's table grows while the bench runs (the simulator, other tests), and the variants
    # must read the same events to be compared
    db = f"bench_scorecard_{uuid.uuid4().hex[:8]}"
    ex = DriverExecutor(clickhouse_url_as(settings, "default"), database=db)
    apply_migrations(ex)
    ex.execute(f"INSERT INTO {db}.workflow_events SELECT * FROM {live.database}.workflow_events")
    live.close()
    try:
        return _bench(ex, db, args)
    finally:
        ex.execute(f"DROP DATABASE IF EXISTS {db}")
        ex.close()


def _bench(ex, db, args) -> int:
    start, end = month_period(args.month)
    sql = in_database(load_queries()["scorecard"].render({"from": start, "to": end}, UNSCOPED), db)
    # the baseline: the lines of the item filter left out (each is one line of the query's text)
    baseline = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("AND item_id IN (SELECT"))
    assert sql.count("AND item_id IN (SELECT") == 3, "the three item filters, one a line"
    assert baseline != sql and "item_id IN" not in baseline, "the baseline must drop the item filter"
    start_ms = int(ex.query(f"SELECT toUInt64(toDateTime('{start}', 'UTC')) * 1000")[1][0][0])
    end_ms = int(ex.query(f"SELECT toUInt64(toDateTime('{end}', 'UTC')) * 1000")[1][0][0])
    fetch = (f"SELECT * FROM {db}.workflow_events FINAL WHERE item_id IN (SELECT item_id FROM {db}.workflow_events "
             f"WHERE event_type IN ('SENT', 'OPENED', 'ISSUED') AND at >= toDateTime('{start}', 'UTC') "
             f"AND at < toDateTime('{end}', 'UTC'))")

    def run_sql(text):
        return [dict(zip(COLUMNS, r)) for r in ex.query(text)[1]]

    def run_python():
        cols, rows = ex.query(fetch)
        return scorecard([dict(zip(cols, r)) for r in rows], start_ms=start_ms, end_ms=end_ms)

    variants = {"query": lambda: run_sql(sql), "no item filter": lambda: run_sql(baseline), "python": run_python}
    times = {name: [] for name in variants}
    reference = None
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            rows = fn()
            times[name].append(time.perf_counter() - t)
            reference = rows if reference is None else reference
            assert rows == reference, f"{name} gives other rows than the query"
    events, items = ex.query(f"SELECT count(), uniqExact(item_id) FROM {db}.workflow_events")[1][0]
    version = ex.query("SELECT version()")[1][0][0]
    lines = [f"# Scorecard: {args.month} (CST) over the stack's workflow_events", "",
             f"ClickHouse {version}; the table holds {events:,} events of {items:,} items; the month's scorecard has "
             f"{len(reference)} agency rows ({sum(r['requests_received'] for r in reference):,} requests received). "
             f"Median of {args.rounds} rounds, the variants alternating (`python -m bench.bench_scorecard`).", "",
             "| variant | seconds |", "|---|---|"]
    lines += [f"| {name} | {statistics.median(ts):.2f} |" for name, ts in times.items()]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
