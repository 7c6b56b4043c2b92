"""bench/bench_recovery.py's arithmetic: a recovery cut into phases, and the medians it reports."""
from bench.bench_recovery import LogWatch, Recovery, summarize, variants_of


def test_a_recovery_is_cut_into_phases_that_add_up_to_its_total():
    r = Recovery("kafka", "all", "idle", spawned=0.6, first_line=1.5, refused_first=3.0, started=9.0, healthy=9.4)
    p = r.phases()
    assert p == {"restart": 0.6, "jvm": 0.9, "server": 7.5, "probe": 0.4, "total": 9.4, "old session": 6.0}
    assert round(p["restart"] + p["jvm"] + p["server"] + p["probe"], 2) == p["total"]


def test_a_server_without_a_started_line_counts_its_probe_from_its_first_line():
    p = Recovery("registry", "none", "idle", spawned=1.0, first_line=3.0, healthy=7.0).phases()
    assert p["server"] is None and p["probe"] == 4.0


def test_the_summary_takes_medians_per_component_condition_and_variant_and_leaves_out_failures():
    rs = [Recovery("kafka", "none", "idle", spawned=2.0, first_line=3.0, started=20.0, healthy=21.0, cpu_s=6.0),
          Recovery("kafka", "none", "idle", spawned=2.2, first_line=3.2, started=26.0, healthy=27.0, cpu_s=7.0),
          Recovery("kafka", "none", "idle", spawned=2.0, note="not healthy within 180s"),
          Recovery("kafka", "all", "idle", spawned=0.5, first_line=1.0, started=8.0, healthy=8.5, cpu_s=2.5)]
    rows = {(r["variant"]): r for r in summarize(rs)}
    assert rows["none"]["n"] == 2 and rows["none"]["total"] == {"median": 24.0, "max": 27.0}
    assert rows["none"]["cpu"] == {"median": 6.5, "max": 7.0}
    assert rows["all"]["total"] == {"median": 8.5, "max": 8.5}


def test_variants_with_commas_are_separated_by_slashes():
    assert variants_of("none,all") == ["none", "all"]
    assert variants_of("none/restart,kafka/all") == ["none", "restart,kafka", "all"]


def test_the_log_watch_sees_only_lines_written_after_it_started(tmp_path):
    log = tmp_path / "kafka.log"
    log.write_text("old line\n")
    watch = LogWatch(log)
    with open(log, "a") as f:
        f.write("Kafka Server started\npartial")
    assert watch.poll() == ["Kafka Server started"]
    with open(log, "a") as f:
        f.write(" line\n")
    assert watch.poll() == ["partial line"]
