"""The live feed over Server-Sent Events: GET /api/v1/events.

What the caller's agency may see (hits, shared alerts), each item once, as

    id: <position token>\\nevent: hit|alert\\ndata: <the NDJSON feed's item, one line>\\n\\n

a heartbeat every 5 s without items (`event: heartbeat`, no id, so the browser's
Last-Event-ID stays) and `retry: 2000` at the start. A reconnect sends Last-Event-ID (or
`last_event_id=`) and gets exactly what came after that item. Items come from the process's
one Kafka consumer (gateway/hub.py), never from a consumer per browser.

Every batch sent is audited before it is sent; a client's rows are written at most once per
`INTELBUS_LIVE_AUDIT_INTERVAL_S` (default 1 s: items meanwhile wait and go in the next row),
and the rows of all clients due at once go to ClickHouse in one insert. A stream that sent
nothing is audited once when it ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse

from gateway.audit import AuditEntry
from gateway.hub import (FANOUT_LAG, SSE_CLIENTS, CatchUpReader, Hub, TokenError, advance, decode_token, encode_token,
                         stream_partitions, visible)

log = logging.getLogger("intelbus.gateway.events")

HEARTBEAT_S = 5.0
AUDIT_INTERVAL_S = float(os.environ.get("INTELBUS_LIVE_AUDIT_INTERVAL_S", "1.0"))
HUB_READY_WAIT_S = 20.0


class AuditBatcher:
    """Group commit of the streams' audit rows: whoever is due waits for one insert of all rows pending."""

    def __init__(self, services):
        self.services = services
        self.pending: list[tuple[AuditEntry, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def write(self, entry: AuditEntry) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((entry, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush())
        await fut

    def write_later(self, entry: AuditEntry) -> None:
        """For a stream's end (it may be cancelled): queued, not awaited; a failure is logged."""
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.exception() and log.error("audit of a live feed's end: %s", f.exception()))
        self.pending.append((entry, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                await asyncio.to_thread(self._insert, [e for e, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    def _insert(self, entries: list[AuditEntry]) -> None:
        if len(entries) == 1:
            self.services.audit(entries[0])
            return
        from gateway.app import AuditUnavailable
        from gateway.audit import audit_row
        from sinks.rows import AUDIT_COLUMNS

        try:
            self.services.audit_executor.insert("audit_log", AUDIT_COLUMNS, [audit_row(e) for e in entries])
        except Exception as exc:
            self.services._local.audit = None
            log.error("audit log write failed: %s", exc)
            raise AuditUnavailable(f"the audit log cannot be written ({str(exc).splitlines()[0][:120]}): "
                                   "nothing is served that cannot be audited") from None


def sse_item(entry, token: str) -> str:
    return f"id: {token}\nevent: {entry.kind}\ndata: {entry.data}\n\n"


def sse_heartbeat() -> str:
    return f'event: heartbeat\ndata: {{"at_ms": {int(time.time() * 1000)}}}\n\n'


def register(app, ctx) -> None:
    from identity.principals import Identity
    from sinks.feed import parse_duration

    services = ctx.services
    state = {"hub": None}
    batcher = AuditBatcher(services)

    def hub() -> Hub | None:
        if state["hub"] is None and services.kafka_config is not None:
            state["hub"] = Hub(services.kafka_config, services.codec).start()
        return state["hub"]

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        hub()  # start reading at once: a restarted gateway has its buffer before clients reconnect
        async with inner(a) as maybe_state:
            try:
                yield maybe_state
            finally:
                if state["hub"] is not None:
                    await asyncio.to_thread(state["hub"].stop)

    app.router.lifespan_context = lifespan

    @app.get("/api/v1/events", tags=["feed"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events: `hit` and `alert` items (data: the /api/v1/feed "
                                             "item), `heartbeat` every 5 s; each item's id resumes after it"},
                        400: {"description": "malformed or foreign Last-Event-ID, or a bad `since`"}})
    async def events(request: Request, identity: Identity = Depends(ctx.caller), region: str | None = None,
                     purpose: str = "live wall", since: str = "15m", last_event_id: str | None = None):
        """The live feed as Server-Sent Events (EventSource), resumable with Last-Event-ID."""
        ent, view = ctx.entitled(identity, request, "feed", region, purpose, "events")

        def refuse(reason: str):
            return ctx.refuse(request, 400, reason, AuditEntry(action="feed", identity=identity, outcome="refused",
                                                               reason=reason, region=view, purpose=purpose,
                                                               query_name="events"))
        try:
            since_s = parse_duration(since)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        h = hub()
        if h is None:
            raise refuse("the live feed is not available in this gateway (no Kafka configured)")
        await asyncio.to_thread(h.started.wait, HUB_READY_WAIT_S)
        if not h.partitions:
            raise refuse(h.error or "the live feed is starting: try again in a few seconds")
        tps = h.view_partitions(view, services.regions)
        token = request.headers.get("last-event-id") or last_event_id
        position = None
        if token:
            try:
                position = decode_token(token, view, tps)
            except TokenError as exc:
                raise refuse(str(exc)) from None
        stream = LiveStream(services, batcher, h, ent, identity, view, purpose, tps, position,
                            int((time.time() - since_s) * 1000))
        return StreamingResponse(stream.run(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class LiveStream:
    """One client's stream: a cursor into the hub's buffer, or a catch-up reader until it reaches it."""

    def __init__(self, services, batcher, hub: Hub, ent, identity, view, purpose, tps, position, since_ms):
        self.services, self.batcher, self.hub = services, batcher, hub
        self.ent, self.identity, self.view, self.purpose, self.tps = ent, identity, view, purpose, tps
        self.position, self.since_ms = position, since_ms
        self.resumed = position is not None
        self.shown = 0
        self.catchup: CatchUpReader | None = None
        self.cursor: int | None = None

    def _may_see(self, entry) -> bool:
        return visible(entry, self.ent, self.view)

    async def _start(self) -> None:
        if self.position is None:
            await asyncio.to_thread(self.hub.ready.wait, HUB_READY_WAIT_S)
            self.position = self.hub.offsets_since(self.tps, self.since_ms)
        if self.position is not None and self.hub.covers(self.position):
            self.cursor = self.hub.start_seq(self.position)
        else:
            self.catchup = await asyncio.to_thread(CatchUpReader, self.services.kafka_config, self.services.codec,
                                                   self.tps, self.position, self.since_ms)
            self.position = dict(self.catchup.start)

    async def _next_entries(self, wake: asyncio.Event, timeout: float):
        """The next entries to walk (maybe none after `timeout`), switching between catch-up and the hub."""
        if self.catchup is not None:
            entries = await asyncio.to_thread(self.catchup.poll)
            if self.hub.covers(self.position):
                await asyncio.to_thread(self.catchup.close)
                self.catchup, self.cursor = None, self.hub.start_seq(self.position)
            return entries
        got = self.hub.read(self.cursor)
        if got is None:  # the buffer dropped what this stream still needs (a very slow client): read it itself
            self.catchup = await asyncio.to_thread(CatchUpReader, self.services.kafka_config, self.services.codec,
                                                   self.tps, self.position)
            return []
        entries, self.cursor = got
        if not entries:
            wake.clear()
            got = self.hub.read(self.cursor)  # anything appended between the read and the clear
            if got and got[0]:
                entries, self.cursor = got
                return entries
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
        return entries

    def _audit_entry(self, items) -> AuditEntry:
        hits = [e for e, _ in items if e.kind == "hit"]
        alerts = [e for e, _ in items if e.kind == "alert"]
        return AuditEntry(action="feed", identity=self.identity, region=self.view, purpose=self.purpose,
                          query_name="events", query_text=f"live feed of {self.view} (SSE)", row_count=len(items),
                          params={"hit_ids": [e.ident for e in hits][:100],
                                  "alert_event_ids": [e.ident for e in alerts][:100],
                                  "through": items[-1][1] and encode_token(self.view, items[-1][1])})

    async def run(self, request: Request):
        SSE_CLIENTS.inc()
        wake = self.hub.subscribe()
        try:
            yield "retry: 2000\n\n"
            await self._start()
            pending: list = []
            last_audit = 0.0
            last_write = time.monotonic()
            while True:
                now = time.monotonic()
                due = last_audit + AUDIT_INTERVAL_S
                if pending and now >= due:
                    await self.batcher.write(self._audit_entry(pending))  # before it is sent
                    last_audit = time.monotonic()
                    self.shown += len(pending)
                    chunk = "".join(sse_item(e, encode_token(self.view, pos)) for e, pos in pending)
                    yield chunk
                    wall = time.time()
                    for e, _ in pending:
                        FANOUT_LAG.observe(max(0.0, wall - e.ts_ms / 1000))
                    pending = []
                    last_write = time.monotonic()
                    continue
                if now - last_write >= HEARTBEAT_S:
                    if await request.is_disconnected():
                        break
                    yield sse_heartbeat()
                    last_write = now
                timeout = min(HEARTBEAT_S - (now - last_write), due - now if pending else HEARTBEAT_S)
                entries = await self._next_entries(wake, max(0.01, timeout))
                if entries:
                    pending += advance(self.position, entries, self._may_see)
        finally:
            SSE_CLIENTS.dec()
            self.hub.unsubscribe(wake)
            if self.catchup is not None:  # not awaited: the stream may be cancelled (the client left)
                asyncio.get_running_loop().run_in_executor(None, self.catchup.close)
            if self.shown == 0:
                with contextlib.suppress(RuntimeError):
                    self.batcher.write_later(AuditEntry(
                        action="feed", identity=self.identity, region=self.view, purpose=self.purpose,
                        query_name="events", query_text=f"live feed of {self.view} (SSE)", row_count=0,
                        params={"resumed": self.resumed}))


__all__ = ["register", "LiveStream", "AuditBatcher", "stream_partitions"]
