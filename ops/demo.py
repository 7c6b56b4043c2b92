"""`make demo`: bring the stack up and show the bus working."""
from __future__ import annotations

import sys

from ops.cli import main as intelbus


def main() -> int:
    steps = [["up"], ["status"]]
    for argv in steps:
        print(f"\n$ intelbus {' '.join(argv)}", flush=True)
        rc = intelbus(argv)
        if rc != 0:
            print(f"demo stopped: `intelbus {' '.join(argv)}` exited {rc}", file=sys.stderr)
            return rc
    print("\nThe stack keeps running; `intelbus down` stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
