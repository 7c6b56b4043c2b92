"""What proof of publisher costs (issue "Trust on the wire"), measured offline in one run, no servers.

- the dedupe stage over the same encoded incidents with and without its verifier (HMAC-SHA256
  over each value, key lookup, region check), in alternating blocks so machine noise hits both;
  the baseline beside it is fastavro's decode alone over the same bytes;
- the producer's path per record: validate + encode (what RegionalProducer does) with and without
  `sign_headers`, alternating likewise.

    python -m bench.bench_proof [--n 60000] [--blocks 10]

Prints a table and writes bench/results/proof.json. The jobs' throughput on the real stack with
verification on and off (INTELBUS_VERIFY_RECORDS) is not in this file: see the closing note.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _encoded(n: int):
    from bench.bench_producer import incidents
    from schemas.catalog import parsed_schema
    from schemas.records import validate_record
    from schemas.wire import encode_with_id

    records = incidents(n)
    valid = [validate_record("incident", r) for r in records]
    parsed = parsed_schema("incident")
    values = [encode_with_id(1, parsed, v) for v in valid]
    keys = [f"{v['source_region']}/{v['source_system']}/{v['source_ref']}".encode() for v in valid]
    return records, valid, values, keys


def run(n: int = 60_000, blocks: int = 10) -> dict:
    from identity.keys import KeyStore
    from schemas.proof import ANY_REGION, sign_headers
    from schemas.regions import load_regions
    from schemas.normalise import normalise_identifier
    from schemas.records import validate_record
    from schemas.wire import RawDecoder, encode_with_id
    from schemas.catalog import input_topic, parsed_schema, schema_text
    from stream_jobs.proof import KeyringSource, make_verifier
    from stream_jobs.stages import DedupeStage, Incoming
    from stream_jobs.state import MemoryState

    import tempfile

    records, valid, values, keys = _encoded(n)
    with tempfile.TemporaryDirectory() as tmp:
        with KeyStore(Path(tmp) / "keys.db") as store:
            key = store.create("bench", [ANY_REGION])
        headers = [sign_headers(v, key) for v in values]
        regions = load_regions()
        verifier = make_verifier(KeyringSource(Path(tmp) / "keys.db"), regions.is_within)
        decode = RawDecoder(lambda schema_id: schema_text("incident"))
        size = n // blocks
        t_on = t_off = t_decode = 0.0
        for b in range(blocks):
            lo, hi = b * size, (b + 1) * size
            batch = [Incoming(input_topic("incident"), i % 6, i, keys[i], values[i], tuple(headers[i])) for i in range(lo, hi)]
            order = (True, False) if b % 2 == 0 else (False, True)
            for with_proof in order:
                stage = DedupeStage(decode=decode, normalise=normalise_identifier, state=MemoryState(), partitions=6,
                                    window_ms=7 * 86_400_000, verify=verifier if with_proof else None)
                started = time.perf_counter()
                for i in range(0, len(batch), 1000):
                    result = stage.process(batch[i:i + 1000], now_ms=1_795_000_000_000)
                    assert not result.dead_letters, result.dead_letters[:1]
                took = time.perf_counter() - started
                if with_proof:
                    t_on += took
                else:
                    t_off += took
            started = time.perf_counter()
            for i in range(lo, hi):
                decode(values[i])
            t_decode += time.perf_counter() - started
        counted = size * blocks
        # producer path: validate + encode, with and without signing, alternating blocks
        parsed = parsed_schema("incident")
        p_on = p_off = 0.0
        for b in range(blocks):
            lo, hi = b * size, (b + 1) * size
            for with_proof in ((True, False) if b % 2 == 0 else (False, True)):
                started = time.perf_counter()
                for r in records[lo:hi]:
                    value = encode_with_id(1, parsed, validate_record("incident", r))
                    if with_proof:
                        sign_headers(value, key)
                took = time.perf_counter() - started
                if with_proof:
                    p_on += took
                else:
                    p_off += took
    out = {
        "events": counted,
        "decode_only_per_s": counted / t_decode,
        "dedupe_without_proof_per_s": counted / t_off,
        "dedupe_with_proof_per_s": counted / t_on,
        "dedupe_proof_cost_us": (t_on - t_off) / counted * 1e6,
        "dedupe_with_over_without": t_off / t_on,
        "producer_without_sign_us": p_off / counted * 1e6,
        "producer_with_sign_us": p_on / counted * 1e6,
        "producer_with_over_without": p_off / p_on,
    }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--blocks", type=int, default=10)
    args = p.parse_args(argv)
    out = run(args.n, args.blocks)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "proof.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{out['events']:,} incidents, {args.blocks} alternating blocks")
    print(f"  fastavro decode alone (baseline)        {out['decode_only_per_s']:>10,.0f}/s")
    print(f"  dedupe stage without proof check        {out['dedupe_without_proof_per_s']:>10,.0f}/s")
    print(f"  dedupe stage with proof check           {out['dedupe_with_proof_per_s']:>10,.0f}/s  "
          f"(with/without {out['dedupe_with_over_without']:.3f}; {out['dedupe_proof_cost_us']:.1f} µs an event)")
    print(f"  producer validate+encode                {out['producer_without_sign_us']:>10.1f} µs/record")
    print(f"  producer validate+encode+sign           {out['producer_with_sign_us']:>10.1f} µs/record  "
          f"(with/without rate {out['producer_with_over_without']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
