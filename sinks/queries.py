"""Named analyst queries (sinks/queries/*.sql), entitlement filters, ad-hoc SQL and the audit log.

Each .sql file starts with a header of `-- key: value` lines (name, description, params,
whether a purpose is required) and uses placeholders: `{param}` for a parameter (rendered
as a safely quoted literal) and `{scope:ALIAS}` where the entitlement filter of the
asking region goes (`1` for the operator profile).
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sinks.engine import sql_literal

QUERY_DIR = Path(__file__).resolve().parent / "queries"
_PARAM = re.compile(r"\{([a-z_]+)\}")
_SCOPE = re.compile(r"\{scope:([a-z_]+)\}")
# which entitlement rule applies to an alias (see scope_predicate)
ALIAS_KIND = {"s": "event", "e": "event", "events": "event", "event_subjects": "event",
              "h": "hit", "hits": "hit", "d": "source", "dl": "source"}


class QueryError(ValueError):
    """A query that cannot run as asked; str() says why, for the user."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str      # string | int | datetime
    default: str | None
    help: str


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[Param, ...]
    sql: str
    purpose_required: bool = False
    reads: str = ""

    def render(self, values: dict, scope: dict[str, str]) -> str:
        """SQL with parameters as literals and the entitlement filter in place."""
        literals = {}
        for p in self.params:
            raw = values.get(p.name, p.default)
            if p.type == "string" and raw is None:
                raw = ""  # an optional text filter: empty means no filter
            if raw is None or (raw == "" and p.type != "string"):
                raise QueryError(f"--{p.name} is required ({p.help})")
            literals[p.name] = _literal(p, raw)
        if "ids" in _PARAM.findall(self.sql):
            literals["ids"] = ", ".join(sql_literal(v) for v in values.get("ids", []))
        text = _SCOPE.sub(lambda m: scope.get(ALIAS_KIND.get(m.group(1), "event"), "1"), self.sql)
        return _PARAM.sub(lambda m: literals[m.group(1)], text)


def _literal(p: Param, raw) -> str:
    if p.type == "int":
        try:
            return str(int(raw))
        except ValueError:
            raise QueryError(f"--{p.name}: {raw!r} is not an integer") from None
    if p.type == "datetime":
        try:
            value = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw).replace("T", " "))
        except ValueError:
            raise QueryError(f"--{p.name}: {raw!r} is not a time (YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)") from None
        return sql_literal(value.replace(tzinfo=None))
    return sql_literal(str(raw))


def load_queries(folder: Path = QUERY_DIR) -> dict[str, NamedQuery]:
    found = {}
    for path in sorted(folder.glob("*.sql")):
        header, body = {}, []
        params = []
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"--\s*([a-z-]+):\s*(.*)$", line)
            if m and not body:
                key, value = m.group(1), m.group(2).strip()
                if key == "param":
                    name, typ, default, help_text = (x.strip() for x in value.split("|", 3))
                    params.append(Param(name, typ, default or None, help_text))
                else:
                    header[key] = value
            else:
                body.append(line)
        q = NamedQuery(header["name"], header.get("description", ""), tuple(params), "\n".join(body).strip(),
                       header.get("purpose-required", "no") == "yes", header.get("reads", ""))
        found[q.name] = q
    return found


# --- entitlement --------------------------------------------------------------------------

def scope_predicates(region: str | None, regions) -> dict[str, str]:
    """SQL filters per kind of row for what `region` may see; all '1' for the operator."""
    if region is None:
        return {"event": "1", "hit": "1", "source": "1"}
    prefix = regions.descendants_prefix(region)
    like = sql_literal(prefix + "%")
    shared_with = [region, *regions.ancestors(region), *sorted(regions.zones_of(region))]
    zones = sorted(z for z in regions.zones() if any(
        regions.is_within(region, m) or regions.is_within(m, region) for m in regions.zone_members(z)))
    return {
        # its own and its descendants' events, and events shared with it, an ancestor or a zone of it
        "event": f"(source_region LIKE {like} OR region LIKE {like} OR hasAny(share_scope, {sql_literal(shared_with)}))",
        # hits notified to it or inside it, or to a zone it or its descendants belong to (RegionTable.may_see)
        "hit": f"(arrayExists(n -> n LIKE {like}, notify_regions) OR hasAny(notify_regions, {sql_literal(zones or [''])}))",
        "source": f"(source_region LIKE {like})",
    }


# --- ad-hoc SQL ---------------------------------------------------------------------------

_FORBIDDEN = re.compile(
    r"\b(INSERT|ALTER|DROP|CREATE|TRUNCATE|RENAME|OPTIMIZE|SYSTEM|KILL|ATTACH|DETACH|GRANT|REVOKE|SET|DELETE|UPDATE|"
    r"EXCHANGE|MOVE|USE|INTO\s+OUTFILE)\b", re.IGNORECASE)
_TABLE_FUNCTIONS = re.compile(r"\b(file|url|remote|remoteSecure|cluster|mysql|postgresql|s3|hdfs|jdbc|odbc|input|executable)\s*\(",
                              re.IGNORECASE)
_STRINGS_AND_COMMENTS = re.compile(r"'(?:\\.|[^'\\])*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
REGION_TABLES = {"events": "event", "event_subjects": "event", "hits": "hit"}


def check_read_only(sql: str) -> str:
    """The statement if it is one read-only query; QueryError naming what is refused otherwise."""
    code = _STRINGS_AND_COMMENTS.sub(lambda m: "''" if m.group(0).startswith("'") else " ", sql).strip().rstrip(";").strip()
    if ";" in code:
        raise QueryError("only one statement at a time")
    first = code.split(None, 1)[0].upper() if code else ""
    if first not in ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"):
        raise QueryError(f"only read-only queries (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) are allowed, not {first or 'nothing'}")
    bad = _FORBIDDEN.search(code)
    if bad:
        raise QueryError(f"{bad.group(1).upper()} is not allowed: `intelbus sql` only reads")
    fn = _TABLE_FUNCTIONS.search(code)
    if fn:
        raise QueryError(f"table function {fn.group(1)}() is not allowed")
    return sql.strip().rstrip(";")


_AFTER_TABLE = ("WHERE|PREWHERE|GROUP|ORDER|LIMIT|OFFSET|FINAL|SAMPLE|ARRAY|LEFT|RIGHT|INNER|FULL|CROSS|OUTER|ANY|ALL|ASOF|"
                "SEMI|ANTI|GLOBAL|JOIN|ON|USING|UNION|HAVING|SETTINGS|FORMAT|WITH|INTERSECT|EXCEPT|WINDOW|QUALIFY|AS")
_TABLE_REF_OR_STRING = re.compile(
    r"'(?:\\.|[^'\\])*'"                                             # a string literal: left alone
    r"|\b(?:FROM|JOIN)\s+([A-Za-z_]\w*)\s*\("                            # a table function
    r"|\b(FROM|JOIN)\s+([A-Za-z_][\w.]*)\b"                             # FROM/JOIN table
    r"(?:\s+(?:AS\s+)?(?!(?:" + _AFTER_TABLE + r")\b)([A-Za-z_]\w*))?"    # an optional alias
    r"(?:\s+FINAL\b)?(\s*,)?",                                          # FINAL (read anyway); a comma join
    re.IGNORECASE)
# What a region-limited query may not name anywhere: other databases, and `x IN table` (reads a
# whole table without the region's filter); the other history tables are refused where they are read.
_REGION_FORBIDDEN = re.compile(r"\b(system|information_schema|default)\s*\.|\bIN\s+(?!\()([A-Za-z_][\w.]*)", re.IGNORECASE)
DEDUPLICATED_TABLES = ("events", "event_subjects", "hits", "dead_letters", "duplicates")
HISTORY_TABLES = DEDUPLICATED_TABLES + ("audit_log",)


def rewrite_tables(sql: str, database: str, scope: dict[str, str] | None = None) -> str:
    """Point an ad-hoc query's tables at what an analyst means by them.

    Every read of a history table becomes a read of its latest rows (`FINAL`: the sink is
    at-least-once, so a row may be stored twice until ClickHouse merges), in the configured
    database. With a region `scope`, only events, event_subjects and hits may be read, each
    limited to what the region may see; anything else is refused.
    """
    code = _STRINGS_AND_COMMENTS.sub(lambda m: m.group(0) if m.group(0).startswith("'") else " ", sql)
    if scope is not None:
        bare_code = _STRINGS_AND_COMMENTS.sub("''", code)
        bad = _REGION_FORBIDDEN.search(bare_code)
        if bad:
            what = f"{bad.group(1)}." if bad.group(1) else f"IN {bad.group(2)}"
            raise QueryError(f"with --region, ad-hoc SQL may not use {what} (write IN (SELECT ... FROM events) instead)"
                             if bad.group(2) else f"with --region, ad-hoc SQL may not read {what} tables")
    seen = []

    def replace(m):
        if m.group(0).startswith("'"):
            return m.group(0)
        if m.group(1) is not None:  # a table function
            if scope is not None:
                raise QueryError(f"with --region, table functions ({m.group(1)}) are not allowed")
            return m.group(0)
        keyword, table, alias, comma = m.group(2), m.group(3), m.group(4), m.group(5)
        if comma:
            raise QueryError(f"write JOIN instead of a comma after {table}: each table must be read through FROM or JOIN")
        bare = table.split(".", 1)[1] if table.startswith(f"{database}.") else table
        seen.append(bare)
        if scope is not None and bare not in REGION_TABLES:
            raise QueryError(f"with --region, ad-hoc SQL may read only {', '.join(REGION_TABLES)} (not {table})")
        if bare not in HISTORY_TABLES:
            return m.group(0)  # system tables and the like: as written (operators only)
        if bare not in DEDUPLICATED_TABLES:
            return f"{keyword} {database}.{bare}" + (f" AS {alias}" if alias else "")
        where = f" WHERE {scope[REGION_TABLES[bare]]}" if scope is not None else ""
        return f"{keyword} (SELECT * FROM {database}.{bare} FINAL{where}) AS {alias or bare}"

    rewritten = _TABLE_REF_OR_STRING.sub(replace, code)
    if scope is not None and not seen:
        raise QueryError("with --region, ad-hoc SQL must read from events, event_subjects or hits")
    return rewritten


# --- running and auditing -----------------------------------------------------------------

@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    sql: str
    elapsed_s: float = 0.0
    meta: dict = field(default_factory=dict)


def run_and_audit(executor, sql: str, *, user: str, region: str | None, purpose: str, action: str,
                  query_name: str, params: dict, readonly: bool = True) -> QueryResult:
    started = time.perf_counter()
    columns, rows = executor.query(sql, readonly=readonly)
    elapsed = time.perf_counter() - started
    audit(executor, user=user, region=region, purpose=purpose, action=action, query_name=query_name,
          query_text=sql, params=params, row_count=len(rows))
    return QueryResult(columns, rows, sql, elapsed)


def audit(executor, *, user: str, region: str | None, purpose: str, action: str, query_name: str,
          query_text: str, params: dict, row_count: int) -> None:
    """One audit_log row: who, which agency region, why, what was asked and how much came back."""
    now = time.time()
    executor.insert("audit_log", ("at", "at_ms", "user", "region", "purpose", "action", "query_name", "query_text",
                                  "params", "row_count"),
                    [(datetime.utcfromtimestamp(int(now)), int(now * 1000), user, region or "*operator*", purpose or "",
                      action, query_name, query_text, json.dumps(params, ensure_ascii=False, default=str), row_count)])


# --- output -------------------------------------------------------------------------------

def display_width(text: str) -> int:
    """Terminal columns of a string: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def format_result(result: QueryResult, fmt: str, regions=None) -> str:
    columns, rows = result.columns, result.rows
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(columns, r)), ensure_ascii=False, default=str) for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r] for r in rows]
    if regions is not None:  # region codes get their names beside them
        for row in cells:
            for i, col in enumerate(columns):
                if "region" in col and row[i] and regions.is_known(row[i]):
                    row[i] = f"{row[i]} {regions.name(row[i])}"
    widths = [max([display_width(c)] + [display_width(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(pad(c, w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(pad(v, w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
