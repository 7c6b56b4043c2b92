"""`intelbus query`, `intelbus sql`: analysts' questions, filtered by entitlement and audited."""
from __future__ import annotations

import getpass
import sys

QUERY_EPILOG = """\
Entitlement: --region CODE limits results to what that region may see (its own events and
its descendants', and what is shared with it or notified to it). Without --region only the
operator profile (INTELBUS_OPERATOR=1 in the environment of a trusted operator account)
sees everything. Every run is written to the audit_log table (user, region, purpose, query,
row count); `trail` needs --purpose (a case or request reference).

Examples:
  intelbus query --list
  intelbus query trail --id 11010519491231002X --region 110000 --purpose "协查 2026-118"
  intelbus query hits --from 2026-11-01 --region 130000 --format csv
"""


def _common(p):
    p.add_argument("--region", help="the asking agency's region code: results are limited to what it may see")
    p.add_argument("--user", default=None, help="who is asking (default: the OS user)")
    p.add_argument("--purpose", default="", help="purpose or case reference, recorded in the audit log")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format (default table)")


def _context(args):
    from ops.settings import load_settings
    from schemas.regions import load_regions, validate_region_code

    settings = load_settings()
    regions = load_regions()
    if args.region:
        try:
            validate_region_code(args.region)
        except ValueError as exc:
            raise SystemExit(f"intelbus {args.command}: --region: {exc}")
    elif not settings.operator:
        raise SystemExit(f"intelbus {args.command}: give --region CODE (what that region may see), "
                         "or run as the operator profile (INTELBUS_OPERATOR=1)")
    return settings, regions


def add_query(p):
    p.add_argument("name", nargs="?", help="the query to run (see --list)")
    p.add_argument("--list", action="store_true", help="list the named queries with their parameters")
    p.add_argument("--id", help="trail: resident ID, plate or phone")
    p.add_argument("--from", dest="from_", help="period start, YYYY-MM-DD[ HH:MM:SS] UTC")
    p.add_argument("--to", help="period end (exclusive)")
    p.add_argument("--since", help="trail: only events from this time")
    p.add_argument("--type", help="hits: only this hit type")
    p.add_argument("--limit", help="wanted-sightings: rows to show")
    _common(p)
    p.epilog = QUERY_EPILOG

    def run(args):
        from sinks.queries import QueryError, load_queries

        queries = load_queries()
        if args.list or not args.name:
            for q in queries.values():
                print(f"{q.name:<17} {q.description}")
                for prm in q.params:
                    default = f" (default {prm.default})" if prm.default else ""
                    print(f"{'':<19}--{prm.name:<8} {prm.type:<9} {prm.help}{default}")
                if q.purpose_required:
                    print(f"{'':<19}--purpose required")
            return 0 if args.list else 2
        if args.name not in queries:
            print(f"intelbus query: no query named {args.name!r} (known: {', '.join(queries)})", file=sys.stderr)
            return 2
        q = queries[args.name]
        settings, regions = _context(args)
        values = {k: v for k, v in {"from": args.from_, "to": args.to, "since": args.since, "type": args.type,
                                     "limit": args.limit, "id": args.id}.items() if v is not None}
        if q.purpose_required and not args.purpose.strip():
            print(f"intelbus query {q.name}: --purpose is required (a case or request reference, for the audit log)",
                  file=sys.stderr)
            return 2
        if q.name == "trail":
            if not args.id:
                print("intelbus query trail: --id is required (resident ID, plate or phone)", file=sys.stderr)
                return 2
            values["ids"] = identifier_forms(args.id)
        try:
            return _run_named(q, values, args, settings, regions)
        except QueryError as exc:
            print(f"intelbus query {q.name}: {exc}", file=sys.stderr)
            return 2

    return run


def identifier_forms(raw: str) -> list[str]:
    """Every normalised form a searched identifier can take (a resident ID, a plate, a phone, ...)."""
    from schemas.normalise import InvalidIdentifier, normalise_identifier

    forms = []
    for kind in ("RESIDENT_ID", "PLATE", "PHONE", "PASSPORT"):
        try:
            forms.append(normalise_identifier(kind, raw))
        except InvalidIdentifier:
            continue
    return list(dict.fromkeys(forms)) or [raw.strip().upper()]


def _run_named(q, values, args, settings, regions) -> int:
    from sinks.engine import DriverExecutor
    from sinks.queries import format_result, run_and_audit, scope_predicates

    executor = DriverExecutor(settings.clickhouse_url)
    sql = q.render(values, scope_predicates(args.region, regions))
    sql = _in_database(sql, executor.database)
    result = run_and_audit(executor, sql, user=args.user or getpass.getuser(), region=args.region,
                           purpose=args.purpose, action="query", query_name=q.name, params=values)
    out = format_result(result, args.format, regions if args.format == "table" else None)
    if out:
        print(out)
    if args.format == "table":
        print(f"({len(result.rows)} rows, {result.elapsed_s * 1000:.0f} ms)", file=sys.stderr)
    return 0


def _in_database(sql: str, database: str) -> str:
    """Named queries name tables bare; run them in the configured database."""
    import re

    tables = ("events", "event_subjects", "hits", "dead_letters", "duplicates", "audit_log")
    return re.sub(r"\b(FROM|JOIN|IN)\s+(" + "|".join(tables) + r")\b", lambda m: f"{m.group(1)} {database}.{m.group(2)}", sql)


def add_sql(p):
    p.add_argument("query", help="one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)")
    _common(p)
    p.add_argument("--raw", action="store_true",
                   help="operators only: read the tables as stored, without FINAL (a row the sink wrote twice "
                        "shows twice until ClickHouse merges)")
    p.epilog = ("Tables are named bare (events, event_subjects, hits, dead_letters, duplicates, audit_log) and\n"
                "read as their latest rows: the sink is at-least-once, so the query sees each event, hit and\n"
                "rejection once (ReplacingMergeTree ... FINAL), as the named queries do.\n"
                "Refuses anything that writes (INSERT, ALTER, DROP, ...), more than one statement, and table\n"
                "functions; the server runs it with readonly=2 as well. With --region, the query may read only\n"
                "events, event_subjects and hits, each limited to what the region may see. Audited.\n\n"
                "example:\n"
                "  intelbus sql \"SELECT kind, count() FROM events GROUP BY kind\" --region 130000 --purpose 'weekly report'")

    def run(args):
        from sinks.engine import DriverExecutor
        from sinks.queries import QueryError, check_read_only, format_result, rewrite_tables, run_and_audit, scope_predicates

        try:
            sql = check_read_only(args.query)
        except QueryError as exc:
            print(f"intelbus sql: refused: {exc}", file=sys.stderr)
            return 2
        if args.raw and args.region:
            print("intelbus sql: refused: --raw is for operators (no --region): region-limited reads are always FINAL",
                  file=sys.stderr)
            return 2
        settings, regions = _context(args)
        executor = DriverExecutor(settings.clickhouse_url)
        try:
            if args.raw:
                sql = _in_database(sql, executor.database)
            else:
                scope = scope_predicates(args.region, regions) if args.region else None
                sql = rewrite_tables(sql, executor.database, scope)
        except QueryError as exc:
            print(f"intelbus sql: refused: {exc}", file=sys.stderr)
            return 2
        try:
            result = run_and_audit(executor, sql, user=args.user or getpass.getuser(), region=args.region,
                                   purpose=args.purpose, action="sql", query_name="", params={"sql": args.query})
        except Exception as exc:  # the server's own refusal (syntax, readonly) in one line
            print(f"intelbus sql: {str(exc).strip().splitlines()[0][:300]}", file=sys.stderr)
            return 2
        out = format_result(result, args.format, regions if args.format == "table" else None)
        if out:
            print(out)
        return 0

    return run
