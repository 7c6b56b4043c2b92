"""docs/deploy.md's port map of the isolated stacks (the SIGKILL benches and tests): each base is the one its
file sets, the ranges do not overlap, and all lie above the kernel's ephemeral range and below 65536."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^\| (\d{5}) \| (\d{5})-(\d{5}) \| [^|]+ \| `([^`]+)`", re.M)
LOWEST, HIGHEST = 180, 650  # bench/chaos.py chaos_env: gateway base+180 .. the metrics ports up to base+650
EPHEMERAL_TOP = 60999  # /proc/sys/net/ipv4/ip_local_port_range's upper end on these machines


def port_map() -> list[tuple[int, int, int, str]]:
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text.split("### Ports of the isolated stacks", 1)[1].split("\n### ", 1)[0]
    return [(int(b), int(lo), int(hi), path) for b, lo, hi, path in ROW.findall(section)]


def test_the_map_names_every_isolated_stack_with_the_base_its_file_sets():
    rows = port_map()
    assert {path for *_, path in rows} == {"tests/integration/test_broker_kill_ground_truth.py", "bench/chaos.py",
                                            "tests/integration/conftest.py", "bench/bench_recovery.py"}
    for base, low, high, path in rows:
        source = (REPO / path).read_text(encoding="utf-8")
        assert re.search(rf"(PORT_BASE\s*=\s*|port_base: int = |default=){base}\b", source), (path, base)
        assert (low, high) == (base + LOWEST, base + HIGHEST), (path, low, high)


def test_the_ranges_do_not_overlap_and_stay_outside_the_ephemeral_ports():
    rows = sorted(port_map())
    for base, low, high, path in rows:
        assert EPHEMERAL_TOP < low and high <= 65535, path
    for (_, _, high, a), (_, low, _, b) in zip(rows, rows[1:]):
        assert high < low, f"{a} and {b} share ports"
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ephemeral.exists():  # this machine's range, when it can be read
        top = int(ephemeral.read_text().split()[1])
        assert all(low > top for _, low, _, _ in rows)

