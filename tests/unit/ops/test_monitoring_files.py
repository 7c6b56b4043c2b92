"""The Prometheus and Grafana files under ops/ are well-formed and use only metrics the code exports."""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "intelbus.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "intelbus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "intelbus.yml"

METRIC_NAME = re.compile(r"\bintelbus_[a-z0-9_]+")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

# The modules that register intelbus collectors in prometheus_client.REGISTRY.
METRIC_MODULES = ("ops.metrics", "stream_jobs.metrics", "sinks.metrics", "producers.metrics", "ops.lag_metrics",
                  "ops.retention")

REQUIRED_ALERTS = {"ConsumerLagGrowing", "DeadLetterRateHigh", "NoHitsForRegion", "SinkFailing",
                   "ServiceDown", "ProduceToHitSlow", "RecordsLostToRetention"}

# What the dashboard must show (one metric per required panel).
REQUIRED_DASHBOARD_METRICS = {
    "intelbus_producer_records_total", "intelbus_jobs_events_total", "intelbus_jobs_unique_events_total",
    "intelbus_sink_rows_inserted_total", "intelbus_produce_to_hit_seconds_bucket", "intelbus_sink_insert_seconds_bucket",
    "intelbus_consumer_lag_messages", "intelbus_jobs_duplicates_dropped_total", "intelbus_dlq_writes_total",
    "intelbus_jobs_hits_total", "intelbus_sink_clickhouse_up", "intelbus_producer_rejected_total",
}

# Sample names that prometheus_client exposes for a family of each type (a Counter's family
# name has `_total` stripped; the bare family name of a counter or histogram is never a series).
SUFFIXES_BY_TYPE = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
}


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def all_rules() -> list[dict]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def rule_metric_names() -> set[str]:
    return {name for rule in all_rules() for name in METRIC_NAME.findall(rule["expr"])}


def dashboard_metric_names() -> set[str]:
    return {name for panel in dashboard_panels(load_dashboard()) for target in panel.get("targets", [])
            for name in METRIC_NAME.findall(target.get("expr", ""))}


def import_metric_modules() -> list[str]:
    """Import every module that registers intelbus metrics; return those that do not exist."""
    missing = []
    for module in METRIC_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only the module itself being absent is reported as missing; a broken import inside
            # an existing module is an error of its own.
            if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
                missing.append(module)
            else:
                raise
    return missing


def exported_sample_names() -> set[str]:
    from prometheus_client import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        for suffix in SUFFIXES_BY_TYPE.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


# (a) rules.yml structure ------------------------------------------------------------------

def test_rules_file_structure():
    doc = load_rules()
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"], "rules.yml needs groups"
    group_names = [g.get("name") for g in doc["groups"]]
    assert "intelbus" in group_names
    assert len(group_names) == len(set(group_names)), f"duplicate group names: {group_names}"
    alerts = []
    for group in doc["groups"]:
        assert isinstance(group.get("rules"), list) and group["rules"], f"group {group.get('name')} has no rules"
        for rule in group["rules"]:
            name = rule.get("alert")
            assert isinstance(name, str) and name, f"rule without an alert name: {rule}"
            assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), f"{name}: no expr"
            assert isinstance(rule.get("for"), str) and DURATION.match(rule["for"]), f"{name}: bad or missing for: {rule.get('for')!r}"
            assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}, f"{name}: labels.severity"
            annotations = rule.get("annotations", {})
            assert isinstance(annotations.get("summary"), str) and annotations["summary"].strip(), f"{name}: annotations.summary"
            assert isinstance(annotations.get("description"), str) and annotations["description"].strip(), f"{name}: annotations.description"
            alerts.append(name)
    assert len(alerts) == len(set(alerts)), f"duplicate alert names: {alerts}"
    assert REQUIRED_ALERTS <= set(alerts), f"missing alerts: {sorted(REQUIRED_ALERTS - set(alerts))}"


def test_rules_encode_the_documented_thresholds():
    rules = {r["alert"]: r for r in all_rules()}
    assert rules["ConsumerLagGrowing"]["for"] == "5m" and "> 1000" in rules["ConsumerLagGrowing"]["expr"]
    assert "delta(" in rules["ConsumerLagGrowing"]["expr"]
    assert rules["DeadLetterRateHigh"]["for"] == "5m" and "[5m]" in rules["DeadLetterRateHigh"]["expr"]
    assert "offset 1d" in rules["NoHitsForRegion"]["expr"] and "owner_province" in rules["NoHitsForRegion"]["expr"]
    assert rules["SinkFailing"]["for"] == "2m" and "intelbus_sink_clickhouse_up == 0" in rules["SinkFailing"]["expr"]
    assert rules["ServiceDown"]["for"] == "1m" and "up{" in rules["ServiceDown"]["expr"]
    lost = rules["RecordsLostToRetention"]
    assert lost["for"] == "0m" and "intelbus_records_lost_to_retention_total" in lost["expr"] and lost["expr"].endswith("> 0")
    slow = rules["ProduceToHitSlow"]
    assert slow["for"] == "10m" and "histogram_quantile(0.99" in slow["expr"] and slow["expr"].rstrip().endswith("> 0.5")


def test_prometheus_config_structure():
    doc = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert doc["global"]["scrape_interval"] == "5s"
    assert doc["rule_files"] == ["rules.yml"] and (CONFIG.parent / "rules.yml").is_file()
    targets = {job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]} for job in doc["scrape_configs"]}
    assert set(targets) == {"jobs", "workflows", "sink", "gateway", "producers"}
    assert targets["workflows"] == {"127.0.0.1:9440"}
    assert "127.0.0.1:9401" in targets["jobs"] and targets["gateway"] == {"127.0.0.1:8080"}
    assert targets["sink"] == {"127.0.0.1:9420"}
    assert targets["producers"] == {"127.0.0.1:9430", "127.0.0.1:9431"}


# (b) promtool, when available ----------------------------------------------------------------

def find_promtool() -> str | None:
    configured = os.environ.get("INTELBUS_PROMTOOL")
    if configured:
        if not Path(configured).is_file():
            pytest.fail(f"INTELBUS_PROMTOOL={configured} is not a file")
        return configured
    from ops.install import promtool_path
    from ops.settings import load_settings

    fetched = promtool_path(Path(load_settings().dist_dir))  # `intelbus install` unpacks it from Debian's package
    return str(fetched) if fetched.exists() else shutil.which("promtool")


@pytest.mark.parametrize("args", [["check", "rules", "ops/prometheus/rules.yml"],
                                  ["check", "config", "ops/prometheus/prometheus.yml"]], ids=["rules", "config"])
def test_promtool_accepts_the_files(args):
    promtool = find_promtool()
    if promtool is None:
        pytest.skip("promtool not found (not on PATH and INTELBUS_PROMTOOL unset): "
                    "rules and config were not checked by Prometheus itself")
    proc = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def test_promtool_parses_the_dashboard_queries(tmp_path):
    """Every dashboard expr is valid PromQL (checked as recording rules, Grafana's interval variables replaced)."""
    promtool = find_promtool()
    if promtool is None:
        pytest.skip("promtool not found (not on PATH and INTELBUS_PROMTOOL unset): dashboard PromQL not parsed")
    exprs = [t["expr"] for p in dashboard_panels(load_dashboard()) for t in p["targets"]]
    assert exprs
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": re.sub(r"\$__(rate_)?interval|\$__range", "5m", e)}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool rejected a dashboard query:\n{proc.stdout}\n{proc.stderr}"


# (c) every metric the rules and the dashboard use is exported by the code -----------------

@pytest.mark.parametrize("module", METRIC_MODULES)
def test_metric_module_exists(module):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            pytest.fail(f"{module} does not exist: the monitoring files use metrics it should register")
        raise


def test_every_used_metric_is_exported():
    used = rule_metric_names() | dashboard_metric_names()
    assert len(used) >= 10, f"too few intelbus metrics found in the rules and dashboard: {sorted(used)}"
    missing_modules = import_metric_modules()
    exported = exported_sample_names()
    assert "intelbus_service_ready" in exported  # the registry holds the intelbus collectors at all
    unknown = sorted(used - exported)
    assert not unknown and not missing_modules, (
        f"metrics used by ops/prometheus/rules.yml or ops/grafana/dashboards/intelbus.json "
        f"but not exported by the code: {unknown}"
        + (f"; metric modules that do not exist: {missing_modules}" if missing_modules else ""))


def test_exported_names_follow_prometheus_client_conventions():
    """The check above is only as good as its name set: counters are `_total`, never bare."""
    import_metric_modules()
    exported = exported_sample_names()
    assert "intelbus_dlq_writes_total" in exported and "intelbus_dlq_writes" not in exported
    assert {"intelbus_produce_to_hit_seconds_bucket", "intelbus_produce_to_hit_seconds_count"} <= exported
    assert "intelbus_produce_to_hit_seconds" not in exported


# (d) the Grafana dashboard and provisioning --------------------------------------------------

def test_dashboard_panels_have_targets_on_the_prometheus_datasource():
    dashboard = load_dashboard()
    assert dashboard.get("schemaVersion") == 39
    assert dashboard.get("uid") and dashboard.get("title")
    panels = dashboard_panels(dashboard)
    assert len(panels) >= 9, f"expected at least 9 panels, found {len(panels)}"
    ids = [p.get("id") for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        title = panel.get("title")
        assert isinstance(title, str) and title.strip(), f"panel without a title: {panel.get('id')}"
        assert panel.get("type") == "timeseries", f"{title}: type {panel.get('type')}"
        assert panel.get("datasource", {}).get("uid") == "prometheus", f"{title}: panel datasource"
        targets = panel.get("targets") or []
        assert targets, f"{title}: no targets"
        for target in targets:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), f"{title}: target without expr"
            assert METRIC_NAME.search(target["expr"]), f"{title}: target uses no intelbus metric: {target['expr']}"
            if "datasource" in target:
                assert target["datasource"].get("uid") == "prometheus", f"{title}: target datasource"
        ref_ids = [t.get("refId") for t in targets]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), f"{title}: refIds {ref_ids}"


def test_dashboard_covers_the_required_metrics():
    used = dashboard_metric_names()
    assert REQUIRED_DASHBOARD_METRICS <= used, f"dashboard lacks: {sorted(REQUIRED_DASHBOARD_METRICS - used)}"
    exprs = [t["expr"] for p in dashboard_panels(load_dashboard()) for t in p["targets"]]
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}, " in e and "intelbus_produce_to_hit_seconds_bucket" in e for e in exprs), q


def test_grafana_provisioning_files():
    datasources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    (prom,) = [d for d in datasources["datasources"] if d.get("uid") == "prometheus"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://127.0.0.1:9090"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards/intelbus"
