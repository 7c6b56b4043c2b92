"""`make demo`: the whole story, live.

Stack up (Kafka, registry, ClickHouse, stream jobs, sink), the simulator publishing several
regions' traffic, Hebei's command-center feed following live for about a minute, three
analyst queries, and where to go on from there.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from ops.cli import main as intelbus

FEED_SECONDS = int(os.environ.get("INTELBUS_DEMO_SECONDS", "60"))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run_cli(argv: list[str]) -> int:
    print(f"$ intelbus {' '.join(argv)}", flush=True)
    return intelbus(argv)


def main() -> int:
    say("Starting the local stack (first run downloads Kafka and the registry)")
    if run_cli(["up"]) != 0:
        print("demo stopped: the stack is not healthy (see `intelbus status`)", file=sys.stderr)
        return 1
    seed = random.randrange(1000, 10**6)
    say(f"Simulating regional traffic for {FEED_SECONDS + 10}s at 300 records/s (seed {seed})")
    simulator = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "simulate", "--rate", "300", "--duration", str(FEED_SECONDS + 10),
         "--seed", str(seed), "--ref-prefix", f"D{seed}-", "--quiet"],
        stdout=subprocess.DEVNULL)
    say(f"Hebei's command center (130000) follows its feed for {FEED_SECONDS}s: hits arrive as they happen")
    print("$ intelbus feed --region 130000 --follow --since 1m", flush=True)
    feed = subprocess.Popen([sys.executable, "-m", "ops.cli", "feed", "--region", "130000", "--follow", "--since", "1m",
                             "--user", "demo", "--purpose", "make demo"])
    try:
        time.sleep(FEED_SECONDS)
    finally:
        feed.send_signal(signal.SIGINT)
        feed.wait(timeout=30)
    simulator.wait(timeout=120)
    time.sleep(3)  # let the sink's last batch land
    say("Three analyst queries on the history in ClickHouse")
    os.environ["INTELBUS_OPERATOR"] = "1"
    for argv in (["query", "hits", "--region", "130000"],
                 ["query", "time-to-hit"],
                 ["query", "dead-letters", "--region", "130000"]):
        run_cli(argv)
        print()
    say("Where to go on")
    print("  intelbus feed --region 120119 --follow      a command center's live feed (Jizhou here)\n"
          "  intelbus query --list                        the named analyst queries and their parameters\n"
          "  intelbus sql \"SELECT ...\" --region CODE      read-only SQL, limited to what a region may see\n"
          "  http://127.0.0.1:8123                         ClickHouse HTTP, database intelbus, for analysts' tools\n"
          "  intelbus status / intelbus down               the stack keeps running until you stop it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
