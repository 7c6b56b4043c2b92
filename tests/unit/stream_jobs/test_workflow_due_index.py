"""The workflow job's due index: what the timer loop sleeps until."""
from stream_jobs.workflow_job import DueIndex


def test_next_at_skips_moved_and_removed_items():
    ix = DueIndex()
    ix.set("a", 0, 100)
    ix.set("b", 0, 200)
    ix.set("c", 1, 300)
    ix.set("a", 0, 400)  # moved later: its entry at 100 is stale
    assert ix.next_at() == 200
    ix.set("b", 0, None)  # nothing pending any more
    assert ix.next_at() == 300
    ix.drop_partitions([1])
    assert ix.next_at() == 400
    assert ix.pop_due(400) == [("a", 0)] and ix.next_at() is None


def test_next_at_sees_an_earlier_time_set_later():
    ix = DueIndex()
    ix.set("a", 0, 500)
    assert ix.next_at() == 500
    ix.set("b", 0, 50)
    assert ix.next_at() == 50
    assert ix.pop_due(60) == [("b", 0)] and ix.next_at() == 500


def test_next_at_with_many_items_is_the_minimum():
    import random

    rng = random.Random(7)
    ix, truth = DueIndex(), {}
    for i in range(5000):
        item, at = f"i{rng.randrange(1000)}", rng.randrange(10**6)
        ix.set(item, 0, at)
        truth[item] = at
    assert ix.next_at() == min(truth.values())
    popped = ix.pop_due(500_000)
    assert sorted(i for i, _ in popped) == sorted(i for i, at in truth.items() if at <= 500_000)
    assert ix.next_at() == min(at for at in truth.values() if at > 500_000)


def test_pop_due_with_a_limit_takes_the_earliest_and_leaves_the_rest():
    ix = DueIndex()
    for i in range(10):
        ix.set(f"i{i}", 0, 100 + (9 - i))  # i9 is the earliest
    first = ix.pop_due(1000, limit=3)
    assert first == [("i9", 0), ("i8", 0), ("i7", 0)]
    assert len(ix) == 7 and ix.next_at() == 103
    assert [i for i, _ in ix.pop_due(1000)] == [f"i{i}" for i in range(6, -1, -1)]
