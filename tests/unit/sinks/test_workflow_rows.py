"""The sink's rows of workflow dead letters (no servers)."""
from __future__ import annotations



def test_a_refused_workflow_command_becomes_an_audit_row_naming_who_and_why():
    import json

    from sinks.rows import AUDIT_COLUMNS, refused_workflow_audit_row
    from workflows import model as m

    actor = m.Actor(name="t-hb-cc", region="130000", branch="COMMAND_CENTER", roles=frozenset({"command_center"}))
    command = {"command": m.to_json(m.AcceptRequest(item_id="R-1", actor=actor, command_id="c1")),
               "command_id": "c1", "issued_at": 1_795_000_000_000, "via": "gateway"}
    dl = {"dlq_id": "00000000-0000-0000-0000-000000000001", "stage": "WORKFLOW", "source": "intel.workflow.commands:R-1",
          "field": None, "reason": "request R-1 is addressed to 130822/CRIMINAL_INVESTIGATION; 130000/COMMAND_CENTER "
          "is not one of them and may not ACCEPT it", "raw": json.dumps(command).encode(), "source_region": "130000",
          "source_system": "t-hb-cc", "failed_at": 1_795_000_000_123}
    row = dict(zip(AUDIT_COLUMNS, refused_workflow_audit_row(dl, 1_795_000_000_200)))
    assert row["user"] == "t-hb-cc" and row["agency"] == "130000/COMMAND_CENTER" and row["roles"] == "command_center"
    assert row["action"] == "workflow" and row["outcome"] == "refused" and "may not ACCEPT" in row["reason"]
    # raw bytes that are not a command still give a row (who is unknown, the reason is kept)
    broken = refused_workflow_audit_row({**dl, "raw": b"\xff not json"}, 0)
    assert dict(zip(AUDIT_COLUMNS, broken))["agency"] == "" and dict(zip(AUDIT_COLUMNS, broken))["outcome"] == "refused"
