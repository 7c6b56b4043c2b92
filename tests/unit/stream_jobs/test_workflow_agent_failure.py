"""A workflow agent whose body fails ends the worker (to be restarted and read again from the
commit), as one whose stream fails does: faust would restart the actor, and `take_events`
acknowledges the batch in hand when its abandoned generator is closed, so the failed batch could be
committed unprocessed. A rebalance's cancellation is not a failure."""
from __future__ import annotations

import asyncio

import pytest

from stream_jobs import workflow_job


def test_a_failing_agent_body_ends_the_worker_and_a_cancellation_does_not(monkeypatch):
    ended = []
    monkeypatch.setattr(workflow_job, "_exit_to_be_restarted", ended.append)

    async def body_fails(stream):
        async for batch in stream:
            raise KeyError(batch)

    async def batches():
        yield ["hit-1"]

    asyncio.run(workflow_job._exits_on_failure("route", body_fails)(batches()))
    assert ended == ["route"]

    async def cancelled(stream):  # the control: a rebalance cancels the actor, faust restarts it
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(workflow_job._exits_on_failure("items", cancelled)(batches()))

    async def done(stream):  # and an agent that ends normally ends nothing
        async for _ in stream:
            pass

    asyncio.run(workflow_job._exits_on_failure("records", done)(batches()))
    assert ended == ["route"]
    assert workflow_job._exits_on_failure("answers", done).__name__ == "done"  # faust names the actor after it
