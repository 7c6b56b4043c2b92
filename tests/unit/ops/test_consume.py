"""ops.consume.consume_ready: the first message as soon as it is there, then what has arrived."""
from ops.consume import consume_ready


class FakeConsumer:
    def __init__(self, queued, arrives_later=()):
        self.queued, self.later, self.calls = list(queued), list(arrives_later), []

    def poll(self, timeout):
        self.calls.append(("poll", timeout))
        if not self.queued:
            self.queued, self.later = self.later, []
            return None
        return self.queued.pop(0)

    def consume(self, n, timeout):
        self.calls.append(("consume", n, timeout))
        taken, self.queued = self.queued[:n], self.queued[n:]
        return taken


def test_returns_what_has_arrived_without_waiting_for_a_full_batch():
    c = FakeConsumer(["m1", "m2", "m3"])
    assert consume_ready(c, 500, 0.2) == ["m1", "m2", "m3"]
    assert c.calls == [("poll", 0.2), ("consume", 499, 0)]  # only the first message is waited for


def test_at_most_max_messages():
    c = FakeConsumer([f"m{i}" for i in range(10)])
    assert consume_ready(c, 4, 0.2) == ["m0", "m1", "m2", "m3"]
    assert consume_ready(c, 1, 0.2) == ["m4"]


def test_nothing_within_the_timeout_is_an_empty_batch():
    c = FakeConsumer([], arrives_later=["late"])
    assert consume_ready(c, 500, 0.2) == []
    assert consume_ready(c, 500, 0.2) == ["late"]
