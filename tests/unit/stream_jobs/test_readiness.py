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


# --- a worker stuck not ready exits (StuckNotReady; stream_jobs.app exit_stuck) ---------------------------------

from stream_jobs.app import not_ready_progress  # noqa: E402
from stream_jobs.watchdog import StuckNotReady  # noqa: E402


class Clock:
    def __init__(self):
        self.now = 500.0

    def __call__(self):
        return self.now


def test_a_worker_rebalancing_with_nothing_moving_is_stuck_after_the_delay_and_not_before():
    clock = Clock()
    stuck = StuckNotReady(after=120, clock=clock)
    progress = (7, 42, False, None)
    assert stuck.check("rebalancing", progress) is None
    clock.now += 119
    assert stuck.check("rebalancing", progress) is None
    clock.now += 2
    assert stuck.check("rebalancing", progress) == 121


def test_a_long_recovery_whose_records_left_go_down_is_never_stuck():
    clock = Clock()
    stuck = StuckNotReady(after=120, clock=clock)
    for left in range(900_000, 0, -50_000):  # 18 looks a minute apart: 18 minutes of recovery
        assert stuck.check("recovering its tables from the changelogs", (3, 9, True, left)) is None
        clock.now += 60
    clock.now += 60  # then it stops at 50,000: stuck 120 s after the last look that saw it move
    assert stuck.check("recovering its tables from the changelogs", (3, 9, True, 50_000)) == 120


def test_a_new_rebalance_or_being_ready_starts_the_clock_again():
    clock = Clock()
    stuck = StuckNotReady(after=120, clock=clock)
    stuck.check("rebalancing", (7, 42, False, None))
    clock.now += 100
    assert stuck.check("rebalancing", (8, 42, False, None)) is None  # another rebalance began
    clock.now += 100
    assert stuck.check("rebalancing", (8, 42, False, None)) is None  # 100 s into that one
    assert stuck.check(None) is None  # ready
    clock.now += 30
    assert stuck.check("rebalancing", (9, 43, False, None)) is None
    clock.now += 119
    assert stuck.check("rebalancing", (9, 43, False, None)) is None


def test_the_progress_of_a_worker_counts_rebalances_generations_and_the_records_left_to_recover():
    recovery = SimpleNamespace(in_recovery=True, active_remaining_total=lambda: 1234)
    app = SimpleNamespace(rebalancing_count=5, consumer_generation_id=17, tables=SimpleNamespace(recovery=recovery))
    assert not_ready_progress(app) == (5, 17, True, 1234)
    recovery.in_recovery = False
    assert not_ready_progress(app) == (5, 17, False, None)


async def holding_a_record(record):
    await asyncio.sleep(10)


def while_a_stage_holds_a_record(look):
    """`look()`'s result, called in a running loop while a task named stage-dedupe holds a person's record."""
    async def main():
        task = asyncio.create_task(holding_a_record({"name": "王霞英", "id_number": "411425198507247233"}),
                                   name="stage-dedupe")
        await asyncio.sleep(0)
        try:
            return look()
        finally:
            task.cancel()

    return asyncio.run(main())


def test_where_a_stuck_worker_waits_names_its_tasks_code_and_none_of_the_records_it_holds():
    from stream_jobs.app import where_it_waits

    dump = while_a_stage_holds_a_record(lambda: where_it_waits(SimpleNamespace(consumer=SimpleNamespace())))
    assert "stage-dedupe" in dump and "holding_a_record" in dump and "thread MainThread" in dump
    assert "411425198507247233" not in dump and "王霞英" not in dump


def test_sigusr1_on_a_worker_logs_where_it_waits_and_none_of_the_records_it_holds(caplog, tmp_path):
    """What an operator gets by sending SIGUSR1 to a worker that seems stuck: mode's own answer
    (`mode.utils.logging.cry`) pprints every frame's local variables, a stage's records among them;
    ours logs the code locations only. The control: mode's dump of the same task shows the record."""
    import io
    import logging

    import faust
    from mode.utils.logging import cry

    from stream_jobs.app import private_worker

    app = faust.App("sigusr1-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path), web_enabled=False)
    worker = private_worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    assert type(worker)._on_sigusr1 is not faust.Worker._on_sigusr1

    def signal_then_modes_dump():
        with caplog.at_level(logging.WARNING, logger="intelbus.jobs"):
            worker._on_sigusr1()
        modes = io.StringIO()
        cry(file=modes)
        return modes.getvalue()

    modes_dump = while_a_stage_holds_a_record(signal_then_modes_dump)
    ours = caplog.text
    assert "SIGUSR1" in ours and "stage-dedupe" in ours and "holding_a_record" in ours
    assert "411425198507247233" not in ours and "王霞英" not in ours
    assert "411425198507247233" in modes_dump  # what mode's handler would have written to the log
