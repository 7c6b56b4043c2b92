"""Shared test configuration: the session-scoped local stack for integration tests."""
from __future__ import annotations

import os
import uuid

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings():
    from ops.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def stack(settings):
    """The real local stack, started once (or reused if already healthy) and stopped after."""
    from ops.bootstrap import bootstrap
    from ops.services import full_stack

    from ops.tls import ensure_tls

    ensure_tls(settings)  # `intelbus up --tls`: the broker also listens with SASL_SSL (test_broker_trust)
    stack = full_stack(settings, out=lambda m: print(f"[stack] {m}"))
    statuses = stack.status()
    # A stack that was running, even in part (a developer's, with a component just restarting),
    # is completed and left running; only a stack this session started is stopped after it.
    was_running = any(s.healthy or s.managed for s in statuses)
    if all(s.healthy for s in statuses):
        bootstrap(settings, out=lambda m: print(f"[stack] {m}"))
    else:
        stack.up(on_infra_ready=lambda: bootstrap(settings, out=lambda m: print(f"[stack] {m}")))
    yield stack
    if not was_running and not os.environ.get("INTELBUS_KEEP_STACK"):
        stack.down()


@pytest.fixture
def topic_name():
    """A fresh uuid-named topic name; the test creates it, the fixture deletes it after."""
    from confluent_kafka.admin import AdminClient

    from ops.settings import load_settings

    name = f"test.{uuid.uuid4().hex[:12]}"
    yield name
    admin = AdminClient(load_settings().kafka_config("intelbus-admin"))
    if name in admin.list_topics(timeout=10).topics:
        for fut in admin.delete_topics([name], operation_timeout=10).values():
            try:
                fut.result()
            except Exception:
                pass
