"""`intelbus publish`: a file of records onto the bus, with an answer for every line."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
PROGRESS_MIN_LINES = 5000

EPILOG = """\
Input: JSON Lines (one record per line), or CSV with a header whose columns are field
paths (source_ref, occurred_at, location.region, persons.0.id_number, phones as 'a;b').
--region and --system fill source_region / source_system for records that lack them.

Every refused line is reported on stderr as FILE:LINE: FIELD: REASON and sent to intel.dlq
with the raw line; --strict refuses the whole file instead and sends nothing.

Publishing acts as the logged-in identity (`intelbus login`): it needs the integrator role,
and a record whose source_region is outside the regions that identity publishes for is
refused like any bad line (`intelbus whoami` lists them).

Every record is signed (Kafka headers intelbus-key-id, intelbus-signature) with the key
file of --key-file, else of INTELBUS_SIGNING_KEY_FILE (default <stack dir>/identity/keys/
local.json, made by `intelbus up`); the bus refuses unsigned records and records for a
region the key may not publish for. `intelbus keys` makes and rotates key files.

Exit codes: 0 all published; 1 some records refused or undelivered; 2 usage error or
Kafka / schema registry unreachable.

Examples:
  intelbus publish --kind incident --region 120119 --system kakou checks.jsonl
  intelbus publish --kind wanted --strict wanted.csv
  intelbus publish --kind incident --key-file xl-ztry.key.json --region 130822 checks.jsonl
  cat alerts.jsonl | intelbus publish --kind alert -
"""


def add_publish(p):
    p.add_argument("--kind", required=True, choices=["alert", "wanted", "incident"], help="what the file holds")
    p.add_argument("--region", help="source_region for records without one (six-digit code, e.g. 120119)")
    p.add_argument("--system", help="source_system for records without one (your local system's name)")
    p.add_argument("--strict", action="store_true", help="refuse the whole file if any line is bad; send nothing")
    p.add_argument("--key-file", metavar="FILE",
                   help="sign with this key file (`intelbus keys create/rotate --out`); default: INTELBUS_SIGNING_KEY_FILE")
    p.add_argument("--topic", help="publish to this topic instead of intel.<kind> (staging, benchmarks)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT while publishing "
                        "(default INTELBUS_METRICS_PORT_BASE + 31, i.e. 9431; 0 = off)")
    p.add_argument("file", help="a .jsonl or .csv file, or - for standard input")
    p.epilog = EPILOG

    def run(args):
        return publish_command(args)

    return run


@dataclass
class PublishSummary:
    read: int = 0
    published: int = 0
    rejected: int = 0
    duplicates_in_file: int = 0
    undelivered: int = 0
    elapsed: float = 0.0

    def line(self) -> str:
        rate = self.published / self.elapsed if self.elapsed > 0 else 0.0
        extra = f", undelivered {self.undelivered}" if self.undelivered else ""
        return (f"read {self.read}, published {self.published}, rejected {self.rejected}, "
                f"duplicates-in-file {self.duplicates_in_file}{extra}, elapsed {self.elapsed:.2f}s, rate {rate:,.0f}/s")


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total_hint: int | None, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty() and (total_hint is None or total_hint >= PROGRESS_MIN_LINES)
        self.total = total_hint
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        if self.total:
            width = 30
            filled = int(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {done:,}/{self.total:,} lines")
        else:
            self.stream.write(f"\r{done:,} lines")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def publish_command(args) -> int:
    from ops.settings import load_settings
    from producers.inputs import read_lines
    from schemas.records import RecordError
    from schemas.regions import validate_region_code

    settings = load_settings()
    name = "<stdin>" if args.file == "-" else args.file
    for label, code in (("--region", args.region),):
        if code:
            try:
                validate_region_code(code)
            except ValueError as exc:
                print(f"intelbus publish: {label} {code}: {exc}", file=sys.stderr)
                return EXIT_USAGE
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig")
    except OSError as exc:
        print(f"intelbus publish: cannot read {name}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        publisher = _publisher(settings, args.region)
    except PermissionError as exc:
        print(f"intelbus publish: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from producers.regional import resolve_signer
    from schemas.proof import KeyFileError

    try:  # a named key file must be usable; a missing default one only warns (RegionalProducer)
        signer = resolve_signer(args.key_file, settings)
    except KeyFileError as exc:
        print(f"intelbus publish: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from schemas.regions import load_regions

    is_within = load_regions().is_within
    if signer is not None and args.region and not signer.may_publish_for(args.region, is_within):
        print(f"intelbus publish: key {signer.key_id} of system {signer.system} may publish for {signer.regions_text()}, "
              f"not for {args.region} (--key-file, or INTELBUS_SIGNING_KEY_FILE)", file=sys.stderr)
        return EXIT_USAGE
    unreachable = _check_reachable(settings)
    if unreachable:
        print(f"intelbus publish: {unreachable}", file=sys.stderr)
        return EXIT_USAGE

    from producers.metrics import serve
    from producers.regional import RegionalProducer

    serve(settings.metrics_port_base + 31 if args.metrics_port is None else args.metrics_port, "publish")
    summary = PublishSummary()
    started = time.monotonic()
    progress = Progress(None if args.file == "-" else _count_lines(args.file))
    producer = RegionalProducer(region=args.region, system=args.system, settings=settings, topic=args.topic,
                                signer=signer if signer is not None else False)
    short = name.rsplit("/", 1)[-1]
    seen_ids: set[str] = set()
    staged: list = []  # --strict: (kind, valid) held back until the whole file is known good
    refused: list = []
    try:
        for line in read_lines(name, stream):
            summary.read += 1
            progress.update(summary.read)
            if line.error is not None:
                _refuse(producer, args, short, line, "", line.error, summary, refused)
                continue
            try:
                valid = producer.validate(args.kind, line.record)
            except RecordError as exc:
                _refuse(producer, args, short, line, exc.field, exc.reason, summary, refused)
                continue
            if not publisher.may_publish_for(valid["source_region"]):
                _refuse(producer, args, short, line, "source_region",
                        f"{publisher.name} may not publish for {valid['source_region']} "
                        f"(publishes for {', '.join(sorted(publisher.regions))})", summary, refused)
                continue
            if signer is not None and not signer.may_publish_for(valid["source_region"], is_within):
                _refuse(producer, args, short, line, "source_region",
                        f"key {signer.key_id} of system {signer.system} may publish for {signer.regions_text()}, "
                        f"not for {valid['source_region']} (the bus would refuse it)", summary, refused)
                continue
            if valid["event_id"] in seen_ids:
                summary.duplicates_in_file += 1
                continue
            seen_ids.add(valid["event_id"])
            if args.strict:
                staged.append(valid)
            else:
                producer.publish_valid(args.kind, valid)
                summary.published += 1
        if args.strict:
            if refused:
                print(f"{short}: --strict: {len(refused)} bad line(s), nothing sent", file=sys.stderr)
            else:
                for valid in staged:
                    producer.publish_valid(args.kind, valid)
                    summary.published += 1
    except KeyboardInterrupt:
        print(f"\nintelbus publish: interrupted at line {summary.read}; flushing what was accepted", file=sys.stderr)
    finally:
        progress.update(summary.read, force=True)
        progress.done()
        remaining = producer.flush(60)
        summary.undelivered = producer.stats.failed + remaining
        summary.published -= min(summary.published, producer.stats.failed)
        summary.elapsed = time.monotonic() - started
        if stream is not sys.stdin:
            stream.close()
    for error in producer.stats.errors[:5]:
        print(f"intelbus publish: delivery failed: {error}", file=sys.stderr)
    print(summary.line())
    return EXIT_OK if summary.rejected == 0 and summary.undelivered == 0 else EXIT_REJECTED


def _refuse(producer, args, short, line, field, reason, summary, refused) -> None:
    location = f"{short}:{line.line_no}"
    print(f"{location}: {field}: {reason}" if field else f"{location}: {reason}", file=sys.stderr)
    summary.rejected += 1
    refused.append(line.line_no)
    if not args.strict:  # --strict sends nothing at all, dead letters included
        producer.send_dead_letter(stage="PUBLISH", source=location, reason=reason, raw=line.raw.encode(),
                                  kind=args.kind, field=field or None)


@dataclass(frozen=True)
class Publisher:
    """The logged-in identity as the gateway describes it: may it publish, and for which regions."""
    name: str
    regions: frozenset[str]

    def may_publish_for(self, region: str) -> bool:
        from schemas.regions import load_regions

        table = load_regions()
        return any(table.is_within(region, r) for r in self.regions)


def _publisher(settings, region: str | None) -> Publisher:
    """Who publishes, as the gateway verified the saved token; PermissionError saying what is missing."""
    from gateway.cli import _client
    from gateway.client import ClientError

    with _client(settings) as client:
        try:
            me = client.get("/api/v1/whoami")
        except ClientError as exc:
            raise PermissionError(str(exc)) from None
    if "publish" not in me["may"]:
        raise PermissionError(f"role integrator required to publish ({me['name']} holds {', '.join(me['roles']) or 'no role'})")
    publisher = Publisher(me["name"], frozenset(me["publishes_for"]))
    if region and not publisher.may_publish_for(region):
        raise PermissionError(f"not entitled to publish for region {region}: {me['name']} publishes for "
                              f"{', '.join(me['publishes_for']) or 'no region'}")
    return publisher


def _check_reachable(settings) -> str | None:
    """A one-line cause if Kafka or the schema registry does not answer."""
    import urllib.request

    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({**settings.kafka_config(settings.kafka_user), "log_level": 0}).list_topics(timeout=5)
    except Exception as exc:
        return f"cannot reach Kafka at {settings.kafka}: {exc} (is the stack up? `intelbus up`)"
    try:
        urllib.request.urlopen(settings.registry_url.rstrip("/") + "/subjects", timeout=5).close()
    except Exception as exc:
        return f"cannot reach the schema registry at {settings.registry_url}: {exc}"
    return None
