"""Exports of named queries: the whole result as a CSV or JSON file, audited as an export.

`POST /api/v1/queries/{name}/export?format=csv|json` takes the body of the named query's route,
needs the `export` action (ops/identity/roles.yaml) and a purpose, and is audited with action
`export`, the row count and an export id. The id is in the file name, the X-Intelbus-Export-Id
header and the JSON file's `export` block: a file found elsewhere leads back to the audit row of
the read that made it (DOMAIN.md section 11, watermarking of shared data).

CSV is UTF-8 with a byte-order mark (so Excel shows Chinese) and times in China Standard Time.
"""
import csv
import io
import json
import re
import time
import uuid
from datetime import date, datetime, timezone

from fastapi import Depends, Query, Request
from fastapi.responses import StreamingResponse

from gateway.audit import AuditEntry
from gateway.history import named_query_sql, page_sql
from gateway.models import NamedQueryIn
from identity.principals import Identity
from schemas.times import CST
from sinks.queries import QueryError, load_queries

EXPORT_MAX_ROWS = 1_000_000  # beyond this, narrow the query (a period, a region)
FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json; charset=utf-8"}
_CHUNK = 2000  # rows per piece of the streamed answer


def cst_text(value: datetime) -> str:
    """'2026-11-30 09:15:52' in China Standard Time; a naive value is UTC (as ClickHouse gives it)."""
    at = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def cst_iso(value: datetime) -> str:
    at = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return at.astimezone(CST).isoformat(timespec="seconds")


_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?")


def _as_time(value):
    """A DateTime cell as a datetime: the native driver gives datetimes, JSON formats give UTC text."""
    if isinstance(value, str) and _TIME_TEXT.fullmatch(value):
        return datetime.fromisoformat(value.replace(" ", "T"))
    return value


def with_times(columns: list[str], rows: list) -> tuple[set[int], list]:
    """(the time columns, the rows with their time cells as datetimes); the first non-empty value decides."""
    found = set()
    for i in range(len(columns)):
        first = next((r[i] for r in rows if r[i] is not None and r[i] != ""), None)
        if isinstance(_as_time(first), datetime):
            found.add(i)
    if not found:
        return found, rows
    return found, [tuple(_as_time(v) if i in found else v for i, v in enumerate(r)) for r in rows]


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return cst_text(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def csv_chunks(columns: list[str], rows: list):
    """The CSV file in pieces: BOM, header (time columns marked CST), rows."""
    times, rows = with_times(columns, rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([f"{c} (CST)" if i in times else c for i, c in enumerate(columns)])
    yield "\ufeff" + buf.getvalue()
    for start in range(0, len(rows), _CHUNK):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerows([[_csv_cell(v) for v in r] for r in rows[start:start + _CHUNK]])
        yield buf.getvalue()


def _json_value(value):
    if isinstance(value, datetime):
        return cst_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def json_chunks(columns: list[str], rows: list, mark: dict):
    """The JSON file in pieces: {"export": mark, "columns": [...], "rows": [{column: value}, ...]}."""
    _, rows = with_times(columns, rows)
    yield ('{"export": ' + json.dumps(mark, ensure_ascii=False) + ', "columns": '
           + json.dumps(columns, ensure_ascii=False) + ', "rows": [')
    for start in range(0, len(rows), _CHUNK):
        piece = ",\n".join(json.dumps({c: _json_value(v) for c, v in zip(columns, r)}, ensure_ascii=False, default=str)
                           for r in rows[start:start + _CHUNK])
        yield ("," if start else "\n") + piece
    yield "\n]}\n"


def file_name(query: str, fmt: str, export_id: str, now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=CST).strftime("%Y%m%d-%H%M%S")
    return f"intelbus-{query}-{stamp}-{export_id[:8]}.{fmt}"


def register(app, ctx) -> None:
    services = ctx.services

    @app.post("/api/v1/queries/{name}/export", tags=["history"],
              responses={200: {"content": {"text/csv": {}, "application/json": {}}}})
    def export(name: str, body: NamedQueryIn, request: Request, identity: Identity = Depends(ctx.caller),
               format: str = Query("csv", pattern="^(csv|json)$", description="csv (UTF-8 with BOM) or json")):
        """The whole result of a named query as a file (limit and offset are ignored); needs the export
        role and a purpose; audited as `export` with the row count and the export id the file carries."""
        export_id = str(uuid.uuid4())
        params = {**body.params, "format": format, "export_id": export_id}

        def refused(status, reason, region=""):
            return ctx.refuse(request, status, reason, AuditEntry(
                action="export", identity=identity, outcome="refused", reason=reason, region=region,
                purpose=body.purpose, query_name=name[:100], params=params))

        queries = load_queries()
        if name not in queries:
            raise refused(404, f"no query named {name!r} (known: {', '.join(queries)})")
        ent, view = ctx.entitled(identity, request, "export", body.region, body.purpose, name, params)
        if not body.purpose.strip():
            raise refused(400, "an export needs a purpose (a case or request reference, for the audit log)", view)
        try:
            sql = named_query_sql(queries[name], body.params, ent, view, body.purpose, services.reader.database)
        except QueryError as exc:
            raise refused(400, str(exc), view) from None
        out = ctx.run_query(request, identity, "export", page_sql(sql, EXPORT_MAX_ROWS, 0), view=view,
                            purpose=body.purpose, query_name=name, params=params)
        if len(out.rows) > EXPORT_MAX_ROWS:
            # already audited as served (the rows were read); nothing is sent
            raise refused(413, f"more than {EXPORT_MAX_ROWS:,} rows: narrow the query (a period, a region)", view)
        mark = {"id": export_id, "query": name, "params": body.params, "by": identity.name, "agency": identity.agency,
                "purpose": body.purpose, "region": view, "rows": len(out.rows),
                "exported_at": cst_iso(datetime.now(tz=timezone.utc))}
        chunks = (csv_chunks(out.columns, out.rows) if format == "csv" else json_chunks(out.columns, out.rows, mark))
        filename = file_name(name, format, export_id)
        return StreamingResponse((c.encode("utf-8") for c in chunks), media_type=FORMATS[format], headers={
            "Content-Disposition": f'attachment; filename="{filename}"', "X-Intelbus-Export-Id": export_id,
            "Cache-Control": "no-store"})
