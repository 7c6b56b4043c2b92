"""Producer benchmark (issue: schemas, producers, simulator): four paths over the same incidents.

(a) transport ceiling: raw confluent-kafka producing pre-encoded bytes;
(b) Avro ceiling: fastavro encode + raw produce of already-valid records, no validation;
(c) RegionalProducer: validate, normalise, encode, produce (the integrators' Python path);
(d) `intelbus publish` on the JSON Lines file (parse + (c) + reporting), as a subprocess,
    logged in as `bench-integrator` (bench.logins), which publishes for the provinces of the
    simulator's regions; the login happens before the clock starts, the gateway's `whoami`
    check and the per-record region check inside it are part of (d).
Each path produces to a fresh topic of its own, deleted afterwards.
"""
from __future__ import annotations

import cProfile
import json
import pstats
import subprocess
import sys
import time
import uuid
from pathlib import Path


def incidents(n: int, seed: int = 42) -> list[dict]:
    from producers.simulator import SimConfig, Simulation

    out: list[dict] = []
    sim = Simulation(SimConfig(seed=seed, count=int(n * 1.25) + 1000, duplicate_rate=0.0, invalid_rate=0.0,
                               wanted=0, watches=0, ref_prefix=f"B{seed}-"))
    for item in sim.records():
        if item.kind == "incident":
            out.append(item.record)
            if len(out) == n:
                break
    return out


def _topics(settings, names):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_config("intelbus-admin"))
    for f in admin.create_topics([NewTopic(n, num_partitions=settings.partitions, replication_factor=1) for n in names]).values():
        f.result(30)
    return admin


def _timed_produce(producer, topic, values, keys) -> float:
    started = time.perf_counter()
    for value, key in zip(values, keys):
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0
    return time.perf_counter() - started


def run(settings, n: int, workdir: Path) -> dict:
    import dataclasses

    # the bench writes its own topics: as the operator (a regional system may write only intel.*'s inputs)
    settings = dataclasses.replace(settings, kafka_user="intelbus-admin")
    from confluent_kafka import Producer

    from producers.regional import RegionalProducer, producer_config
    from schemas.catalog import parsed_schema
    from schemas.records import validate_record
    from schemas.wire import SchemaCodec, encode_with_id

    records = incidents(n)
    path = workdir / "incidents.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    valid = [validate_record("incident", r) for r in records]
    keys = [f"{v['source_region']}/{v['source_system']}/{v['source_ref']}".encode() for v in valid]
    run_id = uuid.uuid4().hex[:8]
    names = {p: f"bench.incident.{p}.{run_id}" for p in "abcd"}
    admin = _topics(settings, list(names.values()))
    codec = SchemaCodec(url=settings.registry_url)
    schema_id = codec.register(names["b"])
    parsed = parsed_schema("incident")
    result = {"records": n, "avg_avro_bytes": None}
    try:
        encoded = [encode_with_id(schema_id, parsed, v) for v in valid]
        result["avg_avro_bytes"] = round(sum(map(len, encoded)) / n, 1)
        seconds = _timed_produce(Producer(producer_config(settings)), names["a"], encoded, keys)
        result["a_transport_per_s"] = n / seconds

        # (b) and (c) alternate over blocks of the records, and each path's rate is its
        # records over its summed time: this machine is shared with the broker and the
        # stack's services, whose background bursts would otherwise fall on one path and
        # decide the ratio (two halves, best of each, still swung c/b from 0.54 to 0.66).
        block = max(1, min(50_000, n // 10))
        spans = [(lo, min(n, lo + block)) for lo in range(0, n, block)]
        rounds = {"b": [], "c": []}
        seconds_by_path = {"b": 0.0, "c": 0.0}
        regional = RegionalProducer(settings=settings, codec=codec, topic=names["c"])
        b_producer = Producer(producer_config(settings))
        for i, (lo, hi) in enumerate(spans):
            for which in ("b", "c") if i % 2 == 0 else ("c", "b"):
                if which == "b":
                    # a generator: the encoding happens inside the timed loop
                    seconds = _timed_produce(b_producer, names["b"],
                                             (encode_with_id(schema_id, parsed, v) for v in valid[lo:hi]), keys[lo:hi])
                else:
                    started = time.perf_counter()
                    for r in records[lo:hi]:
                        regional.publish("incident", r)
                    assert regional.flush(120) == 0
                    seconds = time.perf_counter() - started
                seconds_by_path[which] += seconds
                rounds[which].append((hi - lo) / seconds)
        regional.close()
        assert regional.stats.delivered == n, regional.stats
        result["b_avro_per_s"] = n / seconds_by_path["b"]
        result["c_regional_producer_per_s"] = n / seconds_by_path["c"]
        result["block_records"] = block
        result["rounds_per_s"] = {k: [round(x) for x in v] for k, v in rounds.items()}

        from bench.logins import integrator_env

        env = integrator_env(settings, {v["source_region"] for v in valid}, workdir / "logins")
        # the identity (login, publish regions) is the integrator's; on the broker it writes the bench's own
        # topic as the operator, like (b) and (c): a regional system may write only intel.*'s inputs
        env["INTELBUS_KAFKA_USER"] = settings.kafka_user
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ops.cli", "publish", "--kind", "incident", "--topic", names["d"], str(path)],
                              capture_output=True, text=True, timeout=3600, env=env)
        result["d_publish_cli_per_s"] = n / (time.perf_counter() - started)
        result["d_summary"] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
        if proc.returncode != 0:  # a refused login or region would otherwise pass for a fast run
            raise RuntimeError(f"intelbus publish exited {proc.returncode}: {proc.stderr.strip()[-500:]}")

        # Where (c)'s time goes, by wall clock (cProfile below inflates small calls):
        # validation and encoding timed alone over a sample; the rest is keys, produce, delivery.
        sample = records[: min(n, 50_000)]
        started = time.perf_counter()
        sample_valid = [validate_record("incident", r) for r in sample]
        validate_us = (time.perf_counter() - started) / len(sample) * 1e6
        started = time.perf_counter()
        for v in sample_valid:
            encode_with_id(schema_id, parsed, v)
        encode_us = (time.perf_counter() - started) / len(sample) * 1e6
        c_us = 1e6 / result["c_regional_producer_per_s"]
        result["c_split_us"] = {"validate": round(validate_us, 1), "encode": round(encode_us, 1),
                                "key_produce_delivery": round(c_us - validate_us - encode_us, 1), "total": round(c_us, 1)}

        profiler = cProfile.Profile()
        regional = RegionalProducer(settings=settings, codec=codec, topic=names["c"])
        profiler.enable()
        for r in sample:
            regional.publish("incident", r)
        profiler.disable()
        regional.close()
        stats = pstats.Stats(profiler)
        total = sum(v[2] for v in stats.stats.values())
        top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
        result["c_profile_self_time_share"] = {f"{k[2]} ({Path(k[0]).name}:{k[1]})": round(v[2] / total, 3) for k, v in top}
    finally:
        for f in admin.delete_topics(list(names.values())).values():
            try:
                f.result(30)
            except Exception:
                pass
    result["c_over_b"] = result["c_regional_producer_per_s"] / result["b_avro_per_s"]
    result["b_over_a"] = result["b_avro_per_s"] / result["a_transport_per_s"]
    result["d_over_c"] = result["d_publish_cli_per_s"] / result["c_regional_producer_per_s"]
    return result
