"""When a jobs worker says it is ready (`intelbus_service_ready`, what `intelbus up` waits for)."""
import asyncio
from types import SimpleNamespace

from stream_jobs.app import not_ready_because


def worker(*, rebalancing=False, in_recovery=False, completed=False):
    done = asyncio.Event()
    if completed:
        done.set()
    recovery = SimpleNamespace(in_recovery=in_recovery, completed=done)
    return SimpleNamespace(rebalancing=rebalancing, tables=SimpleNamespace(recovery=recovery))


def test_a_worker_that_has_not_finished_its_first_recovery_is_not_ready():
    assert not_ready_because(worker()) == "joining the consumer group"


def test_a_worker_recovering_its_tables_is_not_ready_even_after_an_earlier_recovery():
    assert "recovering" in not_ready_because(worker(in_recovery=True, completed=True))


def test_a_worker_in_a_rebalance_is_not_ready():
    assert not_ready_because(worker(rebalancing=True, completed=True)) == "rebalancing"


def test_a_worker_in_the_group_with_its_tables_recovered_is_ready():
    assert not_ready_because(worker(completed=True)) is None
