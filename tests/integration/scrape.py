"""A local process's Prometheus metrics, read as the operators' Prometheus reads them."""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[str, float]:
    """Sample name (labels folded in) -> value, summed over label sets: {'name': total, 'name{k="v"}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def jobs_counter(settings, name: str) -> float:
    """A counter of jobs-0's, summed over its labels (0 if it has no sample yet)."""
    return scrape(settings.metrics_port_base + 1).get(name, 0.0)
