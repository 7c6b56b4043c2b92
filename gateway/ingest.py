"""Placeholder until its part of the console issue lands: register(app, ctx) adds nothing yet."""
from __future__ import annotations


def register(app, ctx) -> None:
    return None
