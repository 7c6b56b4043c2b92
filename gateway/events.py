"""The live feed over Server-Sent Events: GET /api/v1/events.

What the caller's agency may see (hits, shared alerts, workflow items), each item once, as

    id: <position token>\\nevent: hit|alert|workflow\\ndata: <the item, one line of JSON>\\n\\n

(hit and alert: the NDJSON feed's item; workflow: an intel.workflow event with its times as epoch ms,
the fields of /api/v1/items/{id}'s events, shown to the agencies the workflow API shows it to)

a heartbeat every 5 s without items (`event: heartbeat`, no id, so the browser's
Last-Event-ID stays) and `retry: 2000` at the start. A reconnect sends Last-Event-ID (or
`last_event_id=`) and gets exactly what came after that item. Items come from the process's
one Kafka consumer (gateway/hub.py), never from a consumer per browser.

Every batch is audited before it is sent: its record is appended (fsync) to the gateway's
audit journal, together with those of every other client due at the same moment, and the
journal is shipped to ClickHouse's audit_log once a second, one row per stream and second
(`AuditJournal`). A stream that sent nothing is audited once when it ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time

from fastapi import Depends, Header, Request
from fastapi.responses import StreamingResponse

from gateway.audit import AuditEntry
from gateway.hub import (AUDIT_WAIT, FANOUT_LAG, SSE_CLIENTS, CatchUpReader, Hub, TokenError, complete_position,
                         decode_token, rendered, stream_partitions, visible, walk)
from ops.settings import load_settings

log = logging.getLogger("intelbus.gateway.events")

_LIVE = load_settings()  # the live feed's tunables (INTELBUS_LIVE_*), read once when the gateway starts
HEARTBEAT_S = 5.0
# a client's items wait at most this long for its next audit record (0: none; the journal's shipper
# already merges each stream's records to one audit_log row a second)
AUDIT_INTERVAL_S = _LIVE.live_audit_interval_s
HUB_READY_WAIT_S = 20.0   # for the hub's consumer to be assigned
# for a starting hub to read its buffer, before a first connection reads by itself. Not 2 s: a hub reading
# its hour of three topics on a busy machine takes 10-20 s, and 200 walls opening private readers at once
# (bench_fanout, 06:50 run: catchup_readers_total 200) kept the gateway seconds behind for the whole run
FIRST_WAIT_S = _LIVE.live_first_wait_s
JOURNAL_FSYNC = _LIVE.live_audit_fsync
# for measuring (bench/bench_fanout.py): each batch starts with an SSE comment `: sent <epoch ms> polled <ms>,...`,
# the gateway's clock when it hands the batch over and, per item in order, when the hub's poll returned its message
# (0 if read at the hub's start), so a client can tell its own lag from the gateway's, and the gateway's hold (poll
# to send) from the lag of its Kafka fetch
SEND_STAMP = _LIVE.live_send_stamp
# 1: the streams of a round write their journal lines in one write, each waiting for it before it sends. Not the
# default: measured (bench/results/fanout.md, 10:08 run) a batch then waited 150-230 ms on average for the rest of
# its round's turns (0.6 ms with a write in the stream's own turn), more than the write calls it saved
AUDIT_GROUP_WRITE = _LIVE.live_audit_group
# the broadcast path (issue 15, the fan-out's hold): a round's ring reads, walks and audits once for every stream of
# the rung groups that waits in step (`deliver`: one walk per view group, one journal write for the round), and hands
# each its batch's text; the stream's own turn only sends it. "0": every stream reads, walks, writes its journal line
# and sends in its own turn (as before, for bench_fanout's same-run comparison)
BROADCAST = _LIVE.live_broadcast


class AuditJournal:
    """The live feed's audit rows, written to the gateway's journal file before the items are sent and
    shipped to ClickHouse's audit_log about once a second, merged to one row per stream per shipment.

    Why: an insert into ClickHouse takes 50-500 ms on a busy machine (bench_fanout), far more than
    the 50 ms the live feed may add; an append to a local file takes microseconds. A record is in
    the OS's hands before its items leave, so it survives the gateway's death; with
    INTELBUS_LIVE_AUDIT_FSYNC=1 each append is also fsynced (survives the machine's; measured at
    1-5 ms idle but seconds while Kafka and ClickHouse write: ext4 flushes their data too); the shipper inserts at least once (a crash between an insert
    and the journal's truncation ships that second again). If ClickHouse takes nothing for
    `max_unshipped_s`, appends fail and the streams stop: nothing is served that cannot be audited.
    A journal left by a gateway that died (its file no longer locked) is shipped by the next one.
    """

    def __init__(self, services, folder, *, ship_every_s: float = 1.0, max_unshipped_s: float = 60.0):
        import fcntl
        import uuid
        from pathlib import Path

        self.services, self.ship_every_s, self.max_unshipped_s = services, ship_every_s, max_unshipped_s
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.file = open(self.path, "ab")
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.lock = threading.Lock()
        self.pending: list[str] = []  # journal lines not yet in ClickHouse
        self.failing_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-feed-audit", daemon=True)
        self._thread.start()

    def append(self, lines: list[str], records: list[dict] | None = None) -> None:
        """Durable before it returns (fsync); AuditUnavailable if ClickHouse has taken nothing for too long.
        `records`: the lines as the shipper reads them (`JournalLines.record_of`), so that it need not parse
        its own lines back (json.loads of every line was most of its thread's time: a GIL share taken from
        the streams' event loop)."""
        from gateway.app import AuditUnavailable

        if self.failing_since is not None and time.monotonic() - self.failing_since > self.max_unshipped_s:
            raise AuditUnavailable(f"the audit log has taken no row for {self.max_unshipped_s:.0f} s: "
                                   "nothing is served that cannot be audited")
        data = "".join(lines).encode()
        with self.lock:
            self.file.write(data)
            self.file.flush()  # in the OS's hands: kept if the gateway dies
            if JOURNAL_FSYNC:  # kept if the machine dies too, at the price of the disk's flush (seconds, when busy)
                os.fsync(self.file.fileno())
            self.pending.extend(lines if records is None else records)

    def _run(self) -> None:
        self._ship_orphans()
        while not self._stop.wait(self.ship_every_s):
            self.ship()

    def ship(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            self._insert(merge_audit_records([json.loads(x) if isinstance(x, str) else x for x in batch]))
        except Exception as exc:
            with self.lock:
                self.pending[:0] = batch
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            self.services._local.audit = None  # a new connection next time
            log.error("live feed audit rows not shipped yet (%d waiting): %s", len(self.pending),
                      str(exc).splitlines()[0][:200])
            return
        self.failing_since = None
        with self.lock:
            if not self.pending:  # everything on disk is in ClickHouse: start the file again
                self.file.truncate(0)
                self.file.seek(0)

    def _insert(self, rows: list[tuple]) -> None:
        from sinks.rows import AUDIT_COLUMNS

        self.services.audit_executor.insert("audit_log", AUDIT_COLUMNS, rows)

    def _ship_orphans(self) -> None:
        import fcntl

        for path in sorted(self.folder.glob("*.jsonl")):
            if path == self.path:
                continue
            try:
                with open(path, "rb+") as f:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a running gateway's
                    records = [json.loads(line) for line in f.read().splitlines() if line.strip()]
                    if records:
                        self._insert(merge_audit_records(records))
                        log.info("shipped %d live feed audit records left by a stopped gateway (%s)",
                                 len(records), path.name)
                path.unlink()
            except Exception as exc:
                log.error("live feed audit journal %s not shipped: %s", path.name, exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.ship()
        with self.lock:
            empty = not self.pending
            self.file.close()
        if empty:
            self.path.unlink(missing_ok=True)


def audit_record(stream_id: str, entry: AuditEntry, now: float | None = None) -> str:
    """A journal line: the audit_log row (its time as at_ms) and the stream it belongs to."""
    from gateway.audit import audit_row

    row = list(audit_row(entry, now))
    return json.dumps({"stream": stream_id, "row": row[1:]}, ensure_ascii=False, default=str) + "\n"


class JournalLines:
    """A stream's journal lines made fast: the row's fields that never change for the stream (who, which
    agency, view, purpose) are encoded once; a batch fills in its time, count and params."""

    def __init__(self, stream_id: str, template: AuditEntry):
        from gateway.audit import audit_row
        from sinks.rows import AUDIT_COLUMNS

        row = list(audit_row(template))[1:]
        i, j = AUDIT_COLUMNS.index("params") - 1, AUDIT_COLUMNS.index("row_count") - 1
        assert AUDIT_COLUMNS.index("at_ms") == 1 and j == i + 1
        dumps = lambda v: json.dumps(v, ensure_ascii=False, default=str)[1:-1]  # noqa: E731
        self.head = f'{{"stream": "{stream_id}", "row": ['
        self.stream_id, self.row, self.params_i, self.count_i = stream_id, row, i, j
        self.middle, self.tail = ", " + dumps(row[1:i]) + ", ", ", " + dumps(row[j + 1:]) + "]}\n"

    def line(self, params: dict, row_count: int, now: float | None = None) -> str:
        return self.line_of(params_text(params), row_count, now)

    def line_of(self, params_json: str, row_count: int, now: float | None = None) -> str:
        """The line, with the params already as `params_text` makes them (shared by the streams of a view)."""
        at_ms = int((time.time() if now is None else now) * 1000)
        return f"{self.head}{at_ms}{self.middle}{params_json}, {row_count}{self.tail}"


    def record_of(self, params: dict, row_count: int, at_ms: int) -> dict:
        """The line's record as the shipper reads it (what json.loads of the line gives, its params not re-encoded);
        `params` may be shared: the merge copies it."""
        row = list(self.row)
        row[0], row[self.params_i], row[self.count_i] = at_ms, params, row_count
        return {"stream": self.stream_id, "row": row}


def params_text(params: dict) -> str:
    """A batch's params as the journal line holds them: the JSON text of the params, as a JSON string."""
    return json.dumps(json.dumps(params, ensure_ascii=False), ensure_ascii=False)


def merge_audit_records(records: list[dict]) -> list[tuple]:
    """One audit_log row per stream: the first record's time, the batches' counts summed, their ids joined."""
    from datetime import datetime, timezone

    from sinks.rows import AUDIT_COLUMNS

    params_i, count_i = AUDIT_COLUMNS.index("params") - 1, AUDIT_COLUMNS.index("row_count") - 1
    merged: dict[str, list] = {}
    for rec in records:
        row = list(rec["row"])
        have = merged.get(rec["stream"])
        if have is None:
            merged[rec["stream"]] = row
            continue
        a, b = _params(have[params_i]), _params(row[params_i])
        for key in ("hit_ids", "alert_event_ids", "workflow_event_ids"):
            if key in b:
                a[key] = (a.get(key, []) + b[key])[:100]
        a["through"] = b.get("through", a.get("through"))
        a["batches"] = a.get("batches", 1) + b.get("batches", 1)
        a["last_at_ms"] = row[0]
        have[params_i] = a
        have[count_i] += row[count_i]
    for r in merged.values():
        if not isinstance(r[params_i], str):
            r[params_i] = json.dumps(r[params_i], ensure_ascii=False, default=str)
    return [(datetime.fromtimestamp(int(r[0] / 1000), tz=timezone.utc).replace(tzinfo=None), *r)
            for r in merged.values()]


def _params(p) -> dict:
    """A record's params as a dict of its own (a journal line's are text; an in-memory record's may be shared)."""
    return json.loads(p) if isinstance(p, str) else dict(p)


class AuditBatcher:
    """Group commit of the streams' audit records: whoever is due waits for one journal append (fsync)
    of all records pending; without a journal (no stack folder: tests' apps), one audit_log insert."""

    def __init__(self, services, journal: AuditJournal | None = None):
        self.services, self.journal = services, journal
        self.pending: list[tuple[str, AuditEntry, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.round_lines: list[str] = []
        self.round_records: list = []
        self.round_waiters: list[asyncio.Future] = []
        self.writes = 0  # journal writes of stream batches (the group write's effect, for tests)

    @property
    def direct(self) -> bool:
        """Records go to the journal in the stream's own turn (a write to the OS, no fsync)."""
        return self.journal is not None and not JOURNAL_FSYNC

    async def write(self, stream_id: str, entry: AuditEntry) -> None:
        if self.direct:
            self._write([(stream_id, entry)])  # a write to the OS: microseconds, nothing to wait for or batch
            return
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((stream_id, entry, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush())
        await fut

    async def journal_line(self, line: str, record: dict | None = None) -> None:
        """A stream's line for this round (direct mode): one journal write for every stream of the round, made
        by a callback queued behind the streams the round woke (they all take their turn first), before any of
        them sends; returns once written. Before: a write and flush per stream, a fifth of the event loop's
        time with 200 clients (bench/results/fanout.md, 07:21 run)."""
        if not AUDIT_GROUP_WRITE:
            self.writes += 1
            self.journal.append([line], None if record is None else [record])
            return
        loop = asyncio.get_running_loop()
        if not self.round_lines:
            loop.call_soon(self._write_round)
        fut = loop.create_future()  # one per stream: a shared one would be cancelled with the first stream that leaves
        self.round_lines.append(line)
        self.round_records.append(record)
        self.round_waiters.append(fut)
        await fut

    def _write_round(self) -> None:
        lines, records, waiters = self.round_lines, self.round_records, self.round_waiters
        self.round_lines, self.round_records, self.round_waiters = [], [], []
        try:
            self.writes += 1
            self.journal.append(lines, None if any(r is None for r in records) else records)
        except Exception as exc:
            for f in waiters:
                if not f.done():
                    f.set_exception(exc)
            return
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def write_now(self, stream_id: str, entry: AuditEntry) -> None:
        """For a stream's end (it may be cancelled, so nothing is awaited): written here and now."""
        try:
            self._write([(stream_id, entry)])
        except Exception as exc:
            log.error("audit of a live feed's end: %s", exc)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other streams woken by the same messages join this batch
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                await asyncio.to_thread(self._write, [(s, e) for s, e, _ in batch])
            except Exception as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    def _write(self, entries: list[tuple[str, AuditEntry]]) -> None:
        if self.journal is not None:
            now = time.time()
            self.journal.append([audit_record(s, e, now) for s, e in entries])
            return
        from gateway.app import AuditUnavailable
        from gateway.audit import audit_row
        from sinks.rows import AUDIT_COLUMNS

        try:
            self.services.audit_executor.insert("audit_log", AUDIT_COLUMNS, [audit_row(e) for _, e in entries])
        except Exception as exc:
            self.services._local.audit = None
            log.error("audit log write failed: %s", exc)
            raise AuditUnavailable(f"the audit log cannot be written ({str(exc).splitlines()[0][:120]}): "
                                   "nothing is served that cannot be audited") from None


async def wait_for_flag(flag: threading.Event, timeout: float) -> bool:
    """Wait for a thread's flag without holding one of the loop's worker threads (200 clients may wait)."""
    deadline = time.monotonic() + timeout
    while not flag.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return flag.is_set()


def sse_item(entry, token: str) -> str:
    return f"id: {token}\nevent: {entry.kind}\ndata: {entry.data}\n\n"


def send_stamp(items, rung: float = 0.0, turn: float = 0.0, now: float | None = None) -> str:
    """The SSE comment a batch starts with under INTELBUS_LIVE_SEND_STAMP=1 (the SSE protocol ignores it): when it
    is sent, when the hub's poll returned each item, when the round that woke the stream was rung and when the
    stream's turn that read them began (epoch ms, the gateway's clock)."""
    polled = ",".join([str(int(e.polled * 1000)) for e, _, _ in items])
    return (f": sent {int((time.time() if now is None else now) * 1000)} polled {polled} "
            f"rung {int(rung * 1000)} turn {int(turn * 1000)}\n")


def sse_heartbeat() -> str:
    return f'event: heartbeat\ndata: {{"at_ms": {int(time.time() * 1000)}}}\n\n'


def register(app, ctx) -> None:
    from identity.principals import Identity
    from sinks.feed import parse_duration

    services = ctx.services
    state = {"hub": None}
    stack_path = getattr(services.settings, "stack_path", None)
    journal = AuditJournal(services, os.path.join(str(stack_path), "gateway", "live-audit")) if stack_path else None
    batcher = AuditBatcher(services, journal)

    def hub() -> Hub | None:
        if state["hub"] is None and services.kafka_config is not None:
            state["hub"] = Hub(services.kafka_config, services.codec).start()
            state["hub"].deliver = lambda streams: deliver(batcher, streams)
        return state["hub"]

    inner = app.router.lifespan_context

    closing = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(a):
        hub()  # start reading at once: a restarted gateway has its buffer before clients reconnect
        end_streams_on_exit_signal(closing, state)
        async with inner(a) as maybe_state:
            try:
                yield maybe_state
            finally:
                if state["hub"] is not None:
                    await asyncio.to_thread(state["hub"].stop)
                if journal is not None:
                    await asyncio.to_thread(journal.close)

    app.router.lifespan_context = lifespan

    @app.get("/api/v1/events", tags=["feed"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events: `hit` and `alert` items (data: the /api/v1/feed "
                                             "item), `workflow` items (data: an intel.workflow event, times as "
                                             "epoch ms), `heartbeat` every 5 s; each item's id resumes after it"},
                        400: {"description": "malformed or foreign Last-Event-ID, or a bad `since`"}})
    async def events(request: Request, identity: Identity = Depends(ctx.caller), region: str | None = None,
                     purpose: str = "live wall", since: str = "15m", last_event_id: str | None = None,
                     last_event_id_header: str | None = Header(
                         None, alias="Last-Event-ID",
                         description="the id of the last item received (EventSource sends it on reconnect)")):
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
        await wait_for_flag(h.started, HUB_READY_WAIT_S)
        if not h.partitions:
            raise refuse(h.error or "the live feed is starting: try again in a few seconds")
        tps = h.view_partitions(view, services.regions)
        token = last_event_id_header or last_event_id
        position = None
        if token:
            try:
                position = complete_position(decode_token(token, view, tps), tps, h.ends())
            except TokenError as exc:
                raise refuse(str(exc)) from None
        stream = LiveStream(services, batcher, h, ent, identity, view, purpose, tps, position,
                            int((time.time() - since_s) * 1000), closing)
        return StreamingResponse(stream.run(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def deliver(batcher: AuditBatcher, streams: list) -> int:
    """The broadcast path, on the event loop, from a round's ring (`Bell.ring`, before the streams are woken): for the
    parked streams of the rung groups (waiting, in the hub's buffer), read and walk what the round brought once per
    view group in step (the shared walk), write every batch's journal line in ONE journal write, then give each stream
    its batch's text (`mailbox`, the same text for the streams of a group) and its position after it; the stream's turn
    only sends it. If the journal refuses, nothing moves: the streams, woken, take their own path (which refuses and
    ends them, as before). Returns the number of streams given a batch."""
    served, texts, lines, records = [], {}, [], []
    for s in streams:
        if s.mailbox is not None or not s.parkable():
            continue
        got = s.hub.read(s.cursor)
        if got is None or not got[0]:
            continue  # evicted (its own path opens a reader) or nothing for it in this round
        items, position, end = s._walked(*got)
        if items:
            text = texts.get(id(items))
            if text is None:
                text = texts[id(items)] = "".join(t for _, _, t in items)
            line, record = s.journal_line(items)
            lines.append(line)
            records.append(record)
        else:
            text = None
        served.append((s, items, text, position, end))
    if lines:
        try:
            batcher.writes += 1
            batcher.journal.append(lines, records)  # audited before any of them is sent
        except Exception as exc:
            log.error("live feed: the round's audit lines were not written (%s): the streams take their own path",
                      exc)
            return 0
    for s, items, text, position, end in served:
        s.position, s.cursor = position, end
        if items:
            s.mailbox = (items, text)
    return sum(1 for _, items, _, _, _ in served if items)


def end_streams_on_exit_signal(closing: threading.Event, state: dict) -> None:
    """On SIGTERM/SIGINT, end the streams (browsers reconnect to the next gateway with their ids):
    uvicorn waits for open responses before it stops, and a live feed never ends by itself.
    Chained in front of uvicorn's own handlers, which it restores when it exits."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            closing.set()
            if state.get("hub") is not None:
                state["hub"]._wake()
            if callable(previous):
                previous(signum, frame)
        signal.signal(sig, handler)


_PARAMS_TEXT: dict = {}  # (a batch's last token, its length, its first entry) -> its params' text and dict


class LiveStream:
    """One client's stream: a cursor into the hub's buffer, or a catch-up reader until it reaches it."""

    def __init__(self, services, batcher, hub: Hub, ent, identity, view, purpose, tps, position, since_ms,
                 closing: threading.Event | None = None):
        self.services, self.batcher, self.hub = services, batcher, hub
        self.ent, self.identity, self.view, self.purpose, self.tps = ent, identity, view, purpose, tps
        self.position, self.since_ms = position, since_ms
        self.closing = closing or threading.Event()
        self.resumed = position is not None
        self.id = os.urandom(8).hex()
        self.lines: JournalLines | None = None
        self.shown = 0
        self.catchup: CatchUpReader | None = None
        self.cursor: int | None = None
        self.vkey = (view, identity.clearance)
        self.turn_at = self.rung_at = 0.0  # for the send stamp
        self.mailbox: tuple | None = None   # (items, their SSE text): a batch `deliver` read and audited for it

    def _may_see(self, entry) -> bool:
        seen = entry.seen.get(self.vkey)  # visible()'s memo, read without a call: 200 streams x every entry
        return visible(entry, self.ent, self.view) if seen is None else seen

    async def _start(self) -> None:
        if self.position is None:
            await wait_for_flag(self.hub.ready, FIRST_WAIT_S)  # else a catch-up reader, switching to the hub later
            self.position = self.hub.offsets_since(self.tps, self.since_ms)
        if self.position is not None and self.hub.covers(self.position):
            self.cursor = self.hub.start_seq(self.position)
        else:
            self.catchup = await asyncio.to_thread(CatchUpReader, self.services.kafka_config, self.services.codec,
                                                   self.tps, self.position, self.since_ms)
            self.position = dict(self.catchup.start)

    def _walk(self, entries, position: dict) -> list[tuple]:
        """(entry, its token, its SSE text) for the visible entries; `position` moves past all."""
        return [(e, token, sse_item(rendered(e), token)) for e, token in walk(self.view, position, entries,
                                                                             self._may_see)]

    async def _next_items(self, wake, timeout: float) -> list[tuple]:
        """The next items (maybe none after `timeout`), switching between catch-up and the hub."""
        if self.catchup is not None:
            entries = await asyncio.to_thread(self.catchup.poll)
            items = self._walk(entries, self.position)
            if self.hub.covers(self.position):
                await asyncio.to_thread(self.catchup.close)
                self.catchup, self.cursor = None, self.hub.start_seq(self.position)
            return items
        if SEND_STAMP:
            self.turn_at, self.rung_at = time.time(), wake.rung_at
        got = self.hub.read(self.cursor)
        if got is None:  # the buffer dropped what this stream still needs (a very slow client): read it itself
            self.catchup = await asyncio.to_thread(CatchUpReader, self.services.kafka_config, self.services.codec,
                                                   self.tps, self.position)
            return []
        entries, end = got
        if not entries:
            wake.clear()
            got = self.hub.read(self.cursor)  # anything appended between the read and the clear
            if got is None or got[0]:
                return []  # the next call takes it
            if self.parkable():
                wake.parked = self  # the next ring may serve it (`deliver`): its batch then waits in `mailbox`
            try:
                await wake.wait(timeout)
            finally:
                wake.parked = None
            return []
        # Streams of one view that are in step (most: woken by the same messages) walk the same entries
        # from the same position to the same items and ids: the first one's walk serves the others. Not
        # keyed by the end: the hub appends while the streams take turns, and a stream that read further
        # takes the shared walk now and the rest next time, which keeps the view's streams in step (keyed
        # by the end, 200 streams on a busy machine each walked alone: bench_fanout, 06:55 run).
        items, self.position, self.cursor = self._walked(entries, end)
        return items

    def _walked(self, entries, end) -> tuple[list, dict, int]:
        """The stream's walk of `entries` (read from its cursor to `end`): its items, the position and cursor after
        them; shared by the streams of its view in step (the stream's own state is not changed)."""
        key = (self.vkey, self.cursor, tuple(sorted(self.position.items())))
        walked = self.hub.walks.get(key)
        if walked is None:
            position = dict(self.position)
            items = self._walk(entries, position)
            if len(self.hub.walks) > 5000:
                self.hub.walks.clear()
            walked = self.hub.walks[key] = (items, position, end)
        items, position, end = walked
        return items, dict(position), end

    def parkable(self) -> bool:
        """May the round's ring serve this stream (`deliver`)? Only a stream reading the hub's buffer, whose batches
        are audited by a journal line and sent at once."""
        return (BROADCAST and self.catchup is None and self.cursor is not None and AUDIT_INTERVAL_S <= 0
                and self.batcher.direct and not self.closing.is_set())

    def _audit_template(self, **kw) -> AuditEntry:
        return AuditEntry(action="feed", identity=self.identity, region=self.view, purpose=self.purpose,
                          query_name="events", query_text=f"live feed of {self.view} (SSE)", **kw)

    @staticmethod
    def _audit_params(items) -> dict:
        return {"hit_ids": [e.ident for e, _, _ in items if e.kind == "hit"][:100],
                "alert_event_ids": [e.ident for e, _, _ in items if e.kind == "alert"][:100],
                "workflow_event_ids": [e.ident for e, _, _ in items if e.kind == "workflow"][:100],
                "through": items[-1][1]}  # the last item's id

    def journal_line(self, items, now: float | None = None) -> tuple[str, dict]:
        """The batch's journal line and the shipper's record of it."""
        if self.lines is None:
            self.lines = JournalLines(self.id, self._audit_template())
        # the streams of a view in step send the same batch: its params' text is made once
        key = (items[-1][1], len(items), id(items[0][0]))
        made = _PARAMS_TEXT.get(key)
        if made is None:
            if len(_PARAMS_TEXT) > 5000:
                _PARAMS_TEXT.clear()
            params = self._audit_params(items)
            made = _PARAMS_TEXT[key] = (params_text(params), params)
        now = time.time() if now is None else now
        return (self.lines.line_of(made[0], len(items), now),
                self.lines.record_of(made[1], len(items), int(now * 1000)))

    async def _audit(self, items) -> None:
        """The batch's audit record, written before the batch is sent."""
        if self.batcher.direct:
            await self.batcher.journal_line(*self.journal_line(items))
        else:
            params = self._audit_params(items)
            await self.batcher.write(self.id, self._audit_template(params=params, row_count=len(items)))

    async def run(self, request: Request):
        SSE_CLIENTS.inc()
        # rung with the streams of its view and clearance, when a round brings something they may see
        wake = self.hub.subscribe(self.vkey, self.tps, self._may_see)
        try:
            yield "retry: 2000\n\n"
            await self._start()
            pending: list = []
            last_audit = 0.0
            last_write = time.monotonic()
            while self.mailbox is not None or not self.closing.is_set():  # a batch audited for it is sent
                if self.mailbox is not None:  # a batch the round's ring read and audited for it (`deliver`)
                    items, text = self.mailbox
                    self.mailbox = None
                    if SEND_STAMP:
                        self.turn_at, self.rung_at = time.time(), wake.rung_at
                    self.shown += len(items)
                    yield f"{send_stamp(items, self.rung_at, self.turn_at)}{text}" if SEND_STAMP else text
                    FANOUT_LAG.observe(max(0.0, time.time() - min(e.ts_ms for e, _, _ in items) / 1000))
                    last_write = time.monotonic()
                    continue
                now = time.monotonic()
                due = last_audit + AUDIT_INTERVAL_S
                if pending and now >= due:
                    await self._audit(pending)  # before it is sent
                    last_audit = time.monotonic()
                    AUDIT_WAIT.observe(last_audit - now)
                    self.shown += len(pending)
                    text = "".join(text for _, _, text in pending)
                    yield f"{send_stamp(pending, self.rung_at, self.turn_at)}{text}" if SEND_STAMP else text
                    wall = time.time()
                    if BROADCAST:  # once per batch, its oldest item (per item and stream: 9% of the loop's time)
                        FANOUT_LAG.observe(max(0.0, wall - min(e.ts_ms for e, _, _ in pending) / 1000))
                    else:
                        for e, _, _ in pending:
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
                pending += await self._next_items(wake, max(0.01, timeout))
        finally:
            SSE_CLIENTS.dec()
            self.hub.unsubscribe(wake)
            if self.catchup is not None:  # not awaited: the stream may be cancelled (the client left)
                asyncio.get_running_loop().run_in_executor(None, self.catchup.close)
            if self.shown == 0:
                self.batcher.write_now(self.id, AuditEntry(
                    action="feed", identity=self.identity, region=self.view, purpose=self.purpose,
                    query_name="events", query_text=f"live feed of {self.view} (SSE)", row_count=0,
                    params={"resumed": self.resumed}))


__all__ = ["register", "LiveStream", "AuditBatcher", "deliver", "stream_partitions"]
