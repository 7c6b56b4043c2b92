"""What the versioned formats of intel.match.requests and intel.hit.candidates cost
(stream_jobs/internal.py): reading the dedupe stage's real match requests and the matcher's
real candidates with the decoders, against the plain orjson read the stages did before
(the baseline), alternating in one run; and writing them, against plain orjson of the same
dicts. Per operation (a match request holds many) and per candidate, in microseconds.

    .venv/bin/python -m bench.bench_internal_formats [--count 20000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.bench_border_duplicates import BATCH, PARTITIONS, messages
from schemas.normalise import normalise_identifier
from schemas.regions import load_regions
from stream_jobs.internal import decode_hit_candidate, decode_match_request, encode_match_request
from stream_jobs.stages import CANDIDATE_TOPIC, MATCH_TOPIC, DedupeStage, Incoming, MatchStage
from stream_jobs.state import MemoryState, dumps, loads


def internal_records(count: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """The match requests and hit candidates the first two stages write for the simulator's traffic."""
    regions = load_regions()
    dedupe = DedupeStage(decode=json.loads, normalise=normalise_identifier, state=MemoryState(), partitions=PARTITIONS,
                         window_ms=7 * 86_400_000)
    match = MatchStage(state=MemoryState(), partitions=PARTITIONS, is_within=regions.is_within,
                       case_window_ms=30 * 86_400_000, decode=json.loads)
    msgs = messages(count, seed, True)
    requests, candidates = [], []
    for i in range(0, len(msgs), BATCH):
        out = dedupe.process(msgs[i:i + BATCH], 0).outputs
        dedupe.state.commit()
        reqs = [o for o in out if o.topic == MATCH_TOPIC]
        requests += [o.value for o in reqs]
        res = match.process([Incoming(MATCH_TOPIC, o.partition, 0, None, o.value) for o in reqs], 0)
        match.state.commit()
        candidates += [o.value for o in res.outputs if o.topic == CANDIDATE_TOPIC]
    return requests, candidates


def timed(fn, values) -> float:
    started = time.perf_counter()
    for v in values:
        fn(v)
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)
    requests, candidates = internal_records(args.count, args.seed)
    decoded = [decode_match_request(r) for r in requests]
    plain = [loads(r) for r in requests]
    ops = sum(len(d.ops) for d in decoded)
    runs: dict[str, list[float]] = {k: [] for k in ("read request: orjson (baseline)", "read request: decode_match_request",
                                                    "write request: orjson (baseline)", "write request: encode_match_request",
                                                    "read candidate: orjson (baseline)", "read candidate: decode_hit_candidate")}
    for _ in range(args.rounds):  # alternating, so load on the machine falls on both
        runs["read request: orjson (baseline)"].append(timed(loads, requests) / ops)
        runs["read request: decode_match_request"].append(timed(decode_match_request, requests) / ops)
        runs["write request: orjson (baseline)"].append(
            timed(lambda d: dumps({"events": d["events"], "ops": d["ops"]}), plain) / ops)
        runs["write request: encode_match_request"].append(timed(encode_match_request, decoded) / ops)
        runs["read candidate: orjson (baseline)"].append(timed(loads, candidates) / len(candidates))
        runs["read candidate: decode_hit_candidate"].append(timed(decode_hit_candidate, candidates) / len(candidates))
    assert [decode_match_request(encode_match_request(d)).ops for d in decoded] == [d.ops for d in decoded]
    print(json.dumps({"match_requests": len(requests), "operations": ops, "candidates": len(candidates),
                      "median_us": {k: round(statistics.median(v) * 1e6, 3) for k, v in runs.items()},
                      "runs_us": {k: [round(x * 1e6, 3) for x in v] for k, v in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
