"""bench.logins (the benchmarks' principals) and bench.bench_identity's pure parts; the tagged
population and the filters it measures on chDB."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.bench_identity import markdown_rows, ratio, rotation, summary, tag_predicates  # noqa: E402
from bench.logins import analyst_name, covering_provinces, ensure_principal  # noqa: E402


def test_summary_and_ratio():
    s = summary([float(v) for v in range(1, 101)])
    assert s == {"n": 100, "p50_ms": 50.5, "p99_ms": 99.0, "mean_ms": 50.5, "max_ms": 100.0}
    assert summary([]) is None
    assert ratio({"p50_ms": 30.0}, {"p50_ms": 20.0}) == 1.5
    assert ratio({"p99_ms": 9.0, "p50_ms": 1}, {"p99_ms": 3.0, "p50_ms": 1}, "p99_ms") == 3.0
    assert ratio(None, {"p50_ms": 1.0}) is None and ratio({"p50_ms": 1.0}, {"p50_ms": 0}) is None


def test_rotation_puts_each_path_first_in_turn():
    orders = [rotation(i) for i in range(6)]
    assert orders[:3] == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")] and orders[3:] == orders[:3]
    for position in range(3):
        assert sorted(o[position] for o in orders[:3]) == ["a", "b", "c"]


def test_covering_provinces_of_the_simulators_regions():
    from producers.simulator import DEFAULT_REGIONS

    assert covering_provinces(DEFAULT_REGIONS) == ["110000", "120000", "130000", "320000", "410000", "430000", "440000"]
    assert covering_provinces(["130822", "130000"]) == ["130000"]


def test_analyst_names():
    assert analyst_name("130000") == "bench-analyst-130000"
    assert analyst_name("130000", "SECRET") == "bench-analyst-130000-secret"


def test_ensure_principal_is_idempotent_and_only_widens_what_is_missing(tmp_path):
    from identity.store import PrincipalStore

    store = PrincipalStore(tmp_path / "identity" / "principals.db")
    try:
        first = ensure_principal(store, "bench-integrator", kind="system", region="110000", roles=["integrator"],
                                 publish_regions=["110000", "130000"])
        assert store.authenticate("bench-integrator", first).publish_regions == {"110000", "130000"}
        # again, with another region needed: granted; a new password, the old one no longer works
        second = ensure_principal(store, "bench-integrator", kind="system", region="110000", roles=["integrator"],
                                  publish_regions=["440000"])
        assert second != first
        p = store.authenticate("bench-integrator", second)
        assert p.publish_regions == {"110000", "130000", "440000"} and p.roles == {"integrator"}
        with pytest.raises(Exception):
            store.authenticate("bench-integrator", first)
        # a disabled one is enabled again
        store.set_disabled(actor="t", name="bench-integrator", disabled=True)
        third = ensure_principal(store, "bench-integrator", kind="system", region="110000", roles=["integrator"])
        assert not store.authenticate("bench-integrator", third).disabled
        actions = [r[0] for r in store.db.execute("SELECT action FROM changes WHERE principal = 'bench-integrator' "
                                                  "ORDER BY seq").fetchall()]
        assert actions == ["add", "grant", "reset", "disable", "enable", "reset"]
        # a person analyst, and a clash of kinds refused rather than silently changed
        ensure_principal(store, "bench-analyst-130000", kind="person", region="130000", branch="INTELLIGENCE",
                         roles=["analyst"])
        with pytest.raises(RuntimeError, match="exists as a person"):
            ensure_principal(store, "bench-analyst-130000", kind="system", region="130000", roles=["analyst"])
    finally:
        store.close()


def _result():
    s = {"n": 10, "p50_ms": 20.0, "p99_ms": 40.0, "mean_ms": 22.0, "max_ms": 41.0}
    t = {k: dict(s) for k in ("a", "b", "c", "c_server_query", "d")}
    f = {"items": 12, "messages": 30, "seeded": True, "gateway_first_byte": s, "gateway_headers": s,
         "gateway_end": s, "raw_end": s, "raw_first": None}
    return {"trail": t, "feed": f, "population": {"events": 1_000_000, "event_subjects": 1_500_000},
            "principal": "bench-analyst-130000", "view": "130000", "clearance": "INTERNAL", "identifiers": 100,
            "ratios": {"b_over_a": 1.1, "c_over_a": 2.5, "d_over_a": None, "feed_over_raw": 1.75}}


def test_markdown_rows_follow_the_results_table():
    rows = markdown_rows(_result())
    assert len(rows) == 5 and all(r.startswith("| identity: ") and r.count(" | ") == 3 for r in rows)
    assert "1,000,000 events" in rows[0] and "| 1.10 |" in rows[1] and "| 2.50 |" in rows[2] and "| n/a |" in rows[3]
    assert "simulator run first" in rows[4] and "first message n/a" in rows[4]


def test_run_markdown_includes_the_identity_rows():
    from bench.run import markdown

    machine = {"cores": 2, "memory_gib": 1.0, "python": "3", "commit": "x", "at": "now", "versions": {}}
    text = markdown({"machine": machine, "quick": True, "identity": _result()})
    assert text.count("| identity: ") == 5


def test_tagged_population_and_the_measured_filters_on_chdb(tmp_path):
    """The BI population is told apart by its tag predicates; unfiltered and filtered trails as bench_identity runs them."""
    pytest.importorskip("chdb")
    from bench.bench_trail import chunks, events_insert_sql, region_codes, region_scope, subjects_insert_sql
    from gateway.history import UNSCOPED, identifier_forms, in_database, named_query_sql
    from schemas.regions import load_regions
    from sinks.engine import ChdbExecutor
    from sinks.migrate import apply_migrations
    from sinks.queries import load_queries

    from bench.bench_identity import _entitlement

    ex = ChdbExecutor(str(tmp_path), database="bi")
    try:
        apply_migrations(ex)
        regions, n = region_codes(), 4000
        for lo, count in chunks(n, 2000):
            ex.execute(events_insert_sql("bi", lo, count, n, regions, tag="BI"))
            ex.execute(subjects_insert_sql("bi", lo, count, n, regions, tag="BI"))
            ex.execute(events_insert_sql("bi", lo + n, count, 2 * n, regions))  # untagged rows beside them
        preds = tag_predicates("BI")
        _, [(tagged,)] = ex.query(f"SELECT count() FROM bi.events WHERE {preds['events']}")
        _, [(subjects, all_subjects)] = ex.query(f"SELECT countIf({preds['event_subjects']}), count() FROM bi.event_subjects")
        assert int(tagged) == n and int(subjects) == int(all_subjects) > n
        _, ids = ex.query("SELECT count(DISTINCT event_id) FROM bi.events")
        assert int(ids[0][0]) == 2 * n  # the tag's event ids differ from the default population's

        trail = load_queries()["trail"]
        _, hebei = ex.query("SELECT id_value FROM bi.event_subjects WHERE startsWith(source_region, '13') "
                            "AND classification = 'INTERNAL' AND length(share_scope) = 0 LIMIT 1")
        value = hebei[0][0]
        unfiltered = ex.query(in_database(trail.render({"id": value, "ids": identifier_forms(value)}, UNSCOPED), "bi"))[1]
        filtered = ex.query(named_query_sql(trail, {"id": value}, _entitlement(), "130000", "bench", "bi"))[1]
        assert 1 <= len(filtered) <= len(unfiltered)
        assert all(r[4].startswith("13") or r[3].startswith("13") for r in filtered)
        # bench_trail's regional filter is the same predicate the gateway builds for that analyst
        assert named_query_sql(trail, {"id": value}, _entitlement(), "130000", "bench", "bi") == \
            in_database(trail.render({"id": value, "ids": identifier_forms(value)}, region_scope("130000", load_regions())), "bi")
    finally:
        ex.close()
