"""People's commands: `login`, `logout`, `whoami`, `feed`, `query`, `sql`, `audit`, and `gateway` itself.

The data commands are clients of the gateway's API, as `gh` is of GitHub's: they send the
saved token and print what comes back; the gateway decides what the identity may see and
audits it. They hold no Kafka or ClickHouse credentials. Whatever is typed (`--region`,
`--user`, INTELBUS_OPERATOR) is passed to the gateway as a request, never as a grant: a
region outside the identity's agency, another user's name or the old operator switch is
refused there, with an audit row.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from datetime import datetime

from gateway.client import ClientError, GatewayClient, SavedLogin, forget_login, load_login, save_login
from schemas.times import cst

ENTITLEMENT_NOTE = """\
Who you are comes from `intelbus login`; what you see is decided by the gateway from your
agency (region + branch), roles and clearance. --region may only narrow to a region inside
your agency's. Every run is written to the audit log (who, agency, role, purpose, query,
rows returned; refusals too)."""


def _settings():
    from ops.settings import load_settings

    return load_settings()


def _client(settings, *, need_token: bool = True) -> GatewayClient:
    token = None
    if need_token:
        token = os.environ.get("INTELBUS_TOKEN", "").strip() or None
        if token is None:
            saved = load_login()
            if saved is not None and saved.gateway.rstrip("/") == settings.gateway_url.rstrip("/"):
                token = saved.token  # sent even if expired: the gateway says so, and audits the attempt
    client = GatewayClient(settings.gateway_url, token)
    claimed = {}
    if os.environ.get("INTELBUS_OPERATOR"):
        claimed["X-Intelbus-Claimed-Operator"] = os.environ["INTELBUS_OPERATOR"][:16]
    client.http.headers.update(claimed)
    return client


def _fail(command: str, exc: Exception) -> int:
    print(f"intelbus {command}: {exc}", file=sys.stderr)
    return 2 if not isinstance(exc, ClientError) or exc.status in (0, 400, 404, 422) else 3


def _claim_user(client: GatewayClient, user: str | None) -> None:
    if user:
        client.http.headers["X-Intelbus-Claimed-User"] = user[:64]


# --- session ---------------------------------------------------------------------------------

def add_login(p):
    p.add_argument("name", nargs="?", help="your login name (asked for if missing)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input (scripts)")
    p.add_argument("--token-stdin", action="store_true",
                   help="read a token of your force's identity provider (OIDC) from standard input and use it")
    p.epilog = ("The token is kept in ~/.config/intelbus/credentials.json (mode 0600; INTELBUS_CREDENTIALS names another\n"
                "file) until it expires (INTELBUS_TOKEN_TTL_S on the gateway, default 1 hour).\n\n"
                "examples:\n  intelbus login hb-cc\n  printf '%s' \"$PW\" | intelbus login js-analyst --password-stdin\n"
                "  get-token-from-sso | intelbus login --token-stdin")

    def run(args):
        settings = _settings()
        if args.token_stdin:
            token = sys.stdin.read().strip()
            with GatewayClient(settings.gateway_url, token) as client:
                try:
                    me = client.get("/api/v1/whoami")
                except ClientError as exc:
                    return _fail("login", exc)
            import jwt

            exp = float(jwt.decode(token, options={"verify_signature": False}).get("exp", time.time() + 300))
            save_login(SavedLogin(settings.gateway_url, token, me["name"], exp))
            print(f"logged in as {me['name']} ({me['issuer']}): {_agency(me)}; roles {', '.join(me['roles'])}")
            return 0
        name = args.name or input("name: ").strip()
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass(f"password for {name}: ")
        with GatewayClient(settings.gateway_url) as client:
            try:
                out = client.post("/api/v1/login", {"name": name, "password": password})
            except ClientError as exc:
                return _fail("login", exc)
        path = save_login(SavedLogin(settings.gateway_url, out["token"], name, out["expires_at"]))
        me = out["identity"]
        print(f"logged in as {name}: {_agency(me)}; roles {', '.join(me['roles'])}; cleared to {me['clearance']}; "
              f"token valid until {cst(out['expires_at'])} (kept in {path})")
        return 0

    return run


def add_logout(p):
    def run(args):
        print("logged out" if forget_login() else "was not logged in")
        return 0

    return run


def add_whoami(p):
    p.add_argument("--json", action="store_true", help="the whole answer as JSON")

    def run(args):
        settings = _settings()
        with _client(settings) as client:
            try:
                me = client.get("/api/v1/whoami")
            except ClientError as exc:
                return _fail("whoami", exc)
        if args.json:
            print(json.dumps(me, ensure_ascii=False, indent=2))
            return 0
        print(f"{me['name']} {me['display_name']}".strip() + f"  ({me['kind']}, issued by {me['issuer']})")
        print(f"  agency     {_agency(me)}")
        print(f"  roles      {', '.join(me['roles']) or '-'}  (may: {', '.join(me['may']) or 'nothing'})")
        print(f"  clearance  {me['clearance']}  (reads {', '.join(me['sees']['classifications']) or 'no records'})")
        print(f"  sees       {me['sees']['regions']}; zones {', '.join(me['sees']['zones']) or '-'}")
        if me["publishes_for"]:
            print(f"  publishes  for {', '.join(me['publishes_for'])}")
        saved = load_login()
        if saved and not os.environ.get("INTELBUS_TOKEN"):
            print(f"  token      valid until {cst(saved.expires_at)}")
        return 0

    return run


def _agency(me: dict) -> str:
    a = me["agency"]
    branch = a.get("branch") or ""
    if branch:
        from schemas.regions import load_branches

        branch = f" {load_branches().get(branch, branch)}"
    return f"{a['region']} {a.get('region_name', '')}{branch}".strip()


# --- history ---------------------------------------------------------------------------------

def _common(p):
    p.add_argument("--region", help="narrow to a region inside your agency's (default: your agency's region)")
    p.add_argument("--purpose", default="", help="purpose or case reference, recorded in the audit log")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format (default table)")
    p.add_argument("--user", default=None, help=argparse.SUPPRESS)  # an old script's --user reaches the gateway, refused there


def add_query(p):
    p.add_argument("name", nargs="?", help="the query to run (see --list)")
    p.add_argument("--list", action="store_true", help="list the named queries with their parameters")
    p.add_argument("--id", help="trail: resident ID, plate or phone")
    p.add_argument("--from", dest="from_", help="period start, YYYY-MM-DD[ HH:MM:SS] UTC")
    p.add_argument("--to", help="period end (exclusive)")
    p.add_argument("--since", help="trail: only events from this time")
    p.add_argument("--type", help="hits: only this hit type")
    p.add_argument("--limit", help="wanted-sightings: rows to show")
    p.add_argument("--by", choices=SCORECARD_BY, help="scorecard: one row per agency (region,branch; default) or per region")
    p.add_argument("--month", metavar="YYYY-MM",
                   help="scorecard: a calendar month in China Standard Time (instead of --from/--to)")
    p.add_argument("--export", metavar="FILE.csv|FILE.json",
                   help="write the whole result to this file (CSV with BOM and CST times, or JSON), audited as an "
                        "export; needs the export role and --purpose")
    _common(p)
    p.epilog = ENTITLEMENT_NOTE + """

The gateway answers in pages of up to 10,000 rows; the command reads them all.

Examples:
  intelbus query --list
  intelbus query trail --id 11010519491231002X --purpose "协查 2026-118"
  intelbus query hits --from 2026-11-01 --region 130800 --format csv
  intelbus query trail --id 京A12345 --purpose "协查 2026-118" --export trail.csv
  intelbus query scorecard --from 2026-11-01 --to 2026-12-01 --by region,branch --purpose "月调度 2026-11"
  intelbus query scorecard --month 2026-11 --purpose "月调度 2026-11" --export scorecard-2026-11.csv
"""

    def run(args):
        settings = _settings()
        with _client(settings) as client:
            _claim_user(client, args.user)
            try:
                if args.list or not args.name:
                    for q in client.get("/api/v1/queries"):
                        print(f"{q['name']:<17} {q['description']}")
                        for prm in q["params"]:
                            default = f" (default {prm['default']})" if prm["default"] else ""
                            print(f"{'':<19}--{prm['name']:<8} {prm['type']:<9} {prm['help']}{default}")
                        if q["purpose_required"]:
                            print(f"{'':<19}--purpose required")
                    return 0 if args.list else 2
                if args.month:
                    if args.from_ or args.to:
                        raise ClientError("--month sets the period: give it or --from/--to, not both")
                    args.from_, args.to = month_period(args.month)
                params = {k: v for k, v in {"from": args.from_, "to": args.to, "since": args.since, "type": args.type,
                                             "limit": args.limit, "id": args.id, "by": args.by}.items() if v is not None}
                body = {"params": params, "region": args.region, "purpose": args.purpose}
                if args.export:
                    return _export(client, args.name, body, args.export)
                out = client.post(f"/api/v1/queries/{args.name}", {**body, "limit": QUERY_PAGE, "offset": 0})
                rows = out["rows"]
                while out.get("has_more"):
                    out = client.post(f"/api/v1/queries/{args.name}",
                                      {**body, "limit": QUERY_PAGE, "offset": out["next_offset"]})
                    rows = rows + out["rows"]
                out["rows"] = rows
            except ClientError as exc:
                return _fail(f"query {args.name or ''}".strip(), exc)
        if args.name == "scorecard" and args.format == "table":
            out = scorecard_table(out)
        return _print_result(out, args.format)

    return run


def add_sql(p):
    p.add_argument("query", help="one read-only SELECT over events, event_subjects and hits")
    _common(p)
    p.epilog = ENTITLEMENT_NOTE + """

Tables are named bare (events, event_subjects, hits) and read as their latest rows (the sink
is at-least-once; ReplacingMergeTree ... FINAL), each limited to what you may see: the gateway
parses the statement and wraps every table it reads (joins, subqueries, UNION, CTEs) in your
scope. Refused: anything that writes, more than one statement, other tables and databases,
table functions, SETTINGS. ClickHouse runs it as a read-only user as well. Audited.

example:
  intelbus sql "SELECT kind, count() FROM events GROUP BY kind" --purpose 'weekly report'
"""

    def run(args):
        settings = _settings()
        with _client(settings) as client:
            _claim_user(client, args.user)
            try:
                out = client.post("/api/v1/sql", {"sql": args.query, "region": args.region, "purpose": args.purpose})
            except ClientError as exc:
                return _fail("sql", exc)
        return _print_result(out, args.format)

    return run


QUERY_PAGE = 10_000  # the gateway's largest page
SCORECARD_BY = ("region,branch", "region")


def month_period(month: str) -> tuple[str, str]:
    """'2026-11' -> the UTC bounds of that month in China Standard Time ('2026-10-31 16:00:00', '2026-11-30 16:00:00')."""
    from datetime import timedelta

    try:
        first = datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise ClientError(f"--month {month!r}: give a month as YYYY-MM (2026-11)") from None
    following = datetime(first.year + first.month // 12, first.month % 12 + 1, 1)
    return tuple((d - timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S") for d in (first, following))


def scorecard_table(out: dict) -> dict:
    """The scorecard for people: shares in per cent, response times in minutes, the period (CST) above the table."""
    columns = list(out["columns"])
    at = {c: i for i, c in enumerate(columns)}
    rows = [list(r) for r in out["rows"]]
    if rows and "period_from" in at:
        print(f"scorecard of the items sent, opened or issued from {cst(rows[0][at['period_from']])} "
              f"to {cst(rows[0][at['period_to']])} (deadlines as the events carry them)", file=sys.stderr)
    reasons = [c for c in columns if c.startswith("refused_")]
    keep = [c for c in columns if c not in ("period_from", "period_to", "region", "branch", *reasons)]
    keep.insert(keep.index("refusals") + 1, "by reason") if "refusals" in keep else None
    renamed = []
    for c in keep:
        if c.endswith("_share"):
            renamed.append(c.replace("_share", " %"))
        elif c.endswith("_s"):
            renamed.append(c[:-2] + " (min)")
        else:
            renamed.append(c)
    shown = []
    for r in rows:
        cells = []
        for c in keep:
            if c == "by reason":
                cells.append(" ".join(f"{x[len('refused_'):].upper()}:{r[at[x]]}" for x in reasons if r[at[x]]) or "-")
                continue
            v = r[at[c]]
            if c.endswith("_share"):
                v = "-" if v is None else f"{100 * v:.1f}"
            elif c.endswith("_s"):
                v = "-" if v is None else f"{v / 60:.1f}"
            cells.append(v)
        shown.append(cells)
    return {**out, "columns": renamed, "rows": shown}


def _export(client: GatewayClient, name: str, body: dict, path: str) -> int:
    """POST /api/v1/queries/{name}/export into a file (written whole, then renamed: no half file on a failure)."""
    import httpx

    from gateway.client import _detail

    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in ("csv", "json"):
        return _fail(f"query {name}", ClientError(f"--export {path}: the file must end in .csv or .json"))
    partial = f"{path}.partial"
    try:
        with client.http.stream("POST", f"/api/v1/queries/{name}/export", params={"format": fmt}, json=body,
                                timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ClientError(_detail(resp), resp.status_code)
            with open(partial, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
            export_id = resp.headers.get("x-intelbus-export-id", "")
        os.replace(partial, path)
    except httpx.ConnectError:
        return _fail(f"query {name}", ClientError(f"the gateway at {client.base_url} is not reachable: is the stack up "
                                                  "(`intelbus status`)?"))
    except ClientError as exc:
        return _fail(f"query {name}", exc)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    print(f"exported to {path} (export {export_id}, audited)", file=sys.stderr)
    return 0


def _print_result(out: dict, fmt: str) -> int:
    from schemas.regions import load_regions
    from sinks.queries import QueryResult, format_result

    result = QueryResult(out["columns"], [tuple(r) for r in out["rows"]], "", out["elapsed_ms"] / 1000)
    text = format_result(result, fmt, load_regions() if fmt == "table" else None)
    if text:
        print(text)
    if fmt == "table":
        print(f"({len(result.rows)} rows, {out['elapsed_ms']:.0f} ms, limited to what {out['region'] or 'you'} may see)",
              file=sys.stderr)
    return 0


# --- feed ------------------------------------------------------------------------------------

FEED_EPILOG = ENTITLEMENT_NOTE + """

Without --follow the feed prints the hits and shared alerts of the last --since (default 24h)
and exits; with --follow it keeps printing as hits arrive, and the workflow items your agency
may see too (new assistance requests and directives, reminders, escalations: one line each,
"[待办 workflow]", due times in CST), and resumes, after a restart, where it stopped (the
gateway keeps the position per identity and region).

Examples:
  intelbus feed --follow                    # your agency's live feed (a province sees its counties)
  intelbus feed --region 120119 --since 2h --json   # narrowed to Jizhou, one JSON per line
"""


def add_feed(p):
    p.add_argument("--region", help="narrow to a region inside your agency's (default: your agency's region)")
    p.add_argument("--follow", action="store_true",
                   help="keep printing hits (and workflow items) as they arrive (Ctrl-C to stop)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit and line")
    p.add_argument("--since", default="24h", help="how far back to start when there is no saved position (default 24h)")
    p.add_argument("--fresh", action="store_true",
                   help="with --follow: start --since ago, not where your last --follow stopped")
    p.add_argument("--purpose", default="live feed", help="recorded in the audit log")
    p.add_argument("--user", default=None, help=argparse.SUPPRESS)  # an old script's --user reaches the gateway, refused there
    p.epilog = FEED_EPILOG

    def run(args):
        from schemas.regions import load_regions
        from gateway.feed import render_workflow_line
        from sinks.feed import render_alert_block, render_block

        settings = _settings()
        regions = load_regions()
        shown = 0
        with _client(settings) as client:
            _claim_user(client, args.user)
            try:
                for line in client.stream_lines("/api/v1/feed", region=args.region, since=args.since,
                                                follow=str(args.follow).lower(), purpose=args.purpose,
                                                fresh=str(args.fresh).lower()):
                    item = json.loads(line)
                    kind = item.get("feed_item")
                    if kind == "heartbeat":
                        continue
                    shown += 1
                    if args.json:
                        print(line, flush=True)
                    elif kind == "hit":
                        print(render_block(_times(item, "detected_at"), regions) + "\n", flush=True)
                    elif kind == "workflow":
                        print(render_workflow_line(item, regions) + "\n", flush=True)
                    else:
                        print(render_alert_block(_times(item, "reported_at"), regions) + "\n", flush=True)
            except ClientError as exc:
                return _fail("feed", exc)
            except KeyboardInterrupt:
                pass
        if not args.json:
            print(f"({shown} hits and shared alerts{' and workflow items' if args.follow else ''})", file=sys.stderr)
        return 0

    return run


def _times(item: dict, *names: str) -> dict:
    for name in names:
        value = item.get(name)
        if isinstance(value, str):
            try:
                item[name] = datetime.fromisoformat(value)
            except ValueError:
                pass
    return item


# --- audit -----------------------------------------------------------------------------------

def add_audit(p):
    p.add_argument("--user", dest="who", help="only rows of this principal")
    p.add_argument("--action", help="login, feed, query, sql, audit, access:add, ...")
    p.add_argument("--outcome", choices=["ok", "refused", "failed"], help="only served, refused or failed requests")
    p.add_argument("--region", help="only rows about this region")
    p.add_argument("--since", help="from this time, YYYY-MM-DD[ HH:MM:SS] UTC")
    p.add_argument("--until", help="before this time")
    p.add_argument("--limit", type=int, default=100, help="rows, newest first (default 100)")
    p.add_argument("--purpose", default="", help="why you read the log (recorded: reading the log is audited too)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.epilog = ("For auditors (role auditor): who read what, when, why, and what was refused.\n\n"
                "examples:\n  intelbus audit --outcome refused --since 2026-11-30\n"
                "  intelbus audit --user js-analyst --action sql --format json")

    def run(args):
        settings = _settings()
        body = {"user": args.who, "action": args.action, "outcome": args.outcome, "region": args.region,
                "since": args.since, "until": args.until, "limit": args.limit, "purpose": args.purpose}
        with _client(settings) as client:
            try:
                out = client.post("/api/v1/audit", body)
            except ClientError as exc:
                return _fail("audit", exc)
        if "at" in out["columns"]:  # stored in UTC; shown to people in China Standard Time
            i = out["columns"].index("at")
            out["columns"][i] = "at (CST)"
            for row in out["rows"]:
                row[i] = cst(row[i], suffix=False)
        return _print_result(out, args.format)

    return run


# --- the server ------------------------------------------------------------------------------

def add_gateway(p):
    p.add_argument("--host", help="address to listen on (default: from INTELBUS_GATEWAY_URL)")
    p.add_argument("--port", type=int, help="port (default: from INTELBUS_GATEWAY_URL)")
    p.epilog = "OpenAPI at /docs. `intelbus up` runs it in the background; this runs it in the foreground with logs."

    def run(args):
        import logging
        from urllib.parse import urlparse

        from gateway.app import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = _settings()
        url = urlparse(settings.gateway_url)
        return serve(settings, args.host or url.hostname or "127.0.0.1", args.port or url.port or 8080)

    return run
