"""`intelbus query scorecard` for people: --month is a calendar month in China Standard Time, the table
shows shares in per cent, response times in minutes, refusals by reason in one column, the period in CST."""
from __future__ import annotations

import pytest

from gateway.cli import month_period, scorecard_table
from gateway.client import ClientError
from workflows.scorecard import COLUMNS


def test_a_month_is_its_cst_calendar_month_in_utc_across_the_year_end():
    assert month_period("2026-11") == ("2026-10-31 16:00:00", "2026-11-30 16:00:00")
    assert month_period("2026-12") == ("2026-11-30 16:00:00", "2026-12-31 16:00:00")
    with pytest.raises(ClientError, match=r"--month '2026/11': give a month as YYYY-MM"):
        month_period("2026/11")


def test_the_table_shows_per_cent_minutes_reasons_and_the_period_in_cst(capsys):
    row = dict.fromkeys(COLUMNS, 0)
    row.update(agency="130822/CRIMINAL_INVESTIGATION", region="130822", branch="CRIMINAL_INVESTIGATION",
               requests_received=3, accepted_on_time=2, accepted_on_time_share=2 / 3, answered_on_time_share=None,
               response_median_s=1800.0, response_p90_s=None, refusals=2, refused_not_competent=1, refused_other=1,
               hits_confirmed_on_time_share=None)
    columns = [*COLUMNS, "period_from", "period_to"]
    out = scorecard_table({"columns": columns, "elapsed_ms": 1, "region": "130000",
                           "rows": [[*row.values(), "2026-10-31 16:00:00", "2026-11-30 16:00:00"]]})
    shown = dict(zip(out["columns"], out["rows"][0]))
    assert shown["accepted_on_time %"] == "66.7" and shown["answered_on_time %"] == "-"
    assert shown["response_median (min)"] == "30.0" and shown["response_p90 (min)"] == "-"
    assert shown["by reason"] == "NOT_COMPETENT:1 OTHER:1" and shown["refusals"] == 2
    assert "period_from" not in shown and "refused_other" not in shown
    assert "from 2026-11-01 00:00:00 CST to 2026-12-01 00:00:00 CST" in capsys.readouterr().err
