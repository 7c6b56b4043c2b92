"""The ends people look at: ClickHouse history (sink, trail, entitlement, audit) and feeds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from ops.lag import SINK_TOPICS, JOBS_TOPICS, wait_for_zero_lag

CST = timezone(timedelta(hours=8))


def iso(minutes):
    return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def intelbus(*args, env=None, timeout=120):
    base = {k: v for k, v in os.environ.items() if k not in ("INTELBUS_TOKEN", "INTELBUS_OPERATOR", "INTELBUS_CREDENTIALS")}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})})


def ch(settings, sql):
    """The test's own look at ClickHouse, as the admin (`default`)."""
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(sql)[1]
    finally:
        ex.close()


def settle(settings):
    wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=300)


@pytest.fixture(scope="module")
def story(stack, settings):
    """A person wanted in Xinglong, checked in Jizhou, then in Tongzhou; an unrelated Beijing event."""
    from producers.regional import RegionalProducer

    tag = uuid.uuid4().hex[:8]
    first17 = f"1308221979{int(tag[:2], 16) % 12 + 1:02d}{int(tag[2:4], 16) % 28 + 1:02d}{int(tag[4:7], 16) % 1000:03d}"
    from schemas.normalise import resident_id_check_digit

    person = first17 + resident_id_check_digit(first17)
    with RegionalProducer(settings=settings) as p:
        p.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"W-{tag}",
                             "occurred_at": iso(-60), "action": "LISTED", "offence": "FRAUD",
                             "person": {"id_type": "RESIDENT_ID", "id_number": person, "name": "钱七"}})
        for region, minutes, ref in (("120119", -30, f"C1-{tag}"), ("110112", -10, f"C2-{tag}")):
            p.publish("incident", {"source_region": region, "source_system": "kakou", "source_ref": ref,
                                   "occurred_at": iso(minutes), "incident_type": "CHECKPOINT_CHECK",
                                   "location": {"region": region},
                                   "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]})
        p.publish("incident", {"source_region": "110105", "source_system": "jwzh", "source_ref": f"X-{tag}",
                               "occurred_at": iso(-5), "incident_type": "THEFT", "location": {"region": "110105"}})
    settle(settings)
    return {"tag": tag, "person": person}


def test_events_and_hits_are_stored_once(story, settings):
    tag = story["tag"]
    rows = ch(settings, f"SELECT count(), uniqExact(event_id) FROM intelbus.events FINAL WHERE source_ref LIKE '%{tag}'")
    assert rows == [(4, 4)]
    hits = ch(settings, f"SELECT count() FROM intelbus.hits FINAL WHERE record_key = '130822/ztry/W-{tag}'")
    assert hits == [(2,)]  # Jizhou and Tongzhou sightings; two province copies each on Kafka, one row each here


def test_a_batch_delivered_twice_is_stored_once(story, stack, settings):
    """Rewind the sink's committed offsets, as a crash between insert and commit would leave them."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    stack.down(only={"sink"})
    topic = "intel.incident.unique"
    probe = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": "intelbus-sink"})
    partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
    committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    probe.close()
    rewound = [TopicPartition(topic, tp.partition, max(0, tp.offset - 50)) for tp in committed if tp.offset > 0]
    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions("intelbus-sink", rewound)])["intelbus-sink"].result(10)
    before = ch(settings, "SELECT count() FROM intelbus.events FINAL")[0][0]
    stack.up()
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=120)
    time.sleep(1.5)
    assert ch(settings, "SELECT count() FROM intelbus.events FINAL")[0][0] == before
    # duplicates may sit in parts not merged yet; what queries read (FINAL) has none
    assert ch(settings, "SELECT count() - uniqExact(event_id) FROM intelbus.events FINAL")[0][0] == 0


def test_sink_killed_between_insert_and_commit_stores_each_event_and_hit_once(stack, settings, people):
    """The sink inserts a batch and dies before committing it (INTELBUS_SINK_FAULT); the next
    sink reads the same batch again and inserts it again: queries still see everything once."""
    from producers.regional import RegionalProducer
    from schemas.normalise import resident_id_check_digit

    tag = uuid.uuid4().hex[:8]
    first17 = f"1308221980{int(tag[:2], 16) % 12 + 1:02d}{int(tag[2:4], 16) % 28 + 1:02d}{int(tag[4:7], 16) % 1000:03d}"
    person = first17 + resident_id_check_digit(first17)
    stack.down(only={"sink"})
    try:
        with RegionalProducer(settings=settings) as p:
            p.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"KW-{tag}",
                                 "occurred_at": iso(-60), "action": "LISTED",
                                 "person": {"id_type": "RESIDENT_ID", "id_number": person}})
            for i in range(20):
                p.publish("incident", {"source_region": "120119", "source_system": "kakou", "source_ref": f"K{i}-{tag}",
                                       "occurred_at": iso(-30 + i), "incident_type": "CHECKPOINT_CHECK",
                                       "location": {"region": "120119"},
                                       "persons": [{"id_type": "RESIDENT_ID", "id_number": person}]})
        wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)
        killed = intelbus("sink", env={"INTELBUS_SINK_FAULT": "exit-before-commit", "INTELBUS_METRICS_PORT_BASE": "29400"},
                          timeout=120)
        assert killed.returncode == 70, killed.stderr[-2000:]
        # rows of the batch are in ClickHouse (the first batch holds at least some of ours: a
        # second closes after 1 s), its offsets are not committed: the batch will come again
        inserted = ch(settings, f"SELECT count() FROM intelbus.events WHERE source_ref LIKE '%-{tag}'")[0][0] + \
            ch(settings, f"SELECT count() FROM intelbus.hits WHERE record_key = '130822/ztry/KW-{tag}'")[0][0]
        assert inserted > 0
        from ops.lag import group_lag

        assert sum(group_lag(settings, "intelbus-sink", SINK_TOPICS).values()) > 0
    finally:
        stack.up()
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=120)
    time.sleep(1.5)
    raw = ch(settings, f"SELECT count() FROM intelbus.events WHERE source_ref LIKE '%-{tag}'")[0][0]
    assert 21 <= raw <= 42  # stored twice until ClickHouse merges the parts
    assert ch(settings, f"SELECT count() FROM intelbus.events FINAL WHERE source_ref LIKE '%-{tag}'") == [(21,)]
    assert ch(settings, f"SELECT count() FROM intelbus.hits FINAL WHERE record_key = '130822/ztry/KW-{tag}'") == [(20,)]
    # what people see of it, once each: Tianjin's analyst the twenty Jizhou checks, Hebei's the listing
    tianjin = intelbus("query", "trail", "--id", person, "--purpose", f"kill {tag}", "--format", "json",
                       env=people.env("t-tj-analyst"))
    hebei = intelbus("query", "trail", "--id", person, "--purpose", f"kill {tag}", "--format", "json",
                     env=people.env("t-hb-analyst"))
    assert (len(tianjin.stdout.splitlines()), len(hebei.stdout.splitlines())) == (20, 1), tianjin.stderr + hebei.stderr
    sql = intelbus("sql", f"SELECT count() AS n FROM hits WHERE record_key = '130822/ztry/KW-{tag}'", "--format", "json",
                   env=people.env("t-tj-analyst"))
    assert json.loads(sql.stdout)["n"] == 20, sql.stderr


def test_clickhouse_down_for_30s_loses_nothing(story, stack, settings):
    from producers.regional import RegionalProducer

    tag = uuid.uuid4().hex[:8]
    stack.down(only={"clickhouse"})
    try:
        with RegionalProducer(settings=settings) as p:
            for i in range(200):
                p.publish("incident", {"source_region": "120114", "source_system": "jwzh", "source_ref": f"O-{tag}-{i}",
                                       "occurred_at": iso(-1), "incident_type": "HOTEL_CHECKIN", "location": {"region": "120114"}})
        time.sleep(30)
    finally:
        stack.up()
    settle(settings)
    time.sleep(2)
    assert ch(settings, f"SELECT uniqExact(event_id) FROM intelbus.events WHERE source_ref LIKE 'O-{tag}-%'") == [(200,)]
    status = intelbus("status", "--json")
    assert json.loads(status.stdout)["healthy"] is True  # the sink rode it out, no crash loop


def test_trail_returns_the_cross_region_history_in_order_and_is_audited(story, settings, people):
    def trail(name):
        result = intelbus("query", "trail", "--id", story["person"], "--purpose", f"case {story['tag']}", "--format",
                          "json", env=people.env(name))
        assert result.returncode == 0, result.stderr
        return [json.loads(l) for l in result.stdout.splitlines()]
    rows = trail("t-hb-analyst") + trail("t-tj-analyst") + trail("t-bj-analyst")
    assert [(r["region"], r["kind"]) for r in rows] == [("130822", "wanted"), ("120119", "incident"), ("110112", "incident")]
    audit = ch(settings, f"SELECT user, purpose, row_count FROM intelbus.audit_log WHERE purpose = 'case {story['tag']}' "
                         "ORDER BY user")
    assert audit == [("t-bj-analyst", f"case {story['tag']}", 1), ("t-hb-analyst", f"case {story['tag']}", 1),
                     ("t-tj-analyst", f"case {story['tag']}", 1)]


def test_trail_needs_a_purpose(story, people):
    result = intelbus("query", "trail", "--id", story["person"], env=people.env("t-hb-analyst"))
    assert result.returncode == 2 and "a purpose is required" in result.stderr


def test_region_filter_hides_what_a_region_may_not_see(story, people):
    def trail(name, region=None):
        r = intelbus("query", "trail", "--id", story["person"], "--purpose", "t", "--format", "json",
                     *(["--region", region] if region else []), env=people.env(name))
        assert r.returncode == 0, r.stderr
        return [json.loads(l)["region"] for l in r.stdout.splitlines()]
    assert trail("t-hb-analyst") == ["130822"]            # Hebei sees its county's record, not Tianjin's check
    assert trail("t-hb-analyst", "130822") == ["130822"]  # narrowed to Xinglong
    assert trail("t-tj-analyst") == ["120119"]
    assert trail("t-js-analyst") == []
    r = intelbus("sql", f"SELECT source_ref FROM events WHERE source_ref LIKE '%{story['tag']}' ORDER BY source_ref",
                 "--format", "json", env=people.env("t-bj-analyst"))
    assert [json.loads(l)["source_ref"] for l in r.stdout.splitlines()] == [f"C2-{story['tag']}", f"X-{story['tag']}"]


def test_without_a_login_nothing_is_shown(story, people):
    r = intelbus("query", "hits", env=people.nobody())
    assert r.returncode != 0 and "not logged in" in r.stderr


@pytest.mark.parametrize("statement", ["INSERT INTO events (event_id) VALUES ('x')", "ALTER TABLE events DELETE WHERE 1",
                                       "DROP TABLE hits", "SELECT 1; DROP TABLE hits"])
def test_sql_refuses_writes(story, statement, settings, people):
    r = intelbus("sql", statement, env=people.env("t-hb-analyst"))
    assert r.returncode == 2 and "refused" in r.stderr
    assert ch(settings, "SELECT count() FROM system.tables WHERE database = 'intelbus' AND name = 'hits'") == [(1,)]


def test_feed_json_prints_exactly_the_expected_hits_and_is_audited(story, settings, people):
    result = intelbus("feed", "--json", "--since", "2h", env=people.env("t-jz-cc"))
    assert result.returncode == 0, result.stderr
    mine = [json.loads(l) for l in result.stdout.splitlines() if f"W-{story['tag']}" in l]
    assert len(mine) == 1  # the Jizhou sighting; the Tongzhou one is not Jizhou's business
    assert mine[0]["hit_region"] == "120119" and mine[0]["record"]["person"]["id_number"] == story["person"]
    hebei = intelbus("feed", "--json", "--since", "2h", env=people.env("t-hb-cc"))
    assert len([l for l in hebei.stdout.splitlines() if f"W-{story['tag']}" in l]) == 2  # the owner sees both
    audit = ch(settings, "SELECT count() FROM intelbus.audit_log WHERE action = 'feed' AND user = 't-jz-cc' "
                         "AND outcome = 'ok' AND agency = '120119/COMMAND_CENTER'")
    assert audit[0][0] >= 1


def test_feed_shows_alerts_shared_with_the_region_and_no_others(story, settings, people):
    from producers.regional import RegionalProducer

    tag = story["tag"]
    with RegionalProducer(settings=settings) as p:
        for ref, scope in ((f"A-TJ-{tag}", ["120000"]), (f"A-GD-{tag}", ["440000"])):
            p.publish("alert", {"source_region": "110105", "source_system": "bk", "source_ref": ref, "occurred_at": iso(-1),
                                "alert_type": "ASSIST_REQUEST", "title": "协查盗抢车辆", "status": "OPEN",
                                "vehicles": [{"plate": "京A12345"}], "share_scope": scope})
    settle(settings)
    jizhou = intelbus("feed", "--json", "--since", "2h", env=people.env("t-jz-cc"))
    alerts = [json.loads(l) for l in jizhou.stdout.splitlines() if f"-{tag}" in l and '"feed_item": "alert"' in l]
    assert [a["source_ref"] for a in alerts] == [f"A-TJ-{tag}"]  # shared with Tianjin: its districts see it
    human = intelbus("feed", "--since", "2h", env=people.env("t-jz-cc"))
    assert f"A-TJ-{tag}" in human.stdout and f"A-GD-{tag}" not in human.stdout
