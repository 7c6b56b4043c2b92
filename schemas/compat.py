"""Avro schema compatibility (the spec's schema-resolution rules), for `intelbus schemas check` (ops.commands).

`check_backward(new, old)`: can a reader with the new schema read data written with the
old one? That is what BACKWARD(_TRANSITIVE) in the registry means, and what lets
consumers upgrade first. Each problem names the field path that breaks.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
# writer type -> reader types that can read it (Avro spec: schema resolution, promotion)
PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
              "string": {"bytes"}, "bytes": {"string"}}


@dataclass(frozen=True)
class Incompatibility:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '(record)'}: {self.reason}"


class _Names:
    """Named types of a schema, for resolving references by name."""

    def __init__(self, schema, namespace=""):
        self.types: dict[str, dict] = {}
        self._collect(schema, namespace)

    def _collect(self, s, ns):
        if isinstance(s, list):
            for item in s:
                self._collect(item, ns)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in ("record", "enum", "fixed"):
                ns = s.get("namespace", ns)
                name = s["name"] if "." in s["name"] else (f"{ns}.{s['name']}" if ns else s["name"])
                self.types[name] = s
                self.types[s["name"].rsplit(".", 1)[-1]] = s
                for f in s.get("fields", []):
                    self._collect(f["type"], ns)
            elif t == "array":
                self._collect(s["items"], ns)
            elif t == "map":
                self._collect(s["values"], ns)
            elif isinstance(t, (dict, list)):
                self._collect(t, ns)

    def resolve(self, s):
        if isinstance(s, str) and s not in PRIMITIVES:
            return self.types.get(s, self.types.get(s.rsplit(".", 1)[-1], s))
        if isinstance(s, dict) and isinstance(s.get("type"), str) and s["type"] in PRIMITIVES:
            return s["type"]  # {"type": "long", "logicalType": ...} reads as its primitive
        if isinstance(s, dict) and isinstance(s.get("type"), (dict, list)):
            return s["type"]
        return s


def _kind(s) -> str:
    if isinstance(s, list):
        return "union"
    if isinstance(s, str):
        return s
    return s["type"]


def check_backward(new, old) -> list[Incompatibility]:
    """Problems a reader using `new` has with data written using `old` (empty: compatible)."""
    return _check(new, old, _Names(new), _Names(old), "")


def check_backward_transitive(new, olds) -> list[Incompatibility]:
    found = []
    for old in olds:
        found += [p for p in check_backward(new, old) if p not in found]
    return found


def _check(reader, writer, rn: _Names, wn: _Names, path: str) -> list[Incompatibility]:
    reader, writer = rn.resolve(reader), wn.resolve(writer)
    rk, wk = _kind(reader), _kind(writer)
    if wk == "union":
        # every branch the writer may have written must be readable
        problems = []
        for branch in writer:
            problems += _check(reader, branch, rn, wn, path)
        return problems
    if rk == "union":
        for branch in reader:
            if not _check(branch, writer, rn, wn, path):
                return []
        return [Incompatibility(path, f"type {_describe(writer)} is not in the new union {_describe(reader)}")]
    if rk != wk:
        if wk in PROMOTIONS and rk in PROMOTIONS[wk]:
            return []
        return [Incompatibility(path, f"type changed from {_describe(writer)} to {_describe(reader)}")]
    if rk == "record":
        problems = []
        written = {f["name"]: f for f in writer["fields"]}
        for f in reader["fields"]:
            sub = f"{path}.{f['name']}" if path else f["name"]
            wf = written.get(f["name"])
            if wf is None:
                aliases = [written[a] for a in f.get("aliases", []) if a in written]
                wf = aliases[0] if aliases else None
            if wf is None:
                if "default" not in f:
                    problems.append(Incompatibility(sub, "new field without a default: old data has no value for it"))
                continue
            problems += _check(f["type"], wf["type"], rn, wn, sub)
        return problems
    if rk == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [Incompatibility(path, f"enum symbol(s) {', '.join(missing)} removed and the enum has no default")]
        return []
    if rk == "array":
        return _check(reader["items"], writer["items"], rn, wn, f"{path}[]")
    if rk == "map":
        return _check(reader["values"], writer["values"], rn, wn, f"{path}{{}}")
    if rk == "fixed" and reader.get("size") != writer.get("size"):
        return [Incompatibility(path, f"fixed size changed from {writer.get('size')} to {reader.get('size')}")]
    return []


def _describe(s) -> str:
    if isinstance(s, list):
        return "[" + ", ".join(_describe(b) for b in s) + "]"
    if isinstance(s, dict):
        return s.get("name", s.get("type", "?"))
    return str(s)


# --- intelbus schemas check ----------------------------------------------------------------

def previous_in_git(repo_root, path: str, ref: str = "HEAD") -> dict | None:
    """schemas/avro/<path> as committed at ref (None when it is new or git is unavailable)."""
    try:
        proc = subprocess.run(["git", "show", f"{ref}:schemas/avro/{path}"], capture_output=True, text=True, cwd=repo_root)
    except OSError:
        return None
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def check_working_tree(*, registry=None, ref: str = "HEAD", repo_root=None) -> list[str]:
    """Problems of each topic schema against git's previous version and the registry's versions."""
    from pathlib import Path

    from schemas.catalog import AVRO_DIR, TOPIC_SCHEMAS, subject

    root = Path(repo_root) if repo_root else AVRO_DIR.parent.parent
    folder = root / "schemas" / "avro"
    problems: list[str] = []
    for name in sorted(set(TOPIC_SCHEMAS.values())):
        new = json.loads((folder / f"{name}.avsc").read_text(encoding="utf-8"))
        old = previous_in_git(root, f"{name}.avsc", ref)
        if old is not None:
            problems += [f"{name}.avsc vs git {ref}: {p}" for p in check_backward(new, old)]
        if registry is None:
            continue
        for topic in sorted(t for t, n in TOPIC_SCHEMAS.items() if n == name):
            subj = subject(topic)
            try:
                versions = registry.get_versions(subj)
            except Exception:
                continue  # not registered yet: nothing to be compatible with
            olds = [json.loads(registry.get_version(subj, v).schema.schema_str) for v in versions]
            problems += [f"{name}.avsc vs registry {subj}: {p}" for p in check_backward_transitive(new, olds)]
    return problems
