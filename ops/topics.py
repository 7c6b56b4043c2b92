"""Topics as data (ops/topics.yaml): the plan, creating what is missing, reporting drift."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ops.settings import REPO_ROOT, Settings

TOPICS_FILE = REPO_ROOT / "ops" / "topics.yaml"
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]
    doc: str = ""


def parse_duration_ms(text) -> int:
    """'14d' -> 1209600000; -1 or 'forever' -> -1."""
    if text in (-1, "-1", "forever"):
        return -1
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 5m, 12h, 14d)")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def load_plan(settings: Settings, path: Path = TOPICS_FILE) -> list[TopicSpec]:
    doc = yaml.safe_load(path.read_text())
    if settings.profile not in doc["profiles"]:
        raise SystemExit(f"intelbus: unknown INTELBUS_PROFILE {settings.profile!r} (known: {', '.join(doc['profiles'])})")
    profile = doc["profiles"][settings.profile]
    defaults = doc.get("defaults", {})
    plan = []
    for name, spec in doc["topics"].items():
        spec = {**defaults, **(spec or {})}
        partitions = spec.get("partitions") if "partitions" in (doc["topics"][name] or {}) else settings.partitions
        config = {
            "cleanup.policy": spec["cleanup_policy"],
            "retention.ms": str(parse_duration_ms(spec["retention"])),
            "min.insync.replicas": str(profile["min_insync_replicas"]),
        }
        plan.append(TopicSpec(name, int(partitions), int(profile["replication_factor"]), config, spec.get("doc", "")))
    return plan


def apply_plan(admin, plan: list[TopicSpec], *, timeout: float = 30.0) -> tuple[list[str], list[str]]:
    """Create missing topics; return (created, drift) where drift lists human-readable differences."""
    from confluent_kafka.admin import ConfigResource, NewTopic

    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in plan if t.name not in existing]
    created = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=t.replication_factor, config=t.config) for t in missing],
            operation_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent apply is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    drift = []
    present = [t for t in plan if t.name in existing]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in present]
        configs = admin.describe_configs(resources, request_timeout=timeout)
        by_name = {r.name: f.result() for r, f in configs.items()}
        for t in present:
            have_partitions = len(existing[t.name].partitions)
            if have_partitions != t.partitions:
                drift.append(f"{t.name}: partitions {have_partitions}, declared {t.partitions}")
            actual = by_name[t.name]
            for key, want in t.config.items():
                have = actual[key].value if key in actual else None
                if have != want:
                    drift.append(f"{t.name}: {key}={have}, declared {want}")
    return created, drift
