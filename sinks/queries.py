"""Named analyst queries (sinks/queries/*.sql) and how results are shown.

Each .sql file starts with a header of `-- key: value` lines (name, description, params,
whether a purpose is required) and uses placeholders: `{param}` for a parameter (rendered
as a safely quoted literal) and `{scope:ALIAS}` where the caller's entitlement filter goes
(identity.entitlement builds it; the gateway renders and runs the query, audited).
"""
from __future__ import annotations

import csv
import io
import json
import re
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
              "h": "hit", "hits": "hit", "d": "source", "dl": "source", "w": "workflow", "workflow_events": "workflow"}


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
        def scope_of(m):  # fails closed: a placeholder whose kind the caller's scope lacks is an error, not "1"
            kind = ALIAS_KIND.get(m.group(1), "event")
            if kind not in scope:
                raise QueryError(f"{self.name}: no entitlement filter for {m.group(1)} ({kind})")
            return scope[kind]

        text = _SCOPE.sub(scope_of, self.sql)
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


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    sql: str
    elapsed_s: float = 0.0
    meta: dict = field(default_factory=dict)


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
