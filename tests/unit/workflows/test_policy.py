"""The deadlines policy: defaults of issue 16, ops/workflows.yaml, overrides in seconds."""
from __future__ import annotations

import pytest

from workflows.policy import POLICY_FILE, Policy, PolicyError, load_policy, parse_duration, policy_from_document


def test_the_repo_file_states_the_issue_defaults():
    assert load_policy(POLICY_FILE) == Policy()
    p = Policy()
    assert (p.hit_confirm_urgent_s, p.hit_confirm_routine_s, p.stale_listing_s, p.directive_ack_s) == (600, 3600, 3 * 86400, 900)
    assert {k: (v.accept_s, v.answer_s, v.act_s) for k, v in p.requests.items()} == {
        k: (3600, 4 * 3600, 24 * 3600) for k in ("ROUTINE", "URGENT", "CRITICAL")}


@pytest.mark.parametrize("detained,danger,priority,window", [
    (True, None, None, 600), (False, "HIGH", None, 600), (False, None, "URGENT", 600), (False, None, "CRITICAL", 600),
    (False, "MEDIUM", "ROUTINE", 3600), (False, "LOW", None, 3600), (False, None, None, 3600),
])
def test_hit_window(detained, danger, priority, window):
    assert Policy().hit_window_s(detained=detained, danger_level=danger, priority=priority) == window


def test_durations():
    assert [parse_duration(v) for v in (90, "90", "90s", "10m", "1h", "3d")] == [90, 90, 90, 600, 3600, 259200]
    for bad in ("soon", "1w", -1, 0, True, "1.5h"):
        with pytest.raises(PolicyError):
            parse_duration(bad, "x")


def test_a_file_in_seconds_and_overrides_for_tests(tmp_path):
    path = tmp_path / "workflows.yaml"
    path.write_text("hit_follow_up: {confirm_urgent: 2, confirm_routine: 5s}\n"
                    "assistance_request: {deadlines: {URGENT: {accept: 3, answer: 6}}}\n"
                    "directive: {acknowledge: 4}\nescalation: {step: 1}\n")
    p = load_policy(path)
    assert (p.hit_confirm_urgent_s, p.hit_confirm_routine_s, p.directive_ack_s, p.escalation_step_s) == (2, 5, 4, 1)
    assert (p.request("URGENT").accept_s, p.request("URGENT").answer_s, p.request("URGENT").act_s) == (3, 6, 86400)
    assert p.request("ROUTINE").accept_s == 3600
    q = load_policy(path, overrides={"stale_listing_s": 7, "request_ROUTINE_act_s": 9})
    assert (q.stale_listing_s, q.request("ROUTINE").act_s, q.hit_confirm_urgent_s) == (7, 9, 2)
    assert Policy().with_seconds(directive_ack_s=1).directive_ack_s == 1


def test_the_environment_names_another_file(tmp_path, monkeypatch):
    path = tmp_path / "w.yaml"
    path.write_text("directive: {acknowledge: 3}\n")
    monkeypatch.setenv("INTELBUS_WORKFLOWS_FILE", str(path))
    assert load_policy().directive_ack_s == 3


@pytest.mark.parametrize("doc,message", [
    ({"hits": {}}, "unknown section 'hits'"),
    ({"hit_follow_up": {"confirm_fast": 1}}, "unknown key hit_follow_up.confirm_fast"),
    ({"assistance_request": {"deadlines": {"HIGH": {"accept": 1}}}}, "unknown priority 'HIGH'"),
    ({"assistance_request": {"deadlines": {"URGENT": {"respond": 1}}}}, "unknown step 'respond'"),
    ({"directive": {"acknowledge": "soon"}}, "directive_ack_s: 'soon' is not a duration"),
])
def test_bad_documents_name_the_key(doc, message):
    with pytest.raises(PolicyError) as exc:
        policy_from_document(doc)
    assert message in str(exc.value)


def test_bad_overrides_and_unknown_priorities():
    with pytest.raises(PolicyError, match="unknown policy key 'hit_confirm_s'"):
        Policy().with_seconds(hit_confirm_s=1)
    with pytest.raises(PolicyError, match="request keys"):
        Policy().with_seconds(request_HIGH_accept_s=1)
    with pytest.raises(PolicyError, match="no request deadlines for priority 'HIGH'"):
        Policy().request("HIGH")
