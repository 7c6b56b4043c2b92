"""The whole local stack: infrastructure servers plus intelbus's own long-running services."""
from __future__ import annotations

from ops.components import infrastructure
from ops.settings import Settings
from ops.stack import Stack


def full_stack(settings: Settings, *, include_services: bool = True, out=print) -> Stack:
    components = infrastructure(settings)
    return Stack(settings, components, out=out)
