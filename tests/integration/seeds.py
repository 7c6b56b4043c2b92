"""Simulator seeds for runs on one stack that must not share people.

The simulator's resident IDs carry the seed's last three digits as their sequence part
(`producers.simulator.Simulation._new_person_id`), so two runs whose seeds agree mod 1000
share people: the second run's listings hit the first run's checks (the look-back holds the
last 120 s of them, the index the last seven days), and those hits are false for its ground
truth. Drawn at random, two of a suite's four runs on the local stack agreed one time in
about 170 (seen on 2026-12-01: seeds 17230 and 500230, 1,483 false hits). So every seed is
drawn from the residues no earlier run on this stack has used, kept in the stack's directory
(`intelbus down --purge` forgets them with the data)."""
from __future__ import annotations

import fcntl
import random

RESIDUES = 1000


def fresh_seed(settings) -> int:
    """A seed whose residue mod 1000 no earlier run on this stack had."""
    path = settings.stack_path / "tests" / "simulator-seed-residues"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # tests on one stack from two processes (a developer's run beside CI's)
        f.seek(0)
        used = {int(line) for line in f.read().split()}
        free = sorted(set(range(RESIDUES)) - used)
        if not free:
            raise RuntimeError(f"every one of the {RESIDUES} seed residues was used on this stack ({path}): "
                               "its people would repeat; `intelbus down --purge` starts a fresh stack")
        residue = random.choice(free)
        f.write(f"{residue}\n")
    return random.randrange(RESIDUES) * RESIDUES + residue
