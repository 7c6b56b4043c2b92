"""A private stream-jobs app on the shared bus: its worker stopped, its topics and consumer group deleted.

Tests and benchmarks run stream-job workers of their own beside the stack's (bench/private_jobs.py,
`python -m stream_jobs.workflow_job --app-id ...`). Such a worker's app id, `intelbus-jobs-<tag>`,
names its consumer group, faust's internal topics and table changelogs (`<app id>-...`) and, for
bench/private_jobs.py, its outputs (`<app id>.<topic>`); its inputs may have a prefix of their own.
When it is done, all of that is deleted, as the admin principal: the jobs' own principal may
create topics under `intelbus-jobs-` but delete neither topics nor groups (ops/acls.yaml).

The stack's own apps (jobs-0's `intelbus-jobs`, workflows-0's `intelbus-jobs-workflows`) share the
`intelbus-jobs-` prefix: a name whose topics would include theirs is refused before anything is
deleted.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field

from ops.kafka_auth import ADMIN

log = logging.getLogger("intelbus.ops")

PRIVATE_PREFIX = "intelbus-jobs-"
STACK_APP_IDS = ("intelbus-jobs", "intelbus-jobs-workflows")
GONE = ("UNKNOWN_TOPIC_OR_PART", "GROUP_ID_NOT_FOUND")  # deleted meanwhile, or the group never committed


class NotPrivate(ValueError):
    """A name whose topics would be the stack's own, or outside the jobs' prefix."""


def check_private(name: str) -> str:
    """`name` (an app id or an inputs prefix), if deleting what it prefixes cannot touch the stack's apps."""
    for stack in STACK_APP_IDS:
        if name.startswith(PRIVATE_PREFIX[:-1]) and (stack + "-").startswith(name):
            raise NotPrivate(f"{name!r} would delete the stack's own app {stack!r} (its topics {stack}-*)")
    if not name.startswith(PRIVATE_PREFIX) or len(name) == len(PRIVATE_PREFIX):
        raise NotPrivate(f"{name!r} is not a private app's name: it must be {PRIVATE_PREFIX}<tag>")
    return name


def private_topics(names, app_id: str, inputs: tuple[str, ...] = ()) -> list[str]:
    """Of these topic names, those of the app (`<app id>-...`, `<app id>.<...>`) and of its inputs (`<prefix>.<...>`)."""
    prefixes = (check_private(app_id) + "-", app_id + ".") + tuple(check_private(p) + "." for p in inputs)
    return sorted(t for t in names if t.startswith(prefixes))


@dataclass
class Deleted:
    topics: list[str] = field(default_factory=list)
    group: bool = False
    errors: list[str] = field(default_factory=list)  # what is left behind, and why


def delete_private_app(settings, app_id: str, *, inputs: tuple[str, ...] = (), timeout: float = 30.0,
                       user: str = ADMIN) -> Deleted:
    """Delete the app's topics (and its inputs' topics) and its consumer group, waiting for each.
    What could not be deleted is in `errors` (and logged): a teardown reports, it does not raise."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config(user))
    done = Deleted()
    mine = private_topics(admin.list_topics(timeout=timeout).topics, app_id, inputs)
    futures = admin.delete_topics(mine, operation_timeout=timeout, request_timeout=timeout) if mine else {}
    for topic, fut in futures.items():
        try:
            fut.result()
            done.topics.append(topic)
        except Exception as exc:
            if not any(code in str(exc) for code in GONE):
                done.errors.append(f"topic {topic}: {exc}")
    try:
        for fut in admin.delete_consumer_groups([app_id], request_timeout=timeout).values():
            fut.result()
        done.group = True
    except Exception as exc:  # NON_EMPTY_GROUP: a member still alive (a worker not stopped)
        if not any(code in str(exc) for code in GONE):
            done.errors.append(f"group {app_id}: {exc}")
    if done.errors:
        log.warning("private app %s: left behind: %s", app_id, "; ".join(done.errors))
    return done


@dataclass
class Stopped:
    seconds: float  # from the signal to the process's exit
    killed: bool  # SIGKILLed: sent it, or it did not stop within the grace
    returncode: int | None


def stop_worker(proc: subprocess.Popen | None, *, kill: bool = False, grace: float = 15.0) -> Stopped | None:
    """SIGTERM (or SIGKILL) a worker process and wait for it; SIGKILL it if it is not out within
    `grace` seconds. None when it was not running. A faust worker is out in a few seconds of SIGTERM,
    having committed what it processed; one that needs the SIGKILL did not commit its last second."""
    if proc is None or proc.poll() is not None:
        return None
    started = time.monotonic()
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    if not kill:
        proc.send_signal(signal.SIGCONT)  # a worker SIGSTOPped by a test handles its SIGTERM only once continued
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log.warning("worker %d not out %.0f s after SIGTERM: SIGKILL", proc.pid, grace)
        proc.kill()
        proc.wait(10)
        kill = True
    return Stopped(round(time.monotonic() - started, 2), kill, proc.returncode)
