"""bench/chaos.py's pure parts: the kill plan, reading the workers' metrics, CPU and memory from the
samples, and the SVG plot."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import os
import subprocess
import sys

from bench.chaos import (BROKERS, DEFAULT_COMPONENTS, Kill, Run, kill_plan, metric_values, process_usage, publishing_rates,
                         svg_plot)


def test_the_plan_kills_each_component_once_brokers_in_turn_inside_the_traffic():
    plan = kill_plan(list(DEFAULT_COMPONENTS), seed=7, traffic_s=1800)
    names = [c for c, _ in plan]
    assert sorted(names) == sorted(DEFAULT_COMPONENTS)
    assert [c for c in names if c in BROKERS] == list(BROKERS)
    times = [t for _, t in plan]
    assert times == sorted(times) and 0.08 * 1800 < times[0] and times[-1] < 0.85 * 1800
    # one per slot: at least some spacing between consecutive kills
    assert min(b - a for a, b in zip(times, times[1:])) > 0


def test_the_plan_is_the_seeds():
    assert kill_plan(list(DEFAULT_COMPONENTS), 3, 600) == kill_plan(list(DEFAULT_COMPONENTS), 3, 600)
    assert kill_plan(list(DEFAULT_COMPONENTS), 3, 600) != kill_plan(list(DEFAULT_COMPONENTS), 4, 600)


def test_state_entries_are_read_per_table_and_other_metrics_left_out():
    text = "\n".join([
        "# HELP intelbus_jobs_state_entries entries",
        'intelbus_jobs_state_entries{table="records"} 1200.0',
        'intelbus_jobs_state_entries{table="index"} 30.0',
        'intelbus_jobs_state_entries_swept_total{table="records"} 99.0',
        "intelbus_service_ready 1.0",
    ])
    assert metric_values(text, "intelbus_jobs_state_entries") == {"records": 1200.0, "index": 30.0}
    assert metric_values(text, "intelbus_service_ready") == {"": 1.0}


def test_cpu_per_record_leaves_out_the_interval_of_a_restart():
    samples = [
        {"t": 0.0, "sent": 0, "rss": {"jobs-0": 100 * 2**20}, "cpu": {"jobs-0": 0.0}},
        {"t": 10.0, "sent": 10_000, "rss": {"jobs-0": 200 * 2**20}, "cpu": {"jobs-0": 5.0}},
        {"t": 20.0, "sent": 20_000, "rss": {"jobs-0": 50 * 2**20}, "cpu": {"jobs-0": 1.0}},  # restarted: counter reset
        {"t": 30.0, "sent": 20_000, "rss": {"jobs-0": 60 * 2**20}, "cpu": {"jobs-0": 3.0}},
    ]
    per, total = process_usage(samples, (0.0, 20.0))
    assert per["jobs-0"]["cores"] == 0.5            # 5 CPU s over the 10 s that can be counted in the traffic
    assert per["jobs-0"]["cpu_s_per_1000_records"] == 0.35  # (5 + 2) CPU s over 20,000 records
    assert per["jobs-0"]["rss_mb_max"] == 200.0 and per["jobs-0"]["rss_mb_median"] == 100.0
    assert total["records"] == 20_000


def test_the_plot_is_svg_with_a_line_per_series_and_the_kills_marked():
    samples = [{"t": t, "sent": 0, "rss": {"kafka-1": 3e8, "sink": 1e8}, "cpu": {}, "state": {"records": t},
                "lag": {"intelbus-jobs": 5}} for t in (0.0, 10.0, 20.0)]
    results = {"rate": 500.0, "minutes": 1, "seed": 1, "samples": samples, "traffic": {"ended_s": 15.0},
               "kills": [{"component": "kafka-1", "killed_s": 12.0}, {"component": "sink", "killed_s": None}]}
    root = ET.fromstring(svg_plot(results))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 4  # kafka-1, sink, records, intelbus-jobs
    labels = [t.text for t in root.iter(f"{ns}text")]
    assert "kafka-1" in labels and "sink" in labels and "traffic ends" in labels
    dashed = [l for l in root.iter(f"{ns}line") if l.get("stroke-dasharray")]
    assert len(dashed) == 3  # one kill (the other never happened) in each of the three panels


def test_the_publishing_rate_is_per_interval_while_the_traffic_ran():
    samples = [{"t": 0.0, "sent": 0}, {"t": 10.0, "sent": 9_800}, {"t": 20.0, "sent": 9_800},  # a settle wait
               {"t": 30.0, "sent": 19_900}, {"t": 40.0, "sent": 19_900}]  # after the traffic: left out
    rates = publishing_rates(samples, end_s=30.0)
    assert rates["per_interval"] == [980.0, 0.0, 1010.0]
    assert (rates["min"], rates["median"], rates["max"], rates["intervals"]) == (0.0, 980.0, 1010.0, 3)
    assert publishing_rates(samples[:1], end_s=None) == {}


def test_the_traffic_priority_changes_only_a_session_of_its_own():
    """A process that leads its own session gets the autogroup nice asked for; one started in its
    caller's process group (and session) that cannot leave it changes nothing (it says so), and the
    caller's autogroup keeps its value."""
    if not os.path.exists("/proc/self/autogroup"):
        return  # no autogroups on this kernel: traffic_priority says so and changes nothing
    code = "from bench.chaos import traffic_priority; print(traffic_priority(5))"
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           start_new_session=True)
    assert alone.stdout.strip().endswith("nice 5"), alone.stdout + alone.stderr
    before = open("/proc/self/autogroup").read()
    # a process group leader cannot setsid: it stays in this session and leaves its autogroup alone
    led = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         process_group=0)
    assert "unchanged: not the leader of a session of its own" in led.stdout, led.stdout + led.stderr
    assert open("/proc/self/autogroup").read() == before


def test_a_run_stopped_before_its_end_leaves_its_samples_and_kills(tmp_path):
    run = Run(env={}, minutes=30, rate=1000, seed=18, components=["sink"], partial=tmp_path / "out" / "chaos.partial.json")
    run.samples.append({"t": 10.0, "sent": 9_990, "rss": {"jobs-0": 2**28}})
    run.kills.append(Kill("sink", 150.0, killed_s=151.2, healthy_after_s=9.8))
    run.write_partial()
    import json

    written = json.loads((tmp_path / "out" / "chaos.partial.json").read_text())
    assert written["samples"] == run.samples and written["kills"][0]["healthy_after_s"] == 9.8


def test_a_failed_runs_logs_and_truth_are_kept_and_the_stack_purged_unless_asked_to_keep(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import bench.chaos as chaos

    stack = tmp_path / "stack"
    (stack / "logs" / "kafka-1").mkdir(parents=True)
    (stack / "logs" / "jobs-0.log").write_text("look-back restored")
    (stack / "logs" / "kafka-1" / "server.log").write_text("x")
    (stack / "truth-7-X1.jsonl").write_text("{}\n")
    (stack / "kafka-1").mkdir()  # data: not copied
    kept = chaos.keep_evidence(str(stack), tmp_path / "evidence")
    assert (kept / "logs" / "jobs-0.log").read_text() == "look-back restored"
    assert (kept / "logs" / "kafka-1" / "server.log").exists() and (kept / "truth-7-X1.jsonl").exists()
    assert not (kept / "kafka-1").exists()

    calls = []
    monkeypatch.setattr(chaos, "intelbus", lambda env, *args, timeout: calls.append(args) or SimpleNamespace(
        returncode=0, stdout="", stderr=""))
    env = {"INTELBUS_STACK_DIR": str(stack)}
    monkeypatch.delenv("INTELBUS_KEEP_STACK", raising=False)
    with chaos.cluster_up(env, log=lambda m: None):
        pass
    monkeypatch.setenv("INTELBUS_KEEP_STACK", "1")
    with chaos.cluster_up(env, log=lambda m: None):
        pass
    assert [c for c in calls if c[0] == "down"] == [("down", "--purge"), ("down",)]
