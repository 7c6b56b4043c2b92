"""The gateway: the one door people (and, later, HTTP-only systems) use.

`create_app(settings)` builds the FastAPI application. Every route but /healthz, /readyz,
/metrics and /api/v1/login needs a bearer token (`caller` dependency); every answer is
filtered on the server by the caller's entitlement (identity.entitlement) and audited,
refusals included. The gateway holds the service credentials (Kafka, ClickHouse as
`intelbus_gateway` and `intelbus_reader`); people hold none.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from dataclasses import dataclass

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from gateway.audit import AuditEntry, AuditLog, flush_access_changes
from gateway.auth import Authenticator
from gateway.models import (AuditQuery, FeedItemsOut, LoginIn, LoginOut, NamedQueryIn, QueryOut, SqlIn, WhoAmIOut)
from identity.entitlement import Entitlement, NotEntitled
from identity.principals import Identity, IdentityError
from identity.tokens import TokenRejected, unverified_subject
from ops.metrics import READY

log = logging.getLogger("intelbus.gateway")

REQUESTS = Counter("intelbus_gateway_requests_total", "Requests answered by the gateway", ["route", "outcome"])
LATENCY = Histogram("intelbus_gateway_request_seconds", "Time to answer a request (a feed: until its first byte)",
                    ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FEED_CLIENTS = Counter("intelbus_gateway_feed_streams_total", "Feed streams opened")

bearer = HTTPBearer(auto_error=False, description="a token from POST /api/v1/login or from the configured OIDC provider")

# The browser's session (POST /api/v1/session): the token in an HTTP-only, SameSite=Strict cookie
# (Secure under TLS), and a CSRF token the page's script sends back in a header on every
# request that changes something (double submit: another site can neither read the cookie
# nor set the header).
SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "intelbus_session", "intelbus_csrf", "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXTENSIONS = ("gateway.events", "gateway.ingest", "gateway.web", "gateway.workflow_api")  # each has register(app, ctx)


@dataclass
class Services:
    """What the routes need; tests and the app factory build it."""

    settings: object
    regions: object
    auth: Authenticator
    audit_executor_factory: object   # () -> executor as intelbus_gateway (audit_log writes, audit reads)
    reader_executor_factory: object  # () -> executor as intelbus_reader (analysts' queries, read-only)
    codec: object = None
    kafka_config: dict | None = None

    def __post_init__(self):
        self._local = threading.local()

    def _executor(self, name, factory):
        ex = getattr(self._local, name, None)
        if ex is None:
            ex = factory()
            setattr(self._local, name, ex)
        return ex

    @property
    def audit_executor(self):
        return self._executor("audit", self.audit_executor_factory)

    @property
    def reader(self):
        return self._executor("reader", self.reader_executor_factory)

    def audit(self, entry: AuditEntry) -> None:
        """Write the entry; AuditUnavailable if the log cannot take it (the request is then not served)."""
        try:
            AuditLog(self.audit_executor).write(entry)
        except Exception as exc:
            self._local.audit = None  # a new connection next time
            log.error("audit log write failed: %s", exc)
            raise AuditUnavailable(f"the audit log cannot be written ({str(exc).splitlines()[0][:120]}): "
                                   "nothing is served that cannot be audited") from None


class AuditUnavailable(RuntimeError):
    pass


def _token(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return creds.credentials if creds else None


def create_app(settings=None, services: Services | None = None) -> FastAPI:
    if services is None:
        services = build_services(settings)
    app = FastAPI(title="intelbus gateway", version="1",
                  description="One authenticated door to the bus: feeds, history queries and the audit log, each "
                              "limited on the server to what the caller's agency, roles and clearance allow.")
    app.state.services = services

    @app.exception_handler(AuditUnavailable)
    async def audit_unavailable(request: Request, exc: AuditUnavailable):
        REQUESTS.labels(_action_of(request), "failed").inc()
        return JSONResponse({"detail": str(exc)}, status_code=503)

    def refuse(request: Request, status: int, reason: str, entry: AuditEntry) -> HTTPException:
        services.audit(entry)
        REQUESTS.labels(_action_of(request), "refused").inc()
        return HTTPException(status_code=status, detail=reason)

    def caller(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Identity:
        token = _token(creds)
        claims = {k: v for k, v in (("claimed_user", request.headers.get("x-intelbus-claimed-user")),
                                    ("claimed_operator", request.headers.get("x-intelbus-claimed-operator"))) if v}
        by_cookie = token is None and SESSION_COOKIE in request.cookies
        if by_cookie:
            token = request.cookies[SESSION_COOKIE]
        try:
            identity = services.auth.identify(token)
            if by_cookie and request.method in UNSAFE_METHODS:
                reason = csrf_refusal(request)
                if reason:
                    raise refuse(request, 403, reason, AuditEntry(
                        action=_action_of(request), identity=identity, outcome="refused", reason=reason,
                        query_text=request.url.path))
        except TokenRejected as exc:
            raise refuse(request, 401, str(exc), AuditEntry(
                action=_action_of(request), identity=None, outcome="refused", reason=str(exc), params=claims,
                claimed_name=unverified_subject(token) if token else "", query_text=request.url.path)) from None
        reason = spoof_refusal(identity, claims)
        if reason:
            raise refuse(request, 403, reason, AuditEntry(action=_action_of(request), identity=identity,
                                                          outcome="refused", reason=reason, params=claims,
                                                          query_text=request.url.path))
        return identity

    def entitled(identity: Identity, request: Request, action: str, region: str | None, purpose: str = "",
                 query_text: str = "", params: dict | None = None) -> tuple[Entitlement, str]:
        """The caller's entitlement and view region, or a 403 (audited) saying what is missing."""
        ent = Entitlement(identity, services.regions)
        try:
            ent.require(action)
            return ent, ent.view_region(region)
        except NotEntitled as exc:
            raise refuse(request, 403, str(exc), AuditEntry(
                action=action, identity=identity, outcome="refused", reason=str(exc), region=region or "",
                purpose=purpose, query_text=query_text, params=params or {})) from None

    # --- health and metrics -------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    @app.get("/readyz", include_in_schema=False)
    def readyz():
        try:
            services.audit_executor.query("SELECT 1")
        except Exception as exc:
            services._local.audit = None
            return JSONResponse({"ready": False, "reason": f"ClickHouse: {str(exc).splitlines()[0][:200]}"}, 503)
        return {"ready": True}

    @app.get("/metrics", include_in_schema=False)
    def metrics():
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    # --- session ------------------------------------------------------------------------

    @app.post("/api/v1/login", response_model=LoginOut, tags=["session"])
    def login(body: LoginIn, request: Request):
        """A short-lived token for a name and password. Wrong name and wrong password read the same."""
        started = time.perf_counter()
        try:
            token, expires_at, identity = services.auth.login(body.name, body.password)
        except IdentityError as exc:
            raise refuse(request, 401, str(exc), AuditEntry(action="login", identity=None, outcome="refused",
                                                            reason=str(exc), claimed_name=body.name[:64])) from None
        services.audit(AuditEntry(action="login", identity=identity, params={"expires_at": int(expires_at)}))
        LATENCY.labels("login").observe(time.perf_counter() - started)
        REQUESTS.labels("login", "ok").inc()
        return LoginOut(token=token, expires_at=expires_at,
                        identity=Entitlement(identity, services.regions).describe())

    @app.post("/api/v1/session", tags=["session"])
    def open_session(body: LoginIn, request: Request):
        """The browser's login: the same check as /api/v1/login, the token kept in an HTTP-only cookie.
        The answer carries the CSRF token the page sends back as X-CSRF-Token on POST/PUT/PATCH/DELETE."""
        import secrets

        try:
            token, expires_at, identity = services.auth.login(body.name, body.password)
        except IdentityError as exc:
            raise refuse(request, 401, str(exc), AuditEntry(action="login", identity=None, outcome="refused",
                                                            reason=str(exc), claimed_name=body.name[:64],
                                                            params={"via": "browser"})) from None
        services.audit(AuditEntry(action="login", identity=identity,
                                  params={"expires_at": int(expires_at), "via": "browser"}))
        REQUESTS.labels("session", "ok").inc()
        csrf = secrets.token_urlsafe(24)
        response = JSONResponse({"expires_at": expires_at, "csrf_token": csrf,
                                 "identity": Entitlement(identity, services.regions).describe()})
        secure = is_tls(request)
        max_age = max(1, int(expires_at - time.time()))
        response.set_cookie(SESSION_COOKIE, token, max_age=max_age, httponly=True, samesite="strict", secure=secure,
                            path="/")
        response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False, samesite="strict", secure=secure,
                            path="/")
        return response

    @app.delete("/api/v1/session", tags=["session"])
    def close_session(request: Request, identity: Identity = Depends(caller)):
        """Log the browser out: the cookies are cleared (the token itself expires at its time)."""
        services.audit(AuditEntry(action="logout", identity=identity, params={"via": "browser"}))
        REQUESTS.labels("session", "ok").inc()
        response = JSONResponse({"logged_out": identity.name})
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", samesite="strict", secure=is_tls(request))
        return response

    @app.get("/api/v1/whoami", response_model=WhoAmIOut, tags=["session"])
    def whoami(request: Request, identity: Identity = Depends(caller), region: str | None = None):
        """Who the token says you are, what you may do, and what you may see."""
        ent = Entitlement(identity, services.regions)
        try:
            view = ent.view_region(region)
        except NotEntitled as exc:
            raise refuse(request, 403, str(exc), AuditEntry(action="whoami", identity=identity, outcome="refused",
                                                            reason=str(exc), region=region or "")) from None
        REQUESTS.labels("whoami", "ok").inc()
        return WhoAmIOut(**ent.describe(view))

    # --- history ------------------------------------------------------------------------

    @app.get("/api/v1/queries", tags=["history"])
    def list_queries(identity: Identity = Depends(caller)):
        """The named queries, their parameters and whether they need a purpose."""
        from sinks.queries import load_queries

        return [{"name": q.name, "description": q.description, "purpose_required": q.purpose_required,
                 "params": [{"name": p.name, "type": p.type, "default": p.default, "help": p.help} for p in q.params]}
                for q in load_queries().values()]

    @app.post("/api/v1/queries/{name}", response_model=QueryOut, tags=["history"])
    def run_named(name: str, body: NamedQueryIn, request: Request, identity: Identity = Depends(caller)):
        """Run a named query over what the caller may see; audited with its purpose and row count."""
        from gateway.history import named_query_sql
        from sinks.queries import QueryError, load_queries

        queries = load_queries()
        if name not in queries:
            reason = f"no query named {name!r} (known: {', '.join(queries)})"
            raise refuse(request, 404, reason, AuditEntry(action="query", identity=identity, outcome="refused",
                                                          reason=reason, query_name=name[:100], purpose=body.purpose))
        ent, view = entitled(identity, request, "query", body.region, body.purpose, name, body.params)
        try:
            sql = named_query_sql(queries[name], body.params, ent, view, body.purpose, services.reader.database)
        except QueryError as exc:
            raise refuse(request, 400, str(exc), AuditEntry(action="query", identity=identity, outcome="refused",
                                                            reason=str(exc), region=view, purpose=body.purpose,
                                                            query_name=name, params=body.params)) from None
        from gateway.history import page_of, page_sql

        out = _run(request, identity, "query", page_sql(sql, body.limit, body.offset), view=view, purpose=body.purpose,
                   query_name=name, params={**body.params, "page": {"limit": body.limit, "offset": body.offset}})
        out.rows, out.has_more, out.next_offset = page_of(out.rows, body.limit, body.offset)
        out.offset = body.offset
        return out

    @app.post("/api/v1/sql", response_model=QueryOut, tags=["history"])
    def run_sql(body: SqlIn, request: Request, identity: Identity = Depends(caller)):
        """One read-only statement; every table it reads is limited to what the caller may see."""
        from gateway.history import adhoc_sql

        ent, view = entitled(identity, request, "sql", body.region, body.purpose, body.sql)
        try:
            sql = adhoc_sql(body.sql, ent, view, services.reader.database)
        except ValueError as exc:  # identity.sqlscope.ScopeError
            raise refuse(request, 400, str(exc), AuditEntry(action="sql", identity=identity, outcome="refused",
                                                            reason=str(exc), region=view, purpose=body.purpose,
                                                            query_text=body.sql)) from None
        return _run(request, identity, "sql", sql, view=view, purpose=body.purpose, query_name="",
                    params={"sql": body.sql})

    def _run(request, identity, action, sql, *, view, purpose, query_name, params) -> QueryOut:
        started = time.perf_counter()
        try:
            columns, rows = services.reader.query(sql, readonly=True)
        except Exception as exc:  # the server's own refusal or error, in one line
            services._local.reader = None
            reason = server_error_text(exc)
            raise refuse(request, 400, reason, AuditEntry(action=action, identity=identity, outcome="failed",
                                                          reason=reason, region=view, purpose=purpose,
                                                          query_name=query_name, query_text=sql, params=params)) from None
        elapsed = time.perf_counter() - started
        services.audit(AuditEntry(action=action, identity=identity, region=view, purpose=purpose, query_name=query_name,
                                  query_text=sql, params=params, row_count=len(rows)))
        LATENCY.labels(action).observe(elapsed)
        REQUESTS.labels(action, "ok").inc()
        return QueryOut(columns=columns, rows=[list(r) for r in rows], elapsed_ms=round(elapsed * 1000, 1), region=view)

    # --- feed ---------------------------------------------------------------------------

    @app.get("/api/v1/feed", tags=["feed"], response_model=FeedItemsOut,
             responses={200: {"content": {"application/x-ndjson": {}}}})
    async def feed(request: Request, identity: Identity = Depends(caller), region: str | None = None,
                   since: str = "24h", follow: bool = False, purpose: str = "live feed", fresh: bool = False):
        """Hits and shared alerts the caller may see, as NDJSON (one item a line); with follow=true the
        stream stays open (a heartbeat line every 5 s) and resumes after a reconnect where it stopped."""
        from gateway.feed import FeedReader, FeedRequest
        from sinks.feed import parse_duration

        ent, view = entitled(identity, request, "feed", region, purpose, "feed")
        try:
            since_s = parse_duration(since)
        except ValueError as exc:
            raise refuse(request, 400, str(exc), AuditEntry(action="feed", identity=identity, outcome="refused",
                                                            reason=str(exc), region=view, purpose=purpose)) from None
        req = FeedRequest(view=view, since_s=since_s, follow=follow, group=f"feed-{identity.name}-{view}", fresh=fresh)
        reader = await asyncio.to_thread(FeedReader, services.kafka_config, services.codec, ent, req)
        FEED_CLIENTS.inc()
        return StreamingResponse(_stream(request, identity, reader, req, purpose), media_type="application/x-ndjson")

    async def _stream(request, identity, reader, req, purpose):
        import json

        shown, last_beat = 0, time.monotonic()
        try:
            while True:
                if not req.follow and reader.caught_up():
                    break
                if req.follow and await request.is_disconnected():
                    break
                items = await asyncio.to_thread(reader.poll)
                if items:
                    shown += len(items)
                    # audited before it is sent: an item the log cannot record is not sent
                    await asyncio.to_thread(services.audit, AuditEntry(
                        action="feed", identity=identity, region=req.view, purpose=purpose, query_name="feed",
                        query_text=reader.described, row_count=len(items),
                        params={"hit_ids": [i["hit_id"] for i in items if i["feed_item"] == "hit"][:100],
                                "alert_event_ids": [i["event_id"] for i in items if i["feed_item"] == "alert"][:100]}))
                    yield "".join(json.dumps(i, ensure_ascii=False, default=str) + "\n" for i in items)
                    await asyncio.to_thread(reader.commit)
                elif req.follow and time.monotonic() - last_beat >= 5:
                    last_beat = time.monotonic()
                    yield json.dumps({"feed_item": "heartbeat", "at_ms": int(time.time() * 1000)}) + "\n"
        finally:
            if shown == 0:
                await asyncio.to_thread(services.audit, AuditEntry(
                    action="feed", identity=identity, region=req.view, purpose=purpose, query_name="feed",
                    query_text=reader.described, row_count=0))
            await asyncio.to_thread(reader.close)

    # --- audit --------------------------------------------------------------------------

    @app.post("/api/v1/audit", response_model=QueryOut, tags=["audit"])
    def read_audit(body: AuditQuery, request: Request, identity: Identity = Depends(caller)):
        """Audit rows, newest first, filtered; for auditors. Reading the log is itself audited."""
        from gateway.audit_query import audit_sql

        entitled(identity, request, "audit", None, body.purpose, "audit", body.model_dump())
        try:
            sql = audit_sql(body, services.audit_executor.database)
        except ValueError as exc:
            raise refuse(request, 400, str(exc), AuditEntry(action="audit", identity=identity, outcome="refused",
                                                            reason=str(exc), params=body.model_dump())) from None
        started = time.perf_counter()
        columns, rows = services.audit_executor.query(sql, readonly=True)
        services.audit(AuditEntry(action="audit", identity=identity, purpose=body.purpose, query_text=sql,
                                  params=body.model_dump(), row_count=len(rows)))
        REQUESTS.labels("audit", "ok").inc()
        return QueryOut(columns=columns, rows=[list(r) for r in rows],
                        elapsed_ms=round((time.perf_counter() - started) * 1000, 1), region="")

    # --- the parts that live in their own modules (live events, ingest, the web console) ---
    import importlib

    ctx = GatewayContext(services=services, caller=caller, entitled=entitled, refuse=refuse, run_query=_run)
    for module in EXTENSIONS:
        importlib.import_module(module).register(app, ctx)
    return app


@dataclass
class GatewayContext:
    """What a route module (gateway.events, gateway.ingest, gateway.web) gets from the app:

    services   Services (settings, regions, auth, audit(), reader, codec, kafka_config)
    caller     the FastAPI dependency giving the authenticated Identity (bearer or session cookie + CSRF)
    entitled   (identity, request, action, region, purpose, query_text, params) -> (Entitlement, view region),
               or raises an audited 403 naming what is missing
    refuse     (request, status, reason, AuditEntry) -> HTTPException, after auditing the entry
    run_query  (request, identity, action, sql, *, view, purpose, query_name, params) -> QueryOut, audited
    """

    services: Services
    caller: object
    entitled: object
    refuse: object
    run_query: object


def is_tls(request: Request) -> bool:
    """Served over https (directly or behind a proxy that says so): session cookies get Secure."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def csrf_refusal(request: Request) -> str:
    """Why a cookie-authenticated request that changes something is refused ('' if its CSRF token matches)."""
    import hmac

    sent, kept = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
    if not sent:
        return "CSRF token missing: send the X-CSRF-Token header the login answer gave (the console does)"
    if not kept or not hmac.compare_digest(sent, kept):
        return "CSRF token wrong: it does not match this session's (log in again)"
    return ""


def server_error_text(exc: Exception) -> str:
    """ClickHouse's refusal in one line: 'Code: 62. DB::Exception: Syntax error: ...' without the stack trace."""
    text = str(exc).split("Stack trace")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:400]


def spoof_refusal(identity: Identity, claims: dict) -> str:
    """Why a request that claims more than its token is refused ('' if it claims nothing more)."""
    claimed_user = claims.get("claimed_user")
    if claimed_user and claimed_user != identity.name:
        return (f"--user {claimed_user} grants nothing: requests run as the logged-in identity {identity.name} "
                f"(log in as {claimed_user} to act as them)")
    if claims.get("claimed_operator"):
        return ("INTELBUS_OPERATOR grants nothing any more: what you may see follows from your login "
                f"({identity.name}); unset it")
    return ""


_ACTIONS = {"queries": "query"}  # the audit log's action for a path segment, where they differ


def _action_of(request: Request) -> str:
    parts = request.url.path.split("/")
    if len(parts) > 3 and parts[1] == "api" and parts[3] == "events":  # GET: the live feed; POST: ingest
        return "publish" if request.method == "POST" else "feed"
    return _ACTIONS.get(parts[3], parts[3]) if len(parts) > 3 and parts[1] == "api" else request.url.path


def build_services(settings) -> Services:
    """The real services: the principal store, the token key, ClickHouse and Kafka as this gateway."""
    from identity.store import store_path
    from identity.tokens import TokenIssuer, key_path, load_or_create_key
    from ops.secrets import clickhouse_url_as
    from schemas.regions import load_regions
    from schemas.wire import SchemaCodec
    from sinks.engine import DriverExecutor

    oidc = None
    if settings.oidc_config:
        from identity.oidc import OidcVerifier, load_oidc_config

        oidc = OidcVerifier(load_oidc_config(settings.oidc_config))
    auth = Authenticator(store_path(settings), TokenIssuer(load_or_create_key(key_path(settings)),
                                                           ttl_s=settings.token_ttl_s), oidc)
    gateway_url = clickhouse_url_as(settings, "intelbus_gateway")
    reader_url = clickhouse_url_as(settings, "intelbus_reader")
    return Services(settings=settings, regions=load_regions(), auth=auth,
                    audit_executor_factory=lambda: DriverExecutor(gateway_url),
                    reader_executor_factory=lambda: DriverExecutor(reader_url),
                    codec=SchemaCodec(url=settings.registry_url), kafka_config=settings.kafka_config("intelbus-gateway"))


def serve(settings, host: str, port: int) -> int:
    """Run the gateway in the foreground (what `intelbus gateway` and `up` start)."""
    import uvicorn

    from identity.store import PrincipalStore, store_path

    from identity.keys import KeyStore, keys_path

    services = build_services(settings)
    flush_access_changes(PrincipalStore(store_path(settings)), services.audit_executor)
    with KeyStore(keys_path(settings)) as keys:  # `intelbus keys` changes made while ClickHouse was down
        flush_access_changes(keys, services.audit_executor)
    app = create_app(settings, services)
    # The live feed hub reads Kafka on a thread of its own and waits for the GIL the event loop
    # holds while it writes to the clients: at Python's 5 ms switch interval the hub's work took
    # 3.5 s of wall time for 0.5 s of CPU in a 60-s fan-out run (bench/results/fanout.md).
    sys.setswitchinterval(settings.gateway_gil_switch_s)
    READY.set(1)
    log.info("gateway on http://%s:%d (OpenAPI at /docs)", host, port)
    # uvicorn's HTTP implementation: "auto" takes httptools when installed (uvicorn[standard]), else h11;
    # INTELBUS_GATEWAY_HTTP=h11|httptools pins one (bench/bench_fanout.py compares them)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=settings.gateway_http)
    return 0
