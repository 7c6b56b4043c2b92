"""The record of changes a store keeps for the audit log (principals, signing keys)."""
from __future__ import annotations


class ChangeLog:
    """The audit log's share of a store: its `changes` table, written when the audit log can be told.

    A store names the column of its `changes` table that says what changed (`SUBJECT`) and has
    a SQLite connection `db`; gateway.audit.flush_access_changes writes the rows.
    """

    SUBJECT = "principal"

    def pending_changes(self) -> list[tuple[int, int, str, str, str, str]]:
        """(seq, at_ms, actor, action, subject, detail) not yet written to the audit log."""
        return self.db.execute(f"SELECT seq, at_ms, actor, action, {self.SUBJECT}, detail FROM changes WHERE sent = 0 "
                               "ORDER BY seq").fetchall()

    def mark_sent(self, seqs) -> None:
        self.db.executemany("UPDATE changes SET sent = 1 WHERE seq = ?", [(s,) for s in seqs])
        self.db.commit()
