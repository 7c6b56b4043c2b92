"""INTELBUS_METRICS_BIND: the address the jobs, workflow job and sink serve /metrics on. Loopback by
default (one host, prometheus.yml scrapes 127.0.0.1); every address of the pod in ops/k8s, where
Prometheus scrapes from another pod; every process's metrics server takes it."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from ops.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
PROCESSES = ["stream_jobs/worker.py", "stream_jobs/workflow_job.py", "sinks/sink.py"]


def test_the_setting_defaults_to_loopback_and_intelbus_config_lists_it():
    assert Settings().metrics_bind == "127.0.0.1"
    assert load_settings({"INTELBUS_METRICS_BIND": "0.0.0.0"}).metrics_bind == "0.0.0.0"
    assert "INTELBUS_METRICS_BIND" in {env for _, env, _, _ in Settings().describe()}


def test_every_process_serves_its_metrics_on_the_setting():
    calls = []
    for name in PROCESSES:
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "start_http_server":
                addr = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("addr")
                calls.append((name, addr))
    assert sorted({n for n, _ in calls}) == sorted(PROCESSES), calls
    assert all(addr == "settings.metrics_bind" for _, addr in calls), calls


def test_kubernetes_binds_every_address_and_systemd_the_host_prometheus_scrapes():
    (configmap,) = [d for d in yaml.safe_load_all((ROOT / "ops/k8s/settings.yaml").read_text()) if d]
    assert configmap["data"]["INTELBUS_METRICS_BIND"] == "0.0.0.0"
    env = dict(line.split("=", 1) for line in (ROOT / "ops/systemd/intelbus.env").read_text().splitlines()
               if line and not line.startswith("#"))
    scrape = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())["scrape_configs"]
    hosts = {t.rsplit(":", 1)[0] for job in scrape if job["job_name"] in ("jobs", "workflows", "sink")
             for group in job["static_configs"] for t in group["targets"]}
    assert hosts == {env["INTELBUS_METRICS_BIND"]}
