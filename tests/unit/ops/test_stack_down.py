"""`intelbus down` stops what an earlier `up` started, even under other settings."""
import sys

from ops.processes import PidFiles, spawn
from ops.settings import load_settings
from ops.stack import Stack


def test_down_stops_a_worker_that_the_current_settings_no_longer_name(tmp_path):
    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path)})
    pids = PidFiles(settings.stack_path / "run")
    # what `INTELBUS_JOBS_WORKERS=2 intelbus up` left: a pid file for jobs-1; now run with 1 worker
    marker = f"intelbus-test-jobs-1-{tmp_path.name}"
    record = spawn("jobs-1", [sys.executable, "-c", "import time; time.sleep(120)", marker],
                   log=tmp_path / "jobs-1.log", marker=marker)
    pids.write(record)
    assert record.alive()
    said = []

    Stack(settings, components=[], out=said.append).down()

    assert not record.alive()
    assert pids.names() == []
    assert said and "jobs-1" in said[0] and "earlier `intelbus up`" in said[0]


def test_down_of_one_named_process_leaves_the_other_leftovers(tmp_path):
    settings = load_settings({"INTELBUS_STACK_DIR": str(tmp_path)})
    pids = PidFiles(settings.stack_path / "run")
    records = []
    for name in ("jobs-1", "jobs-2"):
        marker = f"intelbus-test-{name}-{tmp_path.name}"
        records.append(spawn(name, [sys.executable, "-c", "import time; time.sleep(120)", marker],
                             log=tmp_path / f"{name}.log", marker=marker))
        pids.write(records[-1])
    try:
        Stack(settings, components=[], out=lambda m: None).down(only={"jobs-2"})
        assert records[0].alive() and not records[1].alive()
        assert pids.names() == ["jobs-1"]
    finally:
        Stack(settings, components=[], out=lambda m: None).down()
    assert not records[0].alive()
