"""The workflows' deadlines as data: defaults from issue 16, `ops/workflows.yaml`, overrides in seconds.

Durations in the YAML file are seconds (an int) or text such as '10m', '1h', '3d'. Tests and
the integration stack override single values in seconds (`load_policy(overrides=...)` or
`Policy.with_seconds(...)`), so a deadline of one hour can pass in two seconds.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

POLICY_FILE = Path(__file__).resolve().parent.parent / "ops" / "workflows.yaml"
PRIORITIES = ("ROUTINE", "URGENT", "CRITICAL")
DANGER_LEVELS = ("LOW", "MEDIUM", "HIGH")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")


class PolicyError(ValueError):
    """A workflows policy file or override that is not well formed; str() names the key."""


def parse_duration(value, key: str = "duration", *, zero: bool = False) -> int:
    """Seconds from 600, '600', '600s', '10m', '1h' or '3d' (0 only where `zero` allows it)."""
    if isinstance(value, bool):
        raise PolicyError(f"{key}: {value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = int(value)
    else:
        m = _DURATION.fullmatch(str(value))
        if not m:
            raise PolicyError(f"{key}: {value!r} is not a duration (seconds, or a number with s, m, h or d)")
        seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 0 or (seconds == 0 and not zero):
        raise PolicyError(f"{key}: a duration must be positive, not {value!r}")
    return seconds


@dataclass(frozen=True)
class RequestDeadlines:
    """Assistance request, per priority: accept, answer (findings) and joint action, from sending."""

    accept_s: int = 3600
    answer_s: int = 4 * 3600
    act_s: int = 24 * 3600


@dataclass(frozen=True)
class Policy:
    """Every duration of the workflows, in seconds.

    escalation_step_s: time between the reminder and the first escalation, and between
    escalation levels; 0 means "the deadline's own window" (a 10-minute confirmation
    escalates 10 minutes after its reminder, then 10 minutes later one level higher).
    """

    hit_confirm_urgent_s: int = 600  # detained, danger HIGH, or alert URGENT/CRITICAL
    hit_confirm_routine_s: int = 3600
    hit_need_time_max_s: int = 12 * 3600  # the longest NEED_TIME an owner may ask for (SIRENE: 12 h)
    stale_listing_s: int = 3 * 86400  # confirmed detention without an ARRESTED revision
    requests: dict = field(default_factory=lambda: {p: RequestDeadlines() for p in PRIORITIES})
    directive_ack_s: int = 900
    directive_overdue_step_s: int = 3600  # after the directive's due time: reminder, then escalation per step
    escalation_step_s: int = 0
    reuse_window_s: int = 90 * 86400  # earlier answers older than this are not offered
    acting_roles: tuple = ("command_center",)

    def request(self, priority: str) -> RequestDeadlines:
        try:
            return self.requests[priority]
        except KeyError:
            raise PolicyError(f"no request deadlines for priority {priority!r} (known: {', '.join(self.requests)})") from None

    def hit_window_s(self, *, detained: bool, danger_level: str | None, priority: str | None) -> int:
        """10 minutes when detained, danger HIGH or alert URGENT/CRITICAL; 1 hour otherwise."""
        urgent = detained or danger_level == "HIGH" or priority in ("URGENT", "CRITICAL")
        return self.hit_confirm_urgent_s if urgent else self.hit_confirm_routine_s

    def step_s(self, window_s: int) -> int:
        return self.escalation_step_s or window_s

    def with_seconds(self, **values) -> "Policy":
        """A copy with some durations replaced: with_seconds(hit_confirm_urgent_s=2, request_URGENT_accept_s=1)."""
        return _apply_overrides(self, values)


_FLAT = {f.name for f in dataclasses.fields(Policy)} - {"requests", "acting_roles"}


def _apply_overrides(policy: Policy, values: dict) -> Policy:
    flat, requests = {}, dict(policy.requests)
    for key, value in values.items():
        if key in _FLAT:
            flat[key] = parse_duration(value, key, zero=key == "escalation_step_s")
        elif key.startswith("request_"):
            # request_<PRIORITY>_<accept|answer|act>_s
            parts = key.split("_")
            if len(parts) != 4 or parts[1] not in requests or parts[2] not in ("accept", "answer", "act"):
                raise PolicyError(f"unknown policy key {key!r} (request keys: request_<PRIORITY>_<accept|answer|act>_s)")
            requests[parts[1]] = dataclasses.replace(requests[parts[1]], **{f"{parts[2]}_s": parse_duration(value, key)})
        elif key == "acting_roles":
            flat[key] = tuple(value)
        else:
            raise PolicyError(f"unknown policy key {key!r} (known: {', '.join(sorted(_FLAT))}, request_<PRIORITY>_<step>_s)")
    return dataclasses.replace(policy, requests=requests, **flat)


_YAML_KEYS = {
    ("hit_follow_up", "confirm_urgent"): "hit_confirm_urgent_s",
    ("hit_follow_up", "confirm_routine"): "hit_confirm_routine_s",
    ("hit_follow_up", "need_time_max"): "hit_need_time_max_s",
    ("hit_follow_up", "stale_listing_after"): "stale_listing_s",
    ("directive", "acknowledge"): "directive_ack_s",
    ("directive", "overdue_step"): "directive_overdue_step_s",
    ("escalation", "step"): "escalation_step_s",
    ("assistance_request", "reuse_window"): "reuse_window_s",
}


def policy_from_document(doc: dict) -> Policy:
    """A Policy from the parsed YAML document (see ops/workflows.yaml)."""
    values: dict = {}
    doc = doc or {}
    known_sections = {"hit_follow_up", "assistance_request", "directive", "escalation", "acting_roles"}
    for section in doc:
        if section not in known_sections:
            raise PolicyError(f"unknown section {section!r} in the workflows policy (known: {', '.join(sorted(known_sections))})")
    for section, body in doc.items():
        if section == "acting_roles":
            values["acting_roles"] = tuple(body)
            continue
        for key, value in (body or {}).items():
            if section == "assistance_request" and key == "deadlines":
                for priority, steps in (value or {}).items():
                    if priority not in PRIORITIES:
                        raise PolicyError(f"assistance_request.deadlines: unknown priority {priority!r} (known: {', '.join(PRIORITIES)})")
                    for step, duration in (steps or {}).items():
                        if step not in ("accept", "answer", "act"):
                            raise PolicyError(f"assistance_request.deadlines.{priority}: unknown step {step!r} (accept, answer, act)")
                        values[f"request_{priority}_{step}_s"] = duration
                continue
            name = _YAML_KEYS.get((section, key))
            if name is None:
                known = ", ".join(k for s, k in _YAML_KEYS if s == section)
                raise PolicyError(f"unknown key {section}.{key} in the workflows policy (known: {known or 'none'})")
            values[name] = value
    return _apply_overrides(Policy(), values)


def load_policy(path: Path | str | None = None, overrides: dict | None = None) -> Policy:
    """The policy of ops/workflows.yaml (or INTELBUS_WORKFLOWS_FILE, or `path`), then `overrides` in seconds."""
    path = Path(path or os.environ.get("INTELBUS_WORKFLOWS_FILE") or POLICY_FILE)
    policy = _load_file(path)
    return _apply_overrides(policy, overrides) if overrides else policy


@functools.cache
def _load_file(path: Path) -> Policy:
    return policy_from_document(yaml.safe_load(path.read_text(encoding="utf-8")))
