"""After a crash between an item's events and its new state, the replay makes the same events
again (same ids): those already on intel.workflow are not sent again, the others are."""
from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from fastavro import parse_schema, schemaless_writer

from stream_jobs.lookback import first_string
from stream_jobs.workflow_job import NOT_RESENT, EmittedEvents
from workflows.model import WorkflowEvent

ROOT = Path(__file__).resolve().parents[3]
T = 1_795_000_000_000


def event(part: int, event_type: str = "SENT", command_id: str = "c-1") -> WorkflowEvent:
    return WorkflowEvent(item_id="R-0123456789ab", item_kind="ASSISTANCE_REQUEST", event_type=event_type, seq=1 + part,
                         at=T, status="OPEN", party="130822/CRIMINAL_INVESTIGATION", party_status="SENT",
                         notify=("130000", "130822"), command_id=command_id, part=part)


def read_back(emitted: EmittedEvents) -> None:
    emitted.on_assigned([0, 1])
    asyncio.run(emitted.before())


def test_a_replayed_command_sends_only_the_events_not_already_on_the_topic():
    sent, lost = event(0, "SENT"), event(1, "REMINDER_SCHEDULED")
    emitted = EmittedEvents(lambda since_ms: {sent.event_id}, seconds=120)
    read_back(emitted)
    before = NOT_RESENT._value.get()
    # the replay on the old state makes both again, with the same ids as before the crash
    again = [event(0, "SENT"), event(1, "REMINDER_SCHEDULED")]
    assert [e.event_id for e in emitted.fresh(again)] == [lost.event_id]
    assert NOT_RESENT._value.get() == before + 1
    # a later command of the item (another cause): new ids, sent
    later = event(0, "ACCEPTED", command_id="c-2")
    assert emitted.fresh([later]) == [later]


def test_the_control_without_a_read_back_sends_every_event_again():
    emitted = EmittedEvents(lambda since_ms: set(), seconds=120)
    read_back(emitted)
    again = [event(0), event(1)]
    assert emitted.fresh(again) == again


def test_a_read_back_that_fails_sends_them_again_rather_than_losing_any(caplog):
    def broken(since_ms):
        raise RuntimeError("broker away")

    emitted = EmittedEvents(broken, seconds=120)
    read_back(emitted)
    assert emitted.fresh([event(0)]) == [event(0)]
    assert "may be sent again" in caplog.text


def test_the_tail_is_read_once_per_new_assignment():
    reads = []

    def read(since_ms):
        reads.append(since_ms)
        return {"x"}

    emitted = EmittedEvents(read, seconds=120, clock=lambda: 1_000.0)

    async def main():
        emitted.on_assigned([0, 1])
        await emitted.before()
        await emitted.before()          # same assignment: not read again
        emitted.on_assigned([1])        # lost one: nothing new to read
        await emitted.before()
        emitted.on_assigned([1, 2])     # gained one
        await emitted.before()

    asyncio.run(main())
    assert reads == [880_000, 880_000] and emitted.ids == {"x"}


def test_the_event_id_is_the_first_field_of_an_intel_workflow_record():
    schema = parse_schema(json.loads((ROOT / "schemas" / "avro" / "workflow.avsc").read_text()))
    e = event(1)
    body = io.BytesIO()
    schemaless_writer(body, schema, e.to_avro())
    assert first_string(b"\x00\x00\x00\x00\x2a" + body.getvalue()) == e.event_id
