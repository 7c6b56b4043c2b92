"""`intelbus jobs`: run stream-job workers in the foreground."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

QUIET_LOGGERS = ("faust", "mode", "aiokafka", "kafka", "asyncio", "httpx", "httpx2", "httpcore")
# Quiet but for rebalances: they log a few lines per rebalance (joined with generation N, the partitions
# assigned, changelogs read, "Worker ready"), which is what a worker that stays "not ready" is judged by.
REBALANCE_LOGGERS = ("faust.tables.recovery", "aiokafka.consumer.group_coordinator")


def add_jobs(p):
    p.add_argument("--workers", type=int, default=None,
                   help="number of worker processes sharing the load through the consumer group (default: INTELBUS_JOBS_WORKERS, 1)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse_suppress())
    p.add_argument("--batch", type=int, default=2000, help="largest batch a stage processes at once (default 2000)")
    p.add_argument("--within", type=float, default=0.02, help="seconds a stage waits to fill a batch, with faust's loop only (default 0.02)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="intelbus log level")
    p.epilog = (
        "Stages: dedupe (intel.alert|wanted|incident -> intel.<kind>.unique), match (identifier index),\n"
        "hits (dedupe by hit id -> intel.hit). Metrics: http://127.0.0.1:<INTELBUS_METRICS_PORT_BASE + 1 + index>/metrics.\n"
        "Consumer loop: INTELBUS_JOBS_CONSUMER_LOOP=batch (default: each stage gets a fetch's records as one batch)\n"
        "or faust (faust's own loop, message by message; the fallback). The start line says which runs.\n"
        "SIGTERM or Ctrl-C stops gracefully: batches in flight finish and offsets are committed."
    )

    def run(args):
        from ops.settings import load_settings

        from stream_jobs.faust_patches import UnsupportedFramework, require_pinned

        from stream_jobs.app import consumer_loop_named

        settings = load_settings()
        try:
            require_pinned()  # before any worker starts: never run faust unguarded
            consumer_loop_named(settings.jobs_consumer_loop)  # one that does not exist (the removed `direct`): said
        except (UnsupportedFramework, ValueError) as e:
            print(f"intelbus jobs: {e}", file=sys.stderr)
            return 2
        workers = args.workers or settings.jobs_workers
        if args.worker_index is not None or workers == 1:
            return run_worker(settings, args.worker_index or 0, args)
        return run_many(workers, args)

    return run


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def metrics_port(settings, index: int) -> int:
    return settings.metrics_port_base + 1 + index


def configure_logging(level: str) -> None:
    """A faust worker's logging (the jobs' and the workflow job's): faust's chatty loggers at warning,
    intelbus's at `level` through a handler of its own. faust gives the root logger's handler its own
    level (WARNING) when the worker starts; ours keeps "ready", look-back restores and the like at info."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    ours = logging.getLogger("intelbus")
    ours.setLevel(level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours.addHandler(handler)
    ours.propagate = False
    for name in REBALANCE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def run_worker(settings, index: int, args) -> int:
    configure_logging(args.log_level)
    log = logging.getLogger("intelbus.jobs")
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # faust runs aiokafka's consumer in a thread of its own. Each time the event loop's thread
    # releases the GIL (a RocksDB read, the producer's flush), getting it back waited for that
    # thread's switch interval, 5 ms by default: hundreds of times a second.
    sys.setswitchinterval(settings.jobs_gil_switch_s)
    from prometheus_client import start_http_server

    from stream_jobs.app import create_app, private_worker, rocksdb_available

    port = metrics_port(settings, index)
    app = create_app(settings, worker_index=index, batch_size=args.batch, batch_within=args.within)
    start_http_server(port, addr=settings.metrics_bind)
    from ops.metrics import tune_gc, watch_gc

    watch_gc()
    tune_gc(settings.gc_gen0)
    from ops.lag import JOBS_TOPICS
    from ops.lag_metrics import LagExporter

    from ops.kafka_auth import JOBS

    LagExporter(settings, app.conf.id, JOBS_TOPICS, user=JOBS).start()
    log.info("worker %d: kafka=%s registry=%s partitions=%d dedupe_window=%dd store=%s batch=%d within=%.3fs "
             "consumer_loop=%s metrics=:%d",
             index, settings.kafka, settings.registry_url, settings.partitions, settings.dedupe_window_days,
             "rocksdb" if rocksdb_available() else "memory", args.batch, args.within,
             app.intelbus_consumer_loop, port)
    worker = private_worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def run_many(workers: int, args) -> int:
    """Start N worker processes and wait; SIGTERM/SIGINT is passed on to each."""
    procs = []
    for i in range(workers):
        argv = [sys.executable, "-m", "ops.cli", "jobs", "--worker-index", str(i), "--batch", str(args.batch),
                "--within", str(args.within), "--log-level", args.log_level]
        procs.append(subprocess.Popen(argv, env=os.environ.copy()))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return max(codes)
