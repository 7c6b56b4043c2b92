"""Two workflow workers of one app share the partitions: each fires the deadlines of its own items on
time, freed by the command watermark of the commands partitions it owns (its local claims) and of
those the other worker owns (the other's markers on APP-items).

With the watermark's bounded hold at 120 s, a step that waited for a marker that never came would
fire two minutes late (and be counted as fired by the hold): here every reminder and escalation
fires within seconds of its time, on both workers, and none by the hold.
"""
from __future__ import annotations

import re
import time
import urllib.request
import uuid

import pytest

from tests.integration.test_workflow_job import (
    ACCEPT_S, STEP_S, WorkerProcess, addressee, cid, events, ms, of, send_request,  # noqa: F401 (fixture)
    commands,  # noqa: F401 (fixture)
)
from workflows import model as m

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def workers(stack, settings, tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    pair = [WorkerProcess(settings, tmp_path_factory.mktemp(f"workflows-{i}"), tag) for i in range(2)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTELBUS_WORKFLOWS_HOLD_S", "120")
        pair[0].start()
        pair[1].start()
        wait_until_both_own_items(pair)
    yield pair
    for w in pair:
        w.stop()
    pair[0].delete_topics()


def metrics(w: WorkerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def owned(w: WorkerProcess) -> list[int] | None:
    """The partitions of APP-items in the worker's last due-index rebuild (its log), or None."""
    lines = [line for line in w.log_path.read_text(errors="replace").splitlines() if "due index rebuilt" in line]
    if not lines:
        return None
    return sorted(int(p) for p in re.findall(r"\d+", lines[-1].split("in partitions", 1)[1].split("]")[0]))


def wait_until_both_own_items(pair, timeout: float = 90.0) -> None:
    """Both ready after the second one's join, each with its share of APP-items."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shares = [owned(w) for w in pair]
        if all(shares) and not set(shares[0]) & set(shares[1]) \
                and all(metrics(w).get("intelbus_service_ready", 0) == 1 for w in pair):
            return
        time.sleep(0.5)
    raise AssertionError("the two workers did not share the partitions: see " + ", ".join(str(w.log_path) for w in pair))


def test_two_workers_fire_their_own_items_deadlines_on_time_by_the_watermark(workers, commands, events):
    worker = workers[0]
    ignored = [send_request(commands, worker) for _ in range(12)]
    accepted = [send_request(commands, worker) for _ in range(4)]
    for item in accepted:
        commands(m.AcceptRequest(command_id=cid(worker), item_id=item, actor=addressee()))
    evs = events.read(until=lambda evs: all(of(evs, i, "ESCALATED", level=1) for i in ignored), timeout=90, settle=2.5)

    for item in ignored:
        sent, reminders, first = of(evs, item, "SENT"), of(evs, item, "REMINDED"), of(evs, item, "ESCALATED", level=1)
        assert (len(sent), len(reminders), len(first)) == (1, 1, 1), [e["event_type"] for e in of(evs, item)]
        for e in (reminders[0], first[0]):  # within seconds of its time: freed by the watermark, not the 120-s hold
            assert 0 <= ms(e["at"]) - ms(e["scheduled_at"]) < 5000, e
    assert time.time() * 1000 > max(ms(of(evs, i, "SENT")[0]["at"]) for i in accepted) + (ACCEPT_S + STEP_S) * 1000
    for item in accepted:
        assert [e["event_type"] for e in of(evs, item)] == ["SENT", "ACCEPTED"], of(evs, item)

    per_worker = [metrics(w) for w in workers]
    reminded = [got.get('intelbus_workflows_fired_steps_total{kind="REMINDED"}', 0) for got in per_worker]
    assert all(n > 0 for n in reminded), f"each worker reminds of its own items: {reminded}"
    assert sum(reminded) == len(ignored), reminded  # each reminder once, by one worker
    assert [got.get("intelbus_workflows_fired_by_hold_total", 0) for got in per_worker] == [0, 0]
    for w in workers:
        assert "fired by the wall clock after the hold" not in w.log_path.read_text(errors="replace")
