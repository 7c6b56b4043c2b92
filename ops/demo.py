"""`make demo`: the whole story, live.

Stack up (Kafka, registry, ClickHouse, stream jobs, sink, gateway), the demo identities
seeded, the simulator publishing several regions' traffic, Hebei's command center logged in
and following its feed live for about a minute, a Jiangsu analyst's queries (what it sees
and what it is refused), an auditor reading the refusals, and where to go on from there.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from ops.cli import main as intelbus
from ops.settings import REPO_ROOT

HITS_BY_REGION = ("SELECT owner_region, hit_region, count() AS hits FROM hits GROUP BY owner_region, hit_region "
                  "ORDER BY hits DESC LIMIT 6")
FEED_SECONDS = int(os.environ.get("INTELBUS_DEMO_SECONDS", "60"))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run_cli(argv: list[str]) -> int:
    print(f"$ intelbus {' '.join(argv)}", flush=True)
    return intelbus(argv)


def show_acls() -> None:
    """Who may read and write which topics, one line per principal (`intelbus acls list` has every rule)."""
    from ops.acls import load_acls

    print("$ intelbus acls list      # summarised: principal, topics it may read, topics it may write", flush=True)
    plan = load_acls()
    for name in plan.principals:
        mine = [b for b in plan.bindings if b.principal == f"User:{name}" and b.resource == "TOPIC"]
        reads = sorted({b.name + ("*" if b.pattern == "PREFIXED" else "") for b in mine if b.operation == "READ"})
        writes = sorted({b.name + ("*" if b.pattern == "PREFIXED" else "") for b in mine if b.operation == "WRITE"})
        print(f"  {name:<18} reads {', '.join(reads) or '-'}\n  {'':<18} writes {', '.join(writes) or '-'}")


def show_anonymous_refused(settings) -> None:
    """What a client without credentials gets from the broker, and where the broker writes it down."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    print(f"$ (a Kafka client with no credentials asks {settings.kafka} for its topics)", flush=True)
    try:
        AdminClient({"bootstrap.servers": settings.kafka, "log_level": 0}).list_topics(timeout=3)
        print("  answered: the broker is not checking credentials!", flush=True)
    except KafkaException as exc:
        print(f"  refused: the client got no answer ({exc.args[0].str()})", flush=True)
        log = settings.stack_path / "logs" / "kafka-authorizer.log"
        time.sleep(0.5)
        lines = [l for l in log.read_text(errors="replace").splitlines() if "Failed authentication" in l] \
            if log.exists() else []
        if lines:
            print(f"  the broker wrote down ({log}):\n  {lines[-1][:220]}", flush=True)


def login_as(name: str, passwords: dict) -> None:
    """Log in as a demo identity (what `intelbus login NAME` does after the password prompt)."""
    from gateway.client import GatewayClient, SavedLogin, save_login
    from ops.settings import REPO_ROOT, load_settings

    settings = load_settings()
    path = REPO_ROOT / ".stack" / "identity" / "demo-logins" / f"{name}.json"
    os.environ["INTELBUS_CREDENTIALS"] = str(path)
    print(f"$ intelbus login {name}        # password from .stack/identity/demo-passwords.json", flush=True)
    with GatewayClient(settings.gateway_url) as client:
        out = client.post("/api/v1/login", {"name": name, "password": passwords[name]})
    save_login(SavedLogin(settings.gateway_url, out["token"], name, out["expires_at"]), path)
    run_cli(["whoami"])


def main() -> int:
    import json

    from identity.access_cli import seed
    from identity.store import PrincipalStore, store_path
    from ops.settings import load_settings

    say("Starting the local stack (first run downloads Kafka and the registry)")
    if run_cli(["up"]) != 0:
        print("demo stopped: the stack is not healthy (see `intelbus status`)", file=sys.stderr)
        return 1
    say("The demo's identities (ops/identity/demo-principals.yaml): who may log in, and as what")
    print("$ intelbus access seed ops/identity/demo-principals.yaml", flush=True)
    settings = load_settings()
    store = PrincipalStore(store_path(settings))
    passwords_file = store.path.parent / "demo-passwords.json"
    try:
        passwords = seed(store, REPO_ROOT / "ops" / "identity" / "demo-principals.yaml", passwords_file, actor="make-demo")
        from identity.access_cli import flush_to_audit

        flush_to_audit(store)
    finally:
        store.close()
    run_cli(["access", "list"])
    print(f"passwords (demo only): {passwords_file}")
    for name, password in passwords.items():
        print(f"  intelbus login {name:<11} # password {password}")

    say("Trust on the wire: every process logs in to Kafka as its own principal (ops/acls.yaml)")
    show_acls()
    show_anonymous_refused(settings)

    seed_ = random.randrange(1000, 10**6)
    say(f"Simulating regional traffic for {FEED_SECONDS + 10}s at 300 records/s (seed {seed_})")
    simulator = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "simulate", "--rate", "300", "--duration", str(FEED_SECONDS + 10),
         "--seed", str(seed_), "--ref-prefix", f"D{seed_}-", "--quiet"],
        stdout=subprocess.DEVNULL)
    say("Hebei's command center logs in")
    login_as("hb-cc", passwords)
    say(f"hb-cc follows its feed for {FEED_SECONDS}s: hits for Hebei and its cities and counties, as they happen")
    print("$ intelbus feed --follow --fresh --since 1m --purpose 'make demo'", flush=True)
    # --fresh: a second `make demo` shows the traffic of this one, not the backlog since the last
    feed = subprocess.Popen([sys.executable, "-m", "ops.cli", "feed", "--follow", "--fresh", "--since", "1m",
                             "--purpose", "make demo"])
    try:
        time.sleep(FEED_SECONDS)
    finally:
        feed.send_signal(signal.SIGINT)
        feed.wait(timeout=30)
    say("What hb-cc is refused: Beijing's feed, and ad-hoc SQL (a command center is not an analyst)")
    run_cli(["feed", "--region", "110000", "--since", "5m"])
    run_cli(["sql", "SELECT count() FROM events"])
    simulator.wait(timeout=120)
    time.sleep(3)  # let the sink's last batch land

    say("A Jiangsu analyst logs in: it sees Jiangsu's events and the hits Jiangsu is part of, nothing else")
    login_as("js-analyst", passwords)
    for argv in (["sql", "SELECT source_region, count() AS events FROM events GROUP BY source_region "
                         "ORDER BY events DESC LIMIT 5", "--purpose", "make demo"],
                 ["sql", HITS_BY_REGION, "--purpose", "make demo"]):
        run_cli(argv)
        print()
    say("What the Jiangsu analyst is refused")
    for argv in (["sql", "SELECT count() FROM events", "--region", "130000"],
                 ["sql", "SELECT * FROM remote('127.0.0.1', intelbus.events)"],
                 ["sql", "SELECT name FROM system.users"],
                 ["query", "trail", "--id", "130822198501011230", "--user", "hb-analyst", "--purpose", "x"]):
        run_cli(argv)
        print()
    say("Hebei's analyst on the same history")
    login_as("hb-analyst", passwords)
    for argv in (["sql", HITS_BY_REGION, "--purpose", "make demo"], ["query", "time-to-hit", "--purpose", "make demo"]):
        run_cli(argv)
        print()
    say("The auditor: every refusal above, with who, which agency and why")
    login_as("auditor", passwords)
    run_cli(["audit", "--outcome", "refused", "--limit", "8", "--purpose", "make demo"])
    os.environ.pop("INTELBUS_CREDENTIALS", None)
    say("Where to go on")
    print(f"  intelbus login NAME                          log in (demo passwords: {passwords_file})\n"
          "  intelbus whoami                              who you are and what you may see\n"
          "  intelbus feed --follow                       your agency's live feed\n"
          "  intelbus query --list                        the named analyst queries and their parameters\n"
          "  intelbus sql \"SELECT ...\" --purpose REF      read-only SQL, scoped to what you may see\n"
          f"  {settings.gateway_url + '/docs':<45}the gateway's API (OpenAPI)\n"
          "  intelbus status / intelbus down               the stack keeps running until you stop it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
