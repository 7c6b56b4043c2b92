"""After a crash the hit stage sends exactly the hit copies that are not on intel.hit yet.

Its seen-ids are written only after every copy of a hit was delivered (BatchRunner); a
candidate read again without its seen-id had its copies not delivered, or delivered just
before the crash: `EmittedHits` reads the last minutes of intel.hit to tell which."""
from __future__ import annotations

import asyncio
import json

from stream_jobs.lookback import EmittedHits, first_string
from stream_jobs.stages import HIT_TOPIC, HitStage, Incoming
from stream_jobs.state import MemoryState
from stream_jobs.internal import encode_hit_candidate


def candidate(hid: str) -> Incoming:
    hit = {"hit_id": hid, "hit_type": "WANTED_PERSON", "owner_region": "110105", "hit_region": "130225",
           "notify_regions": ["110105", "130225"], "detected_at": 1_790_000_000_000,
           "trigger_reported_at": 1_790_000_000_000}
    return Incoming("intel.hit.candidates", 2, 40, hid.encode(), encode_hit_candidate(hit))


def stage() -> HitStage:
    return HitStage(state=MemoryState(), encode_hit=lambda h: json.dumps(h).encode(),
                    provinces_of=lambda notify: sorted({r[:2] + "0000" for r in notify}))


def copies(result) -> list[str]:
    return sorted(o.key.decode() for o in result.outputs if o.topic == HIT_TOPIC)


def test_a_replayed_candidate_sends_only_the_copies_not_on_intel_hit():
    s = stage()
    s.emitted = {("H-1", "110000")}  # Beijing's copy was delivered before the crash, Hebei's not
    assert copies(s.process([candidate("H-1")], 0)) == ["130000"]
    assert s.state.get(2, b"H-1") is not None  # and the seen-id is written now


def test_all_copies_out_before_the_crash_none_again_and_the_control_sends_both():
    s = stage()
    s.emitted = {("H-2", "110000"), ("H-2", "130000")}
    assert copies(s.process([candidate("H-2")], 0)) == []
    fresh = stage()  # nothing on intel.hit: the control
    assert copies(fresh.process([candidate("H-2")], 0)) == ["110000", "130000"]


def test_the_tail_is_read_once_per_new_assignment_before_the_next_batch():
    s = stage()
    reads = []

    def read(since_ms):
        reads.append(since_ms)
        return {("H-3", "110000")}

    emitted = EmittedHits(s, read, seconds=120, clock=lambda: 1_000.0)

    async def main():
        emitted.on_assigned([0, 1])
        await emitted.before([candidate("H-3")])
        await emitted.before([candidate("H-4")])  # same assignment: not read again
        emitted.on_assigned([1])                  # lost one: nothing new to read
        await emitted.before([candidate("H-5")])
        emitted.on_assigned([1, 2])               # gained one
        await emitted.before([candidate("H-6")])

    asyncio.run(main())
    assert reads == [880_000, 880_000] and s.emitted == {("H-3", "110000")}


def test_the_hit_id_is_read_from_the_confluent_frame_without_the_schema():
    from fastavro import parse_schema, schemaless_writer
    import io

    schema = parse_schema({"type": "record", "name": "h", "fields": [{"name": "hit_id", "type": "string"},
                                                                    {"name": "n", "type": "long"}]})
    body = io.BytesIO()
    schemaless_writer(body, schema, {"hit_id": "5f0c2a9e-1b2c-5d3e-8f40-123456789abc", "n": 7})
    framed = b"\x00\x00\x00\x00\x07" + body.getvalue()
    assert first_string(framed) == "5f0c2a9e-1b2c-5d3e-8f40-123456789abc"
    assert first_string(b"\x01junk") is None and first_string(b"") is None
