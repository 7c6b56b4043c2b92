"""The `intelbus` command line: one entry, one subcommand per job.

Each subcommand lives in the package that owns it; this module only wires them up. The
command modules import their heavy dependencies inside the handlers, so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ops.install import Missing

# (name, one-line help, "module:function" that adds the arguments and returns the handler)
COMMANDS = [
    ("up", "start the local stack (Kafka, schema registry, ClickHouse, jobs, sink, gateway) in the background", "ops.commands:add_up"),
    ("down", "stop what `up` started; data stays (use --purge to delete .stack/)", "ops.commands:add_down"),
    ("status", "one line per component: up/down, address, pid, uptime (--json); exit 0 only if all healthy", "ops.commands:add_status"),
    ("supervise", "restart crashed components of the local stack with backoff (`up` starts it in the background)", "ops.supervise:add_supervise"),
    ("config", "print the effective settings and the environment variables that change them", "ops.commands:add_config"),
    ("install", "install what the local stack needs (apt packages, Kafka and registry from Maven Central)", "ops.commands:add_install"),
    ("acls", "who may do what on the broker: apply ops/acls.yaml's rules and SCRAM credentials, report drift", "ops.acls:add_acls"),
    ("topics", "create the topics declared in ops/topics.yaml and report drift (`topics apply`)", "ops.commands:add_topics"),
    ("schemas", "check the .avsc files' compatibility with git and the registry, or register them", "ops.commands:add_schemas"),
    ("publish", "publish a JSON Lines or CSV file of alerts, wanted-person updates or incidents", "producers.publish:add_publish"),
    ("simulate", "generate several regions' traffic onto the bus at a rate, with its ground truth", "producers.simulate:add_simulate"),
    ("sink", "write the unique events, hits and dead letters to ClickHouse (foreground, with logs)", "sinks.sink:add_sink"),
    ("migrate", "apply the ClickHouse migrations in sinks/migrations (idempotent)", "sinks.migrate:add_migrate"),
    ("login", "log in (name and password, or your identity provider's token); the token is kept for your OS user", "gateway.cli:add_login"),
    ("logout", "forget the saved token", "gateway.cli:add_logout"),
    ("whoami", "who you are logged in as, your agency, roles, clearance and what you may see", "gateway.cli:add_whoami"),
    ("query", "run a named analyst query (trail, hits, time-to-hit, ...; --list) through the gateway, scoped and audited", "gateway.cli:add_query"),
    ("sql", "run one read-only SQL statement on the history through the gateway, scoped and audited", "gateway.cli:add_sql"),
    ("feed", "your agency's feed of the hits and shared alerts it may see (--follow for live)", "gateway.cli:add_feed"),
    ("audit", "auditors: who read what, when, why, and what was refused", "gateway.cli:add_audit"),
    ("gateway", "run the gateway (people's one door: login, feed, queries, audit) in the foreground", "gateway.cli:add_gateway"),
    ("access", "operators: add, disable, reset, grant, revoke and list principals (persons and systems)", "identity.access_cli:add_access"),
    ("keys", "operators: create, rotate, revoke and list the systems' signing keys (proof of publisher on every record)", "identity.keys_cli:add_keys"),
    ("verify", "compare the bus's hits and events with a simulator's ground truth (recall, false hits)", "ops.verify:add_verify"),
    ("jobs", "run the stream jobs (dedupe, matcher, hits) in the foreground with logs", "stream_jobs.worker:add_jobs"),
    ("workflows", "run the workflow job (hit follow-up, requests, directives: deadlines, reminders, escalation) in the foreground", "stream_jobs.workflow_job:add_workflows"),
    ("hit", "follow a hit up: the sighting region reports (DETAINED, ...), the record's owner confirms", "gateway.workflow_cli:add_hit"),
    ("request", "assistance requests (协查): send, accept, answer, refuse, close, list your agency's queue", "gateway.workflow_cli:add_request"),
    ("directive", "directives (指令): issue to regions or zones, acknowledge, report done or cannot, status", "gateway.workflow_cli:add_directive"),
]

EPILOG = """\
Typical session:
  intelbus up                      start everything (safe to repeat)
  intelbus status                  is everything healthy?
  intelbus down                    stop it; `down --purge` also deletes the data

Every address comes from `intelbus config` (environment variables INTELBUS_*).
Run `intelbus COMMAND --help` for a command's options and examples.
"""


class _OneLinePerCommand(argparse.RawDescriptionHelpFormatter):
    """argparse measures subcommands at their parent's indent, so a name of nine letters or more
    ('workflows', 'directive') would go on a line of its own; room for fourteen."""

    def add_argument(self, action):
        super().add_argument(action)
        self._action_max_length = max(self._action_max_length, 18)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intelbus",
        description="intelbus: an event-streaming intelligence bus for cross-regional police cooperation.",
        epilog=EPILOG,
        # one line per command, however narrow the terminal
        formatter_class=lambda prog: _OneLinePerCommand(prog, max_help_position=24, width=200),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text, target in COMMANDS:
        module_name, func_name = target.split(":")
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        handler = getattr(importlib.import_module(module_name), func_name)(p)
        p.set_defaults(_handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._handler(args) or 0)
    except Missing as exc:
        print(f"intelbus {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"intelbus {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `intelbus feed ... | head`: the reader has seen enough
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
