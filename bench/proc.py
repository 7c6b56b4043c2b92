"""What /proc says about a process and the machine, for the benchmarks (one copy: four benches had their own)."""
from __future__ import annotations

import os


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process so far, in seconds (its threads included); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_times() -> tuple[int, int, int]:
    """The machine's CPU time so far, in clock ticks of all cores: (busy, stolen, all). Stolen: time the
    hypervisor ran something else while this machine's cores wanted to run (a shared host)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    steal = v[7] if len(v) > 7 else 0
    return sum(v) - v[3] - v[4] - steal, steal, sum(v)


def machine_shares(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict:
    """Shares of the machine's CPU time between two `machine_times`: busy (ours) and stolen."""
    total = max(1, after[2] - before[2])
    return {"busy": round((after[0] - before[0]) / total, 3), "stolen": round((after[1] - before[1]) / total, 3)}
