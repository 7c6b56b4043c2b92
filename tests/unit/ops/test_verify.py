import json

from ops.verify import Verdict, count_dropped_duplicates


def drop(ref: str, source: str) -> bytes:
    return json.dumps({"event_id": "e", "kind": "incident", "record_key": f"110000/sys/{ref}", "revision": 1,
                       "source": source}).encode()


def test_a_duplicate_dropped_again_after_a_replay_is_counted_once():
    values = [drop("G1-1", "intel.incident/0/10"), drop("G1-1", "intel.incident/0/10"),  # the batch read twice
              drop("G1-1", "intel.incident/0/11"), drop("G1-2", "intel.incident/3/10")]
    assert count_dropped_duplicates(values, "G1-") == 3


def test_only_the_runs_own_records_are_counted():
    values = [drop("G1-1", "intel.incident/0/10"), drop("OTHER-1", "intel.incident/0/12")]
    assert count_dropped_duplicates(values, "G1-") == 1
    assert count_dropped_duplicates(values, "") == 2


def test_a_verdict_is_exact_only_with_the_expected_duplicates():
    verdict = Verdict(expected_hits=0, found_hits=0, expected_events=5, distinct_events=5, expected_duplicates=2)
    assert not verdict.exact
    verdict.duplicates_dropped = 2
    assert verdict.exact
    assert verdict.summary()["duplicates_dropped"] == 2


def test_messages_that_are_not_drops_are_skipped():
    assert count_dropped_duplicates([b"xxxx", b"[1]", b'{"a": 1}', drop("G1-1", "intel.wanted/1/5")], "G1-") == 1


def test_hits_are_counted_per_type_with_what_is_missing_and_false():
    from ops.verify import hits_by_type

    expected = {"a": {"hit_type": "CASE_LINK"}, "b": {"hit_type": "BORDER_DUPLICATE"}, "c": {"hit_type": "BORDER_DUPLICATE"}}
    found = {"a": {"hit_type": "CASE_LINK"}, "b": {"hit_type": "BORDER_DUPLICATE"}, "x": {"hit_type": "BORDER_DUPLICATE"}}
    assert hits_by_type(expected, found) == {
        "BORDER_DUPLICATE": {"expected": 2, "found": 2, "missing": 1, "false": 1},
        "CASE_LINK": {"expected": 1, "found": 1, "missing": 0, "false": 0}}
