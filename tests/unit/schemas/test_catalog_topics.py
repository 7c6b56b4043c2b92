"""Topic names come from schemas/catalog.py: the catalog names every topic ops/topics.yaml
creates, and the code does not spell a topic name of its own."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from schemas import catalog

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("producers", "stream_jobs", "sinks", "ops", "gateway", "bench", "workflows", "identity")
# modules still spelling names (their owners change them; issue 17 item 5): remove a line once it is done
NOT_YET: set[str] = set()


def test_the_catalog_names_exactly_the_topics_ops_creates():
    declared = set(yaml.safe_load((REPO / "ops" / "topics.yaml").read_text(encoding="utf-8"))["topics"])
    assert set(catalog.ALL_TOPICS) == declared


def topic_literals(path: Path) -> list[tuple[int, str]]:
    """String constants that are a topic of the catalog, or an f-string building `intel.<...>`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in catalog.ALL_TOPICS:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("intel."):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_spells_a_topic_name_the_catalog_has():
    offenders = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel not in NOT_YET and (hits := topic_literals(path)):
                offenders[rel] = hits
    assert offenders == {}


def test_the_check_sees_a_literal_and_an_f_string(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text('A = "intel.hit"\nB = f"intel.{kind}.unique"\nC = "intel.hitting"\n', encoding="utf-8")
    assert topic_literals(mod) == [(1, "intel.hit"), (2, "f'intel.{kind}.unique'")]
