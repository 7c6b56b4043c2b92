"""The tunables of the jobs, the workflow job, the sink and the gateway's server are read through Settings (ops/settings.py),
under their environment variables as before, and the modules do not read the environment themselves."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ops.settings import load_settings
from stream_jobs.tables import worker_budget_mib

REPO = Path(__file__).resolve().parents[3]
MODULES = [*sorted((REPO / "sinks").rglob("*.py")), *sorted((REPO / "producers").rglob("*.py")),
           REPO / "stream_jobs" / "stages.py", REPO / "stream_jobs" / "tables.py", REPO / "stream_jobs" / "workflow_job.py",
           REPO / "gateway" / "app.py", REPO / "stream_jobs" / "app.py", REPO / "stream_jobs" / "worker.py",
           REPO / "gateway" / "hub.py", REPO / "gateway" / "events.py", REPO / "ops" / "components.py",
           REPO / "ops" / "supervise.py"]
# not tunables: a person's token (as gateway/cli.py reads it), and the policy file workflows/policy.py reads
NOT_TUNABLES = {"INTELBUS_TOKEN", "INTELBUS_WORKFLOWS_FILE"}


@pytest.mark.parametrize("env,field,value", [
    ("INTELBUS_WORKFLOWS_SESSION_S", "workflows_session_s", 30.0),
    ("INTELBUS_WORKFLOWS_HOLD_S", "workflows_hold_s", 0.5),
    ("INTELBUS_WORKFLOWS_TICK_S", "workflows_tick_s", 0.25),
    ("INTELBUS_WORKFLOWS_WATERMARK_S", "workflows_watermark_s", 1.5),
    ("INTELBUS_WORKFLOWS_WATERMARK_SKEW_MS", "workflows_watermark_skew_ms", 250),
    ("INTELBUS_WORKFLOWS_HIT_BACKFILL_S", "workflows_hit_backfill_s", 60.0),
    ("INTELBUS_WORKFLOWS_OFFSET_RESET", "workflows_offset_reset", "latest"),
    ("INTELBUS_WORKFLOWS_ONLY", "workflows_only", "wfsim-1a2b"),
    ("INTELBUS_WORKFLOWS_OUTPUT_TOPIC", "workflows_output_topic", "intelbus-jobs-workflows-x-events"),
    ("INTELBUS_SINK_FAULT", "sink_fault", "exit-before-commit"),
    ("INTELBUS_JOBS_ROCKSDB_CACHE_MIB", "jobs_rocksdb_cache_mib", 8),
    ("INTELBUS_GATEWAY_HTTP", "gateway_http", "h11"),
    ("INTELBUS_JOBS_CONSUMER_LOOP", "jobs_consumer_loop", "faust"),
    ("INTELBUS_JOBS_LOOKBACK_S", "jobs_lookback_s", 30.0),
    ("INTELBUS_JOBS_BATCH_DEPTH", "jobs_batch_depth", 4),
    ("INTELBUS_JOBS_STUCK_AFTER_S", "jobs_stuck_after_s", 60.0),
    ("INTELBUS_JOBS_HOLE_AFTER_S", "jobs_hole_after_s", 2.0),
    ("INTELBUS_JOBS_STUCK_NOT_READY_S", "jobs_stuck_not_ready_s", 0.0),
    ("INTELBUS_JOBS_GIL_SWITCH_S", "jobs_gil_switch_s", 0.005),
    ("INTELBUS_JOBS_FETCH_MIN_BYTES", "jobs_fetch_min_bytes", 16384),
    ("INTELBUS_JOBS_FETCH_MAX_WAIT_MS", "jobs_fetch_max_wait_ms", 20),
    ("INTELBUS_SINK_FETCH_MIN_BYTES", "sink_fetch_min_bytes", 2),
    ("INTELBUS_SINK_FETCH_MAX_WAIT_MS", "sink_fetch_max_wait_ms", 123),
    ("INTELBUS_WORKFLOWS_FETCH_MIN_BYTES", "workflows_fetch_min_bytes", 2),
    ("INTELBUS_WORKFLOWS_FETCH_MAX_WAIT_MS", "workflows_fetch_max_wait_ms", 123),
    ("INTELBUS_GATEWAY_GIL_SWITCH_S", "gateway_gil_switch_s", 0.005),
    ("INTELBUS_LIVE_RING_MS", "live_ring_ms", 0.0),
    ("INTELBUS_LIVE_BROADCAST", "live_broadcast", False),
    ("INTELBUS_LIVE_HUB_LAZY", "live_hub_lazy", True),
    ("INTELBUS_LIVE_GC_THRESHOLDS", "live_gc_thresholds", "700,10,10"),
    ("INTELBUS_STARTUP_TUNING", "startup_tuning", "none"),
])
def test_a_tunable_set_in_the_environment_reaches_its_setting(env, field, value):
    assert getattr(load_settings(environ={}), field) != value
    assert getattr(load_settings(environ={env: str(value)}), field) == value


def test_the_defaults_are_the_ones_the_modules_had():
    s = load_settings(environ={})
    assert (s.workflows_session_s, s.workflows_hold_s, s.workflows_tick_s, s.workflows_watermark_s) == (10, 30, 1, 0.2)
    assert (s.workflows_watermark_skew_ms, s.workflows_hit_backfill_s, s.workflows_offset_reset) == (100, 86_400, "earliest")
    assert worker_budget_mib(s) == (32, 48) and s.sink_fault == "" and s.workflows_only == ""
    assert (s.jobs_consumer_loop, s.jobs_lookback_s, s.jobs_stuck_after_s, s.jobs_hole_after_s) == ("batch", 120, 30, 5)
    assert s.jobs_gil_switch_s == 0.0005
    assert (s.jobs_fetch_min_bytes, s.jobs_fetch_max_wait_ms) == (1, 10)  # 1: faust's own fetch, no patch
    # the workflow job: faust's own fetch (a wait of 50 ms saved CPU at 1,000 events/s and cost it at idle)
    assert (s.workflows_fetch_min_bytes, s.workflows_fetch_max_wait_ms) == (1, 50)


def test_the_rocksdb_budget_follows_its_settings():
    assert worker_budget_mib(load_settings(environ={"INTELBUS_JOBS_ROCKSDB_SHARED": "0"})) is None
    assert worker_budget_mib(load_settings(environ={"INTELBUS_JOBS_ROCKSDB_MEMTABLES_MIB": "16"})) == (32, 16)


def environment_reads(path: Path) -> list[tuple[int, str]]:
    """os.environ[...] / os.environ.get(...) / os.getenv(...) in the file, with the variable when it is a literal."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        target, arg = None, None
        if isinstance(node, ast.Subscript):
            target, arg = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv"):
            target, arg = (node.func.value if node.func.attr == "get" else node.func), (node.args or [None])[0]
        if ast.unparse(target or ast.Constant(None)) in ("os.environ", "os.getenv"):
            reads.append((node.lineno, arg.value if isinstance(arg, ast.Constant) else ast.unparse(arg or ast.Constant(None))))
    return reads


def test_the_jobs_sink_and_producers_read_their_tunables_only_through_settings():
    found = {p.relative_to(REPO).as_posix(): r for p in MODULES
             if (r := [x for x in environment_reads(p) if x[1] not in NOT_TUNABLES])}
    assert found == {}


def test_the_check_sees_each_way_of_reading_the_environment(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text('import os\na = os.environ.get("A", "1")\nb = os.environ["B"]\nc = os.getenv("C")\nd = {}.get("D")\n',
                   encoding="utf-8")
    assert environment_reads(mod) == [(2, "A"), (3, "B"), (4, "C")]
