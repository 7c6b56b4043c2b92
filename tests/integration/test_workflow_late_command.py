"""A late command never finds its reminder already sent (docs/workflows.md, "Late commands and the watermark").

A workflow worker of the test's own (app id, datadir, metrics port, a policy in seconds, only this
test's items) is SIGSTOPped across a deadline, as a loaded or lagging worker would be, and SIGCONTed:
an acceptance produced on time while it was stopped gets no reminder and no escalation, while an
item nobody answered gets its reminder and first escalation once, as soon as the worker is back
(not after the watermark's hold). Commands are produced to intel.workflow.commands as the gateway
writes them (stamped just before the send); events are read from the worker's own topic.
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid

import pytest

from tests.integration.conftest import TopicReader
from tests.integration.test_workflow_job import WorkerProcess
from workflows import model as m

ACCEPT_S, STEP_S, HOLD_S = 6, 4, 20
POLICY = f"""
assistance_request:
  deadlines:
    ROUTINE: {{accept: {ACCEPT_S}, answer: 600, act: 1200}}
    URGENT: {{accept: {ACCEPT_S}, answer: 600, act: 1200}}
    CRITICAL: {{accept: {ACCEPT_S}, answer: 600, act: 1200}}
directive:
  acknowledge: 600
escalation:
  step: {STEP_S}
"""
ADDRESSEE = "130822/CRIMINAL_INVESTIGATION"


@pytest.fixture(scope="module")
def worker(stack, settings, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow-late")
    w = WorkerProcess(settings, workdir, uuid.uuid4().hex[:10])
    (workdir / "policy.yaml").write_text(POLICY, encoding="utf-8")
    w.out_topic = f"{w.app_id}-events"  # the stack's own job applies the same commands with its own policy
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTELBUS_WORKFLOWS_OUTPUT_TOPIC", w.out_topic)
        mp.setenv("INTELBUS_WORKFLOWS_HOLD_S", str(HOLD_S))
        # a session longer than the pauses: the worker stays in its group across a SIGSTOP, so what is
        # tested is the watermark, not how soon a consumer put out of its group is let back in (with a
        # 6-s session, a clean-clone run waited over 20 s for the rejoin: nothing could be read, and the
        # steps went by the 20-s hold)
        mp.setenv("INTELBUS_WORKFLOWS_SESSION_S", "30")
        w.start()
    yield w
    w.stop()  # continued if a test left it SIGSTOPped (ops/private_app.py)
    w.delete_topics()


@pytest.fixture(scope="module")
def send(stack, settings):
    from confluent_kafka import Producer

    p = Producer({**settings.kafka_config("intelbus-admin"), "enable.idempotence": True, "acks": "all"})

    def send(command) -> None:
        value = {"command": m.to_json(command), "command_id": command.command_id,
                 "issued_at": int(time.time() * 1000), "via": "gateway"}  # stamped just before the send, as the gateway
        p.produce("intel.workflow.commands", key=command.item_id.encode(),
                  value=json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        assert p.flush(15) == 0

    yield send
    p.flush(15)


@pytest.fixture
def events(worker, settings, codec):
    """read(until, timeout, settle): every event of the worker's topic since the test began (each read goes on)."""
    r = TopicReader(settings, worker.out_topic)
    seen: list[dict] = []

    def read(until, timeout=40.0, settle=2.0) -> list[dict]:
        before = list(seen)

        def done(msgs):
            seen[:] = before + [codec.decode(x.value()) for x in msgs]
            return until(seen)

        r.read(until=done, timeout=timeout, settle=settle)
        return list(seen)

    yield read
    r.close()


def cc(region: str) -> m.Actor:
    return m.Actor(f"t-{region}-cc", region, "COMMAND_CENTER", frozenset({"command_center"}))


def addressee() -> m.Actor:
    return m.Actor("t-130822-ci", "130822", "CRIMINAL_INVESTIGATION", frozenset({"command_center"}))


def request(send, worker) -> str:
    item = f"R-{worker.tag}-{uuid.uuid4().hex[:6]}"
    send(m.SendRequest(command_id=f"{worker.tag}-{uuid.uuid4().hex[:12]}", item_id=item, actor=cc("120000"),
                       addressees=(ADDRESSEE,), priority="ROUTINE", subjects=(), question="locate the subject"))
    return item


def of(evs, item, event_type=None):
    return [e for e in evs if e["item_id"] == item and (event_type is None or e["event_type"] == event_type)]


def ms(value) -> int:
    return int(value.timestamp() * 1000)


def metrics(worker) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def fired_by_hold(worker) -> float:
    return sum(float(line.split()[1]) for line in metrics(worker).splitlines()
               if line.startswith("intelbus_workflows_fired_by_hold_total "))


def paused_across(worker, sent_at_ms: int, until_s: float, during=None) -> int:
    """SIGSTOP the worker, run `during`, SIGCONT it `until_s` after sent_at (epoch ms); the resume time (ms)."""
    assert time.time() * 1000 < sent_at_ms + ACCEPT_S * 1000 - 2000, "the items were sent too late for this test"
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        if during is not None:
            during()
        time.sleep(max(0.0, sent_at_ms / 1000 + until_s - time.time()))
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    return int(time.time() * 1000)


def test_an_acceptance_sent_on_time_to_a_stopped_worker_gets_no_reminder_and_the_ignored_one_gets_one(
        worker, send, events):
    accepted, ignored = request(send, worker), request(send, worker)
    evs = events(lambda evs: of(evs, accepted, "SENT") and of(evs, ignored, "SENT"), settle=0.2)
    sent_at = ms(of(evs, accepted, "SENT")[0]["at"])
    accept_sent = {}

    def accept_on_time():
        time.sleep(1.0)
        send(m.AcceptRequest(command_id=f"{worker.tag}-{uuid.uuid4().hex[:12]}", item_id=accepted, actor=addressee()))
        accept_sent["at"] = int(time.time() * 1000)

    # stopped from before the acceptance until after the reminder (6 s) and the first escalation (10 s)
    resumed = paused_across(worker, sent_at, ACCEPT_S + STEP_S + 1.5, during=accept_on_time)
    assert accept_sent["at"] < sent_at + ACCEPT_S * 1000, "the acceptance was not sent before its deadline"
    evs = events(lambda evs: of(evs, accepted, "ACCEPTED") and of(evs, ignored, "ESCALATED"), timeout=40, settle=2)

    assert [e["event_type"] for e in of(evs, accepted)] == ["SENT", "ACCEPTED"], of(evs, accepted)
    steps = [(e["event_type"], e["level"]) for e in of(evs, ignored) if e["event_type"] in ("REMINDED", "ESCALATED")]
    assert steps[:2] == [("REMINDED", 0), ("ESCALATED", 1)] and len(steps) == len(set(steps)), steps  # each once
    reminder, first = of(evs, ignored, "REMINDED")[0], of(evs, ignored, "ESCALATED")[0]
    ignored_sent = ms(of(evs, ignored, "SENT")[0]["at"])
    assert ms(reminder["scheduled_at"]) == ignored_sent + ACCEPT_S * 1000
    assert ms(first["scheduled_at"]) == ignored_sent + (ACCEPT_S + STEP_S) * 1000
    assert first["to"] == ["130800/CRIMINAL_INVESTIGATION"]
    for e in (reminder, first):  # fired once the worker was back, not before it stopped
        assert ms(e["at"]) >= resumed - 50, e
    assert fired_by_hold(worker) == 0


def test_a_paused_worker_with_no_command_sends_the_reminder_once_when_it_resumes(worker, send, events):
    item = request(send, worker)
    evs = events(lambda evs: of(evs, item, "SENT"), settle=0.2)
    sent_at = ms(of(evs, item, "SENT")[0]["at"])
    resumed = paused_across(worker, sent_at, ACCEPT_S + 2)  # the reminder passes while it is stopped
    evs = events(lambda evs: of(evs, item, "REMINDED"), timeout=40, settle=2)
    reminders = of(evs, item, "REMINDED")
    assert len(reminders) == 1, of(evs, item)
    assert ms(reminders[0]["scheduled_at"]) == sent_at + ACCEPT_S * 1000
    # fired when fresh markers came, well before the hold would have let it go by the wall clock
    assert resumed - 50 <= ms(reminders[0]["at"]) < resumed + HOLD_S * 1000 / 2, (resumed, reminders[0]["at"])
    assert fired_by_hold(worker) == 0
    # the watermark lag per partition of APP-items: a worker paused past its session is put out of the
    # group and rejoins after the resume (its gauges go with the revoke and come back with the timers'
    # next round); the reminder may fire before that, from its own claims
    deadline = time.monotonic() + 30
    while "intelbus_workflows_watermark_lag_seconds{" not in (text := metrics(worker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "intelbus_workflows_watermark_lag_seconds{" in text
    # thousands of markers went through the items agent: none taken for a command (it would be undecodable)
    assert 'intelbus_workflows_commands_total{outcome="undecodable"}' not in text
    assert 'intelbus_workflows_commands_total{outcome="applied"}' in text
