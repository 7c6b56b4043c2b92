"""The integration tests' simulator seeds (tests/integration/seeds.py): runs on one stack never share people."""
from types import SimpleNamespace

import pytest

from producers.simulator import SimConfig, Simulation
from tests.integration.seeds import fresh_seed


def person_ids(seed: int) -> set[str]:
    ids = set()
    for item in Simulation(SimConfig(seed=seed, count=3000)).records():
        record = getattr(item, "record", item)
        for person in (record.get("persons") or []) + ([record["person"]] if record.get("person") else []):
            ids.add(person["id_number"])
    return ids


def test_seeds_agreeing_mod_1000_share_people_and_fresh_seeds_do_not(tmp_path):
    assert person_ids(17230) & person_ids(500230)  # what happened on 2026-12-01
    stack = SimpleNamespace(stack_path=tmp_path)
    a, b = fresh_seed(stack), fresh_seed(stack)
    assert a % 1000 != b % 1000 and not person_ids(a) & person_ids(b)


def test_every_residue_is_handed_out_once_then_the_stack_must_be_purged(tmp_path):
    stack = SimpleNamespace(stack_path=tmp_path)
    assert sorted(fresh_seed(stack) % 1000 for _ in range(1000)) == list(range(1000))
    with pytest.raises(RuntimeError, match="intelbus down --purge"):
        fresh_seed(stack)
