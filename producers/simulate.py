"""`intelbus simulate`: several regions' traffic onto the bus, with its ground truth."""
from __future__ import annotations

import json
import sys
import time

EPILOG = """\
The simulator publishes, through RegionalProducer, what many regional systems would:
wanted-person listings (some with 15-digit IDs) and later arrests and cancellations,
watch alerts on plates, identity checks, hotel check-ins, traffic stops and cases, in
which wanted persons and watched plates turn up in other regions. It resends some
records (duplicates) and includes a few invalid ones (refused before the bus).

--truth FILE writes, as JSON Lines, every hit a correct bus must produce and a summary
line with the number of distinct events, duplicates and invalid records.
--out DIR writes the records as JSON Lines files per kind instead of publishing them.
Records are signed with --key-file, else INTELBUS_SIGNING_KEY_FILE (the local stack's key,
made by `intelbus up`, may publish for every region, as the simulator needs).

--workflow plays a seeded day of workflow traffic instead (producers/workflow_sim.py):
assistance requests and directives among agencies of Beijing, Tianjin and Hebei, sent through
the gateway's workflow API as principals of each agency (`<prefix>-<region>-<branch>`, made
in the stack's principal store), answered after lognormal delays, some late, some never.
The day is compressed by --workflow-scale against the deadlines of --workflow-policy (the
policy the bus's workflow job runs with); every answer is kept --workflow-margin of a step
clear of every deadline step, so the truth (--truth: every reminder, resend and escalation)
does not depend on timing jitter. `intelbus verify --truth` checks it.

Examples:
  intelbus simulate --count 100000 --rate 5000 --seed 7 --truth truth.jsonl
  intelbus simulate --rate 200 --duration 60
  INTELBUS_WORKFLOWS_FILE=seconds.yaml intelbus simulate --workflow --workflow-day 6 --truth wf.jsonl
"""


def add_simulate(p):
    p.add_argument("--rate", type=float, default=1000.0, help="records per second (default 1000; 0 = as fast as possible)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--count", type=int, help="records to publish (default 10000)")
    g.add_argument("--duration", type=float, help="seconds to run at --rate (count = rate x duration)")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same records and truth")
    p.add_argument("--truth", help="write the ground truth (expected hits, counts) to this JSON Lines file")
    p.add_argument("--out", help="write records to DIR/<kind>.jsonl instead of publishing")
    p.add_argument("--population", type=int, default=20_000, help="persons in the simulated population")
    p.add_argument("--wanted", type=int, default=150, help="wanted persons listed at the start")
    p.add_argument("--watches", type=int, default=80, help="watch alerts on plates")
    p.add_argument("--sighting-rate", type=float, default=0.03, help="share of checks carrying a wanted person")
    p.add_argument("--duplicate-rate", type=float, default=0.03, help="share of records resent")
    p.add_argument("--invalid-rate", type=float, default=0.002, help="share of invalid records")
    p.add_argument("--phase-pause", type=float, default=1.0,
                   help="seconds to pause between phases (listings / traffic / closings / traffic), default 1")
    p.add_argument("--settle", action="store_true",
                   help="before each new phase, wait until the stream jobs have read everything so far")
    p.add_argument("--ref-prefix", default="", help="prefix for every source_ref, to tell runs apart on one bus")
    p.add_argument("--key-file", metavar="FILE", help="sign with this key file (default: INTELBUS_SIGNING_KEY_FILE)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (default INTELBUS_METRICS_PORT_BASE + 30, "
                        "i.e. 9430; 0 = off)")
    w = p.add_argument_group("workflow traffic (--workflow)")
    w.add_argument("--workflow", action="store_true",
                   help="play a day of workflow traffic (requests, directives) through the gateway instead of records")
    w.add_argument("--workflow-scale", type=float, default=None,
                   help="real-world seconds per second of the play (3600: an hour passes in a second); default: "
                        "as many times as the policy's ROUTINE accept deadline is shorter than an hour")
    w.add_argument("--workflow-day", type=float, default=24.0, help="hours of the simulated day (default 24)")
    w.add_argument("--workflow-requests", type=int, default=30, help="assistance requests in the day (default 30)")
    w.add_argument("--workflow-directives", type=int, default=6, help="directives in the day (default 6)")
    w.add_argument("--workflow-margin", type=float, default=0.25,
                   help="share of the escalation step every answer keeps clear of every deadline step (default 0.25)")
    w.add_argument("--workflow-min-gap", type=float, default=3.0,
                   help="seconds between an item's consecutive actions (the gateway reads the stored history; default 3)")
    w.add_argument("--workflow-policy", metavar="FILE",
                   help="the deadlines the bus's workflow job runs with (default INTELBUS_WORKFLOWS_FILE, else "
                        "ops/workflows.yaml)")
    w.add_argument("--workflow-hits", type=int, default=6,
                   help="wanted-person and watch hits in the day (default 6): real listings and sightings are "
                        "published (signed as --key-file), the stack's jobs make the hits, the two regions follow "
                        "them up (source_refs start with --ref-prefix, default a random WF<hex>-)")
    w.add_argument("--workflow-topic", metavar="TOPIC",
                   help="read when each hit's follow-up opened from this topic (the workflow job's own output, "
                        "INTELBUS_WORKFLOWS_OUTPUT_TOPIC, as `verify --workflow-topic`) instead of the gateway's "
                        "history: the job whose events are checked has then opened it before anyone acts on it")
    w.add_argument("--workflow-sighting", choices=("incident", "alert"), default="incident",
                   help="what sights a hit's person or plate: an identity check or traffic stop (incident, default) "
                        "or the sighting region's WARNING alert (alert: intel.alert, for a bus whose jobs carry an "
                        "incident backlog)")
    w.add_argument("--workflow-open-timeout", type=float, default=60.0,
                   help="seconds a sighting may take to open its follow-up (default 60); then the hit is reported "
                        "as not sent and left out of the truth")
    w.add_argument("--workflow-joint-share", type=float, default=0.3,
                   help="share of the requests that ask for joint action (default 0.3)")
    w.add_argument("--workflow-prefix", default="wfsim", help="name prefix of the simulated principals (default wfsim)")
    w.add_argument("--workflow-plan", action="store_true", help="print the plan (no gateway, nothing sent)")
    p.epilog = EPILOG

    def run(args):
        if args.workflow or args.workflow_plan:
            return workflow_command(args)
        return simulate_command(args)

    return run


def config_from_args(args):
    from producers.simulator import SimConfig

    count = args.count if args.count is not None else (int(args.rate * args.duration) if args.duration else 10_000)
    return SimConfig(seed=args.seed, count=count, population=args.population, wanted=args.wanted,
                     watches=args.watches, sighting_rate=args.sighting_rate, duplicate_rate=args.duplicate_rate,
                     invalid_rate=args.invalid_rate, ref_prefix=args.ref_prefix)


def write_truth(path: str, sim) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(sim.truth.summary(), ensure_ascii=False) + "\n")
        for hit in sim.truth.hits.values():
            f.write(json.dumps(hit, ensure_ascii=False) + "\n")


def simulate_command(args) -> int:
    from producers.simulator import Simulation

    cfg = config_from_args(args)
    sim = Simulation(cfg)
    if args.out:
        return _write_files(sim, args)
    from producers.publish import _check_reachable
    from ops.settings import load_settings

    from producers.regional import resolve_signer
    from schemas.proof import KeyFileError

    settings = load_settings()
    try:
        signer = resolve_signer(getattr(args, "key_file", None), settings)
    except KeyFileError as exc:
        print(f"intelbus simulate: {exc}", file=sys.stderr)
        return 2
    cause = _check_reachable(settings)
    if cause:
        print(f"intelbus simulate: {cause}", file=sys.stderr)
        return 2
    from producers.metrics import serve

    serve(settings.metrics_port_base + 30 if args.metrics_port is None else args.metrics_port, "simulate")
    settle = None
    if args.settle:
        from ops.lag import JOBS_TOPICS, wait_for_zero_lag

        settle = lambda: wait_for_zero_lag(settings, "intelbus-jobs", JOBS_TOPICS, timeout=600)  # noqa: E731
    report = run_simulation(sim, rate=args.rate, settings=settings, phase_pause=args.phase_pause,
                            log=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)),
                            between_phases=settle, signer=signer if signer is not None else False)
    if args.truth:
        write_truth(args.truth, sim)
    print(json.dumps(report, ensure_ascii=False))
    return 0 if report["undelivered"] == 0 else 1


def run_simulation(sim, *, rate: float, settings=None, phase_pause: float = 1.0, log=None, producer=None,
                   between_phases=None, signer=None) -> dict:
    """Publish the simulation at `rate` records/s; returns counts. Rejected records go to the DLQ.

    between_phases(), when given, runs after each phase is delivered (e.g. wait until the
    stream jobs have read it), so that what the truth assumes known is known. signer: as
    RegionalProducer's (None: the setting signing_key_file), when it makes the producer.
    """
    from producers.regional import RegionalProducer
    from schemas.records import RecordError

    own = producer is None
    producer = producer or RegionalProducer(settings=settings, signer=signer)
    started = time.monotonic()
    sent = rejected = 0
    phase = None
    last_log = started
    for n, item in enumerate(sim.records()):
        if item.phase != phase:
            if phase is not None:
                producer.flush(30)
                if between_phases:
                    between_phases()
                if phase_pause > 0:
                    time.sleep(phase_pause)
            phase = item.phase
        try:
            producer.publish(item.kind, item.record)
            sent += 1
        except RecordError as exc:
            rejected += 1
            producer.send_dead_letter(stage="PUBLISH", source=f"simulator:{n + 1}", reason=exc.reason,
                                      raw=json.dumps(item.record, ensure_ascii=False).encode(), kind=item.kind,
                                      field=exc.field or None, source_region=item.record.get("source_region"))
        if rate > 0:
            ahead = (n + 1) / rate - (time.monotonic() - started)
            if ahead > 0.002:
                time.sleep(ahead)
        if log and time.monotonic() - last_log >= 5:
            last_log = time.monotonic()
            log(f"simulate: {n + 1:,} records, {sent / (last_log - started):,.0f}/s, phase {phase}")
    remaining = producer.flush(60)
    elapsed = time.monotonic() - started
    report = {"records": sent + rejected, "published": sent, "rejected": rejected,
              "undelivered": remaining + producer.stats.failed, "elapsed_s": round(elapsed, 3),
              "rate": round(sent / elapsed, 1) if elapsed else 0.0, **sim.truth.summary()}
    report.pop("type", None)
    if own:
        producer.close()
    return report


def _write_files(sim, args) -> int:
    import os

    os.makedirs(args.out, exist_ok=True)
    files = {k: open(os.path.join(args.out, f"{k}.jsonl"), "w", encoding="utf-8") for k in ("alert", "wanted", "incident")}
    try:
        for item in sim.records():
            files[item.kind].write(json.dumps(item.record, ensure_ascii=False) + "\n")
    finally:
        for f in files.values():
            f.close()
    if args.truth:
        write_truth(args.truth, sim)
    print(json.dumps(sim.truth.summary(), ensure_ascii=False))
    return 0


def workflow_config(args, policy):
    from producers.workflow_sim import WorkflowSimConfig, scale_of

    scale = args.workflow_scale if args.workflow_scale else scale_of(policy)
    return WorkflowSimConfig(seed=args.seed, scale=scale, day_hours=args.workflow_day,
                             requests=args.workflow_requests, directives=args.workflow_directives,
                             margin=args.workflow_margin, min_gap_s=args.workflow_min_gap, hits=args.workflow_hits,
                             joint_share=args.workflow_joint_share)


def workflow_command(args) -> int:
    """`intelbus simulate --workflow`: plan the day, play it through the gateway, wait out its last
    deadline step, write the truth."""
    from producers import workflow_sim as ws
    from schemas.regions import load_regions
    from workflows.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.workflow_policy)
    except (OSError, PolicyError) as exc:
        print(f"intelbus simulate: the workflow policy: {exc}", file=sys.stderr)
        return 2
    regions = load_regions()
    plan = ws.make_plan(workflow_config(args, policy), policy, regions)
    steps = ws.expected_steps(plan, policy, regions)
    if args.workflow_plan:
        for a in ws.actions(plan):
            print(json.dumps({"at_s": a.at_ms / 1000, "ref": a.ref, "verb": a.verb, "agency": a.agency}, ensure_ascii=False))
        if args.truth:
            ws.write_truth(args.truth, plan, steps, policy)
        print(json.dumps(ws.workflow_summary(plan, steps, policy), ensure_ascii=False))
        return 0
    import secrets

    from gateway.client import ClientError
    from ops.settings import load_settings

    settings = load_settings()
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    ref_prefix = args.ref_prefix or f"WF{secrets.token_hex(3).upper()}-"
    records = ws.attach_records(plan, ref_prefix, args.workflow_sighting)
    producer = None
    if records:
        from producers.regional import RegionalProducer, resolve_signer
        from schemas.proof import KeyFileError

        try:
            signer = resolve_signer(getattr(args, "key_file", None), settings)
        except KeyFileError as exc:
            print(f"intelbus simulate: {exc}", file=sys.stderr)
            return 2
        producer = RegionalProducer(settings=settings, signer=signer if signer is not None else False)

    def publisher(kind, record, now_ms):
        producer.publish(kind, record, now_ms=now_ms)
        producer.flush(10)  # the sighting's time is the play's anchor: out now, not after a linger

    openings = TopicOpenings(settings, args.workflow_topic) if records and args.workflow_topic else None
    pool = ws.PrincipalPool(settings, settings.gateway_url, prefix=args.workflow_prefix)
    try:
        pool.ensure(plan.agencies())
    except ClientError as exc:
        print(f"intelbus simulate: logging the simulated principals in at {settings.gateway_url}: {exc}", file=sys.stderr)
        return 2
    try:
        if log:
            log(f"simulate --workflow: {len(plan.items)} items ({len(records)} hits, records {ref_prefix}*), "
                f"{len(ws.actions(plan))} actions over {plan.end_ms / 1000:.0f}s; "
                f"{len(steps)} reminders/escalations expected")
        played = ws.play(plan, pool, log=log, records=records, publisher=publisher, opened=openings,
                         open_timeout_s=args.workflow_open_timeout)
    finally:
        pool.close()
        if openings is not None:
            openings.close()
        if producer is not None:
            producer.flush(30)
            producer.close()
    played["ref_prefix"] = ref_prefix
    # the truth of what was sent: refused actions are actions never taken
    plan = ws.as_played(plan, played)
    steps = ws.expected_steps(plan, policy, regions)
    last = max([played["started_ms"] + ws.s_abs(plan, s) for s in steps] + [played["started_ms"] + plan.end_ms])
    ws.wait_until(last + 2000)  # the last step has had its time (and a tick) before the truth is final
    if args.truth:
        ws.write_truth(args.truth, plan, steps, policy, played)
    report = ws.workflow_summary(plan, steps, policy, played)
    report.pop("type", None)
    print(json.dumps(report, ensure_ascii=False))
    for f in played["failed"][:10]:
        print(f"not sent: {json.dumps(f, ensure_ascii=False)}", file=sys.stderr)
    for f in played["slips"][:10]:
        print(f"may be off its time by the margin or more (intelbus verify checks it against the stored time): "
              f"{json.dumps(f, ensure_ascii=False)}", file=sys.stderr)
    unsent = [f for f in played["failed"] if not 400 <= int(f.get("status") or 0) < 500]
    return 0 if not unsent else 1


class TopicOpenings:
    """When each hit follow-up opened, from a workflow job's output topic (intel.workflow's Avro), read
    from the topic's end as it stands when made: `openings(hit_id, timeout_s)` -> the OPENED event's
    time (UTC ms) or None. One consumer in a thread of its own (the broker's admin credentials, as
    `intelbus verify --workflow-topic` reads)."""

    def __init__(self, settings, topic: str):
        import threading
        import uuid

        from confluent_kafka import Consumer, TopicPartition

        from ops.kafka_auth import ADMIN
        from schemas.wire import SchemaCodec

        self.codec = SchemaCodec(url=settings.registry_url)
        self.consumer = Consumer({**settings.kafka_config(ADMIN), "group.id": f"wfsim-openings-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        parts = []
        for p in meta.partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            parts.append(TopicPartition(topic, p, high))
        self.consumer.assign(parts)
        self.opened: dict[str, int] = {}
        self.seen = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._read, name="wfsim-openings", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopping:
            for msg in self.consumer.consume(500, 0.2):
                if msg.error():
                    continue
                try:
                    event = self.codec.decode(msg.value())
                except Exception:  # noqa: BLE001 - not an event of this schema: not an opening
                    continue
                if event.get("event_type") == "OPENED":
                    at = event["at"]
                    with self.seen:
                        self.opened.setdefault(event["item_id"], int(at.timestamp() * 1000) if hasattr(at, "timestamp")
                                               else int(at))
                        self.seen.notify_all()

    def __call__(self, hit_id: str, timeout_s: float) -> int | None:
        with self.seen:
            self.seen.wait_for(lambda: hit_id in self.opened, timeout=timeout_s)
            return self.opened.get(hit_id)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(10)
        self.consumer.close()
