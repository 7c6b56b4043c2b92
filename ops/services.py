"""The whole local stack: infrastructure servers plus intelbus's own long-running services."""
from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass, field

from ops.components import Component, infrastructure
from ops.settings import Settings
from ops.stack import Stack

# glibc's mmap threshold for the jobs workers, fixed at 128 KiB. By default glibc raises it each
# time a large mmapped block is freed (up to 32 MiB), so a backlog's fetch buffers move into the
# heap, which keeps them after the drain: resident memory becomes the high-water mark of the
# largest backlog. Fixed, large blocks are mmapped and returned on free (bench/results/state.md,
# 13:42 run: RSS slope 173 against 241 MiB per 100,000 events, free inside the arenas 126 against
# 320 MiB, the same CPU per event). The same value is in ops/systemd/intelbus-jobs@.service and
# ops/k8s/jobs.yaml (tests/unit/ops/test_production_manifests.py keeps them equal). A value already in the
# environment wins.
JOBS_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class PythonService(Component):
    """An intelbus process (`intelbus jobs`, `intelbus sink`) run in the background by `up`.

    Healthy when its Prometheus endpoint says `intelbus_service_ready 1`, which the
    process sets once it has started its consumers.
    """

    argv: list[str] = field(default_factory=list)
    metrics_port: int = 0
    env: dict[str, str] = field(default_factory=dict)  # extra environment (an existing value wins)
    nice: int = 0  # CPU priority (ops/processes.py spawn): the jobs workers, the detection path, go first
    start_timeout: float = 120.0  # a restart waits for the group to rebalance and state to recover
    is_service = True

    @property
    def host_port(self):
        return ("127.0.0.1", self.metrics_port)

    @property
    def address(self) -> str:
        return f"metrics http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def marker(self) -> str:
        return " ".join(self.argv[2:])

    def command(self):
        # -P: the process runs in the stack directory, whose folders (identity/keys/ holds key files)
        # must not shadow intelbus's packages as namespace packages on sys.path[0]
        extra = {k: v for k, v in self.env.items() if k not in os.environ}
        return [sys.executable, "-P", *self.argv], {"PYTHONUNBUFFERED": "1", **extra}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                return b"\nintelbus_service_ready 1.0" in resp.read()
        except Exception:
            return False


def services(settings: Settings) -> list[Component]:
    """intelbus's own processes, with their metrics ports (documented in docs/metrics.md)."""
    base = settings.metrics_port_base
    jobs = [
        # a worker joining a group recovers its partitions' state from the changelogs first:
        # minutes for a new worker on a bus with a long history
        PythonService(f"jobs-{i}", settings, argv=["-m", "ops.cli", "jobs", "--worker-index", str(i)],
                      metrics_port=base + 1 + i, start_timeout=600.0, env=dict(JOBS_ALLOCATOR_ENV),
                      nice=settings.jobs_nice)
        for i in range(settings.jobs_workers)
    ]
    from urllib.parse import urlparse

    gateway_port = urlparse(settings.gateway_url).port or 8080
    # the workflow job (stream_jobs/workflow_job.py): one worker owns the items' state and clocks
    workflows = PythonService("workflows-0", settings, argv=["-m", "ops.cli", "workflows", "--worker-index", "0"],
                              metrics_port=base + 40, start_timeout=300.0)
    return [*jobs, workflows, PythonService("sink", settings, argv=["-m", "ops.cli", "sink"], metrics_port=base + 20),
            # people's one door; serves its own /metrics on its API port
            Gateway("gateway", settings, argv=["-m", "ops.cli", "gateway"], metrics_port=gateway_port, start_timeout=60.0,
                    nice=settings.gateway_nice)]


@dataclass
class Gateway(PythonService):
    @property
    def address(self) -> str:
        return f"{self.settings.gateway_url} (OpenAPI at /docs)"


def full_stack(settings: Settings, *, include_services: bool = True, out=print) -> Stack:
    components = infrastructure(settings)
    if include_services:
        components += services(settings)
    return Stack(settings, components, out=out)
