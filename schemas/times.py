"""Times as people read them: China Standard Time (DOMAIN.md section 10; stored and carried in UTC)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8))


def cst(value, *, suffix: bool = True) -> str:
    """'2026-11-30 09:15:52 CST' from a datetime, ISO-8601 text or Unix seconds; naive values are UTC.

    '-' for nothing; text that is not a time comes back as it was.
    """
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, datetime):
            at = value
        elif isinstance(value, (int, float)):
            at = datetime.fromtimestamp(value, tz=timezone.utc)
        else:
            at = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return str(value)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S") + (" CST" if suffix else "")
