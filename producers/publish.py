"""`intelbus publish`: a file of records onto the bus, with an answer for every line."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
PROGRESS_MIN_LINES = 5000
BATCH_LINES = 500  # records per POST /api/v1/events/{kind} (--via gateway)

EPILOG = """\
Input: JSON Lines (one record per line), or CSV with a header whose columns are field
paths (source_ref, occurred_at, location.region, persons.0.id_number, phones as 'a;b').
--region and --system fill source_region / source_system for records that lack them.

Every refused line is reported on stderr as FILE:LINE: FIELD: REASON and sent to intel.dlq
with the raw line; --strict refuses the whole file instead and sends nothing.

Publishing acts as the logged-in identity (`intelbus login`): it needs the integrator role,
and a record whose source_region is outside the regions that identity publishes for is
refused like any bad line (`intelbus whoami` lists them).

Two ways onto the bus (--via):
  gateway  (the default when you are logged in) the file goes to the gateway's
           POST /api/v1/events/<kind> in batches of 500 lines; the gateway validates,
           signs each record with your system's active key (`intelbus keys create
           <your login name> --region ...`), produces it and dead-letters refused lines.
           You hold no Kafka credentials and no key file. --key-file and --topic do not
           apply. A record repeated in another batch of the file is sent again and
           dropped by the bus as a duplicate (its event id is derived from the record).
  kafka    (the default when not logged in, or with --key-file or --topic) straight to Kafka as
           INTELBUS_KAFKA_USER, for systems that hold Kafka credentials: every record is
           signed (Kafka headers intelbus-key-id, intelbus-signature) with the key file of
           --key-file, else of INTELBUS_SIGNING_KEY_FILE (default <stack dir>/identity/
           keys/local.json, made by `intelbus up`); the bus refuses unsigned records and
           records for a region the key may not publish for. `intelbus keys` makes key files.
Both check every line by the same rules and report it the same way.

Exit codes: 0 all published; 1 some records refused or undelivered; 2 usage error,
refused by the gateway (login, role, signing key), or Kafka / schema registry / gateway
unreachable.

Examples:
  intelbus publish --kind incident --region 120119 --system kakou checks.jsonl
  intelbus publish --kind wanted --strict wanted.csv
  intelbus publish --via kafka --kind incident --key-file xl-ztry.key.json --region 130822 checks.jsonl
  cat alerts.jsonl | intelbus publish --kind alert -
"""


def add_publish(p):
    p.add_argument("--kind", required=True, choices=["alert", "wanted", "incident"], help="what the file holds")
    p.add_argument("--region", help="source_region for records without one (six-digit code, e.g. 120119)")
    p.add_argument("--system", help="source_system for records without one (your local system's name)")
    p.add_argument("--strict", action="store_true", help="refuse the whole file if any line is bad; send nothing")
    p.add_argument("--via", choices=["gateway", "kafka"], default=None,
                   help="through the gateway's HTTP ingest (default when logged in) or straight to Kafka")
    p.add_argument("--key-file", metavar="FILE",
                   help="--via kafka: sign with this key file (`intelbus keys create/rotate --out`); "
                        "default: INTELBUS_SIGNING_KEY_FILE")
    p.add_argument("--topic", help="--via kafka: publish to this topic instead of intel.<kind> (staging, benchmarks)")
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
    # --key-file and --topic only mean something straight to Kafka: given alone, they choose it
    via = getattr(args, "via", None) or ("kafka" if args.key_file or args.topic or not logged_in(settings) else "gateway")
    if via == "gateway":
        for flag, value in (("--key-file", args.key_file), ("--topic", args.topic)):
            if value:
                print(f"intelbus publish: {flag} applies to --via kafka only (through the gateway, your system's "
                      f"key signs and the records go to intel.{args.kind})", file=sys.stderr)
                return EXIT_USAGE
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig")
    except OSError as exc:
        print(f"intelbus publish: cannot read {name}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if via == "gateway":
        try:
            return publish_via_gateway(args, settings, name, stream)
        finally:
            if stream is not sys.stdin:
                stream.close()
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
    from schemas.wire import RegistryUnavailable

    try:  # the schema ids the run needs, cached while the registry answers: one lost mid-file costs nothing
        producer.prepare(args.kind)
    except RegistryUnavailable as exc:
        print(f"intelbus publish: {exc}; nothing sent", file=sys.stderr)
        producer.close()
        return EXIT_USAGE
    seen_ids: set[str] = set()
    staged: list = []  # --strict: (kind, valid) held back until the whole file is known good
    refused: list = []
    try:
        for line in read_lines(name, stream):
            summary.read += 1
            progress.update(summary.read)
            valid = check_line(args.kind, line, producer.validate, publisher, signer, is_within)
            if isinstance(valid, Refused):
                _refuse(producer, args, short, line, valid.field, valid.reason, summary, refused)
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


@dataclass(frozen=True)
class Refused:
    """A line that is not published: its number, the field at fault ('' for the whole line) and why."""
    line: int
    field: str
    reason: str

    def text(self, source: str) -> str:
        """FILE:LINE: FIELD: REASON, as `intelbus publish` prints it."""
        return f"{source}:{self.line}: {self.field}: {self.reason}" if self.field else f"{source}:{self.line}: {self.reason}"


def check_line(kind: str, line, validate, publisher: "Publisher", signer, is_within) -> dict | Refused:
    """The valid, normalised record of an input line, or why it is refused: the one rule for
    `intelbus publish` and the gateway's POST /api/v1/events/{kind}.

    validate: (kind, record) -> valid record or RecordError (RegionalProducer.validate);
    publisher: who publishes (Publisher: the regions the identity publishes for); signer: the
    SigningKey that will sign it, or None; is_within: RegionTable.is_within.
    """
    from schemas.records import RecordError

    if line.error is not None:
        return Refused(line.line_no, "", line.error)
    try:
        valid = validate(kind, line.record)
    except RecordError as exc:
        return Refused(line.line_no, exc.field, exc.reason)
    region = valid["source_region"]
    if not publisher.may_publish_for(region):
        return Refused(line.line_no, "source_region", f"{publisher.name} may not publish for {region} "
                                                      f"(publishes for {', '.join(sorted(publisher.regions)) or 'no region'})")
    if signer is not None and not signer.may_publish_for(region, is_within):
        return Refused(line.line_no, "source_region", f"key {signer.key_id} of system {signer.system} may publish for "
                                                      f"{signer.regions_text()}, not for {region} (the bus would refuse it)")
    return valid


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


# --- --via gateway: the file through POST /api/v1/events/{kind} ------------------------------

def logged_in(settings) -> bool:
    """A token to send: INTELBUS_TOKEN, or a saved login at this gateway (expired or not: the gateway says)."""
    from gateway.client import load_login

    if os.environ.get("INTELBUS_TOKEN", "").strip():
        return True
    saved = load_login()
    return saved is not None and saved.gateway.rstrip("/") == settings.gateway_url.rstrip("/")


@dataclass(frozen=True)
class Batch:
    """Consecutive physical lines of the file, holding up to BATCH_LINES records."""
    body: bytes
    content_type: str
    line_offset: int   # body line n is file line n + line_offset
    records: int       # non-blank lines (the CSV header not counted)


def batches(name: str, stream, size: int = BATCH_LINES):
    """The file cut into request bodies: NDJSON as it is, CSV with its header in front of every batch.

    Lines go as they are (blank and unparsable ones too): the gateway parses, numbers and
    dead-letters them, so a refused line keeps its file line number and its raw text."""
    import itertools

    from producers.inputs import detect_format

    first = stream.readline()
    if not first:
        return
    fmt = detect_format(name, first)
    numbered = enumerate(itertools.chain([first], stream), start=1)
    header = ""
    if fmt == "csv":
        header = next(numbered)[1].rstrip("\r\n") + "\n"
    pending: list[str] = []
    first_no = records = 0

    def cut() -> Batch:
        body = "".join(line if line.endswith("\n") else line + "\n" for line in pending)
        if fmt == "csv":
            return Batch((header + body).encode(), "text/csv", first_no - 2, records)
        return Batch(body.encode(), "application/x-ndjson", first_no - 1, records)

    for no, line in numbered:
        if records >= size and line.strip():
            yield cut()
            pending, records = [], 0
        if not pending:
            first_no = no
        pending.append(line)
        if line.strip():
            records += 1
    if records:
        yield cut()


def publish_via_gateway(args, settings, name: str, stream) -> int:
    """`intelbus publish --via gateway`: batches of BATCH_LINES to POST /api/v1/events/{kind}, the same
    per-line report (FILE:LINE: FIELD: REASON), summary and exit codes as straight to Kafka."""
    from gateway.cli import _client
    from gateway.client import ClientError

    short = name.rsplit("/", 1)[-1]
    summary = PublishSummary()
    started = time.monotonic()
    progress = Progress(None if args.file == "-" else _count_lines(args.file))
    params = {k: v for k, v in (("region", args.region), ("system", args.system), ("source", short)) if v}
    seen_ids: set[str] = set()
    try:
        with _client(settings) as client:
            if args.strict:  # a first pass that sends nothing: is every line good?
                import io

                text = stream.read()
                refused = []
                for batch in batches(name, io.StringIO(text)):
                    answer = _post(client, args.kind, batch, {**params, "dry_run": "true"})
                    summary.read += batch.records
                    refused += answer["refused"]
                    progress.update(summary.read)
                if refused:
                    for r in refused:
                        print(Refused(r["line"], r.get("field") or "", r["reason"]).text(short), file=sys.stderr)
                    summary.rejected = len(refused)
                    print(f"{short}: --strict: {len(refused)} bad line(s), nothing sent", file=sys.stderr)
                    progress.done()
                    summary.elapsed = time.monotonic() - started
                    print(summary.line())
                    return EXIT_REJECTED
                summary.read = 0
                stream = io.StringIO(text)
            for batch in batches(name, stream):
                summary.read += batch.records
                try:
                    answer = _post(client, args.kind, batch, params)
                except ClientError as exc:
                    if exc.status != 503:
                        raise
                    print(f"intelbus publish: {exc}", file=sys.stderr)
                    summary.undelivered += batch.records
                    continue
                for r in answer["refused"]:
                    print(Refused(r["line"], r.get("field") or "", r["reason"]).text(short), file=sys.stderr)
                summary.rejected += len(answer["refused"])
                summary.duplicates_in_file += answer.get("duplicates", 0)
                for event_id in answer["event_ids"]:
                    if event_id in seen_ids:
                        summary.duplicates_in_file += 1
                    else:
                        seen_ids.add(event_id)
                        summary.published += 1
                progress.update(summary.read)
    except ClientError as exc:
        progress.done()
        hint = (f" (the gateway at {settings.gateway_url} has no POST /api/v1/events/{args.kind}: an older gateway; "
                f"use --via kafka, or ask the operators to upgrade it)" if exc.status in (404, 405)
                and str(exc) in ("Not Found", "Method Not Allowed") else "")
        print(f"intelbus publish: {exc}{hint}", file=sys.stderr)
        if summary.published or summary.rejected:
            summary.elapsed = time.monotonic() - started
            print(summary.line())
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nintelbus publish: interrupted after line {summary.read}; what the gateway answered is on the bus",
              file=sys.stderr)
    progress.update(summary.read, force=True)
    progress.done()
    summary.elapsed = time.monotonic() - started
    print(summary.line())
    return EXIT_OK if summary.rejected == 0 and summary.undelivered == 0 else EXIT_REJECTED


def _post(client, kind: str, batch: Batch, params: dict) -> dict:
    """One batch; a 503 (Kafka did not confirm in time) is sent once more: the event ids are derived, so a
    record that did arrive the first time is dropped as a duplicate."""
    from gateway.client import ClientError

    for attempt in (1, 2):
        try:
            return client.ingest(kind, batch.body, batch.content_type,
                                 **{**params, "line_offset": batch.line_offset})
        except ClientError as exc:
            if exc.status != 503 or attempt == 2:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")
