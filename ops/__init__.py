"""Operations around the bus, in two layers.

The base, which the packages of the bus (producers, stream_jobs, sinks, gateway, identity,
workflows) may import: settings, metrics, Kafka and ClickHouse credentials and helpers, lag,
topics and ACLs. It imports nothing of those packages but `schemas`.

On top, the command line and the local stack, which wire every package together and are
imported by none: `TOP` below. tests/unit/test_layering.py holds both to this.
"""

TOP = ("cli", "commands", "bootstrap", "verify", "demo", "stack", "services", "components", "supervise",
       "processes", "keycloak")
