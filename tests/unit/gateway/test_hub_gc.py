"""The live feed's heap as the garbage collector sees it: what a buffered entry and the streams' shared walks
leave for every full collection to visit (a full collection stops every thread of the gateway: 0.9 s at worst in
bench/results/fanout.md's 12:31 run)."""
from __future__ import annotations

import gc
import json

from gateway.hub import (ALERT_TOPIC, HIT_TOPIC, WORKFLOW_TOPIC, RecentWalks, live_entry, rendered, visible)
from tests.unit.gateway.test_hub import identity_of, workflow_record


class Codec:
    """Bytes -> the record they stand for; counts its decodes."""

    def __init__(self, records: dict):
        self.records, self.decodes = records, 0

    def decode(self, value: bytes) -> dict:
        self.decodes += 1
        return dict(self.records[value])


def hit_record(notify):
    import uuid

    return {"hit_id": uuid.uuid4(), "hit_type": "PERSON", "classification": "INTERNAL", "notify_regions": list(notify),
            "danger_level": "HIGH", "matched_identifier": "110105198001011234",
            "record": json.dumps({"source_ref": "W-1", "person": {"name": "张三"}}, ensure_ascii=False),
            "trigger": json.dumps({"region_code": "120119", "places": ["a", "b"]})}


def alert_record(scope):
    import uuid

    return {"event_id": uuid.uuid4(), "classification": "INTERNAL", "share_scope": list(scope), "summary": "x"}


def tianjin():
    from identity.entitlement import Entitlement
    from schemas.regions import load_regions

    return Entitlement(identity_of("120000"), load_regions())


def test_a_workflow_item_is_decoded_again_only_when_shown_and_shows_the_same_item(monkeypatch):
    codec = Codec({b"w": workflow_record(["120000"]), b"w2": workflow_record(["320000"])})
    ent = tianjin()
    shown = live_entry(WORKFLOW_TOPIC, 0, 7, 1000, codec, b"w")
    other = live_entry(WORKFLOW_TOPIC, 1, 7, 1000, codec, b"w2")
    assert codec.decodes == 2 and shown.record is None and shown.data == ""    # not rendered, nothing held decoded
    assert visible(shown, ent, "120000") and not visible(other, ent, "120000")  # the scope needs no decoding
    assert codec.decodes == 2
    item = json.loads(rendered(shown).data)
    assert codec.decodes == 3 and item["feed_item"] == "workflow" and item["item_id"] == "R-1"
    assert shown.ident == item["event_id"] and shown.payload is None
    rendered(shown)
    assert codec.decodes == 3                                                   # once
    assert live_entry(WORKFLOW_TOPIC, 0, 8, 1000, codec, None) is None         # a tombstone


def test_a_hit_is_rendered_at_once_and_its_entitlement_reads_the_tuple_scope():
    codec = Codec({b"h": hit_record(["120119"]), b"j": hit_record(["320500"]), b"a": alert_record(["120000"])})
    ent = tianjin()
    hit, jiangsu = live_entry(HIT_TOPIC, 1, 3, 1000, codec, b"h"), live_entry(HIT_TOPIC, 5, 3, 1000, codec, b"j")
    alert = live_entry(ALERT_TOPIC, 0, 3, 1000, codec, b"a")
    assert json.loads(hit.data)["feed_item"] == "hit" and hit.record is None
    assert hit.scope["notify_regions"] == ("120119",)
    assert visible(hit, ent, "120000") and not visible(jiangsu, ent, "120000") and visible(alert, ent, "120000")
    # the same decisions as the API's rule on the record's lists
    assert ent.may_see_hit(hit_record(["120119"]), "120000") and not ent.may_see_hit(hit_record(["320500"]), "120000")


def test_a_buffered_entry_leaves_one_object_for_full_collections_to_visit():
    """Hits, alerts and workflow items as the caught-up hub buffers them, each looked at by a view: after the
    young collections, each entry is at most two tracked objects (itself, and a workflow item's bytes with its
    codec); the old entries (scope lists, the workflow record kept) were 3 and 8."""
    codec = Codec({b"h": hit_record(["120119"]), b"a": alert_record(["120000"]), b"w": workflow_record(["120000"])})
    ent = tianjin()
    gc.collect()
    before = len(gc.get_objects())
    kept = []
    for i in range(3000):
        for topic, value in ((HIT_TOPIC, b"h"), (ALERT_TOPIC, b"a"), (WORKFLOW_TOPIC, b"w")):
            e = live_entry(topic, 0, i, 1000, codec, value)
            visible(e, ent, "120000")
            kept.append(e)
    gc.collect()
    gc.collect()
    per_entry = (len(gc.get_objects()) - before - 1) / len(kept)  # the list `kept` itself is one
    assert per_entry <= 4 / 3 + 0.01, per_entry  # hit 1, alert 1, workflow 2


def test_the_streams_walks_keep_the_most_recent_only():
    walks = RecentWalks(3)
    for cursor in range(5):
        walks[(("120000", "INTERNAL"), cursor)] = [cursor]
    assert list(walks) == [(("120000", "INTERNAL"), c) for c in (2, 3, 4)]
    assert walks.get((("120000", "INTERNAL"), 4)) == [4] and walks.get((("120000", "INTERNAL"), 1)) is None
    walks[(("120000", "INTERNAL"), 3)] = ["again"]  # a key made again stays where it was: no growth
    assert len(walks) == 3 and walks[(("120000", "INTERNAL"), 3)] == ["again"]
    walks.clear()
    assert not walks
