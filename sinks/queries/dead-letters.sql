-- name: dead-letters
-- description: rejections by stage and reason
-- param: from | datetime | 1970-01-01 00:00:00 | period start (UTC)
-- reads: dead_letters FINAL
SELECT stage, reason, count() AS rejected, max(failed_at) AS last_seen
FROM dead_letters FINAL
WHERE failed_at >= {from} AND {scope:dl}
GROUP BY stage, reason
ORDER BY rejected DESC, stage, reason
