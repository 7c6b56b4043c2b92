"""The web console in a real browser: Debian's chromium driven by Playwright, on the real stack, against a
gateway of this checkout (own_gateway).

Each test is what a person does: a browser without a session is sent to the login page; a Tianjin
command center sees a hit of Tianjin's appear on its wall without a reload, and Jiangsu's wall does
not (while it shows Jiangsu's own); after the gateway is killed and restarted the wall shows the hit
made meanwhile, with no gap and no duplicate; an analyst runs a trail with a purpose and exports it,
and the audit log has both.

With INTELBUS_SCREENSHOTS=1 (`make screenshots`) the tests also save docs/console-wall.png and
docs/console-trail.png.
"""
from __future__ import annotations

import os
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from playwright.sync_api import expect

from ops.lag import JOBS_TOPICS, SINK_TOPICS, wait_for_zero_lag
from tests.integration.browser import add_console_people, log_in, open_console

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = os.environ.get("INTELBUS_SCREENSHOTS") == "1"
CST = timezone(timedelta(hours=8))
LIVE_S = 10  # a hit is on the wall within this many seconds of the check, without a reload


def iso(minutes=0.0):
    return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def admin_ch(settings, sql):
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor

    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        return ex.query(sql)[1]
    finally:
        ex.close()


def screenshot(page, name):
    if SCREENSHOTS:
        page.screenshot(path=str(DOCS / name))


class Story:
    """A person listed as wanted in Xinglong (Hebei), checked in Jizhou (Tianjin) and Suzhou (Jiangsu)."""

    def __init__(self, settings):
        from schemas.normalise import resident_id_check_digit

        self.settings = settings
        self.tag = uuid.uuid4().hex[:8]
        first17 = f"1308221980{int(self.tag[:2], 16) % 12 + 1:02d}{int(self.tag[2:4], 16) % 28 + 1:02d}" \
                  f"{int(self.tag[4:7], 16) % 1000:03d}"
        self.person = first17 + resident_id_check_digit(first17)

    def publish(self, kind, record):
        from producers.regional import RegionalProducer

        with RegionalProducer(settings=self.settings) as p:
            p.publish(kind, record)

    def list_wanted(self):
        self.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"W-{self.tag}",
                                "occurred_at": iso(-60), "action": "LISTED", "offence": "FRAUD", "danger_level": "HIGH",
                                "person": {"id_type": "RESIDENT_ID", "id_number": self.person, "name": "孙八",
                                           "gender": "M"}})
        # the listing is in the jobs' state before any check of the person arrives
        wait_for_zero_lag(self.settings, "intelbus-jobs", JOBS_TOPICS, timeout=300)

    def check(self, region, ref, address="检查站", minutes=0.0):
        self.publish("incident", {"source_region": region, "source_system": "kakou", "source_ref": ref,
                                  "occurred_at": iso(minutes), "incident_type": "CHECKPOINT_CHECK", "title": "卡口核查",
                                  "location": {"region": region, "address": address},
                                  "persons": [{"id_type": "RESIDENT_ID", "id_number": self.person, "role": "CHECKED"}]})
        return ref


@pytest.fixture(scope="module")
def story(stack, settings):
    s = Story(settings)
    s.list_wanted()
    return s


CONSOLE_PEOPLE = [  # (name, region, branch, roles): this module's own, so no other test session resets their passwords
    ("t-web-tj-cc", "120000", "COMMAND_CENTER", ["command_center"]),
    ("t-web-js-cc", "320000", "COMMAND_CENTER", ["command_center"]),
    ("t-web-tj-analyst", "120000", "INTELLIGENCE", ["analyst"]),
]


@pytest.fixture(scope="module")
def console_people(stack, settings):
    """The console's test principals in the stack's store, with fresh passwords ({name: password})."""
    return add_console_people(settings, CONSOLE_PEOPLE)


def card(page, ref):
    return page.locator(".hit-card", has_text=ref)


def test_a_browser_without_a_session_is_sent_to_the_login_page(browser, own_gateway, console_people):
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/", "/analyst"):
            page.goto(own_gateway.url + path)
            expect(page).to_have_url(f"{own_gateway.url}/login?next={path}")
            expect(page.get_by_role("button", name="登录 Log in")).to_be_visible()
        # attempt: a wrong password stays on the login page, saying so in Chinese and English
        log_in(page, "t-web-tj-cc", "not the password at all")
        expect(page.locator("#login-error")).to_have_text("用户名或密码错误 · Wrong name or password")
        expect(page).to_have_url(re.compile(r"/login"))
        # control: the right one opens the page it was sent from; logging out sends it back to the login page
        log_in(page, "t-web-tj-cc", console_people["t-web-tj-cc"])
        expect(page).to_have_url(f"{own_gateway.url}/analyst")
        page.get_by_role("button", name="退出 Log out").click()
        expect(page).to_have_url(re.compile(r"/login"))
        page.goto(own_gateway.url + "/")
        expect(page).to_have_url(f"{own_gateway.url}/login?next=/")
    finally:
        context.close()


def test_the_wall_shows_a_hit_live_only_where_it_belongs_and_resumes_after_a_gateway_restart(
        browser, own_gateway, console_people, story):
    tianjin = open_console(browser, own_gateway, console_people, "t-web-tj-cc")
    jiangsu = open_console(browser, own_gateway, console_people, "t-web-js-cc")
    try:
        for page in (tianjin, jiangsu):
            expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=20_000)
            # caught up with the last minutes' hits (a heartbeat: the gateway had nothing more to send)
            expect(page.locator("#conn")).to_have_attribute("data-heartbeats", re.compile(r"\d"), timeout=60_000)

        # a check in Jizhou (Tianjin) of the person Xinglong lists: Tianjin's wall, without a reload
        jz = story.check("120119", f"JZ-{story.tag}", "蓟州区邦均检查站")
        # and one in Suzhou: Jiangsu's own (the control that Jiangsu's wall works)
        sz = story.check("320500", f"SZ-{story.tag}", "苏州北站")
        started = time.monotonic()
        expect(card(tianjin, jz)).to_have_count(1, timeout=LIVE_S * 1000)
        print(f"[console] the Jizhou hit on Tianjin's wall {time.monotonic() - started:.1f}s after the check")
        shown = card(tianjin, jz)
        expect(shown.locator(".type")).to_have_text("在逃人员 WANTED_PERSON")
        expect(shown.locator("section.owner mark.matched")).to_have_text(story.person)  # the two records side
        expect(shown.locator("section.seen mark.matched")).to_have_text(story.person)   # by side, the ID marked
        expect(shown.locator("section.owner")).to_contain_text("兴隆县 130822")
        expect(shown.locator("section.seen")).to_contain_text("蓟州区 120119")
        expect(shown.locator(".when")).to_contain_text(" CST")
        expect(tianjin.locator(".page-banner")).to_contain_text("内部 INTERNAL")
        expect(tianjin.locator("#plot text", has_text="蓟州区")).not_to_have_count(0)  # the places plot
        expect(card(jiangsu, sz)).to_have_count(1, timeout=LIVE_S * 1000)              # control
        expect(card(jiangsu, jz)).to_have_count(0)                                      # attempt
        expect(card(tianjin, sz)).to_have_count(0)
        if SCREENSHOTS:  # the wall as a command center narrows it: high danger, seen in Jizhou
            tianjin.get_by_label("危险等级 danger").select_option("HIGH")
            tianjin.get_by_label(re.compile("地区 region")).select_option("120119")
            expect(shown).to_be_visible()
            expect(tianjin.locator(".hit-card.fresh:not(.hidden)")).to_have_count(0, timeout=10_000)
            screenshot(tianjin, "console-wall.png")
            tianjin.get_by_label("危险等级 danger").select_option("")
            tianjin.get_by_label(re.compile("地区 region")).select_option("")

        # the gateway dies; a hit is made while it is down; the reconnected wall shows it once, nothing twice
        own_gateway.stop(kill=True)
        expect(tianjin.locator("#conn")).not_to_have_attribute("data-state", "connected", timeout=10_000)
        jz2 = story.check("120119", f"JZ2-{story.tag}", "蓟州区出城检查站")
        own_gateway.start()
        expect(card(tianjin, jz2)).to_have_count(1, timeout=30_000)
        expect(tianjin.locator("#conn")).to_have_attribute("data-state", "connected")
        jz3 = story.check("120119", f"JZ3-{story.tag}", "蓟州区城东检查站")  # and live again after the restart
        expect(card(tianjin, jz3)).to_have_count(1, timeout=LIVE_S * 1000)
        ids = tianjin.locator(".hit-card").evaluate_all("cards => cards.map(c => c.dataset.hitId)")
        assert len(ids) == len(set(ids)), "a hit shown twice"
        assert tianjin.locator("body").get_attribute("data-duplicates") == "0"  # none even sent twice
        for ref in (jz, jz2, jz3):
            expect(card(tianjin, ref)).to_have_count(1)
        # newest first
        refs = tianjin.locator(".hit-card section.seen").all_inner_texts()
        mine = [next(r for r in (jz3, jz2, jz) if r in text) for text in refs if story.tag in text]
        assert mine == [jz3, jz2, jz]
        expect(card(jiangsu, jz2)).to_have_count(0)
        expect(card(jiangsu, jz3)).to_have_count(0)
    finally:
        tianjin.context.close()
        jiangsu.context.close()


def test_an_analyst_runs_a_trail_with_a_purpose_and_exports_it(browser, own_gateway, console_people, story, settings):
    # the person's day in Tianjin: Wuqing, Binhai, then Jizhou
    story.check("120114", f"WQA-{story.tag}", "武清区高速收费站", minutes=-300)
    story.check("120116", f"BHA-{story.tag}", "滨海新区于家堡旅馆", minutes=-180)
    story.check("120119", f"JZA-{story.tag}", "蓟州区渔阳镇派出所", minutes=-5)
    wait_for_zero_lag(settings, "intelbus-sink", SINK_TOPICS, timeout=300)
    since_ms = int(time.time() * 1000) - 1000
    purpose = f"案件 case {story.tag}"
    page = open_console(browser, own_gateway, console_people, "t-web-tj-analyst", "/analyst")
    page.get_by_label("查询 query").select_option("trail")
    page.locator("#p-id").fill(story.person)
    run = page.get_by_role("button", name="查询 Run")
    expect(run).to_be_disabled()  # no purpose, no query
    page.get_by_label(re.compile("事由 purpose")).fill(purpose)
    expect(run).to_be_enabled()
    run.click()
    timeline = page.locator("#timeline li")
    expect(timeline.first).to_be_visible()
    for place in ("武清区高速收费站", "滨海新区于家堡旅馆", "蓟州区渔阳镇派出所"):  # the checks just made
        expect(page.locator("#timeline")).to_contain_text(place)
    expect(page.locator("#result-table tbody tr")).not_to_have_count(0)
    expect(page.locator("#result-table")).to_contain_text(" CST")
    for region in ("武清区", "滨海新区", "蓟州区"):
        expect(page.locator("#trail-plot text", has_text=region)).not_to_have_count(0)
    shown = page.locator("#result-table tbody tr").count()
    screenshot(page, "console-trail.png")

    with page.expect_download() as download:
        page.get_by_role("button", name="导出 CSV").click()
    path = download.value.path()
    data = Path(path).read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and download.value.suggested_filename.startswith("intelbus-trail-")
    lines = data.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("occurred_at (CST),") and len(lines) - 1 == shown
    assert "蓟州区渔阳镇派出所" in data.decode("utf-8-sig")
    expect(page.locator("#status")).to_contain_text("已导出 exported")

    rows = admin_ch(settings, f"SELECT action, outcome, query_name, row_count FROM intelbus.audit_log "
                              f"WHERE user = 't-web-tj-analyst' AND at_ms >= {since_ms} AND purpose = '{purpose}' "
                              f"ORDER BY at_ms")
    assert ("query", "ok", "trail", shown) in rows and ("export", "ok", "trail", shown) in rows, rows
    page.context.close()


def test_the_scorecard_page_shows_an_agency_month_in_a_table_and_a_chart_and_exports_it(
        browser, own_gateway, console_people, settings):
    """A made-up branch of Jizhou (Tianjin) got two requests in October 2026 (CST): one accepted after 10 minutes,
    one after 90 (late); Tianjin's analyst sees 50.0% accepted on time in the table and the chart, and the CSV,
    saved under the server's file name, whose export id is the audit log's export row's."""
    from ops.secrets import clickhouse_url_as
    from sinks.engine import DriverExecutor
    from sinks.rows import WORKFLOW_COLUMNS, workflow_row
    from workflows import model as m
    from workflows.testing import MIN, Runner, person

    branch = f"SCORE_{uuid.uuid4().hex[:8].upper()}"
    agency = f"120119/{branch}"
    october = int(datetime(2026, 10, 12, 2, 0, tzinfo=timezone.utc).timestamp() * 1000)
    events = []
    for n, accept_after in enumerate((10 * MIN, 90 * MIN)):
        r, item = Runner(), f"R-web{uuid.uuid4().hex[:9]}"
        r.clock.at(october + n * 60 * MIN)
        r.apply(m.SendRequest(r.next_id(), item, person("110000", name="zhang"), ("120119/PUBLIC_ORDER",), "ROUTINE",
                              (), "请协查"))
        r.clock.advance(accept_after)
        r.fire_due()
        r.apply(m.AcceptRequest(r.next_id(), item, person("120119", "PUBLIC_ORDER")))
        r.apply(m.CloseRequest(r.next_id(), item, person("110000", name="zhang")))
        events += [e.to_avro() for e in r.events]
    for e in events:  # the made-up branch (not in the branch table, so the machine was given a real one)
        e["to"] = [agency if x == "120119/PUBLIC_ORDER" else x for x in e["to"]]
        e["party"] = agency if e["party"] == "120119/PUBLIC_ORDER" else e["party"]
    ex = DriverExecutor(clickhouse_url_as(settings, "default"))
    try:
        ex.insert("workflow_events", WORKFLOW_COLUMNS,
                  [workflow_row(e, topic="intel.workflow", partition=0, offset=0, ingested_ms=october) for e in events])
    finally:
        ex.close()

    page = open_console(browser, own_gateway, console_people, "t-web-tj-analyst", "/scorecard")
    expect(page.get_by_role("link", name="考核 Scorecard")).to_be_visible()
    page.get_by_label("月份 month (CST)").fill("2026-10")
    show = page.get_by_role("button", name="查询 Show")
    expect(show).to_be_disabled()  # no purpose, no query
    page.get_by_label(re.compile("事由 purpose")).fill("月调度 2026-10")
    show.click()
    row = page.locator(f'#scorecard-table tr[data-agency="{agency}"]')
    expect(row).to_contain_text("蓟州区")
    expect(row.locator("td").nth(1)).to_have_text("2")  # requests received
    expect(row.locator("td").nth(2)).to_have_text("50.0%")  # accepted within the hour
    expect(row.locator("td").nth(5)).to_have_text("10.0")  # median response (min): the lower of 10 and 90
    expect(page.locator(f'#chart rect.acc[data-agency="{agency}"]')).to_have_count(1)
    expect(page.locator("#period")).to_contain_text("2026-10-01 00:00:00 CST")
    screenshot(page, "console-scorecard.png")

    since_ms = int(time.time() * 1000) - 1000
    with page.expect_download() as download:
        page.get_by_role("button", name="导出 CSV").click()
    text = Path(download.value.path()).read_bytes().decode("utf-8-sig")
    [line] = [x for x in text.splitlines() if x.startswith(agency)]
    assert line.split(",")[3:6] == ["2", "1", "0.5"]  # requests_received, accepted_on_time, its share
    # the file is named as the server names it, after the export id that leads back to the audit row
    expect(page.locator("#status")).to_contain_text(re.compile(r"已导出 exported .* 编号 [0-9a-f-]{36} "))
    export_id = re.search(r"编号 ([0-9a-f-]{36}) ", page.locator("#status").inner_text()).group(1)
    assert re.fullmatch(rf"intelbus-scorecard-\d{{8}}-\d{{6}}-{export_id[:8]}\.csv", download.value.suggested_filename), \
        download.value.suggested_filename
    rows = admin_ch(settings, f"SELECT action, outcome, query_name, purpose FROM intelbus.audit_log "
                              f"WHERE user = 't-web-tj-analyst' AND at_ms >= {since_ms} AND action = 'export' "
                              f"AND position(params, '{export_id}') > 0")
    assert [tuple(r) for r in rows] == [("export", "ok", "scorecard", "月调度 2026-10")], rows
    page.context.close()
