"""The sink, reading a record whose schema it has not cached while the registry does not answer,
waits and asks again instead of dead-lettering the record (its row would be missing from the
history for good); a record the registry has no schema for is still a dead letter."""
from __future__ import annotations

from types import SimpleNamespace

from schemas.wire import RegistryUnavailable, WireFormatError
from sinks.batching import Backoff, Batch
from sinks.sink import Sink


class Msg:
    def __init__(self, offset):
        self._offset = offset

    def topic(self):
        return "intel.hit"

    def partition(self):
        return 2

    def offset(self):
        return self._offset

    def value(self):
        return b"\x00\x00\x00\x00\x07"


def test_the_sink_waits_for_the_registry_and_dead_letters_only_what_it_has_no_schema_for(monkeypatch, caplog):
    import sinks.sink as sink_module

    slept = []
    monkeypatch.setattr(sink_module.time, "sleep", slept.append)
    answers = [RegistryUnavailable("the schema registry did not answer for schema id 7: ConnectError"),
               RegistryUnavailable("the schema registry did not answer for schema id 7: ConnectError"),
               [("hits", ("h1",))],
               WireFormatError("schema id 9 is unknown to the registry: Schema not found")]

    def to_rows(_msg):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    dead = []
    settings = SimpleNamespace(sink_batch_rows=1000, sink_batch_seconds=1.0)
    sink = Sink(settings, to_rows=to_rows, dead_letter=lambda *a: dead.append(a), backoff=Backoff(first=0.5))
    batch = Batch()
    sink._add(batch, Msg(41))
    assert batch.rows == {"hits": [("h1",)]} and dead == [] and slept == [0.5, 1.0]
    assert "intel.hit/2/41: the schema registry did not answer" in caplog.text and "keeping our place" in caplog.text

    sink._add(batch, Msg(42))  # the control: the registry answered that it has no such schema
    assert len(dead) == 1 and dead[0][1] == "intel.hit/2/42" and "unknown to the registry" in dead[0][2]
    sink.pool.shutdown()
