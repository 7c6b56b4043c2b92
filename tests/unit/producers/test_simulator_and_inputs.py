from __future__ import annotations

import io

from producers.inputs import csv_record, read_lines
from producers.simulator import SimConfig, Simulation
from schemas.records import RecordError, validate_record


def test_the_simulator_is_deterministic_under_its_seed():
    def run():
        sim = Simulation(SimConfig(seed=9, count=2000, start_ms=1_790_000_000_000))
        return list(sim.records()), sim.truth
    (ra, ta), (rb, tb) = run(), run()
    assert ra == rb and ta.hits == tb.hits and ta.summary() == tb.summary()


def test_the_simulator_truth_adds_up_and_its_records_are_valid_or_meant_to_be_invalid():
    sim = Simulation(SimConfig(seed=4, count=5000))
    valid = dup = invalid = 0
    for item in sim.records():
        if item.invalid:
            invalid += 1
            try:
                validate_record(item.kind, item.record)
                raise AssertionError(f"meant to be invalid: {item.record}")
            except RecordError:
                pass
        elif item.duplicate:
            dup += 1
        else:
            valid += 1
            validate_record(item.kind, item.record)
    assert (valid, dup, invalid) == (sim.truth.events, sim.truth.duplicates, sim.truth.invalid)
    assert valid + dup + invalid == 5000
    types = sim.truth.summary()["hits_by_type"]
    assert types.get("WANTED_PERSON") and types.get("WATCH_MATCH") and types.get("CASE_LINK")


def test_the_phases_come_once_each_in_order_so_settle_waits_three_times():
    """`run_simulation(between_phases=...)` (`intelbus simulate --settle`, bench/chaos.py) waits for the
    jobs at every change of phase: an invalid record in the last traffic phase must not count as a
    return to phase 2 (it made a 30-minute run wait about a thousand times)."""
    sim = Simulation(SimConfig(seed=18, count=100_000, start_ms=1_790_000_000_000))
    order, invalid_late = [], 0
    for item in sim.records():
        if not order or order[-1] != item.phase:
            order.append(item.phase)
        invalid_late += item.invalid and len(order) == 4
    assert order == [1, 2, 3, 4]
    assert invalid_late > 0  # the last phase has invalid records of its own


def test_a_long_run_does_not_run_out_of_fresh_person_ids():
    """A seed's resident IDs born 1950-2004 are 20,075 per region (301,125 over the default regions, used
    up after about 1.25 million records: the 30-minute chaos run at 1,000/s hung at record 1,253,893).
    With one region they run out after about 90,000 records; the run goes on with older births, every
    ID still fresh and valid."""
    sim = Simulation(SimConfig(seed=5, count=110_000, regions=("110105",), population=1_000,
                               start_ms=1_790_000_000_000))
    suspects = [p["id_number"] for item in sim.records() if not item.invalid and not item.duplicate
                for p in item.record.get("persons", []) if p.get("role") == "SUSPECT"]
    assert len(sim._used_ids) > 20_075  # past the 1950-2004 births of the one region
    assert len(set(suspects)) > 20_075 - 1_000 - 150
    last = sim._recent[-1]
    validate_record(last.kind, last.record)  # the last record is valid as ever


def test_runs_with_other_seeds_share_no_person_phone_or_plate():
    def identifiers(seed):
        out = set()
        for item in Simulation(SimConfig(seed=seed, count=3000)).records():
            r = item.record
            persons = [r["person"]] if "person" in r else r.get("persons", [])
            out |= {p["id_number"] for p in persons} | set(r.get("phones", [])) | {v["plate"] for v in r.get("vehicles", [])}
        return out
    assert identifiers(11) & identifiers(12) == set()


def test_jsonl_lines_keep_their_numbers_and_errors():
    lines = list(read_lines("x.jsonl", io.StringIO('{"a": 1}\n\n{bad\n[1]\n')))
    assert [(l.line_no, l.error is None) for l in lines] == [(1, True), (3, False), (4, False)]
    assert lines[1].error.startswith("not valid JSON") and lines[2].error == "a record must be a JSON object, got list"


def test_csv_columns_are_field_paths():
    header = ["source_ref", "revision", "location.region", "location.lat", "persons.0.id_number", "persons.1.name", "phones"]
    rec = csv_record(header, ["R1", "2", "120119", "39.9", "11010519491231002X", "张三", "13800138000; 13900139000"])
    assert rec == {"source_ref": "R1", "revision": 2, "location": {"region": "120119", "lat": 39.9},
                   "persons": [{"id_number": "11010519491231002X"}, {"name": "张三"}], "phones": ["13800138000", "13900139000"]}


def test_csv_bad_cells_and_column_counts():
    lines = list(read_lines("w.csv", io.StringIO("source_ref,revision\nR1,two\nR2\nR3,3\n")))
    assert [l.line_no for l in lines] == [2, 3, 4]
    assert lines[0].error == "revision: 'two' is not an integer"
    assert lines[1].error == "has 1 columns, the header has 2"
    assert lines[2].record == {"source_ref": "R3", "revision": 3}


def _border_duplicates_by_the_jobs_rule(sim_records, start_ms):
    """Every pair of the run's valid records judged by stream_jobs.rules (not the simulator's code)."""
    from itertools import combinations

    from schemas.ids import hit_id
    from schemas.regions import load_regions
    from stream_jobs import rules

    regions = load_regions()
    incidents = [validate_record("incident", i.record, now_ms=start_ms) for i in sim_records
                 if i.kind == "incident" and not i.invalid and not i.duplicate]
    found = set()
    for a, b in combinations([r for r in incidents if rules.border_duplicate_identifiers(r)], 2):
        if rules.border_duplicate_on(a, b, is_within=regions.is_within):
            first, second = sorted((a, b), key=lambda r: (r["occurred_at"], r["event_id"]))
            found.add(hit_id(rules.record_key_of(first), second["event_id"], "BORDER_DUPLICATE"))
    return found


def test_the_truths_border_duplicates_are_the_deliberate_pairs_and_agree_with_the_jobs_rule():
    sim = Simulation(SimConfig(seed=4, count=3000, start_ms=1_790_000_000_000))
    items = list(sim.records())
    truth = {h for h, v in sim.truth.hits.items() if v["hit_type"] == "BORDER_DUPLICATE"}
    assert len(truth) >= 3
    assert all({v["owner_region"], v["hit_region"]} in ({"120119", "130822"}, {"110117", "120119"})
               for h, v in sim.truth.hits.items() if h in truth)  # Jizhou|Xinglong, Pinggu|Jizhou
    assert truth == _border_duplicates_by_the_jobs_rule(items, 1_790_000_000_000)
    assert len(items) == 3000  # a pair is two of the records asked for, not more


def test_border_duplicates_that_random_traffic_makes_by_accident_are_in_the_truth():
    # two neighbouring Beijing districts, many linked cases, no deliberate pairs
    sim = Simulation(SimConfig(seed=5, count=3000, start_ms=1_790_000_000_000, regions=("110105", "110108"),
                               border_duplicate_rate=0.0, case_link_rate=0.5))
    items = list(sim.records())
    truth = {h for h, v in sim.truth.hits.items() if v["hit_type"] == "BORDER_DUPLICATE"}
    assert truth and truth == _border_duplicates_by_the_jobs_rule(items, 1_790_000_000_000)
