"""Columnar batches per table, and the policy that says when to flush them.

Pure logic: the sink (`sinks.sink`) feeds rows and offsets in, asks `due()`, and hands a
`Batch` to the writer. Offsets are tracked per batch so that they are committed only
after every row of the batch is in ClickHouse.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlushPolicy:
    max_rows: int = 50_000
    max_seconds: float = 1.0


@dataclass
class Batch:
    """Rows per table, the Kafka offsets they came from, and how they are counted."""

    started: float = field(default_factory=time.monotonic)
    rows: dict[str, list[tuple]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    messages: int = 0
    # Messages that carried no row (or whose rows are elsewhere) still advance offsets.

    def add(self, table: str, row: tuple) -> None:
        self.rows.setdefault(table, []).append(row)

    def extend(self, table: str, rows: list[tuple]) -> None:
        if rows:
            self.rows.setdefault(table, []).extend(rows)

    def advance(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        if offset + 1 > self.offsets.get(key, -1):
            self.offsets[key] = offset + 1
        self.messages += 1

    @property
    def row_count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def due(self, policy: FlushPolicy, now: float | None = None) -> bool:
        if self.messages == 0:
            return False
        now = time.monotonic() if now is None else now
        return self.row_count >= policy.max_rows or now - self.started >= policy.max_seconds


@dataclass(frozen=True)
class Backoff:
    """Retry delays for ClickHouse outages: 0.5 s doubling up to 30 s."""

    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.first * self.factor ** max(0, attempt - 1))


def bisect_rejects(rows: list[tuple], insert) -> tuple[int, list[tuple[tuple, str]]]:
    """Insert rows; when the server refuses the batch, split it to find the rows it refuses.

    `insert(rows)` raises ValueError-like `RowRejected` for refused data and anything else
    for outages (those propagate). Returns (rows inserted, [(row, reason)] refused).
    """
    try:
        insert(rows)
        return len(rows), []
    except RowRejected as exc:
        if len(rows) == 1:
            return 0, [(rows[0], str(exc))]
    mid = len(rows) // 2
    ok_a, bad_a = bisect_rejects(rows[:mid], insert)
    ok_b, bad_b = bisect_rejects(rows[mid:], insert)
    return ok_a + ok_b, bad_a + bad_b


class RowRejected(ValueError):
    """ClickHouse refused the data itself (type, value, constraint), not the connection."""
