-- name: incidents
-- description: incident counts by type, region and hour
-- param: from | datetime | 1970-01-01 00:00:00 | period start (UTC)
-- param: to | datetime | 2100-01-01 00:00:00 | period end (UTC, exclusive)
-- reads: events FINAL (ORDER BY region, occurred_at)
SELECT toStartOfHour(occurred_at) AS hour, region, type, count() AS incidents
FROM events FINAL
WHERE kind = 'incident' AND occurred_at >= {from} AND occurred_at < {to} AND {scope:e}
GROUP BY hour, region, type
ORDER BY hour, region, type
