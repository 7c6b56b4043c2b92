"""Request and response bodies of /api/v1: the contract integrators and the CLI read in /docs."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class LoginIn(BaseModel):
    name: str = Field(max_length=64, description="the principal's login name")
    password: str = Field(max_length=1024)


class LoginOut(BaseModel):
    token: str = Field(description="send as `Authorization: Bearer <token>`")
    expires_at: float = Field(description="Unix time, seconds")
    identity: dict


class WhoAmIOut(BaseModel):
    name: str
    display_name: str
    kind: str
    issuer: str
    agency: dict
    roles: list[str]
    clearance: str
    may: list[str] = Field(description="the actions the roles allow (ops/identity/roles.yaml)")
    sees: dict
    publishes_for: list[str]


class NamedQueryIn(BaseModel):
    params: dict[str, Any] = Field(default_factory=dict, description="the query's parameters (GET /api/v1/queries)")
    region: str | None = Field(default=None, description="narrow to a region inside the caller's agency")
    purpose: str = Field(default="", max_length=500, description="case or request reference; required by some queries")
    limit: int = Field(default=1000, ge=1, le=10_000, description="rows in this page (an export takes them all)")
    offset: int = Field(default=0, ge=0, le=10_000_000, description="rows to skip: the previous answer's next_offset")


class SqlIn(BaseModel):
    sql: str = Field(max_length=20_000, description="one read-only SELECT over events, event_subjects, hits")
    region: str | None = None
    purpose: str = Field(default="", max_length=500)


class QueryOut(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    elapsed_ms: float
    region: str = Field(description="the region the rows are limited to")
    offset: int = Field(default=0, description="the first row's position in the whole result")
    has_more: bool = Field(default=False, description="more rows follow this page")
    next_offset: int | None = Field(default=None, description="send as `offset` for the next page (null: no more)")


class AuditQuery(BaseModel):
    user: str | None = Field(default=None, description="only rows of this principal")
    action: str | None = Field(default=None, description="login, feed, query, sql, audit, access:add, ...")
    outcome: str | None = Field(default=None, description="ok, refused or failed")
    region: str | None = None
    since: str | None = Field(default=None, description="YYYY-MM-DD[ HH:MM:SS] UTC")
    until: str | None = None
    limit: int = Field(default=100, ge=1, le=10_000)
    purpose: str = Field(default="", max_length=500, description="why the auditor reads the log")


class FeedItemsOut(BaseModel):
    """Documentation only: the feed answers NDJSON, one item a line (`feed_item`: hit, alert or heartbeat)."""
    feed_item: str
