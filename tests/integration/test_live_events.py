"""The live feed over SSE (GET /api/v1/events) on the real stack, through a gateway running this checkout.

Each hit is made as people make them: a wanted listing in Xinglong (130822, Hebei) and a
checkpoint check of the same person in Jizhou (120119, Tianjin), so Hebei and Tianjin are
notified and Jiangsu is not.
"""
from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

CST = timezone(timedelta(hours=8))


def iso(minutes):
    return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def person_id() -> str:
    from schemas.normalise import resident_id_check_digit

    first17 = f"130822{random.randint(1950, 1999)}{random.randint(1, 12):02d}{random.randint(1, 28):02d}" \
              f"{random.randint(0, 999):03d}"
    return first17 + resident_id_check_digit(first17)


def make_hits(settings, n: int = 1, *, listed: str = "130822", checked: str = "120119") -> list[str]:
    """n hits (a listing in `listed`, Xinglong by default, x a check in `checked`, Jizhou); their tags,
    which the hits' record keys carry."""
    from producers.regional import RegionalProducer

    tags = [uuid.uuid4().hex[:10] for _ in range(n)]
    with RegionalProducer(settings=settings) as p:
        for tag in tags:
            person = person_id()
            p.publish("wanted", {"source_region": listed, "source_system": "ztry", "source_ref": f"LV-{tag}",
                                 "occurred_at": iso(-60), "action": "LISTED", "offence": "FRAUD",
                                 "person": {"id_type": "RESIDENT_ID", "id_number": person, "name": "周九"}})
            p.publish("incident", {"source_region": checked, "source_system": "kakou", "source_ref": f"LVC-{tag}",
                                   "occurred_at": iso(-1), "incident_type": "CHECKPOINT_CHECK",
                                   "location": {"region": checked},
                                   "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]})
    return tags


class SSE:
    """A small SSE client in a thread: events (dicts with id, event, data) arrive on a queue."""

    def __init__(self, url: str, token: str | None = None, last_id: str | None = None, **params):
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if last_id:
            headers["Last-Event-ID"] = last_id
        self.events: queue.Queue = queue.Queue()
        self.opened = threading.Event()
        self.status = self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, headers, params), daemon=True)
        self._thread.start()
        assert self.opened.wait(30), "no answer from the gateway"

    def _run(self, url, headers, params):
        try:
            self._read(url, headers, params)
        except httpx.HTTPError as exc:  # the gateway went away (a restart): the stream just ends
            self.error = exc
        finally:
            self.opened.set()

    def _read(self, url, headers, params):
        with httpx.Client(timeout=httpx.Timeout(15.0, connect=10.0)) as client:
            with client.stream("GET", f"{url}/api/v1/events", headers=headers, params=params) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    self.body = r.read().decode()
                    self.opened.set()
                    return
                self.opened.set()
                event = {}
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line == "":
                        if event:
                            self.events.put(event)
                        event = {}
                        continue
                    name, _, value = line.partition(":")
                    event[name] = value[1:] if value.startswith(" ") else value

    def items(self, *, until, timeout: float, settle: float = 0.0) -> list[dict]:
        """Items (not heartbeats) until `until(items)` holds, then `settle` seconds more."""
        got, deadline, done_at = [], time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=0.1)
                if e.get("event") in ("hit", "alert", "workflow"):
                    got.append({**e, "item": json.loads(e["data"])})
            except queue.Empty:
                pass
            if done_at is None and until(got):
                done_at = time.monotonic()
                deadline = done_at + settle
        return got

    def close(self):
        self._stop.set()


LIVE_PRINCIPALS = [  # (name, region, roles): this module's own, so no other session's password reset races it
    ("lv-hb-cc", "130000", ["command_center"]), ("lv-tj-cc", "120000", ["command_center"]),
    ("lv-js-cc", "320000", ["command_center"]), ("lv-sh-cc", "310000", ["command_center"]),
]


@pytest.fixture(scope="module")
def tokens(stack, settings, own_gateway):
    """A bearer token per principal of this module, from the gateway's own login."""
    import secrets

    from identity.store import PrincipalStore, store_path

    store = PrincipalStore(store_path(settings))
    passwords = {}
    try:
        for name, region, roles in LIVE_PRINCIPALS:
            passwords[name] = secrets.token_urlsafe(16)
            if store.find(name) is None:
                store.add(actor="pytest", name=name, kind="person", region=region, branch="COMMAND_CENTER",
                          roles=roles, clearance="INTERNAL", password=passwords[name])
            else:
                store.set_disabled(actor="pytest", name=name, disabled=False)
                store.reset_password(actor="pytest", name=name, password=passwords[name])
    finally:
        store.close()
    out = {}
    for name, password in passwords.items():
        r = httpx.post(f"{own_gateway.url}/api/v1/login", json={"name": name, "password": password}, timeout=30)
        assert r.status_code == 200, r.text
        out[name] = r.json()["token"]
    return out


def audit_rows(settings, user, hit_id):
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(f"SELECT action, region, row_count, params FROM intelbus.audit_log WHERE user = '{user}' "
                        f"AND query_name = 'events' AND params LIKE '%{hit_id}%' AND at_ms > {int(time.time() * 1000) - 600_000}")[1]
    finally:
        ex.close()


def tagged(items, tags) -> list[str]:
    """The tags of our hits among the items, in order received."""
    out = []
    for i in items:
        key = i["item"].get("record_key") or ""
        for tag in tags:
            if i["event"] == "hit" and key.endswith(f"LV-{tag}"):
                out.append(tag)
    return out


def test_a_command_center_gets_its_hit_live_and_jiangsu_does_not(own_gateway, tokens, settings):
    hebei = SSE(own_gateway.url, tokens["lv-hb-cc"], since="1m")
    jiangsu = SSE(own_gateway.url, tokens["lv-js-cc"], since="1m")
    try:
        assert hebei.status == 200 and jiangsu.status == 200
        first = hebei.events.get(timeout=10)
        assert first == {"retry": "2000"}
        [tag] = make_hits(settings)
        started = time.monotonic()
        got = hebei.items(until=lambda items: tagged(items, [tag]), timeout=10)
        assert tagged(got, [tag]) == [tag], (f"Hebei's command center did not get its hit {tag} within 10 s; it got "
                                             f"{[(i['id'], i['item'].get('record_key')) for i in got][-5:]}; gateway "
                                             f"log: {open(own_gateway.log_path).read()[-1500:]}")
        hit = next(i for i in got if tagged([i], [tag]))
        assert hit["item"]["feed_item"] == "hit" and sorted(hit["item"]["notify_regions"]) == ["120119", "130822"]
        assert hit["id"].startswith("2.130000.")
        assert time.monotonic() - started < 10
        other = jiangsu.items(until=lambda items: False, timeout=1.0)
        assert tagged(other, [tag]) == []  # Jiangsu, connected the whole time, never sees it
        hit_id = hit["item"]["hit_id"]
        rows = []
        for _ in range(20):  # the journal ships to ClickHouse about once a second
            rows = audit_rows(settings, "lv-hb-cc", hit_id)
            if rows:
                break
            time.sleep(0.5)
        assert rows and rows[0][0] == "feed" and rows[0][1] == "130000" and rows[0][2] >= 1
    finally:
        hebei.close()
        jiangsu.close()


def test_a_hit_between_provinces_that_share_a_partition_reaches_each_wall_once(own_gateway, tokens, settings):
    """Shanghai's and Jiangsu's copies of a hit between them are both in intel.hit partition 4: the Shanghai
    wall read both and showed the hit twice. A listing in Huangpu (310101) and a check in Suzhou (320500):
    each command center gets it once, in the same seconds in which the control (Hebei's own hit, copies
    in other partitions) arrives once too."""
    from sinks.feed import hit_partition

    assert hit_partition("310000", 6) == hit_partition("320000", 6)  # the premise, with the stack's 6 partitions
    shanghai = SSE(own_gateway.url, tokens["lv-sh-cc"], since="1m")
    jiangsu = SSE(own_gateway.url, tokens["lv-js-cc"], since="1m")
    hebei = SSE(own_gateway.url, tokens["lv-hb-cc"], since="1m")
    try:
        assert shanghai.status == jiangsu.status == hebei.status == 200
        [tag] = make_hits(settings, listed="310101", checked="320500")  # Huangpu x Suzhou
        [control] = make_hits(settings)
        for sse, tags in ((shanghai, [tag]), (jiangsu, [tag]), (hebei, [control])):
            got = sse.items(until=lambda items, tags=tags: tagged(items, tags), timeout=20, settle=3.0)
            # once: a second copy would be a second item with the same record key
            assert tagged(got, tags) == tags, f"{tags}: {[(i['id'], i['item'].get('record_key')) for i in got][-6:]}"
    finally:
        shanghai.close()
        jiangsu.close()
        hebei.close()


def test_resume_with_last_event_id_gives_exactly_the_missed_items(own_gateway, tokens, settings):
    token = tokens["lv-tj-cc"]
    first = SSE(own_gateway.url, token, since="1m")
    [a] = make_hits(settings)
    got = first.items(until=lambda items: tagged(items, [a]), timeout=15)
    first.close()
    last = next(i for i in got if tagged([i], [a]))["id"]
    missed = make_hits(settings, 2)
    time.sleep(3)  # while nobody is connected, the hits arrive
    again = SSE(own_gateway.url, token, last_id=last)
    try:
        got = again.items(until=lambda items: len(tagged(items, missed)) >= 2, timeout=15, settle=2)
        assert sorted(tagged(got, [a, *missed])) == sorted(missed)  # no gap, no duplicate, not the one before
    finally:
        again.close()


def test_resume_across_a_gateway_restart(own_gateway, tokens, settings):
    token = tokens["lv-tj-cc"]
    before = SSE(own_gateway.url, token, since="1m")
    [d] = make_hits(settings)
    got = before.items(until=lambda items: tagged(items, [d]), timeout=15)
    last = next(i for i in got if tagged([i], [d]))["id"]
    own_gateway.stop(kill=True)
    before.close()
    try:
        missed = make_hits(settings, 2)  # published while the gateway is down
    finally:
        own_gateway.start()
    after = SSE(own_gateway.url, token, last_id=last)
    try:
        got = after.items(until=lambda items: len(tagged(items, missed)) >= 2, timeout=20, settle=2)
        assert sorted(tagged(got, [d, *missed])) == sorted(missed)
        assert len({i["id"] for i in got}) == len(got)
    finally:
        after.close()


def test_bad_last_event_id_and_no_token_are_refused(own_gateway, tokens, settings):
    token = tokens["lv-tj-cc"]
    bad = SSE(own_gateway.url, token, last_id="1.120000.0.zz.0-0.deadbeef")
    assert bad.status == 400 and "does not check out" in bad.body
    foreign = httpx.get(f"{own_gateway.url}/api/v1/events", params={"region": "120119"}, timeout=30,
                        headers={"Authorization": f"Bearer {token}",
                                 "Last-Event-ID": _real_token(own_gateway.url, token)})
    assert foreign.status_code == 400 and "belongs to the view of region 120000, not 120119" in foreign.text
    junk = httpx.get(f"{own_gateway.url}/api/v1/events", params={"last_event_id": "not-a-token"}, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})
    assert junk.status_code == 400 and "malformed" in junk.json()["detail"]
    anonymous = httpx.get(f"{own_gateway.url}/api/v1/events", timeout=30)
    assert anonymous.status_code == 401
    from gateway.hub import decode_token, stream_partitions  # control: a real token decodes for its view
    assert decode_token(_real_token(own_gateway.url, token), "120000", stream_partitions(_hit_part("120000"), 6, 6))


def _real_token(url, token) -> str:
    """An id as the gateway makes them for the Tianjin view (a position at the start of each partition)."""
    from gateway.hub import encode_token, stream_partitions

    return encode_token("120000", {tp: 0 for tp in stream_partitions(_hit_part("120000"), 6, 6)})


def _hit_part(province):
    from sinks.feed import hit_partition

    return hit_partition(province, 6)


def test_a_stream_behind_the_buffer_catches_up_then_follows_the_hub(own_gateway, tokens, settings):
    """With a buffer of 60 messages (across 12 partitions), a first connection asking a minute back reads by
    itself (a catch-up reader), then from the hub's buffer, and again by itself whenever the buffer drops
    what it still needs: each item once throughout."""
    import os

    def catch_ups():
        text = httpx.get(f"{own_gateway.url}/metrics", timeout=30).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("intelbus_gateway_catchup_readers_total "))

    os.environ["INTELBUS_LIVE_BUFFER_ITEMS"] = "60"
    own_gateway.restart()
    try:
        opened = catch_ups()
        stream = SSE(own_gateway.url, tokens["lv-tj-cc"], since="1m")
        try:
            tags = make_hits(settings, 3)
            got = stream.items(until=lambda items: len(tagged(items, tags)) >= 3, timeout=30, settle=2)
            assert sorted(tagged(got, tags)) == sorted(tags)
            assert len({i["id"] for i in got}) == len(got)  # each item once, across the switches
            assert catch_ups() >= opened + 1
        finally:
            stream.close()
    finally:
        os.environ.pop("INTELBUS_LIVE_BUFFER_ITEMS", None)
        own_gateway.restart()


def test_a_stopping_gateway_ends_its_streams_and_they_resume_on_the_next(own_gateway, tokens, settings):
    stream = SSE(own_gateway.url, tokens["lv-tj-cc"], since="1m")
    assert stream.events.get(timeout=10) == {"retry": "2000"}
    time.sleep(0.5)  # past the stream's start
    started = time.monotonic()
    own_gateway.stop()  # SIGTERM: uvicorn waits for open responses, so the live feed must end its own
    try:
        assert time.monotonic() - started < 10
        stream._thread.join(10)
        assert not stream._thread.is_alive()  # the response ended (EventSource would reconnect)
    finally:
        own_gateway.start()
    again = SSE(own_gateway.url, tokens["lv-tj-cc"], since="1m")  # control: the next gateway serves
    try:
        assert again.status == 200 and again.events.get(timeout=10) == {"retry": "2000"}
    finally:
        again.close()


# --- workflow items (issue 16: "the feed shows them") ---------------------------------------------

def send_request(url, token, to, question) -> str:
    r = httpx.post(f"{url}/api/v1/requests", json={"to": [to], "priority": "URGENT", "question": question},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["item_id"]


def of_item(items, item_id) -> list[dict]:
    return [i for i in items if i["event"] == "workflow" and i["item"]["item_id"] == item_id]


def published(reader, codec, item_ids, timeout=30) -> dict[str, list[str]]:
    """The event ids the workflow job put on intel.workflow for these items (a plain consumer, made
    before the items were sent: tests.integration.conftest.TopicReader)."""
    got = reader.read(until=lambda ms: {m.key().decode() for m in ms if m.key()} >= set(item_ids), timeout=timeout,
                      settle=1)
    out = {i: [] for i in item_ids}
    for m in got:
        if m.key() is not None and m.key().decode() in out:
            out[m.key().decode()].append(str(codec.decode(m.value())["event_id"]))
    return out


def test_a_request_to_an_agency_is_on_its_live_feed_not_an_unrelated_one_and_resumes_across_both_topics(
        own_gateway, tokens, settings, codec):
    """Hebei sends an assistance request to Tianjin's command center: Tianjin's stream gets it as an
    `event: workflow` item (Jiangsu's, connected all along, never does); a hit and a request made while
    Tianjin is away come, each once, after a reconnect with the id of the last item it had, whichever
    topic that item was on."""
    from tests.integration.conftest import TopicReader

    url = own_gateway.url
    bus = TopicReader(settings, "intel.workflow")
    tianjin = SSE(url, tokens["lv-tj-cc"], since="1m")
    jiangsu = SSE(url, tokens["lv-js-cc"], since="1m")
    try:
        [hit_a] = make_hits(settings)
        first = send_request(url, tokens["lv-hb-cc"], "120000/COMMAND_CENTER", f"LV 协查 {uuid.uuid4().hex[:6]}")
        got = tianjin.items(until=lambda items: of_item(items, first) and tagged(items, [hit_a]), timeout=60, settle=1)
        if not of_item(got, first) and not any(published(bus, codec, [first], timeout=5).values()):
            pytest.skip("no workflow job on this stack answered the request within 30 s (intel.workflow)")
        sent = of_item(got, first)
        assert sent, f"Tianjin's live feed did not show request {first}; it got {[i['event'] for i in got][-10:]}"
        item = sent[0]["item"]
        assert item["feed_item"] == "workflow" and item["event_type"] == "SENT"
        assert item["to"] == ["120000/COMMAND_CENTER"] and item["due_ms"] > item["at_ms"]
        assert sent[0]["id"].startswith("2.120000.")
        assert tagged(got, [hit_a]) == [hit_a], f"Tianjin's live feed did not show hit {hit_a} within 60 s"
        other = jiangsu.items(until=lambda items: False, timeout=1.0)
        assert of_item(other, first) == [] and tagged(other, [hit_a]) == []   # the unrelated agency sees neither
    except BaseException:
        bus.close()
        raise
    finally:
        jiangsu.close()
        tianjin.close()
    bus.close()
    last = got[-1]["id"]  # the last item Tianjin had (a hit, a request's event or another item it may see)
    before = {i["id"] for i in got}
    bus = TopicReader(settings, "intel.workflow")
    try:
        [hit_b] = make_hits(settings)
        second = send_request(url, tokens["lv-hb-cc"], "120000/COMMAND_CENTER", f"LV 协查 {uuid.uuid4().hex[:6]}")
        on_bus = published(bus, codec, [second])
    finally:
        bus.close()
    assert on_bus[second], f"the workflow job published nothing for {second}"
    time.sleep(2)  # while nobody is connected, both arrive
    again = SSE(url, tokens["lv-tj-cc"], last_id=last)
    try:
        after = again.items(until=lambda items: tagged(items, [hit_b]) and len(of_item(items, second)) >= len(
            on_bus[second]), timeout=60, settle=2)
    finally:
        again.close()
    assert tagged(after, [hit_a, hit_b]) == [hit_b], (  # no gap, not the hit seen before
        f"resumed after {last}: before {[(i['event'], i['id']) for i in got if tagged([i], [hit_a])]}, "
        f"after {[(i['event'], i['id']) for i in after][:20]}")
    assert sorted(i["item"]["event_id"] for i in of_item(after, second)) == sorted(on_bus[second])  # each once
    seen_first = {i["item"]["event_id"] for i in of_item(got, first)}
    assert not seen_first & {i["item"]["event_id"] for i in of_item(after, first)}  # its SENT not again
    assert not before & {i["id"] for i in after}                        # nothing shown twice across the reconnect
    assert len({i["id"] for i in after}) == len(after)
