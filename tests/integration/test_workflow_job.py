"""The workflow job on the real stack: deadlines in seconds, a worker process of the test's own.

The worker runs with its own app id (consumer group, internal topics, changelogs), its own
datadir and metrics port, a policy file of seconds (INTELBUS_WORKFLOWS_FILE), and handles only
this session's items (INTELBUS_WORKFLOWS_ONLY: the session tag in item ids, command ids and
the wanted records' keys), so other sessions' commands and hits are left alone. Commands are
produced to intel.workflow.commands as the gateway writes them; events are read from
intel.workflow.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ops.private_app import delete_private_app, stop_worker
from tests.integration.conftest import TopicReader
from workflows import model as m

REPO = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))
ACCEPT_S, STEP_S, CONFIRM_S = 5, 3, 5

POLICY = f"""
hit_follow_up:
  confirm_urgent: {CONFIRM_S}
  confirm_routine: {CONFIRM_S}
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


def cc(region: str, name: str | None = None) -> m.Actor:
    return m.Actor(name or f"t-{region}-cc", region, "COMMAND_CENTER", frozenset({"command_center"}))


class WorkerProcess:
    """`python -m stream_jobs.workflow_job` with the test's app id, datadir, policy and metrics port."""

    def __init__(self, settings, workdir: Path, tag: str):
        self.settings, self.workdir, self.tag = settings, workdir, tag
        self.app_id = f"intelbus-jobs-workflows-test-{tag}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (workdir / "policy.yaml").write_text(POLICY, encoding="utf-8")
        self.log_path = workdir / "worker.log"
        self.proc = None

    def start(self, timeout: float = 60.0) -> "WorkerProcess":
        import urllib.request

        env = {**os.environ, "INTELBUS_WORKFLOWS_FILE": str(self.workdir / "policy.yaml"),
               "INTELBUS_WORKFLOWS_ONLY": self.tag, "INTELBUS_WORKFLOWS_OFFSET_RESET": "latest",
               "INTELBUS_WORKFLOWS_SESSION_S": os.environ.get("INTELBUS_WORKFLOWS_SESSION_S", "6")}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_jobs.workflow_job", "--app-id", self.app_id, "--datadir",
             str(self.workdir / "data"), "--metrics-port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"workflow worker exited with {self.proc.returncode}: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                    if b"intelbus_service_ready 1.0" in resp.read():
                        return self
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"workflow worker not ready within {timeout:.0f}s: see {self.log_path}")

    def stop(self, *, kill: bool = False):
        """SIGTERM (or SIGKILL); how long it took to be out (ops/private_app.py)."""
        stopped, self.proc = stop_worker(self.proc, kill=kill), None
        return stopped

    def delete_topics(self) -> None:
        """Its internal topics, changelogs and consumer group."""
        delete_private_app(self.settings, self.app_id)


@pytest.fixture(scope="module")
def worker(stack, settings, tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    w = WorkerProcess(settings, tmp_path_factory.mktemp("workflows"), tag)
    w.start()
    yield w
    w.stop()
    w.delete_topics()


@pytest.fixture(scope="module")
def commands(stack, settings):
    from confluent_kafka import Producer

    p = Producer({**settings.kafka_config("intelbus-admin"), "enable.idempotence": True, "acks": "all"})

    def send(command) -> tuple[int, int]:
        """Produce the command as the gateway does; its (partition, offset)."""
        value = {"command": m.to_json(command), "command_id": command.command_id,
                 "issued_at": int(time.time() * 1000), "via": "gateway"}
        delivered = []
        p.produce("intel.workflow.commands", key=command.item_id.encode(), value=json.dumps(value).encode(),
                  on_delivery=lambda err, msg: delivered.append((err, msg)))
        assert p.flush(15) == 0 and delivered and delivered[0][0] is None, delivered
        return delivered[0][1].partition(), delivered[0][1].offset()

    yield send
    p.flush(15)


@pytest.fixture
def events(settings, codec):
    """events.read(until, timeout): decoded intel.workflow records from now on."""
    r = TopicReader(settings, "intel.workflow")

    class Events:
        def __init__(self):
            self.all: list[dict] = []
            self._ids: set[str] = set()
            self.raw: list[dict] = []  # every message, duplicates included

        def read(self, until, timeout: float = 40.0, settle: float = 2.0) -> list[dict]:
            def done(_msgs):
                for x in _msgs[len(self._seen):]:
                    e = codec.decode(x.value())
                    self.raw.append(e)
                    # the stack's own workflow job (if it runs) applies the same commands: the same
                    # causes give the same event ids, and consumers keep one event per id
                    if str(e["event_id"]) not in self._ids:
                        self._ids.add(str(e["event_id"]))
                        self.all.append(e)
                self._seen = list(_msgs)
                return until(self.all)
            self._seen = []
            r.read(until=done, timeout=timeout, settle=settle)
            return self.all

    yield Events()
    r.close()


def of(evs, item_id, event_type=None, **where):
    return [e for e in evs if e["item_id"] == item_id and (event_type is None or e["event_type"] == event_type)
            and all(e.get(k) == v for k, v in where.items())]


def ms(value) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def cid(worker) -> str:
    return f"{worker.tag}-{uuid.uuid4().hex[:12]}"


def send_request(commands, worker, requester="120000", to="130822/CRIMINAL_INVESTIGATION", subjects=None):
    item = f"R-{worker.tag}-{uuid.uuid4().hex[:6]}"
    commands(m.SendRequest(command_id=cid(worker), item_id=item, actor=cc(requester), addressees=(to,),
                           priority="ROUTINE", subjects=subjects or (m.Identifier("PHONE", "13800138000"),),
                           question="locate the subject"))
    return item


def addressee(region="130822", branch="CRIMINAL_INVESTIGATION"):
    return m.Actor(f"t-{region}-ci", region, branch, frozenset({"command_center"}))


def test_request_accepted_in_time_and_one_ignored(worker, commands, events):
    done = send_request(commands, worker)
    ignored = send_request(commands, worker)
    commands(m.AcceptRequest(command_id=cid(worker), item_id=done, actor=addressee()))
    evs = events.read(until=lambda evs: of(evs, ignored, "ESCALATED", level=1), timeout=40, settle=2.5)

    assert [e["event_type"] for e in of(evs, done)] == ["SENT", "ACCEPTED"], of(evs, done)
    sent = of(evs, ignored, "SENT")
    reminders = of(evs, ignored, "REMINDED")
    first = of(evs, ignored, "ESCALATED", level=1)
    assert len(sent) == 1 and len(reminders) == 1 and len(first) == 1, [e["event_type"] for e in of(evs, ignored)]
    assert first[0]["to"] == ["130800/CRIMINAL_INVESTIGATION"]  # Xinglong's parent, same branch
    assert reminders[0]["to"] == ["130822/CRIMINAL_INVESTIGATION"]
    sent_at = ms(sent[0]["at"])
    assert ms(reminders[0]["scheduled_at"]) == sent_at + ACCEPT_S * 1000
    assert ms(first[0]["scheduled_at"]) == sent_at + (ACCEPT_S + STEP_S) * 1000
    for e in (reminders[0], first[0]):  # fired within about a tick of their time
        assert 0 <= ms(e["at"]) - ms(e["scheduled_at"]) < 2500, e
    # the accepted one: still nothing after its accept deadline and first escalation time
    assert time.time() * 1000 > ms(of(evs, done, "SENT")[0]["at"]) + (ACCEPT_S + STEP_S) * 1000
    assert not [e for e in of(evs, done) if e["event_type"] in ("REMINDED", "ESCALATED")]


def test_refused_command_is_a_dead_letter(settings, worker, commands, events, codec):
    item = send_request(commands, worker)
    dlq = TopicReader(settings, "intel.dlq")
    try:
        bad = m.AcceptRequest(command_id=cid(worker), item_id=item, actor=addressee("130800"))  # not an addressee
        events.read(until=lambda evs: of(evs, item, "SENT"), settle=0.5)
        commands(bad)
        got = dlq.read(until=lambda msgs: any(bad.command_id in codec.decode(x.value())["source"] for x in msgs),
                       timeout=30, settle=0.5)
        letters = [d for d in (codec.decode(x.value()) for x in got) if bad.command_id in d["source"]]
        assert len({str(d["dlq_id"]) for d in letters}) == 1, letters  # one letter (the stack's job may write its copy)
        assert letters[0]["stage"] == "WORKFLOW", letters
        assert "130800/CRIMINAL_INVESTIGATION is not one of them" in letters[0]["reason"]
        assert "t-130800-ci" in letters[0]["reason"] and letters[0]["source_region"] == "130800"
    finally:
        dlq.close()


def test_hit_confirmed_in_time_and_one_not(worker, commands, events, producer, ids):
    def iso(minutes):
        return (datetime.now(tz=CST) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")

    people, keys = [ids.new("130822") for _ in range(2)], []
    for i, person in enumerate(people):
        ref = f"W-{worker.tag}-{i}"
        keys.append(f"130822/ztry/{ref}")
        producer.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": ref,
                                    "occurred_at": iso(-60), "action": "LISTED", "offence": "FRAUD",
                                    "person": {"id_type": "RESIDENT_ID", "id_number": person, "name": "孙八"}})
    producer.flush()
    for i, person in enumerate(people):
        producer.publish("incident", {
            "source_region": "120119", "source_system": "kakou", "source_ref": f"JZ-{worker.tag}-{i}",
            "occurred_at": iso(-1), "incident_type": "CHECKPOINT_CHECK", "location": {"region": "120119"},
            "persons": [{"id_type": "RESIDENT_ID", "id_number": person, "role": "CHECKED"}]})
    producer.flush()

    def opened(evs):
        return {k: [e for e in evs if e["event_type"] == "OPENED" and k in e["refs"]] for k in keys}

    evs = events.read(until=lambda evs: all(opened(evs).values()), timeout=60, settle=0.2)
    hits = {k: v[0]["item_id"] for k, v in opened(evs).items()}
    confirmed, ignored = hits[keys[0]], hits[keys[1]]
    commands(m.ConfirmHit(command_id=cid(worker), item_id=confirmed, actor=cc("130822"), answer="CONFIRMED"))
    evs = events.read(until=lambda evs: of(evs, ignored, "ESCALATED", level=1), timeout=40, settle=2.5)

    for hit in (confirmed, ignored):
        assert len(of(evs, hit, "OPENED")) == 1  # intel.hit carries one copy per province: opened once
    assert [e["event_type"] for e in of(evs, confirmed)] == ["OPENED", "CONFIRMED"]
    opened_at = ms(of(evs, ignored, "OPENED")[0]["at"])
    reminders, first = of(evs, ignored, "REMINDED"), of(evs, ignored, "ESCALATED", level=1)
    assert len(reminders) == 1 and len(first) == 1
    assert reminders[0]["to"] == ["130822"] and first[0]["to"] == ["130800"]
    assert ms(reminders[0]["scheduled_at"]) == opened_at + CONFIRM_S * 1000
    assert ms(first[0]["scheduled_at"]) == opened_at + (CONFIRM_S + STEP_S) * 1000
    assert time.time() * 1000 > ms(of(evs, confirmed, "OPENED")[0]["at"]) + (CONFIRM_S + STEP_S) * 1000

    # the owner's ARRESTED revision (intel.wanted.unique, routed by record key) closes the follow-up
    producer.publish("wanted", {"source_region": "130822", "source_system": "ztry", "source_ref": f"W-{worker.tag}-0",
                                "revision": 2, "occurred_at": iso(-1), "action": "ARRESTED", "offence": "FRAUD",
                                "person": {"id_type": "RESIDENT_ID", "id_number": people[0], "name": "孙八"}})
    producer.flush()
    evs = events.read(until=lambda evs: of(evs, confirmed, "LISTING_CLOSED"), timeout=30, settle=1)
    closed = of(evs, confirmed, "LISTING_CLOSED")
    assert len(closed) == 1 and closed[0]["code"] == "ARRESTED" and closed[0]["status"] == "CLOSED"
    assert not of(evs, ignored, "LISTING_CLOSED")


def test_worker_killed_while_a_deadline_passes(worker, commands, events):
    item = send_request(commands, worker)
    evs = events.read(until=lambda evs: of(evs, item, "SENT"), settle=0.2)
    sent_at = ms(of(evs, item, "SENT")[0]["at"])
    worker.stop(kill=True)  # SIGKILL before the reminder is due
    assert time.time() * 1000 < sent_at + ACCEPT_S * 1000, "the worker was killed too late for this test"
    time.sleep(max(0.0, (sent_at + (ACCEPT_S + STEP_S) * 1000) / 1000 - time.time()) + 0.5)  # reminder and level 1 pass
    worker.start()
    evs = events.read(until=lambda evs: of(evs, item, "ESCALATED", level=2), timeout=60, settle=4)
    reminders, first, second = (of(evs, item, "REMINDED"), of(evs, item, "ESCALATED", level=1),
                                of(evs, item, "ESCALATED", level=2))
    assert (len(reminders), len(first), len(second)) == (1, 1, 1), [(e["event_type"], e["level"]) for e in of(evs, item)]
    assert ms(first[0]["at"]) > ms(first[0]["scheduled_at"])  # fired late, once, when the worker was back
    # not even a duplicate message: the stack's job (hour-long deadlines) fires none of these steps now
    steps = [(e["event_type"], e["level"]) for e in of(events.raw, item) if e["event_type"] in ("REMINDED", "ESCALATED")]
    assert len(steps) == len(set(steps)), steps
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    fired = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith("intelbus_workflows_fired_steps_total{")}
    assert fired.get('intelbus_workflows_fired_steps_total{kind="ESCALATED"}', 0) >= 2, fired
    assert "intelbus_workflows_timer_lag_seconds_count" in text and "intelbus_workflows_open_items" in text


def test_a_later_request_about_the_same_identifier_is_offered_the_earlier_answer(worker, commands, events):
    phone = m.Identifier("PHONE", f"139{uuid.uuid4().int % 10**8:08d}")
    first = send_request(commands, worker, subjects=(phone,))
    commands(m.AcceptRequest(command_id=cid(worker), item_id=first, actor=addressee()))
    commands(m.AnswerRequest(command_id=cid(worker), item_id=first, actor=addressee(), findings="lives in Xinglong"))
    events.read(until=lambda evs: of(evs, first, "ANSWERED"), settle=0.5)
    second = send_request(commands, worker, to="130800/CRIMINAL_INVESTIGATION", subjects=(phone,))
    evs = events.read(until=lambda evs: of(evs, second, "ANSWERS_OFFERED"), timeout=30, settle=1)
    offered = of(evs, second, "ANSWERS_OFFERED")
    assert len(offered) == 1 and offered[0]["refs"] == [first] and offered[0]["to"] == ["130800/CRIMINAL_INVESTIGATION"]
    assert "lives in Xinglong" not in json.dumps([str(v) for v in offered[0].values()])  # findings stay off the topic
    # the accept and the answer, sent right behind the request, waited for its look-up, in order
    assert [e["event_type"] for e in of(evs, first)] == ["SENT", "ACCEPTED", "ANSWERED"]


def test_a_worker_stops_within_seconds_of_sigterm_with_what_it_processed_committed(stack, settings, commands, events,
                                                                                   tmp_path):
    """A worker of its own (scraped for readiness from its start, as Prometheus would): SIGTERM
    stops it in seconds, not by the SIGKILL after the grace, and the command it applied is
    committed (a restart would not apply it again). Then its topics and group are deleted."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    w = WorkerProcess(settings, tmp_path, uuid.uuid4().hex[:10])
    try:
        w.start()
        item = f"R-{w.tag}-{uuid.uuid4().hex[:6]}"
        partition, offset = commands(m.SendRequest(
            command_id=cid(w), item_id=item, actor=cc("120000"), addressees=("130822/CRIMINAL_INVESTIGATION",),
            priority="ROUTINE", subjects=(m.Identifier("PHONE", "13800138000"),), question="locate the subject"))
        events.read(until=lambda evs: of(evs, item, "SENT"), settle=0.2)

        stopped = w.stop()
        assert not stopped.killed and stopped.returncode == 0, (stopped, w.log_path.read_text(errors="replace")[-2000:])
        assert stopped.seconds < 10, stopped

        probe = Consumer({**settings.kafka_config("intelbus-admin"), "group.id": w.app_id, "enable.auto.commit": False})
        try:
            committed = probe.committed([TopicPartition("intel.workflow.commands", partition)], timeout=10)[0].offset
        finally:
            probe.close()
        assert committed > offset, (committed, offset)
    finally:
        w.stop()
        w.delete_topics()
    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    assert not [t for t in admin.list_topics(timeout=10).topics if t.startswith(w.app_id)]
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    assert w.app_id not in {g.group_id for g in groups}
