"""Regions (GB/T 2260), cooperation zones, offences and branches: the shared code tables."""
from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path

CODES = Path(__file__).resolve().parent / "codes"
_CODE = re.compile(r"\d{6}")


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    parent: str | None
    level: str  # province | city | county
    valid_to: str | None = None


def _structural_parents(code: str) -> list[str]:
    """Parents implied by the code itself: XXYYZZ -> XXYY00 -> XX0000."""
    if code.endswith("0000"):
        return []
    if code.endswith("00"):
        return [code[:2] + "0000"]
    return [code[:4] + "00", code[:2] + "0000"]


class RegionTable:
    def __init__(self, regions: dict[str, Region], zones: dict[str, frozenset[str]]):
        self._regions = regions
        self._zones = zones
        self._ancestors: dict[str, tuple[str, ...]] = {}

    def get(self, code: str) -> Region | None:
        return self._regions.get(code)

    def name(self, code: str) -> str:
        region = self._regions.get(code)
        return region.name if region else code

    def is_known(self, code: str) -> bool:
        return code in self._regions

    def ancestors(self, code: str) -> list[str]:
        """Enclosing regions, nearest first: '130822' -> ['130800', '130000']."""
        cached = self._ancestors.get(code)
        if cached is None:
            cached = self._ancestors[code] = tuple(self._walk_up(code))
        return list(cached)

    def _walk_up(self, code: str):
        seen = set()
        current = code
        while True:
            region = self._regions.get(current)
            if region is not None:
                parent = region.parent
            else:
                # unknown but well-formed: the nearest structural parent the table knows,
                # else the province (a municipality's district skips a missing 110100)
                candidates = _structural_parents(current)
                parent = next((c for c in candidates if c in self._regions), candidates[-1] if candidates else None)
            if not parent or parent in seen:
                return
            seen.add(parent)
            yield parent
            current = parent

    def is_within(self, code: str, other: str) -> bool:
        """code is other, or inside it."""
        return code == other or other in self.ancestors(code)

    def descendants_prefix(self, code: str) -> str:
        """Prefix shared by a region's own code and everything under it (for SQL LIKE)."""
        if code.endswith("0000"):
            return code[:2]
        if code.endswith("00"):
            return code[:4]
        return code

    def zones(self) -> list[str]:
        return sorted(self._zones)

    def is_zone(self, name: str) -> bool:
        return name in self._zones

    def zone_members(self, zone: str) -> frozenset[str]:
        return self._zones.get(zone, frozenset())

    def zones_of(self, code: str) -> frozenset[str]:
        """Zones that contain the region or one of its ancestors."""
        lineage = {code, *self.ancestors(code)}
        return frozenset(z for z, members in self._zones.items() if lineage & members)

    def expand_scope(self, entries) -> frozenset[str]:
        """Region codes named by a share_scope: codes as they are, zones as their members."""
        out: set[str] = set()
        for entry in entries or ():
            out |= self._zones[entry] if entry in self._zones else {entry}
        return frozenset(out)

    def may_see(self, region: str, notify) -> bool:
        """May `region` see a hit notified to these regions and zones?

        A region sees what is notified to it or to any region inside it (a province sees its
        counties), and what is notified to a zone that it, or a region above or below it,
        belongs to. Feeds, queries and the jobs' tests all use this one rule.
        """
        for entry in notify:
            if entry in self._zones:
                if any(self.is_within(region, m) or self.is_within(m, region) for m in self._zones[entry]):
                    return True
            elif self.is_within(entry, region):
                return True
        return False

    def province_of(self, code: str) -> str:
        return code[:2] + "0000"


def _read_csv(name: str) -> list[dict]:
    with open(CODES / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@functools.cache
def load_regions() -> RegionTable:
    regions = {
        row["code"]: Region(row["code"], row["name"], row["parent"] or None, row["level"], row["valid_to"] or None)
        for row in _read_csv("regions.csv")
    }
    zones: dict[str, set[str]] = {}
    for row in _read_csv("zones.csv"):
        zones.setdefault(row["zone"], set()).add(row["region"])
    return RegionTable(regions, {z: frozenset(m) for z, m in zones.items()})


@functools.cache
def load_offences() -> dict[str, str]:
    return {row["code"]: row["name_zh"] for row in _read_csv("offences.csv")}


@functools.cache
def load_branches() -> dict[str, str]:
    return {row["code"]: row["name_zh"] for row in _read_csv("branches.csv")}


def validate_region_code(code) -> str:
    """The code, or ValueError saying why it is not a region code intelbus knows."""
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ValueError(f"{code!r} is not a 6-digit region code")
    if not load_regions().is_known(code):
        raise ValueError(f"unknown region code {code} (see schemas/codes/regions.csv)")
    return code
