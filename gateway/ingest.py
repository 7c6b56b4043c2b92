"""Ingest for systems without Kafka: `POST /api/v1/events/{kind}` (the Confluent REST Proxy's job, for our contract).

A regional system logged in with the integrator role sends one JSON record, NDJSON (one
record a line) or CSV with its header, and gets `202` once Kafka has acknowledged what was
accepted, with the event ids and every refused line:

    {"accepted": 2, "event_ids": ["…", "…"], "duplicates": 0, "dead_lettered": 1,
     "refused": [{"line": 3, "field": "persons[0].id_number", "reason": "check digit is 1, expected X"}]}

Each line goes through the same rule as `intelbus publish` (producers.publish.check_line:
validation and normalisation of schemas.records, the identity's publish regions, the
signing key's regions), is signed on the caller's behalf with the active key of the system
the caller is (identity/keys.py: the key store's system named like the login) and produced
by the gateway's one Kafka producer (idempotent, acks=all) as the principal intelbus-gateway.
Refused lines go to intel.dlq with their raw text, signed too. A request whose every line
is refused is still a 202 (accepted 0): the answer says why for each line. Event ids are
derived from (source_region, source_system, source_ref, revision), so sending a batch again
is harmless: the stream jobs drop the duplicates.

Audited once per request (action "publish"), with the counts, never the records.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from fastapi import Depends, Request
from pydantic import BaseModel, Field

log = logging.getLogger("intelbus.gateway.ingest")

KINDS = ("alert", "wanted", "incident")
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_LINES = 10_000
DELIVERY_TIMEOUT_S = 30.0
GATEWAY_PRINCIPAL = "intelbus-gateway"  # ops/acls.yaml: may write the input topics and intel.dlq
CONTENT_TYPES = {"application/x-ndjson": "jsonl", "application/jsonl": "jsonl", "application/json": "json",
                 "text/csv": "csv"}


class RefusedLine(BaseModel):
    line: int = Field(description="the line's number in the body (plus line_offset)")
    field: str = Field(description="the field at fault, e.g. persons[0].id_number; '' for the whole line")
    reason: str


class IngestOut(BaseModel):
    accepted: int = Field(description="records Kafka has acknowledged (none when dry_run)")
    event_ids: list[str] = Field(description="their event ids, in line order")
    duplicates: int = Field(0, description="lines repeating an earlier line's event id in this body (sent once)")
    refused: list[RefusedLine]
    dead_lettered: int = Field(description="refused lines sent to intel.dlq with their raw text")
    dry_run: bool = False


class BodyError(ValueError):
    """A body that cannot be read as records at all; `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_body(content_type: str, body: bytes, *, line_offset: int = 0, max_lines: int = MAX_LINES) -> list:
    """The body's records as producers.inputs.InputLine (numbered from 1 + line_offset), or BodyError."""
    from producers.inputs import InputLine, read_csv, read_jsonl

    media = (content_type or "").split(";")[0].strip().lower()
    fmt = CONTENT_TYPES.get(media)
    if fmt is None:
        raise BodyError(415, f"Content-Type {media or '(none)'} is not accepted: send application/x-ndjson (one JSON "
                             f"record a line), application/json (one record) or text/csv (a header, then records)")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"the body is not UTF-8 (byte {exc.start}): send UTF-8 text") from None
    if fmt == "json":
        import json

        if not text.strip():
            return []
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            return [InputLine(1 + line_offset, text, None, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
        if not isinstance(record, dict):
            return [InputLine(1 + line_offset, text, None, f"a record must be a JSON object, got {type(record).__name__} "
                                                           f"(send several records as application/x-ndjson)")]
        return [InputLine(1 + line_offset, text, record)]
    lines = text.splitlines(keepends=True)
    records = sum(1 for line in lines if line.strip()) - (1 if fmt == "csv" and lines else 0)
    if records > max_lines:
        raise BodyError(413, f"{records} records in one request, at most {max_lines}: send batches "
                             f"(`intelbus publish` sends {500})")
    if fmt == "csv":
        return list(read_csv(lines, start=2 + line_offset))
    return list(read_jsonl(lines, start=1 + line_offset))


# --- the gateway's Kafka producer: one per process, each request waiting for its own reports ---

class SharedProducer:
    """One confluent_kafka Producer (idempotent, acks=all) for every request, polled by one thread."""

    def __init__(self, config: dict):
        from confluent_kafka import Producer

        self.producer = Producer(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ingest-producer-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.producer.flush(timeout)


class RequestShare:
    """What RegionalProducer takes as its `kafka_producer` for one request: produce() on the shared
    producer with this request's delivery report, flush() waits for this request's messages only."""

    def __init__(self, shared: SharedProducer):
        self.shared = shared
        self.on_report = None  # RegionalProducer._delivered: counts failures
        self._pending = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._done.set()

    def produce(self, topic, value=None, key=None, headers=None, **_):
        with self._lock:
            self._pending += 1
            self._done.clear()
        try:
            self.shared.producer.produce(topic, value, key, headers=headers, on_delivery=self._report)
        except BaseException:
            self._settled(1)
            raise

    def _report(self, err, msg) -> None:
        if self.on_report is not None:
            self.on_report(err, msg)
        self._settled(1)

    def _settled(self, n: int) -> None:
        with self._lock:
            self._pending -= n
            if self._pending <= 0:
                self._done.set()

    def poll(self, timeout: float = 0) -> int:
        return self.shared.producer.poll(timeout) if timeout else 0

    def flush(self, timeout: float = DELIVERY_TIMEOUT_S) -> int:
        self._done.wait(timeout)
        return len(self)

    def __len__(self) -> int:
        return max(self._pending, 0)


@dataclass
class IngestResult:
    event_ids: list[str] = field(default_factory=list)
    refused: list = field(default_factory=list)  # producers.publish.Refused
    duplicates: int = 0
    dead_lettered: int = 0
    undelivered: int = 0
    delivery_errors: list[str] = field(default_factory=list)


def ingest_lines(kind: str, lines: list, *, producer, publisher, is_within, source: str,
                 dry_run: bool = False, default_system: str | None = None) -> IngestResult:
    """Check every line (producers.publish.check_line), produce the good ones once, dead-letter the others,
    and wait for Kafka's reports. producer: a RegionalProducer (its signer signs); default_system: the
    source_system of records that name none when the producer has no system of its own."""
    from producers.publish import Refused, check_line

    result = IngestResult()
    seen: set[str] = set()
    signer = producer.signer
    validate = producer.validate
    if default_system and not producer.system:
        def validate(kind, record):
            if isinstance(record, dict) and not record.get("source_system"):
                record = {**record, "source_system": default_system}
            return producer.validate(kind, record)
    for line in lines:
        valid = check_line(kind, line, validate, publisher, signer, is_within)
        if isinstance(valid, Refused):
            result.refused.append(valid)
            if not dry_run:
                producer.send_dead_letter(stage="PUBLISH", source=f"{source}:{line.line_no}", reason=valid.reason,
                                          raw=line.raw.encode(), kind=kind, field=valid.field or None)
                result.dead_lettered += 1
            continue
        if valid["event_id"] in seen:
            result.duplicates += 1
            continue
        seen.add(valid["event_id"])
        if not dry_run:
            producer.publish_valid(kind, valid)
        result.event_ids.append(valid["event_id"])
    if not dry_run:
        result.undelivered = producer.flush(DELIVERY_TIMEOUT_S)
        stats = producer.stats
        result.undelivered += stats.failed
        result.delivery_errors = stats.errors[:5]
    return result


class SigningKeys:
    """The active signing key of a system, from the key store (identity/keys.py), read on every request
    (a rotation or revocation by `intelbus keys` counts at once)."""

    def __init__(self, settings):
        from identity.keys import keys_path

        self.path = keys_path(settings)
        self._lock = threading.Lock()
        self._store = None

    def active(self, system: str):
        from identity.keys import KeyStore

        with self._lock:
            if self._store is None:
                self._store = KeyStore(self.path)
            keys = self._store.active(system)
        return keys[0] if keys else None


def no_key_reason(system: str, publish_regions) -> str:
    regions = " ".join(f"--region {r}" for r in sorted(publish_regions)) or "--region CODE"
    return (f"no signing key for system {system}: the gateway signs what {system} publishes with that system's active "
            f"key; an operator makes it with `intelbus keys create {system} {regions}`")


# --- the route --------------------------------------------------------------------------------

def register(app, ctx) -> None:
    from fastapi import APIRouter, HTTPException
    from fastapi.concurrency import run_in_threadpool

    from gateway.audit import AuditEntry
    from identity.principals import Identity

    services = ctx.services
    router = APIRouter(tags=["ingest"])
    state: dict = {}
    state_lock = threading.RLock()

    def shared_producer():
        """Made on the first ingest, then kept for the life of the process."""
        with state_lock:
            if "producer" not in state:
                from producers.regional import producer_config

                config = producer_config(as_gateway(), **(services.kafka_config or {}))
                config.update({"client.id": "intelbus-gateway-ingest", "linger.ms": 5})
                state["producer"] = state.get("factory", SharedProducer)(config)
            return state["producer"]

    app.state.ingest = state  # tests put a factory of a fake producer here

    def as_gateway():
        """The settings with the gateway's own Kafka principal: RegionalProducer builds its (unused) config from
        them, and a gateway holds no other principal's password."""
        with state_lock:
            if "settings" not in state:
                import dataclasses

                state["settings"] = dataclasses.replace(services.settings, kafka_user=GATEWAY_PRINCIPAL)
            return state["settings"]

    def signing_keys():
        with state_lock:
            if "keys" not in state:
                state["keys"] = SigningKeys(services.settings)
            return state["keys"]

    def close_producer():
        producer = state.get("producer")
        if producer is not None:
            producer.close()

    app.router.on_shutdown.append(close_producer)

    def audit_refusal(request, identity, status, reason, params):
        return ctx.refuse(request, status, reason, AuditEntry(action="publish", identity=identity, outcome="refused",
                                                              reason=reason, query_text=request.url.path, params=params))

    def run(kind: str, request: Request, identity: Identity, body: bytes, content_type: str, params: dict,
            region: str | None, system: str | None, source: str, line_offset: int, dry_run: bool) -> IngestOut:
        from producers.publish import Publisher
        from producers.regional import RegionalProducer
        from schemas.regions import validate_region_code
        from schemas.wire import RegistryUnavailable

        started = time.perf_counter()
        ctx.entitled(identity, request, "publish", None, "", request.url.path, params)
        if kind not in KINDS:
            raise audit_refusal(request, identity, 404, f"no kind {kind!r}: POST to /api/v1/events/alert, "
                                                        f"/api/v1/events/wanted or /api/v1/events/incident", params)
        publisher = Publisher(identity.name, frozenset(identity.publish_regions))
        if region:
            try:
                validate_region_code(region)
            except ValueError as exc:
                raise audit_refusal(request, identity, 400, f"region {region}: {exc}", params) from None
            if not publisher.may_publish_for(region):
                raise audit_refusal(request, identity, 403, f"not entitled to publish for region {region}: "
                                    f"{identity.name} publishes for {', '.join(sorted(publisher.regions)) or 'no region'}",
                                    params)
        try:
            lines = parse_body(content_type, body, line_offset=line_offset)
        except BodyError as exc:
            raise audit_refusal(request, identity, exc.status, exc.reason, params) from None
        key = signing_keys().active(identity.name)
        if key is None:
            raise audit_refusal(request, identity, 409, no_key_reason(identity.name, identity.publish_regions), params)
        share = None if dry_run else RequestShare(shared_producer())
        producer = RegionalProducer(region=region, system=system, settings=as_gateway(),
                                    codec=services.codec, signer=key,
                                    kafka_producer=share if share is not None else _NoKafka())
        if share is not None:
            share.on_report = producer._delivered
        try:
            result = ingest_lines(kind, lines, producer=producer, publisher=publisher,
                                  is_within=services.regions.is_within, source=source, dry_run=dry_run,
                                  default_system=identity.name)
        except RegistryUnavailable as exc:  # not the records' fault: nothing is refused or dead-lettered for it
            if share is not None:
                producer.flush(DELIVERY_TIMEOUT_S)  # what went out before, delivered: a resend drops it as a duplicate
            reason = (f"{exc}: send the batch again in a minute (event ids are derived from the records, so what "
                      f"did arrive is dropped as a duplicate)")
            services.audit(AuditEntry(action="publish", identity=identity, outcome="failed", reason=reason[:500],
                                      query_text=request.url.path, params={**params, "lines": len(lines)}))
            raise HTTPException(status_code=503, detail=reason, headers={"Retry-After": "60"}) from None
        counts = {**params, "lines": len(lines), "accepted": 0 if dry_run else len(result.event_ids),
                  "refused": len(result.refused), "duplicates": result.duplicates,
                  "dead_lettered": result.dead_lettered, "key_id": key.key_id,
                  "refused_lines": [r.line for r in result.refused][:100]}
        if result.undelivered:
            reason = (f"Kafka did not confirm {result.undelivered} message(s) within {DELIVERY_TIMEOUT_S:.0f} s "
                      f"({'; '.join(result.delivery_errors) or 'timed out'}): send the batch again (event ids are "
                      f"derived from the records, so what did arrive is dropped as a duplicate)")
            services.audit(AuditEntry(action="publish", identity=identity, outcome="failed", reason=reason,
                                      query_text=request.url.path, params=counts, row_count=len(result.event_ids)))
            raise HTTPException(status_code=503, detail=reason)
        services.audit(AuditEntry(action="publish", identity=identity, query_text=request.url.path, params=counts,
                                  row_count=0 if dry_run else len(result.event_ids),
                                  region=region or ""))
        from gateway.app import LATENCY, REQUESTS

        LATENCY.labels("publish").observe(time.perf_counter() - started)
        REQUESTS.labels("publish", "ok").inc()
        return IngestOut(accepted=0 if dry_run else len(result.event_ids), event_ids=result.event_ids,
                         duplicates=result.duplicates, dead_lettered=result.dead_lettered, dry_run=dry_run,
                         refused=[RefusedLine(line=r.line, field=r.field, reason=r.reason) for r in result.refused])

    @router.post("/api/v1/events/{kind}", status_code=202, response_model=IngestOut,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/x-ndjson": {"schema": {"type": "string"}, "example": '{"source_ref": "…"}\n'},
                     "application/json": {"schema": {"type": "object"}},
                     "text/csv": {"schema": {"type": "string"}}}}})
    async def ingest(kind: str, request: Request, identity: Identity = Depends(ctx.caller), region: str | None = None,
                     system: str | None = None, source: str = "http", line_offset: int = 0, dry_run: bool = False):
        """Publish records as the authenticated system: one JSON record (application/json), NDJSON
        (application/x-ndjson, at most 10,000 lines) or CSV with a header (text/csv); at most 10 MB.
        Each line is checked as `intelbus publish` checks it, signed with the system's active key and
        produced; refused lines are listed (line, field, reason) and dead-lettered with their raw text.
        202 once Kafka has acknowledged the accepted records (accepted may be 0: see `refused`).
        region / system fill source_region / source_system for records without them (a record without
        source_system and no system given gets the caller's name); source names the body in dead letters (SOURCE:LINE); line_offset is added to
        every line number (a batch cut from a file keeps the file's numbers); dry_run=true checks only."""
        params = {"kind": kind[:20], "region": region or "", "system": (system or "")[:64], "source": source[:100],
                  "content_type": request.headers.get("content-type", "")[:60], "dry_run": dry_run}
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise await run_in_threadpool(audit_refusal, request, identity, 413, _too_big(int(declared)), params)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise await run_in_threadpool(audit_refusal, request, identity, 413, _too_big(size), params)
            chunks.append(chunk)
        params["bytes"] = size
        return await run_in_threadpool(run, kind, request, identity, b"".join(chunks),
                                       request.headers.get("content-type", ""), params, region, system,
                                       source[:100], line_offset, dry_run)

    app.include_router(router)


def _too_big(size: int) -> str:
    return (f"the body has {size:,} bytes or more, at most {MAX_BODY_BYTES:,} are taken in one request: send batches "
            f"of at most {MAX_LINES:,} lines (`intelbus publish` sends 500)")


class _NoKafka:
    """dry_run: a producer that must never be used."""

    def produce(self, *a, **k):
        raise AssertionError("dry_run produces nothing")

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=0):
        return 0

    def __len__(self):
        return 0
