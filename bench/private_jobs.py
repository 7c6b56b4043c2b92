"""A private stream-jobs worker on the shared stack: its own topics, group, tables and datadir.

The stack's jobs-0 and every other engineer's traffic are left alone: the worker reads input
topics of its own and writes its match requests, candidates, hits, unique copies, duplicates
and dead letters to topics of its own, all named `intelbus-jobs-<tag>...` (the jobs principal
may create and use that prefix, ops/acls.yaml), and its faust app id (consumer group, table
changelogs) is `intelbus-jobs-<tag>`. The code is the checkout's `stream_jobs.app.create_app`;
only the topic names, the app id and, when asked, the stages' windows are replaced, in the
worker's own process (`python -m bench.private_jobs CONFIG.json`).

Records are checked for their proof of publisher by the stack's worker, not by this one
(`verify_records` off): what a private worker is for here is state, not trust.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from schemas import catalog

REPO = Path(__file__).resolve().parents[1]
KINDS = catalog.KINDS
# the jobs' topics, each with a private copy named after the worker (intel.hit -> <prefix>.hit)
JOBS_TOPICS = (*catalog.INPUT_TOPICS, *catalog.UNIQUE_TOPICS, catalog.MATCH_REQUESTS_TOPIC, catalog.HIT_CANDIDATES_TOPIC,
               catalog.DUPLICATES_TOPIC, catalog.HIT_TOPIC, catalog.DLQ_TOPIC)


def topics_of(prefix: str) -> dict[str, str]:
    """The real topic name -> the private one."""
    return {t: prefix + t[len("intel"):] for t in JOBS_TOPICS}


class PrivateJobs:
    """One private worker process. `inputs`: the prefix of the input topics (several workers
    may read the same inputs); `tag`: this worker's own names. `stages`: keyword arguments
    that replace the stages' own (e.g. {"dedupe": {"window_ms": 60000}, "hits": {"expire": False}})."""

    def __init__(self, settings, workdir: Path, tag: str, *, inputs: str, stages: dict | None = None,
                 metrics_port: int, partitions: int | None = None, batch: int = 2000):
        self.settings, self.workdir, self.tag = settings, Path(workdir), tag
        self.app_id = f"intelbus-jobs-{tag}"
        self.inputs, self.stages, self.port, self.batch = inputs, stages or {}, metrics_port, batch
        self.partitions = partitions or settings.partitions
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{tag}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def topics(self) -> dict[str, str]:
        names = topics_of(self.app_id)
        names.update({catalog.input_topic(k): f"{self.inputs}.{k}" for k in KINDS})
        return names

    def changelog(self, table: str) -> str:
        return f"{self.app_id}-{table}-changelog"

    def create_topics(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.settings.kafka_config("intelbus-admin"))
        have = set(admin.list_topics(timeout=10).topics)
        new = [NewTopic(t, self.partitions, 1) for t in sorted(set(self.topics.values())) if t not in have]
        for fut in (admin.create_topics(new, operation_timeout=30).values() if new else ()):
            try:
                fut.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise

    def start(self, timeout: float = 120.0) -> "PrivateJobs":
        self.create_topics()
        config = {"app_id": self.app_id, "topics": self.topics, "stages": self.stages,
                  "stack_dir": str(self.workdir / "stack"), "metrics_port": self.port, "batch": self.batch}
        path = self.workdir / f"{self.tag}.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.private_jobs", str(path)], cwd=str(REPO),
                                     env={**os.environ, "INTELBUS_SECRETS_DIR": self.settings.secrets_dir},
                                     stdout=log, stderr=subprocess.STDOUT)
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0) -> "PrivateJobs":
        """Until the started process serves intelbus_service_ready 1 (or exits: RuntimeError)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private worker {self.tag} exited with {self.proc.returncode}: see {self.log_path}")
            if self.metric("intelbus_service_ready") == 1.0:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"private worker {self.tag} not ready within {timeout:.0f}s: see {self.log_path}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels) -> float | None:
        """The sum of a metric's samples with these labels, or None when not served (yet)."""
        try:
            text = self.metrics()
        except Exception:
            return None
        total, found = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name or any(f'{k}="{v}"' not in label_text for k, v in labels.items()):
                continue
            total, found = total + float(value), True
        return total if found else None

    def stop(self, *, kill: bool = False):
        """SIGTERM (out in a second or two, its offsets committed) or SIGKILL; how long it took (ops/private_app.py)."""
        from ops.private_app import stop_worker

        stopped, self.proc = stop_worker(self.proc, kill=kill), None
        return stopped

    def delete_topics(self, *, inputs_too: bool = True) -> None:
        """Its topics, changelogs and consumer group (and the inputs' topics)."""
        from ops.private_app import delete_private_app

        delete_private_app(self.settings, self.app_id, inputs=(self.inputs,) if inputs_too else ())


# --- inside the worker's process ----------------------------------------------------------

def _install(config: dict) -> None:
    """Point the checkout's stream jobs at the private topics and app id, and give the stages
    the configured arguments."""
    from schemas.wire import SchemaCodec
    from stream_jobs import app, stages

    topics = config["topics"]
    real = {v: k for k, v in topics.items()}
    stages.MATCH_TOPIC, stages.CANDIDATE_TOPIC = topics[catalog.MATCH_REQUESTS_TOPIC], topics[catalog.HIT_CANDIDATES_TOPIC]
    stages.DUPLICATES_TOPIC, stages.HIT_TOPIC = topics[catalog.DUPLICATES_TOPIC], topics[catalog.HIT_TOPIC]
    stages.KIND_OF_TOPIC = {topics[catalog.input_topic(k)]: k for k in KINDS}
    stages.unique_topic = lambda kind: topics[catalog.unique_topic(kind)]
    app.INPUT_TOPICS = tuple(topics[catalog.input_topic(k)] for k in KINDS)
    app.MATCH_TOPIC, app.CANDIDATE_TOPIC = stages.MATCH_TOPIC, stages.CANDIDATE_TOPIC
    app.DLQ_TOPIC = topics[catalog.DLQ_TOPIC]
    app.APP_ID = config["app_id"]
    encode = SchemaCodec.encode
    SchemaCodec.encode = lambda self, topic, record: encode(self, real.get(topic, topic), record)  # the real subjects

    def with_arguments(cls, name):
        extra = config["stages"].get(name) or {}

        class Stage(cls):
            def __init__(self, **kwargs):
                super().__init__(**{**kwargs, **extra})

        Stage.__name__ = cls.__name__
        return Stage

    app.DedupeStage = with_arguments(stages.DedupeStage, "dedupe")
    app.MatchStage = with_arguments(stages.MatchStage, "match")
    app.HitStage = with_arguments(stages.HitStage, "hits")


def main(path: str) -> int:
    import asyncio
    from dataclasses import replace

    import faust
    import uvloop
    from prometheus_client import start_http_server

    from ops.metrics import tune_gc, watch_gc
    from ops.settings import load_settings
    from stream_jobs.worker import configure_logging

    config = json.loads(Path(path).read_text(encoding="utf-8"))
    configure_logging("info")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.setswitchinterval(0.0005)
    _install(config)
    from stream_jobs.app import create_app

    settings = replace(load_settings(), stack_dir=config["stack_dir"], verify_records=False)
    worker_app = create_app(settings, worker_index=0, batch_size=config["batch"])
    start_http_server(config["metrics_port"], addr="127.0.0.1")
    watch_gc()
    tune_gc(settings.gc_gen0)
    faust.Worker(worker_app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
