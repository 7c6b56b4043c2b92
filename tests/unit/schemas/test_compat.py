"""Schema compatibility, and `intelbus schemas check` refusing a deliberately breaking change."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest

from schemas.catalog import AVRO_DIR, load_schema
from schemas.compat import check_backward, check_backward_transitive, check_working_tree


def incident():
    return load_schema("incident")


def field(schema, name):
    return next(f for f in schema["fields"] if f["name"] == name)


def test_identical_and_additive_changes_are_compatible():
    old, new = incident(), incident()
    new["fields"].append({"name": "priority", "type": ["null", "string"], "default": None, "doc": "new, optional"})
    field(new, "incident_type")["type"]["symbols"].append("BORDER_CHECK")
    assert check_backward(new, old) == [] and check_backward(old, old) == []


def test_new_field_without_default_breaks_and_names_the_field():
    old, new = incident(), incident()
    new["fields"].append({"name": "officer", "type": "string", "doc": "required now"})
    (problem,) = check_backward(new, old)
    assert problem.path == "officer" and "without a default" in problem.reason


def test_type_change_breaks_but_promotion_does_not():
    old, new = incident(), incident()
    field(new, "revision")["type"] = "long"
    assert check_backward(new, old) == []
    field(new, "source_ref")["type"] = "int"
    (problem,) = check_backward(new, old)
    assert problem.path == "source_ref" and "type changed from string to int" in problem.reason


def test_nested_field_paths_and_removed_enum_symbols():
    old, new = incident(), incident()
    loc = field(new, "location")["type"]
    field(loc, "lat")["type"] = "string"
    enum = field(new, "incident_type")["type"]
    enum["symbols"].remove("DRUGS")
    del enum["default"]
    paths = {p.path for p in check_backward(new, old)}
    assert paths == {"location.lat", "incident_type"}


def test_transitive_checks_every_old_version():
    v1, v2, v3 = incident(), incident(), incident()
    v2["fields"].append({"name": "x", "type": ["null", "string"], "default": None, "doc": "x"})
    v3["fields"] = [f for f in v2["fields"]] + [{"name": "y", "type": "int", "doc": "y"}]
    assert [p.path for p in check_backward_transitive(v3, [v1, v2])] == ["y"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_schemas_check_refuses_a_breaking_change_against_git(tmp_path):
    """The CLI check on a scratch repository: commit a schema, break it in the working tree."""
    repo = tmp_path / "repo"
    avro = repo / "schemas" / "avro"
    shutil.copytree(AVRO_DIR, avro)
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v1"]):
        subprocess.run(cmd, cwd=repo, check=True)
    assert check_working_tree(registry=None, repo_root=repo) == []
    broken = json.loads((avro / "incident.avsc").read_text())
    broken["fields"].append({"name": "officer_badge", "type": "string", "doc": "added without a default"})
    (avro / "incident.avsc").write_text(json.dumps(broken))
    problems = check_working_tree(registry=None, repo_root=repo)
    assert len(problems) == 1
    assert problems[0].startswith("incident.avsc vs git HEAD: officer_badge: new field without a default")
