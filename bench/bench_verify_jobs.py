"""One jobs worker's throughput with the proof-of-publisher check on and off, in one run, alternating.

    python -m bench.bench_verify_jobs [--n 60000] [--rounds 2]

Each round runs bench_jobs.throughput (a backlog of N simulator events, one worker, clock from
its first event to zero lag) once with INTELBUS_VERIFY_RECORDS=1 and once with 0, in
alternating order; the worker is restarted for each with the setting in its environment.
Prints events/s and events per worker CPU-second for both, and the ratio on/off (the issue's
target: verification costs under 10% of a worker's throughput, i.e. a ratio above 0.90).
Needs the local stack (`intelbus up`); leaves the worker running with the check on.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run(n: int, rounds: int) -> dict:
    from bench.bench_jobs import throughput
    from ops.services import full_stack
    from ops.settings import load_settings

    settings = load_settings()
    runs = {"on": [], "off": []}
    try:
        for r in range(rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                os.environ["INTELBUS_VERIFY_RECORDS"] = "1" if mode == "on" else "0"
                result = throughput(settings, n, workers=1)
                runs[mode].append(result)
                print(f"  verify {mode:<3} {result['events_per_s']:>8,.0f} events/s  "
                      f"{result['events_per_worker_cpu_second'] or 0:>8,.0f} per worker CPU-second", flush=True)
    finally:
        os.environ["INTELBUS_VERIFY_RECORDS"] = "1"
        full_stack(settings, out=lambda m: None).down(only={"jobs-0"})
        full_stack(settings, out=lambda m: None).up()

    def total(mode, key):
        return sum(x["events"] for x in runs[mode]) / sum(x["events"] / x[key] for x in runs[mode])

    out = {mode: {"events_per_s": total(mode, "events_per_s"), "runs": runs[mode]} for mode in runs}
    out["on_over_off"] = out["on"]["events_per_s"] / out["off"]["events_per_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    out = run(args.n, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify_jobs.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"one worker, {args.n:,} events x {args.rounds} rounds: verify on {out['on']['events_per_s']:,.0f}/s, "
          f"off {out['off']['events_per_s']:,.0f}/s, on/off {out['on_over_off']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
