"""What may this identity see and do: the one answer every door uses.

The gateway's feed, its queries and ad-hoc SQL, its exports, the CLI's refusals and the
ClickHouse row policies for current servers are all built from `Entitlement`; no door
keeps its own copy of the rule (docs/architecture.md, "Who may see what, and where it is
enforced").

Visibility, for an identity of agency region R cleared to level C, looking at region V
(V is R unless the caller narrowed it to a region inside R):
- events: from V or a region inside it, located in V or inside it, or shared with V, a
  region inside V, an ancestor of V, or a zone that V, a region above or a region inside
  it belongs to;
- hits: notified to V, to a region inside V, or to a zone that V or a region around it
  belongs to (`RegionTable.may_see`);
- only records classified at C or below.
Narrowing never widens: each of these sets for a region inside R is a subset of R's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from identity.principals import Identity, levels_up_to
from schemas.regions import RegionTable, validate_region_code

ROLES_FILE = Path(__file__).resolve().parent.parent / "ops" / "identity" / "roles.yaml"


DATA_ACTIONS = ("feed", "query", "sql")  # the actions that return records (the others: the audit log, publishing)


class NotEntitled(PermissionError):
    """A refusal; str() says what is missing, in one line."""


@functools.cache
def action_roles(path: Path = ROLES_FILE) -> dict[str, tuple[str, ...]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {action: tuple(roles) for action, roles in doc["actions"].items()}


def _literal(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Entitlement:
    identity: Identity
    regions: RegionTable

    # --- what it may do ----------------------------------------------------------------

    def allows(self, action: str) -> bool:
        return bool(self.identity.roles & set(action_roles().get(action, ())))

    def require(self, action: str) -> None:
        needed = action_roles().get(action)
        if needed is None:
            raise NotEntitled(f"{action}: no role may do this")
        if not self.allows(action):
            held = ", ".join(sorted(self.identity.roles)) or "no role"
            raise NotEntitled(f"role {' or '.join(needed)} required for {action} ({self.identity.name} holds {held})")

    # --- which region it looks at --------------------------------------------------------

    def view_region(self, requested: str | None = None) -> str:
        """The region a request looks at: the agency's, or one inside it; never one outside."""
        own = self.identity.region
        if not requested:
            return own
        try:
            validate_region_code(requested)
        except ValueError as exc:
            raise NotEntitled(f"--region: {exc}") from None
        if not self.regions.is_within(requested, own):
            raise NotEntitled(f"not entitled to region {requested} {self.regions.name(requested)}: "
                              f"{self.identity.name} may see {own} {self.regions.name(own)} and the regions inside it")
        return requested

    def may_publish_for(self, region: str) -> bool:
        return any(self.regions.is_within(region, r) for r in self.identity.publish_regions)

    # --- what it may see -----------------------------------------------------------------

    @property
    def classifications(self) -> tuple[str, ...]:
        return levels_up_to(self.identity.clearance)

    def may_see_hit(self, hit: dict, view: str) -> bool:
        return hit.get("classification") in self.classifications and self.regions.may_see(view, hit.get("notify_regions") or [])

    def may_see_alert(self, alert: dict, view: str) -> bool:
        """An alert shared with the view region, a region inside it, an ancestor of it or a zone of it."""
        if alert.get("classification") not in self.classifications:
            return False
        scope = alert.get("share_scope") or []
        return self.regions.may_see(view, scope) or any(self.regions.is_within(view, s) for s in scope)

    def zones(self, view: str) -> list[str]:
        """Zones the view region, a region above it or a region inside it belongs to (as RegionTable.may_see):
        a province sees what is shared with its counties' zones, as each county does."""
        return sorted(z for z in self.regions.zones() if any(
            self.regions.is_within(view, m) or self.regions.is_within(m, view) for m in self.regions.zone_members(z)))

    def sql_scopes(self, view: str) -> dict[str, str]:
        """ClickHouse predicates per readable table for what the view region may see."""
        prefix = self.regions.descendants_prefix(view)
        like = _literal(prefix + "%")
        zones = self.zones(view)
        shared_with = [view, *self.regions.ancestors(view), *zones]
        cleared = f"classification IN ({', '.join(_literal(c) for c in self.classifications)})"
        event = (f"((source_region LIKE {like} OR region LIKE {like} OR hasAny(share_scope, {_literal(shared_with)}) "
                 f"OR arrayExists(scope_entry -> scope_entry LIKE {like}, share_scope)) AND {cleared})")
        hit = (f"((arrayExists(n -> n LIKE {like}, notify_regions) OR hasAny(notify_regions, {_literal(zones or [''])})) "
               f"AND {cleared})")
        return {"events": event, "event_subjects": event, "hits": hit}

    def describe(self, view: str | None = None) -> dict:
        """What `whoami` shows: who, which agency, what it may do and see."""
        view = view or self.identity.region
        i = self.identity
        return {
            "name": i.name, "display_name": i.display_name, "kind": i.kind, "issuer": i.issuer,
            "agency": {"region": i.region, "region_name": self.regions.name(i.region), "branch": i.branch},
            "roles": sorted(i.roles), "clearance": i.clearance,
            "may": sorted(a for a in action_roles() if self.allows(a)),
            "sees": ({"regions": f"{view} {self.regions.name(view)} and the regions inside it",
                      "zones": self.zones(view), "classifications": list(self.classifications)}
                     if any(self.allows(a) for a in DATA_ACTIONS) else
                     {"regions": "no records (its roles read none)", "zones": [], "classifications": []}),
            "publishes_for": sorted(i.publish_regions),
        }
