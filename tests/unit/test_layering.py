"""The packages import each other in one direction (ops/__init__.py, the house STYLE.md): `schemas`
imports none of the others; the base of `ops` imports none but `schemas`; the bus's packages
use only that base; producers, stream_jobs and sinks do not import each other. Imports inside
functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import ops

REPO = Path(__file__).resolve().parents[2]
BUS = ("producers", "stream_jobs", "sinks", "gateway", "identity", "workflows")
PACKAGES = ("schemas", "ops", *BUS)


def imported(path: Path) -> set[str]:
    """Every absolute module name the file imports, anywhere in it (`from a.b import c` gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def modules(package: str):
    for path in sorted((REPO / package).rglob("*.py")):
        yield ".".join(path.relative_to(REPO).with_suffix("").parts), path


def is_top(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "ops" and len(parts) > 1 and parts[1] in ops.TOP


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for mod, path in modules(package):
            for name in sorted(imported(path)):
                top = name.split(".")[0]
                if top not in PACKAGES or top == package:
                    if package == "ops" and not is_top(mod) and is_top(name):
                        found.append(f"{mod} (ops base) imports {name} (ops top)")
                    continue
                if package == "schemas":
                    found.append(f"{mod} imports {name}: schemas imports none of the other packages")
                elif package == "ops" and not is_top(mod) and top != "schemas":
                    found.append(f"{mod} (ops base) imports {name}")
                elif package in BUS and is_top(name):
                    found.append(f"{mod} imports {name} (ops top: the CLI and the stack)")
                elif package in ("producers", "stream_jobs", "sinks") and top in ("producers", "stream_jobs", "sinks"):
                    found.append(f"{mod} imports {name}: producers, stream_jobs and sinks do not import each other")
    return found


def test_the_packages_import_each_other_in_one_direction():
    assert violations() == []


def test_every_top_module_of_ops_exists():
    assert [t for t in ops.TOP if not (REPO / "ops" / f"{t}.py").exists()] == []


def test_an_import_inside_a_function_is_seen(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def run():\n    from ops.settings import load_settings\n    import sinks.engine\n", encoding="utf-8")
    assert {"ops.settings", "ops.settings.load_settings", "sinks.engine"} <= imported(mod)
