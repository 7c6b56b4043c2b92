"""ops/private_app.py: which topics a private app's clean-up deletes, what it reports, how its worker is stopped."""
from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import Future

import pytest

from ops import private_app
from ops.private_app import NotPrivate, delete_private_app, private_topics, stop_worker

BUS = [
    "intel.alert", "intel.hit",
    "intelbus-jobs-__assignor-__leader", "intelbus-jobs-records-changelog",  # jobs-0
    "intelbus-jobs-workflows-items", "intelbus-jobs-workflows-items-changelog",  # workflows-0
    "intelbus-jobs-ab12-__assignor-__leader", "intelbus-jobs-ab12-records-changelog", "intelbus-jobs-ab12.hit",
    "intelbus-jobs-ab12.alert.unique", "intelbus-jobs-ab123-records-changelog", "intelbus-jobs-ab123.hit",
    "intelbus-jobs-ab12-in.alert", "intelbus-jobs-ab12-in.wanted",
    "intelbus-jobs-workflows-test-9f-items", "intelbus-jobs-workflows-test-9f-events", "intelbus-jobs-workflows-test-9f0-items",
]


def test_an_apps_topics_are_its_internal_topics_and_outputs_not_another_app_with_a_longer_tag():
    assert private_topics(BUS, "intelbus-jobs-ab12") == [
        "intelbus-jobs-ab12-__assignor-__leader", "intelbus-jobs-ab12-in.alert", "intelbus-jobs-ab12-in.wanted",
        "intelbus-jobs-ab12-records-changelog", "intelbus-jobs-ab12.alert.unique", "intelbus-jobs-ab12.hit"]
    assert private_topics(BUS, "intelbus-jobs-workflows-test-9f") == [
        "intelbus-jobs-workflows-test-9f-events", "intelbus-jobs-workflows-test-9f-items"]


def test_the_inputs_prefix_adds_its_topics():
    assert private_topics(BUS, "intelbus-jobs-ab123", inputs=("intelbus-jobs-ab12-in",)) == [
        "intelbus-jobs-ab12-in.alert", "intelbus-jobs-ab12-in.wanted", "intelbus-jobs-ab123-records-changelog",
        "intelbus-jobs-ab123.hit"]


@pytest.mark.parametrize("name, says", [
    ("intelbus-jobs", "the stack's own app 'intelbus-jobs'"),
    ("intelbus-jobs-workflows", "the stack's own app 'intelbus-jobs-workflows'"),
    ("intelbus-jobs-work", "the stack's own app 'intelbus-jobs-workflows'"),
    ("intelbus-jobs-", "the stack's own app 'intelbus-jobs'"),
    ("intelbus-jobsx", "it must be intelbus-jobs-<tag>"),
    ("intel", "it must be intelbus-jobs-<tag>"),
])
def test_a_name_that_would_take_the_stacks_topics_is_refused(name, says):
    with pytest.raises(NotPrivate, match=says):
        private_topics(BUS, name)
    with pytest.raises(NotPrivate, match=says):  # as an inputs prefix too
        private_topics(BUS, "intelbus-jobs-ab12", inputs=(name,))


class FakeAdmin:
    """confluent_kafka's AdminClient as far as the clean-up uses it: futures per topic and group."""

    def __init__(self, topics, failures=None):
        self.topics, self.failures, self.deleted, self.groups = list(topics), failures or {}, [], []

    def list_topics(self, timeout):
        return type("Metadata", (), {"topics": {t: None for t in self.topics}})()

    def _future(self, name):
        fut = Future()
        if name in self.failures:
            fut.set_exception(Exception(self.failures[name]))
        else:
            fut.set_result(None)
        return fut

    def delete_topics(self, names, operation_timeout, request_timeout):
        self.deleted += names
        return {n: self._future(n) for n in names}

    def delete_consumer_groups(self, groups, request_timeout):
        self.groups += groups
        return {g: self._future(g) for g in groups}


class Settings:
    def kafka_config(self, user):
        return {"user": user}


def clean_up(monkeypatch, admin, app_id, **kwargs):
    import confluent_kafka.admin

    users = []
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", lambda conf: users.append(conf["user"]) or admin)
    done = delete_private_app(Settings(), app_id, **kwargs)
    return done, users


def test_the_clean_up_deletes_the_apps_topics_and_group_as_the_admin(monkeypatch):
    admin = FakeAdmin(BUS)
    done, users = clean_up(monkeypatch, admin, "intelbus-jobs-ab12", inputs=("intelbus-jobs-ab12-in",))
    assert users == ["intelbus-admin"]  # the jobs' principal may not delete (ops/acls.yaml)
    assert admin.deleted == private_topics(BUS, "intelbus-jobs-ab12") == done.topics
    assert "intelbus-jobs-ab123.hit" not in admin.deleted and "intelbus-jobs-records-changelog" not in admin.deleted
    assert admin.groups == ["intelbus-jobs-ab12"] and done.group and done.errors == []


def test_what_is_already_gone_is_no_error_and_what_is_refused_is_reported(monkeypatch):
    admin = FakeAdmin(BUS, failures={
        "intelbus-jobs-ab12.hit": "KafkaError{code=UNKNOWN_TOPIC_OR_PART}",  # deleted meanwhile
        "intelbus-jobs-ab12-records-changelog": "KafkaError{code=TOPIC_AUTHORIZATION_FAILED}",
        "intelbus-jobs-ab12": "KafkaError{code=NON_EMPTY_GROUP}"})  # its worker still runs
    done, _ = clean_up(monkeypatch, admin, "intelbus-jobs-ab12")
    assert "intelbus-jobs-ab12.alert.unique" in done.topics and "intelbus-jobs-ab12.hit" not in done.topics
    assert not done.group
    assert [e.split(":")[0] for e in done.errors] == ["topic intelbus-jobs-ab12-records-changelog", "group intelbus-jobs-ab12"]
    assert "TOPIC_AUTHORIZATION_FAILED" in done.errors[0] and "NON_EMPTY_GROUP" in done.errors[1]


def test_a_group_that_never_committed_is_no_error(monkeypatch):
    admin = FakeAdmin([], failures={"intelbus-jobs-ab12": "KafkaError{code=GROUP_ID_NOT_FOUND}"})
    done, _ = clean_up(monkeypatch, admin, "intelbus-jobs-ab12")
    assert done.topics == [] and admin.deleted == [] and done.errors == []


def test_the_clean_up_refuses_the_stacks_app_before_asking_the_broker(monkeypatch):
    admin = FakeAdmin(BUS)
    with pytest.raises(NotPrivate):
        clean_up(monkeypatch, admin, "intelbus-jobs-workflows")
    assert admin.deleted == [] and admin.groups == []


def process(on_term: str) -> subprocess.Popen:
    """A python process that handles SIGTERM as said, and says when it is ready."""
    code = ("import signal, sys, time\n" + on_term + "\nprint('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_worker_that_stops_on_sigterm_is_not_killed():
    proc = process("signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))")
    stopped = stop_worker(proc, grace=10)
    assert stopped.returncode == 0 and not stopped.killed and stopped.seconds < 5
    assert stop_worker(proc) is None  # not running any more


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace():
    proc = process("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    started = time.monotonic()
    stopped = stop_worker(proc, grace=1.0)
    assert stopped.killed and stopped.returncode == -9
    assert 1.0 <= stopped.seconds and time.monotonic() - started < 10


def test_a_sigstopped_worker_is_continued_to_handle_its_sigterm():
    import os
    import signal

    proc = process("signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))")
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = stop_worker(proc, grace=10)
    assert stopped.returncode == 0 and not stopped.killed and stopped.seconds < 5


def test_kill_sends_sigkill_at_once():
    proc = process("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    stopped = stop_worker(proc, kill=True, grace=10)
    assert stopped.killed and stopped.returncode == -9 and stopped.seconds < 5


def test_the_stacks_app_ids_are_the_jobs_own():
    from stream_jobs import app, workflow_job

    assert set(private_app.STACK_APP_IDS) == {app.APP_ID, workflow_job.APP_ID}
